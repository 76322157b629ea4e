/*
 * actors/kinds.h -- the built-in kinds' entry points: for each kind, its
 * ops table (the actor behaviour; spawn arg = const tr_actor_spec *) and
 * its settings check (kinds.h: tr_kind_check_fn). TR_BUILTIN_KINDS lists
 * the rows builtin.c registers.
 */
#ifndef TR_ACTORS_KINDS_H
#define TR_ACTORS_KINDS_H

#include <troupe/actor.h>

#include "pipe/spec.h"

#define TR_DECLARE_KIND(k)                                                   \
	extern const tr_actor_ops tr_##k##_ops;                                 \
	int tr_##k##_check(const tr_actor_spec *a, char *err, size_t errlen)

#define TR_KIND_ROW(k) {#k, &tr_##k##_ops, tr_##k##_check},

/* Kinds built so far; one TR_DECLARE_KIND and one TR_KIND_ROW each. */
TR_DECLARE_KIND(intent);
TR_DECLARE_KIND(execute);
TR_DECLARE_KIND(telemetry);
TR_DECLARE_KIND(generate);
TR_DECLARE_KIND(rag);
TR_DECLARE_KIND(safety);

#define TR_BUILTIN_KINDS \
	TR_KIND_ROW(intent) \
	TR_KIND_ROW(execute) \
	TR_KIND_ROW(telemetry) \
	TR_KIND_ROW(generate) \
	TR_KIND_ROW(rag) \
	TR_KIND_ROW(safety) \
	/* (rows added as kinds land) */

#endif
