/*
 * pipe/engine.h -- the pipeline engine: one actor per pipeline that runs
 * requests ("runs") through the steps of a tr_pipeline_spec.
 *
 * Protocol. Ask the engine with tag TR_TAG_RUN and a body that is a
 * msgpack map (the message; no body = an empty map). Exactly one answer
 * comes back to every accepted ask:
 *  - a reply whose body is the final message map, or
 *  - an error reply (TR_MSGF_ERROR, err = a tr_err) whose body is the map
 *    {code = "timeout"|"deadline"|"overload"|"error"|"crashed"|"invalid",
 *     step = "<actor>" (absent for errors before any step), message = "...",
 *     attempts = n, retry_after_ms = n (overload only)}.
 * The run's deadline is the ask's deadline field (µs since the epoch) if
 * set, clipped to the pipeline's `deadline`.
 *
 * Steps are asks (tag TR_TAG_STEP) to actors found by name in the node
 * registry (`name`, or `name#i` for instances > 1, taken round robin);
 * a step's reply body (a map) replaces the message, an empty reply keeps
 * it. The engine never blocks: retries wait on timers, a full mailbox
 * with overflow=block parks the run until the actor's TR_TAG_WRITABLE.
 */
#ifndef TR_PIPE_ENGINE_H
#define TR_PIPE_ENGINE_H

#include <stdatomic.h>

#include <troupe/actor.h>

#include "pipe/spec.h"

#define TR_TAG_RUN 0x200u

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
} tr_pipe_stats;

/* Stats of the engine of pipeline `name` (with its generation suffix,
 * e.g. "assistant@2", when deployed by pipe/deploy.c) on `node`. */
int tr_pipe_stats_get(tr_node *node, const char *name, tr_pipe_stats *out);

#endif
