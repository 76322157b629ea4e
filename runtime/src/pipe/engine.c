/*
 * pipe/engine.c -- the pipeline engine actor. See engine.h for the
 * protocol.
 *
 * Design. A run is one request; it executes as one or more fibers. A
 * fiber walks a stack of step lists (route branches push a list; a
 * parallel step starts one child fiber per branch and waits for its
 * join). A fiber is always in exactly one of these states, which is what
 * makes "exactly one answer per run" checkable:
 *   RUNNING  walking steps inside advance(), synchronously;
 *   CALLING  an ask is out: `corr` is in the engine's calls map;
 *   BACKOFF  a retry timer is set: `timer` is in the timers map;
 *   PARKED   the target's mailbox was full (overflow=block): the fiber is
 *            queued on that actor's TR_TAG_WRITABLE, with a deadline
 *            timer in the timers map;
 *   JOINING  waiting for child fibers (parallel);
 *   DONE.
 * Every way out of CALLING/BACKOFF/PARKED removes the fiber from the map
 * it was in first, so a late reply or timer finds nothing and is dropped.
 *
 * The run's deadline bounds everything: each attempt's timeout is the
 * step timeout clipped to the time left, and a retry whose backoff would
 * end past the deadline is not started (the run fails with the step's
 * last error instead of a later, vaguer deadline error).
 *
 * Retries never amplify: a step makes at most 1 + retries attempts in
 * total, and the fallback actor, tried once after the last failure,
 * counts as one more attempt of the same step, never restarting the
 * count.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <mbedtls/sha256.h>

#include "core/alloc.h"
#include "core/util.h"
#include "db/redis.h"
#include "lua/tlua.h"
#include "msg/msg_int.h"
#include "core/chaos.h"
#include "pipe/engine.h"
#include "pipe/mp.h"
#include "sched/sched.h" /* tr__map */

enum { TAG_RETRY = 0x201u, TAG_PARK_DEADLINE = 0x202u, TAG_FIRST_BYTE = 0x203u,
       TAG_SHARED_POLL = 0x204u, TAG_CHAOS_SLOW = 0x205u };

#define MAX_NEST TR_STEP_NEST_MAX /* route/parallel nesting of step lists */
#define MIN_ATTEMPT_US 1000  /* don't start an attempt with less time left */

typedef enum fstate {
	F_RUNNING, F_CALLING, F_BACKOFF, F_PARKED, F_JOINING,
	F_COALESCED, /* waiting for an identical call another fiber leads */
	F_SHARED,    /* waiting on Redis: the shared cache, the cross-node lock or its result */
	F_DONE
} fstate;

/* Error classes (retry_on). C_NODE_DOWN (the actor's node went down, or
 * is not reachable) is retried as "crashed" is, under its own name. */
enum { C_TIMEOUT = TR_RETRY_TIMEOUT, C_ERROR = TR_RETRY_ERROR, C_OVERLOAD = TR_RETRY_OVERLOAD,
       C_CRASHED = TR_RETRY_CRASHED, C_DEADLINE = 1 << 8, C_INVALID = 1 << 9,
       C_CANCELLED = 1 << 10, C_BLOCKED = 1 << 11, C_NODE_DOWN = 1 << 12 };

typedef struct run run;
typedef struct fiber fiber;

typedef struct frame {
	const tr_step_list *list;
	size_t i;
} frame;

struct fiber {
	run *r;
	fiber *parent;          /* JOINING parent of a parallel branch */
	fiber *next_in_run;     /* all fibers of the run */
	fiber *next_parked;     /* queue of fibers parked on one actor */
	fstate st;
	unsigned depth;         /* frames in use in stack[] */
	tr_body *body;          /* the message: owned reference, a msgpack map */
	/* the step being called */
	const tr_step *step;
	const char *target;     /* actor name now being asked */
	tr_ref target_ref;
	uint32_t inst;          /* instance of target asked (its "#i"), when it has several */
	uint32_t attempts;      /* across the fallback too */
	tr_ref avoid;           /* instance whose attempt failed last (placed targets) */
	uint8_t placed;         /* target is placed: target_ref may be another node's */
	uint8_t loaded;         /* this call counts in e->loads under target_ref */
	uint8_t on_fallback;
	uint8_t streamed;       /* the actor asked sent deltas (the stream ends with its answer) */
	uint64_t corr;          /* CALLING */
	uint64_t timer;         /* BACKOFF / PARKED */
	uint64_t step_t0;       /* ns, for tap durations */
	int last_err;           /* tr_err of the last failure */
	int last_cls;
	char last_msg[160];     /* the actor's own words on it ({message} of an error reply), or "" */
	/* JOINING */
	const tr_step *par;
	uint32_t par_left;      /* branches still running */
	uint32_t par_ok;        /* branches succeeded */
	uint32_t par_need;      /* successes that complete the join */
	tr_buf par_merged;      /* merged outputs so far (a map), or empty */
	uint8_t spawning;       /* still starting branches: don't resume yet */
	/* shared state in Redis (F_SHARED): what the ask is for, and whether
	 * this fiber holds the cross-node lock of its call */
	uint8_t rwhat;
	uint8_t rlock;
	char rkey[160];         /* the lock's key while rlock (result key: derived) */
	/* coalescing (singleflight) */
	struct flight *flight;  /* the flight this fiber leads or waits on */
	fiber *next_waiter;
	tr_buf ckey;            /* cache key of the current step's input */
	/* the fault injector held this attempt (BACKOFF, TAG_CHAOS_SLOW):
	 * for how long, and whether that is past its timeout */
	uint64_t chaos_us;
	uint8_t chaos_late;
	/* Last: fiber_init() clears everything above and leaves the frames
	 * alone (only stack[0 .. depth) is ever read). */
	frame stack[MAX_NEST];
	struct fiber *next_free; /* engine's fiber pool */
};

/*
 * One coalesced call: the leader fiber runs the step; identical calls
 * (same actor, same input bytes, same tenant) that start meanwhile wait
 * on it and all get its outcome. Keyed by hash; the key bytes are kept to
 * rule out collisions.
 */
typedef struct flight {
	uint64_t hash;
	tr_buf key;
	fiber *leader;
	fiber *waiters;         /* F_COALESCED fibers, in arrival order */
} flight;

/* A step's result cache: capped LRU with a TTL. */
typedef struct centry {
	uint64_t hash;
	tr_buf key;
	tr_body *body;
	uint64_t expires_ns;
	struct centry *prev, *next; /* LRU: head = most recent */
} centry;

typedef struct cache {
	tr__map idx;            /* hash -> centry */
	centry *head, *tail;
	uint32_t n;
} cache;

struct run {
	tr_msg *req;            /* the RUN ask, taken: answered exactly once */
	run *next_free;         /* engine's run pool */
	uint64_t deadline_ns;   /* monotonic */
	uint64_t deadline_us;   /* wall, passed on to steps */
	uint64_t t0;
	fiber *fibers;
	fiber *root;
	uint8_t answered;
	uint32_t nlive;         /* fibers not DONE */
	/* TR_RUN_TRACE: the finished steps, each a msgpack map, back to back
	 * (the answer's "steps" array); `ntrace` of them. */
	tr_buf trace;
	uint32_t ntrace;
	/* Streamed text through the pipeline's `stream` filter (engine.h):
	 * 0 none yet, 1 open, 2 its last chunk sent, 3 over (done or
	 * blocked). stream_id keys e->streams. */
	uint64_t stream_id;
	uint8_t stream_state;
	/* Code that walks a run's fibers across calls that may end the run
	 * holds it; the free waits for the last release. */
	uint32_t hold;
	/* The root fiber lives in the run: a run without parallel steps is
	 * one allocation, and with the pools below, none in steady state. */
	fiber root_fiber;
};

/* One call step's figures (tr_pipe_step_stats), written by the engine
 * with relaxed atomics, read by anyone. */
typedef struct step_slot {
	const tr_step *step;
	_Atomic uint64_t calls, ok, failed, retries, timeouts, cache_hits, sum_us;
	_Atomic uint64_t buckets[TR_PIPE_NBUCKETS];
} step_slot;

/* Per-engine counters, shared with tr_pipe_stats_get readers. */
typedef struct stats_slot {
	tr_node *node;
	char name[64];
	_Atomic uint64_t v[sizeof(tr_pipe_stats) / sizeof(uint64_t)];
	step_slot *steps;       /* owned: one per call step, file order */
	size_t nsteps;
	struct stats_slot *next;
} stats_slot;

/* In the order of tr_pipe_stats' fields (readers copy it word by word). */
enum { S_RUNS, S_OK, S_FAILED, S_REFUSED, S_INFLIGHT, S_CALLS, S_RETRIES, S_FALLBACKS,
       S_CACHE_HITS, S_COALESCED, S_PARKED, S_TAP_SENT, S_TAP_DROPPED, S_TIMEOUTS,
       S_CACHE_MISSES, S_CANCELLED, S_EVENTS_DROPPED, S__N };
_Static_assert(S__N * sizeof(uint64_t) == sizeof(tr_pipe_stats), "S_* match tr_pipe_stats");

const uint64_t TR_PIPE_BUCKETS_US[TR_PIPE_NBUCKETS - 1] = {
	500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000,
	1000000, 2500000, 5000000, 10000000};



static uv_mutex_t slots_mu;
static uv_once_t slots_once = UV_ONCE_INIT;
static stats_slot *slots;

static void slots_init(void)
{
	uv_mutex_init(&slots_mu);
}

/*
 * The registry names of one step target (an actor name as the config
 * spells it), formatted once: "<name><suffix>", or "<name>#<i><suffix>"
 * for each of its instances. Building them per attempt with snprintf was
 * the engine's largest single cost per step.
 */
typedef struct target {
	uint32_t n;             /* 1, or the actor's instances */
	/* Placed (on = {...}): its instances are the ones here, when `here`,
	 * and those other nodes publish; NULL otherwise. Config-owned. */
	const tr_actor_spec *placed;
	uint8_t here;
	char names[][96];
} target;

/* Most instances one attempt of a placed step chooses from (local ones
 * first); any beyond are not seen. */
#define PLACED_MAX 64

/* Pool caps: enough for a busy engine's runs in flight to recycle
 * without malloc, small enough not to hoard memory after a burst. */
#define RUN_POOL_MAX 256
#define FIBER_POOL_MAX 64

typedef struct engine {
	const tr_config *cfg;
	const tr_pipeline_spec *spec;
	tr_node *node;
	tr__map calls;          /* corr -> fiber (CALLING) */
	tr__map rcalls;         /* corr -> fiber (SHARED): asks to the redis actor */
	uint64_t rtoken;        /* lock tokens: unique per engine, see shared_lock */
	tr__map timers;         /* timer id -> fiber (BACKOFF, PARKED) */
	tr__map parked;         /* actor idx -> head fiber of the parked queue */
	tr__map flights;        /* key hash -> flight (coalesce) */
	tr__map caches;         /* step address -> cache */
	tr__map targets;        /* address of an actor name in cfg -> target */
	tr__map runs;           /* (run ask corr, asker) -> run: for cancels */
	tr__map step_idx;       /* step address -> index in stats->steps */
	tr__map streams;        /* stream id -> run (text through the `stream` filter) */
	tr__map loads;          /* placed steps: instance ref -> our asks in flight to it */
	uint64_t stream_seq;
	run *free_runs;         /* pool, at most RUN_POOL_MAX */
	fiber *free_fibers;     /* pool of branch fibers, at most FIBER_POOL_MAX */
	uint32_t nfree_runs, nfree_fibers;
	uint32_t inflight;
	uint64_t rng;
	uint32_t rr;            /* round robin over instances */
	lua_State *L;           /* for `when` predicates; NULL if none */
	stats_slot *stats;
	const char *suffix;     /* generation suffix of actor names, "" if none */
	uint64_t avg_run_us;    /* EWMA of run durations, for retry_after_ms */
	tr_buf tapbuf;          /* tap events are packed here, then copied to their body */
} engine;

#define STAT_ADD(e, k, d) atomic_fetch_add_explicit(&(e)->stats->v[k], (d), memory_order_relaxed)

static void advance(tr_ctx *ctx, engine *e, fiber *f);
static void attempt_at(tr_ctx *ctx, engine *e, fiber *f, uint64_t now);
static void shared_unlock(tr_ctx *ctx, engine *e, fiber *f);
static void step_succeeded(tr_ctx *ctx, engine *e, fiber *f, int remote);
static void on_shared_reply(tr_ctx *ctx, engine *e, fiber *f, tr_msg *m);

/* Starts an attempt of f's step (clock reads cost ~30 ns each on the VMs;
 * call_start passes the one it already made). */
static void attempt(tr_ctx *ctx, engine *e, fiber *f)
{
	attempt_at(ctx, e, f, tr_now_ns());
}

/* ------------------------------------------------------------------ */
/* small things                                                        */

static uint64_t xrand(engine *e)
{
	e->rng ^= e->rng << 13;
	e->rng ^= e->rng >> 7;
	e->rng ^= e->rng << 17;
	return e->rng;
}

static const char *cls_name(int cls)
{
	switch (cls) {
	case C_TIMEOUT: return "timeout";
	case C_OVERLOAD: return "overload";
	case C_CRASHED: return "crashed";
	case C_DEADLINE: return "deadline";
	case C_INVALID: return "invalid";
	case C_CANCELLED: return "cancelled";
	case C_BLOCKED: return "blocked";
	case C_NODE_DOWN: return "node_down";
	default: return "error";
	}
}

static int classify(int err)
{
	switch (err) {
	case TR_ETIMEDOUT: return C_TIMEOUT;
	case TR_EFULL:
	case TR_EREJECTED:
	case TR_EDROPPED: return C_OVERLOAD;
	case TR_ECRASHED:
	case TR_EKILLED:
	case TR_ENOACTOR: /* dead or restarting: its supervisor brings it back */
		return C_CRASHED;
	case TR_ENODEDOWN: /* another instance may be up: retried like a crash */
		return C_NODE_DOWN;
	case TR_EINVAL:
	case TR_EPROTO:
		/* The actor says the message is bad (tr_step_fail with EINVAL):
		 * no retry can help, and the HTTP door answers 422. */
		return C_INVALID;
	default: return C_ERROR;
	}
}

