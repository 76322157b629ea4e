/*
 * troupe/actor.h -- actors: behaviours, spawning, messaging, timers, links.
 *
 * An actor is a behaviour (a const ops table), a private state block and a
 * bounded mailbox. The runtime calls receive() for one message at a time,
 * on whichever worker thread runs the actor at that moment; an actor's
 * callbacks never run concurrently with each other, so its state needs no
 * locks. Callbacks must not block: they send, ask, set timers and return.
 *
 * Everything in this header that takes a tr_ctx must be called from inside
 * that actor's callbacks (init, receive, terminate), on the thread that
 * runs them. The tr_node_* calls in node.h are for other threads.
 */
#ifndef TROUPE_ACTOR_H
#define TROUPE_ACTOR_H

#include <stdint.h>

#include "err.h"
#include "msg.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tr_node tr_node;
/* The running actor's handle; valid only during the callback it is given to. */
typedef struct tr_ctx tr_ctx;

/* What a full mailbox does with one more (non-system) message. */
typedef enum tr_overflow {
	TR_OVERFLOW_BLOCK = 0,   /* refuse with TR_EFULL; the sender gets TR_TAG_WRITABLE later */
	TR_OVERFLOW_DROP_OLDEST, /* evict the oldest queued message; accept the new one */
	TR_OVERFLOW_DROP_NEWEST, /* drop the new message: TR_EDROPPED */
	TR_OVERFLOW_REJECT       /* refuse with TR_EREJECTED */
} tr_overflow;

/*
 * Mailbox and scheduling options. Zero fields take the defaults below, so
 * a zeroed struct is valid.
 */
typedef struct tr_actor_opts {
	uint32_t mailbox;  /* capacity in user messages (default 1024) */
	uint32_t hiwat;    /* pressure raised at this depth (default 3/4 of capacity) */
	uint32_t lowat;    /* pressure cleared, blocked senders woken, at or below (default 1/2) */
	uint32_t batch;    /* messages per turn at most (default TR_BATCH_DEFAULT) */
	uint8_t overflow;  /* tr_overflow */
	uint8_t trap_exit; /* 1: EXIT signals arrive as TR_TAG_EXIT messages instead of killing */
} tr_actor_opts;

#define TR_MAILBOX_DEFAULT 1024u
#define TR_BATCH_DEFAULT 64u

/*
 * A behaviour. `size` bytes of zeroed state are allocated per actor and
 * passed to every callback. Any callback may be NULL except receive.
 *
 * init(ctx, state, arg): runs once, before the first message, on the
 *   spawning thread; `arg` is the spawn argument (borrowed, only during
 *   init). A non-TR_OK return fails the spawn with that code.
 * receive(ctx, state, msg): one message; `msg` is borrowed (tr_take() to
 *   keep it). Returning a non-TR_OK code crashes the actor with that reason:
 *   its mailbox is discarded (asks in it get error replies), links and
 *   monitors are notified, and its supervisor decides what happens next.
 * terminate(ctx, state, reason): runs once when the actor stops, whatever
 *   the reason (TR_OK for a normal stop). Sends are still allowed.
 */
typedef struct tr_actor_ops {
	const char *name;
	size_t size;
	int (*init)(tr_ctx *ctx, void *state, const void *arg);
	int (*receive)(tr_ctx *ctx, void *state, tr_msg *msg);
	void (*terminate)(tr_ctx *ctx, void *state, int reason);
	tr_actor_opts options; /* the behaviour's default mailbox options */
} tr_actor_ops;

/* Per-spawn settings; a zeroed struct means "the behaviour's defaults". */
typedef struct tr_spawn_opts {
	const char *name;    /* register under this name (TR_EEXIST if taken) */
	tr_actor_opts mbox;  /* non-zero fields override ops->options */
	uint8_t link;        /* link the new actor to the spawner */
	uint8_t pinned;      /* 1: never migrates off the worker it starts on
	                      * (an actor that owns libuv handles on its loop) */
} tr_spawn_opts;

/* --- spawning and identity -------------------------------------------- */

/*
 * Spawns an actor. From inside an actor pass its ctx (node may be NULL):
 * the child starts on the same worker (cheap, cache-warm), and may migrate
 * later. init runs before this returns; its error is returned. On TR_OK,
 * *out (if not NULL) is the child's ref.
 */
