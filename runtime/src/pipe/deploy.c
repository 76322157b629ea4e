/*
 * pipe/deploy.c -- a tr_config becomes supervisors, actors and pipeline
 * engines. See deploy.h for the shape of the tree.
 */
#include <stdio.h>
#include <string.h>

#include <troupe/sup.h>

#include "core/alloc.h"
#include "core/chaos.h"
#include "lua/tlua.h"
#include "pipe/deploy.h"
#include "pipe/engine.h"
#include "pipe/kinds.h"

/*
 * A placed actor's instance (on = {...}): spawned through a copy of its
 * behaviour whose init runs the real one and then points the public
 * alias ("<name>#<i>", or "<name>" for one instance) at the new
 * incarnation while the deployment's generation is current, the way an
 * engine takes "pipeline:<name>". The cluster publishes names without
 * '@', so that is how other nodes find the instance, and a restart or a
 * reload moves it.
 */
typedef struct placed {
	const tr_actor_ops *ops;    /* the kind's or Lua's behaviour */
	const void *arg;            /* its spawn argument */
	const char *name;           /* registered: "<name>#<i>@<gen>" */
	const char *alias;          /* public: "<name>#<i>" */
	const atomic_uint *current_gen;
	unsigned gen;
} placed;

struct tr_deploy {
	tr_sup_spec *sups;          /* one per config supervisor, then the root */
	tr_child_spec **kids;       /* kids[i]: children of sups[i] */
	char **names;               /* child names we made (instances, engines) */
	size_t nnames;
	tr_lua_actor_arg *lua_args; /* one per config actor (used by Lua actors) */
	tr_pipe_arg *pipe_args;     /* one per pipeline */
	tr_actor_ops *place_ops;    /* one per config actor (used by placed ones) */
	placed *places;             /* one per instance of a placed actor here */
	size_t nplaces;
	const atomic_uint *current_gen;
	size_t nsups;
	unsigned gen;
	char suffix[16];            /* "@<gen>" */
	char *root_name;
	uint8_t stop_sent;
	const tr_config *cfg;
};

/* A name we registered, kept until the deployment is freed: `fmt` takes
 * a string, a number and the generation suffix (formats that want no
 * number use "%.0u" with 0, which prints nothing). */
static char *keep_name(tr_deploy *d, const char *fmt, const char *a, unsigned i)
{
	char buf[160];
	snprintf(buf, sizeof(buf), fmt, a, i, d->suffix);
	char *s = tr__strndup(buf, strlen(buf));
	if (s != NULL)
		d->names[d->nnames++] = s;
	return s;
}

/* A supervisor window in whole milliseconds for tr_sup_spec: rounded up
 * and at least 1 ms, because tr_sup treats max_restarts = 0 together with
 * within_ms = 0 as "use the defaults" and max_restarts = 0 must keep
 * meaning "never restart". Capped at UINT32_MAX ms (~49 days); the loader
 * already limits within to 24 h. */
static uint32_t window_ms(uint64_t within_us)
{
	uint64_t ms = within_us / 1000u + (within_us % 1000u != 0);
	if (ms == 0)
		return 1;
	return ms > UINT32_MAX ? UINT32_MAX : (uint32_t)ms;
}

static int placed_init(tr_ctx *ctx, void *state, const void *arg)
{
	const placed *p = arg;
	int rc = p->ops->init != NULL ? p->ops->init(ctx, state, p->arg) : TR_OK;
	/* Acquire: pairs with the release store that publishes a new
	 * generation (pipe/live.c), as in the engine's init. */
	if (rc == TR_OK && (p->current_gen == NULL ||
	                    atomic_load_explicit(p->current_gen, memory_order_acquire) == p->gen))
		(void)tr_register_alias(tr_ctx_node(ctx), p->alias, tr_self(ctx));
	return rc;
}

/* Appends the child specs of actor `a` (one per instance); none when it
 * is placed on other nodes. */
