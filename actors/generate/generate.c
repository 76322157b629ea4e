/*
 * actors/generate/generate.c -- the generate kind: settings, the step,
 * the answer. See generate.h (streaming) and window.h (context).
 *
 * One step: read text and passages, find the session's history, let the
 * window choose what fits the token budget, compose the answer with the
 * backend, stream it if asked, reply with answer/sources/usage/context,
 * and remember the turn. The per-instance state holds every scratch
 * buffer, so a steady actor allocates only what the kit's reply needs.
 *
 * Budget. A model would see the prompt template with {question} and
 * {context} filled in (window.h gives the context's format). The prompt
 * may take context_tokens - max_tokens tokens (the rest is the answer's);
 * the template and the question come first, the window fills the rest.
 * prompt_tokens is that prompt's estimate, exactly as a renderer would
 * produce it; completion_tokens the answer's (both tr_gwin_tokens: bytes
 * / 4, rounded up).
 */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "actors/generate/generate.h"
#include "actors/generate/window.h"
#include "actors/kinds.h"
#include "actors/kit.h"
#include "core/alloc.h"
#include "msg/msg_int.h"
#include "pipe/mp.h"

#define SESSION_MAX 256

static const char default_prompt[] =
	"Answer the question using only the numbered passages below; cite them like [1]. "
	"If they do not contain the answer, say so.\n\n{context}\nQuestion: {question}\nAnswer:";
static const char default_fallback[] = "I could not find this in the documents.";

typedef struct gen_cfg {
	char *model;
	char *prompt;
	char *fallback;
	double temperature;      /* validated, for the openai backend; unused here */
	uint32_t max_tokens;
	uint32_t max_sentences;
	uint32_t history;        /* turns kept per session; 0: no sessions */
	uint32_t sessions;
	uint32_t context_tokens;
	bool stream;
	size_t prompt_fixed;     /* template bytes besides its two placeholders */
} gen_cfg;

typedef struct gen_st {
	gen_cfg cfg;
	tr_gwin *win;            /* NULL when history = 0 */
	tr_gen_ex *ex;
	tr_gwin_item items[TR_GWIN_ITEMS_MAX];
	const msgpack_object *psg[TR_GWIN_ITEMS_MAX]; /* each item's passage map */
	tr_gen_psg ctx[TR_GWIN_ITEMS_MAX];
	char noname[TR_GWIN_ITEMS_MAX][16]; /* "passage N" for passages without a source */
	const char *hq[64];
	size_t hqn[64];
	tr_buf delta;            /* a delta's body */
} gen_st;

static void cfg_free(gen_cfg *c)
{
	tr__free(c->model);
	tr__free(c->prompt);
	tr__free(c->fallback);
	memset(c, 0, sizeof(*c));
}

/* Checks the template's placeholders: {question} and {context} exactly
 * once each, no other {name}. Other braces are text. */
static void check_prompt(tr_kcfg *k, gen_cfg *c)
{
	const char *p = c->prompt;
	unsigned nq = 0, nc = 0;
	size_t n = strlen(p);
	if (!tr_gen_utf8_valid(p, n)) {
		tr_kcfg_fail(k, "prompt: not valid UTF-8");
		return;
	}
	for (size_t i = 0; i < n; i++) {
		size_t j = i + 1;
		if (p[i] != '{')
			continue;
		while (j < n && ((p[j] >= 'a' && p[j] <= 'z') || (p[j] >= 'A' && p[j] <= 'Z') ||
		                 (p[j] >= '0' && p[j] <= '9') || p[j] == '_'))
			j++;
		if (j == i + 1 || j == n || p[j] != '}')
			continue;
		if (j - i - 1 == 8 && memcmp(p + i + 1, "question", 8) == 0) {
			nq++;
		} else if (j - i - 1 == 7 && memcmp(p + i + 1, "context", 7) == 0) {
			nc++;
		} else {
			tr_kcfg_fail(k, "prompt: unknown placeholder {%.*s} (the template takes {question} "
			                "and {context})",
			             (int)(j - i - 1 > 40 ? 40 : j - i - 1), p + i + 1);
			return;
		}
		i = j;
	}
	if (nq != 1 || nc != 1) {
		const char *what = nq != 1 ? "{question}" : "{context}";
		unsigned got = nq != 1 ? nq : nc;
		if (got == 0)
			tr_kcfg_fail(k, "prompt: missing %s", what);
		else
			tr_kcfg_fail(k, "prompt: %s appears %u times; it must appear once", what, got);
		return;
	}
	c->prompt_fixed = n - (sizeof("{question}") - 1) - (sizeof("{context}") - 1);
}

