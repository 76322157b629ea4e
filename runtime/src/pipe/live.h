/*
 * pipe/live.h -- the node's running configuration and hot reload.
 *
 * A live configuration is a list of generations, each a loaded tr_config
 * and its deployment (pipe/deploy.h). The newest is current: its engines
 * hold the public "pipeline:<name>" aliases, so new runs go to it. A
 * reload loads and validates the files again; a broken file is rejected
 * with its diagnostics and the current generation keeps serving. A good
 * one is deployed as the next generation and takes the public names;
 * the previous generation keeps answering the runs it already accepted
 * and is stopped once it has none left (tr_live_poll), then freed.
 *
 * Not thread-safe: one control thread (the `troupe run` main thread)
 * calls everything here; the actors only read the configs.
 */
#ifndef TR_PIPE_LIVE_H
#define TR_PIPE_LIVE_H

#include "lua/tlua.h"

typedef struct tr_live tr_live;

int tr_live_new(tr_node *node, tr_live **out);
/* Loads `files` (copied) and deploys them as the next generation.
 * TR_OK; TR_EINVAL with diagnostics when the files are invalid; another
 * error, with one diagnostic, when the deployment fails. Either way, on
 * failure the current generation (if any) is untouched. */
int tr_live_load(tr_live *l, const char *const *files, size_t nfiles, tr_diag *diag);
/* tr_live_load with the files of the last successful load. */
int tr_live_reload(tr_live *l, tr_diag *diag);
/* Stops drained generations and frees stopped ones; returns how many old
 * generations are still draining. Call every ~100 ms. */
size_t tr_live_poll(tr_live *l);
const tr_config *tr_live_config(const tr_live *l);
unsigned tr_live_gen(const tr_live *l);
/* Frees everything; the node must have stopped. */
void tr_live_free(tr_live *l);

#endif
