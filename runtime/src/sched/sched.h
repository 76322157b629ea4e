/*
 * sched/sched.h -- internals of the scheduler: nodes, workers, actors,
 * mailboxes, timers. Only runtime/src includes this.
 *
 * Design notes
 * ============
 *
 * Threads. A node runs N workers; each owns one uv_loop_t and a local run
 * queue of runnable actors. An actor runs on one worker at a time (its
 * "home"), one batch of at most `batch` messages per turn, so a hot actor
 * cannot starve the others on its worker.
 *
 * Mailboxes. Each actor has its own mailbox guarded by a tiny spinlock
 * (one xchg to lock, one plain release store to unlock: cheaper than a
 * pthread mutex, whose unlock is another atomic RMW). Critical sections
 * are a few pointer writes, so spinning is short; a waiter that spins too
 * long yields the CPU. Senders append to the shared lists under the lock;
 * the running worker moves the shared lists into private ones once per
 * turn, so a turn takes the lock about once, not once per message. The
 * lock also guards the rarely-touched extension (links, monitors, blocked
 * senders, pressure watchers, name).
 *
 * Scheduling. `sched` (under the lock) is 1 while the actor is on a run
 * queue, in an inbox, or running. The sender that turns it from 0 to 1
 * owns the duty to enqueue the actor on its home worker: locally with
 * plain list operations when that is the sender's own worker, else
 * through the home worker's inbox (a spinlocked list) plus one
 * uv_async_send, only when the inbox goes from empty to non-empty.
 *
 * Work moving. Actors are pinned to their home worker (children start on
 * their parent's worker: messages between them stay on one core and need
 * no wake-up). An idle worker advertises itself in node->idle_mask before
 * it sleeps; a worker with two or more runnable actors gives an idle one
 * the runnable actors whose last turn cost at least MIGRATE_MIN_US of CPU,
 * at least a quarter of that per message sent to another actor
 * (migration: home changes only while the actor is queued and not
 * running, so the mailbox and its order are untouched). Moving an actor
 * whose turns are shorter than a cross-core wake-up (~20 us on the 2-vCPU
 * machines) costs more than it gains: chatty message-passing actors stay
 * together. README, "Scheduler", has the measurements behind this.
 *
 * Memory of actors is type-stable: actor structs live in chunks that are
 * never freed before the node is, and a dead actor's struct is reused for
 * a later spawn with its generation bumped. A sender may therefore hold a
 * stale pointer safely: it locks the struct and compares the generation,
 * which is only changed under the lock. No reference counts and no
 * epoch-based reclamation on the send path.
 */
#ifndef TR_SCHED_H
#define TR_SCHED_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include <troupe/troupe.h>

#include "core/alloc.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define tr__cpu_relax() _mm_pause()
#else
#define tr__cpu_relax() ((void)0)
#endif

/* ------------------------------------------------------------------ */
/* spinlock                                                            */

typedef struct tr__spin {
	atomic_uchar v;
} tr__spin;

void tr__spin_lock_slow(tr__spin *l);

static inline void tr__spin_lock(tr__spin *l)
{
	/* acquire: everything the previous holder wrote before its release
	 * store in tr__spin_unlock is visible once we own the lock. */
	if (!atomic_exchange_explicit(&l->v, 1, memory_order_acquire))
		return;
	tr__spin_lock_slow(l);
}

static inline void tr__spin_unlock(tr__spin *l)
{
	/* release: publishes our writes to the next acquirer. A plain store
	 * on x86, no locked instruction. */
	atomic_store_explicit(&l->v, 0, memory_order_release);
}

/* ------------------------------------------------------------------ */
/* cheap clock for per-turn stats                                      */

/* Cycle counter where there is one (rdtsc: ~8 ns, no syscall); the node
 * calibrates cycles to nanoseconds once at start. */
static inline uint64_t tr__cycles(void)
{
#if defined(__x86_64__) || defined(__i386__)
	return __rdtsc();
#else
	return tr_now_ns();
#endif
}
uint64_t tr__cycles_to_ns(uint64_t cycles);
uint64_t tr__ns_to_cycles(uint64_t ns);
void tr__clock_calibrate(void);

/* ------------------------------------------------------------------ */
/* small hash map, owner-thread only                                   */

