/*
 * troupe/node.h -- a node: N worker threads, each owning one uv_loop_t,
 * that run actors; the actor table; the name registry.
 *
 * Lifecycle: tr_node_new -> tr_node_start -> (work) -> tr_node_shutdown
 * (from anywhere, any number of times) -> tr_node_wait -> tr_node_free.
 * Shutdown stops every actor (terminate() runs, asks get answers), then
 * the workers exit their loops.
 */
#ifndef TROUPE_NODE_H
#define TROUPE_NODE_H

#include <stdint.h>

#include "actor.h"
#include "err.h"
#include "msg.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tr_node_opts {
	unsigned threads;   /* worker threads; 0 = number of CPUs */
	uint32_t node_id;   /* id in refs (cluster-wide unique); 0 = 1 */
	uint8_t migrate;    /* 1 (default when threads > 1): idle workers take runnable actors from busy ones; 2: never */
	uint32_t spin_us;   /* how long an idle worker polls before it sleeps (default 0) */
} tr_node_opts;

TR_EXTERN int tr_node_new(const tr_node_opts *opts, tr_node **out);
/* Starts the worker threads. */
TR_EXTERN int tr_node_start(tr_node *node);
/* Asks the node to stop with exit code `code`; thread-safe, idempotent. */
TR_EXTERN void tr_node_shutdown(tr_node *node, int code);
/* Blocks until every worker has stopped; returns the code given to
 * tr_node_shutdown. */
TR_EXTERN int tr_node_wait(tr_node *node);
/* Frees a stopped (or never started) node. */
TR_EXTERN void tr_node_free(tr_node *node);

TR_EXTERN unsigned tr_node_threads(const tr_node *node);
TR_EXTERN uint32_t tr_node_id(const tr_node *node);

/* Spawns an actor from outside the node's threads (or from any thread).
 * Blocks until init has run on a worker; the node must be started. */
TR_EXTERN int tr_node_spawn(tr_node *node, const tr_actor_ops *ops, const void *arg,
                            const tr_spawn_opts *opts, tr_ref *out);

/* Sends from outside any actor (m->from stays as set by the caller).
 * Consumes `m`. Same results as tr_send, except that a blocked send gets no
 * TR_TAG_WRITABLE (there is no actor to wake). */
TR_EXTERN int tr_node_send(tr_node *node, tr_ref to, tr_msg *m);

/* Node-wide counters. */
typedef struct tr_node_stats {
	uint64_t actors;        /* alive now */
	uint64_t spawned;       /* since start */
	uint64_t dead_letters;  /* messages sent to dead or stale refs */
	uint64_t late_replies;  /* replies that arrived after their ask timed out */
	uint64_t migrations;    /* actors moved between workers */
	uint64_t wakeups;       /* cross-thread wake-ups (uv_async_send) */
} tr_node_stats;
TR_EXTERN void tr_node_stats_get(tr_node *node, tr_node_stats *out);

/*
 * Walks the supervision tree, depth first, calling `fn` once per actor in
 * it (supervisors and their children), with its depth (0 = a root
 * supervisor) and a stats snapshot. Stop early by returning non-zero.
 */
typedef int (*tr_walk_fn)(void *ud, unsigned depth, const tr_actor_stats *st, int is_supervisor);
TR_EXTERN int tr_node_walk(tr_node *node, tr_walk_fn fn, void *ud);

/* Visits every live actor (supervised or not); same callback contract. */
TR_EXTERN int tr_node_foreach(tr_node *node, tr_walk_fn fn, void *ud);

/* Monotonic clock in nanoseconds (cheap: CLOCK_MONOTONIC_COARSE is not
 * used, so this is exact). */
TR_EXTERN uint64_t tr_now_ns(void);
/* Wall clock in microseconds since the Unix epoch (for deadlines). */
TR_EXTERN uint64_t tr_wall_us(void);

#ifdef __cplusplus
}
#endif
#endif
