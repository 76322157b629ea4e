/*
 * test_openai.c -- the generate kind's openai backend against a local
 * server that speaks the real protocol (tests/data/openai_server.py:
 * plain JSON and SSE streams over HTTP/1.1 keep-alive, with behaviours
 * chosen per request by a `mode=...` marker in the question).
 *
 * A probe actor asks the generate actor the way the pipeline engine asks
 * a step. Checked: the answer, the server's usage (and the estimate when
 * it reports none), the request as the server saw it (template, system
 * message, history turns, key, options), deltas in order before the
 * reply, every error class (429/503 -> overload with Retry-After, 500 and
 * cut connections and refused connections -> error, other 4xx ->
 * invalid, first-byte/total/deadline -> timeout) with its message and
 * timing, one connection for many requests, the concurrency limit,
 * stopping with requests in flight, bad input, every settings error and
 * `troupe check`. The server is stopped by its PID, always (atexit too).
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>
#include <msgpack.h>
#include <troupe/troupe.h>

#include "actors/generate/generate.h"
#include "actors/kinds.h"
#include "actors/kit.h"
#include "core/alloc.h"
#include "lua/tlua.h"
#include "msg/msg_int.h"
#include "pipe/mp.h"
#include "tt.h"
#include "tnode.h"

#include "pipe/engine.h"

#define ANSWER "Troupe is built with ninja -C build [1]."
#define ANSWER_WORDS 8

/* ---- the server -------------------------------------------------------- */

/* The step ask's arg: TR_STEP_DELTAS as for a run that reads deltas. */
static uint64_t req_arg = TR_STEP_DELTAS;

static pid_t srv_pid;
static int srv_port;

static void srv_stop(void)
{
	if (srv_pid > 0) {
		kill(srv_pid, SIGTERM);
		waitpid(srv_pid, NULL, 0);
	}
	srv_pid = 0;
}

/* Starts tests/data/openai_server.py and reads its port. 0 on success. */
static int srv_start(void)
{
	int fds[2];
	char line[32];
	size_t n = 0;
	srv_stop();
	if (pipe(fds) != 0)
		return -1;
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		dup2(fds[1], 1);
		close(fds[0]);
		close(fds[1]);
		execlp("python3", "python3", TR_SOURCE_ROOT "/tests/data/openai_server.py", (char *)NULL);
		_exit(127);
	}
	close(fds[1]);
	srv_pid = pid;
	while (n < sizeof(line) - 1) {
		struct pollfd pf = {fds[0], POLLIN, 0};
		if (poll(&pf, 1, 10000) <= 0)
			break;
		ssize_t r = read(fds[0], line + n, 1);
		if (r <= 0 || line[n] == '\n')
			break;
		n++;
	}
	line[n] = '\0';
	close(fds[0]);
	srv_port = atoi(line);
	return srv_port > 0 ? 0 : -1;
}

/* A loopback port nobody listens on (bound, then closed). */
static int dead_port(void)
{
	struct sockaddr_in a = {0};
	socklen_t al = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &al) != 0)
		return -1;
	close(fd);
	return ntohs(a.sin_port);
}

/* ---- building msgpack ---------------------------------------------------- */

typedef struct mapb {
	tr_buf pairs;
	msgpack_packer pk;
	uint32_t n;
} mapb;

static void mb_init(mapb *b)
{
	tr_buf_init(&b->pairs);
	tr__mp_packer(&b->pk, &b->pairs);
	b->n = 0;
}

static msgpack_packer *mb_key(mapb *b, const char *k)
{
	b->n++;
	tr__mp_pack_cstr(&b->pk, k);
	return &b->pk;
}

static void mb_str(mapb *b, const char *k, const char *v)
{
	tr__mp_pack_cstr(mb_key(b, k), v);
}

static void mb_strn(mapb *b, const char *k, const char *v, size_t n)
{
	tr_kpack_str(mb_key(b, k), v, n);
}

static void mb_int(mapb *b, const char *k, int64_t v)
{
	msgpack_pack_int64(mb_key(b, k), v);
}

static void mb_num(mapb *b, const char *k, double v)
{
	msgpack_pack_double(mb_key(b, k), v);
}

static void mb_bool(mapb *b, const char *k, int v)
{
	msgpack_packer *pk = mb_key(b, k);
	if (v)
		msgpack_pack_true(pk);
	else
		msgpack_pack_false(pk);
}

static void mb_done(mapb *b, tr_buf *out)
{
	msgpack_packer pk;
	out->len = 0;
	tr__mp_packer(&pk, out);
	msgpack_pack_map(&pk, b->n);
	tr__buf_append(out, b->pairs.data, b->pairs.len);
	tr_buf_free(&b->pairs);
}

typedef struct psg {
	const char *text;
	size_t len;
	const char *source; /* NULL: no source key */
	double score;
} psg;

static void mb_passages(mapb *b, const psg *ps, int np)
{
	msgpack_packer *pk = mb_key(b, "passages");
	msgpack_pack_array(pk, (size_t)np);
	for (int i = 0; i < np; i++) {
		msgpack_pack_map(pk, 2 + (ps[i].source != NULL));
		tr__mp_pack_cstr(pk, "text");
		tr_kpack_str(pk, ps[i].text, ps[i].len ? ps[i].len : strlen(ps[i].text));
		if (ps[i].source) {
			tr__mp_pack_cstr(pk, "source");
			tr__mp_pack_cstr(pk, ps[i].source);
		}
		tr__mp_pack_cstr(pk, "score");
		msgpack_pack_double(pk, ps[i].score);
	}
}

/* Settings for an openai actor on the test server: url, model. */
static void mb_openai(mapb *c)
{
	char url[64];
	mb_init(c);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1", srv_port);
	mb_str(c, "backend", "openai");
	mb_str(c, "url", url);
	mb_str(c, "model", "test-model");
}

/* ---- the node, the actor, the asking probe ------------------------------- */

enum { KICK = 1 };
#define MAXR 16

static tr_node *node;
static tr_ref gen_ref, cli_ref;
static tr_actor_spec spec;
static tr_buf cfg_bytes;

