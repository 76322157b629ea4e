/*
 * pipe/deploy.h -- turns a loaded tr_config into a running actor tree.
 *
 * The tree: a root supervisor (one_for_one) whose children are, in
 * order, the user's top-level supervisors (those no other supervisor
 * names), the actors no supervisor names, and one pipeline engine per
 * pipeline. An actor with instances = n > 1 becomes n children
 * "<name>#0" ... "<name>#<n-1>" (the engine spreads calls over them).
 * A placed actor (on = {...}) is spawned only on a node that matches it
 * (tr_actor_runs_here), with its `instances` there; elsewhere it is left
 * out, and steps reach it on other nodes through the cluster.
 *
 * Generations (hot reload): every name a deployment registers ends in
 * "@<gen>" ("troupe@1", "rag#0@1", "pipeline:assistant@1"), so two
 * versions can run side by side while the old one drains. The engine of
 * the current generation also holds the public alias "pipeline:<name>":
 * that is where new runs go. Likewise each instance of a placed actor
 * holds the public alias "<name>#<i>" ("<name>" for one instance), which
 * the cluster publishes to the other nodes.
 *
 * Ownership: the deployment owns every spec and argument the running
 * actors point into; free it only after the node has stopped. The config
 * must outlive the deployment.
 */
#ifndef TR_PIPE_DEPLOY_H
#define TR_PIPE_DEPLOY_H

#include <stdatomic.h>

#include <troupe/node.h>

#include "pipe/spec.h"

typedef struct tr_deploy tr_deploy;

/* Spawns the tree on a started node. TR_OK, or an error with a message
 * naming the actor and its file:line in err. */
int tr_deploy_start(tr_node *node, const tr_config *cfg, unsigned gen,
                    const atomic_uint *current_gen, tr_deploy **out, char *err, size_t errlen);
/* Sum of the runs in flight in the deployment's engines. */
uint64_t tr_deploy_inflight(tr_node *node, const tr_deploy *d);
/* Asks the deployment's root supervisor to stop (its tree stops with
 * it); returns 1 once no actor of the deployment is left alive. */
int tr_deploy_stop(tr_node *node, tr_deploy *d);
/* Moves the public pipeline names back to this deployment's engines,
 * and the aliases of placed actors to its instances (a failed reload). */
void tr_deploy_claim_names(tr_node *node, const tr_deploy *d);
unsigned tr_deploy_gen(const tr_deploy *d);
void tr_deploy_free(tr_deploy *d);

#endif
