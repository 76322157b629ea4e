/*
 * pipe/live.c -- generations of deployed configurations. See live.h.
 */
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "pipe/deploy.h"
#include "pipe/live.h"

typedef struct gen {
	tr_config *cfg;
	tr_deploy *dep;
	uint64_t retired_ns; /* when a newer generation took over */
	struct gen *next;    /* older generations */
} gen;

/* How long a replaced generation stays up after its last run: callers
 * that looked up the public name just before the swap still reach it. */
#define GRACE_NS 1000000000ull

struct tr_live {
	tr_node *node;
	gen *cur;          /* newest first; cur->next... are draining */
	atomic_uint current_gen; /* read by engines at init (acquire) */
	unsigned last_gen;
	char **files;      /* of the last successful load (owned) */
	size_t nfiles;
};

static void diag_add(tr_diag *d, const char *msg)
{
	char **v = tr__realloc(d->msgs, (d->n + 1) * sizeof(*v));
	if (v == NULL)
		return;
	d->msgs = v;
	v[d->n] = tr__strndup(msg, strlen(msg));
	if (v[d->n] != NULL)
		d->n++;
}

int tr_live_new(tr_node *node, tr_live **out)
{
	tr_live *l = tr__calloc(1, sizeof(*l));
	if (l == NULL)
		return TR_ENOMEM;
	l->node = node;
	atomic_init(&l->current_gen, 0);
	*out = l;
	return TR_OK;
}

static void free_files(char **f, size_t n)
{
	for (size_t i = 0; i < n; i++)
		tr__free(f[i]);
	tr__free(f);
}

int tr_live_load(tr_live *l, const char *const *files, size_t nfiles, tr_diag *diag)
{
	tr_config *cfg = NULL;
	gen *g = NULL;
	char **copy = NULL;
	char err[256];
	unsigned prev = l->cur ? tr_deploy_gen(l->cur->dep) : 0;
	unsigned next = l->last_gen + 1;
	int rc = tr_config_load(files, nfiles, &cfg, diag);

	if (rc != TR_OK)
		return rc;
	g = tr__calloc(1, sizeof(*g));
	copy = tr__calloc(nfiles + 1, sizeof(*copy));
	if (g == NULL || copy == NULL) {
		rc = TR_ENOMEM;
		diag_add(diag, "out of memory");
		goto fail;
	}
	for (size_t i = 0; i < nfiles; i++) {
		copy[i] = tr__strndup(files[i], strlen(files[i]));
		if (copy[i] == NULL) {
			rc = TR_ENOMEM;
			diag_add(diag, "out of memory");
			goto fail;
		}
	}
	/* Publish the new generation before its engines start, so that they
	 * take the public names as they come up (release: pairs with the
	 * engines' acquire load). */
	atomic_store_explicit(&l->current_gen, next, memory_order_release);
	l->last_gen = next;
	rc = tr_deploy_start(l->node, cfg, next, &l->current_gen, &g->dep, err, sizeof(err));
	if (rc != TR_OK) {
		diag_add(diag, err);
		/* Whatever engines of the failed generation came up released
		 * nothing yet; give the names back to the current one. */
		atomic_store_explicit(&l->current_gen, prev, memory_order_release);
		if (l->cur != NULL)
			tr_deploy_claim_names(l->node, l->cur->dep);
		goto fail;
	}
	g->cfg = cfg;
	g->next = l->cur;
	if (l->cur != NULL)
		l->cur->retired_ns = tr_now_ns();
	l->cur = g;
	free_files(l->files, l->nfiles);
	l->files = copy;
	l->nfiles = nfiles;
	return TR_OK;
fail:
	free_files(copy, copy ? nfiles : 0);
	tr__free(g);
	tr_config_free(cfg);
	return rc;
}

int tr_live_reload(tr_live *l, tr_diag *diag)
{
	if (l->nfiles == 0) {
		diag_add(diag, "nothing to reload: the node was started without files");
		return TR_ESTATE;
	}
	return tr_live_load(l, (const char *const *)l->files, l->nfiles, diag);
}

size_t tr_live_poll(tr_live *l)
{
	size_t draining = 0;
	gen **pp = l->cur ? &l->cur->next : NULL;
	while (pp != NULL && *pp != NULL) {
		gen *g = *pp;
		if (tr_now_ns() - g->retired_ns >= GRACE_NS &&
		    tr_deploy_inflight(l->node, g->dep) == 0 && tr_deploy_stop(l->node, g->dep)) {
			*pp = g->next;
			tr_deploy_free(g->dep);
			tr_config_free(g->cfg);
			tr__free(g);
			continue;
		}
		draining++;
		pp = &g->next;
	}
	return draining;
}

const tr_config *tr_live_config(const tr_live *l)
{
	return l->cur ? l->cur->cfg : NULL;
}

unsigned tr_live_gen(const tr_live *l)
{
	return l->cur ? tr_deploy_gen(l->cur->dep) : 0;
}

void tr_live_free(tr_live *l)
{
	if (l == NULL)
		return;
	while (l->cur != NULL) {
		gen *g = l->cur;
		l->cur = g->next;
		tr_deploy_free(g->dep);
		tr_config_free(g->cfg);
		tr__free(g);
	}
	free_files(l->files, l->nfiles);
	tr__free(l);
}
