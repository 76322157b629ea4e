/*
 * actors/rag/rag.c -- the `rag` kind: retrieval. For a step's `text` it
 * adds `passages` = [{text, source, score}], best first, and `sources`,
 * the files those passages come from (unique, best first).
 *
 * Backends:
 *  - "bm25" (the default): the embedded index (index.c) over a folder of
 *    text and markdown files, shared by all instances that read the same
 *    folder with the same settings and rebuilt when the files change
 *    (shared.c). Cost per query: tokenising the text, then one pass over
 *    the postings of its terms (at most RAG_QUERY_TERMS of them) into a
 *    per-instance score array; no allocation after the first query on an
 *    index.
 *  - "postgres": the chunks `troupe ingest` stored in troupe_chunks
 *    (db/migrations/001_documents.sql), ranked by the server with
 *    ts_rank_cd over the GIN-indexed tsvector. Each step is one query to
 *    the node's pool (db/pg.h, asked by name, never blocking the worker):
 *    RAG_PG_SQL below, with $1 = the words of the message's text (see
 *    pg_words: its first RAG_QUERY_TERMS distinct words, stop words and
 *    anything the server would refuse left out), $2 = the request's
 *    tenant ("" when none), $3 = top_k. The words are OR-ed
 *    (plainto_tsquery's '&' turned into '|'), so a passage that holds
 *    some of them ranks, the ones with more of them first. The text is
 *    only ever a parameter: it cannot become SQL.
 *
 * Settings:
 *   backend    "bm25" | "postgres" (string, default "bm25")
 *   top_k      passages at most (integer 1..100, default 4)
 *   min_score  passages scoring below are left out (number >= 0, default
 *              0 with both backends; the scales differ: BM25 scores are
 *              unbounded sums, ts_rank_cd's are mostly below 1)
 *   bm25 only (an error with backend = "postgres", which has no folder):
 *   dir        folder of the files, relative to the node's directory
 *              (string, default "docs")
 *   chunk, overlap   words per chunk (default 120) and shared by two
 *              consecutive chunks (default 30, or chunk / 4 when smaller)
 *   k1, b      BM25's parameters (default 1.2 and 0.75)
 *   extensions suffixes of the files read (default {".md", ".txt"})
 *   watch      rebuild when the files change (boolean, default true)
 *
 * With backend = "postgres", errors of the pool answer the step: its
 * timeouts (the ask's, or statement_timeout) as TR_ETIMEDOUT ("timeout"),
 * a full pool queue as TR_EREJECTED ("overload"), anything else (the
 * server down, a missing table) as TR_EFAILED ("error"), each with the
 * message "rag: postgres: <the pool's message>". The ask's timeout is
 * the run's time left (msg->deadline), at most RAG_PG_TIMEOUT_MS.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "actors/kinds.h"
#include "actors/kit.h"
#include "actors/rag/rag.h"
#include "core/alloc.h"
#include "db/pg.h"
#include "lua/tlua.h" /* TR_TAG_STEP */
#include "msg/msg_int.h" /* tr__buf_append */
#include "pipe/mp.h"

static const char *const rag_keys[] = {"dir",        "chunk", "overlap", "top_k",
                                       "min_score",  "k1",    "b",       "extensions",
                                       "watch",      "backend", NULL};
enum { RAG_BM25, RAG_PG };
static const char *const backends[] = {"bm25", "postgres", NULL};
/* Settings of the embedded index only. */
static const char *const bm25_keys[] = {"dir", "chunk", "overlap", "k1", "b", "extensions",
                                        "watch", NULL};

/* The postgres backend's query (see the header). The document's path is
 * joined in for `sources`, as the embedded index gives file paths there. */
#define RAG_PG_SQL                                                                        \
	"SELECT c.body, c.source, ts_rank_cd(c.tsv, q) AS score, d.source AS path "            \
	"FROM troupe_chunks c JOIN troupe_documents d ON d.id = c.document_id, "              \
	"to_tsquery('english', replace(plainto_tsquery('english', $1)::text, '&', '|')) AS q " \
	"WHERE c.tenant = $2 AND c.tsv @@ q ORDER BY score DESC, c.id LIMIT $3"