static uv_mutex_t mu;
static int mu_inited;
static tr_buf req;            /* the next ask's body */
static uint64_t req_deadline; /* its deadline (µs since the epoch), 0: none */
static uint64_t corrs[MAXR];  /* the asks of the last KICK */
static int ncorr;
static int replies;
static int replied[MAXR];     /* per ask: answered */
static int32_t rep_errs[MAXR];
static tr_buf rep_body;       /* the last reply's body */
static uint16_t rep_flags;
static int32_t rep_err;
static tr_buf deltas;         /* the deltas' texts, concatenated */
static int ndeltas, bad_deltas, late_deltas;

static int corr_index(uint64_t c)
{
	for (int i = 0; i < ncorr; i++)
		if (corrs[i] == c)
			return i;
	return -1;
}

static int client_msg(tr_ctx *ctx, probe *p, tr_msg *m)
{
	(void)p;
	if (m->flags & TR_MSGF_REPLY) {
		uv_mutex_lock(&mu);
		int i = corr_index(m->corr);
		if (i >= 0) {
			replied[i] = 1;
			rep_errs[i] = (m->flags & TR_MSGF_ERROR) ? m->err : 0;
		}
		rep_body.len = 0;
		if (m->body)
			tr__buf_append(&rep_body, m->body->data, m->body->len);
		rep_flags = m->flags;
		rep_err = m->err;
		replies++;
		uv_mutex_unlock(&mu);
	} else if (m->tag == TR_TAG_STEP_DELTA) {
		const unsigned char *v;
		size_t vn, sn;
		const char *s;
		uv_mutex_lock(&mu);
		int i = corr_index(m->corr);
		if (i < 0 || !(m->flags & TR_MSGF_SYSTEM) || m->body == NULL ||
		    tr__mp_map_get(m->body->data, m->body->len, "text", &v, &vn) != TR_OK ||
		    tr__mp_str(v, vn, &s, &sn) != TR_OK)
			bad_deltas++;
		else
			tr__buf_append(&deltas, s, sn);
		if (i >= 0 && replied[i])
			late_deltas++;
		ndeltas++;
		uv_mutex_unlock(&mu);
	} else if (m->tag == KICK) {
		/* arg asks at once, all with the same body. */
		uv_mutex_lock(&mu);
		ncorr = 0;
		for (uint64_t k = 0; k < m->arg && k < MAXR; k++) {
			tr_msg *q = tr_msg_new();
			uint64_t corr = 0;
			q->tag = TR_TAG_STEP;
			q->body = tr_body_new(req.data, req.len);
			q->deadline = req_deadline;
			q->arg = req_arg;
			replied[ncorr] = 0;
			int rc = tr_ask(ctx, gen_ref, q, 20000, &corr);
			if (rc != TR_OK) {
				uv_mutex_unlock(&mu);
				return rc;
			}
			corrs[ncorr++] = corr;
		}
		uv_mutex_unlock(&mu);
	}
	return TR_OK;
}

static const probe_cfg cli_cfg = {.id = 1, .on_msg = client_msg};

static void stop(void)
{
	if (node != NULL)
		tn_stop(node);
	node = NULL;
}

/* A node with a generate actor whose settings are c. */
static int start(mapb *c)
{
	if (!mu_inited) {
		uv_mutex_init(&mu);
		mu_inited = 1;
		tr_buf_init(&req);
		tr_buf_init(&rep_body);
		tr_buf_init(&deltas);
		tr_buf_init(&cfg_bytes);
	}
	stop(); /* a failed test may have left one */
	memset(&spec, 0, sizeof(spec));
	spec.name = "generate";
	spec.kind = "generate";
	spec.receive_fn = -1;
	mb_done(c, &cfg_bytes);
	spec.config = cfg_bytes.data;
	spec.config_len = cfg_bytes.len;
	node = tn_start(2);
	if (node == NULL)
		return TR_EFAILED;
	tr_spawn_opts o = {0};
	o.name = "generate";
	int rc = tr_node_spawn(node, &tr_generate_ops, &spec, &o, &gen_ref);
	if (rc != TR_OK)
		return rc;
	tr_spawn_opts po = {0};
	return tr_node_spawn(node, &probe_ops, &cli_cfg, &po, &cli_ref);
}

static int replies_ge_(void *ud)
{
	uv_mutex_lock(&mu);
	int ok = replies >= *(int *)ud;
	uv_mutex_unlock(&mu);
	return ok;
}

/* What the last answer said. */
static struct {
	int error;
	int32_t err;
	char message[600];
	char *answer;
	size_t answer_len;
	char sources[16][128];
	int nsources;
	int64_t prompt_tokens, completion_tokens, retry_after_ms, passages;
	int estimated; /* -1: absent */
	char model[64];
	int has_text;
	uint64_t ms;   /* how long the answer took */
} R;

static void copy_str(const msgpack_object *o, char *out, size_t cap)
{
	size_t n = 0;
	if (o != NULL && o->type == MSGPACK_OBJECT_STR) {
		n = o->via.str.size < cap - 1 ? o->via.str.size : cap - 1;
		memcpy(out, o->via.str.ptr, n);
	}
	out[n] = '\0';
}

static int64_t get_int(const msgpack_object *map, const char *k)
{
	const msgpack_object *o = tr_kobj_get(map, k);
	return o != NULL && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? (int64_t)o->via.u64 : -1;
}

/* Asks `nasks` times at once with mb's message; waits for every answer
 * and parses the last into R. 0 on success. */