static uint64_t time_left_us_at(const run *r, uint64_t now)
{
	return r->deadline_ns > now ? (r->deadline_ns - now) / 1000u : 0;
}

static uint64_t time_left_us(const run *r)
{
	return time_left_us_at(r, tr_now_ns());
}

/* The names of target `name` (a string of the config: its address is
 * the key), made on first use; NULL without memory. */
static const target *target_of(engine *e, const char *name)
{
	uint64_t key = (uint64_t)(uintptr_t)name;
	tr__map_ent *ent = tr__map_get(&e->targets, key, TR_REF_NONE);
	if (ent != NULL)
		return ent->ptr;
	const tr_actor_spec *a = tr_config_actor(e->cfg, name);
	uint32_t n = a != NULL && a->instances > 1 ? a->instances : 1;
	target *t = tr__malloc(sizeof(*t) + (size_t)n * sizeof(t->names[0]));
	if (t == NULL)
		return NULL;
	t->n = n;
	t->placed = a != NULL && tr_actor_placed(a) ? a : NULL;
	t->here = a != NULL && tr_actor_runs_here(e->cfg, a);
	for (uint32_t i = 0; i < n; i++) {
		if (n > 1)
			snprintf(t->names[i], sizeof(t->names[i]), "%s#%u%s", name, i, e->suffix);
		else
			snprintf(t->names[i], sizeof(t->names[i]), "%s%s", name, e->suffix);
	}
	if (tr__map_put(&e->targets, key, TR_REF_NONE, t) != TR_OK) {
		tr__free(t);
		return NULL;
	}
	return t;
}

/* A target's ref in our generation, round robin over its instances.
 * The registry is asked every time (a restarted actor is a new ref under
 * the same name); only the name strings are cached. */
static int resolve_in(engine *e, const target *t, tr_ref *ref, uint32_t *inst)
{
	uint32_t i = t->n > 1 ? e->rr++ % t->n : 0;
	if (inst != NULL)
		*inst = t->n > 1 ? i + 1 : 0; /* 0: no "#i" */
	return tr_whereis(e->node, t->names[i], ref);
}

/* Resolves an actor name of this node (taps, stream filters). */
static int resolve(engine *e, const char *name, tr_ref *ref, uint32_t *inst)
{
	const target *t = target_of(e, name);
	return t != NULL ? resolve_in(e, t, ref, inst) : TR_ENOMEM;
}

/* ---- placed targets: least in flight ---------------------------------- */

/* e->loads key of an instance (the map's key 0 means empty). */
static uint64_t load_key(tr_ref r)
{
	return ((uint64_t)r.node << 32 | r.idx) | 1ull << 63;
}

static uint32_t load_of(engine *e, tr_ref r)
{
	tr__map_ent *ent = tr__map_get(&e->loads, load_key(r), r);
	return ent != NULL ? (uint32_t)(uintptr_t)ent->ptr : 0;
}

/* f's ask to its placed target is out: count it (without memory it is
 * not counted, which only makes that instance look idler). */
static void load_add(engine *e, fiber *f)
{
	tr__map_ent *ent = tr__map_get(&e->loads, load_key(f->target_ref), f->target_ref);
	if (ent != NULL)
		ent->ptr = (void *)((uintptr_t)ent->ptr + 1);
	else if (tr__map_put(&e->loads, load_key(f->target_ref), f->target_ref, (void *)1) != TR_OK)
		return;
	f->loaded = 1;
}

/* f's counted call ended (answered, timed out or abandoned). */
static void load_done(engine *e, fiber *f)
{
	if (!f->loaded)
		return;
	f->loaded = 0;
	tr__map_ent *ent = tr__map_get(&e->loads, load_key(f->target_ref), f->target_ref);
	if (ent == NULL)
		return;
	if ((uintptr_t)ent->ptr > 1)
		ent->ptr = (void *)((uintptr_t)ent->ptr - 1);
	else
		tr__map_del(&e->loads, load_key(f->target_ref), f->target_ref, NULL);
}

/*
 * Picks the instance of placed target t for f's attempt: among this
 * node's instances (when it runs them) and those other nodes publish
 * (tr_whereis_remote: only live members), the one with the fewest of our
 * asks in flight, ties broken round robin; a retry passes over the
 * instance that just failed when there is another. TR_ENOACTOR when
 * there is none at all. Costs a registry lookup per local instance and
 * one cluster lookup: placed steps only.
 */
static int pick_placed(engine *e, fiber *f, const target *t)
{
	tr_ref c[PLACED_MAX];
	size_t n = 0, nlocal, best = 0;
	uint32_t inst[PLACED_MAX], best_load = UINT32_MAX;

	for (uint32_t i = 0; t->here && i < t->n && n < PLACED_MAX; i++)
		if (tr_whereis(e->node, t->names[i], &c[n]) == TR_OK)
			inst[n++] = t->n > 1 ? i + 1 : 0;
	nlocal = n;
	n += tr_whereis_remote(e->node, t->placed->name, c + n, PLACED_MAX - n);
	if (n == 0)
		return TR_ENOACTOR;
	size_t start = e->rr++ % n;
	for (size_t k = 0; k < n; k++) {
		size_t j = (start + k) % n;
		uint32_t l;
		if (n > 1 && tr_ref_eq(c[j], f->avoid))
			continue;
		if ((l = load_of(e, c[j])) < best_load) {
			best = j;
			best_load = l;
		}
	}
	f->target_ref = c[best];
	f->inst = best < nlocal ? inst[best] : 0;
	return TR_OK;
}

static void targets_free(engine *e)
{
	for (uint32_t i = 0; i < e->targets.cap; i++)
		if (e->targets.ents[i].key != 0)
			tr__free(e->targets.ents[i].ptr);
	tr__map_free(&e->targets);
}

/* ------------------------------------------------------------------ */
/* taps: fire and forget                                               */

static uint32_t tap_bit(const char *event)
{
	switch (event[0]) {
	case 's': return TR_TAP_START;
	case 'e': return event[1] == 'n' ? TR_TAP_END : TR_TAP_ERROR;
	case 'r': return TR_TAP_RETRY;
	default: return TR_TAP_TIMEOUT;
	}
}

static void tap(tr_ctx *ctx, engine *e, const fiber *f, const char *event, int cls)
{
	tr_ref to;
	msgpack_packer pk;
	tr_body *body;
	char trace[33];
	const run *r = f->r;

	if (e->spec->tap == NULL ||
	    !((e->spec->tap_events ? e->spec->tap_events : TR_TAP_ALL) & tap_bit(event)))
		return;
	if (resolve(e, e->spec->tap, &to, NULL) != TR_OK) {
		STAT_ADD(e, S_TAP_DROPPED, 1);
		return;
	}
	static const char hex[] = "0123456789abcdef";
	for (int i = 0; i < 16; i++) {
		trace[i] = hex[(r->req->trace_hi >> (60 - 4 * i)) & 15];
		trace[16 + i] = hex[(r->req->trace_lo >> (60 - 4 * i)) & 15];
	}
	trace[32] = '\0';
	uint64_t now = tr_now_ns();
	/* One event per step of every run: packed into the engine's buffer
	 * (kept between events, at most a few hundred bytes), keys by their
	 * known lengths. */
	tr_buf *b = &e->tapbuf;
	b->len = 0;
	tr__mp_packer(&pk, b);
#define KEY(k) (msgpack_pack_str(&pk, sizeof(k) - 1) || msgpack_pack_str_body(&pk, k, sizeof(k) - 1))
	int bad = msgpack_pack_map(&pk, cls ? 8 : 7) ||
	          KEY("event") || tr__mp_pack_cstr(&pk, event) ||
	          KEY("pipeline") || tr__mp_pack_cstr(&pk, e->spec->name) ||
	          KEY("step") || tr__mp_pack_cstr(&pk, f->target ? f->target : "") ||
	          KEY("attempt") || msgpack_pack_uint32(&pk, f->attempts) ||
	          KEY("step_us") || msgpack_pack_uint64(&pk, (now - f->step_t0) / 1000u) ||
	          KEY("run_us") || msgpack_pack_uint64(&pk, (now - r->t0) / 1000u) ||
	          KEY("trace") || msgpack_pack_str(&pk, 32) || msgpack_pack_str_body(&pk, trace, 32) ||
	          (cls && (KEY("error") || tr__mp_pack_cstr(&pk, cls_name(cls))));
#undef KEY
	body = bad ? NULL : tr_body_new(b->data, b->len);
	if (body != NULL)
		tr__body_mark_checked(body); /* packed above: the tap need not walk it */
	if (b->cap > 4096)
		tr_buf_free(b); /* a huge name once: not kept */
	if (body == NULL) {
		STAT_ADD(e, S_TAP_DROPPED, 1);
		return;
	}
	tr_msg *m = tr_msg_new();
	if (m == NULL) {
		tr_body_unref(body);
		STAT_ADD(e, S_TAP_DROPPED, 1);
		return;
	}
	m->tag = TR_TAG_STEP;
	m->body = body;
	m->trace_hi = r->req->trace_hi;
	m->trace_lo = r->req->trace_lo;
	m->tenant = r->req->tenant;
	/* A full tap (any policy) drops the event; a blocked tap's later
	 * WRITABLE is ignored. The run never waits for its tap. */
	if (tr_send(ctx, to, m) == TR_OK)
		STAT_ADD(e, S_TAP_SENT, 1);
	else
		STAT_ADD(e, S_TAP_DROPPED, 1);
}

/* The actor a step's fiber asked, as clients see it: "rag#1". */
static void actor_name(const fiber *f, char *buf, size_t n)
{
	if (f->inst > 0)
		snprintf(buf, n, "%s#%u", f->target ? f->target : "", f->inst - 1);
	else
		snprintf(buf, n, "%s", f->target ? f->target : "");
}

/* TR_RUN_EVENTS: one step event to the run's asker, fire and forget. */
static void event(tr_ctx *ctx, engine *e, const fiber *f, const char *ev)
{
	const run *r = f->r;
	tr_buf b;
	msgpack_packer pk;
	char actor[112];

	if (!(r->req->arg & TR_RUN_EVENTS) || f->step == NULL)
		return;
	actor_name(f, actor, sizeof(actor));
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	int bad = msgpack_pack_map(&pk, 6) || tr__mp_pack_cstr(&pk, "type") ||
	          tr__mp_pack_cstr(&pk, "step") || tr__mp_pack_cstr(&pk, "event") ||
	          tr__mp_pack_cstr(&pk, ev) || tr__mp_pack_cstr(&pk, "step") ||
	          tr__mp_pack_cstr(&pk, f->step->u.call.actor) || tr__mp_pack_cstr(&pk, "actor") ||
	          tr__mp_pack_cstr(&pk, actor) || tr__mp_pack_cstr(&pk, "attempts") ||
	          msgpack_pack_uint32(&pk, f->attempts) || tr__mp_pack_cstr(&pk, "us") ||
	          msgpack_pack_uint64(&pk, (tr_now_ns() - f->step_t0) / 1000u);
	tr_msg *m = bad ? NULL : tr_msg_new();
	if (m == NULL) {
		tr_buf_free(&b);
		STAT_ADD(e, S_EVENTS_DROPPED, 1);
		return;
	}
	m->tag = TR_TAG_RUN_EVENT;
	/* A system message, as the run's answer is: the two queues are
	 * delivered in their own orders, so only this keeps every event
	 * ahead of the answer. Bounded by the run's steps. */
	m->flags = TR_MSGF_SYSTEM;
	m->corr = r->req->corr;
	m->trace_hi = r->req->trace_hi;
	m->trace_lo = r->req->trace_lo;
	m->body = tr_body_new(b.data, b.len);
	tr_buf_free(&b);
	if (m->body == NULL || tr_send(ctx, r->req->from, m) != TR_OK)
		STAT_ADD(e, S_EVENTS_DROPPED, 1);
}

/* TR_RUN_EVENTS: streamed text of the run, {type = "delta", text}. */
static void delta_event(tr_ctx *ctx, engine *e, const run *r, const char *txt, size_t n)
{
	tr_buf b;
	msgpack_packer pk;
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	int bad = msgpack_pack_map(&pk, 2) || tr__mp_pack_cstr(&pk, "type") ||
	          tr__mp_pack_cstr(&pk, "delta") || tr__mp_pack_cstr(&pk, "text") ||
	          msgpack_pack_str(&pk, n) || msgpack_pack_str_body(&pk, txt, n);
	tr_msg *m = bad ? NULL : tr_msg_new();
	if (m == NULL) {
		tr_buf_free(&b);
		STAT_ADD(e, S_EVENTS_DROPPED, 1);
		return;
	}
	m->tag = TR_TAG_RUN_EVENT;
	m->flags = TR_MSGF_SYSTEM; /* in order with the other events and the answer */
	m->corr = r->req->corr;
	m->trace_hi = r->req->trace_hi;
	m->trace_lo = r->req->trace_lo;
	m->body = tr_body_new(b.data, b.len);
	tr_buf_free(&b);
	if (m->body == NULL || tr_send(ctx, r->req->from, m) != TR_OK)
		STAT_ADD(e, S_EVENTS_DROPPED, 1);
}

/* A chunk of the run's text to the `stream` filter (last: its end). */
static void stream_chunk(tr_ctx *ctx, engine *e, run *r, const char *txt, size_t n, int last)
{
	tr_ref to;
	tr_buf b;
	msgpack_packer pk;
	if (resolve(e, e->spec->stream, &to, NULL) != TR_OK) {
		STAT_ADD(e, S_EVENTS_DROPPED, 1);
		return;
	}
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	int bad = msgpack_pack_map(&pk, 1) || tr__mp_pack_cstr(&pk, "text") ||
	          msgpack_pack_str(&pk, n) || msgpack_pack_str_body(&pk, txt, n);
	tr_msg *m = bad ? NULL : tr_msg_new();
	if (m == NULL || (m->body = tr_body_new(b.data, b.len)) == NULL) {
		tr_msg_free(m);
		tr_buf_free(&b);
		STAT_ADD(e, S_EVENTS_DROPPED, 1);
		return;
	}
	tr_buf_free(&b);
	m->tag = TR_TAG_STREAM_CHUNK;
	m->corr = r->stream_id;
	m->arg = last ? 1 : 0;
	m->tenant = r->req->tenant;
	if (tr_send(ctx, to, m) != TR_OK)
		STAT_ADD(e, S_EVENTS_DROPPED, 1);
}