/* Reads and checks a's settings into c (zeroed first). The same code
 * serves `troupe check` and init. On error c is freed. */
static int cfg_read(const tr_actor_spec *a, gen_cfg *c, char *err, size_t errlen)
{
	static const char *const keys[] = {
		"backend", "model", "temperature", "max_tokens", "max_sentences", "prompt",
		"fallback", "history", "sessions", "context_tokens", "stream", NULL,
	};
	tr_kcfg k;
	char *backend = NULL;
	memset(c, 0, sizeof(*c));
	if (tr_kcfg_open(&k, a, err, errlen) != TR_OK)
		goto done;
	if (tr_kcfg_keys(&k, keys) != TR_OK)
		goto done;
	backend = tr_kcfg_str(&k, "backend", "extractive");
	c->model = tr_kcfg_str(&k, "model", "extractive");
	c->prompt = tr_kcfg_str(&k, "prompt", default_prompt);
	c->fallback = tr_kcfg_str(&k, "fallback", default_fallback);
	c->temperature = tr_kcfg_num(&k, "temperature", 0.0, 0.0, 2.0);
	c->max_tokens = (uint32_t)tr_kcfg_int(&k, "max_tokens", 256, 16, 32768);
	c->max_sentences = (uint32_t)tr_kcfg_int(&k, "max_sentences", 3, 1, TR_GEN_SENTENCES_MAX);
	c->history = (uint32_t)tr_kcfg_int(&k, "history", 4, 0, 64);
	c->sessions = (uint32_t)tr_kcfg_int(&k, "sessions", 1024, 1, 100000);
	c->context_tokens = (uint32_t)tr_kcfg_int(&k, "context_tokens", 2048, 256, 1048576);
	c->stream = tr_kcfg_bool(&k, "stream", 0);
	if (k.failed)
		goto done;
	if (backend == NULL || c->model == NULL || c->prompt == NULL || c->fallback == NULL) {
		tr_kcfg_fail(&k, "out of memory");
		goto done;
	}
	if (strcmp(backend, "openai") == 0) {
		tr_kcfg_fail(&k, "backend: \"openai\" is not available yet");
		goto done;
	}
	if (strcmp(backend, "extractive") != 0) {
		tr_kcfg_fail(&k, "backend: unknown backend \"%.40s\" (available: \"extractive\")",
		             backend);
		goto done;
	}
	if (c->model[0] == '\0' || strlen(c->model) > 128 ||
	    !tr_gen_utf8_valid(c->model, strlen(c->model))) {
		tr_kcfg_fail(&k, "model: must be 1 to 128 bytes of UTF-8");
		goto done;
	}
	if (c->max_tokens >= c->context_tokens) {
		tr_kcfg_fail(&k, "max_tokens: must be less than context_tokens (%u), got %u",
		             c->context_tokens, c->max_tokens);
		goto done;
	}
	size_t fb = strlen(c->fallback);
	if (fb == 0 || !tr_gen_utf8_valid(c->fallback, fb)) {
		tr_kcfg_fail(&k, "fallback: must be non-empty UTF-8");
		goto done;
	}
	if (fb > (size_t)c->max_tokens * 4) {
		tr_kcfg_fail(&k, "fallback: longer than max_tokens allows (%zu bytes, at most %u)", fb,
		             c->max_tokens * 4);
		goto done;
	}
	check_prompt(&k, c);
	if (k.failed)
		goto done;
	uint32_t room = c->context_tokens - c->max_tokens;
	if (tr_gwin_tokens(c->prompt_fixed) >= room)
		tr_kcfg_fail(&k,
		             "prompt: the template (~%u tokens) leaves no room in context_tokens (%u) "
		             "after max_tokens (%u)",
		             tr_gwin_tokens(c->prompt_fixed), c->context_tokens, c->max_tokens);
done:
	tr__free(backend);
	int failed = k.failed;
	tr_kcfg_close(&k);
	if (failed) {
		cfg_free(c);
		return TR_EINVAL;
	}
	return TR_OK;
}

int tr_generate_check(const tr_actor_spec *a, char *err, size_t errlen)
{
	gen_cfg c;
	int rc = cfg_read(a, &c, err, errlen);
	cfg_free(&c);
	return rc;
}

