/*
 * test_live.c -- Lua files deployed on a real node, and hot reload under
 * load: runs in flight finish on the old generation, new runs use the new
 * one, a broken file is rejected with its file:line and the old version
 * keeps serving, drained generations are stopped and freed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <msgpack.h>
#include <troupe/troupe.h>

#include "lua/tlua.h"
#include "msg/msg_int.h"
#include "pipe/engine.h"
#include "pipe/kinds.h"
#include "pipe/live.h"
#include "pipe/mp.h"
#include "tt.h"
#include "tnode.h"

/* A C kind for the tests: replies with the message plus {<name>: 1}. */
static int techo_receive(tr_ctx *ctx, void *st, tr_msg *m)
{
	const tr_actor_spec *spec = *(const tr_actor_spec **)st;
	tr_buf add, out;
	msgpack_packer pk;
	if (!(m->flags & TR_MSGF_ASK))
		return TR_OK;
	tr_buf_init(&add);
	tr_buf_init(&out);
	tr__mp_packer(&pk, &add);
	msgpack_pack_map(&pk, 1);
	tr__mp_pack_cstr(&pk, spec->name);
	msgpack_pack_uint32(&pk, 1);
	int rc = tr__mp_map_merge(m->body->data, m->body->len, add.data, add.len, &out);
	tr_msg *rep = tr_msg_new();
	if (rc == TR_OK && rep != NULL)
		rep->body = tr_body_new(out.data, out.len);
	tr_buf_free(&add);
	tr_buf_free(&out);
	return rc == TR_OK ? tr_reply(ctx, m, rep) : rc;
}

static int techo_init(tr_ctx *ctx, void *st, const void *arg)
{
	*(const void **)st = arg;
	return TR_OK;
}

static const tr_actor_ops techo_ops = {.name = "techo", .size = sizeof(void *),
                                       .init = techo_init, .receive = techo_receive};

/* ---- the client: keeps `window` runs in flight to the public name ---- */

enum { KICK = 1 };
static atomic_int sent, done, failed, saw_a, saw_b;
static atomic_int total;
static int window;

static int send_one(tr_ctx *ctx)
{
	tr_ref eng;
	if (tr_whereis(tr_ctx_node(ctx), "pipeline:p", &eng) != TR_OK)
		return TR_ENOTFOUND;
	tr_msg *m = tr_msg_new();
	m->tag = TR_TAG_RUN;
	m->body = tr_body_new("\x81\xa4text\xa2hi", 9);
	atomic_fetch_add(&sent, 1);
	return tr_ask(ctx, eng, m, 0, NULL);
}

static int has_key(const tr_msg *m, const char *k)
{
	const unsigned char *v;
	size_t n;
	return m->body != NULL && tr__mp_map_get(m->body->data, m->body->len, k, &v, &n) == TR_OK;
}

static int client_msg(tr_ctx *ctx, probe *p, tr_msg *m)
{
	(void)p;
	if (m->tag == KICK) {
		for (int i = 0; i < window; i++)
			if (send_one(ctx) != TR_OK)
				return TR_EFAILED;
		return TR_OK;
	}
	if (!(m->flags & TR_MSGF_REPLY))
		return TR_OK;
	atomic_fetch_add(&done, 1);
	if (m->flags & TR_MSGF_ERROR)
		atomic_fetch_add(&failed, 1);
	atomic_fetch_add(&saw_a, has_key(m, "a"));
	atomic_fetch_add(&saw_b, has_key(m, "b"));
	if (atomic_load(&sent) < total)
		return send_one(ctx);
	return TR_OK;
}

static char dir[64];

static void write_file(const char *name, const char *text)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "w");
	fputs(text, f);
	fclose(f);
}

static const char v1[] = "actor \"a\" { kind = \"techo\", mailbox = 512 }\n"
                         "pipeline \"p\" { deadline = \"5s\", step \"a\" { timeout = \"1s\" } }\n";
static const char v2[] = "actor \"b\" { kind = \"techo\" }\n"
                         "pipeline \"p\" { deadline = \"5s\", step \"b\" { timeout = \"1s\" } }\n";
static const char v3[] = "actor \"b\" { kind = \"techo\" }\n"
                         "pipeline \"p\" { deadline = \"5s\",\n"
                         "  step \"b\" { timeout = \"1s\" }\n"
                         "  step \"c\" { } }\n"; /* missing comma: syntax error, line 4 */