static int ask_n(mapb *mb, int nasks)
{
	msgpack_unpacked u;
	size_t off = 0;
	uv_mutex_lock(&mu);
	mb_done(mb, &req);
	int want = replies + nasks;
	deltas.len = 0;
	ndeltas = bad_deltas = late_deltas = 0;
	uv_mutex_unlock(&mu);
	free(R.answer);
	memset(&R, 0, sizeof(R));
	uint64_t t0 = tr_now_ns();
	if (tn_send(node, cli_ref, KICK, (uint64_t)nasks) != TR_OK ||
	    !tn_wait(replies_ge_, &want, 20000))
		return -1;
	R.ms = (tr_now_ns() - t0) / 1000000u;
	uv_mutex_lock(&mu);
	R.error = (rep_flags & TR_MSGF_ERROR) != 0;
	R.err = rep_err;
	msgpack_unpacked_init(&u);
	int ok = rep_body.len > 0 &&
	         msgpack_unpack_next(&u, (const char *)rep_body.data, rep_body.len, &off) ==
	             MSGPACK_UNPACK_SUCCESS &&
	         u.data.type == MSGPACK_OBJECT_MAP;
	uv_mutex_unlock(&mu);
	R.estimated = -1;
	if (!ok) {
		msgpack_unpacked_destroy(&u);
		return R.error ? 0 : -1;
	}
	const msgpack_object *b = &u.data;
	copy_str(tr_kobj_get(b, "message"), R.message, sizeof(R.message));
	R.retry_after_ms = get_int(b, "retry_after_ms");
	const msgpack_object *a = tr_kobj_get(b, "answer");
	if (a != NULL && a->type == MSGPACK_OBJECT_STR) {
		R.answer = malloc(a->via.str.size + 1);
		memcpy(R.answer, a->via.str.ptr, a->via.str.size);
		R.answer[a->via.str.size] = '\0';
		R.answer_len = a->via.str.size;
	}
	const msgpack_object *s = tr_kobj_get(b, "sources");
	R.nsources = -1;
	if (s != NULL && s->type == MSGPACK_OBJECT_ARRAY) {
		for (uint32_t i = 0; i < s->via.array.size && i < 16; i++)
			copy_str(&s->via.array.ptr[i], R.sources[i], sizeof(R.sources[i]));
		R.nsources = (int)s->via.array.size;
	}
	const msgpack_object *us = tr_kobj_get(b, "usage");
	R.prompt_tokens = get_int(us, "prompt_tokens");
	R.completion_tokens = get_int(us, "completion_tokens");
	const msgpack_object *e = tr_kobj_get(us, "estimated");
	if (e != NULL && e->type == MSGPACK_OBJECT_BOOLEAN)
		R.estimated = e->via.boolean;
	copy_str(tr_kobj_get(us, "model"), R.model, sizeof(R.model));
	R.passages = get_int(tr_kobj_get(b, "context"), "passages");
	R.has_text = tr_kobj_get(b, "text") != NULL;
	msgpack_unpacked_destroy(&u);
	return 0;
}

static int ask(mapb *mb)
{
	return ask_n(mb, 1);
}

/* Asks with just a question. */
static int ask_q(const char *q)
{
	mapb m;
	mb_init(&m);
	mb_str(&m, "text", q);
	return ask(&m);
}

static int deltas_equal_answer(void)
{
	uv_mutex_lock(&mu);
	int same = R.answer != NULL && deltas.len == R.answer_len &&
	           memcmp(deltas.data, R.answer, R.answer_len) == 0;
	uv_mutex_unlock(&mu);
	return same;
}

#define EXPECT_ERR(q, code, msg)                                               \
	do {                                                                      \
		TT_EQ(ask_q(q), 0);                                                   \
		TT_EQ(R.error, 1);                                                    \
		TT_RC(R.err, code);                                                   \
		TT_STREQ(R.message, msg);                                             \
	} while (0)

static const psg docs[] = {
	{"Troupe is built with ninja -C build after scripts/setup.", 0, "install.md", 0.9},
	{"The mailbox size of an actor is set with the mailbox key.", 0, "config.md", 0.5},
	{"Passages without a source are named by their place.", 0, NULL, 0.7},
};

/* ---- answers ----------------------------------------------------------- */

TT_TEST(plain_answer_usage_and_sources)
{
	mapb c, m;
	TT_OK(srv_start());
	mb_openai(&c);
	mb_bool(&c, "stream", 0);
	TT_OK(start(&c));
	mb_init(&m);
	mb_str(&m, "text", "How do I build troupe?");
	mb_str(&m, "tenant_note", "kept");
	mb_passages(&m, docs, 3);
	TT_EQ(ask(&m), 0);
	TT_EQ(R.error, 0);
	TT_STREQ(R.answer, ANSWER);
	/* The server's counts: one message, eight words. */
	TT_EQ(R.prompt_tokens, 1001);
	TT_EQ(R.completion_tokens, 100 + ANSWER_WORDS);
	TT_EQ(R.estimated, 0);
	TT_STREQ(R.model, "test-model");
	/* sources[k-1] is the passage numbered [k]: best score first. */
	TT_EQ(R.nsources, 3);
	TT_STREQ(R.sources[0], "install.md");
	TT_STREQ(R.sources[1], "passage 3");
	TT_STREQ(R.sources[2], "config.md");
	TT_EQ(R.passages, 3);
	TT_ASSERT(R.has_text);
	TT_EQ(ndeltas, 0); /* stream = false */
	stop();
	srv_stop();
}

/* The answer of an echo request: the request as the server read it. */
static json_t *echoed(void)
{
	json_error_t je;
	if (R.answer == NULL)
		return NULL;
	return json_loads(R.answer, 0, &je);
}

