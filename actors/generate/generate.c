/*
 * actors/generate/generate.c -- the generate kind: settings, the step,
 * the answer. See generate.h (streaming, the openai client) and window.h
 * (context).
 *
 * One step: read text and passages, find the session's history, let the
 * window choose what fits the token budget, then
 *  - extractive: compose the answer, stream it if asked, reply with
 *    answer/sources/usage/context, and remember the turn;
 *  - openai: build the chat request (history turns as user/assistant
 *    messages, the template with {question} and {context} as the last
 *    user message), take the ask (tr_take) and hand the request to the
 *    instance's HTTP client (openai.c). The receive returns at once; the
 *    client's messages come back later: deltas are passed on to the
 *    asker, the DONE becomes the reply (or the step's error), and the
 *    turn is remembered then. At most `concurrency` requests are in
 *    flight per instance; one more is refused as overload.
 * The per-instance state holds every scratch buffer, so a steady
 * extractive actor allocates only what the kit's reply needs.
 *
 * Budget. A model sees the prompt template with {question} and {context}
 * filled in (window.h gives the context's format) and, for openai, the
 * system message. The prompt may take context_tokens - max_tokens tokens
 * (the rest is the answer's); the template and the question come first,
 * the window fills the rest. prompt_tokens is that prompt's estimate,
 * exactly as a renderer would produce it; completion_tokens the answer's
 * (both tr_gwin_tokens: bytes / 4, rounded up) -- unless the server
 * reports its own counts, which openai's usage then carries.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "actors/generate/generate.h"
#include "actors/generate/window.h"
#include "actors/kinds.h"
#include "actors/kit.h"
#include "core/alloc.h"
#include "msg/msg_int.h"
#include "pipe/engine.h"
#include "pipe/mp.h"

#define SESSION_MAX 256
#define URL_MAX 2048
#define SYSTEM_MAX (64u * 1024u)
#define CONCURRENCY_MAX 4096 /* < 65536: a call's slot is the low 16 bits of its id */

enum { GEN_EXTRACTIVE, GEN_OPENAI };

static const char default_prompt[] =
	"Answer the question using only the numbered passages below; cite them like [1]. "
	"If they do not contain the answer, say so.\n\n{context}\nQuestion: {question}\nAnswer:";
static const char default_fallback[] = "I could not find this in the documents.";

typedef struct gen_cfg {
	int backend;             /* GEN_* */
	char *model;
	char *prompt;
	char *fallback;
	double temperature;      /* sent by openai; unused by extractive */
	uint32_t max_tokens;
	uint32_t max_sentences;
	uint32_t history;        /* turns kept per session; 0: no sessions */
	uint32_t sessions;
	uint32_t context_tokens;
	bool stream;
	size_t prompt_fixed;     /* template bytes besides its two placeholders,
	                          * and the system message's */
	/* openai only */
	char *url;               /* the endpoint: the base URL + /chat/completions */
	char *api_key_env;       /* NULL: no key */
	char *system;            /* NULL: no system message */
	uint32_t connect_ms, first_byte_ms, timeout_ms;
	uint32_t concurrency;
} gen_cfg;

/* An openai request in flight: the ask it answers and what its reply
 * needs that the message does not say. */
typedef struct gen_call {
	tr_msg *req;             /* the step ask (taken, owned); NULL: slot free */
	uint64_t id;             /* seq << 16 | slot */
	uint32_t prompt_tokens;  /* the estimate */
	tr_gwin_fit fit;
	uint16_t *order;         /* order[k-1]: the passage (index) numbered [k] */
	uint32_t order_cap;
	uint32_t deltas;         /* passed on to the asker */
	bool broken;             /* a delta could not be passed on: no more */
} gen_call;

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
	/* openai only */
	tr_oai *oai;
	gen_call *calls;         /* cfg.concurrency slots */
	uint32_t *freev;         /* free slots, a stack */
	uint32_t nfree;
	uint64_t seq;
	char *api_key;           /* from the environment at init; NULL: none */
	bool key_missing;        /* api_key_env is set but names no variable */
	tr_buf prompt, tmp, json;
} gen_st;

static void cfg_free(gen_cfg *c)
{
	tr__free(c->model);
	tr__free(c->prompt);
	tr__free(c->fallback);
	tr__free(c->url);
	tr__free(c->api_key_env);
	tr__free(c->system);
	memset(c, 0, sizeof(*c));
}

#define DUR_HINT "units us, ms, s, m, h: \"500us\", \"50ms\", \"1.5s\", \"1m\""