/* Open addressing, linear probing, key 0 = empty; keys may repeat (the
 * pair (key, ref) is what is looked up). Grows at 1/2 load. */
typedef struct tr__map_ent {
	uint64_t key;
	tr_ref ref;
	void *ptr;
} tr__map_ent;

typedef struct tr__map {
	tr__map_ent *ents;
	uint32_t cap; /* power of two or 0 */
	uint32_t len;
} tr__map;

int tr__map_put(tr__map *m, uint64_t key, tr_ref ref, void *ptr);
/* Removes the entry and returns 1 (and its ptr in *ptr), or returns 0. */
int tr__map_del(tr__map *m, uint64_t key, tr_ref ref, void **ptr);
tr__map_ent *tr__map_get(tr__map *m, uint64_t key, tr_ref ref);
void tr__map_free(tr__map *m);

/* ------------------------------------------------------------------ */
/* actors                                                              */

enum {
	ACTOR_FREE = 0, /* on a freelist */
	ACTOR_INIT,     /* spawned, init() running */
	ACTOR_ALIVE,
	ACTOR_DEAD      /* terminated, not yet recycled */
};

typedef struct tr__worker tr__worker;
typedef struct tr__timer tr__timer;
typedef struct tr__tbucket tr__tbucket;

/* A list of refs (links, monitors, waiters, watchers), under the lock. */
typedef struct tr__refvec {
	tr_ref *v;
	uint64_t *ids; /* monitors only: monitor ids, parallel to v */
	uint32_t len, cap;
} tr__refvec;

/* Rarely used shared state, allocated on first use, under the lock. */
typedef struct tr__actor_ext {
	tr__refvec links;
	tr__refvec monitors; /* watchers of this actor, with monitor ids */
	tr__refvec waiters;  /* senders refused by overflow=block */
	tr__refvec watchers; /* pressure watchers */
	char name[64];
} tr__actor_ext;

/* Owner-only state, allocated on first use. */
typedef struct tr__actor_own {
	tr__map asks;   /* corr -> tr__timer* (or NULL): asks we are waiting on */
	tr__map owed;   /* (corr, asker) -> 1: asks we received and still owe */
	tr__map timers; /* timer id -> tr__timer* */
	uint64_t corr_seq;
	uint64_t timer_seq;
	uint64_t mon_seq;
} tr__actor_own;

typedef struct tr_actor {
	/* --- shared: guarded by `lock` ------------------------------- */
	tr__spin lock;
	uint8_t sched;     /* queued or running (see design notes) */
	uint8_t life;      /* ACTOR_* */
	uint8_t pressure;  /* above hiwat until back at lowat */
	uint8_t overflow;  /* tr_overflow */
	uint8_t stop_sent; /* node shutdown already sent this life its STOP */
	uint32_t gen;
	uint32_t depth;    /* user messages not yet processed */
	uint32_t cap, hiwat, lowat;
	uint32_t max_depth;
	tr_msg *uhead, *utail; /* shared user messages */
	tr_msg *shead, *stail; /* shared system messages */
	tr__actor_ext *ext;
	uint64_t received, dropped, rejected;
	/* Written by the worker that migrates the actor, while it is queued
	 * and not running; read by senders under the lock. The lock gives
	 * the ordering, the atomic only keeps stats readers honest. */
	atomic_uint home;

	/* --- owner: the worker running the actor ------------------------- */
	struct tr_actor *rq_next;
	tr_msg *phead, *ptail;   /* private user messages */
	tr_msg *pshead, *pstail; /* private system messages */
	const tr_actor_ops *ops;
	void *state;
	tr__actor_own *own;
	uint32_t idx;
	uint32_t batch;
	uint32_t restarts;
	uint8_t trap_exit;
	uint8_t stopping;
	uint8_t pinned;    /* tr_spawn_opts.pinned: never migrated */
	uint8_t chaos;     /* the fault injector may crash it (core/chaos.h) */
	int32_t stop_reason;
	/* Cycles of the shorter of its last two turns (saturating). The
	 * cycle counter is wall time: one turn can look long because the
	 * thread was preempted; two in a row rarely do. */
	uint32_t last_turn_cyc;
	uint32_t prev_turn_cyc;
	uint32_t last_turn_sends; /* messages it sent to others in that turn */
	/* Stats written by the owner, read by anyone: relaxed atomics (a
	 * plain load/store on x86), never read-modify-write. */
	_Atomic uint64_t processed;
	_Atomic uint64_t mailbox_cyc;
	_Atomic uint64_t receive_cyc;
	/* Small states live here instead of a separate allocation. */
	_Alignas(16) unsigned char inline_state[16];
} tr_actor;