static int add_actor(tr_deploy *d, const tr_config *c, size_t ai, tr_child_spec *out,
                     uint32_t *n, char *err, size_t errlen)
{
	const tr_actor_spec *a = &c->actors[ai];
	const tr_actor_ops *ops;
	const void *arg;
	if (!tr_actor_runs_here(c, a))
		return TR_OK;
	if (a->kind != NULL) {
		ops = tr_kind_find(a->kind);
		arg = a;
		if (ops == NULL) {
			snprintf(err, errlen,
			         "%s:%d: actor '%s': kind '%s' is not available in this build",
			         a->pos.file ? a->pos.file : "?", a->pos.line, a->name, a->kind);
			return TR_ENOTFOUND;
		}
	} else {
		d->lua_args[ai] = (tr_lua_actor_arg){c, a};
		ops = &tr_lua_actor_ops;
		arg = &d->lua_args[ai];
	}
	uint32_t inst = a->instances ? a->instances : 1;
	const tr_actor_ops *real = ops;
	if (tr_actor_placed(a)) {
		tr_actor_ops *po = &d->place_ops[ai];
		*po = *ops;
		po->init = placed_init;
		ops = po;
	}
	/* The fault injector may crash these (and only the declared actors:
	 * not supervisors, engines or the node's own I/O actors). */
	if (tr__chaos_active())
		tr__chaos_mark(ops);
	for (uint32_t i = 0; i < inst; i++) {
		tr_child_spec *cs = &out[(*n)++];
		memset(cs, 0, sizeof(*cs));
		cs->name = inst == 1 ? keep_name(d, "%s%.0u%s", a->name, 0)
		                     : keep_name(d, "%s#%u%s", a->name, i);
		if (cs->name == NULL)
			return TR_ENOMEM;
		cs->ops = ops;
		cs->arg = arg;
		if (tr_actor_placed(a)) {
			placed *p = &d->places[d->nplaces++];
			const char *alias = inst == 1 ? keep_name(d, "%s%.0u%.0s", a->name, 0)
			                              : keep_name(d, "%s#%u%.0s", a->name, i);
			if (alias == NULL)
				return TR_ENOMEM;
			*p = (placed){real, arg, cs->name, alias, d->current_gen, d->gen};
			cs->arg = p;
		}
		cs->restart = TR_PERMANENT;
		cs->mbox.mailbox = a->mailbox;
		cs->mbox.overflow = a->overflow;
		cs->mbox.batch = a->batch;
	}
	return TR_OK;
}

static long find_actor(const tr_config *c, const char *name)
{
	for (size_t i = 0; i < c->nactors; i++)
		if (strcmp(c->actors[i].name, name) == 0)
			return (long)i;
	return -1;
}

static long find_sup(const tr_config *c, const char *name)
{
	for (size_t i = 0; i < c->nsups; i++)
		if (strcmp(c->sups[i].name, name) == 0)
			return (long)i;
	return -1;
}

/* Whether `name` is the child of some supervisor. */
static int supervised(const tr_config *c, const char *name)
{
	for (size_t i = 0; i < c->nsups; i++)
		for (size_t j = 0; j < c->sups[i].nchildren; j++)
			if (strcmp(c->sups[i].children[j], name) == 0)
				return 1;
	return 0;
}

static size_t total_instances(const tr_config *c)
{
	size_t n = 0;
	for (size_t i = 0; i < c->nactors; i++)
		n += c->actors[i].instances ? c->actors[i].instances : 1;
	return n;
}