/* The producing step answered (or the run ends): the filter's last chunk. */
static void stream_end(tr_ctx *ctx, engine *e, run *r)
{
	if (r->stream_state != 1)
		return;
	r->stream_state = 2;
	stream_chunk(ctx, e, r, "", 0, 1);
}

/* A step event: to the tap and, when asked for, to the run's asker. */
static void notify(tr_ctx *ctx, engine *e, const fiber *f, const char *ev, int cls)
{
	tap(ctx, e, f, ev, cls);
	event(ctx, e, f, ev);
}

#define SLOT_ADD(x, d) atomic_fetch_add_explicit(&(x), (d), memory_order_relaxed)

/* A call step of f ended (ok or not): its figures, and its line in the
 * run's trace. */
static void step_done(engine *e, fiber *f, int ok, int cached, int coalesced)
{
	run *r = f->r;
	const tr_step *s = f->step;
	uint64_t us = (tr_now_ns() - f->step_t0) / 1000u;
	if (s == NULL)
		return;
	tr__map_ent *ent = tr__map_get(&e->step_idx, (uint64_t)(uintptr_t)s, TR_REF_NONE);
	if (ent != NULL) {
		step_slot *ss = &e->stats->steps[(uintptr_t)ent->ptr];
		int b = 0;
		while (b < TR_PIPE_NBUCKETS - 1 && us > TR_PIPE_BUCKETS_US[b])
			b++;
		SLOT_ADD(ss->calls, 1);
		SLOT_ADD(*(ok ? &ss->ok : &ss->failed), 1);
		SLOT_ADD(ss->sum_us, us);
		SLOT_ADD(ss->buckets[b], 1);
		if (cached)
			SLOT_ADD(ss->cache_hits, 1);
	}
	if (!(r->req->arg & TR_RUN_TRACE))
		return;
	/* One trace line, {step, actor, us, attempts, cached, coalesced, ok}:
	 * the keys are constant bytes, written whole (a packer call per key
	 * was a tenth of the 5-step no-op pipeline's time). */
	msgpack_packer pk;
	const char *tg = f->target ? f->target : "";
	size_t mark = r->trace.len, tl = strlen(tg);
	char inst[16];
	size_t il = 0;
	if (f->inst > 0) {
		uint32_t v = f->inst - 1;
		char d[12];
		size_t k = 0;
		do
			d[k++] = (char)('0' + v % 10);
		while ((v /= 10) != 0);
		inst[il++] = '#';
		while (k > 0)
			inst[il++] = d[--k];
	}
	tr__mp_packer(&pk, &r->trace);
	if (tr__buf_append(&r->trace, f->placed ? "\x88\xa4step" : "\x87\xa4step", 6) ||
	    tr__mp_pack_cstr(&pk, s->u.call.actor) ||
	    tr__buf_append(&r->trace, "\xa5" "actor", 6) || msgpack_pack_str(&pk, tl + il) ||
	    tr__buf_append(&r->trace, tg, tl) || tr__buf_append(&r->trace, inst, il) ||
	    (f->placed && (tr__buf_append(&r->trace, "\xa4node", 5) ||
	                   msgpack_pack_uint32(&pk, f->target_ref.node))) ||
	    tr__buf_append(&r->trace, "\xa2us", 3) || msgpack_pack_uint64(&pk, us) ||
	    tr__buf_append(&r->trace, "\xa8" "attempts", 9) || msgpack_pack_uint32(&pk, f->attempts) ||
	    tr__buf_append(&r->trace, "\xa6" "cached", 7) ||
	    tr__buf_append(&r->trace, cached ? "\xc3" : "\xc2", 1) ||
	    tr__buf_append(&r->trace, "\xa9" "coalesced", 10) ||
	    tr__buf_append(&r->trace, coalesced ? "\xc3" : "\xc2", 1) ||
	    tr__buf_append(&r->trace, "\xa2ok", 3) || tr__buf_append(&r->trace, ok ? "\xc3" : "\xc2", 1))
		r->trace.len = mark; /* out of memory: that line is left out */
	else
		r->ntrace++;
}

/* The answer body of a traced run: {output = body, steps = [...]} for a
 * result; an error body (a map) with "steps" added. NULL without memory
 * (the caller answers without the trace then). */
static tr_body *traced_body(const run *r, tr_body *body, int is_err)
{
	tr_buf b;
	msgpack_packer pk;
	uint32_t n = 0;
	tr_body *out = NULL;
	static const unsigned char empty_map[] = {0x80};
	const unsigned char *p = body ? body->data : empty_map;
	size_t len = body ? body->len : 1;

	tr_buf_init(&b);
	/* Its size, give or take the headers: one allocation, not a chain. */
	if (tr__buf_reserve(&b, len + r->trace.len + 24) != TR_OK)
		return NULL;
	tr__mp_packer(&pk, &b);
	if (is_err) {
		size_t hdr;
		/* The error map's entries follow its header: re-head with n + 1. */
		if (tr__mp_map_head(p, len, &n, &hdr) != TR_OK)
			goto done;
		if (msgpack_pack_map(&pk, n + 1) || tr__buf_append(&b, p + hdr, len - hdr))
			goto done;
	} else if (msgpack_pack_map(&pk, 2) || tr__mp_pack_cstr(&pk, "output") ||
	           tr__buf_append(&b, p, len)) {
		goto done;
	}
	if (tr__mp_pack_cstr(&pk, "steps") || msgpack_pack_array(&pk, r->ntrace) ||
	    tr__buf_append(&b, r->trace.data, r->trace.len))
		goto done;
	out = tr_body_new(b.data, b.len);
done:
	tr_buf_free(&b);
	return out;
}

/* ------------------------------------------------------------------ */
/* answering a run                                                     */

static tr_body *error_body(const fiber *f, int cls, const char *message, uint64_t retry_ms)
{
	tr_buf b;
	msgpack_packer pk;
	tr_body *body = NULL;
	int with_step = f != NULL && f->target != NULL;
	uint32_t n = 3 + (uint32_t)with_step + (retry_ms > 0);

	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	if (!(msgpack_pack_map(&pk, n) || tr__mp_pack_cstr(&pk, "code") ||
	      tr__mp_pack_cstr(&pk, cls_name(cls)) ||
	      (with_step && (tr__mp_pack_cstr(&pk, "step") || tr__mp_pack_cstr(&pk, f->target))) ||
	      tr__mp_pack_cstr(&pk, "message") || tr__mp_pack_cstr(&pk, message) ||
	      tr__mp_pack_cstr(&pk, "attempts") ||
	      msgpack_pack_uint32(&pk, f != NULL ? f->attempts : 0) ||
	      (retry_ms > 0 && (tr__mp_pack_cstr(&pk, "retry_after_ms") ||
	                        msgpack_pack_uint64(&pk, retry_ms)))))
		body = tr_body_new(b.data, b.len);
	tr_buf_free(&b);
	return body;
}

/* Sends the answer to `req`: a result (err TR_OK, body) or an error.
 * Takes the body reference. */
static void answer(tr_ctx *ctx, const tr_msg *req, int err, tr_body *body)
{
	tr_msg *m = tr_msg_new();
	if (m == NULL) {
		tr_body_unref(body);
		(void)tr_reply_error(ctx, req, err ? err : TR_ENOMEM);
		return;
	}
	m->tag = TR_TAG_RUN;
	m->body = body;
	if (err != TR_OK) {
		m->flags = TR_MSGF_ERROR;
		m->err = err;
	}
	m->trace_hi = req->trace_hi;
	m->trace_lo = req->trace_lo;
	m->tenant = req->tenant;
	(void)tr_reply(ctx, req, m);
}

/* Takes a fiber out of whatever it waits on. */
static void flight_leave(tr_ctx *ctx, engine *e, fiber *f);

static void unwait(tr_ctx *ctx, engine *e, fiber *f)
{
	void *p;
	if (f->st == F_CALLING) {
		tr__map_del(&e->calls, f->corr, TR_REF_NONE, &p);
		load_done(e, f);
		if (f->timer != 0) { /* its first-byte timer */
			tr__map_del(&e->timers, f->timer, TR_REF_NONE, &p);
			(void)tr_timer_cancel(ctx, f->timer);
		}
	}
	if (f->st == F_SHARED && f->corr != 0)
		tr__map_del(&e->rcalls, f->corr, TR_REF_NONE, &p);
	if ((f->st == F_BACKOFF || f->st == F_PARKED || f->st == F_COALESCED || f->st == F_SHARED) &&
	    f->timer != 0) {
		tr__map_del(&e->timers, f->timer, TR_REF_NONE, &p);
		(void)tr_timer_cancel(ctx, f->timer);
	}
	if (f->st == F_PARKED) {
		tr__map_ent *q = tr__map_get(&e->parked, f->target_ref.idx, TR_REF_NONE);
		fiber **pp = q ? (fiber **)&q->ptr : NULL;
		while (pp != NULL && *pp != NULL && *pp != f)
			pp = &(*pp)->next_parked;
		if (pp != NULL && *pp == f)
			*pp = f->next_parked;
		if (q != NULL && q->ptr == NULL)
			tr__map_del(&e->parked, f->target_ref.idx, TR_REF_NONE, &p);
	}
	f->corr = f->timer = 0;
	f->next_parked = NULL;
	if (f->flight != NULL)
		flight_leave(ctx, e, f);
	if (f->rlock)
		shared_unlock(ctx, e, f);
}

/* Stops every fiber of the run (or of one parallel parent) from waiting
 * (late replies and timers then find nothing) and marks it done. */
static void cut_fibers(tr_ctx *ctx, engine *e, run *r, const fiber *parent)
{
	for (fiber *f = r->fibers; f != NULL; f = f->next_in_run) {
		if (f->st != F_DONE && (parent == NULL || f->parent == parent)) {
			unwait(ctx, e, f);
			f->st = F_DONE;
			r->nlive--;
		}
	}
}

/* A new run, from the pool if it has one; fields up to root_fiber are
 * zero (fiber_new sets up the root). */
static run *run_new(engine *e)
{
	run *r = e->free_runs;
	tr_buf trace;
	tr_buf_init(&trace);
	if (r != NULL) {
		e->free_runs = r->next_free;
		e->nfree_runs--;
		trace = r->trace; /* a pooled run keeps its trace storage, empty */
	} else if ((r = tr__malloc(sizeof(*r))) == NULL) {
		return NULL;
	}
	memset(r, 0, offsetof(run, root_fiber));
	r->trace = trace;
	return r;
}

/* Frees a run, its fibers and its request; structs go back to the
 * pools while they have room. */
static void run_free(engine *e, run *r)
{
	fiber *f = r->fibers;
	while (f != NULL) {
		fiber *next = f->next_in_run;
		tr_body_unref(f->body);
		tr_buf_free(&f->par_merged);
		tr_buf_free(&f->ckey);
		if (f != &r->root_fiber) {
			if (e->nfree_fibers < FIBER_POOL_MAX) {
				f->next_free = e->free_fibers;
				e->free_fibers = f;
				e->nfree_fibers++;
			} else {
				tr__free(f);
			}
		}
		f = next;
	}
	tr_msg_free(r->req);
	/* A pooled run keeps up to 4 KiB of trace storage: the next run's
	 * steps then append without growing it (3-4 reallocs a run before). */
	if (e->nfree_runs < RUN_POOL_MAX && r->trace.cap <= 4096)
		r->trace.len = 0;
	else
		tr_buf_free(&r->trace);
	if (e->nfree_runs < RUN_POOL_MAX) {
		r->next_free = e->free_runs;
		e->free_runs = r;
		e->nfree_runs++;
	} else {
		tr__free(r);
	}
}

static void pools_free(engine *e)
{
	while (e->free_runs != NULL) {
		run *r = e->free_runs;
		e->free_runs = r->next_free;
		tr_buf_free(&r->trace);
		tr__free(r);
	}
	while (e->free_fibers != NULL) {
		fiber *f = e->free_fibers;
		e->free_fibers = f->next_free;
		tr__free(f);
	}
	e->nfree_runs = e->nfree_fibers = 0;
}

static void run_release(engine *e, run *r)
{
	if (--r->hold == 0 && r->answered)
		run_free(e, r);
}

/* The run is over: answer it (exactly once) and free it, or leave the
 * free to whoever holds it. */
static void run_end(tr_ctx *ctx, engine *e, run *r, int err, tr_body *body)
{
	uint64_t us = (tr_now_ns() - r->t0) / 1000u;
	void *p;
	e->avg_run_us = e->avg_run_us ? (e->avg_run_us * 7 + us) / 8 : us;
	STAT_ADD(e, err == TR_OK ? S_OK : S_FAILED, 1);
	tr__map_del(&e->runs, r->req->corr, r->req->from, &p);
	if (r->stream_id != 0) {
		/* The filter frees its state at the last chunk; late output of
		 * it finds no run and is dropped. */
		stream_end(ctx, e, r);
		tr__map_del(&e->streams, r->stream_id, TR_REF_NONE, &p);
		r->stream_state = 3;
	}
	if (err == TR_OK && e->spec->output != NULL && body != NULL) {
		/* output = { ... }: the answer keeps those fields only (without
		 * memory it keeps them all rather than fail a finished run). */
		tr_buf b;
		tr_buf_init(&b);
		tr_body *pb = tr__mp_map_pick(body->data, body->len, e->spec->output,
		                              e->spec->noutput, &b) == TR_OK
		                  ? tr_body_new(b.data, b.len) : NULL;
		tr_buf_free(&b);
		if (pb != NULL) {
			tr_body_unref(body);
			body = pb;
		}
	}
	if (r->req->arg & TR_RUN_TRACE) {
		tr_body *t = traced_body(r, body, err != TR_OK);
		if (t != NULL) {
			tr_body_unref(body);
			body = t;
		}
	}
	answer(ctx, r->req, err, body);
	r->answered = 1;
	cut_fibers(ctx, e, r, NULL);
	e->inflight--;
	STAT_ADD(e, S_INFLIGHT, (uint64_t)-1);
	if (r->hold == 0)
		run_free(e, r);
}