TR_EXTERN int tr_spawn(tr_ctx *ctx, const tr_actor_ops *ops, const void *arg,
                       const tr_spawn_opts *opts, tr_ref *out);

TR_EXTERN tr_ref tr_self(const tr_ctx *ctx);
TR_EXTERN tr_node *tr_ctx_node(const tr_ctx *ctx);
/* Index of the worker thread running this callback (0..threads-1). */
TR_EXTERN unsigned tr_ctx_worker(const tr_ctx *ctx);

/* Stops the calling actor after the current callback, with `reason`. */
TR_EXTERN void tr_stop(tr_ctx *ctx, int reason);

/* Takes ownership of the message being received; the runtime will not free
 * it. Returns it (NULL outside receive). */
TR_EXTERN tr_msg *tr_take(tr_ctx *ctx);

/* --- sending ----------------------------------------------------------- */

/*
 * Sends `m` to `to`. Always consumes `m`. Sets m->to and m->from.
 * Returns TR_OK when queued; TR_ENOACTOR for a dead or stale ref; and when
 * the mailbox is full, per its policy: TR_EFULL (block: we will get one
 * TR_TAG_WRITABLE from `to` when it drains below its low watermark),
 * TR_EREJECTED (reject), TR_EDROPPED (drop_newest), or TR_OK (drop_oldest
 * evicted an older message). A dropped or refused ask never leaves its
 * asker waiting: see tr_ask().
 */
TR_EXTERN int tr_send(tr_ctx *ctx, tr_ref to, tr_msg *m);
/* Sends a body-less message carrying `arg`. */
TR_EXTERN int tr_send_u64(tr_ctx *ctx, tr_ref to, uint32_t tag, uint64_t arg);
/* Sends `body` (the message takes over the caller's reference). */
TR_EXTERN int tr_send_body(tr_ctx *ctx, tr_ref to, uint32_t tag, tr_body *body);

/*
 * Request/response. Sends `m` flagged TR_MSGF_ASK with a fresh correlation
 * id (stored in *corr if not NULL). Exactly one answer comes back to the
 * asker as a message with TR_MSGF_REPLY and that corr: the reply, or an
 * error reply (TR_MSGF_ERROR, `err` = TR_ETIMEDOUT after timeout_ms,
 * TR_ECRASHED if the target crashed with the request pending, TR_ENOACTOR,
 * TR_EREJECTED, TR_EDROPPED, ...). A reply arriving after the timeout is
 * dropped (counted as late), never delivered. If the ask cannot be sent
 * at all, the error is returned and no answer message follows.
 * timeout_ms 0 means no timeout (the other answers still come).
 */
TR_EXTERN int tr_ask(tr_ctx *ctx, tr_ref to, tr_msg *m, uint64_t timeout_ms, uint64_t *corr);

/* Replies to the ask `req` with `rep` (consumed). TR_EINVAL if `req` is not
 * an ask. */
TR_EXTERN int tr_reply(tr_ctx *ctx, const tr_msg *req, tr_msg *rep);
/* Replies to `req` with an error reply carrying `err`. */
TR_EXTERN int tr_reply_error(tr_ctx *ctx, const tr_msg *req, int err);

/* --- timers ------------------------------------------------------------ */

/*
 * Delivers a system message (tag `tag`, flag TR_MSGF_TIMER, arg = number
 * of ticks coalesced into it minus one) after `ms` milliseconds; with
 * tr_timer_every, every `ms` until cancelled. A periodic timer never has
 * more than one tick queued: ticks that fall due meanwhile are counted into
 * the pending one's arg, so a slow actor is not flooded. Timers die with
 * their actor. *id (if not NULL) names the timer for tr_timer_cancel.
 */
TR_EXTERN int tr_timer_after(tr_ctx *ctx, uint32_t tag, uint64_t ms, uint64_t *id);
TR_EXTERN int tr_timer_every(tr_ctx *ctx, uint32_t tag, uint64_t ms, uint64_t *id);
/* Cancels a timer: no message from it is delivered after this returns.
 * TR_ENOTFOUND if it already fired (one-shot) or is unknown. */
TR_EXTERN int tr_timer_cancel(tr_ctx *ctx, uint64_t id);

/* --- links and monitors ------------------------------------------------ */