int tr_deploy_start(tr_node *node, const tr_config *c, unsigned gen,
                    const atomic_uint *current_gen, tr_deploy **out, char *err, size_t errlen)
{
	tr_deploy *d = tr__calloc(1, sizeof(*d));
	size_t ninst = total_instances(c);
	size_t root = c->nsups;
	int rc = TR_ENOMEM;

	*out = NULL;
	snprintf(err, errlen, "out of memory");
	if (d == NULL)
		return TR_ENOMEM;
	d->nsups = c->nsups + 1;
	d->gen = gen;
	d->cfg = c;
	snprintf(d->suffix, sizeof(d->suffix), "@%u", gen);
	d->sups = tr__calloc(d->nsups, sizeof(*d->sups));
	d->kids = tr__calloc(d->nsups, sizeof(*d->kids));
	/* names: instances (and the aliases of placed ones), two per
	 * pipeline, one per supervisor (a nested one is named by its
	 * parent, a top-level one by the root), the root */
	d->names = tr__calloc(2 * ninst + 2 * c->npipelines + 2 * c->nsups + 2, sizeof(*d->names));
	d->lua_args = tr__calloc(c->nactors + 1, sizeof(*d->lua_args));
	d->pipe_args = tr__calloc(c->npipelines + 1, sizeof(*d->pipe_args));
	d->place_ops = tr__calloc(c->nactors + 1, sizeof(*d->place_ops));
	d->places = tr__calloc(ninst + 1, sizeof(*d->places));
	d->current_gen = current_gen;
	if (d->sups == NULL || d->kids == NULL || d->names == NULL || d->lua_args == NULL ||
	    d->pipe_args == NULL || d->place_ops == NULL || d->places == NULL)
		goto fail;

	/* User supervisors. A child list may hold every instance of every
	 * actor plus every supervisor: size for that. */
	for (size_t i = 0; i < c->nsups; i++) {
		const tr_supervisor_spec *s = &c->sups[i];
		uint32_t n = 0;
		d->kids[i] = tr__calloc(ninst + c->nsups + 1, sizeof(tr_child_spec));
		if (d->kids[i] == NULL)
			goto fail;
		for (size_t j = 0; j < s->nchildren; j++) {
			long a = find_actor(c, s->children[j]), sp = find_sup(c, s->children[j]);
			if (a >= 0) {
				rc = add_actor(d, c, (size_t)a, d->kids[i], &n, err, errlen);
				if (rc != TR_OK)
					goto fail;
			} else if (sp >= 0) {
				tr_child_spec *cs = &d->kids[i][n++];
				cs->name = keep_name(d, "%s%.0u%s", c->sups[sp].name, 0);
				if (cs->name == NULL) {
					rc = TR_ENOMEM;
					goto fail;
				}
				cs->ops = &tr_sup_ops;
				cs->arg = &d->sups[sp]; /* filled below; read at spawn time */
				cs->restart = TR_PERMANENT;
			}
		}
		d->sups[i] = (tr_sup_spec){.strategy = s->strategy,
		                           .max_restarts = s->max_restarts,
		                           .within_ms = window_ms(s->within_us),
		                           .children = d->kids[i],
		                           .nchildren = n};
	}

	/* The root: top-level supervisors, loose actors, pipeline engines. */
	uint32_t n = 0;
	d->kids[root] = tr__calloc(ninst + c->nsups + c->npipelines + 1, sizeof(tr_child_spec));
	if (d->kids[root] == NULL)
		goto fail;
	for (size_t i = 0; i < c->nsups; i++) {
		if (supervised(c, c->sups[i].name))
			continue;
		tr_child_spec *cs = &d->kids[root][n++];
		cs->name = keep_name(d, "%s%.0u%s", c->sups[i].name, 0);
		if (cs->name == NULL) {
			rc = TR_ENOMEM;
			goto fail;
		}
		cs->ops = &tr_sup_ops;
		cs->arg = &d->sups[i];
	}
	for (size_t i = 0; i < c->nactors; i++) {
		if (supervised(c, c->actors[i].name))
			continue;
		rc = add_actor(d, c, i, d->kids[root], &n, err, errlen);
		if (rc != TR_OK)
			goto fail;
	}
	for (size_t i = 0; i < c->npipelines; i++) {
		tr_child_spec *cs = &d->kids[root][n++];
		char *pub = keep_name(d, "pipeline:%s%.0u", c->pipelines[i].name, 0);
		d->pipe_args[i] = (tr_pipe_arg){c, &c->pipelines[i], d->suffix, pub, current_gen, gen};
		cs->name = keep_name(d, "pipeline:%s%.0u%s", c->pipelines[i].name, 0);
		if (cs->name == NULL || pub == NULL) {
			rc = TR_ENOMEM;
			goto fail;
		}
		cs->ops = &tr_pipe_ops;
		cs->arg = &d->pipe_args[i];
	}
	d->sups[root] = (tr_sup_spec){.strategy = TR_ONE_FOR_ONE, .max_restarts = 10,
	                              .within_ms = 10000, .backoff_base_ms = 10,
	                              .children = d->kids[root], .nchildren = n};
	tr_spawn_opts so = {0};
	d->root_name = keep_name(d, "%s%.0u%s", "troupe", 0);
	if (d->root_name == NULL) {
		rc = TR_ENOMEM;
		goto fail;
	}
	so.name = d->root_name;
	rc = tr_node_spawn(node, &tr_sup_ops, &d->sups[root], &so, NULL);
	if (rc != TR_OK) {
		snprintf(err, errlen, "starting the actor tree failed: %s", tr_strerror(rc));
		goto fail;
	}
	*out = d;
	return TR_OK;
fail:
	tr_deploy_free(d);
	return rc;
}