/* ------------------------------------------------------------------ */
/* fibers                                                              */

/* A new fiber of run `r`: its root (parent NULL, the one inside the run)
 * or a parallel branch (from the pool, else the heap). */
static fiber *fiber_new(engine *e, run *r, fiber *parent, tr_body *body)
{
	fiber *f;
	if (parent == NULL) {
		f = &r->root_fiber;
	} else if ((f = e->free_fibers) != NULL) {
		e->free_fibers = f->next_free;
		e->nfree_fibers--;
	} else if ((f = tr__malloc(sizeof(*f))) == NULL) {
		return NULL;
	}
	memset(f, 0, offsetof(fiber, stack));
	f->r = r;
	f->parent = parent;
	f->body = tr_body_ref(body);
	tr_buf_init(&f->par_merged);
	tr_buf_init(&f->ckey);
	f->next_in_run = r->fibers;
	r->fibers = f;
	r->nlive++;
	return f;
}

static void join_branch(tr_ctx *ctx, engine *e, fiber *parent, fiber *child, int ok);

/* A fiber finished its steps (ok) or failed (cls, err, message). */
static void fiber_end(tr_ctx *ctx, engine *e, fiber *f, int ok, int cls, int err,
                      const char *message)
{
	run *r = f->r;
	unwait(ctx, e, f);
	f->st = F_DONE;
	r->nlive--;
	if (f->parent != NULL) {
		f->last_cls = cls;
		f->last_err = err;
		join_branch(ctx, e, f->parent, f, ok);
		return;
	}
	if (ok) {
		run_end(ctx, e, r, TR_OK, tr_body_ref(f->body));
	} else {
		tr_body *b = error_body(f, cls, message, 0);
		run_end(ctx, e, r, err ? err : TR_EFAILED, b);
	}
}

static void fail(tr_ctx *ctx, engine *e, fiber *f, int cls, int err, const char *message)
{
	if (f->rlock)
		shared_unlock(ctx, e, f); /* the other nodes' waiters run it themselves */
	if (f->target != NULL) {
		notify(ctx, e, f, cls == C_TIMEOUT ? "timeout" : "error", cls);
		step_done(e, f, 0, 0, f->st == F_COALESCED);
	}
	fiber_end(ctx, e, f, 0, cls, err, message);
}

/* Replaces the fiber's message with `b` (a new reference). */
static void set_body(fiber *f, tr_body *b)
{
	tr_body_unref(f->body);
	f->body = b;
}

/* Ends a join whose outcome is decided: enough branches succeeded, or
 * all are done. `c` is the branch that decided it (NULL: none). */
static void join_settle(tr_ctx *ctx, engine *e, fiber *p, const fiber *c)
{
	cut_fibers(ctx, e, p->r, p);
	if (p->par_ok < p->par_need) {
		if (c != NULL) {
			p->target = c->target;
			p->attempts = c->attempts;
		}
		fiber_end(ctx, e, p, 0, c && c->last_cls ? c->last_cls : C_ERROR,
		          c && c->last_err ? c->last_err : TR_EFAILED,
		          "too few parallel branches succeeded");
		return;
	}
	if (p->par_merged.len > 0) {
		tr_body *b = tr_body_new(p->par_merged.data, p->par_merged.len);
		tr_buf_free(&p->par_merged);
		if (b == NULL) {
			fiber_end(ctx, e, p, 0, C_ERROR, TR_ENOMEM, "out of memory");
			return;
		}
		set_body(p, b);
	}
	advance(ctx, e, p);
}

static void join_branch(tr_ctx *ctx, engine *e, fiber *p, fiber *c, int ok)
{
	p->par_left--;
	if (ok) {
		/* Merge the branch's output into the parent's message, in
		 * completion order: later keys win. */
		tr_buf out;
		int first = p->par_merged.len == 0;
		tr_buf_init(&out);
		int rc = tr__mp_map_merge(first ? p->body->data : p->par_merged.data,
		                          first ? p->body->len : p->par_merged.len, c->body->data,
		                          c->body->len, &out);
		if (rc == TR_OK) {
			tr_buf_free(&p->par_merged);
			p->par_merged = out;
			p->par_ok++;
		} else {
			tr_buf_free(&out);
			ok = 0;
			c->last_cls = C_ERROR;
			c->last_err = rc;
		}
	}
	if (!ok && p->par->u.par.join == TR_JOIN_ALL) {
		/* One failed branch fails the join; the others are cut off
		 * (their late replies find no fiber and are dropped). */
		p->par_ok = 0;
		p->par_need = 1;
		join_settle(ctx, e, p, c);
		return;
	}
	if (p->spawning)
		return; /* parallel_start() settles once every branch started */
	if (p->par_ok >= p->par_need || p->par_left == 0)
		join_settle(ctx, e, p, c);
}

static void parallel_start(tr_ctx *ctx, engine *e, fiber *f, const tr_step *s)
{
	run *r = f->r;
	size_t nb = s->u.par.nbranches;
	f->st = F_JOINING;
	f->par = s;
	f->par_left = (uint32_t)nb;
	f->par_ok = 0;
	f->par_need = s->u.par.join == TR_JOIN_ALL     ? (uint32_t)nb
	              : s->u.par.join == TR_JOIN_FIRST ? 1
	                                               : s->u.par.join_n;
	f->spawning = 1;
	r->hold++; /* branches may end the whole run while we loop */
	for (size_t i = 0; i < nb && !r->answered && f->st == F_JOINING; i++) {
		fiber *c = fiber_new(e, r, f, f->body);
		if (c == NULL) {
			f->spawning = 0;
			cut_fibers(ctx, e, r, f);
			fiber_end(ctx, e, f, 0, C_ERROR, TR_ENOMEM, "out of memory");
			break;
		}
		c->stack[0] = (frame){&s->u.par.branches[i], 0};
		c->depth = 1;
		advance(ctx, e, c);
	}
	if (!r->answered && f->st == F_JOINING) {
		f->spawning = 0;
		/* Branches that finished without a call (when = false, empty
		 * lists) may have decided the join already. */
		if (f->par_ok >= f->par_need || f->par_left == 0)
			join_settle(ctx, e, f, NULL);
	}
	run_release(e, r);
}

/* ------------------------------------------------------------------ */
/* coalescing and caching                                              */

/* The in-memory maps' hash of a cache or coalescing key (the step's
 * whole input: kilobytes with passages). */
static uint64_t key_hash(const void *p, size_t n)
{
	return tr__hash_bytes(p, n) | 1; /* 0 is the maps' empty key */
}

/* Appends a NUL-terminated string and the run's tenant id to a key. */
/* The tenant by name, not by number: keys shared through Redis must mean
 * the same on every node, whatever order each node's files list tenants in. */
static int key_prefix(const fiber *f, const char *actor, tr_buf *k)
{
	const char *t = tr_tenant_name(f->r->req->tenant);
	if (t == NULL)
		t = "";
	return tr__buf_append(k, actor, strlen(actor) + 1) || tr__buf_append(k, t, strlen(t) + 1)
	           ? TR_ENOMEM
	           : TR_OK;
}

/* Settles a flight with its leader's outcome: waiters get the same
 * result (ok) or the same error. The flight is gone afterwards; an
 * identical call from now on starts a new one. */
static void flight_done(tr_ctx *ctx, engine *e, fiber *leader, int ok, int cls, int err,
                        const char *message)
{
	flight *fl = leader->flight;
	void *p;
	fiber *w, *next;

	leader->flight = NULL;
	tr__map_del(&e->flights, fl->hash, TR_REF_NONE, &p);
	/* Advancing one waiter can end another's run (parallel branches of
	 * one run): hold every run first, release after. */
	for (w = fl->waiters; w != NULL; w = w->next_waiter)
		w->r->hold++;
	for (w = fl->waiters; w != NULL; w = w->next_waiter) {
		if (w->r->answered || w->st != F_COALESCED)
			continue;
		w->flight = NULL; /* so unwait() does not touch the flight */
		unwait(ctx, e, w);
		w->st = F_RUNNING;
		if (ok) {
			set_body(w, tr_body_ref(leader->body));
			notify(ctx, e, w, "end", 0);
			step_done(e, w, 1, 0, 1);
			w->step = NULL;
			advance(ctx, e, w);
		} else {
			w->attempts = leader->attempts;
			fail(ctx, e, w, cls, err, message);
		}
	}
	for (w = fl->waiters; w != NULL; w = next) {
		next = w->next_waiter;
		w->next_waiter = NULL;
		run_release(e, w->r);
	}
	tr_buf_free(&fl->key);
	tr__free(fl);
}

/* `f` leaves its flight without an outcome (cut off, or its own deadline
 * passed). A leaving leader hands the call to the first waiter, which
 * starts it from a zero-delay retry timer (never from inside this call:
 * unwait() runs in the middle of other fibers' bookkeeping). */
static void flight_leave(tr_ctx *ctx, engine *e, fiber *f)
{
	flight *fl = f->flight;
	void *p;
	f->flight = NULL;
	if (fl->leader != f) {
		fiber **pp = &fl->waiters;
		while (*pp != NULL && *pp != f)
			pp = &(*pp)->next_waiter;
		if (*pp == f)
			*pp = f->next_waiter;
		f->next_waiter = NULL;
		return;
	}
	fiber *w = fl->waiters;
	if (w == NULL) {
		tr__map_del(&e->flights, fl->hash, TR_REF_NONE, &p);
		tr_buf_free(&fl->key);
		tr__free(fl);
		return;
	}
	uint64_t id;
	fl->waiters = w->next_waiter;
	w->next_waiter = NULL;
	fl->leader = w;
	/* w keeps fl; swap its deadline timer for a retry timer. */
	if (w->timer != 0) {
		tr__map_del(&e->timers, w->timer, TR_REF_NONE, &p);
		(void)tr_timer_cancel(ctx, w->timer);
		w->timer = 0;
	}
	w->st = F_BACKOFF;
	if (tr_timer_after(ctx, TAG_RETRY, 0, &id) == TR_OK &&
	    tr__map_put(&e->timers, id, TR_REF_NONE, w) == TR_OK)
		w->timer = id;
	/* else: out of memory; w stays parked without a timer and its run
	 * ends at its deadline check of the next fiber event (rare). */
}

/* Joins an identical in-flight call (returns 1: f now waits) or makes f
 * the leader of a new flight (returns 0). */
static int flight_join(tr_ctx *ctx, engine *e, fiber *f)
{
	tr_buf k;
	tr__map_ent *ent;
	flight *fl;
	uint64_t h, id, left = time_left_us(f->r);

	tr_buf_init(&k);
	if (key_prefix(f, f->target, &k) != TR_OK ||
	    tr__buf_append(&k, f->body->data, f->body->len) != TR_OK) {
		tr_buf_free(&k);
		return 0; /* no memory: just don't coalesce */
	}
	h = key_hash(k.data, k.len);
	ent = tr__map_get(&e->flights, h, TR_REF_NONE);
	if (ent != NULL) {
		fl = ent->ptr;
		int same = fl->key.len == k.len && memcmp(fl->key.data, k.data, k.len) == 0;
		tr_buf_free(&k);
		if (!same)
			return 0; /* hash collision: run it on its own */
		/* Wait with our own deadline: the leader's may be later. */
		if (tr_timer_after(ctx, TAG_PARK_DEADLINE, (left + 999) / 1000, &id) != TR_OK ||
		    tr__map_put(&e->timers, id, TR_REF_NONE, f) != TR_OK)
			return 0;
		fiber **pp = &fl->waiters;
		while (*pp != NULL)
			pp = &(*pp)->next_waiter;
		*pp = f;
		f->flight = fl;
		f->timer = id;
		f->st = F_COALESCED;
		STAT_ADD(e, S_COALESCED, 1);
		return 1;
	}
	fl = tr__calloc(1, sizeof(*fl));
	if (fl == NULL || tr__map_put(&e->flights, h, TR_REF_NONE, fl) != TR_OK) {
		tr__free(fl);
		tr_buf_free(&k);
		return 0;
	}
	fl->hash = h;
	fl->key = k;
	fl->leader = f;
	f->flight = fl;
	return 0;
}

static void centry_unlink(cache *c, centry *ce)
{
	if (ce->prev)
		ce->prev->next = ce->next;
	else
		c->head = ce->next;
	if (ce->next)
		ce->next->prev = ce->prev;
	else
		c->tail = ce->prev;
	ce->prev = ce->next = NULL;
}

static void centry_free(cache *c, centry *ce)
{
	void *p;
	centry_unlink(c, ce);
	tr__map_del(&c->idx, ce->hash, TR_REF_NONE, &p);
	tr_body_unref(ce->body);
	tr_buf_free(&ce->key);
	tr__free(ce);
	c->n--;
}

/* The cache key of a step call: actor, tenant, then each key field's
 * value bytes (nil when absent). */
static int cache_key(const fiber *f, const tr_step *s, tr_buf *k)
{
	if (key_prefix(f, s->u.call.actor, k) != TR_OK)
		return TR_ENOMEM;
	for (size_t i = 0; i < s->u.call.cache.nkeys; i++) {
		const unsigned char *v;
		size_t vlen;
		const char *name = s->u.call.cache.keys[i];
		if (tr__mp_map_get(f->body->data, f->body->len, name, &v, &vlen) != TR_OK)
			v = (const unsigned char *)"\xc0", vlen = 1;
		if (tr__buf_append(k, name, strlen(name) + 1) || tr__buf_append(k, v, vlen))
			return TR_ENOMEM;
	}
	return TR_OK;
}

static cache *cache_of(engine *e, const tr_step *s, int create)
{
	uint64_t key = (uint64_t)(uintptr_t)s;
	tr__map_ent *ent = tr__map_get(&e->caches, key, TR_REF_NONE);
	cache *c;
	if (ent != NULL || !create)
		return ent ? ent->ptr : NULL;
	c = tr__calloc(1, sizeof(*c));
	if (c != NULL && tr__map_put(&e->caches, key, TR_REF_NONE, c) != TR_OK) {
		tr__free(c);
		c = NULL;
	}
	return c;
}

