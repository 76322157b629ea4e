/*
 * test_generate.c -- the generate kind (extractive backend) on a real
 * node, asked by a probe actor the way the pipeline engine asks a step:
 * answers cite the right source, the honest fallback, huge and invalid
 * UTF-8 passages, sessions (history per session and tenant, bounded),
 * the token budget, streaming deltas before the reply, every bad input
 * and bad setting with its exact message, and `troupe check` naming
 * file:line.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

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

/* ---- building msgpack ---------------------------------------------------- */

/* A map built pair by pair (the count goes in front at the end). */
typedef struct mapb {
	tr_buf pairs;
	msgpack_packer pk;
	uint32_t n;
} mapb;

/* The step ask's arg: TR_STEP_DELTAS as for a run that reads deltas. */
static uint64_t req_arg = TR_STEP_DELTAS;

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

/* The finished map into out (replacing it); frees b. */
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
	size_t len;         /* 0: strlen(text) */
	const char *source; /* NULL: no source key */
	double score;       /* < 0: no score key */
} psg;

static void mb_passages(mapb *b, const psg *ps, int np)
{
	msgpack_packer *pk = mb_key(b, "passages");
	msgpack_pack_array(pk, (size_t)np);
	for (int i = 0; i < np; i++) {
		uint32_t n = 1 + (ps[i].source != NULL) + (ps[i].score >= 0);
		msgpack_pack_map(pk, n);
		tr__mp_pack_cstr(pk, "text");
		tr_kpack_str(pk, ps[i].text, ps[i].len ? ps[i].len : strlen(ps[i].text));
		if (ps[i].source) {
			tr__mp_pack_cstr(pk, "source");
			tr__mp_pack_cstr(pk, ps[i].source);
		}
		if (ps[i].score >= 0) {
			tr__mp_pack_cstr(pk, "score");
			msgpack_pack_double(pk, ps[i].score);
		}
	}
}

/* ---- the node, the actor, the asking probe ------------------------------- */

enum { KICK = 1 };

static tr_node *node;
static tr_ref gen_ref, cli_ref;
static tr_actor_spec spec;
static tr_buf cfg_bytes;

static uv_mutex_t mu;
static int mu_inited;
static tr_buf req;            /* the next ask's body */
static uint32_t req_tenant;
static uint16_t req_attempt;
static uint64_t ask_corr;
static int replies;
static tr_buf rep_body;
static uint16_t rep_flags;
static int32_t rep_err;
static tr_buf deltas;         /* the deltas' texts, concatenated */
static int ndeltas, bad_deltas;

static int client_msg(tr_ctx *ctx, probe *p, tr_msg *m)
{
	(void)p;
	if (m->flags & TR_MSGF_REPLY) {
		uv_mutex_lock(&mu);
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
		if (m->corr != ask_corr || m->body == NULL ||
		    tr__mp_map_get(m->body->data, m->body->len, "text", &v, &vn) != TR_OK ||
		    tr__mp_str(v, vn, &s, &sn) != TR_OK)
			bad_deltas++;
		else
			tr__buf_append(&deltas, s, sn);
		ndeltas++;
		uv_mutex_unlock(&mu);
	} else if (m->tag == KICK) {
		tr_msg *q = tr_msg_new();
		q->tag = TR_TAG_STEP;
		uv_mutex_lock(&mu);
		q->body = tr_body_new(req.data, req.len);
		q->tenant = req_tenant;
		q->attempt = req_attempt;
		q->arg = req_arg;
		uv_mutex_unlock(&mu);
		uint64_t corr;
		uv_mutex_lock(&mu);
		int rc = tr_ask(ctx, gen_ref, q, 10000, &corr);
		ask_corr = corr;
		uv_mutex_unlock(&mu);
		return rc;
	}
	return TR_OK;
}

static const probe_cfg cli_cfg = {.id = 1, .on_msg = client_msg};

/* Starts a node with a generate actor whose settings are c (NULL: none). */
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
	memset(&spec, 0, sizeof(spec));
	spec.name = "generate";
	spec.kind = "generate";
	spec.receive_fn = -1;
	if (c != NULL) {
		mb_done(c, &cfg_bytes);
		spec.config = cfg_bytes.data;
		spec.config_len = cfg_bytes.len;
	}
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

static void stop(void)
{
	tn_stop(node);
	node = NULL;
}

static int replies_ge_(void *ud)
{
	uv_mutex_lock(&mu);
	int ok = replies >= *(int *)ud;
	uv_mutex_unlock(&mu);
	return ok;
}

