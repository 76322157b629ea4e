/*
 * pipe/spec.c -- freeing and looking up the configuration model (spec.h).
 *
 * tr_config_free() also frees configs that were only partly built (the
 * loader frees its work this way after an error): every array is zeroed
 * when allocated and its count raised only as elements are filled, and a
 * step whose kind is still 0 owns nothing.
 */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include <troupe/err.h>

#include "core/alloc.h"
#include "pipe/spec.h"

static void free_list(tr_step_list *l);

static void free_step(tr_step *s)
{
	switch (s->kind) {
	case TR_STEP_CALL:
		tr__free(s->u.call.actor);
		tr__free(s->u.call.fallback);
		for (size_t i = 0; i < s->u.call.cache.nkeys; i++)
			tr__free(s->u.call.cache.keys[i]);
		tr__free(s->u.call.cache.keys);
		break;
	case TR_STEP_ROUTE:
		tr__free(s->u.route.field);
		for (size_t i = 0; i < s->u.route.nbranches; i++) {
			tr__free(s->u.route.branches[i].value);
			free_list(&s->u.route.branches[i].steps);
		}
		tr__free(s->u.route.branches);
		free_list(&s->u.route.dflt);
		break;
	case TR_STEP_PARALLEL:
		for (size_t i = 0; i < s->u.par.nbranches; i++)
			free_list(&s->u.par.branches[i]);
		tr__free(s->u.par.branches);
		break;
	}
}

static void free_list(tr_step_list *l)
{
	for (size_t i = 0; i < l->n; i++)
		free_step(&l->v[i]);
	tr__free(l->v);
}

void tr_config_free(tr_config *c)
{
	if (c == NULL)
		return;
	for (size_t i = 0; i < c->nactors; i++) {
		tr__free(c->actors[i].name);
		tr__free(c->actors[i].kind);
		tr__free(c->actors[i].config);
		tr__free(c->actors[i].on_label);
		tr__free(c->actors[i].on_node);
	}
	tr__free(c->actors);
	for (size_t i = 0; i < c->nsups; i++) {
		tr__free(c->sups[i].name);
		for (size_t j = 0; j < c->sups[i].nchildren; j++)
			tr__free(c->sups[i].children[j]);
		tr__free(c->sups[i].children);
	}
	tr__free(c->sups);
	for (size_t i = 0; i < c->npipelines; i++) {
		tr__free(c->pipelines[i].name);
		tr__free(c->pipelines[i].tap);
		tr__free(c->pipelines[i].stream);
		for (size_t j = 0; j < c->pipelines[i].noutput; j++)
			tr__free(c->pipelines[i].output[j]);
		tr__free(c->pipelines[i].output);
		free_list(&c->pipelines[i].steps);
	}
	tr__free(c->pipelines);
	for (size_t i = 0; i < c->ntenants; i++) {
		tr__free(c->tenants[i].name);
		tr__free(c->tenants[i].keys);
	}
	tr__free(c->tenants);
	for (size_t i = 0; i < c->ntools; i++) {
		tr_tool_spec *t = &c->tools[i];
		tr__free(t->name);
		for (size_t j = 0; j < t->nargs; j++)
			tr__free(t->args[j].name);
		tr__free(t->args);
		tr__free(t->description);
		tr__free(t->sql);
		for (size_t j = 0; j < t->nparams; j++)
			tr__free(t->params[j]);
		tr__free(t->params);
	}
	tr__free(c->tools);
	tr__free(c->postgres.conninfo);
	tr__free(c->postgres.conninfo_env);
	tr__free(c->redis.url);
	tr__free(c->redis.url_env);
	tr__free(c->redis.prefix);
	tr__free(c->node.name);
	tr__free(c->node.http);
	for (size_t i = 0; i < c->node.nlabels; i++)
		tr__free(c->node.labels[i]);
	tr__free(c->node.labels);
	tr__free(c->node.cluster.listen);
	for (size_t i = 0; i < c->node.cluster.nseeds; i++)
		tr__free(c->node.cluster.seeds[i]);
	tr__free(c->node.cluster.seeds);
	tr__free(c->node.cluster.secret_file);
	tr__free(c->node.cluster.data_listen);
	tr__free(c->node.cluster.tls.cert_file);
	tr__free(c->node.cluster.tls.key_file);
	tr__free(c->node.cluster.tls.ca_file);
	tr__free(c->node.cluster.tls.server_name);
	for (size_t i = 0; i < c->nfiles; i++)
		tr__free(c->files[i]);
	tr__free(c->files);
	tr__free(c);
}