TT_TEST(request_follows_template_history_and_key)
{
	mapb c, m;
	TT_OK(srv_start());
	setenv("TEST_OPENAI_KEY", "sk-test-123", 1);
	mb_openai(&c);
	mb_bool(&c, "stream", 0);
	mb_str(&c, "system", "You are terse.");
	mb_num(&c, "temperature", 0.25);
	mb_int(&c, "max_tokens", 100);
	mb_str(&c, "api_key_env", "TEST_OPENAI_KEY");
	mb_str(&c, "prompt", "Q: {question}\nC:\n{context}END");
	TT_OK(start(&c));

	mb_init(&m);
	mb_str(&m, "text", "  mode=echo first?  ");
	mb_str(&m, "session", "s1");
	mb_passages(&m, docs, 2);
	TT_EQ(ask(&m), 0);
	TT_EQ(R.error, 0);
	json_t *e = echoed();
	TT_ASSERT(e != NULL);
	json_t *rq = json_object_get(e, "request");
	TT_STREQ(json_string_value(json_object_get(e, "authorization")), "Bearer sk-test-123");
	TT_STREQ(json_string_value(json_object_get(rq, "model")), "test-model");
	TT_ASSERT(json_real_value(json_object_get(rq, "temperature")) == 0.25);
	TT_EQ(json_integer_value(json_object_get(rq, "max_tokens")), 100);
	TT_ASSERT(json_is_false(json_object_get(rq, "stream")));
	TT_ASSERT(json_object_get(rq, "stream_options") == NULL);
	json_t *ms = json_object_get(rq, "messages");
	TT_EQ(json_array_size(ms), 2);
	TT_STREQ(json_string_value(json_object_get(json_array_get(ms, 0), "role")), "system");
	TT_STREQ(json_string_value(json_object_get(json_array_get(ms, 0), "content")),
	         "You are terse.");
	TT_STREQ(json_string_value(json_object_get(json_array_get(ms, 1), "role")), "user");
	TT_STREQ(json_string_value(json_object_get(json_array_get(ms, 1), "content")),
	         "Q: mode=echo first?\nC:\n[1] Troupe is built with ninja -C build after "
	         "scripts/setup.\n[2] The mailbox size of an actor is set with the mailbox key.\nEND");
	json_decref(e);
	char *first = strdup(R.answer);

	/* The second turn of the session carries the first as messages. */
	mb_init(&m);
	mb_str(&m, "text", "mode=echo and then?");
	mb_str(&m, "session", "s1");
	TT_EQ(ask(&m), 0);
	TT_EQ(R.error, 0);
	e = echoed();
	TT_ASSERT(e != NULL);
	ms = json_object_get(json_object_get(e, "request"), "messages");
	TT_EQ(json_array_size(ms), 4);
	TT_STREQ(json_string_value(json_object_get(json_array_get(ms, 1), "role")), "user");
	TT_STREQ(json_string_value(json_object_get(json_array_get(ms, 1), "content")),
	         "mode=echo first?");
	TT_STREQ(json_string_value(json_object_get(json_array_get(ms, 2), "role")), "assistant");
	TT_STREQ(json_string_value(json_object_get(json_array_get(ms, 2), "content")), first);
	TT_STREQ(json_string_value(json_object_get(json_array_get(ms, 3), "content")),
	         "Q: mode=echo and then?\nC:\nEND");
	json_decref(e);
	free(first);

	/* Invalid UTF-8 in the question and a passage: the request is still
	 * JSON (the server parsed it), with U+FFFD for each bad byte. */
	static const char badq[] = "mode=echo caf\xc3 \xff?";
	static const char badp[] = "bytes \xed\xa0\x80 here";
	const psg bp[] = {{badp, 0, "b.md", 0.5}};
	mb_init(&m);
	mb_strn(&m, "text", badq, sizeof(badq) - 1);
	mb_passages(&m, bp, 1);
	TT_EQ(ask(&m), 0);
	TT_EQ(R.error, 0);
	e = echoed();
	TT_ASSERT(e != NULL);
	ms = json_object_get(json_object_get(e, "request"), "messages");
	TT_STREQ(json_string_value(json_object_get(json_array_get(ms, 1), "content")),
	         "Q: mode=echo caf\xef\xbf\xbd \xef\xbf\xbd?\nC:\n[1] bytes "
	         "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd here\nEND");
	json_decref(e);
	stop();
	unsetenv("TEST_OPENAI_KEY");
	srv_stop();
}

TT_TEST(streaming_deltas_in_order_before_the_reply)
{
	mapb c;
	TT_OK(srv_start());
	mb_openai(&c); /* stream defaults to true for openai */
	TT_OK(start(&c));
	TT_EQ(ask_q("mode=paced how?"), 0);
	TT_EQ(R.error, 0);
	TT_STREQ(R.answer, ANSWER);
	TT_EQ(bad_deltas, 0);
	TT_EQ(late_deltas, 0);
	TT_ASSERT(ndeltas >= 2 && ndeltas <= ANSWER_WORDS);
	TT_ASSERT(deltas_equal_answer());
	/* A run that reads no deltas: the first chunk only (the first byte). */
	req_arg = 0;
	TT_EQ(ask_q("mode=paced how?"), 0);
	req_arg = TR_STEP_DELTAS;
	TT_EQ(R.error, 0);
	TT_STREQ(R.answer, ANSWER);
	TT_EQ(ndeltas, 1);
	TT_EQ(ask_q("mode=paced how?"), 0);
	/* Usage came in the last chunk (stream_options.include_usage). */
	TT_EQ(R.prompt_tokens, 1001);
	TT_EQ(R.completion_tokens, 100 + ANSWER_WORDS);
	TT_EQ(R.estimated, 0);

	/* Multi-byte characters one per event. */
	TT_EQ(ask_q("mode=utf8"), 0);
	TT_EQ(R.error, 0);
	TT_STREQ(R.answer, "Grüße, 世界 👋.");
	TT_ASSERT(deltas_equal_answer());
	TT_EQ(late_deltas, 0);

	/* A server that answers a stream request with plain JSON: one delta,
	 * the whole answer. */
	TT_EQ(ask_q("mode=plainjson"), 0);
	TT_EQ(R.error, 0);
	TT_STREQ(R.answer, ANSWER);
	TT_EQ(ndeltas, 1);
	TT_ASSERT(deltas_equal_answer());

	/* The request asked for a stream with usage. */
	TT_EQ(ask_q("mode=echo"), 0);
	json_t *e = echoed();
	TT_ASSERT(e != NULL);
	json_t *rq = json_object_get(e, "request");
	TT_ASSERT(json_is_true(json_object_get(rq, "stream")));
	TT_ASSERT(json_is_true(json_object_get(json_object_get(rq, "stream_options"), "include_usage")));
	TT_ASSERT(json_object_get(e, "authorization") != NULL &&
	          json_is_null(json_object_get(e, "authorization")));
	json_decref(e);
	TT_ASSERT(deltas_equal_answer());
	stop();
	srv_stop();
}