static int wait_done(int n, unsigned ms)
{
	for (unsigned i = 0; i < ms / 10 && atomic_load(&done) < n; i++)
		tn_sleep_ms(10);
	return atomic_load(&done);
}

TT_TEST(reload_under_load)
{
	tr_live *live;
	tr_diag diag;
	char path[128];
	const char *files[1] = {path};
	tr_ref client;
	static probe_cfg cc = {.id = 1, .on_msg = client_msg};

	snprintf(dir, sizeof(dir), "/tmp/troupe-live-XXXXXX");
	TT_ASSERT(mkdtemp(dir) != NULL);
	snprintf(path, sizeof(path), "%s/p.lua", dir);
	TT_OK(tr_kind_register("techo", &techo_ops));
	write_file("p.lua", v1);

	tr_node *n = tn_start(2);
	TT_OK(tr_live_new(n, &live));
	tr_diag_init(&diag);
	TT_OK(tr_live_load(live, files, 1, &diag));
	tr_diag_free(&diag);
	TT_EQ(tr_live_gen(live), 1);

	atomic_store(&total, 1 << 30); /* until the reloads are done */
	window = 64;
	TT_OK(tn_spawn(n, &cc, NULL, &client));
	TT_OK(tn_send(n, client, KICK, 0));
	TT_ASSERT(wait_done(500, 10000) >= 500);

	/* Reload mid-flood. Runs answered before the reload starts were all
	 * served by v1; read the count first, since runs keep finishing (on
	 * v2 once it is live) while tr_live_reload works. */
	int at_swap = atomic_load(&done);
	write_file("p.lua", v2);
	tr_diag_init(&diag);
	TT_OK(tr_live_reload(live, &diag));
	tr_diag_free(&diag);
	TT_EQ(tr_live_gen(live), 2);

	/* A broken file is refused with file:line; generation 2 serves on. */
	write_file("p.lua", v3);
	tr_diag_init(&diag);
	TT_RC(tr_live_reload(live, &diag), TR_EINVAL);
	TT_ASSERT(diag.n >= 1);
	fprintf(stderr, "  rejected: %s\n", diag.msgs[0]);
	TT_ASSERT(strstr(diag.msgs[0], "p.lua:4") != NULL);
	tr_diag_free(&diag);
	TT_EQ(tr_live_gen(live), 2);

	/* Then 2000 more runs, and the flood stops. */
	atomic_store(&total, atomic_load(&sent) + 2000);
	int want = atomic_load(&total);
	TT_EQ(wait_done(want, 60000), want);
	tn_sleep_ms(50);
	TT_EQ(atomic_load(&done), want); /* exactly one answer per run */
	TT_EQ(atomic_load(&failed), 0);
	TT_EQ(atomic_load(&saw_a) + atomic_load(&saw_b), want);
	TT_ASSERT(atomic_load(&saw_a) >= at_swap); /* before the swap: old */
	TT_ASSERT(atomic_load(&saw_b) > 0);        /* after: new */
	fprintf(stderr, "  %d runs: %d on v1, %d on v2, swap after %d\n", want,
	        atomic_load(&saw_a), atomic_load(&saw_b), at_swap);

	/* The old generation drains and is stopped (after its grace second). */
	size_t left = 1;
	for (int i = 0; i < 100 && left > 0; i++) {
		tn_sleep_ms(50);
		left = tr_live_poll(live);
	}
	TT_EQ(left, 0);
	tr_ref old;
	tr_actor_stats st;
	TT_ASSERT(tr_whereis(n, "a@1", &old) != TR_OK ||
	          tr_actor_stats_get(n, old, &st) == TR_ENOACTOR);
	TT_OK(tr_whereis(n, "b@2", &old));

	TT_EQ(tn_stop(n), 0);
	tr_live_free(live);
	unlink(path);
	rmdir(dir);
}

/* ---- a pipeline file of Lua actors, end to end ---------------------- */

/* One run at a time: KICK asks `one_pipe` with `one_in`; the answer's body
 * and whether it was an error land in one_out / one_err. */
static const char *one_pipe;
static tr_buf one_in, one_out;
static atomic_int one_done, one_err;
static uv_mutex_t one_mu;