struct tr_ctx {
	tr__worker *w;
	tr_actor *a;
	tr_msg *cur;    /* the message being received, or NULL */
	uint32_t sends; /* messages sent to other actors this turn */
	uint8_t taken;  /* cur was tr_take()n */
	uint8_t replied;/* cur (an ask) was replied to */
};

/* ------------------------------------------------------------------ */
/* workers                                                             */

/* Control operations posted to a worker's inbox from other threads. */
typedef struct tr__ctl tr__ctl;
struct tr__ctl {
	tr__ctl *next;
	int kind; /* CTL_* */
	void (*fn)(tr__worker *w, tr__ctl *c); /* runs on the worker */
};

struct tr__worker {
	tr_node *node;
	unsigned idx;
	uv_thread_t thread;
	uv_loop_t loop;
	uv_async_t async;

	/* --- owner only --- */
	tr_actor *rq_head, *rq_tail;
	unsigned rq_len;
	uint64_t msg_seq;       /* message ids: (idx+1) << 48 | seq */
	tr_msg *pool;           /* free messages */
	unsigned pool_len;
	tr_actor *free_actors;  /* recycled actor structs (linked by rq_next) */
	unsigned free_len;
	unsigned ntimers;       /* armed timers on this loop */
	/* Timer buckets and pools (timer.c). */
	tr__map tbuckets;       /* due ms + 1 -> armed bucket */
	tr__tbucket *tb_newest; /* stays armed when empty, see timer.c */
	tr__tbucket *tb_free;   /* recycled buckets, handles initialised */
	tr__timer *timer_pool;  /* recycled timers */
	unsigned tb_free_len, timer_pool_len;
	uint64_t turns;
	uint64_t polled_cyc;    /* tr__cycles() when libuv last polled (worker.c) */
	bool stopping_seen;

	/* --- shared: the inbox, guarded by in_lock --- */
	_Alignas(64) tr__spin in_lock;
	tr_actor *in_head, *in_tail; /* actors made runnable here by others */
	tr__ctl *ctl_head, *ctl_tail;
	/* The sleep/wake Dekker pair (worker.c): in_pending is set (seq_cst)
	 * by every post and cleared by the drain; in_sleep is set by the
	 * worker before it blocks in epoll. */
	atomic_bool in_pending;
	atomic_bool in_sleep;
};

/* The worker the calling thread runs, or NULL for other threads. */
extern _Thread_local tr__worker *tr__tls_worker;

/* ------------------------------------------------------------------ */
/* node                                                                */

#define TR_CHUNK_SHIFT 10
#define TR_CHUNK_SIZE (1u << TR_CHUNK_SHIFT)
#define TR_MAX_CHUNKS 16384 /* 16 M actors */
#define TR_MAX_WORKERS 64

typedef struct tr__name_ent tr__name_ent;
typedef struct tr__sup_link tr__sup_link;

struct tr_node {
	uint32_t id;
	unsigned nworkers;
	tr__worker *workers;
	uint8_t migrate;
	uint32_t spin_us;
	uint64_t migrate_min_cyc; /* a turn this long makes an actor worth moving */
	uint64_t poll_cyc;        /* turns running this long end the batch: poll I/O (worker.c) */

	/* Actor chunks: published with release, read with acquire. */
	_Atomic(tr_actor *) chunks[TR_MAX_CHUNKS];
	atomic_uint nchunks;
	/* One past the highest slot index ever handed out (tr__actor_alloc):
	 * tr_node_foreach scans up to it, not every slot of every chunk (a
	 * node of 20 actors scanned 1 024 slots, each locked, per /metrics). */
	_Atomic uint32_t slots_hw;
	uv_mutex_t chunk_mu;   /* grows chunks, guards the global freelist */
	tr_actor *gfree;       /* global freelist of actor structs */
	unsigned gfree_len;

