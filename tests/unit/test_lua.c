/*
 * test_lua.c -- the Lua layer: loading pipeline files into a tr_config,
 * every diagnostic (each tests/lua/bad file carries their expected messages),
 * the sandbox and its limits, msgpack <-> Lua, and Lua actors on a node.
 *
 * Fixture paths are relative to the source root (the test chdirs there),
 * so diagnostics read "tests/lua/bad/x.lua:3: ..." as `troupe check`
 * prints them for a path given that way.
 */
#include <dirent.h>
#include <unistd.h>

#include <msgpack.h>

#include "tt.h"
#include "tnode.h"

#include "core/alloc.h"
#include "lua/tlua.h"
#include "msg/msg_int.h"
#include "pipe/spec.h"

#ifndef TR_SOURCE_ROOT
#define TR_SOURCE_ROOT "."
#endif

static int in_root(void)
{
	static int done;
	if (!done)
		done = chdir(TR_SOURCE_ROOT) == 0 ? 1 : -1;
	return done == 1;
}

static tr_config *load1(const char *path)
{
	tr_config *c = NULL;
	tr_diag d;
	tr_diag_init(&d);
	if (tr_config_load(&path, 1, &c, &d) != TR_OK) {
		for (size_t i = 0; i < d.n; i++)
			fprintf(stderr, "  %s\n", d.msgs[i]);
	}
	tr_diag_free(&d);
	return c;
}

/* ---- good files ----------------------------------------------------- */

TT_TEST(example_loads)
{
	TT_ASSERT(in_root());
	tr_config *c = load1("pipelines/example.lua");
	TT_ASSERT(c != NULL);
	TT_EQ(c->nfiles, 1);
	TT_STREQ(c->node.name, "n1");
	TT_STREQ(c->node.http, "127.0.0.1:8080");
	TT_EQ(c->node.threads, 2);
	TT_EQ(c->nactors, 8);
	TT_EQ(c->nfns, 1);

	const tr_actor_spec *a = tr_config_actor(c, "rag");
	TT_ASSERT(a != NULL);
	TT_STREQ(a->kind, "rag");
	TT_EQ(a->mailbox, 256);
	TT_EQ(a->overflow, TR_OVERFLOW_BLOCK);
	TT_EQ(a->instances, 2);
	TT_EQ(a->receive_fn, -1);
	TT_ASSERT(a->config == NULL);
	TT_EQ(a->pos.line, 4);
	TT_ASSERT(a->pos.file == c->files[0]);
	a = tr_config_actor(c, "generate");
	TT_EQ(a->overflow, TR_OVERFLOW_REJECT);
	a = tr_config_actor(c, "telemetry");
	TT_EQ(a->overflow, TR_OVERFLOW_DROP_OLDEST);
	TT_EQ(a->mailbox, 4096);
	a = tr_config_actor(c, "safety");
	TT_EQ(a->mailbox, 0);
	TT_EQ(a->instances, 1);
	a = tr_config_actor(c, "shout");
	TT_ASSERT(a->kind == NULL);
	TT_EQ(a->receive_fn, 0);
	TT_ASSERT(tr_config_actor(c, "nope") == NULL);

	const tr_supervisor_spec *s = tr_config_sup(c, "root");
	TT_ASSERT(s != NULL);
	TT_EQ(s->strategy, TR_ONE_FOR_ONE);
	TT_EQ(s->max_restarts, 5);
	TT_EQ(s->within_us, 10000000);
	TT_EQ(s->nchildren, 8);
	TT_STREQ(s->children[7], "shout");

	const tr_pipeline_spec *p = tr_config_pipeline(c, "assistant");
	TT_ASSERT(p != NULL);
	TT_EQ(p->deadline_us, 5000000);
	TT_EQ(p->max_inflight, 1000);
	TT_STREQ(p->tap, "telemetry");
	TT_EQ(p->steps.n, 3);

	const tr_step *st = &p->steps.v[0];
	TT_EQ(st->kind, TR_STEP_CALL);
	TT_EQ(st->pos.line, 18);
	TT_EQ(st->when_fn, -1);
	TT_STREQ(st->u.call.actor, "intent");
	TT_EQ(st->u.call.timeout_us, 50000);
	TT_EQ(st->u.call.retries, 2);
	TT_EQ(st->u.call.retry_on, TR_RETRY_DEFAULT);
	TT_EQ(st->u.call.backoff.base_us, 10000);
	TT_EQ(st->u.call.backoff.max_us, 200000);
	TT_ASSERT(st->u.call.backoff.jitter);
	TT_ASSERT(!st->u.call.cache.on);
	TT_ASSERT(st->u.call.fallback == NULL);

	st = &p->steps.v[1];
	TT_EQ(st->kind, TR_STEP_ROUTE);
	TT_STREQ(st->u.route.field, "intent");
	TT_EQ(st->u.route.nbranches, 1);
	TT_STREQ(st->u.route.branches[0].value, "action");
	const tr_step *ex = &st->u.route.branches[0].steps.v[0];
	TT_EQ(st->u.route.branches[0].steps.n, 1);
	TT_STREQ(ex->u.call.actor, "execute");
	TT_EQ(ex->u.call.timeout_us, 2000000);
	TT_EQ(ex->u.call.retries, 3);
	TT_EQ(ex->u.call.retry_on, TR_RETRY_TIMEOUT | TR_RETRY_OVERLOAD);
	TT_EQ(st->u.route.dflt.n, 2);
	const tr_step *rag = &st->u.route.dflt.v[0];
	TT_STREQ(rag->u.call.actor, "rag");
	TT_EQ(rag->u.call.timeout_us, 300000);
	TT_ASSERT(rag->u.call.cache.on);
	TT_EQ(rag->u.call.cache.ttl_us, 60000000);
	TT_EQ(rag->u.call.cache.capacity, 10000);
	TT_EQ(rag->u.call.cache.nkeys, 2);
	TT_STREQ(rag->u.call.cache.keys[0], "text");
	TT_STREQ(rag->u.call.cache.keys[1], "tenant");
	const tr_step *gen = &st->u.route.dflt.v[1];
	TT_EQ(gen->u.call.timeout_us, 15000000);
	TT_EQ(gen->u.call.first_byte_timeout_us, 2000000);
	TT_EQ(gen->u.call.retries, 1);
	TT_ASSERT(gen->u.call.coalesce);
	TT_STREQ(gen->u.call.fallback, "generate_backup");
	/* defaults */
	st = &p->steps.v[2];
	TT_EQ(st->u.call.timeout_us, 100000);
	TT_EQ(st->u.call.retries, 0);
	TT_EQ(st->u.call.backoff.base_us, 10000);
	TT_EQ(st->u.call.backoff.max_us, 1000000);
	TT_ASSERT(!st->u.call.coalesce);
	tr_config_free(c);
}

TT_TEST(assistant_loads)
{
	TT_ASSERT(in_root());
	tr_config *c = load1("pipelines/assistant.lua");
	TT_ASSERT(c != NULL);
	TT_EQ(c->npipelines, 2);
	/* 3 tool handlers, smalltalk's receive, 4 `when`s, in file order */
	TT_EQ(c->nfns, 8);
	TT_EQ(c->ntools, 3);
	TT_EQ(c->node.threads, 0);
	const tr_pipeline_spec *p = tr_config_pipeline(c, "assistant");
	TT_EQ(p->steps.n, 3); /* safety, intent, route */
	TT_STREQ(p->steps.v[0].u.call.actor, "safety");
	TT_EQ(p->steps.v[1].when_fn, 4);
	TT_EQ(p->steps.v[2].u.route.nbranches, 2);
	/* branches are sorted by value */
	TT_STREQ(p->steps.v[2].u.route.branches[0].value, "action");
	TT_STREQ(p->steps.v[2].u.route.branches[1].value, "chitchat");
	TT_EQ(p->steps.v[2].u.route.dflt.n, 3);
	TT_EQ(p->steps.v[2].u.route.dflt.v[2].when_fn, 7);
	TT_EQ(tr_config_actor(c, "smalltalk")->receive_fn, 3);
	TT_ASSERT(tr_config_actor(c, "generate")->config != NULL);
	tr_config_free(c);
}