/* "1.5s" & co. (the DSL's units) in ms, rounded up; -1 if malformed. */
static int64_t parse_ms(const char *s)
{
	static const struct {
		const char *u;
		double us;
	} units[] = {{"us", 1}, {"ms", 1e3}, {"s", 1e6}, {"m", 60e6}, {"h", 3600e6}};
	double v = 0, scale = 0.1;
	int nd = 0;
	const char *p = s;
	while (*p >= '0' && *p <= '9' && nd < 12) {
		v = v * 10 + (*p++ - '0');
		nd++;
	}
	if (*p == '.') {
		p++;
		while (*p >= '0' && *p <= '9' && nd < 24) {
			v += (*p++ - '0') * scale;
			scale /= 10;
			nd++;
		}
	}
	if (nd == 0)
		return -1;
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
		if (strcmp(p, units[i].u) == 0) {
			double ms = v * units[i].us / 1e3;
			return ms > 1e12 ? INT64_MAX : (int64_t)ms + (ms > (double)(int64_t)ms);
		}
	return -1;
}

/* A duration setting, 1 ms to max_ms (named max_name), in ms. */
static uint32_t cfg_ms(tr_kcfg *k, const char *key, uint32_t dflt, uint32_t max_ms,
                       const char *max_name)
{
	const msgpack_object *o = tr_kcfg_get(k, key);
	char v[48];
	int64_t ms;
	if (o == NULL)
		return dflt;
	if (o->type != MSGPACK_OBJECT_STR) {
		tr_kcfg_fail(k, "%s: expected a duration string (%s), got %s", key, DUR_HINT,
		             tr_kobj_type(o));
		return dflt;
	}
	size_t n = o->via.str.size < sizeof(v) - 1 ? o->via.str.size : sizeof(v) - 1;
	memcpy(v, o->via.str.ptr, n);
	v[n] = '\0';
	ms = n == o->via.str.size && memchr(v, 0, n) == NULL ? parse_ms(v) : -1;
	if (ms < 0) {
		tr_kcfg_fail(k, "%s: bad duration \"%.40s\" (%s)", key, v, DUR_HINT);
		return dflt;
	}
	if (ms < 1 || ms > max_ms) {
		tr_kcfg_fail(k, "%s: must be between 1ms and %s, got \"%s\"", key, max_name, v);
		return dflt;
	}
	return (uint32_t)ms;
}

/* Checks the base URL and makes c->url the endpoint. */
static void check_url(tr_kcfg *k, gen_cfg *c, const char *u)
{
	size_t n = strlen(u), start;
	if (n == 0) {
		tr_kcfg_fail(k, "url: empty");
		return;
	}
	if (n > URL_MAX) {
		tr_kcfg_fail(k, "url: longer than %d bytes", URL_MAX);
		return;
	}
	if (strncasecmp(u, "http://", 7) == 0)
		start = 7;
	else if (strncasecmp(u, "https://", 8) == 0)
		start = 8;
	else {
		tr_kcfg_fail(k, "url: must start with http:// or https://, got \"%.60s\"", u);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)u[i];
		if (ch <= 0x20 || ch == 0x7f) {
			tr_kcfg_fail(k, "url: must not contain spaces or control characters");
			return;
		}
		if (ch == '?' || ch == '#') {
			tr_kcfg_fail(k, "url: the base URL takes no query or fragment");
			return;
		}
	}
	size_t host_end = start;
	while (host_end < n && u[host_end] != '/')
		host_end++;
	if (memchr(u + start, '@', host_end - start) != NULL) {
		tr_kcfg_fail(k, "url: must not hold credentials (use api_key_env)");
		return;
	}
	if (host_end == start || u[start] == ':') {
		tr_kcfg_fail(k, "url: no host in \"%.60s\"", u);
		return;
	}
	static const char tail[] = "/chat/completions";
	while (n > host_end && u[n - 1] == '/')
		n--;
	size_t tn = sizeof(tail) - 1;
	int has = n >= tn && memcmp(u + n - tn, tail, tn) == 0;
	char *e = tr__malloc(n + (has ? 0 : tn) + 1);
	if (e == NULL) {
		tr_kcfg_fail(k, "out of memory");
		return;
	}
	memcpy(e, u, n);
	if (!has)
		memcpy(e + n, tail, tn);
	e[n + (has ? 0 : tn)] = '\0';
	c->url = e;
}

