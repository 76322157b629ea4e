/*
 * pipe/engine.h -- the pipeline engine: one actor per pipeline that runs
 * requests ("runs") through the steps of a tr_pipeline_spec.
 *
 * Protocol. Ask the engine with tag TR_TAG_RUN and a body that is a
 * msgpack map (the message; no body = an empty map). Exactly one answer
 * comes back to every accepted ask:
 *  - a reply whose body is the final message map, or
 *  - an error reply (TR_MSGF_ERROR, err = a tr_err) whose body is the map
 *    {code = "timeout"|"deadline"|"overload"|"error"|"crashed"|"node_down"|"invalid",
 *     step = "<actor>" (absent for errors before any step), message = "...",
 *     attempts = n, retry_after_ms = n (overload only)}.
 * The run's deadline is the ask's deadline field (µs since the epoch) if
 * set, clipped to the pipeline's `deadline`.
 *
 * Steps are asks (tag TR_TAG_STEP) to actors found by name in the node
 * registry (`name`, or `name#i` for instances > 1, taken round robin).
 * A placed actor's (on = {...}) instances are this node's, when it runs
 * them, and those the other cluster members publish (tr_whereis_remote);
 * each attempt takes the one with the fewest of this engine's asks in
 * flight (ties round robin), a retry another one than the instance that
 * just failed, if there is one. No instance anywhere fails the attempt
 * as "crashed" (retried); an ask lost with its node fails as
 * "node_down", retried like "crashed".
 * A step's reply body (a map) replaces the message, an empty reply keeps
 * it. The engine never blocks: retries wait on timers, a full mailbox
 * with overflow=block parks the run until the actor's TR_TAG_WRITABLE.
 */
#ifndef TR_PIPE_ENGINE_H
#define TR_PIPE_ENGINE_H

#include <stdatomic.h>

#include <troupe/actor.h>

#include "pipe/spec.h"

#define TR_TAG_RUN 0x200u

/*
 * Run options, in the run ask's `arg` (bits; 0 = the plain protocol above).
 *
 * TR_RUN_TRACE: the answer carries the run's trace. A successful reply's
 *   body is then the map {output = <final message map>, steps = [...]};
 *   an error reply's body gets the same `steps` key added. Each entry of
 *   steps is one call step as it ended, in completion order:
 *   {step = <step's actor name as written>, actor = <actor that answered
 *    last, e.g. "rag#1" or the fallback>, us = <duration in µs>,
 *    attempts = n, cached = bool, coalesced = bool, ok = bool}, and for a
 *   placed actor also node = <the node id (tr_node_id) of the instance
 *   that answered last>.
 *   Skipped steps (`when` false, other route branches) do not appear.
 * TR_RUN_EVENTS: while the run goes, the engine also sends the asker one
 *   message (tag TR_TAG_RUN_EVENT, corr = the run ask's corr) per step
 *   event, flagged SYSTEM like the answer so that it arrives before it
 *   (a failed send is counted in tr_pipe_stats.events_dropped), with the
 *   body
 *   {type = "step", event = "start"|"end"|"retry"|"timeout"|"error",
 *    step = <name>, actor = <name>, attempts = <made so far>, us = <step time so far>}.
 *   The run's one answer still comes as the ask's reply, after its last
 *   event.
 * Whatever the options, the reply's trace_hi/trace_lo are the run's trace
 * id: the run ask's own if it had one (non-zero), else a fresh random one.
 */
#define TR_RUN_TRACE 0x1u
#define TR_RUN_EVENTS 0x2u
#define TR_TAG_RUN_EVENT 0x201u
/*
 * Cancel: a plain message (tag TR_TAG_RUN_CANCEL, corr = the run ask's
 * corr) from the actor that asked. The run stops at once (its step calls
 * are abandoned: late replies are dropped, timers cancelled) and its ask
 * is answered with the error code "cancelled" -- still exactly one
 * answer. Unknown or finished runs: ignored.
 */
#define TR_TAG_RUN_CANCEL 0x202u