/* Finds key k in a msgpack map object. */
static const msgpack_object *mp_get(const msgpack_object *o, const char *k)
{
	if (o->type != MSGPACK_OBJECT_MAP)
		return NULL;
	for (uint32_t i = 0; i < o->via.map.size; i++) {
		const msgpack_object *key = &o->via.map.ptr[i].key;
		if (key->type == MSGPACK_OBJECT_STR && key->via.str.size == strlen(k) &&
		    memcmp(key->via.str.ptr, k, key->via.str.size) == 0)
			return &o->via.map.ptr[i].val;
	}
	return NULL;
}

TT_TEST(multi_file_namespace)
{
	TT_ASSERT(in_root());
	const char *files[] = {"tests/lua/good/multi/actors.lua", "tests/lua/good/multi/pipelines.lua"};
	tr_config *c = NULL;
	tr_diag d;
	tr_diag_init(&d);
	TT_OK(tr_config_load(files, 2, &c, &d));
	TT_EQ(d.n, 0);
	TT_EQ(c->nfiles, 2);
	TT_STREQ(c->node.name, "troupe");
	const tr_pipeline_spec *p = tr_config_pipeline(c, "qa");
	TT_ASSERT(p->pos.file == c->files[1]);
	TT_EQ(p->steps.n, 3);
	TT_EQ(p->deadline_us, 30000000);
	TT_EQ(p->steps.v[0].u.call.timeout_us, 1000000); /* default */
	TT_EQ(p->steps.v[1].u.call.timeout_us, 1500000);
	TT_EQ(p->steps.v[1].u.call.retry_on, TR_RETRY_ERROR | TR_RETRY_OVERLOAD);
	TT_EQ(p->steps.v[2].u.call.timeout_us, 500);
	TT_EQ(tr_config_sup(c, "workers")->strategy, TR_REST_FOR_ONE);
	TT_EQ(tr_config_sup(c, "root")->strategy, TR_ONE_FOR_ALL);
	TT_STREQ(tr_config_sup(c, "root")->children[1], "workers");

	/* a kind's extra keys: one msgpack map, sorted keys */
	const tr_actor_spec *a = tr_config_actor(c, "rag");
	TT_EQ(a->instances, 3);
	TT_ASSERT(a->config != NULL);
	TT_OK(tr_mp_check(a->config, a->config_len, TR_MP_MAX_DEPTH));
	msgpack_unpacked u;
	msgpack_unpacked_init(&u);
	TT_EQ(msgpack_unpack_next(&u, (const char *)a->config, a->config_len, NULL),
	      MSGPACK_UNPACK_SUCCESS);
	TT_EQ(u.data.type, MSGPACK_OBJECT_MAP);
	TT_EQ(u.data.via.map.size, 4);
	TT_ASSERT(memcmp(u.data.via.map.ptr[0].key.via.str.ptr, "dir", 3) == 0);
	const msgpack_object *o = mp_get(&u.data, "top_k");
	TT_ASSERT(o && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 == 5);
	o = mp_get(&u.data, "extensions");
	TT_ASSERT(o && o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 2);
	o = mp_get(&u.data, "k1");
	TT_ASSERT(o && o->type == MSGPACK_OBJECT_FLOAT64 && o->via.f64 == 1.5);
	msgpack_unpacked_destroy(&u);
	tr_config_free(c);
	tr_diag_free(&d);
}

TT_TEST(parallel_and_when)
{
	TT_ASSERT(in_root());
	tr_config *c = load1("tests/lua/good/constructs.lua");
	TT_ASSERT(c != NULL);
	TT_EQ(c->nfns, 3);
	const tr_pipeline_spec *p = tr_config_pipeline(c, "fan");
	TT_EQ(p->deadline_us, 60000000);
	TT_EQ(p->steps.n, 5);
	const tr_step *s = &p->steps.v[0];
	TT_EQ(s->kind, TR_STEP_PARALLEL);
	TT_EQ(s->u.par.nbranches, 3);
	TT_EQ(s->u.par.join, TR_JOIN_N);
	TT_EQ(s->u.par.join_n, 2);
	TT_EQ(s->u.par.branches[0].n, 1);
	TT_EQ(s->u.par.branches[0].v[0].u.call.timeout_us, 20000);
	TT_EQ(s->u.par.branches[1].n, 2);
	TT_EQ(s->u.par.branches[1].v[1].when_fn, 0);
	TT_EQ(s->u.par.branches[2].n, 1); /* a single step as a branch */
	TT_STREQ(s->u.par.branches[2].v[0].u.call.actor, "d");
	TT_EQ(p->steps.v[1].u.par.join, TR_JOIN_FIRST);
	TT_EQ(p->steps.v[2].u.par.join, TR_JOIN_ALL);
	TT_EQ(p->steps.v[2].u.par.nbranches, 2);
	s = &p->steps.v[3];
	TT_EQ(s->when_fn, 1);
	TT_EQ(s->u.call.timeout_us, 3600000000ull);
	s = &p->steps.v[4];
	TT_EQ(s->kind, TR_STEP_ROUTE);
	TT_EQ(s->u.route.nbranches, 2);
	TT_STREQ(s->u.route.branches[0].value, "en");
	TT_EQ(s->u.route.branches[0].steps.n, 1);
	const tr_step *inner = &s->u.route.branches[1].steps.v[0];
	TT_EQ(inner->kind, TR_STEP_ROUTE);
	TT_STREQ(inner->u.route.field, "region");
	TT_EQ(inner->u.route.dflt.n, 0);
	TT_EQ(s->u.route.dflt.n, 1);

	/* join = 2.0 is join = 2; a route's when is its predicate, not a branch */
	p = tr_config_pipeline(c, "whole");
	TT_ASSERT(p != NULL);
	TT_EQ(p->steps.v[0].u.par.join, TR_JOIN_N);
	TT_EQ(p->steps.v[0].u.par.join_n, 2);
	s = &p->steps.v[1];
	TT_EQ(s->kind, TR_STEP_ROUTE);
	TT_EQ(s->when_fn, 2);
	TT_EQ(s->u.route.nbranches, 1);
	TT_STREQ(s->u.route.branches[0].value, "en");
	tr_config_free(c);
}

/* Levels of step lists under (and including) l, following the first step
 * of each list into its route default or first parallel branch. */
static int nest_depth(const tr_step_list *l)
{
	if (l->n == 0)
		return 1;
	if (l->v[0].kind == TR_STEP_ROUTE)
		return 1 + nest_depth(&l->v[0].u.route.dflt);
	if (l->v[0].kind == TR_STEP_PARALLEL)
		return 1 + nest_depth(&l->v[0].u.par.branches[0]);
	return 1;
}

TT_TEST(limits_load)
{
	TT_ASSERT(in_root());
	tr_config *c = load1("tests/lua/good/limits.lua");
	TT_ASSERT(c != NULL);
	/* nested exactly as deep as the loader (and the engine) allow; one
	 * level more is tests/lua/bad/nested_too_deep.lua */
	TT_EQ(nest_depth(&tr_config_pipeline(c, "deep")->steps), TR_STEP_NEST_MAX);
	TT_EQ(nest_depth(&tr_config_pipeline(c, "deep_par")->steps), TR_STEP_NEST_MAX);
	const tr_supervisor_spec *s = tr_config_sup(c, "tight");
	TT_EQ(s->max_restarts, 0); /* kept: never restart, not "the default" */
	TT_EQ(s->within_us, 1000);
	s = tr_config_sup(c, "day");
	TT_EQ(s->max_restarts, 2);
	TT_EQ(s->within_us, 24ull * 3600 * 1000000);
	tr_config_free(c);
}