TT_TEST(usage_estimated_without_server_counts)
{
	mapb c;
	TT_OK(srv_start());
	for (int st = 0; st < 2; st++) {
		mb_openai(&c);
		mb_bool(&c, "stream", st);
		TT_OK(start(&c));
		TT_EQ(ask_q("mode=nousage"), 0);
		TT_EQ(R.error, 0);
		TT_STREQ(R.answer, ANSWER);
		TT_EQ(R.estimated, 1);
		TT_EQ(R.completion_tokens, (long)(sizeof(ANSWER) - 1 + 3) / 4);
		TT_ASSERT(R.prompt_tokens > 10 && R.prompt_tokens < 100);
		stop();
	}
	srv_stop();
}

/* ---- errors ------------------------------------------------------------ */

TT_TEST(errors_map_to_classes_with_messages)
{
	mapb c;
	TT_OK(srv_start());
	for (int st = 0; st < 2; st++) {
		mb_openai(&c);
		mb_bool(&c, "stream", st);
		TT_OK(start(&c));
		EXPECT_ERR("mode=429", TR_EREJECTED, "openai: HTTP 429 (retry after 2 s): rate limited");
		TT_EQ(R.retry_after_ms, 2000);
		EXPECT_ERR("mode=503", TR_EREJECTED, "openai: HTTP 503 (retry after 1 s): warming up");
		TT_EQ(R.retry_after_ms, 1000);
		EXPECT_ERR("mode=500", TR_EFAILED, "openai: HTTP 500: boom");
		TT_EQ(R.retry_after_ms, -1);
		EXPECT_ERR("mode=400", TR_EINVAL, "openai: HTTP 400: bad request: unknown model");
		if (st) {
			EXPECT_ERR("mode=midstream", TR_EFAILED,
			           "openai: the server failed mid-stream: out of KV cache");
			EXPECT_ERR("mode=nodone", TR_EFAILED, "openai: the stream ended before [DONE]");
		}
		/* The actor still answers after all that. */
		TT_EQ(ask_q("fine?"), 0);
		TT_EQ(R.error, 0);
		TT_STREQ(R.answer, ANSWER);
		stop();
	}
	/* A wrong base URL: the server's 404 is the request's fault. */
	char url[64];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/v2/", srv_port);
	mb_init(&c);
	mb_str(&c, "backend", "openai");
	mb_str(&c, "url", url);
	mb_str(&c, "model", "m");
	TT_OK(start(&c));
	EXPECT_ERR("hello", TR_EINVAL, "openai: HTTP 404: no such path");
	stop();
	/* The endpoint itself works as a base too. */
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/chat/completions", srv_port);
	mb_init(&c);
	mb_str(&c, "backend", "openai");
	mb_str(&c, "url", url);
	mb_str(&c, "model", "m");
	TT_OK(start(&c));
	TT_EQ(ask_q("hello"), 0);
	TT_EQ(R.error, 0);
	stop();
	srv_stop();
}

TT_TEST(slow_first_byte_times_out)
{
	mapb c;
	TT_OK(srv_start());
	for (int st = 0; st < 2; st++) {
		mb_openai(&c);
		mb_bool(&c, "stream", st);
		mb_str(&c, "first_byte_timeout", "300ms");
		TT_OK(start(&c));
		/* Nothing at all for 3 s, then headers first and the body 3 s
		 * later: both are no first byte. */
		EXPECT_ERR("mode=slowhead ms=3000", TR_ETIMEDOUT,
		           "openai: no response within first_byte_timeout (300 ms)");
		TT_ASSERT(R.ms >= 290 && R.ms < 1300);
		EXPECT_ERR("mode=slowbody ms=3000", TR_ETIMEDOUT,
		           "openai: no response within first_byte_timeout (300 ms)");
		TT_ASSERT(R.ms >= 290 && R.ms < 1300);
		/* Under the limit is fine. */
		TT_EQ(ask_q("mode=slowhead ms=50"), 0);
		TT_EQ(R.error, 0);
		TT_STREQ(R.answer, ANSWER);
		stop();
	}
	srv_stop();
}

TT_TEST(total_timeout_and_deadline)
{
	mapb c, m;
	TT_OK(srv_start());
	mb_openai(&c);
	mb_str(&c, "first_byte_timeout", "500ms");
	mb_str(&c, "timeout", "800ms");
	TT_OK(start(&c));
	/* Words every 200 ms for 6 s: the first byte is quick, the whole is
	 * not; what came before the timeout was streamed. */
	EXPECT_ERR("mode=trickle", TR_ETIMEDOUT, "openai: no complete answer within timeout (800 ms)");
	TT_ASSERT(R.ms >= 750 && R.ms < 1800);
	TT_ASSERT(ndeltas >= 1);
	TT_EQ(late_deltas, 0);
	stop();

	/* The step's deadline clips the timeout. */
	mb_openai(&c);
	mb_bool(&c, "stream", 0);
	TT_OK(start(&c));
	req_deadline = tr_wall_us() + 60 * 1000000ull; /* far: no effect */
	TT_EQ(ask_q("fine?"), 0);
	TT_EQ(R.error, 0);
	mb_init(&m);
	mb_str(&m, "text", "mode=slowhead ms=3000");
	uv_mutex_lock(&mu);
	mb_done(&m, &req);
	uv_mutex_unlock(&mu);
	req_deadline = tr_wall_us() + 400000;
	int want = replies + 1;
	uint64_t t0 = tr_now_ns();
	TT_OK(tn_send(node, cli_ref, KICK, 1));
	TT_ASSERT(tn_wait(replies_ge_, &want, 10000));
	uint64_t ms = (tr_now_ns() - t0) / 1000000u;
	TT_ASSERT(ms >= 350 && ms < 1300);
	uv_mutex_lock(&mu);
	TT_RC(rep_err, TR_ETIMEDOUT);
	uv_mutex_unlock(&mu);
	/* A deadline already past: refused at once. */
	req_deadline = tr_wall_us() - 1000;
	EXPECT_ERR("fine?", TR_ETIMEDOUT, "openai: the step's deadline has passed");
	req_deadline = 0;
	stop();
	srv_stop();
}