/*
 * Streamed text. A step actor may send its asker (the engine), while it
 * answers a step ask and before its reply, system messages with tag
 * TR_TAG_STEP_DELTA, corr = the step ask's corr, body {text = chunk}
 * (actors/generate/generate.h). When the run was asked with
 * TR_RUN_EVENTS the engine passes the text on to the run's asker as
 * events {type = "delta", step, text}:
 *  - without a filter (pipeline `stream` unset), each chunk as it comes;
 *  - with `stream = "<actor>"`, through that actor first: the engine
 *    sends it TR_TAG_STREAM_CHUNK messages (plain, in order; corr = the
 *    run's stream id, body {text}; arg 1 on the last one, sent when the
 *    producing step has answered or the run ends, with an empty text),
 *    and it answers each with a system message TR_TAG_STREAM_OUT (same
 *    corr, body {text = what is safe to show so far} or {blocked = why};
 *    arg 1 on the answer to the last). The safety kind is such a filter:
 *    it holds back what could still turn out to be PII and redacts it.
 *    A block ends the run with code "blocked", which the caller sees as
 *    an error event that ends its stream.
 * Runs not asked with TR_RUN_EVENTS ignore deltas: their answer holds
 * the whole text, checked by the pipeline's steps. So that actors do not
 * send what nobody reads, a step ask's `arg` carries TR_STEP_DELTAS when
 * the run wants deltas; without it an actor should send at most its
 * first chunk, and only when its answer is still to come (the engine
 * takes any chunk as the step's first byte, for first_byte_timeout),
 * and none when the answer follows at once.
 */
#define TR_STEP_DELTAS 0x1u
#define TR_TAG_STEP_DELTA 0x101u
#define TR_TAG_STREAM_CHUNK 0x203u
#define TR_TAG_STREAM_OUT 0x204u

typedef struct tr_pipe_arg {
	const tr_config *config;         /* outlives the engine */
	const tr_pipeline_spec *spec;    /* points into config */
	/* Deployment generation (hot reload): the actors of generation g are
	 * registered as "<name><suffix>" (suffix "@g"; NULL = no suffix), and
	 * the engine moves `public_name` (NULL = none) to itself at init
	 * while *current_gen == gen, so a restarted engine of a replaced
	 * generation never steals its successor's name. */
	const char *suffix;
	const char *public_name;
	const atomic_uint *current_gen;
	unsigned gen;
} tr_pipe_arg;

extern const tr_actor_ops tr_pipe_ops;

/* Engine counters, readable from any thread (relaxed atomics). */
typedef struct tr_pipe_stats {
	uint64_t runs;          /* accepted */
	uint64_t ok;            /* answered with a result */
	uint64_t failed;        /* answered with an error */
	uint64_t refused;       /* refused at the door: max_inflight */
	uint64_t inflight;      /* now */
	uint64_t step_calls;    /* asks sent to step actors */
	uint64_t retries;
	uint64_t fallbacks;
	uint64_t cache_hits;
	uint64_t coalesced;     /* step calls that joined an identical one */
	uint64_t parked;        /* times a run waited for a full mailbox */
	uint64_t tap_sent;
	uint64_t tap_dropped;   /* tap events lost to a full or dead tap */
	uint64_t timeouts;      /* step attempts that timed out */
	uint64_t cache_misses;  /* cached steps that had to call */
	uint64_t cancelled;     /* runs ended by TR_TAG_RUN_CANCEL */
	uint64_t events_dropped;/* TR_RUN_EVENTS messages lost to a full asker */
} tr_pipe_stats;

/*
 * Per-step figures, for /metrics: one entry per call step of the
 * pipeline (steps in route branches and parallel branches included), in
 * the order of the file. Latency of each completed step (all attempts,
 * backoff included; cache hits too) goes into a histogram with the fixed
 * upper bounds TR_PIPE_BUCKETS_US (cumulative counts are built by the
 * reader; the last bucket is +Inf).
 */
#define TR_PIPE_NBUCKETS 15
extern const uint64_t TR_PIPE_BUCKETS_US[TR_PIPE_NBUCKETS - 1];
typedef struct tr_pipe_step_stats {
	const char *step;       /* the step's actor name as written (config-owned) */
	uint64_t calls;         /* completed steps */
	uint64_t ok;
	uint64_t failed;
	uint64_t retries;
	uint64_t timeouts;      /* attempts that timed out */
	uint64_t cache_hits;
	uint64_t sum_us;        /* total latency */
	uint64_t buckets[TR_PIPE_NBUCKETS]; /* not cumulative */
} tr_pipe_step_stats;

/* Fills up to `cap` entries of `out` for the engine of pipeline `name`
 * (as for tr_pipe_stats_get) and sets *n to the number of call steps.
 * Reads relaxed atomics: figures of one step may be a few events apart. */
int tr_pipe_step_stats_get(tr_node *node, const char *name, tr_pipe_step_stats *out,
                           size_t cap, size_t *n);

/* Stats of the engine of pipeline `name` (with its generation suffix,
 * e.g. "assistant@2", when deployed by pipe/deploy.c) on `node`. */
int tr_pipe_stats_get(tr_node *node, const char *name, tr_pipe_stats *out);

#endif