int tr_redis_url_parse(const char *url, char *host, size_t hostlen, int *port, int *db)
{
	const char *h, *he, *p;
	char *end;
	long v;
	unsigned char tmp[16];

	if (strncmp(url, "redis://", 8) != 0)
		return TR_EINVAL;
	h = url + 8;
	if (*h == '[') {
		he = strchr(++h, ']');
		if (he == NULL || he[1] != ':')
			return TR_EINVAL;
		p = he + 2;
	} else {
		he = strchr(h, ':');
		if (he == NULL)
			return TR_EINVAL;
		p = he + 1;
	}
	if ((size_t)(he - h) + 1 > hostlen || he == h)
		return TR_EINVAL;
	memcpy(host, h, (size_t)(he - h));
	host[he - h] = '\0';
	/* numeric only: a name would mean a blocking lookup on the loop */
	if (inet_pton(AF_INET, host, tmp) != 1 && inet_pton(AF_INET6, host, tmp) != 1)
		return TR_EINVAL;
	v = strtol(p, &end, 10);
	if (end == p || v < 1 || v > 65535)
		return TR_EINVAL;
	*port = (int)v;
	*db = 0;
	if (*end == '/') {
		p = end + 1;
		v = strtol(p, &end, 10);
		if (end == p || v < 0 || v > 1000000)
			return TR_EINVAL;
		*db = (int)v;
	}
	return *end == '\0' ? TR_OK : TR_EINVAL;
}

const tr_actor_spec *tr_config_actor(const tr_config *c, const char *name)
{
	for (size_t i = 0; i < c->nactors; i++)
		if (c->actors[i].name != NULL && strcmp(c->actors[i].name, name) == 0)
			return &c->actors[i];
	return NULL;
}

bool tr_actor_runs_here(const tr_config *c, const tr_actor_spec *a)
{
	const tr_node_spec *n = &c->node;
	bool labelled = a->on_label == NULL;
	for (size_t i = 0; !labelled && i < n->nlabels; i++)
		labelled = n->labels[i] != NULL && strcmp(n->labels[i], a->on_label) == 0;
	return labelled &&
	       (a->on_node == NULL || strcmp(n->name ? n->name : "troupe", a->on_node) == 0);
}

const tr_tenant_spec *tr_config_tenant(const tr_config *c, const char *name)
{
	for (size_t i = 0; i < c->ntenants; i++)
		if (c->tenants[i].name != NULL && strcmp(c->tenants[i].name, name) == 0)
			return &c->tenants[i];
	return NULL;
}

const tr_supervisor_spec *tr_config_sup(const tr_config *c, const char *name)
{
	for (size_t i = 0; i < c->nsups; i++)
		if (c->sups[i].name != NULL && strcmp(c->sups[i].name, name) == 0)
			return &c->sups[i];
	return NULL;
}

const tr_pipeline_spec *tr_config_pipeline(const tr_config *c, const char *name)
{
	for (size_t i = 0; i < c->npipelines; i++)
		if (c->pipelines[i].name != NULL && strcmp(c->pipelines[i].name, name) == 0)
			return &c->pipelines[i];
	return NULL;
}

const tr_tool_spec *tr_config_tool(const tr_config *c, const char *name)
{
	for (size_t i = 0; i < c->ntools; i++)
		if (c->tools[i].name != NULL && strcmp(c->tools[i].name, name) == 0)
			return &c->tools[i];
	return NULL;
}