/* The ask's timeout when the step has no deadline, and its upper bound. */
#define RAG_PG_TIMEOUT_MS 30000u
static const char *const default_ext[] = {".md", ".txt"};

/* Timer tag: every RAG_WATCH_MS an instance moves to the newest index
 * even when it gets no query, so an old index is freed within a period
 * of a swap rather than held by an idle instance. */
#define TAG_REFRESH 0x52414701u

typedef struct rag_cfg {
	int backend; /* RAG_BM25, RAG_PG */
	char *dir;
	uint32_t chunk, overlap, top_k;
	double min_score, k1, b;
	char **ext;
	size_t next;
	int watch;
} rag_cfg;

static void cfg_free(rag_cfg *c)
{
	tr__free(c->dir);
	tr_kstrv_free(c->ext, c->next);
	memset(c, 0, sizeof(*c));
}

static int cfg_ext(tr_kcfg *k, rag_cfg *c)
{
	if (tr_kcfg_get(k, "extensions") == NULL) {
		size_t n = sizeof(default_ext) / sizeof(default_ext[0]);
		if ((c->ext = tr__calloc(n, sizeof(char *))) == NULL)
			return tr_kcfg_fail(k, "out of memory");
		for (size_t i = 0; i < n; i++) {
			if ((c->ext[i] = tr__strndup(default_ext[i], strlen(default_ext[i]))) == NULL)
				return tr_kcfg_fail(k, "out of memory");
			c->next = i + 1;
		}
		return TR_OK;
	}
	if (tr_kcfg_strv(k, "extensions", &c->ext, &c->next) != TR_OK)
		return TR_EINVAL;
	if (c->next == 0)
		return tr_kcfg_fail(k, "extensions: must list at least one suffix, such as \".md\"");
	for (size_t i = 0; i < c->next; i++) {
		char *e = c->ext[i];
		size_t n = strlen(e);
		if (n < 2 || n > 32 || e[0] != '.' || strchr(e, '/') != NULL)
			return tr_kcfg_fail(k,
			                    "extensions: element %zu: expected a suffix such as \".md\", "
			                    "got \"%s\"",
			                    i + 1, e);
		for (size_t j = 0; j < n; j++)
			if (e[j] >= 'A' && e[j] <= 'Z')
				e[j] = (char)(e[j] + ('a' - 'A'));
	}
	return TR_OK;
}

/* Reads and checks a's settings: the one code path of check and init. */
static int cfg_read(const tr_actor_spec *a, rag_cfg *c, char *err, size_t errlen)
{
	tr_kcfg k;
	memset(c, 0, sizeof(*c));
	if (tr_kcfg_open(&k, a, err, errlen) != TR_OK) {
		tr_kcfg_close(&k);
		return TR_EINVAL;
	}
	tr_kcfg_keys(&k, rag_keys);
	char *backend = tr_kcfg_str(&k, "backend", "bm25");
	if (backend != NULL && !k.failed) {
		int ok = 0;
		for (int b = 0; backends[b] != NULL && !ok; b++)
			if (strcmp(backends[b], backend) == 0) {
				ok = 1;
				c->backend = b;
			}
		if (!ok)
			tr_kcfg_fail(&k, "backend: '%s' is not available (backends: bm25, postgres)",
			             backend);
	}
	tr__free(backend);
	if (c->backend == RAG_PG && !k.failed) {
		/* a setting of the embedded index would silently do nothing */
		for (const char *const *b = bm25_keys; *b != NULL && !k.failed; b++)
			if (tr_kcfg_get(&k, *b) != NULL)
				tr_kcfg_fail(&k, "%s: only with backend \"bm25\" (the postgres backend reads "
				             "the chunks `troupe ingest` stored in troupe_chunks)", *b);
		if (!k.failed && a->cfg != NULL && !a->cfg->postgres.on)
			tr_kcfg_fail(&k, "backend \"postgres\" queries the node's PostgreSQL pool; "
			             "declare postgres { conninfo = \"...\" }");
	}
	c->dir = tr_kcfg_str(&k, "dir", "docs");
	if (c->dir != NULL && c->dir[0] == '\0')
		tr_kcfg_fail(&k, "dir: must not be empty (a folder, relative to the node's directory)");
	c->chunk = (uint32_t)tr_kcfg_int(&k, "chunk", 120, 1, 10000);
	/* 30 words, or a quarter of a smaller chunk: a small `chunk` alone
	 * must not be an error about an overlap nobody set */
	uint32_t dflt_overlap = c->chunk / 4 < 30 ? c->chunk / 4 : 30;
	c->overlap = (uint32_t)tr_kcfg_int(&k, "overlap", dflt_overlap, 0, 9999);
	if (!k.failed && c->overlap >= c->chunk)
		tr_kcfg_fail(&k, "overlap: must be less than chunk (%u), got %u", c->chunk, c->overlap);
	c->top_k = (uint32_t)tr_kcfg_int(&k, "top_k", 4, 1, RAG_TOP_MAX);
	c->min_score = tr_kcfg_num(&k, "min_score", 0.0, 0.0, 1e6);
	c->k1 = tr_kcfg_num(&k, "k1", 1.2, 0.0, 10.0);
	c->b = tr_kcfg_num(&k, "b", 0.75, 0.0, 1.0);
	c->watch = tr_kcfg_bool(&k, "watch", 1);
	if (!k.failed)
		cfg_ext(&k, c);
	if (c->dir == NULL && !k.failed)
		tr_kcfg_fail(&k, "out of memory");
	int failed = k.failed;
	tr_kcfg_close(&k);
	if (failed) {
		cfg_free(c);
		return TR_EINVAL;
	}
	return TR_OK;
}