	/* Bit i set: worker i is idle and would take work. */
	_Alignas(64) atomic_ullong idle_mask;
	atomic_uint rr;        /* round robin for spawns from outside */

	_Alignas(64) atomic_int stopping; /* shutdown requested */
	int exit_code;
	atomic_llong alive;    /* live actors */
	atomic_uint running_workers;

	/* Node counters: relaxed RMW; they are statistics, ordered by nothing. */
	_Alignas(64) atomic_ullong n_spawned;
	atomic_ullong n_dead_letters;
	atomic_ullong n_late_replies;
	atomic_ullong n_migrations;
	atomic_ullong n_wakeups;
	atomic_ullong ext_msg_seq;

	/* Name registry. */
	uv_rwlock_t names_mu;
	tr__name_ent **names;
	uint32_t names_cap, names_len;

	/* Supervision tree, for walking (sup.c). */
	uv_mutex_t tree_mu;
	tr__sup_link *sups;

	uv_mutex_t wait_mu;
	uv_cond_t wait_cv;
	bool started, joined;

	/* Messages to refs of other nodes, and the cluster-wide name
	 * lookup: set once by the cluster (tr__node_set_remote) before any
	 * actor can hold a remote ref; NULL without one. */
	_Atomic(const struct tr__remote_ops *) remote;
	void *remote_ud; /* written before `remote` is published (release) */
	atomic_uint names_ver; /* bumped on every registry change (the cluster republishes) */
};

/*
 * The cluster's side of location transparency (cluster/cluster.c).
 * deliver: `m` (consumed) is addressed to m->to on another node; called
 *   from any thread; returns what tr_send returns (TR_EREJECTED when the
 *   link's queue is full, TR_ENODEDOWN for an unknown or down node).
 * lookup: refs other members publish under `name` or `name#<k>`.
 * monitor: `watcher` (local) monitors remote `target` (on = 1) or stops
 *   (on = 0); DOWN arrives as from a local target.
 */
typedef struct tr__remote_ops {
	int (*deliver)(void *ud, tr_msg *m, tr_ref blocker);
	size_t (*lookup)(void *ud, const char *name, tr_ref *out, size_t max);
	int (*monitor)(void *ud, tr_ref watcher, tr_ref target, uint64_t id, int on);
} tr__remote_ops;

/* The remote ops, or NULL. Acquire pairs with the release in
 * tr__node_set_remote, so remote_ud is seen set. */
static inline const tr__remote_ops *tr__remote(tr_node *n)
{
	return atomic_load_explicit(&n->remote, memory_order_acquire);
}

void tr__node_set_remote(tr_node *n, const tr__remote_ops *ops, void *ud);

/* Resolves `ref` and returns its actor LOCKED and alive (ACTOR_INIT or
 * ACTOR_ALIVE), or NULL (nothing locked) if it is dead, stale or remote. */
tr_actor *tr__actor_lock_ref(tr_node *n, tr_ref ref);
tr_actor *tr__actor_at(tr_node *n, uint32_t idx);
static inline tr_ref tr__ref_of(tr_node *n, const tr_actor *a)
{
	return (tr_ref){n->id, a->idx, a->gen};
}

/* node.c */
tr_actor *tr__actor_alloc(tr_node *n, tr__worker *w);
void tr__actor_release(tr_node *n, tr__worker *w, tr_actor *a);
void tr__node_worker_done(tr_node *n);

/* worker.c */
void tr__worker_main(void *arg);
/* Puts `a` (whose sched bit the caller just set) on its home worker's run
 * queue, from any thread. */
void tr__make_runnable(tr_node *n, tr_actor *a, unsigned home);
void tr__post_ctl(tr__worker *w, tr__ctl *c);
/* Re-queues an actor that still has work, on the worker running it. */
void tr__requeue(tr__worker *w, tr_actor *a);

/* mbox.c */
/*
 * Enqueues `m` (consumed) into `to`'s mailbox, from any thread. `blocker`
 * is the sending actor (for overflow=block wake-ups) or none. Returns the
 * tr_send result. Messages refused or evicted that are asks get error
 * replies; nothing leaves an asker waiting.
 */