TT_TEST(cut_and_refused_connections_are_errors)
{
	mapb c;
	TT_OK(srv_start());
	for (int st = 0; st < 2; st++) {
		mb_openai(&c);
		mb_bool(&c, "stream", st);
		TT_OK(start(&c));
		TT_EQ(ask_q("mode=cut"), 0);
		TT_EQ(R.error, 1);
		TT_RC(R.err, TR_EFAILED);
		TT_ASSERT(strncmp(R.message, "openai: the connection was cut: ", 32) == 0);
		if (st) {
			/* What came before the cut was streamed: a prefix. */
			uv_mutex_lock(&mu);
			int prefix = deltas.len > 0 && deltas.len < strlen(ANSWER) &&
			             memcmp(deltas.data, ANSWER, deltas.len) == 0;
			uv_mutex_unlock(&mu);
			TT_ASSERT(prefix);
		}
		TT_EQ(ask_q("again"), 0); /* a fresh connection */
		TT_EQ(R.error, 0);
		stop();
	}
	srv_stop();

	/* No server: refused, at once. */
	char url[64];
	int port = dead_port();
	TT_ASSERT(port > 0);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1", port);
	mb_init(&c);
	mb_str(&c, "backend", "openai");
	mb_str(&c, "url", url);
	mb_str(&c, "model", "m");
	TT_OK(start(&c));
	TT_EQ(ask_q("anyone?"), 0);
	TT_EQ(R.error, 1);
	TT_RC(R.err, TR_EFAILED);
	TT_ASSERT(strncmp(R.message, "openai: cannot connect: ", 24) == 0);
	TT_ASSERT(R.ms < 1000);
	stop();
}

/* ---- the client -------------------------------------------------------- */

TT_TEST(keep_alive_reuses_one_connection)
{
	mapb c;
	TT_OK(srv_start());
	mb_openai(&c);
	TT_OK(start(&c));
	for (int i = 0; i < 3; i++) {
		TT_EQ(ask_q("streamed"), 0);
		TT_EQ(R.error, 0);
	}
	stop();
	/* A new actor is a new pool: one more connection, for plain ones. */
	mb_openai(&c);
	mb_bool(&c, "stream", 0);
	TT_OK(start(&c));
	for (int i = 0; i < 3; i++) {
		TT_EQ(ask_q("plain"), 0);
		TT_EQ(R.error, 0);
	}
	TT_EQ(ask_q("mode=stats"), 0);
	TT_STREQ(R.answer, "connections=2 requests=7");
	stop();
	srv_stop();
}

TT_TEST(concurrency_limit_refuses_overload)
{
	mapb c, m;
	TT_OK(srv_start());
	mb_openai(&c);
	mb_int(&c, "concurrency", 2);
	TT_OK(start(&c));
	mb_init(&m);
	mb_str(&m, "text", "mode=slowhead ms=300");
	TT_EQ(ask_n(&m, 3), 0);
	uv_mutex_lock(&mu);
	int ok = 0, refused = 0;
	for (int i = 0; i < ncorr; i++) {
		ok += rep_errs[i] == 0;
		refused += rep_errs[i] == TR_EREJECTED;
	}
	uv_mutex_unlock(&mu);
	TT_EQ(ok, 2);
	TT_EQ(refused, 1);
	/* Slots come back. */
	mb_init(&m);
	mb_str(&m, "text", "mode=slowhead ms=300");
	TT_EQ(ask_n(&m, 2), 0);
	uv_mutex_lock(&mu);
	ok = (rep_errs[0] == 0) + (rep_errs[1] == 0);
	uv_mutex_unlock(&mu);
	TT_EQ(ok, 2);
	stop();
	srv_stop();
}

TT_TEST(stopping_with_requests_in_flight)
{
	mapb c, m;
	TT_OK(srv_start());
	mb_openai(&c);
	TT_OK(start(&c));
	mb_init(&m);
	mb_str(&m, "text", "mode=slowhead ms=3000");
	uv_mutex_lock(&mu);
	mb_done(&m, &req);
	uv_mutex_unlock(&mu);
	TT_OK(tn_send(node, cli_ref, KICK, 4));
	tn_sleep_ms(150);
	uint64_t t0 = tr_now_ns();
	stop(); /* terminate stops the client with four requests in flight */
	TT_ASSERT((tr_now_ns() - t0) / 1000000u < 1500);
	srv_stop();
}

TT_TEST(missing_api_key_fails_each_step)
{
	mapb c;
	TT_OK(srv_start());
	unsetenv("TEST_OPENAI_UNSET");
	mb_openai(&c);
	mb_str(&c, "api_key_env", "TEST_OPENAI_UNSET");
	TT_OK(start(&c));
	EXPECT_ERR("hi", TR_EFAILED,
	           "openai: api_key_env: the environment variable TEST_OPENAI_UNSET is not set");
	stop();
	srv_stop();
}

/* ---- bad input ------------------------------------------------------------ */

TT_TEST(bad_inputs_have_exact_messages)
{
	mapb c, m;
	TT_OK(srv_start());
	mb_openai(&c);
	TT_OK(start(&c));
	mb_init(&m);
	TT_EQ(ask(&m), 0);
	TT_RC(R.err, TR_EINVAL);
	TT_STREQ(R.message, "text: missing");
	EXPECT_ERR(" \t\n", TR_EINVAL, "text: empty");
	mb_init(&m);
	mb_int(&m, "text", 7);
	TT_EQ(ask(&m), 0);
	TT_STREQ(R.message, "text: expected a string, got integer");
	mb_init(&m);
	mb_str(&m, "text", "q");
	mb_str(&m, "passages", "lots");
	TT_EQ(ask(&m), 0);
	TT_STREQ(R.message, "passages: expected a list, got string");
	/* A 1 MiB question does not fit; a 1 MiB passage is cut to fit. */
	size_t big = 1u << 20;
	char *huge = malloc(big + 1);
	for (size_t i = 0; i < big; i++)
		huge[i] = "abcd efgh "[i % 10];
	huge[big] = '\0';
	mb_init(&m);
	mb_str(&m, "text", huge);
	TT_EQ(ask(&m), 0);
	TT_RC(R.err, TR_EINVAL);
	TT_STREQ(R.message, "text: the question (~262144 tokens) does not fit in context_tokens "
	                    "(2048) with max_tokens (256)");
	const psg hp[] = {{huge, big, "huge.md", 0.5}};
	mb_init(&m);
	mb_str(&m, "text", "mode=echo what is in it?");
	mb_passages(&m, hp, 1);
	TT_EQ(ask(&m), 0);
	TT_EQ(R.error, 0);
	TT_EQ(R.nsources, 1);
	TT_ASSERT(R.answer_len < 12000); /* the request fit the budget */
	free(huge);
	stop();
	srv_stop();
}