int tr_rag_check(const tr_actor_spec *a, char *err, size_t errlen)
{
	rag_cfg c;
	int rc = cfg_read(a, &c, err, errlen);
	cfg_free(&c);
	return rc;
}

/* ---- the actor ------------------------------------------------------- */

/* A step waiting for the pool's answer: we own req (tr_take). */
typedef struct rag_wait {
	uint64_t corr;
	tr_msg *req;
	uint64_t ms; /* the ask's timeout, for its message */
} rag_wait;

typedef struct rag_actor {
	rag_cfg cfg;
	rag_wait *waits;  /* postgres: steps asked of the pool, oldest first */
	uint32_t nwaits, capwaits;
	tr_buf words;     /* postgres: scratch, the query's words */
	rag_query_opts qo;
	rag_shared *sh;
	rag_index *ix;    /* our reference to the index we query */
	unsigned gen;     /* sh's generation when we took ix */
	rag_scratch scratch;
	rag_hit hits[RAG_TOP_MAX];
} rag_actor;

/* Writes one JSON log line to stderr, as the node's own log does: init
 * has only an error code to return, and "cannot open 'docs'" must reach
 * whoever started the node. */
static void log_error(const char *msg)
{
	struct timespec ts;
	char buf[1200];
	size_t o = 0;
	clock_gettime(CLOCK_REALTIME, &ts);
	for (const unsigned char *p = (const unsigned char *)msg; *p && o + 8 < sizeof(buf); p++) {
		if (*p == '"' || *p == '\\') {
			buf[o++] = '\\';
			buf[o++] = (char)*p;
		} else if (*p < 0x20) {
			o += (size_t)snprintf(buf + o, sizeof(buf) - o, "\\u%04x", *p);
		} else {
			buf[o++] = (char)*p;
		}
	}
	buf[o] = '\0';
	fprintf(stderr, "{\"ts_us\":%llu,\"level\":\"error\",\"msg\":\"%s\"}\n",
	        (unsigned long long)ts.tv_sec * 1000000u + (unsigned long long)(ts.tv_nsec / 1000),
	        buf);
}

static void rag_cleanup(rag_actor *r)
{
	for (uint32_t i = 0; i < r->nwaits; i++)
		tr_msg_free(r->waits[i].req);
	tr__free(r->waits);
	r->waits = NULL;
	r->nwaits = r->capwaits = 0;
	tr_buf_free(&r->words);
	rag_index_unref(r->ix);
	r->ix = NULL;
	rag_shared_release(r->sh);
	r->sh = NULL;
	rag_scratch_free(&r->scratch);
	cfg_free(&r->cfg);
}