/*
 * Links are bidirectional (and node-local: linking to another node's actor
 * is TR_EINVAL; monitor it instead): when either actor dies with a reason other than
 * TR_OK, the other receives an exit signal. An actor that traps exits
 * (tr_trap_exit / opts.trap_exit) gets it as a TR_TAG_EXIT message;
 * otherwise it dies with the same reason. Linking to a dead actor delivers
 * the signal at once (reason TR_ENOACTOR).
 */
TR_EXTERN int tr_link(tr_ctx *ctx, tr_ref other);
TR_EXTERN int tr_unlink(tr_ctx *ctx, tr_ref other);
TR_EXTERN void tr_trap_exit(tr_ctx *ctx, int on);
/* Sends an exit signal with `reason` to `to`, as if a linked actor died.
 * TR_EKILLED cannot be trapped. */
TR_EXTERN int tr_exit(tr_ctx *ctx, tr_ref to, int reason);

/*
 * Monitors are one-way: when `target` dies (any reason), the monitoring
 * actor receives TR_TAG_DOWN with from = target, corr = the monitor id and
 * err = the reason. A dead target gives DOWN at once with TR_ENOACTOR.
 */
TR_EXTERN int tr_monitor(tr_ctx *ctx, tr_ref target, uint64_t *mon_id);
TR_EXTERN int tr_demonitor(tr_ctx *ctx, tr_ref target, uint64_t mon_id);

/* Subscribes to `target`'s pressure signal: TR_TAG_PRESSURE messages (arg 1
 * when its depth reaches hiwat, 0 when it falls to lowat). */
TR_EXTERN int tr_pressure_watch(tr_ctx *ctx, tr_ref target);

/* --- names --------------------------------------------------------------- */

/* Registers `name` (1..63 bytes) for `ref` on the node. TR_EEXIST if taken
 * by a live actor. Names are released when their actor dies. */
TR_EXTERN int tr_register(tr_node *node, const char *name, tr_ref ref);
TR_EXTERN int tr_unregister(tr_node *node, const char *name);
/* Points `name` at `ref` atomically, whoever holds it now: lookups see the
 * old ref or the new one, never nothing (hot reload moves public names to
 * the new generation this way). An alias is not released when its actor
 * dies; it keeps the dead ref (sends give TR_ENOACTOR) until moved. */
TR_EXTERN int tr_register_alias(tr_node *node, const char *name, tr_ref ref);
/* Looks a name up on this node: TR_OK and *ref, or TR_ENOTFOUND. */
TR_EXTERN int tr_whereis(tr_node *node, const char *name, tr_ref *ref);
/*
 * The cluster-wide half: refs that the other live members of this node's
 * cluster publish under `name`, or under `name#<k>` (the instances of a
 * pipeline actor). A member publishes its names without a "@<gen>"
 * suffix (cluster/cluster.h). Writes at most `max` refs to out and
 * returns how many; 0 without a cluster. Sends and asks to those refs
 * work as to local ones (README, "Clustering").
 */
TR_EXTERN size_t tr_whereis_remote(tr_node *node, const char *name, tr_ref *out, size_t max);

/* --- introspection ----------------------------------------------------- */

typedef struct tr_actor_stats {
	tr_ref ref;
	const char *behaviour; /* ops->name */
	char name[64];         /* registered name, "" if none */
	uint64_t received;     /* accepted into the mailbox */
	uint64_t processed;    /* receive() calls completed */
	uint64_t dropped;      /* dropped by drop_oldest / drop_newest */
	uint64_t rejected;     /* refused: reject or block policy */
	uint32_t depth;        /* messages queued now (user + system) */
	uint32_t max_depth;    /* highest depth seen */
	uint32_t capacity;
	uint32_t restarts;     /* times its supervisor restarted this child */
	uint64_t mailbox_ns;   /* total time messages waited in the mailbox */
	uint64_t receive_ns;   /* total time spent in receive() */
	uint8_t pressure;      /* 1 while above the high watermark until the low one */
	uint8_t overflow;      /* tr_overflow */
} tr_actor_stats;

/* Snapshot of one actor's counters (from any thread). TR_ENOACTOR if dead. */
TR_EXTERN int tr_actor_stats_get(tr_node *node, tr_ref ref, tr_actor_stats *out);

#ifdef __cplusplus
}
#endif
#endif