static int one_msg(tr_ctx *ctx, probe *p, tr_msg *m)
{
	(void)p;
	if (m->tag == KICK) {
		tr_ref eng;
		if (tr_whereis(tr_ctx_node(ctx), one_pipe, &eng) != TR_OK)
			return TR_ENOTFOUND;
		tr_msg *q = tr_msg_new();
		q->tag = TR_TAG_RUN;
		q->body = tr_body_new(one_in.data, one_in.len);
		return tr_ask(ctx, eng, q, 0, NULL);
	}
	if (m->flags & TR_MSGF_REPLY) {
		uv_mutex_lock(&one_mu);
		one_out.len = 0;
		if (m->body != NULL)
			tr__buf_append(&one_out, m->body->data, m->body->len);
		uv_mutex_unlock(&one_mu);
		atomic_store(&one_err, (m->flags & TR_MSGF_ERROR) != 0);
		atomic_fetch_add(&one_done, 1);
	}
	return TR_OK;
}

/* Sets up one_* for a test (the mutex once per process). */
static void one_init(void)
{
	static int ready;
	if (!ready)
		uv_mutex_init(&one_mu);
	ready = 1;
	tr_buf_init(&one_in);
	tr_buf_init(&one_out);
}

/* A node running the Lua file `text` (written as `file` in a new dir;
 * its path in `path`, 128 bytes) under *live, with a one_msg client
 * (probe id `id`) in *client. NULL if loading fails (diagnostics
 * printed). */
static tr_node *one_start(const char *file, const char *text, char *path, int id,
                          tr_live **live, tr_ref *client)
{
	static probe_cfg cc[4];
	const char *files[1] = {path};
	tr_diag diag;
	one_init();
	snprintf(dir, sizeof(dir), "/tmp/troupe-live-XXXXXX");
	if (mkdtemp(dir) == NULL)
		return NULL;
	snprintf(path, 128, "%s/%s", dir, file);
	write_file(file, text);
	tr_node *n = tn_start(2);
	if (tr_live_new(n, live) != TR_OK)
		return NULL;
	tr_diag_init(&diag);
	int rc = tr_live_load(*live, files, 1, &diag);
	for (size_t i = 0; i < diag.n; i++)
		fprintf(stderr, "  %s\n", diag.msgs[i]);
	tr_diag_free(&diag);
	cc[id % 4] = (probe_cfg){.id = id, .on_msg = one_msg};
	if (rc != TR_OK || tn_spawn(n, &cc[id % 4], NULL, client) != TR_OK)
		return NULL;
	return n;
}

/* Stops what one_start started; 0 when the node stopped cleanly. */
static int one_stop(tr_node *n, tr_live *live, const char *path)
{
	int rc = tn_stop(n);
	tr_live_free(live);
	tr_buf_free(&one_in);
	tr_buf_free(&one_out);
	unlink(path);
	rmdir(dir);
	return rc;
}

/* Runs {text = text} through `pipe` and waits for its one answer. */
static int run_text(tr_node *n, tr_ref client, const char *pipe, const char *text)
{
	msgpack_packer pk;
	int before = atomic_load(&one_done);
	one_pipe = pipe;
	one_in.len = 0;
	tr__mp_packer(&pk, &one_in);
	msgpack_pack_map(&pk, 1);
	tr__mp_pack_cstr(&pk, "text");
	tr__mp_pack_cstr(&pk, text);
	if (tn_send(n, client, KICK, 0) != TR_OK)
		return -1;
	for (int i = 0; i < 500 && atomic_load(&one_done) == before; i++)
		tn_sleep_ms(10);
	return atomic_load(&one_done) - before;
}

/* The answer's value for k: 1 if it is string v (or true when v is NULL),
 * 0 if absent or different. */
static int out_is(const char *k, const char *v)
{
	const unsigned char *p;
	const char *s;
	size_t len, sn;
	int ok;
	uv_mutex_lock(&one_mu);
	ok = tr__mp_map_get(one_out.data, one_out.len, k, &p, &len) == TR_OK;
	if (ok)
		ok = v == NULL ? (len == 1 && p[0] == 0xc3)
		               : (tr__mp_str(p, len, &s, &sn) == TR_OK && sn == strlen(v) &&
		                  memcmp(s, v, sn) == 0);
	uv_mutex_unlock(&one_mu);
	return ok;
}