/* Computes f's cache key into f->ckey; returns a fresh cached result for
 * it (a new body reference) or NULL. */
static tr_body *cache_get(engine *e, fiber *f, const tr_step *s)
{
	cache *c = cache_of(e, s, 0);
	tr_buf k;
	tr_body *b = NULL;
	f->ckey.len = 0;
	if (cache_key(f, s, &f->ckey) != TR_OK) {
		f->ckey.len = 0;
		return NULL;
	}
	if (c == NULL)
		return NULL;
	k = f->ckey;
	{
		tr__map_ent *ent = tr__map_get(&c->idx, key_hash(k.data, k.len), TR_REF_NONE);
		centry *ce = ent ? ent->ptr : NULL;
		if (ce != NULL && ce->key.len == k.len && memcmp(ce->key.data, k.data, k.len) == 0) {
			if (ce->expires_ns <= tr_now_ns()) {
				centry_free(c, ce);
			} else {
				centry_unlink(c, ce); /* most recently used first */
				ce->next = c->head;
				if (c->head)
					c->head->prev = ce;
				c->head = ce;
				if (c->tail == NULL)
					c->tail = ce;
				b = tr_body_ref(ce->body);
			}
		}
	}
	return b;
}

/* Remembers f's result for its step under the key of its input, taken
 * at call start (best effort: without memory, no entry). */
static void cache_put(engine *e, fiber *f, const tr_step *s)
{
	cache *c = cache_of(e, s, 1);
	uint32_t cap = s->u.call.cache.capacity ? s->u.call.cache.capacity : 10000;
	uint64_t h = key_hash(f->ckey.data, f->ckey.len);
	tr__map_ent *ent;
	centry *ce;

	if (c == NULL || f->ckey.len == 0)
		return;
	ent = tr__map_get(&c->idx, h, TR_REF_NONE);
	if (ent != NULL)
		centry_free(c, ent->ptr); /* replaced (or a collision: newest wins) */
	while (c->n >= cap && c->tail != NULL)
		centry_free(c, c->tail);
	ce = tr__calloc(1, sizeof(*ce));
	if (ce == NULL || tr__map_put(&c->idx, h, TR_REF_NONE, ce) != TR_OK) {
		tr__free(ce);
		return;
	}
	ce->hash = h;
	ce->key = f->ckey; /* moves the key into the entry */
	tr_buf_init(&f->ckey);
	ce->body = tr_body_ref(f->body);
	ce->expires_ns = tr_now_ns() + s->u.call.cache.ttl_us * 1000u;
	ce->next = c->head;
	if (c->head)
		c->head->prev = ce;
	c->head = ce;
	if (c->tail == NULL)
		c->tail = ce;
	c->n++;
}

static void caches_free(engine *e)
{
	for (uint32_t i = 0; i < e->caches.cap; i++) {
		cache *c = e->caches.ents[i].key ? e->caches.ents[i].ptr : NULL;
		if (c == NULL)
			continue;
		while (c->head != NULL)
			centry_free(c, c->head);
		tr__map_free(&c->idx);
		tr__free(c);
	}
	tr__map_free(&e->caches);
}

/* ------------------------------------------------------------------ */
/* state shared through Redis                                          */

/*
 * With redis { } declared, two things span nodes (db/redis.h is the
 * client; every ask to it gets exactly one answer, TR_EIO at once while
 * it is disconnected, so a Redis outage costs a step nothing but the
 * sharing):
 *  - cache = { store = "redis" }: after a miss in the in-process LRU the
 *    step's cache key is looked up in Redis (GET, bounded by SHARED_ASK_MS);
 *    a hit is copied into the LRU; a result is written to both (SET PX ttl).
 *  - coalesce = true: the local flight's leader also takes a short lock
 *    (SET NX PX, the step's timeout) on the call's key. The node that
 *    gets it runs the step and publishes the result (SET result PX
 *    SHARED_RESULT_MS, then deletes its lock if still its own); the
 *    others poll (one script: the result, else whether the lock still
 *    stands) every SHARED_POLL_MS and take the published result as the
 *    step's, or run the step themselves when the lock is gone without a
 *    result (its node failed or died: the lock expires) or Redis fails.
 * Keys: <prefix>cache:<pipeline>:<sha256 of the cache key>, and
 * <prefix>lock:/<prefix>result:<pipeline>:<sha256 of the call key>; both
 * keys name the tenant, the actor and the input, never a node's numbers.
 */
enum { RW_CACHE = 1, RW_LOCK, RW_POLL, RW_TELL };
#define SHARED_ASK_MS 50u
#define SHARED_POLL_MS 5u
#define SHARED_RESULT_MS 10000u

static const char poll_script[] =
	"local r = redis.call('GET', KEYS[2]) if r then return {1, r} end "
	"if redis.call('EXISTS', KEYS[1]) == 1 then return {2} end return {0}";
static const char publish_script[] =
	"redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2]) "
	"if redis.call('GET', KEYS[1]) == ARGV[3] then redis.call('DEL', KEYS[1]) end return 1";
static const char unlock_script[] =
	"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

static int shared_on(const engine *e)
{
	return e->cfg != NULL && e->cfg->redis.on;
}

/* "<prefix><kind>:<pipeline>:<hex sha256 of k>" into out. */
static void shared_key(const engine *e, const char *kind, const unsigned char *k, size_t n,
                       char *out, size_t outlen)
{
	unsigned char d[32];
	char hex[65];
	mbedtls_sha256_ret(k, n, d, 0);
	for (int i = 0; i < 32; i++) {
		hex[2 * i] = "0123456789abcdef"[d[i] >> 4];
		hex[2 * i + 1] = "0123456789abcdef"[d[i] & 15];
	}
	hex[64] = '\0';
	snprintf(out, outlen, "%s%s:%s:%s", e->cfg->redis.prefix ? e->cfg->redis.prefix : "troupe:",
	         kind, e->spec->name, hex);
}

/* Packs one redis actor request: {argv = [...]} (script == NULL) or
 * {script, keys, args}. Each value a str, or bin when bin[i]. */
typedef struct rv {
	const void *p;
	size_t n;
	int bin;
} rv;

static tr_body *shared_body(const char *script, const rv *keys, size_t nkeys, const rv *args,
                            size_t nargs)
{
	tr_buf b;
	msgpack_packer pk;
	tr_body *out = NULL;
	int bad;
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	if (script == NULL)
		bad = msgpack_pack_map(&pk, 1) || tr__mp_pack_cstr(&pk, "argv");
	else
		bad = msgpack_pack_map(&pk, 3) || tr__mp_pack_cstr(&pk, "script") ||
		      tr__mp_pack_cstr(&pk, script) || tr__mp_pack_cstr(&pk, "keys") ||
		      msgpack_pack_array(&pk, (uint32_t)nkeys);
	for (size_t i = 0; script != NULL && i < nkeys && !bad; i++)
		bad = msgpack_pack_str(&pk, keys[i].n) || msgpack_pack_str_body(&pk, keys[i].p, keys[i].n);
	if (!bad && script != NULL)
		bad = tr__mp_pack_cstr(&pk, "args");
	bad = bad || msgpack_pack_array(&pk, (uint32_t)nargs);
	for (size_t i = 0; i < nargs && !bad; i++)
		bad = args[i].bin ? msgpack_pack_bin(&pk, args[i].n) ||
		                        msgpack_pack_bin_body(&pk, args[i].p, args[i].n)
		                  : msgpack_pack_str(&pk, args[i].n) ||
		                        msgpack_pack_str_body(&pk, args[i].p, args[i].n);
	if (!bad)
		out = tr_body_new(b.data, b.len);
	tr_buf_free(&b);
	return out;
}

/* Asks the redis actor (body taken). With f: f waits in F_SHARED for
 * the answer (on_shared_reply), else nobody does (its answer finds no
 * entry and is dropped). TR_OK, or an error (f untouched). */
static int shared_ask(tr_ctx *ctx, engine *e, fiber *f, int what, uint32_t tag, tr_body *body,
                      uint64_t ms)
{
	tr_ref to;
	uint64_t corr;
	tr_msg *m;
	if (body == NULL)
		return TR_ENOMEM;
	if (tr_whereis(e->node, TR_REDIS_NAME, &to) != TR_OK || (m = tr_msg_new()) == NULL) {
		tr_body_unref(body);
		return TR_ENOACTOR;
	}
	m->tag = tag;
	m->body = body;
	if (tr_ask(ctx, to, m, ms ? ms : 1, &corr) != TR_OK)
		return TR_EREJECTED;
	if (f == NULL)
		return TR_OK;
	if (tr__map_put(&e->rcalls, corr, TR_REF_NONE, f) != TR_OK)
		return TR_ENOMEM; /* its answer will find nobody: dropped */
	f->st = F_SHARED;
	f->corr = corr;
	f->rwhat = (uint8_t)what;
	return TR_OK;
}

/* The step's remaining budget for a Redis wait, in ms (>= 1). */
static uint64_t shared_ms(const fiber *f, uint64_t cap)
{
	uint64_t left = time_left_us(f->r) / 1000u;
	return left < 1 ? 1 : left < cap ? left : cap;
}

/* The result of the step as the shared cache has it: a GET. 1 if f now
 * waits for it. */
static int shared_cache_get(tr_ctx *ctx, engine *e, fiber *f)
{
	char key[160];
	if (f->ckey.len == 0)
		return 0;
	shared_key(e, "cache", f->ckey.data, f->ckey.len, key, sizeof(key));
	rv a[2] = {{"GET", 3, 0}, {key, strlen(key), 0}};
	return shared_ask(ctx, e, f, RW_CACHE, TR_TAG_REDIS_CMD, shared_body(NULL, NULL, 0, a, 2),
	                  shared_ms(f, SHARED_ASK_MS)) == TR_OK;
}

static void shared_cache_put(tr_ctx *ctx, engine *e, const fiber *f, const tr_step *s,
                             const tr_buf *ckey)
{
	char key[160], px[24];
	if (ckey->len == 0)
		return;
	shared_key(e, "cache", ckey->data, ckey->len, key, sizeof(key));
	snprintf(px, sizeof(px), "%llu", (unsigned long long)(s->u.call.cache.ttl_us / 1000u + 1));
	rv a[5] = {{"SET", 3, 0}, {key, strlen(key), 0}, {f->body->data, f->body->len, 1},
	           {"PX", 2, 0}, {px, strlen(px), 0}};
	(void)shared_ask(ctx, e, NULL, RW_TELL, TR_TAG_REDIS_CMD, shared_body(NULL, NULL, 0, a, 5),
	                 SHARED_ASK_MS);
}

/* The lock token: this engine's address and a counter, unique among
 * the nodes of one Redis for as long as a lock lives. */
static void shared_token(engine *e, const fiber *f, char *out, size_t n)
{
	snprintf(out, n, "%s:%d:%p:%p", e->cfg->node.name ? e->cfg->node.name : "troupe",
	         (int)getpid(), (const void *)e, (const void *)f);
}

/* The leader of a local flight asks for the cross-node lock of its
 * call. 1 if f now waits for the answer. */
static int shared_lock(tr_ctx *ctx, engine *e, fiber *f, const tr_step *s)
{
	char tok[128], px[24];
	if (f->flight == NULL)
		return 0;
	shared_key(e, "lock", f->flight->key.data, f->flight->key.len, f->rkey, sizeof(f->rkey));
	shared_token(e, f, tok, sizeof(tok));
	uint64_t ms = (s->u.call.timeout_us ? s->u.call.timeout_us : 1000000u) / 1000u;
	uint64_t left = time_left_us(f->r) / 1000u;
	snprintf(px, sizeof(px), "%llu", (unsigned long long)((ms < left ? ms : left) + 1));
	rv a[6] = {{"SET", 3, 0}, {f->rkey, strlen(f->rkey), 0}, {tok, strlen(tok), 0},
	           {"NX", 2, 0}, {"PX", 2, 0}, {px, strlen(px), 0}};
	return shared_ask(ctx, e, f, RW_LOCK, TR_TAG_REDIS_CMD, shared_body(NULL, NULL, 0, a, 6),
	                  shared_ms(f, SHARED_ASK_MS)) == TR_OK;
}

/* The result key of the lock key in f->rkey: "...lock:..." -> "...result:...". */
static void result_key(const engine *e, const fiber *f, char *out, size_t n)
{
	const char *hash = strrchr(f->rkey, ':');
	snprintf(out, n, "%sresult:%s%s", e->cfg->redis.prefix ? e->cfg->redis.prefix : "troupe:",
	         e->spec->name, hash ? hash : "");
}

static void shared_publish(tr_ctx *ctx, engine *e, fiber *f)
{
	char rk[160], tok[128], px[24];
	result_key(e, f, rk, sizeof(rk));
	shared_token(e, f, tok, sizeof(tok));
	snprintf(px, sizeof(px), "%u", SHARED_RESULT_MS);
	rv k[2] = {{f->rkey, strlen(f->rkey), 0}, {rk, strlen(rk), 0}};
	rv a[3] = {{f->body->data, f->body->len, 1}, {px, strlen(px), 0}, {tok, strlen(tok), 0}};
	(void)shared_ask(ctx, e, NULL, RW_TELL, TR_TAG_REDIS_SCRIPT,
	                 shared_body(publish_script, k, 2, a, 3), SHARED_ASK_MS);
	f->rlock = 0;
}

static void shared_unlock(tr_ctx *ctx, engine *e, fiber *f)
{
	char tok[128];
	f->rlock = 0;
	shared_token(e, f, tok, sizeof(tok));
	rv k[1] = {{f->rkey, strlen(f->rkey), 0}};
	rv a[1] = {{tok, strlen(tok), 0}};
	(void)shared_ask(ctx, e, NULL, RW_TELL, TR_TAG_REDIS_SCRIPT,
	                 shared_body(unlock_script, k, 1, a, 1), SHARED_ASK_MS);
}