static int rag_init(tr_ctx *ctx, void *st, const void *arg)
{
	rag_actor *r = st;
	const tr_actor_spec *a = arg;
	char err[512], serr[480];
	if (a == NULL)
		return TR_EINVAL;
	int rc = cfg_read(a, &r->cfg, err, sizeof(err));
	if (rc != TR_OK) {
		log_error(err);
		return rc;
	}
	r->qo = (rag_query_opts){.k1 = r->cfg.k1, .b = r->cfg.b, .top_k = r->cfg.top_k,
	                         .min_score = r->cfg.min_score};
	if (r->cfg.backend == RAG_PG)
		return TR_OK; /* no index: the pool is found by name at each query */
	rag_shared_opts so = {.dir = r->cfg.dir, .chunk = r->cfg.chunk, .overlap = r->cfg.overlap,
	                      .ext = r->cfg.ext, .next = r->cfg.next, .watch = r->cfg.watch};
	rc = rag_shared_acquire(&so, &r->sh, serr, sizeof(serr));
	if (rc != TR_OK) {
		snprintf(err, sizeof(err), "actor '%s': %s", a->name ? a->name : "?", serr);
		log_error(err);
		rag_cleanup(r);
		return rc;
	}
	/* gen first: a swap between the two reads then only makes the next
	 * query fetch the index again, never keeps an old one */
	r->gen = rag_shared_gen(r->sh);
	r->ix = rag_shared_current(r->sh);
	rc = tr_timer_every(ctx, TAG_REFRESH, RAG_WATCH_MS, NULL);
	if (rc != TR_OK) {
		rag_cleanup(r);
		return rc;
	}
	return TR_OK;
}

/* Moves to the shared entry's newest index if there is one. */
static void refresh(rag_actor *r)
{
	unsigned g = rag_shared_gen(r->sh);
	if (g == r->gen)
		return;
	r->gen = g;
	rag_index *ix = rag_shared_current(r->sh);
	rag_index_unref(r->ix);
	r->ix = ix;
}

static const char *type_name(const msgpack_object *o)
{
	switch (o->type) {
	case MSGPACK_OBJECT_BOOLEAN: return "a boolean";
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "an integer";
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64: return "a number";
	case MSGPACK_OBJECT_ARRAY: return "a list";
	case MSGPACK_OBJECT_MAP: return "a table";
	case MSGPACK_OBJECT_BIN: return "binary data";
	default: return "something else";
	}
}

static int blank(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r' && s[i] != '\f' &&
		    s[i] != '\v')
			return 0;
	return 1;
}

/* Packs passages and sources for hits[0, n) of ix; TR_ENOMEM on failure. */
static int pack_answer(tr_kout *o, const rag_index *ix, const rag_hit *hits, int n)
{
	int bad = 0;
	msgpack_packer *pk = tr_kout_key(o, "passages");
	bad |= msgpack_pack_array(pk, (size_t)n);
	for (int i = 0; i < n; i++) {
		const rag_chunk *c = &ix->chunks[hits[i].chunk];
		const char *src = rag_chunk_source(ix, hits[i].chunk);
		bad |= msgpack_pack_map(pk, 3);
		bad |= tr_kpack_str(pk, "text", 4) | tr_kpack_str(pk, ix->text + c->off, c->len);
		bad |= tr_kpack_str(pk, "source", 6) | tr_kpack_str(pk, src, strlen(src));
		/* four decimals: enough to rank by, and stable to compare */
		bad |= tr_kpack_str(pk, "score", 5) |
		       msgpack_pack_double(pk, round(hits[i].score * 1e4) / 1e4);
	}
	uint32_t files[RAG_TOP_MAX], nf = 0;
	for (int i = 0; i < n; i++) {
		uint32_t f = ix->chunks[hits[i].chunk].file, seen = 0;
		for (uint32_t j = 0; j < nf && !seen; j++)
			seen = files[j] == f;
		if (!seen)
			files[nf++] = f;
	}
	pk = tr_kout_key(o, "sources");
	bad |= msgpack_pack_array(pk, nf);
	for (uint32_t j = 0; j < nf; j++) {
		const char *p = ix->srcs + ix->file_path[files[j]];
		bad |= tr_kpack_str(pk, p, strlen(p));
	}
	return bad ? TR_ENOMEM : TR_OK;
}