uint64_t tr_deploy_inflight(tr_node *node, const tr_deploy *d)
{
	uint64_t n = 0;
	char name[128];
	for (size_t i = 0; i < d->cfg->npipelines; i++) {
		tr_pipe_stats ps;
		snprintf(name, sizeof(name), "%s%s", d->cfg->pipelines[i].name, d->suffix);
		if (tr_pipe_stats_get(node, name, &ps) == TR_OK)
			n += ps.inflight;
	}
	return n;
}

int tr_deploy_stop(tr_node *node, tr_deploy *d)
{
	tr_ref root;
	if (tr_whereis(node, d->root_name, &root) != TR_OK)
		return 1;
	if (!d->stop_sent) {
		tr_msg *m = tr_msg_new();
		if (m == NULL)
			return 0;
		/* A normal stop (reason TR_OK): the root is not supervised, and
		 * its children stop with it, each terminate() answering what it
		 * still owes. */
		m->tag = TR_TAG_STOP;
		m->flags = TR_MSGF_SYSTEM;
		m->err = TR_OK;
		if (tr_node_send(node, root, m) == TR_ENOACTOR)
			return 1;
		d->stop_sent = 1;
	}
	tr_actor_stats st;
	return tr_actor_stats_get(node, root, &st) == TR_ENOACTOR;
}

void tr_deploy_claim_names(tr_node *node, const tr_deploy *d)
{
	char name[128];
	for (size_t i = 0; i < d->nplaces; i++) {
		tr_ref r;
		if (tr_whereis(node, d->places[i].name, &r) == TR_OK)
			(void)tr_register_alias(node, d->places[i].alias, r);
	}
	for (size_t i = 0; i < d->cfg->npipelines; i++) {
		tr_ref r;
		snprintf(name, sizeof(name), "pipeline:%s%s", d->cfg->pipelines[i].name, d->suffix);
		if (tr_whereis(node, name, &r) == TR_OK)
			(void)tr_register_alias(node, d->pipe_args[i].public_name, r);
	}
}

unsigned tr_deploy_gen(const tr_deploy *d)
{
	return d->gen;
}

void tr_deploy_free(tr_deploy *d)
{
	if (d == NULL)
		return;
	for (size_t i = 0; d->kids != NULL && i < d->nsups; i++)
		tr__free(d->kids[i]);
	for (size_t i = 0; i < d->nnames; i++)
		tr__free(d->names[i]);
	tr__free(d->kids);
	tr__free(d->names);
	tr__free(d->sups);
	tr__free(d->lua_args);
	tr__free(d->pipe_args);
	tr__free(d->place_ops);
	tr__free(d->places);
	tr__free(d);
}