static int env_name_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 128 || (s[0] >= '0' && s[0] <= '9'))
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
		      (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
			return 0;
	return 1;
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

/* Settings only one backend takes. */
static const char *const openai_only[] = {
	"url", "api_key_env", "system", "connect_timeout", "first_byte_timeout", "timeout",
	"concurrency", NULL,
};
static const char *const extractive_only[] = {"max_sentences", NULL};

/* Reads and checks a's settings into c (zeroed first). The same code
 * serves `troupe check` and init. On error c is freed. */
static int cfg_read(const tr_actor_spec *a, gen_cfg *c, char *err, size_t errlen)
{
	static const char *const keys[] = {
		"backend", "model", "temperature", "max_tokens", "max_sentences", "prompt",
		"fallback", "history", "sessions", "context_tokens", "stream", "url",
		"api_key_env", "system", "connect_timeout", "first_byte_timeout", "timeout",
		"concurrency", NULL,
	};
	tr_kcfg k;
	char *backend = NULL, *url = NULL;
	memset(c, 0, sizeof(*c));
	if (tr_kcfg_open(&k, a, err, errlen) != TR_OK)
		goto done;
	if (tr_kcfg_keys(&k, keys) != TR_OK)
		goto done;
	backend = tr_kcfg_str(&k, "backend", "extractive");
	if (k.failed)
		goto done;
	if (backend == NULL) {
		tr_kcfg_fail(&k, "out of memory");
		goto done;
	}
	if (strcmp(backend, "openai") == 0) {
		c->backend = GEN_OPENAI;
	} else if (strcmp(backend, "extractive") == 0) {
		c->backend = GEN_EXTRACTIVE;
	} else {
		tr_kcfg_fail(&k, "backend: unknown backend \"%.40s\" (available: \"extractive\", "
		                 "\"openai\")",
		             backend);
		goto done;
	}
	int oai = c->backend == GEN_OPENAI;
	for (const char *const *p = oai ? extractive_only : openai_only; *p != NULL; p++)
		if (tr_kcfg_get(&k, *p) != NULL) {
			tr_kcfg_fail(&k, "%s: only used with backend \"%s\"", *p,
			             oai ? "extractive" : "openai");
			goto done;
		}
	if (oai && tr_kcfg_get(&k, "url") == NULL) {
		tr_kcfg_fail(&k, "url: required with backend \"openai\" (the server's base URL, "
		                 "e.g. \"http://127.0.0.1:8000/v1\")");
		goto done;
	}
	if (oai && tr_kcfg_get(&k, "model") == NULL) {
		tr_kcfg_fail(&k, "model: required with backend \"openai\" (the model the server "
		                 "serves)");
		goto done;
	}
	c->model = tr_kcfg_str(&k, "model", "extractive");
	c->prompt = tr_kcfg_str(&k, "prompt", default_prompt);
	c->fallback = tr_kcfg_str(&k, "fallback", default_fallback);
	c->temperature = tr_kcfg_num(&k, "temperature", 0.0, 0.0, 2.0);
	c->max_tokens = (uint32_t)tr_kcfg_int(&k, "max_tokens", 256, 16, 32768);
	c->max_sentences = (uint32_t)tr_kcfg_int(&k, "max_sentences", 3, 1, TR_GEN_SENTENCES_MAX);
	c->history = (uint32_t)tr_kcfg_int(&k, "history", 4, 0, 64);
	c->sessions = (uint32_t)tr_kcfg_int(&k, "sessions", 1024, 1, 100000);
	c->context_tokens = (uint32_t)tr_kcfg_int(&k, "context_tokens", 2048, 256, 1048576);
	c->stream = tr_kcfg_bool(&k, "stream", oai);
	if (oai) {
		url = tr_kcfg_str(&k, "url", NULL);
		c->api_key_env = tr_kcfg_str(&k, "api_key_env", NULL);
		c->system = tr_kcfg_str(&k, "system", NULL);
		c->connect_ms = cfg_ms(&k, "connect_timeout", 2000, 600000, "10m");
		c->first_byte_ms = cfg_ms(&k, "first_byte_timeout", 10000, 3600000, "1h");
		c->timeout_ms = cfg_ms(&k, "timeout", 60000, 3600000, "1h");
		c->concurrency = (uint32_t)tr_kcfg_int(&k, "concurrency", 64, 1, CONCURRENCY_MAX);
	}
	if (k.failed)
		goto done;
	if (c->model == NULL || c->prompt == NULL || c->fallback == NULL ||
	    (oai && (url == NULL || (tr_kcfg_get(&k, "api_key_env") && !c->api_key_env) ||
	             (tr_kcfg_get(&k, "system") && !c->system)))) {
		tr_kcfg_fail(&k, "out of memory");
		goto done;
	}
	if (c->model[0] == '\0' || strlen(c->model) > 128 ||
	    !tr_gen_utf8_valid(c->model, strlen(c->model))) {
		tr_kcfg_fail(&k, "model: must be 1 to 128 bytes of UTF-8");
		goto done;
	}
	if (oai) {
		check_url(&k, c, url);
		if (k.failed)
			goto done;
		if (c->api_key_env != NULL && !env_name_ok(c->api_key_env)) {
			/* Never echoed: it may be the key itself, put there by mistake. */
			tr_kcfg_fail(&k, "api_key_env: must be the name of an environment variable "
			                 "(letters, digits, _), not the key itself");
			goto done;
		}
		if (c->system != NULL &&
		    (strlen(c->system) > SYSTEM_MAX || !tr_gen_utf8_valid(c->system, strlen(c->system)))) {
			tr_kcfg_fail(&k, "system: must be UTF-8 of at most %u bytes", SYSTEM_MAX);
			goto done;
		}
		/* A part longer than the whole is a mistake when both are written;
		 * a default part just shrinks to a shorter timeout. */
		static const char *const parts[] = {"first_byte_timeout", "connect_timeout"};
		uint32_t *pv[] = {&c->first_byte_ms, &c->connect_ms};
		for (int i = 0; i < 2; i++) {
			if (*pv[i] <= c->timeout_ms)
				continue;
			if (tr_kcfg_get(&k, parts[i]) == NULL) {
				*pv[i] = c->timeout_ms;
				continue;
			}
			tr_kcfg_fail(&k, "%s: must not be longer than timeout (%u ms), got %u ms",
			             parts[i], c->timeout_ms, *pv[i]);
			goto done;
		}
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
	if (c->system != NULL)
		c->prompt_fixed += strlen(c->system);
	uint32_t room = c->context_tokens - c->max_tokens;
	if (tr_gwin_tokens(c->prompt_fixed) >= room)
		tr_kcfg_fail(&k,
		             "prompt: the template (~%u tokens) leaves no room in context_tokens (%u) "
		             "after max_tokens (%u)",
		             tr_gwin_tokens(c->prompt_fixed), c->context_tokens, c->max_tokens);
done:
	tr__free(backend);
	tr__free(url);
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
	/* The client first: once it is joined no message of it can come, and
	 * the asks it was answering can go. The runtime answers each of them
	 * (its `owed` record): TR_ESHUTDOWN, or TR_ECRASHED after a crash. */
	tr_oai_stop(s->oai);
	s->oai = NULL;
	for (uint32_t i = 0; s->calls != NULL && i < s->cfg.concurrency; i++) {
		tr_msg_free(s->calls[i].req);
		tr__free(s->calls[i].order);
	}
	tr__free(s->calls);
	tr__free(s->freev);
	s->calls = NULL;
	s->freev = NULL;
	if (s->api_key != NULL) {
		memset(s->api_key, 0, strlen(s->api_key));
		tr__free(s->api_key);
		s->api_key = NULL;
	}
	tr_buf_free(&s->prompt);
	tr_buf_free(&s->tmp);
	tr_buf_free(&s->json);
	tr_gwin_free(s->win);
	tr_gen_ex_free(s->ex);
	tr_buf_free(&s->delta);
	cfg_free(&s->cfg);
	s->win = NULL;
	s->ex = NULL;
}

/* The openai backend's part of init: slots, the key, the client. */
static int oai_init(tr_ctx *ctx, gen_st *s)
{
	const gen_cfg *c = &s->cfg;
	s->calls = tr__calloc(c->concurrency, sizeof(*s->calls));
	s->freev = tr__malloc(c->concurrency * sizeof(*s->freev));
	if (s->calls == NULL || s->freev == NULL)
		return TR_ENOMEM;
	for (uint32_t i = 0; i < c->concurrency; i++)
		s->freev[i] = c->concurrency - 1 - i;
	s->nfree = c->concurrency;
	if (c->api_key_env != NULL) {
		/* Read once: a key rotated in the environment needs a restart. A
		 * missing one fails every step with a message that names it
		 * (init has no one to tell, and a crash loop would hide it). */
		const char *key = getenv(c->api_key_env);
		if (key == NULL || key[0] == '\0')
			s->key_missing = true;
		else if ((s->api_key = tr__strndup(key, strlen(key))) == NULL)
			return TR_ENOMEM;
	}
	tr_oai_cfg oc = {
		.node = tr_ctx_node(ctx),
		.owner = tr_self(ctx),
		.url = c->url,
		.api_key = s->api_key,
		.connect_ms = c->connect_ms,
		.first_byte_ms = c->first_byte_ms,
		.max_conns = c->concurrency,
	};
	return tr_oai_start(&oc, &s->oai);
}

static int gen_init(tr_ctx *ctx, void *state, const void *arg)
{
	gen_st *s = state;
	char err[512];
	int rc = cfg_read(arg, &s->cfg, err, sizeof(err));
	if (rc != TR_OK)
		return rc;
	tr_buf_init(&s->delta);
	tr_buf_init(&s->prompt);
	tr_buf_init(&s->tmp);
	tr_buf_init(&s->json);
	if (tr_gen_ex_new(&s->ex) != TR_OK)
		goto nomem;
	/* The seed only spreads session ids over chains; an instance's own
	 * address and the clock differ between instances and runs. */
	if (s->cfg.history > 0 &&
	    tr_gwin_new(s->cfg.sessions, s->cfg.history,
	                tr_now_ns() ^ (uint64_t)(uintptr_t)s, &s->win) != TR_OK)
		goto nomem;
	if (s->cfg.backend == GEN_OPENAI && (rc = oai_init(ctx, s)) != TR_OK) {
		gen_terminate(ctx, s, rc);
		return rc;
	}
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

/* A delta for the ask req (generate.h) with `body` (the message takes
 * over the reference); NULL without memory (body released). */
static tr_msg *delta_msg(const tr_msg *req, tr_body *body)
{
	tr_msg *d = tr_msg_new();
	if (d == NULL) {
		tr_body_unref(body);
		return NULL;
	}
	d->tag = TR_TAG_STEP_DELTA;
	d->flags = TR_MSGF_SYSTEM; /* ordered with the reply (generate.h) */
	d->corr = req->corr;
	d->trace_hi = req->trace_hi;
	d->trace_lo = req->trace_lo;
	d->tenant = req->tenant;
	d->deadline = req->deadline;
	d->body = body;
	return d;
}

/* Packs {text = s[0..n)} into s->delta and makes it a body. */
static tr_body *delta_body(gen_st *s, const char *t, size_t n)
{
	msgpack_packer pk;
	s->delta.len = 0;
	tr__mp_packer(&pk, &s->delta);
	if (msgpack_pack_map(&pk, 1) != 0 || tr__mp_pack_cstr(&pk, "text") != 0 ||
	    tr_kpack_str(&pk, t, n) != TR_OK)
		return NULL;
	return tr_body_new(s->delta.data, s->delta.len);
}

/* Sends the answer's chunks to the asker (generate.h), best effort. */
static void stream(tr_ctx *ctx, gen_st *s, const tr_msg *req, const tr_gen_answer *a)
{
	size_t from = 0;
	if (tr_ref_is_none(req->from))
		return;
	for (uint32_t i = 0; i < a->nchunks; i++) {
		tr_body *b = delta_body(s, a->text + from, a->chunk_end[i] - from);
		tr_msg *d;
		from = a->chunk_end[i];
		if (b == NULL || (d = delta_msg(req, b)) == NULL)
			return;
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

/* ---- the openai backend -------------------------------------------------- */

static int dump_cb(const char *buf, size_t size, void *data)
{
	return tr__buf_append(data, buf, size) == TR_OK ? 0 : -1;
}

/* Appends {role, content = t[0..n)} to msgs (with invalid UTF-8 repaired
 * unless `valid`). 0, or -1 without memory. */
static int add_message(gen_st *s, json_t *msgs, const char *role, const char *t, size_t n,
                       int valid)
{
	json_t *o = json_object();
	if (o == NULL)
		return -1;
	if (!valid) {
		s->tmp.len = 0;
		if (tr_gen_utf8_repair(&s->tmp, t, n) != TR_OK) {
			json_decref(o);
			return -1;
		}
		t = s->tmp.len ? (const char *)s->tmp.data : "";
		n = s->tmp.len;
	}
	if (json_object_set_new(o, "role", json_string(role)) != 0 ||
	    json_object_set_new(o, "content", json_stringn(n ? t : "", n)) != 0) {
		json_decref(o);
		return -1;
	}
	return json_array_append_new(msgs, o); /* takes o, even when it fails */
}

/* The template with {question} and {context} (the chosen passages,
 * rendered as window.h says) filled in, into s->prompt, valid UTF-8. */
static int build_prompt(gen_st *s, const char *q, size_t qn, size_t np, const tr_gwin_fit *fit)
{
	const char *tp = s->cfg.prompt;
	const char *ph[2] = {strstr(tp, "{question}"), strstr(tp, "{context}")};
	tr_gwin_fit pf = *fit;
	int first = ph[0] < ph[1] ? 0 : 1;
	const char *cur = tp;
	pf.turns = 0; /* turns go as messages of their own */
	s->prompt.len = 0;
	for (int i = 0; i < 2; i++) {
		int w = i == 0 ? first : 1 - first;
		if (tr__buf_append(&s->prompt, cur, (size_t)(ph[w] - cur)) != TR_OK)
			return TR_ENOMEM;
		if (w == 0) {
			if (tr_gen_utf8_repair(&s->prompt, q, qn) != TR_OK)
				return TR_ENOMEM;
			cur = ph[w] + sizeof("{question}") - 1;
		} else {
			s->tmp.len = 0;
			if (tr_gwin_render(NULL, s->items, np, &pf, &s->tmp) != TR_OK ||
			    tr_gen_utf8_repair(&s->prompt, (const char *)s->tmp.data, s->tmp.len) != TR_OK)
				return TR_ENOMEM;
			cur = ph[w] + sizeof("{context}") - 1;
		}
	}
	return tr__buf_append(&s->prompt, cur, strlen(cur));
}

/* Builds the request for the step ask m, takes m and submits it. */
static int oai_ask(tr_ctx *ctx, gen_st *s, tr_msg *m, const char *q, size_t qn,
                   const tr_gwin_sess *sess, const tr_gwin_fit *fit, size_t np, size_t fixed)
{
	const gen_cfg *c = &s->cfg;
	uint32_t total = c->timeout_ms;
	int by_deadline = 0, bad;

	if (s->nfree == 0)
		return tr_step_fail(ctx, m, TR_EREJECTED,
		                    "openai: %u requests in flight already (concurrency)",
		                    c->concurrency);
	if (s->key_missing)
		return tr_step_fail(ctx, m, TR_EFAILED,
		                    "openai: api_key_env: the environment variable %s is not set",
		                    c->api_key_env);
	if (m->deadline != 0) {
		uint64_t now = tr_wall_us();
		if (m->deadline <= now)
			return tr_step_fail(ctx, m, TR_ETIMEDOUT, "openai: the step's deadline has passed");
		uint64_t left = (m->deadline - now + 999) / 1000;
		if (left < total) {
			total = (uint32_t)left;
			by_deadline = 1;
		}
	}

	/* {model, messages: [system?, (user, assistant) per turn, user],
	 *  temperature, max_tokens, stream, stream_options?} */
	json_t *root = json_object(), *msgs = json_array();
	bad = root == NULL || msgs == NULL || build_prompt(s, q, qn, np, fit) != TR_OK;
	if (!bad && c->system != NULL)
		bad = add_message(s, msgs, "system", c->system, strlen(c->system), 1) != 0;
	for (uint32_t b = fit->turns; b > 0 && !bad; b--) {
		const char *hq, *ha;
		size_t hqn, han;
		if (tr_gwin_turn(sess, b - 1, &hq, &hqn, &ha, &han) != TR_OK)
			break;
		bad = add_message(s, msgs, "user", hq, hqn, 0) != 0 ||
		      add_message(s, msgs, "assistant", ha, han, 0) != 0;
	}
	if (!bad)
		bad = add_message(s, msgs, "user", (const char *)s->prompt.data, s->prompt.len, 1) != 0;
	if (root != NULL) {
		/* json_object_set_new takes its value whatever happens. */
		bad |= json_object_set_new(root, "messages", msgs) != 0;
		msgs = NULL;
		bad |= json_object_set_new(root, "model", json_string(c->model)) != 0;
		bad |= json_object_set_new(root, "temperature", json_real(c->temperature)) != 0;
		bad |= json_object_set_new(root, "max_tokens", json_integer(c->max_tokens)) != 0;
		bad |= json_object_set_new(root, "stream", json_boolean(c->stream)) != 0;
		if (c->stream) {
			json_t *so = json_object();
			bad |= so == NULL || json_object_set_new(so, "include_usage", json_true()) != 0;
			bad |= json_object_set_new(root, "stream_options", so) != 0;
		}
	}
	json_decref(msgs);
	s->json.len = 0;
	if (!bad)
		bad = json_dump_callback(root, dump_cb, &s->json,
		                         JSON_COMPACT | JSON_REAL_PRECISION(6)) != 0;
	json_decref(root);
	char *body = bad ? NULL : tr__malloc(s->json.len);
	if (body == NULL)
		return tr_step_fail(ctx, m, TR_ENOMEM, "out of memory");
	memcpy(body, s->json.data, s->json.len);

	uint32_t slot = s->freev[s->nfree - 1];
	gen_call *call = &s->calls[slot];
	if (fit->passages > call->order_cap) {
		uint16_t *no = tr__realloc(call->order, fit->passages * sizeof(*no));
		if (no == NULL) {
			tr__free(body);
			return tr_step_fail(ctx, m, TR_ENOMEM, "out of memory");
		}
		call->order = no;
		call->order_cap = fit->passages;
	}
	for (size_t i = 0; i < np; i++)
		if (s->items[i].pos > 0)
			call->order[s->items[i].pos - 1] = (uint16_t)i;
	call->id = (++s->seq << 16) | slot;
	call->prompt_tokens = tr_gwin_tokens(fixed + fit->bytes);
	call->fit = *fit;
	call->deltas = 0;
	call->broken = false;
	int rc = tr_oai_submit(s->oai, call->id, body, s->json.len, c->stream, total, by_deadline);
	if (rc != TR_OK)
		return tr_step_fail(ctx, m, rc == TR_ENOMEM ? TR_ENOMEM : TR_EFAILED, "openai: %s",
		                    tr_strerror(rc));
	s->nfree--;
	call->req = tr_take(ctx); /* answered when the client's DONE comes */
	return TR_OK;
}

/* An error reply with {message, retry_after_ms} (the kit's tr_step_fail
 * has no room for the second). */
static int fail_ra(tr_ctx *ctx, const tr_msg *req, int err, const char *msg, size_t n,
                   int64_t ra_ms)
{
	tr_buf b;
	msgpack_packer pk;
	if (ra_ms < 0)
		return tr_step_fail(ctx, req, err, "%.*s", (int)(n > 500 ? 500 : n), msg);
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	tr_msg *rep = tr_msg_new();
	if (rep == NULL || msgpack_pack_map(&pk, 2) != 0 || tr__mp_pack_cstr(&pk, "message") != 0 ||
	    tr_kpack_str(&pk, msg, n) != TR_OK || tr__mp_pack_cstr(&pk, "retry_after_ms") != 0 ||
	    msgpack_pack_int64(&pk, ra_ms) != 0 || (rep->body = tr_body_new(b.data, b.len)) == NULL) {
		tr_msg_free(rep);
		tr_buf_free(&b);
		return tr_reply_error(ctx, req, err);
	}
	tr_buf_free(&b);
	rep->flags = TR_MSGF_ERROR;
	rep->err = err;
	return tr_reply(ctx, req, rep);
}

static int64_t kmsg_int(const tr_kmsg *k, const char *key)
{
	const msgpack_object *o = tr_kmsg_get(k, key);
	return o != NULL && o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 < INT64_MAX
	           ? (int64_t)o->via.u64
	           : -1;
}

/* The reply to req from the client's DONE message d. */
static int oai_answer(tr_ctx *ctx, gen_st *s, gen_call *call, const tr_msg *req, tr_msg *d)
{
	const gen_cfg *c = &s->cfg;
	tr_kmsg dk, k;
	tr_kout o;
	const char *text = "", *q = "", *sid = NULL;
	size_t tn = 0, qn = 0, sidn = 0;
	int rc;

	if (d->body == NULL || tr_kmsg_open(&dk, d) != TR_OK) {
		if (d->body != NULL)
			tr_kmsg_close(&dk);
		return tr_step_fail(ctx, req, d->err ? d->err : TR_ENOMEM, "out of memory");
	}
	if (d->err != TR_OK) {
		const char *em = "openai: failed";
		size_t en = strlen(em);
		(void)tr_kmsg_str(&dk, "message", &em, &en);
		rc = fail_ra(ctx, req, d->err, em, en, kmsg_int(&dk, "retry_after_ms"));
		tr_kmsg_close(&dk);
		return rc;
	}
	(void)tr_kmsg_str(&dk, "text", &text, &tn);
	int64_t ptok = kmsg_int(&dk, "prompt_tokens"), ctok = kmsg_int(&dk, "completion_tokens");
	if (tn == 0) { /* nothing said: the honest answer (no delta came either) */
		text = c->fallback;
		tn = strlen(text);
	}
	/* No delta so far (a plain JSON answer, or the fallback): the whole
	 * answer as one, so that the deltas still add up to it. */
	if (c->stream && (req->arg & TR_STEP_DELTAS) && call->deltas == 0 && !call->broken &&
	    !tr_ref_is_none(req->from)) {
		tr_body *b = delta_body(s, text, tn);
		tr_msg *dm = b ? delta_msg(req, b) : NULL;
		if (dm != NULL)
			(void)tr_send(ctx, req->from, dm);
	}

	/* The ask's own message, read again: the question and session for the
	 * history, the passages for `sources`. */
	if (tr_kmsg_open(&k, req) != TR_OK) { /* it opened at receive: cannot happen */
		tr_kmsg_close(&k);
		tr_kmsg_close(&dk);
		return tr_step_fail(ctx, req, TR_EINVAL, "the message is not a table");
	}
	(void)tr_kmsg_str(&k, "text", &q, &qn);
	while (qn > 0 && is_ws(q[0]))
		q++, qn--;
	while (qn > 0 && is_ws(q[qn - 1]))
		qn--;
	if (tr_kmsg_str(&k, "session", &sid, &sidn) != TR_OK)
		sid = NULL;
	const msgpack_object *pl = tr_kmsg_get(&k, "passages");

	tr_kout_init(&o);
	msgpack_packer *pk = tr_kout_key(&o, "answer");
	rc = tr_kpack_str(pk, text, tn);
	pk = tr_kout_key(&o, "sources");
	if (msgpack_pack_array(pk, call->fit.passages) != 0)
		rc = TR_ENOMEM;
	for (uint32_t i = 0; i < call->fit.passages && rc == TR_OK; i++) {
		uint32_t idx = call->order[i];
		const msgpack_object *src = NULL;
		if (pl != NULL && pl->type == MSGPACK_OBJECT_ARRAY && idx < pl->via.array.size)
			src = tr_kobj_get(&pl->via.array.ptr[idx], "source");
		s->tmp.len = 0;
		if (src != NULL && src->type == MSGPACK_OBJECT_STR) {
			if (tr_gen_clean(&s->tmp, src->via.str.ptr, src->via.str.size, TR_GEN_SOURCE_LEN,
			                 NULL) == (size_t)-1)
				rc = TR_ENOMEM;
		} else {
			char nm[24];
			int w = snprintf(nm, sizeof(nm), "passage %u", idx + 1);
			rc = tr__buf_append(&s->tmp, nm, (size_t)w);
		}
		if (rc == TR_OK)
			rc = tr_kpack_str(pk, s->tmp.len ? (const char *)s->tmp.data : "", s->tmp.len);
	}
	pk = tr_kout_key(&o, "usage");
	if (rc == TR_OK)
		rc = msgpack_pack_map(pk, 4) == 0 && tr__mp_pack_cstr(pk, "prompt_tokens") == 0 &&
		             msgpack_pack_uint64(pk, ptok >= 0 ? (uint64_t)ptok : call->prompt_tokens) ==
		                 0 &&
		             tr__mp_pack_cstr(pk, "completion_tokens") == 0 &&
		             msgpack_pack_uint64(pk, ctok >= 0 ? (uint64_t)ctok : tr_gwin_tokens(tn)) ==
		                 0 &&
		             tr__mp_pack_cstr(pk, "model") == 0 && tr__mp_pack_cstr(pk, c->model) == 0 &&
		             tr__mp_pack_cstr(pk, "estimated") == 0 &&
		             (ptok >= 0 && ctok >= 0 ? msgpack_pack_false(pk) : msgpack_pack_true(pk)) == 0
		         ? TR_OK
		         : TR_ENOMEM;
	if (rc == TR_OK) {
		static const char *const ck[] = {"turns", "passages", "tokens"};
		uint32_t cv[] = {call->fit.turns, call->fit.passages, tr_gwin_tokens(call->fit.bytes)};
		rc = pack_map_u32(tr_kout_key(&o, "context"), ck, cv, 3);
	}
	/* Remember the turn (best effort, as extractive does). The session is
	 * looked up again: other steps may have moved it meanwhile. */
	if (s->win != NULL && sid != NULL && sidn > 0 && sidn <= SESSION_MAX) {
		unsigned char key[4 + SESSION_MAX];
		tr_gwin_sess *sess;
		memcpy(key, &req->tenant, 4);
		memcpy(key + 4, sid, sidn);
		if ((sess = tr_gwin_get(s->win, key, 4 + sidn)) != NULL)
			(void)tr_gwin_push(sess, q, qn, text, tn, req->attempt > 0);
	}
	tr_kmsg_close(&k);
	tr_kmsg_close(&dk);
	if (rc != TR_OK) {
		tr_kout_free(&o);
		return tr_step_fail(ctx, req, TR_ENOMEM, "out of memory");
	}
	return tr_kout_reply(ctx, req, &o);
}

/* A message from the client (generate.h): a delta to pass on, or the
 * DONE that answers a call. */
static int on_client(tr_ctx *ctx, gen_st *s, tr_msg *m)
{
	uint32_t slot = (uint32_t)(m->arg & 0xffffu);
	gen_call *call;
	if (slot >= s->cfg.concurrency)
		return TR_OK;
	call = &s->calls[slot];
	if (call->req == NULL || call->id != m->arg)
		return TR_OK; /* not one of ours */
	if (m->tag == TR_GEN_TAG_OAI_DELTA) {
		const tr_msg *req = call->req;
		/* Every chunk for a run that reads them; else the first only,
		 * the engine's first byte (engine.h, TR_STEP_DELTAS). */
		if (s->cfg.stream && !call->broken && m->body != NULL && !tr_ref_is_none(req->from) &&
		    ((req->arg & TR_STEP_DELTAS) || call->deltas == 0)) {
			/* The client packed {text = chunk}: pass the same body on. */
			tr_msg *d = delta_msg(req, tr_body_ref(m->body));
			if (d == NULL || tr_send(ctx, req->from, d) != TR_OK)
				call->broken = true; /* a prefix, never a gap */
			else
				call->deltas++;
		}
		return TR_OK;
	}
	tr_msg *req = call->req;
	call->req = NULL;
	s->freev[s->nfree++] = slot;
	int rc = oai_answer(ctx, s, call, req, m);
	tr_msg_free(req);
	return rc;
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

	/* Only asks are steps; anything else (a stray send) needs no answer,
	 * except what our own client sends: system messages from no actor. */
	if (!(m->flags & TR_MSGF_ASK)) {
		if ((m->tag == TR_GEN_TAG_OAI_DELTA || m->tag == TR_GEN_TAG_OAI_DONE) &&
		    (m->flags & TR_MSGF_SYSTEM) && tr_ref_is_none(m->from) && s->oai != NULL)
			return on_client(ctx, s, m);
		return TR_OK;
	}
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
	if (c->backend == GEN_OPENAI) {
		rc = oai_ask(ctx, s, m, q, qn, sess, &fit, np, fixed);
		tr_kmsg_close(&k);
		return rc;
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
	/* The answer follows at once: chunks only for a run that reads them
	 * (engine.h, TR_STEP_DELTAS). */
	if (c->stream && (m->arg & TR_STEP_DELTAS))
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
