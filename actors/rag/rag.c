/*
 * actors/rag/rag.c -- the `rag` kind: retrieval. For a step's `text` it
 * adds `passages` = [{text, source, score}], best first, and `sources`,
 * the files those passages come from (unique, best first).
 *
 * Backends: "bm25", the embedded index (index.c) over a folder of text
 * and markdown files, shared by all instances that read the same folder
 * with the same settings and rebuilt when the files change (shared.c).
 * Other backends (postgres) will be rows of `backends` below with their
 * own settings.
 *
 * Cost per query: tokenising the text, then one pass over the postings
 * of its terms (at most RAG_QUERY_TERMS of them) into a per-instance
 * score array; no allocation after the first query on an index.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "actors/kinds.h"
#include "actors/kit.h"
#include "actors/rag/rag.h"
#include "core/alloc.h"
#include "lua/tlua.h" /* TR_TAG_STEP */

static const char *const rag_keys[] = {"dir",        "chunk", "overlap", "top_k",
                                       "min_score",  "k1",    "b",       "extensions",
                                       "watch",      "backend", NULL};
static const char *const backends[] = {"bm25", NULL};
static const char *const default_ext[] = {".md", ".txt"};

/* Timer tag: every RAG_WATCH_MS an instance moves to the newest index
 * even when it gets no query, so an old index is freed within a period
 * of a swap rather than held by an idle instance. */
#define TAG_REFRESH 0x52414701u

typedef struct rag_cfg {
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
		for (const char *const *b = backends; *b != NULL && !ok; b++)
			ok = strcmp(*b, backend) == 0;
		if (!ok)
			tr_kcfg_fail(&k, "backend: '%s' is not available (this build has: bm25)", backend);
	}
	tr__free(backend);
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

typedef struct rag_actor {
	rag_cfg cfg;
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

static int rag_receive(tr_ctx *ctx, void *st, tr_msg *m)
{
	rag_actor *r = st;
	tr_kmsg k;
	const char *q;
	size_t qn;
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
	(void)ctx;
	(void)reason;
	rag_cleanup(st);
}

const tr_actor_ops tr_rag_ops = {
	.name = "rag",
	.size = sizeof(rag_actor),
	.init = rag_init,
	.receive = rag_receive,
	.terminate = rag_terminate,
};