/* What one answer said. */
static struct {
	int error;
	int32_t err;
	char message[600];
	char *answer;
	size_t answer_len;
	char sources[16][600];
	int nsources;
	int64_t prompt_tokens, completion_tokens, turns, passages, ctx_tokens;
	char model[200];
	int has_text; /* the input message came back too */
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

/* Asks the actor with mb's message (tenant, attempt) and parses the
 * answer into R. 0 on success. */
static int ask_as(mapb *mb, uint32_t tenant, uint16_t attempt)
{
	msgpack_unpacked u;
	size_t off = 0;
	uv_mutex_lock(&mu);
	mb_done(mb, &req);
	req_tenant = tenant;
	req_attempt = attempt;
	int want = replies + 1;
	deltas.len = 0;
	ndeltas = bad_deltas = 0;
	uv_mutex_unlock(&mu);
	free(R.answer);
	memset(&R, 0, sizeof(R));
	R.prompt_tokens = R.completion_tokens = R.turns = R.passages = R.ctx_tokens = -1;
	if (tn_send(node, cli_ref, KICK, 0) != TR_OK || !tn_wait(replies_ge_, &want, 10000))
		return -1;
	uv_mutex_lock(&mu);
	R.error = (rep_flags & TR_MSGF_ERROR) != 0;
	R.err = rep_err;
	msgpack_unpacked_init(&u);
	int ok = rep_body.len > 0 &&
	         msgpack_unpack_next(&u, (const char *)rep_body.data, rep_body.len, &off) ==
	             MSGPACK_UNPACK_SUCCESS &&
	         u.data.type == MSGPACK_OBJECT_MAP;
	uv_mutex_unlock(&mu);
	if (!ok) {
		msgpack_unpacked_destroy(&u);
		return R.error ? 0 : -1;
	}
	const msgpack_object *b = &u.data;
	copy_str(tr_kobj_get(b, "message"), R.message, sizeof(R.message));
	const msgpack_object *a = tr_kobj_get(b, "answer");
	if (a != NULL && a->type == MSGPACK_OBJECT_STR) {
		R.answer = malloc(a->via.str.size + 1);
		memcpy(R.answer, a->via.str.ptr, a->via.str.size);
		R.answer[a->via.str.size] = '\0';
		R.answer_len = a->via.str.size;
	}
	const msgpack_object *s = tr_kobj_get(b, "sources");
	if (s != NULL && s->type == MSGPACK_OBJECT_ARRAY) {
		for (uint32_t i = 0; i < s->via.array.size && i < 16; i++)
			copy_str(&s->via.array.ptr[i], R.sources[i], sizeof(R.sources[i]));
		R.nsources = (int)s->via.array.size;
	} else {
		R.nsources = -1;
	}
	const msgpack_object *us = tr_kobj_get(b, "usage");
	R.prompt_tokens = get_int(us, "prompt_tokens");
	R.completion_tokens = get_int(us, "completion_tokens");
	copy_str(tr_kobj_get(us, "model"), R.model, sizeof(R.model));
	const msgpack_object *cx = tr_kobj_get(b, "context");
	R.turns = get_int(cx, "turns");
	R.passages = get_int(cx, "passages");
	R.ctx_tokens = get_int(cx, "tokens");
	R.has_text = tr_kobj_get(b, "text") != NULL;
	msgpack_unpacked_destroy(&u);
	return 0;
}

static int ask(mapb *mb)
{
	return ask_as(mb, 0, 0);
}

/* An independent UTF-8 check (not the kind's own). */
static int valid_utf8(const unsigned char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned c = s[i];
		size_t k;
		uint32_t cp;
		if (c < 0x80) {
			i++;
			continue;
		}
		if ((c & 0xe0) == 0xc0)
			k = 2, cp = c & 0x1f;
		else if ((c & 0xf0) == 0xe0)
			k = 3, cp = c & 0x0f;
		else if ((c & 0xf8) == 0xf0)
			k = 4, cp = c & 0x07;
		else
			return 0;
		if (i + k > n)
			return 0;
		for (size_t j = 1; j < k; j++) {
			if ((s[i + j] & 0xc0) != 0x80)
				return 0;
			cp = cp << 6 | (s[i + j] & 0x3f);
		}
		if ((k == 2 && cp < 0x80) || (k == 3 && cp < 0x800) || (k == 4 && cp < 0x10000) ||
		    cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		i += k;
	}
	return 1;
}

static const psg docs3[] = {
	{"Troupe is installed with scripts/setup. Then build it with ninja -C build.", 0,
	 "install.md", 0.7},
	{"The mailbox size of an actor is set with the mailbox key. A full mailbox applies "
	 "the overflow policy, such as block or reject.",
	 0, "config.md", 0.6},
	{"Troupe is released under the MIT license. Contributions are welcome.", 0,
	 "license.md", 0.5},
};

/* ---- answers --------------------------------------------------------------- */

TT_TEST(cites_the_right_source)
{
	mapb c, m;
	mb_init(&c);
	mb_str(&c, "model", "small");
	TT_OK(start(&c));
	mb_init(&m);
	mb_str(&m, "text", "How do I set the mailbox size?");
	mb_passages(&m, docs3, 3);
	TT_EQ(ask(&m), 0);
	TT_EQ(R.error, 0);
	TT_ASSERT(R.has_text);
	TT_EQ(R.nsources, 1);
	TT_STREQ(R.sources[0], "config.md");
	TT_ASSERT(strstr(R.answer, "The mailbox size of an actor is set with the mailbox key [1].") ==
	          R.answer);
	TT_ASSERT(strstr(R.answer, "license") == NULL);
	TT_ASSERT(strstr(R.answer, "[2]") == NULL);
	TT_STREQ(R.model, "small");
	TT_EQ(R.completion_tokens, (int64_t)(R.answer_len + 3) / 4);
	TT_EQ(R.passages, 3);
	TT_EQ(R.turns, 0);
	TT_ASSERT(R.prompt_tokens > R.ctx_tokens && R.ctx_tokens > 0);
	char first[1024];
	snprintf(first, sizeof(first), "%s", R.answer);

	/* Deterministic: the same input gives the same answer. */
	mb_init(&m);
	mb_str(&m, "text", "How do I set the mailbox size?");
	mb_passages(&m, docs3, 3);
	TT_EQ(ask(&m), 0);
	TT_STREQ(R.answer, first);

	/* Another question, another source. */
	mb_init(&m);
	mb_str(&m, "text", "Which license is troupe released under?");
	mb_passages(&m, docs3, 3);
	TT_EQ(ask(&m), 0);
	TT_EQ(R.nsources, 1);
	TT_STREQ(R.sources[0], "license.md");
	TT_ASSERT(strncmp(R.answer, "Troupe is released under the MIT license [1].", 45) == 0);
	stop();
}

TT_TEST(several_sources_in_reading_order)
{
	mapb c, m;
	mb_init(&c);
	mb_int(&c, "max_sentences", 4);
	TT_OK(start(&c));
	/* Sentences come out in passage order, then position; sources are
	 * numbered by first citation; two passages of one source share its
	 * number; a passage without a source is named by its place. */
	const psg ps[] = {
		{"Unrelated text about cooking pasta.", 0, "food.md", 0.9},
		{"Restart intensity limits how often a supervisor restarts children. "
		 "A supervisor escalates when the intensity is exceeded.",
		 0, "sup.md", 0.8},
		{"Each supervisor restarts its children with a strategy such as one_for_one.", 0,
		 NULL, 0.4},
		{"Supervisor restarts count towards the restart intensity.", 0, "sup.md", 0.3},
	};
	mb_init(&m);
	mb_str(&m, "text", "How does a supervisor restart children and what is the intensity?");
	mb_passages(&m, ps, 4);
	TT_EQ(ask(&m), 0);
	TT_EQ(R.error, 0);
	TT_EQ(R.nsources, 2);
	TT_STREQ(R.sources[0], "sup.md");
	TT_STREQ(R.sources[1], "passage 3");
	TT_STREQ(R.answer,
	         "Restart intensity limits how often a supervisor restarts children. A supervisor "
	         "escalates when the intensity is exceeded [1]. Each supervisor restarts its "
	         "children with a strategy such as one_for_one [2]. Supervisor restarts count "
	         "towards the restart intensity [1].");

	/* max_sentences = 1: only the best one. */
	stop();
	mb_init(&c);
	mb_int(&c, "max_sentences", 1);
	TT_OK(start(&c));
	mb_init(&m);
	mb_str(&m, "text", "How does a supervisor restart children and what is the intensity?");
	mb_passages(&m, ps, 4);
	TT_EQ(ask(&m), 0);
	TT_STREQ(R.answer,
	         "Restart intensity limits how often a supervisor restarts children [1].");
	stop();
}

TT_TEST(no_passages_honest_fallback)
{
	mapb c, m;
	TT_OK(start(NULL));
	const char *fb = "I could not find this in the documents.";
	/* No passages field. */
	mb_init(&m);
	mb_str(&m, "text", "What is the capital of France?");
	TT_EQ(ask(&m), 0);
	TT_EQ(R.error, 0);
	TT_STREQ(R.answer, fb);
	TT_EQ(R.nsources, 0);
	TT_EQ(R.passages, 0);
	TT_STREQ(R.model, "extractive");
	TT_EQ(R.completion_tokens, 10);
	/* An empty list, and passages = nil. */
	mb_init(&m);
	mb_str(&m, "text", "What is the capital of France?");
	mb_passages(&m, NULL, 0);
	TT_EQ(ask(&m), 0);
	TT_STREQ(R.answer, fb);
	mb_init(&m);
	mb_str(&m, "text", "What is the capital of France?");
	msgpack_pack_nil(mb_key(&m, "passages"));
	TT_EQ(ask(&m), 0);
	TT_STREQ(R.answer, fb);
	/* Passages that share no word with the question. */
	mb_init(&m);
	mb_str(&m, "text", "What is the capital of France?");
	mb_passages(&m, docs3, 3);
	TT_EQ(ask(&m), 0);
	TT_STREQ(R.answer, fb);
	TT_EQ(R.nsources, 0);
	TT_EQ(R.passages, 3); /* they were in context, just not relevant */
	/* A question of stop words only has nothing to look for. */
	mb_init(&m);
	mb_str(&m, "text", "What is it?");
	mb_passages(&m, docs3, 3);
	TT_EQ(ask(&m), 0);
	TT_STREQ(R.answer, fb);
	/* Empty passage texts. */
	const psg empty[] = {{"", 0, "a.md", 0.5}, {"   \n\n  ", 0, "b.md", 0.5}};
	mb_init(&m);
	mb_str(&m, "text", "mailbox size");
	mb_passages(&m, empty, 2);
	TT_EQ(ask(&m), 0);
	TT_STREQ(R.answer, fb);
	stop();

	/* The fallback is a setting. */
	mb_init(&c);
	mb_str(&c, "fallback", "Not in the docs, sorry.");
	TT_OK(start(&c));
	mb_init(&m);
	mb_str(&m, "text", "What is the capital of France?");
	TT_EQ(ask(&m), 0);
	TT_STREQ(R.answer, "Not in the docs, sorry.");
	stop();
}

TT_TEST(huge_passages_and_questions)
{
	mapb c, m;
	const size_t big = 1u << 20;
	char *text = malloc(big);
	/* One mebibyte: "word word ... mailbox ..." with no sentence end. */
	for (size_t i = 0; i < big; i++)
		text[i] = "lorem ipsum mailbox dolor sit "[i % 30];
	mb_init(&c);
	mb_int(&c, "max_tokens", 64);
	TT_OK(start(&c));
	const psg ps[] = {{text, big, "big.md", 0.9}, docs3[1]};
	mb_init(&m);
	mb_str(&m, "text", "What about the mailbox?");
	mb_passages(&m, ps, 2);
	TT_EQ(ask(&m), 0);
	TT_EQ(R.error, 0);
	TT_LE(R.answer_len, 64 * 4);
	TT_ASSERT(R.answer_len > 0);
	TT_ASSERT(valid_utf8((const unsigned char *)R.answer, R.answer_len));
	TT_LE(R.prompt_tokens, 2048 - 64);
	TT_EQ(R.passages, 1); /* the big one, cut, takes all the room */
	TT_STREQ(R.sources[0], "big.md");
	TT_ASSERT(R.nsources >= 1);

	/* One giant sentence alone: cut at a word, with an ellipsis. */
	const psg one[] = {{text, big, "big.md", 0.9}};
	mb_init(&m);
	mb_str(&m, "text", "mailbox");
	mb_passages(&m, one, 1);
	TT_EQ(ask(&m), 0);
	TT_EQ(R.error, 0);
	TT_LE(R.answer_len, 64 * 4);
	TT_ASSERT(strstr(R.answer, "\xe2\x80\xa6 [1]") != NULL);
	TT_EQ(R.answer[R.answer_len - 1], ']');
	TT_STREQ(R.sources[0], "big.md");

	/* A mebibyte question does not fit the prompt. */
	char *q = malloc(big + 1);
	memset(q, 'q', big);
	q[big] = '\0';
	mb_init(&m);
	mb_str(&m, "text", q);
	mb_passages(&m, docs3, 3);
	TT_EQ(ask(&m), 0);
	TT_EQ(R.error, 1);
	TT_EQ(R.err, TR_EINVAL);
	TT_STREQ(R.message, "text: the question (~262144 tokens) does not fit in context_tokens "
	                    "(2048) with max_tokens (64)");
	/* Many passages: only the first 256 are considered. */
	static psg many[300];
	for (int i = 0; i < 300; i++)
		many[i] = (psg){"The mailbox is bounded.", 0, "m.md", 0.5};
	mb_init(&m);
	mb_str(&m, "text", "Is the mailbox bounded?");
	mb_passages(&m, many, 300);
	TT_EQ(ask(&m), 0);
	TT_EQ(R.error, 0);
	TT_STREQ(R.answer, "The mailbox is bounded [1].");
	TT_LE(R.passages, 256);
	free(q);
	free(text);
	stop();
}

TT_TEST(invalid_utf8_never_reaches_the_answer)
{
	mapb m;
	TT_OK(start(NULL));
	/* Stray continuation bytes, a truncated sequence, an overlong '/',
	 * a surrogate, bytes past U+10FFFF, C0 and C1 controls, and a real
	 * multi-byte word (kept). */
	static const char bad[] =
		"The mailbox \x80\xbf size is \xe2\x82 set with the \xc0\xaf mailbox key "
		"\xed\xa0\x80 and \xf4\x90\x80\x80 caf\xc3\xa9 \x01\x1b tabs\t\tand \xc2\x85 more.";
	static const char src[] = "bad\xff" "name.md";
	const psg ps[] = {{bad, sizeof(bad) - 1, src, 0.9}};
	mb_init(&m);
	mb_str(&m, "text", "mailbox size \xff\xfe?");
	mb_passages(&m, ps, 1);
	TT_EQ(ask(&m), 0);
	TT_EQ(R.error, 0);
	TT_ASSERT(valid_utf8((const unsigned char *)R.answer, R.answer_len));
	TT_ASSERT(strstr(R.answer, "\xef\xbf\xbd") != NULL);   /* U+FFFD */
	TT_ASSERT(strstr(R.answer, "caf\xc3\xa9") != NULL);
	TT_ASSERT(strstr(R.answer, "\t") == NULL && strstr(R.answer, "\x1b") == NULL);
	TT_ASSERT(strstr(R.answer, "  ") == NULL);
	TT_EQ(R.nsources, 1);
	TT_ASSERT(valid_utf8((const unsigned char *)R.sources[0], strlen(R.sources[0])));
	TT_STREQ(R.sources[0], "bad\xef\xbf\xbdname.md");

	/* Cutting never splits a character: a long run of 3-byte characters
	 * cut by max_tokens and by the window. */
	static char euros[30000];
	for (size_t i = 0; i + 3 <= sizeof(euros); i += 3)
		memcpy(euros + i, "\xe2\x82\xac", 3);
	memcpy(euros, "mailbox ", 8);
	const psg eu[] = {{euros, sizeof(euros), "e.md", 0.9}};
	mb_init(&m);
	mb_str(&m, "text", "mailbox");
	mb_passages(&m, eu, 1);
	TT_EQ(ask(&m), 0);
	TT_EQ(R.error, 0);
	TT_ASSERT(R.answer_len > 0);
	TT_ASSERT(valid_utf8((const unsigned char *)R.answer, R.answer_len));
	stop();
}

TT_TEST(sessions_keep_history_per_session_bounded)
{
	mapb c, m;
	mb_init(&c);
	mb_int(&c, "history", 2);
	mb_int(&c, "sessions", 3);
	TT_OK(start(&c));
	const char *qs[] = {"How is troupe installed?", "How do I set the mailbox size?",
	                    "Which license?", "How do I build it?"};
	for (int i = 0; i < 4; i++) {
		mb_init(&m);
		mb_str(&m, "text", qs[i]);
		mb_str(&m, "session", "s1");
		mb_passages(&m, docs3, 3);
		TT_EQ(ask(&m), 0);
		TT_EQ(R.error, 0);
		TT_EQ(R.turns, i < 2 ? i : 2); /* bounded by history */
	}
	/* A retried step (attempt > 0) replaces its turn instead of adding. */
	mb_init(&m);
	mb_str(&m, "text", "Where is the status page?");
	mb_str(&m, "session", "s1");
	TT_EQ(ask(&m), 0);
	mb_init(&m);
	mb_str(&m, "text", "Where is the status page?");
	mb_str(&m, "session", "s1");
	TT_EQ(ask_as(&m, 0, 1), 0);
	TT_EQ(R.turns, 2);
	/* Another session, and the same session id of another tenant, start
	 * empty; no session at all never has history. */
	uint32_t acme;
	TT_OK(tr_tenant_intern("acme", 4, &acme));
	mb_init(&m);
	mb_str(&m, "text", "How is troupe installed?");
	mb_str(&m, "session", "s2");
	TT_EQ(ask(&m), 0);
	TT_EQ(R.turns, 0);
	mb_init(&m);
	mb_str(&m, "text", "How is troupe installed?");
	mb_str(&m, "session", "s1");
	TT_EQ(ask_as(&m, acme, 0), 0);
	TT_EQ(R.turns, 0);
	mb_init(&m);
	mb_str(&m, "text", "How is troupe installed?");
	TT_EQ(ask(&m), 0);
	TT_EQ(R.turns, 0);
	mb_init(&m);
	mb_str(&m, "text", "How is troupe installed?");
	mb_str(&m, "session", "");
	TT_EQ(ask(&m), 0);
	TT_EQ(R.turns, 0);
	/* s1 still has its two turns (3 sessions held: s1, s2, acme/s1). */
	mb_init(&m);
	mb_str(&m, "text", "How is troupe installed?");
	mb_str(&m, "session", "s1");
	TT_EQ(ask(&m), 0);
	TT_EQ(R.turns, 2);
	/* With no passages the context is the two turns alone: "How do I
	 * build it?" (18) + "Then build it with ninja -C build [1]." (38) and
	 * the status question (25) + the fallback (39), plus 19 bytes of
	 * framing each: 158 bytes, 40 tokens. The retried turn counted once. */
	TT_EQ(R.ctx_tokens, 40);
	/* A fourth session evicts the least recently used (s2)... */
	mb_init(&m);
	mb_str(&m, "text", "How is troupe installed?");
	mb_str(&m, "session", "s3");
	TT_EQ(ask(&m), 0);
	TT_EQ(R.turns, 0);
	mb_init(&m);
	mb_str(&m, "text", "How is troupe installed?");
	mb_str(&m, "session", "s2");
	TT_EQ(ask(&m), 0);
	TT_EQ(R.turns, 0); /* forgotten: starts again (and evicts acme/s1) */
	mb_init(&m);
	mb_str(&m, "text", "How is troupe installed?");
	mb_str(&m, "session", "s1");
	TT_EQ(ask(&m), 0);
	TT_EQ(R.turns, 2); /* ...but not the recently used s1 */
	/* Churn through many sessions: still answers, still bounded. */
	char sid[32];
	for (int i = 0; i < 200; i++) {
		snprintf(sid, sizeof(sid), "churn-%d", i);
		mb_init(&m);
		mb_str(&m, "text", "How is troupe installed?");
		mb_str(&m, "session", sid);
		TT_EQ(ask(&m), 0);
		TT_EQ(R.turns, 0);
	}
	stop();

	/* history = 0: no sessions kept at all. */
	mb_init(&c);
	mb_int(&c, "history", 0);
	TT_OK(start(&c));
	for (int i = 0; i < 3; i++) {
		mb_init(&m);
		mb_str(&m, "text", "How is troupe installed?");
		mb_str(&m, "session", "s1");
		TT_EQ(ask(&m), 0);
		TT_EQ(R.turns, 0);
	}
	stop();
}

TT_TEST(follow_up_questions_use_history)
{
	mapb m;
	TT_OK(start(NULL));
	mb_init(&m);
	mb_str(&m, "text", "How is troupe installed?");
	mb_str(&m, "session", "f");
	mb_passages(&m, docs3, 3);
	TT_EQ(ask(&m), 0);
	TT_STREQ(R.sources[0], "install.md");
	/* "Why?" has no terms of its own: the session's last question lends
	 * its terms. Without the session, the honest fallback. */
	mb_init(&m);
	mb_str(&m, "text", "Why?");
	mb_str(&m, "session", "f");
	mb_passages(&m, docs3, 3);
	TT_EQ(ask(&m), 0);
	TT_EQ(R.turns, 1);
	TT_EQ(R.nsources, 1);
	TT_STREQ(R.sources[0], "install.md");
	mb_init(&m);
	mb_str(&m, "text", "Why?");
	mb_passages(&m, docs3, 3);
	TT_EQ(ask(&m), 0);
	TT_STREQ(R.answer, "I could not find this in the documents.");
	/* History never answers a question on its own: "capital of France"
	 * after an installation question is still not in the documents. */
	mb_init(&m);
	mb_str(&m, "text", "What is the capital of France?");
	mb_str(&m, "session", "f");
	mb_passages(&m, docs3, 3);
	TT_EQ(ask(&m), 0);
	TT_STREQ(R.answer, "I could not find this in the documents.");
	stop();
}

TT_TEST(token_budget_respected)
{
	mapb c, m;
	static char texts[12][400];
	psg ps[12];
	mb_init(&c);
	mb_int(&c, "context_tokens", 256);
	mb_int(&c, "max_tokens", 64);
	mb_int(&c, "history", 8);
	mb_str(&c, "prompt", "{question}\n{context}");
	TT_OK(start(&c));
	for (int i = 0; i < 12; i++) {
		snprintf(texts[i], sizeof(texts[i]),
		         "Passage %d talks about the mailbox of actors at some length. It says the "
		         "mailbox is bounded and that overflow policies decide what happens when it "
		         "is full, which matters for back pressure in pipelines. It also repeats "
		         "itself to be long enough to fill the budget quickly, number %d.",
		         i, i);
		ps[i] = (psg){texts[i], 0, "doc.md", 1.0 - i * 0.05};
	}
	const char *q = "Is the mailbox bounded?";
	for (int round = 0; round < 6; round++) {
		mb_init(&m);
		mb_str(&m, "text", q);
		mb_str(&m, "session", "b");
		mb_passages(&m, ps, 12);
		TT_EQ(ask(&m), 0);
		TT_EQ(R.error, 0);
		/* The prompt fits the room left for it, whatever the history. */
		TT_LE(R.prompt_tokens, 256 - 64);
		TT_LE(R.ctx_tokens, R.prompt_tokens);
		TT_ASSERT(R.passages >= 1 && R.passages < 12);
		TT_LE(R.answer_len, 64 * 4);
		/* Turns never take more than half of the context's room. */
		TT_LE(R.turns, round);
	}
	stop();
}

TT_TEST(streaming_deltas_come_before_the_reply)
{
	mapb c, m;
	mb_init(&c);
	mb_bool(&c, "stream", 1);
	mb_int(&c, "max_sentences", 4);
	TT_OK(start(&c));
	const psg ps[] = {
		{"Restart intensity limits how often a supervisor restarts children. "
		 "A supervisor escalates when the intensity is exceeded.",
		 0, "sup.md", 0.8},
		{"Each supervisor restarts its children with a strategy such as one_for_one.", 0,
		 "strategy.md", 0.4},
	};
	ev_reset();
	mb_init(&m);
	mb_str(&m, "text", "How does a supervisor restart children and what is the intensity?");
	mb_passages(&m, ps, 2);
	TT_EQ(ask(&m), 0);
	TT_EQ(R.error, 0);
	uv_mutex_lock(&mu);
	int nd = ndeltas, bd = bad_deltas;
	int same = deltas.len == R.answer_len && memcmp(deltas.data, R.answer, R.answer_len) == 0;
	uv_mutex_unlock(&mu);
	TT_EQ(bd, 0);
	TT_EQ(nd, 3); /* one per sentence */
	TT_ASSERT(same);
	/* Every delta was received before the reply. */
	int seen_reply = 0, late = 0;
	uv_mutex_lock(&evlog.mu);
	for (int i = 0; i < atomic_load(&evlog.n); i++) {
		if (evlog.evs[i].flags & TR_MSGF_REPLY)
			seen_reply = 1;
		else if (evlog.evs[i].tag == TR_TAG_STEP_DELTA && seen_reply)
			late++;
	}
	uv_mutex_unlock(&evlog.mu);
	TT_EQ(late, 0);
	TT_EQ(seen_reply, 1);
	/* The fallback is one chunk. */
	mb_init(&m);
	mb_str(&m, "text", "capital of France");
	TT_EQ(ask(&m), 0);
	uv_mutex_lock(&mu);
	nd = ndeltas;
	same = deltas.len == R.answer_len && memcmp(deltas.data, R.answer, R.answer_len) == 0;
	uv_mutex_unlock(&mu);
	TT_EQ(nd, 1);
	TT_ASSERT(same);
	/* A run that reads no deltas gets none: the answer follows at once. */
	req_arg = 0;
	mb_init(&m);
	mb_str(&m, "text", "How does a supervisor restart children and what is the intensity?");
	mb_passages(&m, ps, 2);
	TT_EQ(ask(&m), 0);
	req_arg = TR_STEP_DELTAS;
	TT_EQ(R.error, 0);
	TT_ASSERT(R.answer_len > 0);
	uv_mutex_lock(&mu);
	nd = ndeltas;
	uv_mutex_unlock(&mu);
	TT_EQ(nd, 0);
	stop();

	/* stream = false (the default): no deltas. */
	TT_OK(start(NULL));
	mb_init(&m);
	mb_str(&m, "text", "How does a supervisor restart children?");
	mb_passages(&m, ps, 2);
	TT_EQ(ask(&m), 0);
	uv_mutex_lock(&mu);
	nd = ndeltas;
	uv_mutex_unlock(&mu);
	TT_EQ(nd, 0);
	stop();
}

/* ---- bad input ------------------------------------------------------------ */

/* Asks with mb and expects an error reply with exactly `want`. */
#define EXPECT_FAIL(mb, want)                                                  \
	do {                                                                      \
		TT_EQ(ask(mb), 0);                                                    \
		TT_EQ(R.error, 1);                                                    \
		TT_EQ(R.err, TR_EINVAL);                                              \
		TT_STREQ(R.message, want);                                            \
	} while (0)

TT_TEST(bad_inputs_have_exact_messages)
{
	mapb m;
	TT_OK(start(NULL));
	mb_init(&m);
	EXPECT_FAIL(&m, "text: missing");
	mb_init(&m);
	msgpack_pack_nil(mb_key(&m, "text"));
	EXPECT_FAIL(&m, "text: missing");
	mb_init(&m);
	mb_int(&m, "text", 42);
	EXPECT_FAIL(&m, "text: expected a string, got integer");
	mb_init(&m);
	msgpack_pack_array(mb_key(&m, "text"), 0);
	EXPECT_FAIL(&m, "text: expected a string, got list");
	mb_init(&m);
	mb_str(&m, "text", "");
	EXPECT_FAIL(&m, "text: empty");
	mb_init(&m);
	mb_str(&m, "text", " \t\r\n ");
	EXPECT_FAIL(&m, "text: empty");

	mb_init(&m);
	mb_str(&m, "text", "q");
	mb_str(&m, "passages", "lots");
	EXPECT_FAIL(&m, "passages: expected a list, got string");
	mb_init(&m);
	mb_str(&m, "text", "q");
	msgpack_packer *pk = mb_key(&m, "passages");
	msgpack_pack_array(pk, 2);
	msgpack_pack_map(pk, 1);
	tr__mp_pack_cstr(pk, "text");
	tr__mp_pack_cstr(pk, "fine");
	msgpack_pack_int(pk, 7);
	EXPECT_FAIL(&m, "passages[2]: expected a table, got integer");
	mb_init(&m);
	mb_str(&m, "text", "q");
	pk = mb_key(&m, "passages");
	msgpack_pack_array(pk, 1);
	msgpack_pack_map(pk, 1);
	tr__mp_pack_cstr(pk, "source");
	tr__mp_pack_cstr(pk, "a.md");
	EXPECT_FAIL(&m, "passages[1].text: expected a string, got nil");
	mb_init(&m);
	mb_str(&m, "text", "q");
	pk = mb_key(&m, "passages");
	msgpack_pack_array(pk, 1);
	msgpack_pack_map(pk, 1);
	tr__mp_pack_cstr(pk, "text");
	msgpack_pack_true(pk);
	EXPECT_FAIL(&m, "passages[1].text: expected a string, got boolean");
	mb_init(&m);
	mb_str(&m, "text", "q");
	pk = mb_key(&m, "passages");
	msgpack_pack_array(pk, 1);
	msgpack_pack_map(pk, 2);
	tr__mp_pack_cstr(pk, "text");
	tr__mp_pack_cstr(pk, "t");
	tr__mp_pack_cstr(pk, "source");
	msgpack_pack_int(pk, 3);
	EXPECT_FAIL(&m, "passages[1].source: expected a string, got integer");
	mb_init(&m);
	mb_str(&m, "text", "q");
	pk = mb_key(&m, "passages");
	msgpack_pack_array(pk, 1);
	msgpack_pack_map(pk, 2);
	tr__mp_pack_cstr(pk, "text");
	tr__mp_pack_cstr(pk, "t");
	tr__mp_pack_cstr(pk, "score");
	tr__mp_pack_cstr(pk, "high");
	EXPECT_FAIL(&m, "passages[1].score: expected a number, got string");

	mb_init(&m);
	mb_str(&m, "text", "q");
	mb_int(&m, "session", 5);
	EXPECT_FAIL(&m, "session: expected a string, got integer");
	char sid[300];
	memset(sid, 's', sizeof(sid) - 1);
	sid[sizeof(sid) - 1] = '\0';
	mb_init(&m);
	mb_str(&m, "text", "q");
	mb_str(&m, "session", sid);
	EXPECT_FAIL(&m, "session: longer than 256 bytes");

	/* A body that is not a map (an actor asked directly, not by the
	 * engine), and one that is not even msgpack. */
	uv_mutex_lock(&mu);
	uv_mutex_unlock(&mu);
	static const unsigned char arr[] = {0x91, 0x01};
	static const unsigned char junk[] = {0xc1, 0xff, 0x00};
	const unsigned char *bodies[] = {arr, junk};
	size_t lens[] = {sizeof(arr), sizeof(junk)};
	for (int i = 0; i < 2; i++) {
		uv_mutex_lock(&mu);
		req.len = 0;
		tr__buf_append(&req, bodies[i], lens[i]);
		int want = replies + 1;
		uv_mutex_unlock(&mu);
		TT_OK(tn_send(node, cli_ref, KICK, 0));
		TT_ASSERT(tn_wait(replies_ge_, &want, 10000));
		uv_mutex_lock(&mu);
		int isErr = (rep_flags & TR_MSGF_ERROR) != 0;
		const unsigned char *v;
		size_t vn, sn;
		const char *s = NULL;
		int ok = tr__mp_map_get(rep_body.data, rep_body.len, "message", &v, &vn) == TR_OK &&
		         tr__mp_str(v, vn, &s, &sn) == TR_OK &&
		         sn == strlen("the message is not a table") &&
		         memcmp(s, "the message is not a table", sn) == 0;
		uv_mutex_unlock(&mu);
		TT_ASSERT(isErr);
		TT_ASSERT(ok);
	}
	/* Plain (non-ask) messages are ignored; the actor still answers. */
	TT_OK(tn_send(node, gen_ref, TR_TAG_STEP, 0));
	mb_init(&m);
	mb_str(&m, "text", "How do I set the mailbox size?");
	mb_passages(&m, docs3, 3);
	TT_EQ(ask(&m), 0);
	TT_EQ(R.error, 0);
	TT_STREQ(R.sources[0], "config.md");
	stop();
}

/* ---- settings ---------------------------------------------------------- */

static int check(mapb *c, char *err, size_t errlen)
{
	tr_buf b;
	tr_actor_spec a = {0};
	tr_buf_init(&b);
	a.name = "g";
	a.kind = "generate";
	if (c != NULL) {
		mb_done(c, &b);
		a.config = b.data;
		a.config_len = b.len;
	}
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

TT_TEST(settings_checked_with_exact_messages)
{
	mapb c;
	char err[512];
	TT_OK(check(NULL, err, sizeof(err)));
	/* What pipelines/assistant.lua gives its two generate actors. */
	mb_init(&c);
	mb_str(&c, "model", "small");
	mb_int(&c, "max_tokens", 512);
	mb_num(&c, "temperature", 0.2);
	TT_OK(check(&c, err, sizeof(err)));
	mb_init(&c);
	mb_str(&c, "model", "tiny");
	mb_int(&c, "max_tokens", 256);
	TT_OK(check(&c, err, sizeof(err)));
	/* Everything at once. */
	mb_init(&c);
	mb_str(&c, "backend", "extractive");
	mb_str(&c, "prompt", "Context: {context} -- {braces} are {ok too -- Q: {question}");
	TT_RC(check(&c, err, sizeof(err)), TR_EINVAL); /* {braces} is a placeholder */
	mb_init(&c);
	mb_str(&c, "backend", "extractive");
	mb_str(&c, "prompt", "Context: {context} -- { braces } and {ok too -- Q: {question}");
	mb_int(&c, "max_sentences", 16);
	mb_int(&c, "history", 64);
	mb_int(&c, "sessions", 100000);
	mb_int(&c, "context_tokens", 1048576);
	mb_int(&c, "max_tokens", 32768);
	mb_num(&c, "temperature", 2);
	mb_bool(&c, "stream", 1);
	mb_str(&c, "fallback", "Nope.");
	TT_OK(check(&c, err, sizeof(err)));

	mb_init(&c);
	mb_int(&c, "max_tokenz", 3);
	EXPECT_BAD(&c, "actor 'g': unknown setting 'max_tokenz' (did you mean 'max_tokens'?)");
	mb_init(&c);
	mb_int(&c, "zzzzzzzz", 3);
	EXPECT_BAD(&c, "actor 'g': unknown setting 'zzzzzzzz' (this kind takes backend, model, "
	               "temperature, max_tokens, max_sentences, prompt, fallback, history, "
	               "sessions, context_tokens, stream, url, api_key_env, system, "
	               "connect_timeout, first_byte_timeout, timeout, concurrency)");
	mb_init(&c);
	mb_str(&c, "backend", "openai");
	EXPECT_BAD(&c, "actor 'g': url: required with backend \"openai\" (the server's base URL, "
	               "e.g. \"http://127.0.0.1:8000/v1\")");
	mb_init(&c);
	mb_str(&c, "url", "http://127.0.0.1:8000/v1");
	EXPECT_BAD(&c, "actor 'g': url: only used with backend \"openai\"");
	mb_init(&c);
	mb_str(&c, "backend", "llama");
	EXPECT_BAD(&c, "actor 'g': backend: unknown backend \"llama\" (available: \"extractive\", "
	               "\"openai\")");
	mb_init(&c);
	mb_int(&c, "backend", 1);
	EXPECT_BAD(&c, "actor 'g': backend: expected a string, got integer");
	mb_init(&c);
	mb_str(&c, "model", "");
	EXPECT_BAD(&c, "actor 'g': model: must be 1 to 128 bytes of UTF-8");
	mb_init(&c);
	mb_str(&c, "model", "bad\xff");
	EXPECT_BAD(&c, "actor 'g': model: must be 1 to 128 bytes of UTF-8");
	mb_init(&c);
	mb_num(&c, "temperature", 3);
	EXPECT_BAD(&c, "actor 'g': temperature: must be between 0 and 2, got 3");
	mb_init(&c);
	mb_str(&c, "temperature", "hot");
	EXPECT_BAD(&c, "actor 'g': temperature: expected a number, got string");
	mb_init(&c);
	mb_int(&c, "max_tokens", 0);
	EXPECT_BAD(&c, "actor 'g': max_tokens: must be between 16 and 32768, got 0");
	mb_init(&c);
	mb_num(&c, "max_tokens", 100.5);
	EXPECT_BAD(&c, "actor 'g': max_tokens: expected an integer, got number");
	mb_init(&c);
	mb_int(&c, "max_tokens", 4096);
	EXPECT_BAD(&c, "actor 'g': max_tokens: must be less than context_tokens (2048), got 4096");
	mb_init(&c);
	mb_int(&c, "max_sentences", 17);
	EXPECT_BAD(&c, "actor 'g': max_sentences: must be between 1 and 16, got 17");
	mb_init(&c);
	mb_int(&c, "history", 65);
	EXPECT_BAD(&c, "actor 'g': history: must be between 0 and 64, got 65");
	mb_init(&c);
	mb_int(&c, "sessions", 0);
	EXPECT_BAD(&c, "actor 'g': sessions: must be between 1 and 100000, got 0");
	mb_init(&c);
	mb_int(&c, "context_tokens", 100);
	EXPECT_BAD(&c, "actor 'g': context_tokens: must be between 256 and 1048576, got 100");
	mb_init(&c);
	mb_str(&c, "stream", "yes");
	EXPECT_BAD(&c, "actor 'g': stream: expected true or false, got string");
	mb_init(&c);
	mb_str(&c, "prompt", "Q: {question}");
	EXPECT_BAD(&c, "actor 'g': prompt: missing {context}");
	mb_init(&c);
	mb_str(&c, "prompt", "{context}");
	EXPECT_BAD(&c, "actor 'g': prompt: missing {question}");
	mb_init(&c);
	mb_str(&c, "prompt", "{question} {context} {question}");
	EXPECT_BAD(&c, "actor 'g': prompt: {question} appears 2 times; it must appear once");
	mb_init(&c);
	mb_str(&c, "prompt", "{question} {context} {context} {context}");
	EXPECT_BAD(&c, "actor 'g': prompt: {context} appears 3 times; it must appear once");
	mb_init(&c);
	mb_str(&c, "prompt", "{question} {context} {answer}");
	EXPECT_BAD(&c, "actor 'g': prompt: unknown placeholder {answer} (the template takes "
	               "{question} and {context})");
	mb_init(&c);
	mb_str(&c, "prompt", "{question} {context} \xff");
	EXPECT_BAD(&c, "actor 'g': prompt: not valid UTF-8");
	char big[1000];
	memset(big, 'p', sizeof(big));
	memcpy(big, "{question}{context}", 19);
	big[sizeof(big) - 1] = '\0';
	mb_init(&c);
	mb_str(&c, "prompt", big);
	mb_int(&c, "context_tokens", 256);
	mb_int(&c, "max_tokens", 64);
	EXPECT_BAD(&c, "actor 'g': prompt: the template (~245 tokens) leaves no room in "
	               "context_tokens (256) after max_tokens (64)");
	mb_init(&c);
	mb_str(&c, "fallback", "");
	EXPECT_BAD(&c, "actor 'g': fallback: must be non-empty UTF-8");
	mb_init(&c);
	mb_str(&c, "fallback", big);
	mb_int(&c, "max_tokens", 16);
	EXPECT_BAD(&c, "actor 'g': fallback: longer than max_tokens allows (999 bytes, at most 64)");

	/* Spawning with bad settings fails the same way (init runs the check). */
	mb_init(&c);
	mb_str(&c, "backend", "openai");
	TT_RC(start(&c), TR_EINVAL);
	stop();
}

TT_TEST(troupe_check_names_file_and_line)
{
	char path[] = "/tmp/test_generate_XXXXXX.lua";
	int fd = mkstemps(path, 4);
	TT_ASSERT(fd >= 0);
	const char *src = "-- generate settings\n"
	                  "actor \"ok\" { kind = \"generate\", model = \"small\", max_tokens = 512, "
	                  "temperature = 0.2 }\n"
	                  "actor \"g\" { kind = \"generate\", mailbox = 64,\n"
	                  "             backend = \"openai\" }\n"
	                  "actor \"h\" { kind = \"generate\", max_sentence = 2 }\n"
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
	         "%s:3: actor 'g': url: required with backend \"openai\" (the server's base URL, "
	         "e.g. \"http://127.0.0.1:8000/v1\")",
	         path);
	snprintf(want2, sizeof(want2),
	         "%s:5: actor 'h': unknown setting 'max_sentence' (did you mean 'max_sentences'?)",
	         path);
	TT_EQ(d.n, 2);
	TT_STREQ(d.msgs[0], want1);
	TT_STREQ(d.msgs[1], want2);
	tr_diag_free(&d);

	/* The command itself (meson sets TROUPE_EXE): exit status 1 and the
	 * same lines on stderr. */
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

/* The backend on its own, with allocations failing one after another:
 * each run is TR_OK or TR_ENOMEM, never a crash or a half answer. */
TT_TEST(extract_survives_out_of_memory)
{
	tr_gen_psg pv[3];
	for (int i = 0; i < 3; i++)
		pv[i] = (tr_gen_psg){docs3[i].text, strlen(docs3[i].text), docs3[i].source,
		                     strlen(docs3[i].source), docs3[i].score};
	const char *q = "How do I set the mailbox size?";
	int oks = 0, fails = 0;
	for (long k = 1; k <= 12; k++) {
		tr_gen_ex *x = NULL;
		tr_gen_answer a;
		tr__alloc_fail_after(k);
		int rc = tr_gen_ex_new(&x);
		if (rc == TR_OK)
			rc = tr_gen_extract(x, q, strlen(q), NULL, NULL, 0, pv, 3, 3, 1024, &a);
		tr__alloc_fail_after(0);
		if (rc == TR_OK) {
			oks++;
			TT_EQ(a.found, 1);
			TT_ASSERT(strncmp(a.text, "The mailbox size", 16) == 0);
		} else {
			fails++;
			TT_RC(rc, TR_ENOMEM);
		}
		/* The same scratch works once memory is back. */
		if (x != NULL) {
			TT_OK(tr_gen_extract(x, q, strlen(q), NULL, NULL, 0, pv, 3, 3, 1024, &a));
			TT_EQ(a.nsources, 1);
			TT_EQ(a.srcn[0], 9);
			TT_ASSERT(memcmp(a.src[0], "config.md", 9) == 0);
		}
		tr_gen_ex_free(x);
	}
	TT_ASSERT(fails > 0 && oks > 0);
}

/* tr_gen_clean copies printable ASCII a run at a time: it must write
 * exactly what the character-by-character definition does, cut by `max`
 * at the same place. A reference of that definition, against random
 * mixes of ASCII, white space, controls, C1 codes, valid and invalid
 * UTF-8, with every kind of `max`. */
static size_t ref_seq(const unsigned char *u, size_t n)
{
	unsigned c = u[0];
	size_t k;
	uint32_t cp;
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		k = 2, cp = c & 0x1f;
	else if (c >= 0xe0 && c <= 0xef)
		k = 3, cp = c & 0x0f;
	else if (c >= 0xf0 && c <= 0xf4)
		k = 4, cp = c & 0x07;
	else
		return 0;
	if (k > n)
		return 0;
	for (size_t i = 1; i < k; i++) {
		if ((u[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (u[i] & 0x3f);
	}
	if ((k == 3 && cp < 0x800) || (k == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return k;
}

static size_t ref_clean(unsigned char *o, const unsigned char *u, size_t n, size_t max, int *more)
{
	static const unsigned char fffd[3] = {0xef, 0xbf, 0xbd};
	size_t w = 0, i = 0;
	int space = 0;
	*more = 0;
	while (i < n) {
		const unsigned char *p = u + i;
		size_t k = ref_seq(p, n - i), emit;
		if (k == 1 && (p[0] <= 0x20 || p[0] == 0x7f)) {
			space = w > 0;
			i++;
			continue;
		}
		if (k == 2 && p[0] == 0xc2 && p[1] < 0xa0) {
			space = w > 0;
			i += 2;
			continue;
		}
		if (k == 0)
			p = fffd, emit = 3, k = 1;
		else
			emit = k;
		if (w + (size_t)space + emit > max) {
			*more = 1;
			break;
		}
		if (space)
			o[w] = ' ';
		memcpy(o + w + (size_t)space, p, emit);
		w += (size_t)space + emit;
		space = 0;
		i += k;
	}
	return w;
}

TT_TEST(clean_matches_its_definition)
{
	static const char *const parts[] = {
		"word", "Retries", "x", "a.b", "  ", " ", "\t", "\n\n", "\x7f", "\x01", "\xc2\x85",
		"\xc2\xa0", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xff", "\x80", "\xe2\x82",
		"\xed\xa0\x80", "~", "!", "\"q\"",
	};
	uint64_t rng = 0x2545f4914f6cdd1dull;
	unsigned char in[256], want[1024];
	tr_buf got;
	tr_buf_init(&got);
	for (int round = 0; round < 20000; round++) {
		size_t n = 0;
		rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
		int pieces = (int)(rng % 12);
		for (int k = 0; k < pieces; k++) {
			rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
			const char *pc = parts[rng % (sizeof(parts) / sizeof(parts[0]))];
			size_t pl = strlen(pc);
			if (n + pl > sizeof(in))
				break;
			memcpy(in + n, pc, pl);
			n += pl;
		}
		rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
		size_t max = round % 7 == 0 ? SIZE_MAX : (size_t)(rng % (3 * n + 2));
		int wm = 0, gm = 0, cm = 0;
		size_t wn = ref_clean(want, in, n, max, &wm);
		got.len = 0;
		size_t gn = tr_gen_clean(&got, (const char *)in, n, max, &gm);
		size_t cn = tr_gen_clean(NULL, (const char *)in, n, max, &cm);
		if (gn != wn || got.len != wn || memcmp(got.data, want, wn) != 0 || gm != wm ||
		    cn != wn || cm != wm) {
			fprintf(stderr, "  round %d: n %zu max %zu: want %zu/%d, got %zu/%d, count %zu/%d\n",
			        round, n, max, wn, wm, gn, gm, cn, cm);
			TT_ASSERT(0);
		}
	}
	tr_buf_free(&got);
}

/* The extractor keeps passages it has split (a cache of their
 * sentences and words): an answer from a warm extractor -- the passages
 * seen before, with other questions -- is byte for byte the one a fresh
 * extractor gives. Random passages: words, UTF-8, sentence ends, line
 * wraps, markdown, words long enough to be cut, passages past the
 * cache's 4 KiB (split each time). */
static unsigned rnd_next(uint64_t *r, unsigned n)
{
	*r ^= *r << 13, *r ^= *r >> 7, *r ^= *r << 17;
	return (unsigned)(*r % n);
}

TT_TEST(cached_passages_answer_the_same)
{
	uint64_t rng = 0x9e3779b97f4a7c15ull;
#define RND(n) rnd_next(&rng, (n))
	static const char *const words[] = {
		"retries", "the", "backoff", "mailbox", "size", "is", "set", "in", "a", "Step",
		"steps", "deadline", "expires", "policies", "supervisor", "restarts", "cache",
		"jitter", "timeout", "\xc3\xa9t\xc3\xa9", "\xe2\x82\xac", "1.5", "e.g.", "API", "how"};
	static const char *const seps[] = {" ", " ", " ", ". ", "! ", "? ", "\n", "\n\n",
	                                   "\n- ", "\n# ", "\n1. ", ", ", "```\n", "\t"};
	static char text[4][6000];
	tr_gen_psg pv[4];
	tr_gen_ex *warm;
	TT_OK(tr_gen_ex_new(&warm));
	for (int round = 0; round < 300; round++) {
		/* New passages every 10 rounds; between, the same ones with other questions. */
		int np = 1 + (round / 10) % 4;
		if (round % 10 == 0) {
			for (int p = 0; p < 4; p++) {
				size_t n = 0;
				unsigned nw = (round / 10) % 7 == 3 ? 900 : 20 + RND(120);
				while (nw-- > 0 && n < 5800) {
					const char *w = words[RND(sizeof(words) / sizeof(words[0]))];
					if (RND(150) == 0) {
						for (unsigned z = 100 + RND(2200); z > 0 && n < 5800; z--)
							text[p][n++] = 'z';
					} else {
						memcpy(text[p] + n, w, strlen(w));
						n += strlen(w);
					}
					const char *sp = seps[RND(sizeof(seps) / sizeof(seps[0]))];
					memcpy(text[p] + n, sp, strlen(sp));
					n += strlen(sp);
				}
				pv[p] = (tr_gen_psg){text[p], n, "doc.md", 6, 0.25 * (double)RND(5)};
			}
		}
		char q[128];
		unsigned w1 = RND(25), w2 = RND(25), w3 = RND(25);
		snprintf(q, sizeof(q), "%s %s %s?", words[w1], words[w2], words[w3]);
		uint32_t ms = 1 + RND(5);
		size_t mb = 64 + RND(2000);
		tr_gen_ex *fresh;
		tr_gen_answer a, b;
		TT_OK(tr_gen_ex_new(&fresh));
		TT_OK(tr_gen_extract(fresh, q, strlen(q), NULL, NULL, 0, pv, (size_t)np, ms, mb, &a));
		TT_OK(tr_gen_extract(warm, q, strlen(q), NULL, NULL, 0, pv, (size_t)np, ms, mb, &b));
		TT_EQ(a.found, b.found);
		TT_EQ(a.sentences, b.sentences);
		TT_EQ(a.len, b.len);
		TT_ASSERT(memcmp(a.text, b.text, a.len) == 0);
		TT_EQ(a.nsources, b.nsources);
		tr_gen_ex_free(fresh);
	}
	tr_gen_ex_free(warm);
#undef RND
}

TT_LIST = {
	TT_ENTRY(clean_matches_its_definition),
	TT_ENTRY(cached_passages_answer_the_same),
	TT_ENTRY(cites_the_right_source),
	TT_ENTRY(several_sources_in_reading_order),
	TT_ENTRY(no_passages_honest_fallback),
	TT_ENTRY(huge_passages_and_questions),
	TT_ENTRY(invalid_utf8_never_reaches_the_answer),
	TT_ENTRY(sessions_keep_history_per_session_bounded),
	TT_ENTRY(follow_up_questions_use_history),
	TT_ENTRY(token_budget_respected),
	TT_ENTRY(streaming_deltas_come_before_the_reply),
	TT_ENTRY(bad_inputs_have_exact_messages),
	TT_ENTRY(settings_checked_with_exact_messages),
	TT_ENTRY(troupe_check_names_file_and_line),
	TT_ENTRY(extract_survives_out_of_memory),
	TT_END,
};

TT_MAIN()