TT_TEST(tenants_and_door_limits)
{
	/* printf %s acme-key-1 | sha256sum */
	static const unsigned char acme0[32] = {
		0x90, 0x4f, 0xc5, 0x20, 0xbe, 0x4c, 0xa9, 0xdb, 0x80, 0xd0, 0xff,
		0xcc, 0x6b, 0xf7, 0xe0, 0x1b, 0x41, 0x48, 0xe3, 0x3d, 0x45, 0xbb,
		0x6b, 0x42, 0x2a, 0xd2, 0xe6, 0x07, 0x81, 0x5f, 0xb5, 0x08};
	TT_ASSERT(in_root());
	tr_config *c = load1("tests/lua/good/tenants.lua");
	TT_ASSERT(c != NULL);

	/* the door's limits */
	TT_STREQ(c->node.http, "127.0.0.1:8080");
	TT_EQ(c->node.max_body, 4u << 20);
	TT_EQ(c->node.max_header, 32768);
	TT_EQ(c->node.max_connections, 500);
	TT_EQ(c->node.header_timeout_us, 5000000);
	TT_EQ(c->node.idle_timeout_us, 120000000);
	TT_EQ(c->node.grace_us, 1500000);

	TT_EQ(c->ntenants, 4);
	const tr_tenant_spec *t = tr_config_tenant(c, "acme");
	TT_ASSERT(t == &c->tenants[0]);
	TT_EQ(t->pos.line, 14);
	TT_ASSERT(t->pos.file == c->files[0]);
	TT_EQ(t->nkeys, 2);
	TT_ASSERT(memcmp(t->keys[0], acme0, 32) == 0);
	/* upper-case hex reads the same */
	TT_EQ(t->keys[1][0], 0xbe);
	TT_EQ(t->keys[1][1], 0x7d);
	TT_EQ(t->keys[1][31], 0xb7);
	TT_ASSERT(t->rate == 50.0);
	TT_EQ(t->burst, 100);

	t = tr_config_tenant(c, "beta");
	TT_EQ(t->nkeys, 1);
	TT_EQ(t->keys[0][0], 0x7a);
	TT_EQ(t->keys[0][31], 0x20);
	TT_ASSERT(t->rate == 1.5 / 60);
	TT_EQ(t->burst, 1); /* max(1, ceil(rate)) */

	t = tr_config_tenant(c, "free");
	TT_EQ(t->nkeys, 1);
	TT_EQ(t->keys[0][0], 0x0c);
	TT_ASSERT(t->rate == 0.0); /* unlimited */
	TT_EQ(t->burst, 0);

	/* tenants have their own namespace */
	t = tr_config_tenant(c, "echo");
	TT_EQ(t->keys[0][17], 0x11);
	TT_ASSERT(t->rate == 7.5);
	TT_EQ(t->burst, 8);
	TT_ASSERT(tr_config_actor(c, "echo") != NULL);
	TT_ASSERT(tr_config_tenant(c, "nope") == NULL);
	tr_config_free(c);

	/* without any of them: zero, the door's defaults, and no tenants */
	c = load1("pipelines/example.lua");
	TT_ASSERT(c != NULL);
	TT_EQ(c->node.max_body, 0);
	TT_EQ(c->node.max_header, 0);
	TT_EQ(c->node.max_connections, 0);
	TT_EQ(c->node.header_timeout_us + c->node.idle_timeout_us + c->node.grace_us, 0);
	TT_EQ(c->ntenants, 0);
	TT_ASSERT(c->tenants == NULL);
	tr_config_free(c);
}

TT_TEST(tools_load)
{
	TT_ASSERT(in_root());
	tr_config *c = load1("tests/lua/good/tools.lua");
	TT_ASSERT(c != NULL);
	TT_EQ(c->ntools, 6);
	TT_EQ(c->nfns, 6); /* one handler each */
	const tr_tool_spec *t = tr_config_tool(c, "book_appointment");
	TT_ASSERT(t != NULL && t == &c->tools[0]);
	TT_EQ(t->pos.line, 7);
	TT_ASSERT(t->pos.file == c->files[0]);
	TT_EQ(t->handler_fn, 0);
	TT_EQ(t->timeout_us, 500000);
	TT_STREQ(t->description, "Books a slot on a date.");
	TT_ASSERT(t->sql == NULL);
	TT_EQ(t->nargs, 3); /* sorted by name */
	TT_STREQ(t->args[0].name, "date");
	TT_EQ(t->args[0].type, TR_ARG_STRING);
	TT_ASSERT(!t->args[0].optional);
	TT_STREQ(t->args[1].name, "note");
	TT_EQ(t->args[1].type, TR_ARG_STRING);
	TT_ASSERT(t->args[1].optional);
	TT_STREQ(t->args[2].name, "slot");
	TT_EQ(t->args[2].type, TR_ARG_INT);
	t = tr_config_tool(c, "echo");
	TT_EQ(t->handler_fn, 1);
	TT_EQ(t->timeout_us, 0);
	TT_ASSERT(t->description == NULL);
	TT_EQ(t->nargs, 5);
	TT_STREQ(t->args[0].name, "data");
	TT_EQ(t->args[0].type, TR_ARG_TABLE);
	TT_EQ(t->args[1].type, TR_ARG_BOOL);
	TT_EQ(t->args[3].type, TR_ARG_NUMBER);
	TT_ASSERT(t->args[4].optional);
	t = tr_config_tool(c, "nothing");
	TT_EQ(t->nargs, 0);
	TT_ASSERT(t->args == NULL);
	TT_ASSERT(tr_config_tool(c, "exec") == NULL); /* actors are another namespace */
	/* every actor knows its config (kinds read other declarations) */
	TT_ASSERT(tr_config_actor(c, "exec")->cfg == c);
	tr_config_free(c);
}

TT_TEST(placement_loads)
{
	TT_ASSERT(in_root());
	tr_config *c = load1("tests/lua/good/placement.lua");
	TT_ASSERT(c != NULL);
	const tr_actor_spec *g = tr_config_actor(c, "generate");
	TT_STREQ(g->on_label, "gpu");
	TT_ASSERT(g->on_node == NULL);
	TT_EQ(g->instances, 4);
	TT_ASSERT(g->config == NULL); /* `on` is not passed to the kind */
	TT_ASSERT(tr_actor_placed(g));
	TT_ASSERT(!tr_actor_runs_here(c, g)); /* n3 has no "gpu" label */
	TT_ASSERT(tr_actor_runs_here(c, tr_config_actor(c, "intent")));
	TT_STREQ(tr_config_actor(c, "pinned")->on_node, "n3");
	TT_ASSERT(tr_actor_runs_here(c, tr_config_actor(c, "pinned")));
	/* label and node both given: both must match */
	TT_ASSERT(!tr_actor_runs_here(c, tr_config_actor(c, "both")));
	const tr_actor_spec *e = tr_config_actor(c, "echo");
	TT_ASSERT(e->receive_fn >= 0 && tr_actor_runs_here(c, e));
	const tr_actor_spec *r = tr_config_actor(c, "rag");
	TT_ASSERT(!tr_actor_placed(r) && tr_actor_runs_here(c, r));
	tr_config_free(c);
}

/* ---- bad files ------------------------------------------------------ */

/* Loads files and compares the diagnostics with the `-- expect: ` lines at
 * the top of the first file. Returns the number of mismatches (printed). */
static int check_expect(const char *const *files, size_t n)
{
	char line[1024];
	char *want[64];
	size_t nw = 0;
	int bad = 0;
	FILE *f = fopen(files[0], "r");
	tr_config *c = NULL;
	tr_diag d;

	if (f == NULL)
		return 1;
	while (fgets(line, sizeof(line), f) && strncmp(line, "-- expect: ", 11) == 0 && nw < 64) {
		line[strcspn(line, "\n")] = '\0';
		want[nw++] = strdup(line + 11);
	}
	fclose(f);
	tr_diag_init(&d);
	int rc = tr_config_load(files, n, &c, &d);
	if (rc != TR_EINVAL || c != NULL) {
		fprintf(stderr, "  %s: rc %s\n", files[0], tr_err_name(rc));
		bad++;
	}
	if (nw == 0) {
		fprintf(stderr, "  %s: no expect lines\n", files[0]);
		bad++;
	}
	for (size_t i = 0; i < nw || i < d.n; i++) {
		const char *w = i < nw ? want[i] : "(nothing)";
		const char *g = i < d.n ? d.msgs[i] : "(nothing)";
		if (strcmp(w, g) != 0) {
			fprintf(stderr, "  %s: diagnostic %zu\n    want: %s\n    got:  %s\n", files[0],
			        i + 1, w, g);
			bad++;
		}
	}
	for (size_t i = 0; i < nw; i++)
		free(want[i]);
	tr_diag_free(&d);
	tr_config_free(c);
	return bad;
}

