/*
 * troupe/sup.h -- supervisors: actors that start, watch and restart others.
 *
 * A supervisor starts its children in order, traps their exits and applies
 * its strategy when one dies:
 *   one_for_one   restart only the dead child;
 *   one_for_all   stop all the others (in reverse order), restart all;
 *   rest_for_one  stop and restart the dead child and every child after it.
 * Restart types: permanent children are always restarted, transient ones
 * only after an abnormal exit (reason != TR_OK), temporary ones never.
 * More than max_restarts restarts within `within_ms` and the supervisor
 * gives up: it stops its children and dies with TR_EINTENSITY, which its
 * own supervisor sees as a child crash (escalation). Restarts are delayed
 * by an exponential backoff (base, doubling per consecutive restart of the
 * same child within the window, capped at max).
 *
 * Each restart is a new incarnation: a new ref, an empty mailbox, the same
 * registered name. Refs to the old incarnation are stale.
 */
#ifndef TROUPE_SUP_H
#define TROUPE_SUP_H

#include "actor.h"
#include "node.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum tr_sup_strategy {
	TR_ONE_FOR_ONE = 0,
	TR_ONE_FOR_ALL,
	TR_REST_FOR_ONE
} tr_sup_strategy;

typedef enum tr_restart {
	TR_PERMANENT = 0,
	TR_TRANSIENT,
	TR_TEMPORARY
} tr_restart;

typedef struct tr_child_spec {
	const char *name;          /* registered name of the child (required, unique) */
	const tr_actor_ops *ops;   /* behaviour; a nested supervisor uses tr_sup_ops */
	const void *arg;           /* init argument; must outlive the supervisor */
	tr_restart restart;
	tr_actor_opts mbox;        /* mailbox overrides (zero = behaviour's defaults) */
} tr_child_spec;

typedef struct tr_sup_spec {
	tr_sup_strategy strategy;
	uint32_t max_restarts;     /* default 3 */
	uint32_t within_ms;        /* default 5000 */
	uint32_t backoff_base_ms;  /* 0 = restart at once */
	uint32_t backoff_max_ms;   /* default 10 * base */
	const tr_child_spec *children; /* copied at init; `arg`s are not */
	uint32_t nchildren;
} tr_sup_spec;

/* The supervisor behaviour; its spawn argument is a `const tr_sup_spec *`. */
TR_EXTERN extern const tr_actor_ops tr_sup_ops;

/* Current ref of child `name` of the supervisor, TR_ENOTFOUND if it is not
 * running (e.g. waiting for its restart backoff). Thread-safe. */
TR_EXTERN int tr_sup_child(tr_node *node, tr_ref sup, const char *name, tr_ref *out);

#ifdef __cplusplus
}
#endif
#endif