/* Another node holds the lock: look for its result (now). */
static int shared_poll(tr_ctx *ctx, engine *e, fiber *f)
{
	char rk[160];
	result_key(e, f, rk, sizeof(rk));
	rv k[2] = {{f->rkey, strlen(f->rkey), 0}, {rk, strlen(rk), 0}};
	return shared_ask(ctx, e, f, RW_POLL, TR_TAG_REDIS_SCRIPT, shared_body(poll_script, k, 2, NULL, 0),
	                  shared_ms(f, SHARED_ASK_MS)) == TR_OK;
}

/* ------------------------------------------------------------------ */
/* step calls                                                          */

/* A call step past its cache: coalesce (locally, then across nodes) or
 * start its first attempt. */
static void call_go(tr_ctx *ctx, engine *e, fiber *f, const tr_step *s)
{
	if (s->u.call.coalesce && flight_join(ctx, e, f))
		return;
	if (s->u.call.coalesce && shared_on(e) && shared_lock(ctx, e, f, s))
		return; /* on_shared_reply goes on */
	/* The step's start time serves as the attempt's "now": what ran
	 * since (a tap, a cache lookup) takes microseconds, far below the
	 * millisecond the deadline check works in. */
	attempt_at(ctx, e, f, f->step_t0);
}

/* Starts a call step. Returns 1 when it completed at once (a cache hit:
 * the caller goes on with the next step), 0 when the fiber now waits. */
static int call_start(tr_ctx *ctx, engine *e, fiber *f, const tr_step *s)
{
	f->step = s;
	f->target = s->u.call.actor;
	f->attempts = 0;
	f->on_fallback = 0;
	f->step_t0 = tr_now_ns();
	f->ckey.len = 0;
	f->inst = 0;
	f->placed = 0;
	f->avoid = TR_REF_NONE;
	notify(ctx, e, f, "start", 0);
	if (s->u.call.cache.on) {
		tr_body *hit = cache_get(e, f, s);
		if (hit != NULL) {
			set_body(f, hit);
			STAT_ADD(e, S_CACHE_HITS, 1);
			notify(ctx, e, f, "end", 0);
			step_done(e, f, 1, 1, 0);
			f->step = NULL;
			f->target = NULL;
			return 1;
		}
		if (s->u.call.cache.store == TR_CACHE_REDIS && shared_on(e) &&
		    shared_cache_get(ctx, e, f))
			return 0; /* on_shared_reply goes on */
		STAT_ADD(e, S_CACHE_MISSES, 1);
	}
	call_go(ctx, e, f, s);
	return 0;
}

static uint64_t backoff_us(engine *e, const tr_step *s, uint32_t retry)
{
	const tr_backoff *b = &s->u.call.backoff;
	uint64_t d = b->base_us ? b->base_us : 10000;
	uint64_t max = b->max_us ? b->max_us : 1000000;
	for (uint32_t i = 1; i < retry && d < max; i++)
		d *= 2;
	if (d > max)
		d = max;
	/* Full jitter (AWS architecture blog): uniform in [0, d]. */
	return b->jitter ? xrand(e) % (d + 1) : d;
}

/* An attempt failed with class `cls`: retry, fall back, or fail. */
static void failed_attempt(tr_ctx *ctx, engine *e, fiber *f, int cls, int err)
{
	const tr_step *s = f->step;
	run *r = f->r;
	char msg[256];

	f->last_cls = cls;
	f->last_err = err;
	f->avoid = f->target_ref;
	tr__map_ent *se = tr__map_get(&e->step_idx, (uint64_t)(uintptr_t)s, TR_REF_NONE);
	step_slot *ss = se ? &e->stats->steps[(uintptr_t)se->ptr] : NULL;
	if (cls == C_TIMEOUT) {
		STAT_ADD(e, S_TIMEOUTS, 1);
		if (ss)
			SLOT_ADD(ss->timeouts, 1);
	}
	uint32_t rclass = cls == C_NODE_DOWN ? C_CRASHED : (uint32_t)cls;
	if (!f->on_fallback && (s->u.call.retry_on & rclass) && f->attempts < 1 + s->u.call.retries) {
		uint64_t d = backoff_us(e, s, f->attempts);
		if (d + MIN_ATTEMPT_US < time_left_us(r)) {
			uint64_t id;
			notify(ctx, e, f, "retry", cls);
			STAT_ADD(e, S_RETRIES, 1);
			if (ss)
				SLOT_ADD(ss->retries, 1);
			if (tr_timer_after(ctx, TAG_RETRY, (d + 999) / 1000, &id) == TR_OK &&
			    tr__map_put(&e->timers, id, TR_REF_NONE, f) == TR_OK) {
				f->st = F_BACKOFF;
				f->timer = id;
				return;
			}
			fail(ctx, e, f, C_ERROR, TR_ENOMEM, "out of memory");
			return;
		}
	}
	if (!f->on_fallback && s->u.call.fallback != NULL && time_left_us(r) > MIN_ATTEMPT_US) {
		notify(ctx, e, f, "error", cls);
		f->on_fallback = 1;
		f->target = s->u.call.fallback;
		STAT_ADD(e, S_FALLBACKS, 1);
		attempt(ctx, e, f);
		return;
	}
	snprintf(msg, sizeof(msg), "step '%s' failed after %u attempt%s: %s", f->target,
	         f->attempts, f->attempts == 1 ? "" : "s",
	         f->last_msg[0] && err == f->last_err ? f->last_msg : tr_strerror(err));
	if (f->flight != NULL) {
		/* Waiters share the outcome; hold our run in case one of them
		 * is a parallel sibling whose failure ends it. */
		f->r->hold++;
		flight_done(ctx, e, f, 0, cls, err, msg);
		int live = !f->r->answered;
		run *r = f->r;
		if (live)
			fail(ctx, e, f, cls, err, msg);
		run_release(e, r);
		return;
	}
	fail(ctx, e, f, cls, err, msg);
}

/*
 * The fault injector's turn at an attempt (tests only, core/chaos.h):
 * returns 1 when it took the attempt -- failed it at once, or holds it
 * for a while, like a backoff (unwait and cut_fibers cancel the hold; a
 * hold past the attempt's timeout ends as that attempt timing out) --
 * and 0 to send it (after filling the target's mailbox, for a fill).
 */
static int chaos_attempt(tr_ctx *ctx, engine *e, fiber *f, uint64_t timeout)
{
	uint64_t delay = 0, id;
	switch (tr__chaos_step(tr_ctx_worker(ctx), &delay)) {
	case TR__CHAOS_FAIL:
		f->attempts++;
		STAT_ADD(e, S_CALLS, 1);
		snprintf(f->last_msg, sizeof(f->last_msg), "fault injected (--chaos fail)");
		failed_attempt(ctx, e, f, C_ERROR, TR_EIO);
		return 1;
	case TR__CHAOS_SLOW:
		f->chaos_late = delay >= timeout;
		if (f->chaos_late)
			delay = timeout;
		if (tr_timer_after(ctx, TAG_CHAOS_SLOW, (delay + 999) / 1000, &id) != TR_OK)
			return 0;
		if (tr__map_put(&e->timers, id, TR_REF_NONE, f) != TR_OK) {
			(void)tr_timer_cancel(ctx, id);
			return 0;
		}
		f->st = F_BACKOFF;
		f->timer = id;
		f->chaos_us = delay;
		return 1;
	case TR__CHAOS_FILL:
		tr__chaos_filled(tr__mbox_fill(tr_ctx_node(ctx), f->target_ref, TR__CHAOS_FILL_TAG));
		return 0;
	default:
		return 0;
	}
}

static void attempt_at(tr_ctx *ctx, engine *e, fiber *f, uint64_t now)
{
	const tr_step *s = f->step;
	run *r = f->r;
	uint64_t left = time_left_us_at(r, now), timeout, corr, held = 0;
	tr_msg *m;
	int rc;

	f->st = F_RUNNING;
	if (tr__chaos_active()) {
		held = f->chaos_us; /* the injector held this attempt: now it goes */
		f->chaos_us = 0;
	}
	if (left < MIN_ATTEMPT_US) {
		char msg[128];
		snprintf(msg, sizeof(msg), "deadline reached before step '%s'", f->target);
		fail(ctx, e, f, C_DEADLINE, TR_ETIMEDOUT, msg);
		return;
	}
	timeout = s->u.call.timeout_us ? s->u.call.timeout_us : 1000000;
	if (held != 0) /* what it was held counts against its timeout */
		timeout = timeout > held ? timeout - held : 1;
	if (timeout > left)
		timeout = left;
	const target *t = target_of(e, f->target);
	if (t == NULL) {
		fail(ctx, e, f, C_ERROR, TR_ENOMEM, "out of memory");
		return;
	}
	f->placed = t->placed != NULL;
	rc = f->placed ? pick_placed(e, f, t) : resolve_in(e, t, &f->target_ref, &f->inst);
	if (rc != TR_OK) {
		f->attempts++;
		if (f->placed)
			snprintf(f->last_msg, sizeof(f->last_msg),
			         "no instance of '%s' is running (placed on %s '%s')", f->target,
			         t->placed->on_label ? "label" : "node",
			         t->placed->on_label ? t->placed->on_label : t->placed->on_node);
		failed_attempt(ctx, e, f, C_CRASHED, TR_ENOACTOR);
		return;
	}
	if (f->placed)
		f->last_msg[0] = '\0'; /* a "no instance" of an earlier attempt is over */
	if (tr__chaos_active() && held == 0 && chaos_attempt(ctx, e, f, timeout))
		return;
	m = tr_msg_new();
	if (m == NULL) {
		fail(ctx, e, f, C_ERROR, TR_ENOMEM, "out of memory");
		return;
	}
	m->tag = TR_TAG_STEP;
	m->body = tr_body_ref(f->body);
	m->deadline = r->deadline_us;
	m->trace_hi = r->req->trace_hi;
	m->trace_lo = r->req->trace_lo;
	m->tenant = r->req->tenant;
	m->attempt = (uint16_t)f->attempts;
	m->arg = (r->req->arg & TR_RUN_EVENTS) ? TR_STEP_DELTAS : 0;
	rc = tr_ask(ctx, f->target_ref, m, (timeout + 999) / 1000, &corr);
	/* Parking waits for a local actor's WRITABLE (e->parked is keyed by
	 * its index); another node's full instance is an overload to retry. */
	if (rc == TR_EFULL && (!f->placed || f->target_ref.node == tr_self(ctx).node)) {
		/* overflow=block: park until the actor says WRITABLE (it owes
		 * us exactly one), with the deadline as the limit. */
		uint64_t id;
		tr__map_ent *q = tr__map_get(&e->parked, f->target_ref.idx, TR_REF_NONE);
		if (tr_timer_after(ctx, TAG_PARK_DEADLINE, (left + 999) / 1000, &id) != TR_OK ||
		    tr__map_put(&e->timers, id, TR_REF_NONE, f) != TR_OK ||
		    (q == NULL && tr__map_put(&e->parked, f->target_ref.idx, TR_REF_NONE, NULL) != TR_OK)) {
			fail(ctx, e, f, C_ERROR, TR_ENOMEM, "out of memory");
			return;
		}
		q = tr__map_get(&e->parked, f->target_ref.idx, TR_REF_NONE);
		fiber **pp = (fiber **)&q->ptr;
		while (*pp != NULL)
			pp = &(*pp)->next_parked;
		*pp = f;
		f->next_parked = NULL;
		f->st = F_PARKED;
		f->timer = id;
		STAT_ADD(e, S_PARKED, 1);
		return;
	}
	f->attempts++;
	STAT_ADD(e, S_CALLS, 1);
	if (rc != TR_OK) {
		failed_attempt(ctx, e, f, classify(rc), rc);
		return;
	}
	if (tr__map_put(&e->calls, corr, TR_REF_NONE, f) != TR_OK) {
		fail(ctx, e, f, C_ERROR, TR_ENOMEM, "out of memory");
		return;
	}
	f->st = F_CALLING;
	f->corr = corr;
	if (f->placed)
		load_add(e, f);
	/* first_byte_timeout: the actor must show some output -- a delta or
	 * its answer -- within it, or the attempt times out (a model server
	 * that accepted the call and then stalls). Shorter than the attempt's
	 * timeout to mean anything. */
	uint64_t fb = s->u.call.first_byte_timeout_us;
	if (fb > 0 && fb < timeout) {
		uint64_t id;
		if (tr_timer_after(ctx, TAG_FIRST_BYTE, (fb + 999) / 1000, &id) == TR_OK &&
		    tr__map_put(&e->timers, id, TR_REF_NONE, f) == TR_OK)
			f->timer = id;
	}
}

/* The first output of a CALLING fiber came: its first-byte timer is done. */
static void first_byte(tr_ctx *ctx, engine *e, fiber *f)
{
	void *p;
	if (f->timer == 0)
		return;
	tr__map_del(&e->timers, f->timer, TR_REF_NONE, &p);
	(void)tr_timer_cancel(ctx, f->timer);
	f->timer = 0;
}

/* A reply (or error reply) to a step ask. */
static void on_reply(tr_ctx *ctx, engine *e, tr_msg *m)
{
	void *p;
	if (tr__map_del(&e->rcalls, m->corr, TR_REF_NONE, &p)) {
		on_shared_reply(ctx, e, p, m);
		return;
	}
	if (!tr__map_del(&e->calls, m->corr, TR_REF_NONE, &p))
		return; /* its run is gone (deadline, parallel cut-off); or a tell to redis */
	fiber *f = p;
	first_byte(ctx, e, f);
	load_done(e, f);
	f->corr = 0;
	f->st = F_RUNNING;
	if (f->streamed) {
		f->streamed = 0;
		stream_end(ctx, e, f->r);
	}
	if (m->flags & TR_MSGF_ERROR) {
		const unsigned char *v;
		const char *str;
		size_t vlen, n;
		f->last_msg[0] = '\0';
		if (m->body != NULL && tr_body_check(m->body) == TR_OK &&
		    tr__mp_map_get(m->body->data, m->body->len, "message", &v, &vlen) == TR_OK &&
		    tr__mp_str(v, vlen, &str, &n) == TR_OK)
			snprintf(f->last_msg, sizeof(f->last_msg), "%.*s", (int)n, str);
		failed_attempt(ctx, e, f, classify(m->err), m->err ? m->err : TR_EFAILED);
		return;
	}
	if (m->body != NULL && m->body->len > 0) {
		uint32_t n;
		if (tr_body_check(m->body) != TR_OK ||
		    tr__mp_map_len(m->body->data, m->body->len, &n) != TR_OK) {
			failed_attempt(ctx, e, f, C_ERROR, TR_EPROTO);
			return;
		}
		set_body(f, tr_body_ref(m->body));
	}
	step_succeeded(ctx, e, f, 0);
}