/* ---- the postgres backend ------------------------------------------------ */

/* The ask's timeout in ms: the run's time left, else RAG_PG_TIMEOUT_MS;
 * 0 when the deadline has passed. */
static uint64_t pg_timeout_ms(const tr_msg *m)
{
	uint64_t now, left;
	if (m->deadline == 0)
		return RAG_PG_TIMEOUT_MS;
	now = tr_wall_us();
	if (m->deadline <= now)
		return 0;
	left = (m->deadline - now + 999) / 1000;
	return left < RAG_PG_TIMEOUT_MS ? left : RAG_PG_TIMEOUT_MS;
}

/* The error class a pool error keeps when it answers the step (see the
 * header): timeouts stay timeouts, a full pool is overload, the rest is
 * an error (the query is ours: even the server's EINVAL is not the
 * message's fault). */
static int pg_class(int err)
{
	switch (err) {
	case TR_ETIMEDOUT: return TR_ETIMEDOUT;
	case TR_EREJECTED:
	case TR_EFULL:
	case TR_EDROPPED: return TR_EREJECTED;
	case TR_ENOMEM: return TR_ENOMEM;
	default: return TR_EFAILED;
	}
}

/* The length of the valid UTF-8 sequence (2..4 bytes) at p, else 0. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
	unsigned char c = p[0];
	size_t len = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3
	             : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
	if (len == 0 || len > n)
		return 0;
	for (size_t i = 1; i < len; i++)
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	/* no overlong forms, surrogates or code points past U+10FFFF */
	if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] > 0x9f) ||
	    (c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] > 0x8f))
		return 0;
	return len;
}

/*
 * The postgres backend's $1 from the text q: its first RAG_QUERY_TERMS
 * distinct words -- runs of ASCII letters and digits and valid UTF-8
 * sequences, ASCII lower-cased, at most RAG_TERM_MAX bytes, stop words
 * left out -- separated by spaces. The server parses and stems them
 * itself; this bounds the tsquery it builds (a 200 KB message would
 * otherwise overflow its stack) and leaves out what it would refuse
 * (invalid UTF-8, NUL bytes). TR_OK or TR_ENOMEM.
 */
