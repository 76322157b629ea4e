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

	/* Reload mid-flood. */
	write_file("p.lua", v2);
	tr_diag_init(&diag);
	TT_OK(tr_live_reload(live, &diag));
	tr_diag_free(&diag);
	TT_EQ(tr_live_gen(live), 2);
	int at_swap = atomic_load(&done);

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

TT_LIST = {
	TT_ENTRY(reload_under_load),
	TT_END,
};

TT_MAIN()