/* f's step has its result in f->body (from its actor, or published by
 * another node: `remote`): cache it, share it, settle the flight, go on. */
static void step_succeeded(tr_ctx *ctx, engine *e, fiber *f, int remote)
{
	const tr_step *s = f->step;
	if (s->u.call.cache.on) {
		if (s->u.call.cache.store == TR_CACHE_REDIS && shared_on(e))
			shared_cache_put(ctx, e, f, s, &f->ckey);
		cache_put(e, f, s);
	}
	if (f->rlock)
		shared_publish(ctx, e, f);
	notify(ctx, e, f, "end", 0);
	step_done(e, f, 1, 0, remote);
	if (f->flight != NULL) {
		run *r = f->r;
		r->hold++;
		flight_done(ctx, e, f, 1, 0, TR_OK, NULL);
		if (!r->answered && f->st == F_RUNNING) {
			f->step = NULL;
			advance(ctx, e, f);
		}
		run_release(e, r);
		return;
	}
	f->step = NULL;
	advance(ctx, e, f);
}

/* The {reply = value} of a redis actor answer: the value's bytes, or
 * NULL (an error answer, or no body). */
static const unsigned char *shared_value(tr_msg *m, size_t *n)
{
	const unsigned char *v;
	if ((m->flags & TR_MSGF_ERROR) || m->body == NULL || tr_body_check(m->body) != TR_OK ||
	    tr__mp_map_get(m->body->data, m->body->len, "reply", &v, n) != TR_OK)
		return NULL;
	return v;
}

/* A str or bin value's bytes (NULL for anything else). */
static const unsigned char *bytes_of(const unsigned char *v, size_t vn, size_t *n)
{
	const char *sp;
	if (tr__mp_str(v, vn, &sp, n) == TR_OK)
		return (const unsigned char *)sp;
	unsigned char c = v[0];
	size_t h = c == 0xc4 ? 2 : c == 0xc5 ? 3 : c == 0xc6 ? 5 : 0;
	if (h == 0)
		return NULL;
	*n = h == 2 ? v[1] : h == 3 ? ((size_t)v[1] << 8 | v[2])
	                   : ((size_t)v[1] << 24 | (size_t)v[2] << 16 | (size_t)v[3] << 8 | v[4]);
	return v + h;
}

/* A published or cached step result: a new body if it is a msgpack map. */
static tr_body *result_body(const unsigned char *p, size_t n)
{
	uint32_t cnt;
	tr_body *b = p != NULL && n > 0 ? tr_body_new(p, n) : NULL;
	if (b != NULL && (tr_body_check(b) != TR_OK || tr__mp_map_len(b->data, b->len, &cnt) != TR_OK)) {
		tr_body_unref(b);
		b = NULL;
	}
	return b;
}

/* The redis actor answered one of f's asks. Every failure path leads
 * back to running the step here: sharing is an optimisation. */
static void on_shared_reply(tr_ctx *ctx, engine *e, fiber *f, tr_msg *m)
{
	const tr_step *s = f->step;
	size_t vn = 0, bn = 0;
	const unsigned char *v = shared_value(m, &vn);
	f->st = F_RUNNING;
	f->corr = 0;
	if (f->rwhat == RW_CACHE) {
		const unsigned char *bp = v ? bytes_of(v, vn, &bn) : NULL;
		tr_body *b = result_body(bp, bn);
		if (b == NULL) {
			STAT_ADD(e, S_CACHE_MISSES, 1);
			call_go(ctx, e, f, s);
			return;
		}
		set_body(f, b);
		cache_put(e, f, s); /* into the LRU in front */
		STAT_ADD(e, S_CACHE_HITS, 1);
		notify(ctx, e, f, "end", 0);
		step_done(e, f, 1, 1, 0);
		f->step = NULL;
		f->target = NULL;
		advance(ctx, e, f);
		return;
	}
	if (f->rwhat == RW_LOCK) {
		const char *sp;
		size_t sn;
		if (v != NULL && tr__mp_str(v, vn, &sp, &sn) == TR_OK && sn == 2 && memcmp(sp, "OK", 2) == 0) {
			f->rlock = 1; /* ours: run it, publish after */
		} else if (v != NULL && v[0] == 0xc0) {
			/* another node runs it: wait for its result */
			uint64_t id;
			if (tr_timer_after(ctx, TAG_SHARED_POLL, SHARED_POLL_MS, &id) == TR_OK &&
			    tr__map_put(&e->timers, id, TR_REF_NONE, f) == TR_OK) {
				f->st = F_SHARED;
				f->timer = id;
				STAT_ADD(e, S_COALESCED, 1);
				return;
			}
		}
		attempt_at(ctx, e, f, tr_now_ns());
		return;
	}
	/* RW_POLL: {1, result} | {2} (still running) | {0} (lock gone) */
	uint32_t n = 0;
	size_t hdr = 0;
	if (v != NULL && tr__mp_array_head(v, vn, &n, &hdr) == TR_OK && n >= 1) {
		const unsigned char *el = v + hdr;
		uint64_t tag = 0;
		(void)tr__mp_uint(el, tr__mp_size(el), &tag);
		if (tag == 1 && n == 2) {
			const unsigned char *r = el + tr__mp_size(el);
			const unsigned char *bp = bytes_of(r, tr__mp_size(r), &bn);
			tr_body *b = result_body(bp, bn);
			if (b != NULL) {
				set_body(f, b);
				step_succeeded(ctx, e, f, 1);
				return;
			}
		} else if (tag == 2 && time_left_us(f->r) > 2000u * SHARED_POLL_MS) {
			uint64_t id;
			if (tr_timer_after(ctx, TAG_SHARED_POLL, SHARED_POLL_MS, &id) == TR_OK &&
			    tr__map_put(&e->timers, id, TR_REF_NONE, f) == TR_OK) {
				f->st = F_SHARED;
				f->timer = id;
				return;
			}
		}
	}
	attempt_at(ctx, e, f, tr_now_ns());
}

/* ------------------------------------------------------------------ */
/* walking the steps                                                   */

/* Evaluates a `when` predicate: 1 run the step, 0 skip, <0 error. */
static int when_ok(engine *e, fiber *f, const tr_step *s, char *err, size_t errlen)
{
	int truth = 0;
	if (s->when_fn < 0)
		return 1;
	if (e->L == NULL) {
		snprintf(err, errlen, "no Lua state for 'when'");
		return -1;
	}
	tr_lua_ctx lc = {e->spec->name, 0, tr_tenant_name(f->r->req->tenant)};
	/* f->body was checked when it entered the run or came back from a
	 * step: the predicate reads it in place (tr_lua_test). */
	int rc = tr_lua_test(e->L, s->when_fn, f->body ? f->body->data : NULL,
	                     f->body ? f->body->len : 0, &lc, &truth, err, errlen);
	return rc == TR_OK ? truth : -1;
}

/* The branch of a route for the message's field value. */
static const tr_step_list *route_pick(const fiber *f, const tr_step *s)
{
	const unsigned char *v;
	size_t vlen, n;
	const char *str;
	if (tr__mp_map_get(f->body->data, f->body->len, s->u.route.field, &v, &vlen) == TR_OK &&
	    tr__mp_str(v, vlen, &str, &n) == TR_OK) {
		for (size_t i = 0; i < s->u.route.nbranches; i++) {
			const char *bv = s->u.route.branches[i].value;
			if (strlen(bv) == n && memcmp(bv, str, n) == 0)
				return &s->u.route.branches[i].steps;
		}
	}
	return &s->u.route.dflt;
}

static void advance(tr_ctx *ctx, engine *e, fiber *f)
{
	char err[256];
	f->st = F_RUNNING;
	f->target = NULL;
	for (;;) {
		if (f->depth == 0) {
			fiber_end(ctx, e, f, 1, 0, TR_OK, NULL);
			return;
		}
		frame *fr = &f->stack[f->depth - 1];
		if (fr->i == fr->list->n) {
			f->depth--;
			continue;
		}
		const tr_step *s = &fr->list->v[fr->i++];
		int w = when_ok(e, f, s, err, sizeof(err));
		if (w < 0) {
			fail(ctx, e, f, C_ERROR, TR_EFAILED, err);
			return;
		}
		if (w == 0)
			continue;
		switch (s->kind) {
		case TR_STEP_CALL:
			if (call_start(ctx, e, f, s))
				continue;
			return;
		case TR_STEP_ROUTE:
			if (f->depth == MAX_NEST) {
				fail(ctx, e, f, C_INVALID, TR_ELIMIT, "steps nested too deep");
				return;
			}
			f->stack[f->depth++] = (frame){route_pick(f, s), 0};
			continue;
		case TR_STEP_PARALLEL:
			parallel_start(ctx, e, f, s);
			return;
		}
	}
}

/* ------------------------------------------------------------------ */
/* the actor                                                           */

static void on_run(tr_ctx *ctx, engine *e, tr_msg *m)
{
	static const unsigned char empty_map[] = {0x80};
	run *r;
	fiber *f;
	tr_body *body;
	uint32_t n;

	if (!(m->flags & TR_MSGF_ASK))
		return; /* nobody to answer: not a run */
	if (e->inflight >= e->spec->max_inflight) {
		/* Refused at the door, with a hint: about one average run. */
		uint64_t hint = e->avg_run_us / 1000u + 1;
		STAT_ADD(e, S_REFUSED, 1);
		answer(ctx, m, TR_EREJECTED,
		       error_body(NULL, C_OVERLOAD, "pipeline at max_inflight", hint));
		return;
	}
	if (m->body != NULL && m->body->len > 0 &&
	    (tr_body_check(m->body) != TR_OK ||
	     tr__mp_map_len(m->body->data, m->body->len, &n) != TR_OK)) {
		STAT_ADD(e, S_FAILED, 1);
		answer(ctx, m, TR_EPROTO,
		       error_body(NULL, C_INVALID, "the message must be a msgpack map", 0));
		return;
	}
	body = (m->body != NULL && m->body->len > 0) ? tr_body_ref(m->body)
	                                               : tr_body_new(empty_map, 1);
	r = body != NULL ? run_new(e) : NULL;
	if (r == NULL) {
		tr_body_unref(body);
		(void)tr_reply_error(ctx, m, TR_ENOMEM);
		return;
	}
	r->req = tr_take(ctx);
	r->t0 = tr_now_ns();
	if ((r->req->trace_hi | r->req->trace_lo) == 0) {
		/* A fresh trace id for a run that came without one. */
		r->req->trace_hi = xrand(e);
		r->req->trace_lo = xrand(e);
	}
	if (tr__map_put(&e->runs, r->req->corr, r->req->from, r) != TR_OK) {
		tr_body_unref(body);
		r->answered = 1;
		(void)tr_reply_error(ctx, r->req, TR_ENOMEM);
		run_free(e, r);
		return;
	}
	uint64_t span = e->spec->deadline_us ? e->spec->deadline_us : 30000000u;
	uint64_t now_us = tr_wall_us();
	if (m->deadline != 0 && m->deadline < now_us + span)
		span = m->deadline > now_us ? m->deadline - now_us : 0;
	r->deadline_ns = r->t0 + span * 1000u;
	r->deadline_us = now_us + span;
	e->inflight++;
	STAT_ADD(e, S_RUNS, 1);
	STAT_ADD(e, S_INFLIGHT, 1);
	f = fiber_new(e, r, NULL, body);
	tr_body_unref(body);
	if (f == NULL) {
		run_end(ctx, e, r, TR_ENOMEM, NULL);
		return;
	}
	r->root = f;
	f->stack[0] = (frame){&e->spec->steps, 0};
	f->depth = 1;
	advance(ctx, e, f);
}

/* A delta from a step actor (engine.h, "Streamed text"). */
static void on_delta(tr_ctx *ctx, engine *e, tr_msg *m)
{
	tr__map_ent *ent = tr__map_get(&e->calls, m->corr, TR_REF_NONE);
	const unsigned char *v;
	const char *txt;
	size_t vl, n;
	if (ent == NULL)
		return; /* its step is over (timed out, cut off) */
	fiber *f = ent->ptr;
	run *r = f->r;
	first_byte(ctx, e, f);
	if (!(r->req->arg & TR_RUN_EVENTS) || r->answered || m->body == NULL ||
	    tr_body_check(m->body) != TR_OK ||
	    tr__mp_map_get(m->body->data, m->body->len, "text", &v, &vl) != TR_OK ||
	    tr__mp_str(v, vl, &txt, &n) != TR_OK)
		return;
	if (e->spec->stream == NULL) {
		delta_event(ctx, e, r, txt, n);
		return;
	}
	if (r->stream_state >= 2)
		return;
	if (r->stream_id == 0) {
		r->stream_id = ++e->stream_seq;
		if (tr__map_put(&e->streams, r->stream_id, TR_REF_NONE, r) != TR_OK) {
			r->stream_id = 0;
			STAT_ADD(e, S_EVENTS_DROPPED, 1);
			return;
		}
		r->stream_state = 1;
	}
	f->streamed = 1;
	stream_chunk(ctx, e, r, txt, n, 0);
}