static int pg_words(const char *q, size_t qn, tr_buf *out)
{
	const unsigned char *p = (const unsigned char *)q, *end = p + qn;
	uint32_t off[RAG_QUERY_TERMS], len[RAG_QUERY_TERMS], nw = 0;
	char w[RAG_TERM_MAX];

	out->len = 0;
	while (p < end && nw < RAG_QUERY_TERMS) {
		size_t n = 0, k;
		int toolong = 0;
		while (p < end) {
			if (*p < 0x80)
				k = (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
				            (*p >= 'A' && *p <= 'Z')
				        ? 1
				        : 0;
			else
				k = utf8_seq(p, (size_t)(end - p));
			if (k == 0)
				break;
			if (n + k <= sizeof(w)) {
				for (size_t i = 0; i < k; i++)
					w[n + i] = (char)(p[i] >= 'A' && p[i] <= 'Z' ? p[i] + ('a' - 'A') : p[i]);
				n += k;
			} else {
				toolong = 1;
			}
			p += k;
		}
		if (n == 0 || toolong || rag_stopword(w, n)) {
			if (n == 0)
				p++; /* a separator */
			continue;
		}
		int seen = 0;
		for (uint32_t i = 0; i < nw && !seen; i++)
			seen = len[i] == n && memcmp(out->data + off[i], w, n) == 0;
		if (seen)
			continue;
		if ((out->len > 0 && tr__buf_append(out, " ", 1) != TR_OK) ||
		    tr__buf_reserve(out, n) != TR_OK)
			return TR_ENOMEM;
		off[nw] = (uint32_t)out->len;
		len[nw++] = (uint32_t)n;
		(void)tr__buf_append(out, w, n);
	}
	return TR_OK;
}

/* Sends the step's query to the pool; TR_OK once it is on its way (we
 * then own m: tr_take) or once the step is answered with an error. */
static int pg_query(tr_ctx *ctx, rag_actor *r, tr_msg *m, const char *q, size_t qn)
{
	const char *tenant = m->tenant ? tr_tenant_name(m->tenant) : NULL;
	uint64_t ms = pg_timeout_ms(m), corr;
	tr_ref pool;
	tr_buf b;
	msgpack_packer pk;
	int bad, rc;

	if (ms == 0)
		return tr_step_fail(ctx, m, TR_ETIMEDOUT,
		                    "rag: postgres: the run's deadline passed before the query");
	if (tr_whereis(tr_ctx_node(ctx), TR_PG_NAME, &pool) != TR_OK)
		return tr_step_fail(ctx, m, TR_EFAILED,
		                    "rag: postgres: the node runs no PostgreSQL pool (declare "
		                    "postgres { conninfo = \"...\" })");
	if (r->nwaits == r->capwaits) {
		uint32_t nc = r->capwaits ? r->capwaits * 2 : 16;
		rag_wait *nw = tr__realloc(r->waits, nc * sizeof(*nw));
		if (nw == NULL)
			return tr_step_fail(ctx, m, TR_ENOMEM, "rag: out of memory");
		r->waits = nw;
		r->capwaits = nc;
	}
	if (pg_words(q, qn, &r->words) != TR_OK)
		return tr_step_fail(ctx, m, TR_ENOMEM, "rag: out of memory");
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	if (tenant == NULL)
		tenant = "";
	bad = msgpack_pack_map(&pk, 2) != 0 || tr__mp_pack_cstr(&pk, "sql") != 0 ||
	      tr__mp_pack_cstr(&pk, RAG_PG_SQL) != 0 || tr__mp_pack_cstr(&pk, "params") != 0 ||
	      msgpack_pack_array(&pk, 3) != 0 ||
	      tr_kpack_str(&pk, (const char *)r->words.data, r->words.len) != TR_OK ||
	      tr__mp_pack_cstr(&pk, tenant) != 0 || msgpack_pack_uint32(&pk, r->cfg.top_k) != 0;
	tr_msg *ask = bad ? NULL : tr_msg_new();
	if (ask != NULL && (ask->body = tr_body_new(b.data, b.len)) == NULL) {
		tr_msg_free(ask);
		ask = NULL;
	}
	tr_buf_free(&b);
	if (ask == NULL)
		return tr_step_fail(ctx, m, TR_ENOMEM, "rag: out of memory");
	ask->tag = TR_TAG_PG_QUERY;
	ask->deadline = m->deadline;
	ask->trace_hi = m->trace_hi;
	ask->trace_lo = m->trace_lo;
	ask->tenant = m->tenant;
	rc = tr_ask(ctx, pool, ask, ms, &corr);
	if (rc != TR_OK)
		return tr_step_fail(ctx, m, pg_class(rc), "rag: postgres: %s", tr_strerror(rc));
	r->waits[r->nwaits++] = (rag_wait){corr, tr_take(ctx), ms};
	return TR_OK;
}

/* The string in o (a msgpack str), or "". */
static const char *obj_str(const msgpack_object *o, size_t *n)
{
	if (o == NULL || o->type != MSGPACK_OBJECT_STR) {
		*n = 0;
		return "";
	}
	*n = o->via.str.size;
	return o->via.str.ptr;
}

static double obj_num(const msgpack_object *o)
{
	switch (o == NULL ? MSGPACK_OBJECT_NIL : o->type) {
	case MSGPACK_OBJECT_POSITIVE_INTEGER: return (double)o->via.u64;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: return (double)o->via.i64;
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64: return o->via.f64;
	case MSGPACK_OBJECT_STR: {
		/* numeric comes back as text from some servers: parse it */
		char b[64];
		size_t n = o->via.str.size < sizeof(b) - 1 ? o->via.str.size : sizeof(b) - 1;
		memcpy(b, o->via.str.ptr, n);
		b[n] = '\0';
		return strtod(b, NULL);
	}
	default: return 0;
	}
}

/* Packs passages and sources from the pool's rows [[body, source,
 * score, path], ...] (best first), those scoring at least min_score. */
static int pack_rows(tr_kout *o, const msgpack_object *rows, double min_score)
{
	uint32_t n = 0, nr = rows != NULL && rows->type == MSGPACK_OBJECT_ARRAY ? rows->via.array.size
	                                                                        : 0;
	const msgpack_object *row[RAG_TOP_MAX];
	int bad = 0;

	for (uint32_t i = 0; i < nr && n < RAG_TOP_MAX; i++) {
		const msgpack_object *e = &rows->via.array.ptr[i];
		if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size < 4)
			continue;
		if (obj_num(&e->via.array.ptr[2]) >= min_score)
			row[n++] = e->via.array.ptr;
	}
	msgpack_packer *pk = tr_kout_key(o, "passages");
	bad |= msgpack_pack_array(pk, n);
	for (uint32_t i = 0; i < n; i++) {
		size_t tn, sn;
		const char *t = obj_str(&row[i][0], &tn), *src = obj_str(&row[i][1], &sn);
		bad |= msgpack_pack_map(pk, 3);
		bad |= tr_kpack_str(pk, "text", 4) | tr_kpack_str(pk, t, tn);
		bad |= tr_kpack_str(pk, "source", 6) | tr_kpack_str(pk, src, sn);
		bad |= tr_kpack_str(pk, "score", 5) |
		       msgpack_pack_double(pk, round(obj_num(&row[i][2]) * 1e4) / 1e4);
	}
	/* the documents, unique, in the order of their best passage */
	const msgpack_object *paths[RAG_TOP_MAX];
	uint32_t np = 0;
	for (uint32_t i = 0; i < n; i++) {
		const msgpack_object *p = &row[i][3];
		int seen = p->type != MSGPACK_OBJECT_STR;
		for (uint32_t j = 0; j < np && !seen; j++)
			seen = paths[j]->via.str.size == p->via.str.size &&
			       memcmp(paths[j]->via.str.ptr, p->via.str.ptr, p->via.str.size) == 0;
		if (!seen)
			paths[np++] = p;
	}
	pk = tr_kout_key(o, "sources");
	bad |= msgpack_pack_array(pk, np);
	for (uint32_t j = 0; j < np; j++)
		bad |= tr_kpack_str(pk, paths[j]->via.str.ptr, paths[j]->via.str.size);
	return bad ? TR_ENOMEM : TR_OK;
}