static int cmp_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

TT_TEST(bad_files_diagnostics)
{
	TT_ASSERT(in_root());
	DIR *dir = opendir("tests/lua/bad");
	TT_ASSERT(dir != NULL);
	char *names[128];
	size_t n = 0;
	struct dirent *e;
	while ((e = readdir(dir)) != NULL && n < 128) {
		size_t l = strlen(e->d_name);
		if (l > 4 && strcmp(e->d_name + l - 4, ".lua") == 0) {
			names[n] = malloc(l + 16);
			snprintf(names[n], l + 16, "tests/lua/bad/%s", e->d_name);
			n++;
		}
	}
	closedir(dir);
	qsort(names, n, sizeof(names[0]), cmp_name);
	int bad = 0;
	for (size_t i = 0; i < n; i++) {
		const char *f = names[i];
		bad += check_expect(&f, 1);
		free(names[i]);
	}
	fprintf(stderr, "  %zu bad files checked\n", n);
	TT_LE(30, n);
	const char *multi[] = {"tests/lua/bad/multi/actors.lua", "tests/lua/bad/multi/pipelines.lua"};
	bad += check_expect(multi, 2);
	TT_EQ(bad, 0);
}

TT_TEST(check_main_exit_codes)
{
	TT_ASSERT(in_root());
	char *ok[] = {"check", "tests/lua/good/multi/actors.lua", "tests/lua/good/multi/pipelines.lua",
	              NULL};
	char *bad[] = {"check", "tests/lua/bad/unknown_kind.lua", NULL};
	char *none[] = {"check", NULL};
	char *missing[] = {"check", "tests/lua/no_such_file.lua", NULL};
	TT_EQ(tr_check_main(3, ok), 0);
	TT_EQ(tr_check_main(2, bad), 1);
	TT_EQ(tr_check_main(1, none), 2);
	TT_EQ(tr_check_main(2, missing), 1);
	fflush(stdout);
}

TT_TEST(load_alloc_failures_never_leak)
{
	TT_ASSERT(in_root());
	/* good files, then bad ones with their number of diagnostics */
	static const struct {
		const char *path;
		size_t ndiag;
	} files[] = {{"pipelines/example.lua", 0},
	             {"tests/lua/good/tenants.lua", 0},
	             {"tests/lua/bad/many_problems.lua", 6},
	             {"tests/lua/bad/tenant_keys_bad.lua", 18},
	             {"tests/lua/good/tools.lua", 0},
	             {"tests/lua/bad/tool_bad.lua", 22},
	             {"tests/lua/good/backends.lua", 0}};
	enum { NF = sizeof(files) / sizeof(files[0]) };
	int done[NF] = {0}, ndone = 0;
	for (long k = 1; k < 5000 && ndone < NF; k++) {
		for (int which = 0; which < NF; which++) {
			tr_config *c = NULL;
			tr_diag d;
			tr_diag_init(&d);
			tr__alloc_fail_after(k);
			int rc = tr_config_load(&files[which].path, 1, &c, &d);
			tr__alloc_fail_after(0);
			if (rc != TR_OK && rc != TR_ENOMEM && rc != TR_EINVAL)
				fprintf(stderr, "  k=%ld: %s\n", k, tr_err_name(rc));
			if (files[which].ndiag == 0) {
				if (rc == TR_EINVAL)
					fprintf(stderr, "  k=%ld: %s\n", k, d.n ? d.msgs[0] : "?");
				TT_ASSERT(rc == TR_OK || rc == TR_ENOMEM);
				TT_ASSERT((rc == TR_OK) == (c != NULL));
				if (rc == TR_OK && !done[which]) {
					done[which] = 1;
					ndone++;
				}
			} else {
				TT_ASSERT(rc == TR_EINVAL || rc == TR_ENOMEM);
				if (rc == TR_EINVAL && d.n == files[which].ndiag && !done[which]) {
					done[which] = 1;
					ndone++;
				}
			}
			tr_config_free(c);
			tr_diag_free(&d);
		}
	}
	TT_EQ(ndone, NF);
}

/* ---- the sandbox -------------------------------------------------------- */

static tr_config *sbx_cfg;

static lua_State *sbx_state(size_t mem, uint64_t instr)
{
	tr_lua_limits lim = {mem, instr};
	lua_State *L = NULL;
	char err[256];
	if (sbx_cfg == NULL)
		sbx_cfg = load1("tests/lua/good/sandbox.lua");
	if (sbx_cfg == NULL || tr_lua_state_new(sbx_cfg, &lim, &L, err, sizeof(err)) != TR_OK)
		return NULL;
	return L;
}

/* Packs {code = <code>} into b. */
static void pack_code(tr_buf *b, const char *code)
{
	unsigned char hdr[8];
	b->len = 0;
	size_t n = strlen(code), o = 0;
	hdr[o++] = 0x81;
	hdr[o++] = 0xa4;
	tr__buf_append(b, hdr, o);
	tr__buf_append(b, "code", 4);
	if (n < 256) {
		unsigned char h[2] = {0xd9, (unsigned char)n};
		tr__buf_append(b, h, 2);
	} else {
		unsigned char h[3] = {0xda, (unsigned char)(n >> 8), (unsigned char)n};
		tr__buf_append(b, h, 3);
	}
	tr__buf_append(b, code, n);
}

/* Runs `code` in the eval actor's function: rc, err and output. */
static int eval(lua_State *L, const char *code, tr_buf *out, char *err, size_t errlen)
{
	tr_buf in;
	tr_buf_init(&in);
	pack_code(&in, code);
	out->len = 0;
	int rc = tr_lua_call(L, tr_config_actor(sbx_cfg, "eval")->receive_fn, in.data, in.len, NULL,
	                     out, NULL, err, errlen);
	tr_buf_free(&in);
	return rc;
}

/* code must fail with a message containing `want`. */
static int fails_with(lua_State *L, const char *code, const char *want)
{
	tr_buf out;
	char err[512];
	tr_buf_init(&out);
	int rc = eval(L, code, &out, err, sizeof(err));
	tr_buf_free(&out);
	if (rc != TR_EFAILED || strstr(err, want) == NULL) {
		fprintf(stderr, "  `%s`: %s \"%s\", want EFAILED with \"%s\"\n", code, tr_err_name(rc),
		        err, want);
		return 0;
	}
	return 1;
}

/* code must return exactly these msgpack bytes. */
static int returns(lua_State *L, const char *code, const char *bytes, size_t n)
{
	tr_buf out;
	char err[512];
	tr_buf_init(&out);
	int rc = eval(L, code, &out, err, sizeof(err));
	int ok = rc == TR_OK && out.len == n && memcmp(out.data, bytes, n) == 0;
	if (!ok)
		fprintf(stderr, "  `%s`: %s \"%s\", %zu bytes (first %02x)\n", code, tr_err_name(rc), err,
		        out.len, out.len ? out.data[0] : 0);
	tr_buf_free(&out);
	return ok;
}