/* The `stream` filter's safe text, or its block. */
static void on_stream_out(tr_ctx *ctx, engine *e, tr_msg *m)
{
	tr__map_ent *ent = tr__map_get(&e->streams, m->corr, TR_REF_NONE);
	const unsigned char *v;
	const char *txt;
	size_t vl, n;
	if (ent == NULL)
		return;
	run *r = ent->ptr;
	int ok = m->body != NULL && tr_body_check(m->body) == TR_OK;
	if (ok && tr__mp_map_get(m->body->data, m->body->len, "blocked", &v, &vl) == TR_OK) {
		char msg[200];
		if (tr__mp_str(v, vl, &txt, &n) != TR_OK)
			txt = "", n = 0;
		snprintf(msg, sizeof(msg), "the streamed answer was blocked: %.*s", (int)n, txt);
		r->stream_state = 3;
		run_end(ctx, e, r, TR_EINVAL, error_body(NULL, C_BLOCKED, msg, 0));
		return;
	}
	if (ok && tr__mp_map_get(m->body->data, m->body->len, "text", &v, &vl) == TR_OK &&
	    tr__mp_str(v, vl, &txt, &n) == TR_OK && n > 0)
		delta_event(ctx, e, r, txt, n);
	if (m->arg == 1) {
		void *p;
		tr__map_del(&e->streams, r->stream_id, TR_REF_NONE, &p);
		r->stream_state = 3;
	}
}

/* TR_TAG_RUN_CANCEL from a run's asker: the run ends now, answered
 * "cancelled"; everything it waits on is cut (late replies dropped). */
static void on_cancel(tr_ctx *ctx, engine *e, tr_msg *m)
{
	tr__map_ent *ent = tr__map_get(&e->runs, m->corr, m->from);
	if (ent == NULL)
		return; /* finished already, or never ours */
	run *r = ent->ptr;
	if (r->answered)
		return;
	STAT_ADD(e, S_CANCELLED, 1);
	run_end(ctx, e, r, TR_ECANCELED,
	        error_body(NULL, C_CANCELLED, "cancelled by the requester", 0));
}

static void on_timer(tr_ctx *ctx, engine *e, tr_msg *m)
{
	void *p;
	if (!tr__map_del(&e->timers, m->corr, TR_REF_NONE, &p))
		return;
	fiber *f = p;
	f->timer = 0;
	if (m->tag == TAG_RETRY) {
		attempt(ctx, e, f);
	} else if (m->tag == TAG_CHAOS_SLOW) {
		if (f->chaos_late) {
			/* held for the whole timeout: that attempt timed out */
			f->chaos_us = 0;
			f->chaos_late = 0;
			f->attempts++;
			STAT_ADD(e, S_CALLS, 1);
			f->st = F_RUNNING;
			snprintf(f->last_msg, sizeof(f->last_msg),
			         "fault injected (--chaos slow): held past the step timeout");
			failed_attempt(ctx, e, f, C_TIMEOUT, TR_ETIMEDOUT);
		} else {
			attempt(ctx, e, f);
		}
	} else if (m->tag == TAG_SHARED_POLL) {
		f->st = F_RUNNING;
		if (!shared_poll(ctx, e, f))
			attempt(ctx, e, f);
	} else if (m->tag == TAG_FIRST_BYTE) {
		/* No output in time: this attempt timed out (its late reply
		 * finds no call and is dropped). */
		void *q;
		tr__map_del(&e->calls, f->corr, TR_REF_NONE, &q);
		load_done(e, f);
		f->corr = 0;
		f->st = F_RUNNING;
		if (f->streamed) {
			f->streamed = 0;
			stream_end(ctx, e, f->r);
		}
		snprintf(f->last_msg, sizeof(f->last_msg), "no output within first_byte_timeout");
		failed_attempt(ctx, e, f, C_TIMEOUT, TR_ETIMEDOUT);
	} else { /* TAG_PARK_DEADLINE */
		int coalesced = f->st == F_COALESCED;
		unwait(ctx, e, f); /* leaves the parked queue or the flight */
		f->st = F_RUNNING;
		char msg[128];
		snprintf(msg, sizeof(msg), "deadline reached waiting for %s ('%s')",
		         coalesced ? "an identical call" : "a full mailbox", f->target);
		fail(ctx, e, f, C_DEADLINE, TR_ETIMEDOUT, msg);
	}
}

/* An actor we parked on has room: resend the parked fibers, in order,
 * until one is refused again (that one re-parks and we get another
 * WRITABLE later). */
static void on_writable(tr_ctx *ctx, engine *e, tr_msg *m)
{
	tr__map_ent *q = tr__map_get(&e->parked, m->from.idx, TR_REF_NONE);
	while (q != NULL && q->ptr != NULL) {
		fiber *f = q->ptr;
		run *r = f->r;
		unwait(ctx, e, f); /* may delete the queue entry */
		r->hold++;
		attempt(ctx, e, f);
		int reparked = !r->answered && f->st == F_PARKED;
		run_release(e, r);
		if (reparked)
			break;
		q = tr__map_get(&e->parked, m->from.idx, TR_REF_NONE);
	}
}

static int has_when(const tr_step_list *l)
{
	for (size_t i = 0; i < l->n; i++) {
		const tr_step *s = &l->v[i];
		if (s->when_fn >= 0)
			return 1;
		if (s->kind == TR_STEP_ROUTE) {
			if (has_when(&s->u.route.dflt))
				return 1;
			for (size_t j = 0; j < s->u.route.nbranches; j++)
				if (has_when(&s->u.route.branches[j].steps))
					return 1;
		} else if (s->kind == TR_STEP_PARALLEL) {
			for (size_t j = 0; j < s->u.par.nbranches; j++)
				if (has_when(&s->u.par.branches[j]))
					return 1;
		}
	}
	return 0;
}

/* Counts the call steps of a list, nested ones too; with `e`, also
 * numbers them (step_idx) and points their slots at them. */
static size_t number_steps(engine *e, stats_slot *sl, const tr_step_list *l, size_t k)
{
	for (size_t i = 0; i < l->n; i++) {
		const tr_step *s = &l->v[i];
		if (s->kind == TR_STEP_CALL) {
			if (e != NULL) {
				sl->steps[k].step = s;
				(void)tr__map_put(&e->step_idx, (uint64_t)(uintptr_t)s, TR_REF_NONE,
				                  (void *)(uintptr_t)k);
			}
			k++;
		} else if (s->kind == TR_STEP_ROUTE) {
			for (size_t j = 0; j < s->u.route.nbranches; j++)
				k = number_steps(e, sl, &s->u.route.branches[j].steps, k);
			k = number_steps(e, sl, &s->u.route.dflt, k);
		} else if (s->kind == TR_STEP_PARALLEL) {
			for (size_t j = 0; j < s->u.par.nbranches; j++)
				k = number_steps(e, sl, &s->u.par.branches[j], k);
		}
	}
	return k;
}

static void slot_free(stats_slot *s)
{
	if (s != NULL)
		tr__free(s->steps);
	tr__free(s);
}

static int engine_init(tr_ctx *ctx, void *st, const void *arg)
{
	engine *e = st;
	const tr_pipe_arg *a = arg;
	int needs_lua = 0;
	e->cfg = a->config;
	e->spec = a->spec;
	e->suffix = a->suffix ? a->suffix : "";
	e->node = tr_ctx_node(ctx);
	e->rng = 0x9e3779b97f4a7c15ull ^ tr_now_ns();
	/* Predicates need a Lua state of our own; most pipelines have none. */
	needs_lua = has_when(&e->spec->steps);
	if (needs_lua) {
		char err[256];
		int rc = tr_lua_state_new(e->cfg, NULL, &e->L, err, sizeof(err));
		if (rc != TR_OK)
			return rc;
	}
	stats_slot *s = tr__calloc(1, sizeof(*s));
	size_t nsteps = number_steps(NULL, NULL, &e->spec->steps, 0);
	if (s != NULL)
		s->steps = tr__calloc(nsteps + 1, sizeof(*s->steps));
	if (s == NULL || s->steps == NULL) {
		slot_free(s);
		tr_lua_state_free(e->L);
		return TR_ENOMEM;
	}
	s->nsteps = nsteps;
	number_steps(e, s, &e->spec->steps, 0);
	s->node = e->node;
	snprintf(s->name, sizeof(s->name), "%s%s", e->spec->name, e->suffix);
	uv_once(&slots_once, slots_init);
	uv_mutex_lock(&slots_mu);
	s->next = slots;
	slots = s;
	uv_mutex_unlock(&slots_mu);
	e->stats = s;
	/* The public name moves to us only while our generation is current
	 * (acquire: pairs with the release store that publishes a new one). */
	if (a->public_name != NULL &&
	    (a->current_gen == NULL ||
	     atomic_load_explicit(a->current_gen, memory_order_acquire) == a->gen))
		(void)tr_register_alias(e->node, a->public_name, tr_self(ctx));
	return TR_OK;
}

static int engine_receive(tr_ctx *ctx, void *st, tr_msg *m)
{
	engine *e = st;
	if (m->flags & TR_MSGF_REPLY)
		on_reply(ctx, e, m);
	else if (m->flags & TR_MSGF_TIMER)
		on_timer(ctx, e, m);
	else if (m->tag == TR_TAG_WRITABLE)
		on_writable(ctx, e, m);
	else if (m->tag == TR_TAG_RUN)
		on_run(ctx, e, m);
	else if (m->tag == TR_TAG_RUN_CANCEL)
		on_cancel(ctx, e, m);
	else if (m->tag == TR_TAG_STEP_DELTA)
		on_delta(ctx, e, m);
	else if (m->tag == TR_TAG_STREAM_OUT)
		on_stream_out(ctx, e, m);
	else if (m->flags & TR_MSGF_ASK)
		(void)tr_reply_error(ctx, m, TR_EINVAL);
	return TR_OK;
}

/* Every accepted run still gets its answer when the engine stops. */
static void engine_terminate(tr_ctx *ctx, void *st, int reason)
{
	engine *e = st;
	/* Collect runs through their fibers: a run is reachable from any of
	 * its waiting fibers. */
	for (;;) {
		run *r = NULL;
		for (uint32_t i = 0; i < e->calls.cap && r == NULL; i++)
			if (e->calls.ents[i].key != 0)
				r = ((fiber *)e->calls.ents[i].ptr)->r;
		for (uint32_t i = 0; i < e->timers.cap && r == NULL; i++)
			if (e->timers.ents[i].key != 0)
				r = ((fiber *)e->timers.ents[i].ptr)->r;
		for (uint32_t i = 0; i < e->rcalls.cap && r == NULL; i++)
			if (e->rcalls.ents[i].key != 0)
				r = ((fiber *)e->rcalls.ents[i].ptr)->r;
		if (r == NULL)
			break;
		tr_body *b = error_body(NULL, C_ERROR, "pipeline stopped", 0);
		run_end(ctx, e, r, reason == TR_OK ? TR_ESHUTDOWN : reason, b);
	}
	tr__map_free(&e->calls);
	tr__map_free(&e->rcalls);
	tr__map_free(&e->timers);
	tr__map_free(&e->runs);
	tr__map_free(&e->step_idx);
	tr__map_free(&e->streams);
	tr__map_free(&e->loads);
	tr__map_free(&e->parked);
	tr__map_free(&e->flights); /* empty: every flight ended with its runs */
	caches_free(e);
	targets_free(e);
	pools_free(e);
	tr_lua_state_free(e->L);
	tr_buf_free(&e->tapbuf);
	if (e->stats != NULL) {
		uv_mutex_lock(&slots_mu);
		for (stats_slot **pp = &slots; *pp != NULL; pp = &(*pp)->next) {
			if (*pp == e->stats) {
				*pp = e->stats->next;
				break;
			}
		}
		uv_mutex_unlock(&slots_mu);
		slot_free(e->stats);
	}
}

const tr_actor_ops tr_pipe_ops = {
	.name = "pipeline",
	.size = sizeof(engine),
	.init = engine_init,
	.receive = engine_receive,
	.terminate = engine_terminate,
	/* Replies and timers are system messages; this bounds new runs
	 * queued ahead of the engine (max_inflight bounds the rest). */
	.options = {.mailbox = 4096, .overflow = TR_OVERFLOW_REJECT},
};

int tr_pipe_stats_get(tr_node *node, const char *name, tr_pipe_stats *out)
{
	int rc = TR_ENOTFOUND;
	uv_once(&slots_once, slots_init);
	uv_mutex_lock(&slots_mu);
	for (stats_slot *s = slots; s != NULL; s = s->next) {
		if (s->node == node && strcmp(s->name, name) == 0) {
			uint64_t *o = (uint64_t *)out;
			for (size_t i = 0; i < sizeof(*out) / sizeof(uint64_t); i++)
				o[i] = atomic_load_explicit(&s->v[i], memory_order_relaxed);
			rc = TR_OK;
			break;
		}
	}
	uv_mutex_unlock(&slots_mu);
	return rc;
}

int tr_pipe_step_stats_get(tr_node *node, const char *name, tr_pipe_step_stats *out, size_t cap,
                           size_t *n)
{
	int rc = TR_ENOTFOUND;
	uv_once(&slots_once, slots_init);
	uv_mutex_lock(&slots_mu);
	for (stats_slot *s = slots; s != NULL; s = s->next) {
		if (s->node != node || strcmp(s->name, name) != 0)
			continue;
		*n = s->nsteps;
		for (size_t i = 0; i < s->nsteps && i < cap; i++) {
			const step_slot *ss = &s->steps[i];
			tr_pipe_step_stats *o = &out[i];
			o->step = ss->step->u.call.actor;
			o->calls = atomic_load_explicit(&ss->calls, memory_order_relaxed);
			o->ok = atomic_load_explicit(&ss->ok, memory_order_relaxed);
			o->failed = atomic_load_explicit(&ss->failed, memory_order_relaxed);
			o->retries = atomic_load_explicit(&ss->retries, memory_order_relaxed);
			o->timeouts = atomic_load_explicit(&ss->timeouts, memory_order_relaxed);
			o->cache_hits = atomic_load_explicit(&ss->cache_hits, memory_order_relaxed);
			o->sum_us = atomic_load_explicit(&ss->sum_us, memory_order_relaxed);
			for (int b = 0; b < TR_PIPE_NBUCKETS; b++)
				o->buckets[b] = atomic_load_explicit(&ss->buckets[b], memory_order_relaxed);
		}
		rc = TR_OK;
		break;
	}
	uv_mutex_unlock(&slots_mu);
	return rc;
}