/* The pool's answer rep to the step req (owned: freed here). */
static void pg_answer(tr_ctx *ctx, rag_actor *r, tr_msg *req, uint64_t ms, const tr_msg *rep)
{
	tr_kmsg k;
	int opened = rep->body != NULL && rep->body->len > 0 && tr_kmsg_open(&k, rep) == TR_OK;

	if (rep->flags & TR_MSGF_ERROR) {
		size_t mn = 0, sn = 0;
		const char *msg = opened ? obj_str(tr_kmsg_get(&k, "message"), &mn) : "";
		const char *state = opened ? obj_str(tr_kmsg_get(&k, "sqlstate"), &sn) : "";
		int err = rep->err ? rep->err : TR_EFAILED;
		if (mn == 0 && err == TR_ETIMEDOUT)
			(void)tr_step_fail(ctx, req, err, "rag: postgres: no answer within %llu ms",
			                   (unsigned long long)ms);
		else if (mn == 0)
			(void)tr_step_fail(ctx, req, pg_class(err), "rag: postgres: %s", tr_strerror(err));
		else
			/* 42P01: a table is missing, the usual first-run mistake */
			(void)tr_step_fail(ctx, req, pg_class(err), "rag: postgres: %.*s%s", (int)mn, msg,
			                   sn == 5 && memcmp(state, "42P01", 5) == 0
			                       ? " (run `troupe db migrate` to create the tables)"
			                       : "");
	} else if (!opened) {
		(void)tr_step_fail(ctx, req, TR_EFAILED, "rag: postgres: the pool's answer is not a map");
	} else {
		tr_kout o;
		tr_kout_init(&o);
		if (pack_rows(&o, tr_kmsg_get(&k, "rows"), r->cfg.min_score) != TR_OK) {
			tr_kout_free(&o);
			(void)tr_step_fail(ctx, req, TR_ENOMEM, "out of memory packing the passages");
		} else {
			(void)tr_kout_reply(ctx, req, &o); /* a gone asker is not our error */
		}
	}
	if (rep->body != NULL && rep->body->len > 0)
		tr_kmsg_close(&k);
	tr_msg_free(req);
}