/* ---- settings ---------------------------------------------------------- */

static int check(mapb *c, char *err, size_t errlen)
{
	tr_actor_spec a;
	tr_buf b;
	tr_buf_init(&b);
	mb_done(c, &b);
	memset(&a, 0, sizeof(a));
	a.name = "g";
	a.kind = "generate";
	a.config = b.data;
	a.config_len = b.len;
	int rc = tr_generate_check(&a, err, errlen);
	tr_buf_free(&b);
	return rc;
}

#define EXPECT_BAD(c, want)                                                    \
	do {                                                                      \
		char e_[512];                                                         \
		TT_RC(check(c, e_, sizeof(e_)), TR_EINVAL);                           \
		TT_STREQ(e_, want);                                                   \
	} while (0)

/* An openai settings table with one more key k = v (string). */
static void bad_str(mapb *c, const char *k, const char *v)
{
	mb_init(c);
	mb_str(c, "backend", "openai");
	if (strcmp(k, "url") != 0)
		mb_str(c, "url", "http://127.0.0.1:8000/v1");
	if (strcmp(k, "model") != 0)
		mb_str(c, "model", "m");
	mb_str(c, k, v);
}

TT_TEST(settings_checked_with_exact_messages)
{
	mapb c;
	char err[512];
	bad_str(&c, "api_key_env", "OPENAI_API_KEY");
	TT_OK(check(&c, err, sizeof(err)));
	mb_init(&c);
	mb_str(&c, "backend", "openai");
	mb_str(&c, "url", "https://api.openai.com/v1/");
	mb_str(&c, "model", "gpt-4o-mini");
	mb_str(&c, "connect_timeout", "1.5s");
	mb_str(&c, "first_byte_timeout", "500ms");
	mb_str(&c, "timeout", "2m");
	mb_int(&c, "concurrency", 4096);
	mb_str(&c, "system", "Be brief.");
	mb_bool(&c, "stream", 0);
	TT_OK(check(&c, err, sizeof(err)));

	mb_init(&c);
	mb_str(&c, "backend", "openai");
	mb_str(&c, "model", "m");
	EXPECT_BAD(&c, "actor 'g': url: required with backend \"openai\" (the server's base URL, "
	               "e.g. \"http://127.0.0.1:8000/v1\")");
	mb_init(&c);
	mb_str(&c, "backend", "openai");
	mb_str(&c, "url", "http://h/v1");
	EXPECT_BAD(&c, "actor 'g': model: required with backend \"openai\" (the model the server "
	               "serves)");
	bad_str(&c, "url", "ftp://h/v1");
	EXPECT_BAD(&c, "actor 'g': url: must start with http:// or https://, got \"ftp://h/v1\"");
	bad_str(&c, "url", "127.0.0.1:8000");
	EXPECT_BAD(&c, "actor 'g': url: must start with http:// or https://, got \"127.0.0.1:8000\"");
	bad_str(&c, "url", "http:///v1");
	EXPECT_BAD(&c, "actor 'g': url: no host in \"http:///v1\"");
	bad_str(&c, "url", "http://:80/v1");
	EXPECT_BAD(&c, "actor 'g': url: no host in \"http://:80/v1\"");
	bad_str(&c, "url", "http://user:pw@h/v1");
	EXPECT_BAD(&c, "actor 'g': url: must not hold credentials (use api_key_env)");
	bad_str(&c, "url", "http://h/v1?x=1");
	EXPECT_BAD(&c, "actor 'g': url: the base URL takes no query or fragment");
	bad_str(&c, "url", "http://h/v 1");
	EXPECT_BAD(&c, "actor 'g': url: must not contain spaces or control characters");
	bad_str(&c, "url", "");
	EXPECT_BAD(&c, "actor 'g': url: empty");
	char longurl[2100];
	memset(longurl, 'a', sizeof(longurl) - 1);
	memcpy(longurl, "http://", 7);
	longurl[sizeof(longurl) - 1] = '\0';
	bad_str(&c, "url", longurl);
	EXPECT_BAD(&c, "actor 'g': url: longer than 2048 bytes");
	mb_init(&c);
	mb_str(&c, "backend", "openai");
	mb_int(&c, "url", 8000);
	mb_str(&c, "model", "m");
	EXPECT_BAD(&c, "actor 'g': url: expected a string, got integer");
	bad_str(&c, "model", "");
	EXPECT_BAD(&c, "actor 'g': model: must be 1 to 128 bytes of UTF-8");

	bad_str(&c, "api_key_env", "sk-proj-abcdef123456");
	EXPECT_BAD(&c, "actor 'g': api_key_env: must be the name of an environment variable "
	               "(letters, digits, _), not the key itself");
	bad_str(&c, "api_key_env", "");
	EXPECT_BAD(&c, "actor 'g': api_key_env: must be the name of an environment variable "
	               "(letters, digits, _), not the key itself");

	bad_str(&c, "connect_timeout", "2 s");
	EXPECT_BAD(&c, "actor 'g': connect_timeout: bad duration \"2 s\" (units us, ms, s, m, h: "
	               "\"500us\", \"50ms\", \"1.5s\", \"1m\")");
	bad_str(&c, "timeout", "fast");
	EXPECT_BAD(&c, "actor 'g': timeout: bad duration \"fast\" (units us, ms, s, m, h: "
	               "\"500us\", \"50ms\", \"1.5s\", \"1m\")");
	mb_init(&c);
	mb_str(&c, "backend", "openai");
	mb_str(&c, "url", "http://h/v1");
	mb_str(&c, "model", "m");
	mb_int(&c, "timeout", 30);
	EXPECT_BAD(&c, "actor 'g': timeout: expected a duration string (units us, ms, s, m, h: "
	               "\"500us\", \"50ms\", \"1.5s\", \"1m\"), got integer");
	bad_str(&c, "first_byte_timeout", "0ms");
	EXPECT_BAD(&c, "actor 'g': first_byte_timeout: must be between 1ms and 1h, got \"0ms\"");
	bad_str(&c, "connect_timeout", "11m");
	EXPECT_BAD(&c, "actor 'g': connect_timeout: must be between 1ms and 10m, got \"11m\"");
	bad_str(&c, "timeout", "2h");
	EXPECT_BAD(&c, "actor 'g': timeout: must be between 1ms and 1h, got \"2h\"");
	bad_str(&c, "first_byte_timeout", "2m");
	EXPECT_BAD(&c, "actor 'g': first_byte_timeout: must not be longer than timeout (60000 ms), "
	               "got 120000 ms");
	bad_str(&c, "timeout", "1s"); /* the default parts shrink to it */
	TT_OK(check(&c, err, sizeof(err)));
	bad_str(&c, "connect_timeout", "5m");
	EXPECT_BAD(&c, "actor 'g': connect_timeout: must not be longer than timeout (60000 ms), "
	               "got 300000 ms");
	mb_init(&c);
	mb_str(&c, "backend", "openai");
	mb_str(&c, "url", "http://h/v1");
	mb_str(&c, "model", "m");
	mb_int(&c, "concurrency", 0);
	EXPECT_BAD(&c, "actor 'g': concurrency: must be between 1 and 4096, got 0");
	mb_init(&c);
	mb_str(&c, "backend", "openai");
	mb_str(&c, "url", "http://h/v1");
	mb_str(&c, "model", "m");
	mb_bool(&c, "system", 1);
	EXPECT_BAD(&c, "actor 'g': system: expected a string, got boolean");
	mb_init(&c);
	mb_str(&c, "backend", "openai");
	mb_str(&c, "url", "http://h/v1");
	mb_str(&c, "model", "m");
	mb_int(&c, "max_sentences", 2);
	EXPECT_BAD(&c, "actor 'g': max_sentences: only used with backend \"extractive\"");
	mb_init(&c);
	mb_str(&c, "timeout", "1s");
	EXPECT_BAD(&c, "actor 'g': timeout: only used with backend \"openai\"");
	mb_init(&c);
	mb_str(&c, "first_byte_timout", "1s");
	EXPECT_BAD(&c, "actor 'g': unknown setting 'first_byte_timout' (did you mean "
	               "'first_byte_timeout'?)");

	/* Spawning with bad settings fails the same way (init runs the check). */
	bad_str(&c, "url", "ftp://h");
	TT_RC(start(&c), TR_EINVAL);
	stop();
}