TT_TEST(sandbox_escapes_refused)
{
	TT_ASSERT(in_root());
	lua_State *L = sbx_state(0, 0);
	TT_ASSERT(L != NULL);
	TT_ASSERT(fails_with(L, "return os.exit()", "unknown name 'os'"));
	TT_ASSERT(fails_with(L, "return io.open('/etc/passwd')", "unknown name 'io'"));
	TT_ASSERT(fails_with(L, "return require('os')", "unknown name 'require'"));
	TT_ASSERT(fails_with(L, "return debug.getregistry()", "unknown name 'debug'"));
	TT_ASSERT(fails_with(L, "return package.loaded", "unknown name 'package'"));
	TT_ASSERT(fails_with(L, "return dofile('/etc/passwd')", "unknown name 'dofile'"));
	TT_ASSERT(fails_with(L, "return loadfile('/etc/passwd')", "unknown name 'loadfile'"));
	TT_ASSERT(fails_with(L, "return getfenv(1)", "unknown name 'getfenv'"));
	TT_ASSERT(fails_with(L, "return setfenv(1, {})", "unknown name 'setfenv'"));
	TT_ASSERT(fails_with(L, "return string.dump(print)", "field 'dump'"));
	TT_ASSERT(fails_with(L, "return ('x').dump(print)", "field 'dump'"));
	TT_ASSERT(fails_with(L, "collectgarbage('collect')", "only \"count\""));
	TT_ASSERT(fails_with(L, "collectgarbage('stop')", "only \"count\""));
	/* binary chunks: load refuses them whatever the mode asked */
	TT_ASSERT(fails_with(L, "local f, e = load('\\27Lua\\84\\0', 'x', 'b'); error(e, 0)",
	                     "attempt to load a binary chunk (mode is 't')"));
	/* the shared string metatable is hidden */
	TT_ASSERT(returns(L, "return getmetatable('')", "\xc2", 1));
	TT_ASSERT(fails_with(L, "getmetatable('').__index = {}", "attempt to index a boolean value"));
	/* load() without env gets the sandbox env, not the real globals */
	TT_ASSERT(fails_with(L, "return load('return os')()", "unknown name 'os'"));
	TT_ASSERT(returns(L, "return rawget(_G, 'os') == nil and rawget(_G, 'dofile') == nil", "\xc3",
	                  1));
	/* collectgarbage("count") is allowed */
	TT_ASSERT(returns(L, "return collectgarbage('count') > 0", "\xc3", 1));
	/* error positions */
	TT_ASSERT(fails_with(L, "error('plain')", "code:1: plain"));
	TT_ASSERT(fails_with(L, "\n\nerror('no position', 0)", "code:3: no position"));
	TT_ASSERT(fails_with(L, "error({})", "code:1: (error object is a table value)"));
	/* the state is still usable after all that */
	TT_ASSERT(returns(L, "return 1 + 1", "\x02", 1));
	tr_lua_state_free(L);
}

TT_TEST(sandbox_limits)
{
	TT_ASSERT(in_root());
	lua_State *L = sbx_state(8u << 20, 2000000);
	TT_ASSERT(L != NULL);
	TT_ASSERT(fails_with(L, "while true do end",
	                     "code:1: instruction limit exceeded (2000000 instructions)"));
	/* pcall cannot swallow it: the limit is sticky */
	TT_ASSERT(fails_with(L, "while true do pcall(function() while true do end end) end",
	                     "instruction limit exceeded"));
	TT_ASSERT(fails_with(L, "while true do pcall(error) end", "instruction limit exceeded"));
	TT_ASSERT(fails_with(L,
	                     "local co = coroutine.wrap(function() while true do "
	                     "pcall(function() while true do end end) end end) co()",
	                     "instruction limit exceeded"));
	TT_ASSERT(fails_with(L, "local t = {} table.sort({3,2,1,5,4,7,6}, function(a, b) "
	                        "while true do end end)",
	                     "instruction limit exceeded"));
	/* the budget is per call */
	TT_ASSERT(returns(L, "local n = 0 for i = 1, 100000 do n = n + 1 end return n > 0", "\xc3",
	                  1));
	TT_ASSERT(fails_with(L, "return string.rep('x', 1e9)", "code:1: memory limit (8 MiB) exceeded"));
	TT_ASSERT(fails_with(L, "return ('x'):rep(1e9)", "memory limit (8 MiB) exceeded"));
	TT_ASSERT(fails_with(L, "local t = {} for i = 1, 1e8 do t[i] = i end",
	                     "memory limit (8 MiB) exceeded"));
	TT_ASSERT(fails_with(L, "local t = {} for i = 1, 1e8 do t[#t + 1] = tostring(i) end",
	                     "memory limit (8 MiB) exceeded"));
	TT_ASSERT(fails_with(L,
	                     "local s = 'x' while true do pcall(function() s = s .. s end) end",
	                     "limit"));
	/* deep recursion: an error, never a crash */
	tr_buf out;
	char err[512];
	tr_buf_init(&out);
	TT_EQ(eval(L, "local function f(n) return 1 + f(n + 1) end return f(1)", &out, err,
	           sizeof(err)),
	      TR_EFAILED);
	fprintf(stderr, "  deep recursion: %s\n", err);
	/* a chunk nested too deeply for the parser: load() reports it */
	TT_OK(eval(L, "local s = string.rep('(', 1000) .. '1' .. string.rep(')', 1000) "
	              "return select(2, load('return ' .. s))",
	           &out, err, sizeof(err)));
	TT_ASSERT(out.len > 0);
	tr_buf_free(&out);
	/* still usable */
	TT_ASSERT(returns(L, "return 'ok'", "\xa2ok", 3));
	tr_lua_state_free(L);
}

/* ---- msgpack <-> Lua ------------------------------------------------------ */

static int buf_write(void *data, const char *p, size_t n)
{
	return tr__buf_append(data, p, n) == TR_OK ? 0 : -1;
}

