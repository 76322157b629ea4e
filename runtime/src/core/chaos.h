/*
 * core/chaos.h -- the fault injector, for tests only: `troupe run --chaos
 * SPEC` turns it on; nothing else does, and a node whose config says
 * node { env = "production" } refuses it (tr_chaos_start).
 *
 * SPEC is a comma-separated list of key=value items, no spaces, each key
 * at most once, at least one fault:
 *
 *   seed=N            PRNG seed (unsigned integer; default 1)
 *   crash=P[:GAP]     a user message received by an actor of the deployment
 *                     crashes it (TR_ECRASHED) with probability P; GAP, a
 *                     duration, is the least time between two crashes on
 *                     the node (supervisors give up past their intensity)
 *   slow=P:DELAY      a pipeline step attempt is held DELAY before it is
 *                     sent; the delay counts against the attempt's timeout
 *                     (DELAY >= timeout: the attempt times out)
 *   fail=P            a step attempt fails at once with TR_EIO (class
 *                     "error": retried only where retry_on has "error")
 *   fill=P            before a step attempt, the target's mailbox is
 *                     filled to its capacity with no-op messages, so that
 *                     attempt and the others that come before the actor
 *                     drains them meet its overflow policy
 *   for=DURATION      chaos ends by itself after DURATION (default: never)
 *
 * P is a decimal from 0 to 1; durations are an integer with us, ms or s
 * ("20ms"). Example: "seed=42,crash=0.02:1s,slow=0.05:20ms,fail=0.02,fill=0.01".
 *
 * What can crash: only actors the deployment declares (built-in kinds and
 * Lua actors, placed or not), marked by deploy.c (tr__chaos_mark). Not
 * supervisors, not pipeline engines (an engine holds every run in flight
 * on it; its crash would test the supervisor, not the pipeline's
 * recovery), not the HTTP doors, the cluster actor or the PostgreSQL and
 * Redis clients.
 *
 * Rolls come from one xorshift stream per worker, seeded from `seed` and
 * the worker's index: the same events on a worker get the same faults;
 * with several workers the interleaving, hence the run, still varies.
 *
 * Cost when never started: one relaxed load of a global flag and a branch predicted
 * not taken in the actor dispatch and in the engine's attempt path.
 */
#ifndef TR_CORE_CHAOS_H
#define TR_CORE_CHAOS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tr_chaos_spec {
	uint64_t seed;
	double crash, slow, fail, fill; /* probabilities, 0..1 */
	uint64_t crash_gap_us;          /* least time between two crashes; 0 = none */
	uint64_t slow_us;               /* delay of a slowed attempt */
	uint64_t for_us;                /* 0 = until the node stops */
} tr_chaos_spec;

/* Counters since tr_chaos_start: relaxed atomics, statistics only. */
typedef struct tr_chaos_stats {
	atomic_uint_fast64_t crashes, delays, failures, fills;
} tr_chaos_stats;

/* Parses SPEC into *out. TR_OK, or TR_EINVAL with a message in err
 * ("chaos: slow: expected P:DELAY (e.g. 0.05:20ms), got '0.05'"). */
int tr_chaos_parse(const char *spec, tr_chaos_spec *out, char *err, size_t errlen);

/* Whether chaos may run on a node whose node { env } is `env` (NULL: not
 * set): TR_OK, or TR_ESTATE with the reason in err for "production". */
int tr_chaos_allowed(const char *env, char *err, size_t errlen);

/* Turns the injector on with `spec` (checked with tr_chaos_allowed first:
 * TR_ESTATE in production, and nothing changes). Call before deploying,
 * so that the deployment's actors are spawned as candidates. Resets the
 * counters and the PRNG streams. */
int tr_chaos_start(const tr_chaos_spec *spec, const char *env, char *err, size_t errlen);

/* Turns the faults off (idempotent). Counters stay readable. */
void tr_chaos_stop(void);

/* Whether faults are being injected now (for /metrics). */
int tr_chaos_running(void);

/* Ends chaos once its `for` has passed; returns 1 the one time it ended
 * it, else 0 (the control thread calls it to log the end). */
int tr_chaos_poll(void);

/* The counters, or NULL when chaos was never started in this process. */
const tr_chaos_stats *tr_chaos_stats_of(void);

/* ---- hooks (internal) ------------------------------------------------ */

/* Set by the first tr_chaos_start and never cleared: the hooks run from
 * then on (after the faults end they only drop the no-ops of earlier
 * fills, which no actor must see). */
extern atomic_bool tr__chaos_on;

/* The hot-path test: a plain load on x86. */
static inline int tr__chaos_active(void)
{
	return __builtin_expect(atomic_load_explicit(&tr__chaos_on, memory_order_relaxed), 0);
}

/* The tag of the no-op messages a fill queues (a user tag; dispatch drops
 * them while chaos is on, before receive). */
#define TR__CHAOS_FILL_TAG 0xffc4a05u

/* Marks a behaviour whose actors may be crashed (deploy.c, for each
 * declared actor). Up to 256 behaviours; more are ignored. */
void tr__chaos_mark(const void *ops);
int tr__chaos_marked(const void *ops);

enum { TR__CHAOS_PASS = 0, TR__CHAOS_SWALLOW, TR__CHAOS_CRASH };

/* A user message with `tag` is about to be received on worker `w` by an
 * actor that may (`eligible`) or may not be crashed: PASS, SWALLOW (a
 * fill's no-op: drop it) or CRASH. */
int tr__chaos_receive(unsigned w, int eligible, uint32_t tag);

enum { TR__CHAOS_NONE = 0, TR__CHAOS_FAIL, TR__CHAOS_SLOW, TR__CHAOS_FILL };

/* A step attempt is about to be sent on worker `w`: NONE, FAIL, SLOW
 * (*delay_us set) or FILL (the caller fills the target, tr__chaos_fill).
 * At most one fault per attempt. */
int tr__chaos_step(unsigned w, uint64_t *delay_us);

/* Counts a fill that queued `added` messages (0: the mailbox was full
 * already, or the actor gone: not counted). */
void tr__chaos_filled(uint32_t added);

#endif