TT_TEST(troupe_check_names_file_and_line)
{
	char path[] = "/tmp/test_openai_XXXXXX.lua";
	int fd = mkstemps(path, 4);
	TT_ASSERT(fd >= 0);
	const char *src = "-- openai settings\n"
	                  "actor \"ok\" { kind = \"generate\", backend = \"openai\", model = \"m\",\n"
	                  "             url = \"http://127.0.0.1:8000/v1\", timeout = \"30s\" }\n"
	                  "actor \"g\" { kind = \"generate\", backend = \"openai\", model = \"m\",\n"
	                  "             url = \"ftp://x\" }\n"
	                  "actor \"h\" { kind = \"generate\", backend = \"openai\", model = \"m\", "
	                  "url = \"http://h\", first_byte_timeout = \"soon\" }\n"
	                  "pipeline \"p\" { step \"ok\" {} }\n";
	TT_EQ(write(fd, src, strlen(src)), (long)strlen(src));
	close(fd);
	(void)tr_actors_register_builtin();
	tr_config *cfg = NULL;
	tr_diag d;
	tr_diag_init(&d);
	const char *files[] = {path};
	TT_RC(tr_config_load(files, 1, &cfg, &d), TR_EINVAL);
	char want1[256], want2[256];
	snprintf(want1, sizeof(want1),
	         "%s:4: actor 'g': url: must start with http:// or https://, got \"ftp://x\"", path);
	snprintf(want2, sizeof(want2),
	         "%s:6: actor 'h': first_byte_timeout: bad duration \"soon\" (units us, ms, s, m, h: "
	         "\"500us\", \"50ms\", \"1.5s\", \"1m\")",
	         path);
	TT_EQ(d.n, 2);
	TT_STREQ(d.msgs[0], want1);
	TT_STREQ(d.msgs[1], want2);
	tr_diag_free(&d);

	const char *exe = getenv("TROUPE_EXE");
	TT_ASSERT(exe != NULL);
	char cmd[1024], out[2048];
	snprintf(cmd, sizeof(cmd), "'%s' check '%s' 2>&1", exe, path);
	FILE *p = popen(cmd, "r");
	TT_ASSERT(p != NULL);
	size_t n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = '\0';
	int st = pclose(p);
	TT_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	TT_ASSERT(strstr(out, want1) != NULL);
	TT_ASSERT(strstr(out, want2) != NULL);
	unlink(path);
}

TT_LIST = {
	TT_ENTRY(plain_answer_usage_and_sources),
	TT_ENTRY(request_follows_template_history_and_key),
	TT_ENTRY(streaming_deltas_in_order_before_the_reply),
	TT_ENTRY(usage_estimated_without_server_counts),
	TT_ENTRY(errors_map_to_classes_with_messages),
	TT_ENTRY(slow_first_byte_times_out),
	TT_ENTRY(total_timeout_and_deadline),
	TT_ENTRY(cut_and_refused_connections_are_errors),
	TT_ENTRY(keep_alive_reuses_one_connection),
	TT_ENTRY(concurrency_limit_refuses_overload),
	TT_ENTRY(stopping_with_requests_in_flight),
	TT_ENTRY(missing_api_key_fails_each_step),
	TT_ENTRY(bad_inputs_have_exact_messages),
	TT_ENTRY(settings_checked_with_exact_messages),
	TT_ENTRY(troupe_check_names_file_and_line),
	TT_END,
};

static void cleanup(void)
{
	stop();
	srv_stop();
}

/* TT_MAIN, with the server and node stopped however the tests end. */
static int tt_main(int argc, char **argv);
int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	atexit(cleanup);
	return tt_main(argc, argv);
}
#define main tt_main
TT_MAIN()
