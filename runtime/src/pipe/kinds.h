/*
 * pipe/kinds.h -- the registry of actor kinds (`actor "x" { kind = "rag" }`).
 *
 * A kind is a C behaviour. The built-in kinds (intent, rag, generate,
 * safety, execute, telemetry) are always *known*, so that files naming
 * them pass `troupe check`; a kind is *runnable* once its ops are
 * registered. Spawning a known but unregistered kind fails with a clear
 * error rather than starting a stand-in.
 *
 * Each instance of a kind actor is spawned with `arg` = its
 * `const tr_actor_spec *` (name, mailbox, and `config`, the remaining
 * keys of its table as a msgpack map). The spec outlives the actor.
 *
 * Registration happens at start-up, before any node runs; lookups are
 * then read-only and thread-safe.
 */
#ifndef TR_PIPE_KINDS_H
#define TR_PIPE_KINDS_H

#include <troupe/actor.h>

#include "pipe/spec.h"

#define TR_KINDS_MAX 64

/* Registers (or replaces) kind `name`. TR_EINVAL for a bad name,
 * TR_ELIMIT past TR_KINDS_MAX. `ops` must outlive the process. */
int tr_kind_register(const char *name, const tr_actor_ops *ops);

/* A kind's settings check: TR_OK, or an error with a message in err
 * ("actor 'rag': top_k: must be between 1 and 100, got 0"). `troupe
 * check` and the loader call it for every actor of the kind, so a bad
 * setting is reported with its file:line before anything starts. */
typedef int (*tr_kind_check_fn)(const tr_actor_spec *a, char *err, size_t errlen);
int tr_kind_register_checked(const char *name, const tr_actor_ops *ops, tr_kind_check_fn check);
/* Runs the check of a's kind (TR_OK for kinds without one). */
int tr_kind_check(const tr_actor_spec *a, char *err, size_t errlen);
/* 1 if `name` is a kind a file may name (built-in or registered). */
int tr_kind_known(const char *name);
/* The ops of a runnable kind, NULL if unknown or not registered. */
const tr_actor_ops *tr_kind_find(const char *name);
/* Writes the known kind names, comma-separated, into buf (for "did you
 * mean" and error messages). */
void tr_kind_list(char *buf, size_t len);

#endif