/* A reply: the answer of one of our pool asks (others are ignored). */
static void on_reply(tr_ctx *ctx, rag_actor *r, const tr_msg *m)
{
	for (uint32_t i = 0; i < r->nwaits; i++) {
		if (r->waits[i].corr != m->corr)
			continue;
		tr_msg *req = r->waits[i].req;
		uint64_t ms = r->waits[i].ms;
		/* keep the order: answers mostly come oldest first, so this is
		 * mostly a move of nothing */
		memmove(&r->waits[i], &r->waits[i + 1], (r->nwaits - i - 1) * sizeof(r->waits[0]));
		r->nwaits--;
		pg_answer(ctx, r, req, ms, m);
		return;
	}
}

static int rag_receive(tr_ctx *ctx, void *st, tr_msg *m)
{
	rag_actor *r = st;
	tr_kmsg k;
	const char *q;
	size_t qn;
	if (m->flags & TR_MSGF_REPLY) {
		on_reply(ctx, r, m);
		return TR_OK;
	}
	if (!(m->flags & TR_MSGF_ASK)) {
		if ((m->flags & TR_MSGF_TIMER) && m->tag == TAG_REFRESH)
			refresh(r);
		return TR_OK; /* tells: nothing to answer */
	}
	if (m->tag != TR_TAG_STEP)
		return tr_step_fail(ctx, m, TR_EINVAL, "rag answers pipeline steps only (got tag %u)",
		                    m->tag);
	if (tr_kmsg_open(&k, m) != TR_OK) {
		tr_kmsg_close(&k);
		return tr_step_fail(ctx, m, TR_EINVAL, "the message is not a map");
	}
	int rc = tr_kmsg_str(&k, "text", &q, &qn);
	if (rc != TR_OK || blank(q, qn)) {
		const msgpack_object *t = tr_kmsg_get(&k, "text");
		const char *what = rc == TR_ENOTFOUND ? NULL : rc == TR_OK ? "" : type_name(t);
		tr_kmsg_close(&k);
		if (what == NULL)
			return tr_step_fail(ctx, m, TR_EINVAL,
			                    "the message has no 'text' (the query to search for)");
		if (what[0] == '\0')
			return tr_step_fail(ctx, m, TR_EINVAL, "'text' is empty: nothing to search for");
		return tr_step_fail(ctx, m, TR_EINVAL, "'text' must be a string, got %s", what);
	}
	if (r->cfg.backend == RAG_PG) {
		(void)pg_query(ctx, r, m, q, qn); /* answered now, or when the pool answers */
		tr_kmsg_close(&k);
		return TR_OK;
	}
	refresh(r);
	int n = rag_query(r->ix, &r->scratch, q, qn, &r->qo, r->hits);
	tr_kmsg_close(&k);
	if (n < 0)
		return tr_step_fail(ctx, m, TR_ENOMEM, "out of memory scoring the passages");
	tr_kout o;
	tr_kout_init(&o);
	if (pack_answer(&o, r->ix, r->hits, n) != TR_OK) {
		tr_kout_free(&o);
		return tr_step_fail(ctx, m, TR_ENOMEM, "out of memory packing the passages");
	}
	return tr_kout_reply(ctx, m, &o);
}

static void rag_terminate(tr_ctx *ctx, void *st, int reason)
{
	rag_actor *r = st;
	(void)reason;
	/* every step we took is answered, even now */
	for (uint32_t i = 0; i < r->nwaits; i++)
		(void)tr_step_fail(ctx, r->waits[i].req, TR_ESHUTDOWN,
		                   "rag: stopped while the query ran");
	rag_cleanup(r);
}

const tr_actor_ops tr_rag_ops = {
	.name = "rag",
	.size = sizeof(rag_actor),
	.init = rag_init,
	.receive = rag_receive,
	.terminate = rag_terminate,
};