static void gen_terminate(tr_ctx *ctx, void *state, int reason)
{
	gen_st *s = state;
	(void)ctx;
	(void)reason;
	tr_gwin_free(s->win);
	tr_gen_ex_free(s->ex);
	tr_buf_free(&s->delta);
	cfg_free(&s->cfg);
	s->win = NULL;
	s->ex = NULL;
}

static int gen_init(tr_ctx *ctx, void *state, const void *arg)
{
	gen_st *s = state;
	char err[512];
	int rc = cfg_read(arg, &s->cfg, err, sizeof(err));
	if (rc != TR_OK)
		return rc;
	tr_buf_init(&s->delta);
	if (tr_gen_ex_new(&s->ex) != TR_OK)
		goto nomem;
	/* The seed only spreads session ids over chains; an instance's own
	 * address and the clock differ between instances and runs. */
	if (s->cfg.history > 0 &&
	    tr_gwin_new(s->cfg.sessions, s->cfg.history,
	                tr_now_ns() ^ (uint64_t)(uintptr_t)s, &s->win) != TR_OK)
		goto nomem;
	return TR_OK;
nomem:
	gen_terminate(ctx, s, TR_ENOMEM);
	return TR_ENOMEM;
}


static int is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

/* Reads `passages` into s->items/psg. TR_OK with *np, or TR_EINVAL with
 * the problem in msg. Past TR_GWIN_ITEMS_MAX passages are ignored. */