static const char lua_file[] =
	"actor \"classify\" { receive = function(msg, ctx)\n"
	"  msg.intent = msg.text:find('book') and 'action' or 'question'\n"
	"  return msg end }\n"
	"actor \"act\" { receive = function(msg) msg.done = 'booked'; return msg end }\n"
	"actor \"flaky\" { receive = function(msg, ctx)\n" /* a Lua error is a crash */
	"  if ctx.attempt == 0 then error('first attempt fails') end\n"
	"  msg.flaky_attempt = tostring(ctx.attempt); return msg end }\n"
	"actor \"left\" { receive = function(msg) return { left = true } end }\n"
	"actor \"right\" { receive = function(msg) return { right = true } end }\n"
	"actor \"polish\" { receive = function(msg) msg.polished = true; return msg end }\n"
	"actor \"broken\" { receive = function(msg) error('always') end }\n"
	"supervisor \"root\" { strategy = \"one_for_one\", max_restarts = 20, within = \"10s\",\n"
	"  children = { \"classify\", \"act\", \"flaky\", \"left\", \"right\", \"polish\", \"broken\" } }\n"
	"pipeline \"qa\" { deadline = \"5s\",\n"
	"  step \"classify\" { timeout = \"500ms\" },\n"
	"  route \"intent\" {\n"
	"    action = { step \"act\" { timeout = \"500ms\" } },\n"
	"    default = {\n"
	"      step \"flaky\" { timeout = \"500ms\", retries = 2, backoff = { base = \"1ms\", max = \"5ms\" } },\n"
	"      parallel { { step \"left\" {} }, { step \"right\" {} }, join = \"all\" },\n"
	"    },\n"
	"  },\n"
	"  step \"polish\" { when = function(msg) return msg.done == nil end },\n"
	"}\n"
	"pipeline \"fails\" { step \"broken\" { retries = 1, backoff = { base = \"1ms\" } } }\n";

TT_TEST(lua_file_pipeline_end_to_end)
{
	tr_live *live;
	char path[128];
	tr_ref client, r;
	tr_actor_stats st;

	tr_node *n = one_start("qa.lua", lua_file, path, 2, &live, &client);
	TT_ASSERT(n != NULL);

	/* route -> action branch; the `when` predicate skips polish. */
	TT_EQ(run_text(n, client, "pipeline:qa", "book a slot"), 1);
	TT_EQ(atomic_load(&one_err), 0);
	TT_ASSERT(out_is("intent", "action") && out_is("done", "booked"));
	TT_ASSERT(!out_is("polished", NULL) && !out_is("flaky_attempt", "1"));

	/* default branch: flaky crashes on attempt 0, is restarted by its
	 * supervisor and succeeds on the retry; the parallel branches merge;
	 * polish runs. */
	TT_EQ(run_text(n, client, "pipeline:qa", "how do retries work?"), 1);
	TT_EQ(atomic_load(&one_err), 0);
	TT_ASSERT(out_is("intent", "question") && out_is("flaky_attempt", "1"));
	TT_ASSERT(out_is("left", NULL) && out_is("right", NULL) && out_is("polished", NULL));
	TT_ASSERT(!out_is("done", "booked"));
	TT_OK(tr_whereis(n, "flaky@1", &r));
	TT_OK(tr_actor_stats_get(n, r, &st));
	TT_EQ(st.restarts, 1);

	/* An actor that always errors: two crashes, then one structured error
	 * naming the step, with both attempts counted. */
	TT_EQ(run_text(n, client, "pipeline:fails", "x"), 1);
	TT_EQ(atomic_load(&one_err), 1);
	TT_ASSERT(out_is("code", "crashed") && out_is("step", "broken"));
	TT_OK(tr_whereis(n, "broken@1", &r));
	TT_OK(tr_actor_stats_get(n, r, &st));
	TT_EQ(st.restarts, 2);
	TT_EQ(one_stop(n, live, path), 0);
}

/* ---- placement -------------------------------------------------------- */

static const char placed_file[] =
	"node { name = \"n1\", labels = { \"cpu\" } }\n"
	"actor \"g\" { kind = \"techo\", on = { label = \"gpu\" }, instances = 2 }\n"
	"actor \"h\" { kind = \"techo\", on = { label = \"cpu\" }, instances = 2 }\n"
	"actor \"one\" { kind = \"techo\", on = { node = \"n1\" } }\n"
	"actor \"any\" { kind = \"techo\" }\n"
	"supervisor \"s\" { children = { \"g\", \"one\" } }\n"
	"pipeline \"p\" { step \"h\" {}, step \"one\" {}, step \"any\" {} }\n"
	"pipeline \"q\" { step \"g\" {} }\n";