TT_TEST(msgpack_round_trip)
{
	TT_ASSERT(in_root());
	lua_State *L = sbx_state(0, 0);
	TT_ASSERT(L != NULL);
	tr_buf in, out;
	tr_buf_init(&in);
	tr_buf_init(&out);
	msgpack_packer pk;
	msgpack_packer_init(&pk, &in, buf_write);
	msgpack_pack_map(&pk, 11);
	msgpack_pack_str_with_body(&pk, "s", 1);
	msgpack_pack_str_with_body(&pk, "a\0b", 3);
	msgpack_pack_str_with_body(&pk, "neg", 3);
	msgpack_pack_int64(&pk, -5);
	msgpack_pack_str_with_body(&pk, "big", 3);
	msgpack_pack_uint64(&pk, (1ull << 60) + 1);
	msgpack_pack_str_with_body(&pk, "min", 3);
	msgpack_pack_int64(&pk, INT64_MIN);
	msgpack_pack_str_with_body(&pk, "umax", 4);
	msgpack_pack_uint64(&pk, UINT64_MAX);
	msgpack_pack_str_with_body(&pk, "f", 1);
	msgpack_pack_double(&pk, 1.5);
	msgpack_pack_str_with_body(&pk, "t", 1);
	msgpack_pack_true(&pk);
	msgpack_pack_str_with_body(&pk, "nothing", 7);
	msgpack_pack_nil(&pk);
	msgpack_pack_str_with_body(&pk, "bin", 3);
	msgpack_pack_bin_with_body(&pk, "\x00\xff\x01", 3);
	msgpack_pack_str_with_body(&pk, "arr", 3);
	msgpack_pack_array(&pk, 3);
	msgpack_pack_int(&pk, 1);
	msgpack_pack_array(&pk, 2);
	msgpack_pack_float(&pk, 2.5f);
	msgpack_pack_map(&pk, 1);
	msgpack_pack_str_with_body(&pk, "x", 1);
	msgpack_pack_str_with_body(&pk, "y", 1);
	msgpack_pack_str_with_body(&pk, "z", 1);
	msgpack_pack_str_with_body(&pk, "m", 1);
	msgpack_pack_map(&pk, 2);
	msgpack_pack_int(&pk, 7); /* integer key */
	msgpack_pack_false(&pk);
	msgpack_pack_str_with_body(&pk, "deep", 4);
	msgpack_pack_map(&pk, 0);

	char err[256];
	TT_OK(tr_lua_call(L, tr_config_actor(sbx_cfg, "echo")->receive_fn, in.data, in.len, NULL,
	                  &out, NULL, err, sizeof(err)));
	TT_OK(tr_mp_check(out.data, out.len, TR_MP_MAX_DEPTH));
	msgpack_unpacked u;
	msgpack_unpacked_init(&u);
	TT_EQ(msgpack_unpack_next(&u, (const char *)out.data, out.len, NULL), MSGPACK_UNPACK_SUCCESS);
	const msgpack_object *r = &u.data, *o;
	TT_EQ(r->via.map.size, 10); /* nil values vanish */
	o = mp_get(r, "s");
	TT_ASSERT(o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == 3 &&
	          memcmp(o->via.str.ptr, "a\0b", 3) == 0);
	o = mp_get(r, "neg");
	TT_ASSERT(o && o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && o->via.i64 == -5);
	o = mp_get(r, "big");
	TT_ASSERT(o && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 == (1ull << 60) + 1);
	o = mp_get(r, "min");
	TT_ASSERT(o && o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && o->via.i64 == INT64_MIN);
	o = mp_get(r, "umax"); /* past int64: a float */
	TT_ASSERT(o && o->type == MSGPACK_OBJECT_FLOAT64 && o->via.f64 == 18446744073709551616.0);
	o = mp_get(r, "f");
	TT_ASSERT(o && o->type == MSGPACK_OBJECT_FLOAT64 && o->via.f64 == 1.5);
	o = mp_get(r, "t");
	TT_ASSERT(o && o->type == MSGPACK_OBJECT_BOOLEAN && o->via.boolean);
	TT_ASSERT(mp_get(r, "nothing") == NULL);
	o = mp_get(r, "bin"); /* bin comes back as str */
	TT_ASSERT(o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == 3 &&
	          memcmp(o->via.str.ptr, "\x00\xff\x01", 3) == 0);
	o = mp_get(r, "arr");
	TT_ASSERT(o && o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size == 3);
	TT_ASSERT(o->via.array.ptr[1].type == MSGPACK_OBJECT_ARRAY);
	TT_ASSERT(o->via.array.ptr[1].via.array.ptr[0].via.f64 == 2.5);
	const msgpack_object *x = mp_get(&o->via.array.ptr[1].via.array.ptr[1], "x");
	TT_ASSERT(x && x->type == MSGPACK_OBJECT_STR && x->via.str.size == 1);
	o = mp_get(r, "m");
	TT_ASSERT(o && o->type == MSGPACK_OBJECT_MAP && o->via.map.size == 2);
	int found_int_key = 0;
	for (uint32_t i = 0; i < o->via.map.size; i++)
		if (o->via.map.ptr[i].key.type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
		    o->via.map.ptr[i].key.via.u64 == 7 &&
		    o->via.map.ptr[i].val.type == MSGPACK_OBJECT_BOOLEAN)
			found_int_key = 1;
	TT_ASSERT(found_int_key);
	o = mp_get(o, "deep"); /* the empty table encodes as a map */
	TT_ASSERT(o && o->type == MSGPACK_OBJECT_MAP && o->via.map.size == 0);
	msgpack_unpacked_destroy(&u);

	/* push/encode directly */
	TT_OK(tr_lua_push_msgpack(L, (const unsigned char *)"\x93\x01\xa1x\xc3", 5));
	out.len = 0;
	TT_OK(tr_lua_to_msgpack(L, -1, &out));
	TT_EQ(out.len, 5);
	TT_ASSERT(memcmp(out.data, "\x93\x01\xa1x\xc3", 5) == 0);
	lua_pop(L, 1);
	tr_buf_free(&in);
	tr_buf_free(&out);
	tr_lua_state_free(L);
}