int tr__deliver(tr_node *n, tr_ref to, tr_msg *m, tr_ref blocker);
/* Enqueues `m` into local actor `at`'s mailbox as tr__deliver does, but
 * leaves m->to alone: the cluster actor queues messages for other nodes
 * this way. */
int tr__enqueue_at(tr_node *n, tr_ref at, tr_msg *m, tr_ref blocker);
/* Fills local actor `to`'s mailbox up to its capacity with body-less
 * user messages of `tag` from nobody (the fault injector's fill,
 * core/chaos.h); returns how many it queued (0: full already, gone or
 * remote). It queues the room it saw first, so with drop_oldest it evicts
 * only as many as other senders queued meanwhile. */
uint32_t tr__mbox_fill(tr_node *n, tr_ref to, uint32_t tag);
/* System message helper: a body-less system message. */
int tr__send_sys(tr_node *n, tr_ref from, tr_ref to, uint32_t tag, int err,
                 uint64_t corr, uint64_t arg, uint16_t extra_flags);
/* Error reply to the ask `req` (only its from/corr are read). */
void tr__reply_err_to(tr_node *n, tr_ref replier, tr_ref asker, uint64_t corr, int err);
int tr__refvec_add(tr__refvec *v, tr_ref r, uint64_t id);
int tr__refvec_del(tr__refvec *v, tr_ref r, uint64_t id, int match_id);
void tr__refvec_free(tr__refvec *v);
tr__actor_ext *tr__ext(tr_actor *a);

/* actor.c */
void tr__run_turn(tr__worker *w, tr_actor *a);
int tr__spawn_on(tr_node *n, tr__worker *w, const tr_actor_ops *ops, const void *arg,
                 const tr_spawn_opts *opts, tr_ref link_to, tr_ref *out);
/*
 * I/O actors. tr__spawn_pinned spawns on worker `wi` with opts->pinned
 * forced on (opts may be NULL), from that worker or a thread that is no
 * worker (TR_ESTATE from another worker), blocking until init ran:
 * the actor lives on that worker's loop for good, so it may own libuv
 * handles there. Inside those handles' callbacks (which run on that
 * worker, never during one of its turns) the actor may use a copy of the
 * ctx its init got, as tr__io_ctx() makes it: sends, asks, replies and
 * timers then work as from receive().
 */
int tr__spawn_pinned(tr_node *n, unsigned wi, const tr_actor_ops *ops, const void *arg,
                     const tr_spawn_opts *opts, tr_ref *out);
static inline uv_loop_t *tr__ctx_loop(const tr_ctx *ctx)
{
	return &ctx->w->loop;
}
static inline tr_ctx tr__io_ctx(const tr_ctx *init_ctx)
{
	tr_ctx c = {init_ctx->w, init_ctx->a, NULL, 0, 0, 0};
	return c;
}
/* Stops every live actor (node shutdown). */
void tr__stop_all(tr_node *n, tr__worker *w);

/* timer.c */
int tr__timer_start(tr__worker *w, tr_actor *a, int kind, uint32_t tag, uint64_t ms,
                    uint64_t corr, tr__timer **out);
/* Drops the owner's reference and disarms, from the actor's thread. */
void tr__timer_cancel(tr__worker *w, tr__timer *t);
/* For delivered ticks of a periodic timer: allow the next tick. */
void tr__timer_delivered(tr__timer *t);
uint64_t tr__timer_id(const tr__timer *t);
int tr__timer_kind(const tr__timer *t);
/* At worker exit, before its loop closes: closes the bucket handles and
 * frees the pools. */
void tr__timer_worker_fini(tr__worker *w);
enum { TIMER_ONCE = 1, TIMER_EVERY, TIMER_ASK };

/* registry.c */
void tr__names_drop(tr_node *n, const char *name, tr_ref ref);
void tr__names_free(tr_node *n);
/* Calls fn for every registered name, under the registry's read lock
 * (fn must not touch the registry). */
void tr__names_each(tr_node *n, void (*fn)(void *ud, const char *name, tr_ref ref), void *ud);

/* msgpool.c */
void tr__msgpool_drain(tr__worker *w);

/* sup.c */
void tr__sup_walk_free(tr_node *n);

#endif