static int read_passages(gen_st *s, const tr_kmsg *k, size_t *np, char *msg, size_t msglen)
{
	const msgpack_object *l = tr_kmsg_get(k, "passages");
	*np = 0;
	if (l == NULL || l->type == MSGPACK_OBJECT_NIL)
		return TR_OK;
	if (l->type != MSGPACK_OBJECT_ARRAY) {
		snprintf(msg, msglen, "passages: expected a list, got %s", tr_kobj_type(l));
		return TR_EINVAL;
	}
	for (uint32_t i = 0; i < l->via.array.size && *np < TR_GWIN_ITEMS_MAX; i++) {
		const msgpack_object *p = &l->via.array.ptr[i];
		const msgpack_object *t = tr_kobj_get(p, "text");
		const msgpack_object *src = tr_kobj_get(p, "source");
		const msgpack_object *sc = tr_kobj_get(p, "score");
		tr_gwin_item *it = &s->items[*np];
		if (p->type != MSGPACK_OBJECT_MAP) {
			snprintf(msg, msglen, "passages[%u]: expected a table, got %s", i + 1,
			         tr_kobj_type(p));
			return TR_EINVAL;
		}
		if (t == NULL || t->type != MSGPACK_OBJECT_STR) {
			snprintf(msg, msglen, "passages[%u].text: expected a string, got %s", i + 1,
			         t ? tr_kobj_type(t) : "nil");
			return TR_EINVAL;
		}
		if (src != NULL && src->type != MSGPACK_OBJECT_STR && src->type != MSGPACK_OBJECT_NIL) {
			snprintf(msg, msglen, "passages[%u].source: expected a string, got %s", i + 1,
			         tr_kobj_type(src));
			return TR_EINVAL;
		}
		it->score = 0;
		if (sc != NULL && sc->type != MSGPACK_OBJECT_NIL) {
			if (sc->type == MSGPACK_OBJECT_FLOAT32 || sc->type == MSGPACK_OBJECT_FLOAT64)
				it->score = sc->via.f64;
			else if (sc->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
				it->score = (double)sc->via.u64;
			else if (sc->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
				it->score = (double)sc->via.i64;
			else {
				snprintf(msg, msglen, "passages[%u].score: expected a number, got %s", i + 1,
				         tr_kobj_type(sc));
				return TR_EINVAL;
			}
			if (it->score != it->score) /* NaN sorts nowhere */
				it->score = 0;
		}
		it->text = t->via.str.ptr;
		it->len = t->via.str.size;
		s->psg[*np] = p;
		(*np)++;
	}
	return TR_OK;
}

/* Sends the answer's chunks to the asker (generate.h), best effort. */
static void stream(tr_ctx *ctx, gen_st *s, const tr_msg *req, const tr_gen_answer *a)
{
	size_t from = 0;
	if (tr_ref_is_none(req->from))
		return;
	for (uint32_t i = 0; i < a->nchunks; i++) {
		msgpack_packer pk;
		tr_msg *d;
		s->delta.len = 0;
		tr__mp_packer(&pk, &s->delta);
		if (msgpack_pack_map(&pk, 1) != 0 || tr__mp_pack_cstr(&pk, "text") != 0 ||
		    tr_kpack_str(&pk, a->text + from, a->chunk_end[i] - from) != TR_OK)
			return;
		from = a->chunk_end[i];
		if ((d = tr_msg_new()) == NULL)
			return;
		d->tag = TR_TAG_STEP_DELTA;
		d->flags = TR_MSGF_SYSTEM; /* ordered with the reply (generate.h) */
		d->corr = req->corr;
		d->trace_hi = req->trace_hi;
		d->trace_lo = req->trace_lo;
		d->tenant = req->tenant;
		d->deadline = req->deadline;
		if ((d->body = tr_body_new(s->delta.data, s->delta.len)) == NULL) {
			tr_msg_free(d);
			return;
		}
		if (tr_send(ctx, req->from, d) != TR_OK)
			return; /* a refused chunk ends the stream: a prefix, never a gap */
	}
}

static int pack_map_u32(msgpack_packer *pk, const char *const *keys, const uint32_t *v, size_t n)
{
	if (msgpack_pack_map(pk, (uint32_t)n) != 0)
		return TR_ENOMEM;
	for (size_t i = 0; i < n; i++)
		if (tr__mp_pack_cstr(pk, keys[i]) != 0 || msgpack_pack_uint32(pk, v[i]) != 0)
			return TR_ENOMEM;
	return TR_OK;
}

static int gen_receive(tr_ctx *ctx, void *state, tr_msg *m)
{
	gen_st *s = state;
	const gen_cfg *c = &s->cfg;
	tr_kmsg k;
	tr_kout o;
	tr_gwin_sess *sess = NULL;
	tr_gwin_fit fit;
	tr_gen_answer ans;
	const char *q, *sid = NULL;
	size_t qn, sidn = 0, np = 0, nctx = 0;
	char msg[256];
	int rc;

	/* Only asks are steps; anything else (a stray send) needs no answer. */
	if (!(m->flags & TR_MSGF_ASK))
		return TR_OK;
	if (tr_kmsg_open(&k, m) != TR_OK) {
		tr_kmsg_close(&k);
		return tr_step_fail(ctx, m, TR_EINVAL, "the message is not a table");
	}
	rc = tr_kmsg_str(&k, "text", &q, &qn);
	if (rc != TR_OK) {
		if (rc == TR_ENOTFOUND)
			snprintf(msg, sizeof(msg), "text: missing");
		else
			snprintf(msg, sizeof(msg), "text: expected a string, got %s",
			         tr_kobj_type(tr_kmsg_get(&k, "text")));
		goto bad;
	}
	while (qn > 0 && is_ws(q[0]))
		q++, qn--;
	while (qn > 0 && is_ws(q[qn - 1]))
		qn--;
	if (qn == 0) {
		snprintf(msg, sizeof(msg), "text: empty");
		goto bad;
	}
	rc = tr_kmsg_str(&k, "session", &sid, &sidn);
	if (rc == TR_EINVAL) {
		snprintf(msg, sizeof(msg), "session: expected a string, got %s",
		         tr_kobj_type(tr_kmsg_get(&k, "session")));
		goto bad;
	}
	if (rc == TR_OK && sidn > SESSION_MAX) {
		snprintf(msg, sizeof(msg), "session: longer than %d bytes", SESSION_MAX);
		goto bad;
	}
	if (read_passages(s, &k, &np, msg, sizeof(msg)) != TR_OK)
		goto bad;

	/* The prompt's room: the template and the question first. */
	size_t room = ((size_t)c->context_tokens - c->max_tokens) * 4;
	size_t fixed = c->prompt_fixed + qn;
	if (fixed > room) {
		snprintf(msg, sizeof(msg),
		         "text: the question (~%u tokens) does not fit in context_tokens (%u) with "
		         "max_tokens (%u)",
		         tr_gwin_tokens(qn), c->context_tokens, c->max_tokens);
		goto bad;
	}
	if (s->win != NULL && sid != NULL && sidn > 0) {
		/* Keyed by tenant too: two tenants' "s1" are two sessions. */
		unsigned char key[4 + SESSION_MAX];
		memcpy(key, &m->tenant, 4);
		memcpy(key + 4, sid, sidn);
		if ((sess = tr_gwin_get(s->win, key, 4 + sidn)) == NULL) {
			tr_kmsg_close(&k);
			return tr_step_fail(ctx, m, TR_ENOMEM, "out of memory");
		}
	}
	tr_gwin_choose(sess, c->history, s->items, np, room - fixed, &fit);
	for (uint32_t b = 0; b < fit.turns; b++) {
		const char *a;
		size_t an;
		(void)tr_gwin_turn(sess, b, &s->hq[b], &s->hqn[b], &a, &an);
	}
	/* The passages in context, in the order rag gave them. */
	for (size_t i = 0; i < np; i++) {
		const msgpack_object *src;
		tr_gen_psg *p;
		if (s->items[i].use == 0)
			continue;
		p = &s->ctx[nctx++];
		p->text = s->items[i].text;
		p->len = s->items[i].use;
		p->score = s->items[i].score;
		src = tr_kobj_get(s->psg[i], "source");
		if (src != NULL && src->type == MSGPACK_OBJECT_STR) {
			p->src = src->via.str.ptr;
			p->srcn = src->via.str.size;
		} else {
			/* No source: name it by its place in the list. */
			int w = snprintf(s->noname[i], sizeof(s->noname[i]), "passage %zu", i + 1);
			p->src = s->noname[i];
			p->srcn = (size_t)w;
		}
	}
	if (tr_gen_extract(s->ex, q, qn, s->hq, s->hqn, fit.turns, s->ctx, nctx, c->max_sentences,
	                   (size_t)c->max_tokens * 4, &ans) != TR_OK) {
		tr_kmsg_close(&k);
		return tr_step_fail(ctx, m, TR_ENOMEM, "out of memory");
	}
	if (!ans.found) {
		ans.text = c->fallback;
		ans.len = strlen(c->fallback);
		ans.nsources = 0;
		ans.nchunks = 1;
		ans.chunk_end[0] = ans.len;
	}
	if (c->stream)
		stream(ctx, s, m, &ans);

	tr_kout_init(&o);
	msgpack_packer *pk = tr_kout_key(&o, "answer");
	rc = tr_kpack_str(pk, ans.text, ans.len);
	pk = tr_kout_key(&o, "sources");
	if (msgpack_pack_array(pk, ans.nsources) != 0)
		rc = TR_ENOMEM;
	for (uint32_t i = 0; i < ans.nsources && rc == TR_OK; i++)
		rc = tr_kpack_str(pk, ans.src[i], ans.srcn[i]);
	pk = tr_kout_key(&o, "usage");
	if (rc == TR_OK)
		rc = msgpack_pack_map(pk, 3) == 0 && tr__mp_pack_cstr(pk, "prompt_tokens") == 0 &&
		             msgpack_pack_uint32(pk, tr_gwin_tokens(fixed + fit.bytes)) == 0 &&
		             tr__mp_pack_cstr(pk, "completion_tokens") == 0 &&
		             msgpack_pack_uint32(pk, tr_gwin_tokens(ans.len)) == 0 &&
		             tr__mp_pack_cstr(pk, "model") == 0 && tr__mp_pack_cstr(pk, c->model) == 0
		         ? TR_OK
		         : TR_ENOMEM;
	if (rc == TR_OK) {
		static const char *const ck[] = {"turns", "passages", "tokens"};
		uint32_t cv[] = {fit.turns, fit.passages, tr_gwin_tokens(fit.bytes)};
		rc = pack_map_u32(tr_kout_key(&o, "context"), ck, cv, 3);
	}
	/* Remember the turn before the message goes: q points into it.
	 * History is best effort; out of memory here only forgets. */
	if (sess != NULL)
		(void)tr_gwin_push(sess, q, qn, ans.text, ans.len, m->attempt > 0);
	tr_kmsg_close(&k);
	if (rc != TR_OK) {
		tr_kout_free(&o);
		return tr_step_fail(ctx, m, TR_ENOMEM, "out of memory");
	}
	return tr_kout_reply(ctx, m, &o);

bad:
	tr_kmsg_close(&k);
	return tr_step_fail(ctx, m, TR_EINVAL, "%s", msg);
}

const tr_actor_ops tr_generate_ops = {
	.name = "generate",
	.size = sizeof(gen_st),
	.init = gen_init,
	.receive = gen_receive,
	.terminate = gen_terminate,
};