TT_TEST(msgpack_hostile_input_rejected)
{
	TT_ASSERT(in_root());
	lua_State *L = sbx_state(0, 0);
	TT_ASSERT(L != NULL);
	int top = lua_gettop(L);
	static const struct {
		const char *p;
		size_t n;
	} bad[] = {
		{"\xdf\xff\xff\xff\xff", 5},     /* map32 with 4G entries: 5 bytes */
		{"\xdd\xff\xff\xff\xff", 5},     /* array32 likewise */
		{"\xdb\xff\xff\xff\xff", 5},     /* str32 */
		{"\x82\xa1x\x01", 4},            /* truncated */
		{"\xc1", 1},                     /* never used */
		{"\x01\x02", 2},                 /* trailing bytes */
		{"\x81\xc0\x01", 3},             /* nil key */
		{"\x81\x90\x01", 3},             /* table key */
		{"\xd4\x01\x02", 3},             /* ext */
		{"", 0},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		TT_RC(tr_lua_push_msgpack(L, (const unsigned char *)bad[i].p, bad[i].n), TR_EPROTO);
	/* nesting past TR_MP_MAX_DEPTH */
	unsigned char deep[200];
	memset(deep, 0x91, sizeof(deep));
	deep[199] = 0x01;
	TT_RC(tr_lua_push_msgpack(L, deep, sizeof(deep)), TR_EPROTO);
	TT_EQ(lua_gettop(L), top);
	/* a call whose input is not a map */
	tr_buf out;
	char err[256];
	tr_buf_init(&out);
	TT_RC(tr_lua_call(L, tr_config_actor(sbx_cfg, "echo")->receive_fn,
	                  (const unsigned char *)"\x93\x01\x02\x03", 4, NULL, &out, NULL, err,
	                  sizeof(err)),
	      TR_EPROTO);
	TT_RC(tr_lua_call(L, tr_config_actor(sbx_cfg, "echo")->receive_fn,
	                  (const unsigned char *)"\xdf\xff\xff\xff\xff", 5, NULL, &out, NULL, err,
	                  sizeof(err)),
	      TR_EPROTO);
	/* results that cannot be encoded */
	static const char *const unenc[] = {
		"return {f = function() end}",
		"local t = {} t.self = t return t",
		"local t = {} for i = 1, 100 do t = {t} end return t",
		"return {[true] = 1}",
		"return {[1.5] = 1}",
		"return {co = coroutine.create(print)}",
		"return print",
	};
	for (size_t i = 0; i < sizeof(unenc) / sizeof(unenc[0]); i++) {
		int rc = eval(L, unenc[i], &out, err, sizeof(err));
		if (rc != TR_EPROTO)
			fprintf(stderr, "  `%s`: %s %s\n", unenc[i], tr_err_name(rc), err);
		TT_RC(rc, TR_EPROTO);
		TT_EQ(out.len, 0);
	}
	TT_ASSERT(strstr(err, "tests/lua/good/sandbox.lua:3: ") != NULL); /* names the function */
	/* a predicate: truthiness */
	int truth = -1;
	int fn = tr_config_pipeline(sbx_cfg, "p")->steps.v[0].when_fn;
	TT_OK(tr_lua_call(L, fn, (const unsigned char *)"\x81\xa2go\xc3", 5, NULL, &out, &truth, err,
	                  sizeof(err)));
	TT_EQ(truth, 1);
	TT_OK(tr_lua_call(L, fn, NULL, 0, NULL, &out, &truth, err, sizeof(err)));
	TT_EQ(truth, 0);
	TT_RC(tr_lua_call(L, 99, NULL, 0, NULL, &out, &truth, err, sizeof(err)), TR_EINVAL);
	tr_buf_free(&out);
	TT_EQ(lua_gettop(L), top);
	tr_lua_state_free(L);
}

TT_TEST(backends_load)
{
	TT_ASSERT(in_root());
	tr_config *c = load1("tests/lua/good/backends.lua");
	TT_ASSERT(c != NULL);
	TT_ASSERT(c->postgres.on);
	TT_STREQ(c->postgres.conninfo, "hostaddr=127.0.0.1 port=5432 dbname=app");
	TT_EQ(c->postgres.pool, 4);
	TT_EQ(c->postgres.queue, 100);
	TT_EQ(c->postgres.connect_timeout_us, 2000000);
	TT_EQ(c->postgres.max_lifetime_us, 3600000000ull);
	TT_EQ(c->postgres.statement_timeout_us, 5000000);
	TT_ASSERT(c->postgres.pgbouncer);
	TT_ASSERT(c->redis.on);
	TT_STREQ(c->redis.url, "redis://127.0.0.1:6379/2");
	TT_STREQ(c->redis.prefix, "app:");
	TT_EQ(c->redis.timeout_us, 200000);
	const tr_tool_spec *t = tr_config_tool(c, "appointments");
	TT_ASSERT(t != NULL && t->sql != NULL && t->handler_fn == -1);
	TT_EQ(t->nparams, 1);
	TT_STREQ(t->params[0], "patient_id");
	t = tr_config_tool(c, "between");
	TT_EQ(t->nparams, 2);
	TT_STREQ(t->params[0], "from");
	TT_STREQ(t->params[1], "to");
	tr_config_free(c);
	char host[64];
	int port, db;
	TT_OK(tr_redis_url_parse("redis://[::1]:6380/3", host, sizeof(host), &port, &db));
	TT_STREQ(host, "::1");
	TT_EQ(port, 6380);
	TT_EQ(db, 3);
	TT_RC(tr_redis_url_parse("redis://127.0.0.1:0", host, sizeof(host), &port, &db), TR_EINVAL);
	TT_RC(tr_redis_url_parse("redis://127.0.0.1:1/x", host, sizeof(host), &port, &db), TR_EINVAL);
	TT_RC(tr_redis_url_parse("http://127.0.0.1:1", host, sizeof(host), &port, &db), TR_EINVAL);
}

/* tr_lua_test: predicates read the message in place, through a view. */
TT_TEST(predicate_view)
{
	TT_ASSERT(in_root());
	tr_config *c = load1("tests/lua/good/view.lua");
	TT_ASSERT(c != NULL);
	lua_State *L = NULL;
	char err[256];
	TT_OK(tr_lua_state_new(c, NULL, &L, err, sizeof(err)));
	const tr_step_list *st = &tr_config_pipeline(c, "p")->steps;
	TT_EQ(st->n, 9);
	int top = lua_gettop(L), truth = -1;
#define W(i) st->v[(i) - 1].when_fn
	/* {go = true, input = {text = "hi"}, [7] = "seven", want = 5} */
	static const unsigned char m[] = "\x85\xa2go\xc3\xa5input\x81\xa4text\xa2hi"
	                                 "\x07\xa5seven\xa4want\x05\xa3pad\xa0";
	size_t mn = sizeof(m) - 1;
	TT_OK(tr_lua_test(L, W(1), m, mn, NULL, &truth, err, sizeof(err)));
	TT_EQ(truth, 1);
	TT_OK(tr_lua_test(L, W(2), m, mn, NULL, &truth, err, sizeof(err)));
	TT_EQ(truth, 1);
	TT_OK(tr_lua_test(L, W(3), m, mn, NULL, &truth, err, sizeof(err)));
	TT_EQ(truth, 1);
	/* pairs sees the 5 fields plus the call's own write (want = 5 + 1
	 * fails, so say 6 through a second message) */
	TT_OK(tr_lua_test(L, W(4), m, mn, NULL, &truth, err, sizeof(err)));
	TT_EQ(truth, 0); /* 6 keys, want = 5 */
	static const unsigned char m6[] = "\x82\xa4want\x03\xa1x\x01"; /* x, want, extra */
	TT_OK(tr_lua_test(L, W(4), m6, sizeof(m6) - 1, NULL, &truth, err, sizeof(err)));
	TT_EQ(truth, 1);
	/* the write (extra) was dropped after the call */
	TT_OK(tr_lua_test(L, W(2), m, mn, NULL, &truth, err, sizeof(err)));
	TT_EQ(truth, 1);
	/* a view kept past its call cannot be read */
	TT_OK(tr_lua_test(L, W(5), m, mn, NULL, &truth, err, sizeof(err)));
	TT_RC(tr_lua_test(L, W(6), NULL, 0, NULL, &truth, err, sizeof(err)), TR_EFAILED);
	TT_ASSERT(strstr(err, "can only be read during its call") != NULL);
	TT_OK(tr_lua_test(L, W(7), m, mn, NULL, &truth, err, sizeof(err)));
	TT_EQ(truth, 1);
	/* rawset into the view does not leak into the next call */
	TT_OK(tr_lua_test(L, W(8), m, mn, NULL, &truth, err, sizeof(err)));
	TT_EQ(truth, 1);
	TT_OK(tr_lua_test(L, W(1), m, mn, NULL, &truth, err, sizeof(err)));
	TT_EQ(truth, 1);
	TT_RC(tr_lua_test(L, W(9), m, mn, NULL, &truth, err, sizeof(err)), TR_EFAILED);
	TT_ASSERT(strstr(err, "protected metatable") != NULL);
	TT_OK(tr_lua_test(L, W(1), m, mn, NULL, &truth, err, sizeof(err)));
	TT_EQ(truth, 1);
	/* not a map */
	TT_RC(tr_lua_test(L, W(1), (const unsigned char *)"\x91\x01", 2, NULL, &truth, err,
	                  sizeof(err)), TR_EPROTO);
	/* the view costs the field read, not the message: a 64 KiB field
	 * the predicate never reads is never converted */
	tr_buf big;
	tr_buf_init(&big);
	tr__buf_append(&big, "\x82\xa2go\xc3\xa3pad\xc6\x00\x01\x00\x00", 12);
	for (int i = 0; i < 65536; i++)
		tr__buf_append(&big, "x", 1);
	lua_gc(L, LUA_GCCOLLECT);
	int kb0 = lua_gc(L, LUA_GCCOUNT);
	lua_gc(L, LUA_GCSTOP);
	TT_OK(tr_lua_test(L, W(1), big.data, big.len, NULL, &truth, err, sizeof(err)));
	int kb1 = lua_gc(L, LUA_GCCOUNT);
	lua_gc(L, LUA_GCRESTART);
	TT_EQ(truth, 1);
	TT_ASSERT(kb1 - kb0 < 16);
	tr_buf_free(&big);
#undef W
	TT_EQ(lua_gettop(L), top);
	tr_lua_state_free(L);
	tr_config_free(c);
}

TT_TEST(state_cost)
{
	TT_ASSERT(in_root());
	tr_config *c = load1("pipelines/example.lua");
	TT_ASSERT(c != NULL);
	lua_State *L = NULL;
	char err[256];
	TT_OK(tr_lua_state_new(c, NULL, &L, err, sizeof(err)));
	lua_gc(L, LUA_GCCOLLECT);
	size_t bytes = (size_t)lua_gc(L, LUA_GCCOUNT) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB);
	/* one receive of the shout actor */
	tr_buf in, out;
	tr_buf_init(&in);
	tr_buf_init(&out);
	tr__buf_append(&in, "\x82\xa4text\xa5hello\xa6tenant\xa4" "acme", 24);
	tr_lua_ctx lc = {"shout", 0, "acme"};
	int n = tn_quick() ? 2000 : 100000;
	uint64_t t0 = tr_now_ns();
	for (int i = 0; i < n; i++) {
		out.len = 0;
		TT_OK(tr_lua_call(L, 0, in.data, in.len, &lc, &out, NULL, err, sizeof(err)));
	}
	uint64_t t1 = tr_now_ns();
	TT_ASSERT(out.len > 0 && memmem(out.data, out.len, "HELLO", 5) != NULL);
	fprintf(stderr, "  fresh Lua actor state (example.lua): %zu bytes; receive: %.2f us/call "
	        "(%d calls)\n", bytes, (double)(t1 - t0) / 1000.0 / n, n);
	tr_buf_free(&in);
	tr_buf_free(&out);
	tr_lua_state_free(L);
	/* state creation and calls under allocation failures */
	for (long k = 1; k < 200; k++) {
		tr__alloc_fail_after(k);
		int rc = tr_lua_state_new(c, NULL, &L, err, sizeof(err));
		tr__alloc_fail_after(0);
		TT_ASSERT(rc == TR_OK || rc == TR_ENOMEM);
		if (rc == TR_OK)
			tr_lua_state_free(L);
	}
	tr_config_free(c);
}

/* ---- Lua actors on a node ------------------------------------------------ */

enum { KICK = 1, ANSWER };

static struct {
	uv_mutex_t mu;
	int n;
	uint16_t flags;
	int32_t err;
	unsigned char body[256];
	size_t len;
} ans;