/* Whether `alias` names the same actor as `name`, alive. */
static int alias_of(tr_node *n, const char *alias, const char *name)
{
	tr_ref a, b;
	return tr_whereis(n, alias, &a) == TR_OK && tr_whereis(n, name, &b) == TR_OK &&
	       tr_ref_eq(a, b);
}

/* Placed actors are spawned only where the node's labels (or name) match,
 * each instance also under its public alias; a restart and a reload move
 * the alias; a step to an actor placed elsewhere (and no cluster) fails
 * with a clear error, the rest of the file deploys. */
TT_TEST(placed_actors_deploy)
{
	tr_live *live;
	tr_diag diag;
	char path[128];
	tr_ref client, r, old;

	(void)tr_kind_register("techo", &techo_ops); /* EEXIST after reload_under_load */
	tr_node *n = one_start("placed.lua", placed_file, path, 3, &live, &client);
	TT_ASSERT(n != NULL);

	/* g is for "gpu" nodes: not here, under no name */
	TT_EQ(tr_whereis(n, "g#0@1", &r), TR_ENOTFOUND);
	TT_EQ(tr_whereis(n, "g#1@1", &r), TR_ENOTFOUND);
	TT_EQ(tr_whereis(n, "g#0", &r), TR_ENOTFOUND);
	/* h (label cpu) and one (node n1) run here, with their aliases; an
	 * actor that is not placed has none */
	TT_ASSERT(alias_of(n, "h#0", "h#0@1") && alias_of(n, "h#1", "h#1@1"));
	TT_ASSERT(alias_of(n, "one", "one@1"));
	TT_OK(tr_whereis(n, "any@1", &r));
	TT_EQ(tr_whereis(n, "any", &r), TR_ENOTFOUND);

	TT_EQ(run_text(n, client, "pipeline:p", "hi"), 1);
	TT_EQ(atomic_load(&one_err), 0);
	TT_EQ(run_text(n, client, "pipeline:q", "hi"), 1);
	TT_EQ(atomic_load(&one_err), 1);
	TT_ASSERT(out_is("code", "crashed") && out_is("step", "g"));
	TT_ASSERT(out_is("message", "step 'g' failed after 1 attempt: no instance of 'g' is "
	                            "running (placed on label 'gpu')"));

	/* A restarted instance takes its alias along. */
	TT_OK(tr_whereis(n, "h#0@1", &old));
	tr_msg *m = tr_msg_new();
	m->tag = TR_TAG_STOP;
	m->flags = TR_MSGF_SYSTEM;
	m->err = TR_EFAILED; /* abnormal: the root supervisor restarts it */
	TT_OK(tr_node_send(n, old, m));
	for (int i = 0; i < 300; i++) {
		if (tr_whereis(n, "h#0@1", &r) == TR_OK && !tr_ref_eq(r, old))
			break;
		tn_sleep_ms(10);
	}
	TT_ASSERT(!tr_ref_eq(r, old));
	TT_ASSERT(alias_of(n, "h#0", "h#0@1"));

	/* A reload: the new generation's instances hold the aliases. */
	tr_diag_init(&diag);
	TT_OK(tr_live_reload(live, &diag));
	tr_diag_free(&diag);
	TT_EQ(tr_live_gen(live), 2);
	TT_ASSERT(alias_of(n, "h#0", "h#0@2") && alias_of(n, "h#1", "h#1@2"));
	TT_ASSERT(alias_of(n, "one", "one@2"));
	TT_EQ(tr_whereis(n, "g#0", &r), TR_ENOTFOUND);
	TT_EQ(run_text(n, client, "pipeline:p", "hi"), 1);
	TT_EQ(atomic_load(&one_err), 0);
	TT_EQ(one_stop(n, live, path), 0);
}

TT_LIST = {
	TT_ENTRY(reload_under_load),
	TT_ENTRY(lua_file_pipeline_end_to_end),
	TT_ENTRY(placed_actors_deploy),
	TT_END,
};

TT_MAIN()