typedef struct kick {
	const char *to;
	const char *body;
	size_t len;
	int ask;
	uint32_t tenant;
} kick;

static kick kicks[8];

/* The asker: on KICK(arg = index into kicks) asks or sends; records the
 * answer. */
static int asker(tr_ctx *ctx, probe *p, tr_msg *m)
{
	(void)p;
	if (m->tag == KICK) {
		const kick *k = &kicks[m->arg];
		tr_ref to;
		tr_msg *q = tr_msg_new();
		if (q == NULL || tr_whereis(tr_ctx_node(ctx), k->to, &to) != TR_OK)
			return TR_EFAILED;
		q->tag = TR_TAG_STEP;
		q->tenant = k->tenant;
		if (k->len)
			q->body = tr_body_new(k->body, k->len);
		if (k->ask)
			return tr_ask(ctx, to, q, 5000, NULL) == TR_OK ? TR_OK : TR_EFAILED;
		(void)tr_send(ctx, to, q);
		return TR_OK;
	}
	if (m->flags & TR_MSGF_REPLY) {
		uv_mutex_lock(&ans.mu);
		ans.flags = m->flags;
		ans.err = m->err;
		ans.len = m->body ? m->body->len : 0;
		if (ans.len > sizeof(ans.body))
			ans.len = sizeof(ans.body);
		if (ans.len)
			memcpy(ans.body, m->body->data, ans.len);
		ans.n++;
		uv_mutex_unlock(&ans.mu);
	}
	return TR_OK;
}

static int ans_n(void *ud)
{
	int want = *(int *)ud, n;
	uv_mutex_lock(&ans.mu);
	n = ans.n;
	uv_mutex_unlock(&ans.mu);
	return n >= want;
}

static int wait_answer(int want)
{
	return tn_wait(ans_n, &want, 10000);
}

static int boom_gone(void *ud)
{
	tr_ref r;
	return tr_whereis(ud, "boom", &r) == TR_ENOTFOUND;
}

TT_TEST(lua_actor_on_node)
{
	TT_ASSERT(in_root());
	uv_mutex_init(&ans.mu);
	tr_config *c = load1("tests/lua/good/actors.lua");
	TT_ASSERT(c != NULL);
	tr_node *n = tn_start(2);
	TT_ASSERT(n != NULL);
	static const char *const names[] = {"shout", "count", "boom", "nothing"};
	tr_lua_actor_arg args[4];
	for (int i = 0; i < 4; i++) {
		args[i] = (tr_lua_actor_arg){c, tr_config_actor(c, names[i])};
		tr_spawn_opts so = {0};
		so.name = names[i];
		TT_OK(tr_node_spawn(n, &tr_lua_actor_ops, &args[i], &so, NULL));
	}
	/* a spec without a function is refused at spawn */
	tr_actor_spec nofn = *tr_config_actor(c, "shout");
	nofn.receive_fn = -1;
	tr_lua_actor_arg badarg = {c, &nofn};
	TT_RC(tr_node_spawn(n, &tr_lua_actor_ops, &badarg, NULL, NULL), TR_EINVAL);

	probe_cfg pc = {.id = 1, .on_msg = asker};
	tr_ref a;
	TT_OK(tn_spawn(n, &pc, "asker", &a));
	uint32_t acme;
	TT_OK(tr_tenant_intern("acme", 4, &acme));

	kicks[0] = (kick){"shout", "\x81\xa4text\xa5hello", 12, 1, 0};
	kicks[1] = (kick){"shout", "\x81\xa4text\xa3one", 10, 0, 0}; /* a plain send */
	kicks[2] = (kick){"count", NULL, 0, 1, acme};
	kicks[3] = (kick){"nothing", NULL, 0, 1, 0};
	kicks[4] = (kick){"shout", "\x93\x01\x02\x03", 4, 1, 0}; /* not a map */
	kicks[5] = (kick){"boom", "\x81\xa3why\xa4test", 10, 1, 0};

	TT_OK(tn_send(n, a, KICK, 0));
	TT_ASSERT(wait_answer(1));
	uv_mutex_lock(&ans.mu);
	TT_EQ(ans.flags & TR_MSGF_ERROR, 0);
	TT_EQ(ans.len, 12);
	TT_ASSERT(memcmp(ans.body, "\x81\xa4text\xa5HELLO", 12) == 0);
	uv_mutex_unlock(&ans.mu);

	TT_OK(tn_send(n, a, KICK, 1));
	TT_OK(tn_send(n, a, KICK, 2));
	TT_ASSERT(wait_answer(2));
	uv_mutex_lock(&ans.mu);
	TT_EQ(ans.flags & TR_MSGF_ERROR, 0);
	msgpack_unpacked u;
	msgpack_unpacked_init(&u);
	TT_EQ(msgpack_unpack_next(&u, (const char *)ans.body, ans.len, NULL), MSGPACK_UNPACK_SUCCESS);
	const msgpack_object *o = mp_get(&u.data, "calls");
	TT_ASSERT(o && o->via.u64 == 1); /* the plain send went to shout, not count */
	o = mp_get(&u.data, "actor");
	TT_ASSERT(o && o->via.str.size == 5 && memcmp(o->via.str.ptr, "count", 5) == 0);
	o = mp_get(&u.data, "tenant");
	TT_ASSERT(o && o->via.str.size == 4 && memcmp(o->via.str.ptr, "acme", 4) == 0);
	o = mp_get(&u.data, "attempt");
	TT_ASSERT(o && o->via.u64 == 0);
	msgpack_unpacked_destroy(&u);
	uv_mutex_unlock(&ans.mu);

	TT_OK(tn_send(n, a, KICK, 3)); /* nil result: an empty reply */
	TT_ASSERT(wait_answer(3));
	uv_mutex_lock(&ans.mu);
	TT_EQ(ans.flags & TR_MSGF_ERROR, 0);
	TT_EQ(ans.len, 0);
	uv_mutex_unlock(&ans.mu);

	TT_OK(tn_send(n, a, KICK, 4)); /* bad input: an error reply, no crash */
	TT_ASSERT(wait_answer(4));
	uv_mutex_lock(&ans.mu);
	TT_ASSERT(ans.flags & TR_MSGF_ERROR);
	TT_EQ(ans.err, TR_EPROTO);
	uv_mutex_unlock(&ans.mu);

	TT_OK(tn_send(n, a, KICK, 5)); /* a Lua error crashes the actor */
	TT_ASSERT(wait_answer(5));
	uv_mutex_lock(&ans.mu);
	TT_ASSERT(ans.flags & TR_MSGF_ERROR);
	TT_EQ(ans.err, TR_ECRASHED);
	uv_mutex_unlock(&ans.mu);
	TT_ASSERT(tn_wait(boom_gone, n, 5000)); /* no supervisor: it stays dead */

	TT_OK(tn_send(n, a, KICK, 0)); /* shout still works */
	TT_ASSERT(wait_answer(6));
	TT_EQ(tn_stop(n), 0);
	tr_config_free(c);
}

TT_TEST(cleanup)
{
	tr_config_free(sbx_cfg);
	sbx_cfg = NULL;
}

TT_LIST = {
	TT_ENTRY(example_loads),
	TT_ENTRY(assistant_loads),
	TT_ENTRY(multi_file_namespace),
	TT_ENTRY(parallel_and_when),
	TT_ENTRY(limits_load),
	TT_ENTRY(tenants_and_door_limits),
	TT_ENTRY(tools_load),
	TT_ENTRY(placement_loads),
	TT_ENTRY(bad_files_diagnostics),
	TT_ENTRY(check_main_exit_codes),
	TT_ENTRY(load_alloc_failures_never_leak),
	TT_ENTRY(sandbox_escapes_refused),
	TT_ENTRY(sandbox_limits),
	TT_ENTRY(msgpack_round_trip),
	TT_ENTRY(msgpack_hostile_input_rejected),
	TT_ENTRY(backends_load),
	TT_ENTRY(predicate_view),
	TT_ENTRY(state_cost),
	TT_ENTRY(lua_actor_on_node),
	TT_ENTRY(cleanup),
	TT_END,
};

TT_MAIN()
