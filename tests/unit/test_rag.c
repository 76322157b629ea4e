/*
 * test_rag.c -- the rag kind: its tokeniser, chunking and sources, the
 * BM25 ranking on two small corpora (tests/data/rag/ and the assistant's
 * docs/), the actor on a real node (answers, every bad input with its
 * message), settings errors from the check and from `troupe check`'s
 * loader, one shared index for many instances, and a rebuild when the
 * files change.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <msgpack.h>
#include <troupe/troupe.h>

#include "actors/kinds.h"
#include "actors/kit.h"
#include "actors/rag/rag.h"
#include "lua/tlua.h"
#include "tt.h"
#include "tnode.h"

#define CORPUS TR_SOURCE_ROOT "/tests/data/rag"
#define DOCS TR_SOURCE_ROOT "/docs"

/* ---- helpers ------------------------------------------------------------ */

/* A fresh empty folder under /tmp; the caller removes it (rm_tree). */
static void tmp_dir(char *buf, size_t n)
{
	snprintf(buf, n, "/tmp/test_rag.XXXXXX");
	if (mkdtemp(buf) == NULL)
		buf[0] = '\0';
}

static void rm_tree(const char *dir)
{
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "  (could not remove %s)\n", dir);
}

static int write_file(const char *dir, const char *name, const char *text)
{
	char path[512], tmp[520];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	/* written aside then renamed, as editors do: never seen half written */
	FILE *f = fopen(tmp, "w");
	if (f == NULL)
		return -1;
	fputs(text, f);
	fclose(f);
	return rename(tmp, path);
}

static char *const default_ext[] = {".md", ".txt"};

/* Builds an index of dir with the default settings, or the given ones. */
static rag_index *build(const char *dir, uint32_t chunk, uint32_t overlap)
{
	rag_listing ls;
	rag_index *ix = NULL;
	char err[256];
	rag_build_opts o = {.chunk = chunk, .overlap = overlap};
	if (rag_scan(dir, default_ext, 2, &ls, err, sizeof(err)) != TR_OK) {
		fprintf(stderr, "  scan: %s\n", err);
		return NULL;
	}
	if (rag_index_build(dir, &ls, &o, &ix) != TR_OK)
		ix = NULL;
	rag_listing_free(&ls);
	return ix;
}

static const rag_query_opts qdefault = {.k1 = 1.2, .b = 0.75, .top_k = 4, .min_score = 0};

/* The file of the best passage for q, or "" when none. */
static const char *top_path(const rag_index *ix, rag_scratch *s, const char *q)
{
	rag_hit hits[RAG_TOP_MAX];
	int n = rag_query(ix, s, q, strlen(q), &qdefault, hits);
	return n > 0 ? rag_chunk_path(ix, hits[0].chunk) : "";
}

/* Collects the terms of s, space-separated, into out. */
static void terms_of(const char *s, char *out, size_t n)
{
	rag_tok t;
	size_t o = 0;
	out[0] = '\0';
	rag_tok_init(&t, s, strlen(s));
	while (rag_tok_next(&t) && o + t.len + 2 < n) {
		if (o)
			out[o++] = ' ';
		memcpy(out + o, t.term, t.len);
		o += t.len;
		out[o] = '\0';
	}
}

/* ---- tokens, chunks, sources --------------------------------------------- */

TT_TEST(tokens_lowercase_stopwords_stems_utf8)
{
	char out[512];
	terms_of("How do Retries WORK?", out, sizeof(out));
	TT_STREQ(out, "retry work");
	terms_of("the timeouts, caches and classes of a bus", out, sizeof(out));
	TT_STREQ(out, "timeout cache classe bus");
	terms_of("retry_on = { \"timeout\" } max_inflight=1000", out, sizeof(out));
	TT_STREQ(out, "retry timeout max inflight 1000");
	/* bytes >= 0x80 are word bytes, kept as they are (no case folding) */
	terms_of("Café CRÈME in Köln", out, sizeof(out));
	TT_STREQ(out, "café crÈme köln");
	/* invalid UTF-8 is just bytes */
	terms_of("\xff\xfe" "abc \x80", out, sizeof(out));
	TT_STREQ(out, "\xff\xfe" "abc \x80");
	/* a token over RAG_TERM_MAX bytes is skipped, its neighbours are not */
	char big[200];
	memset(big, 'x', sizeof(big));
	memcpy(big, "left ", 5);
	memcpy(big + sizeof(big) - 7, " right", 7);
	terms_of(big, out, sizeof(out));
	TT_STREQ(out, "left right");
	terms_of("   ...  !! the of and ", out, sizeof(out));
	TT_STREQ(out, "");
}

TT_TEST(stop_words)
{
	const char *some[] = {"a", "about", "the", "your", "with", "how", "is", "ve", "s", "should"};
	for (size_t i = 0; i < sizeof(some) / sizeof(some[0]); i++)
		TT_ASSERT(rag_stopword(some[i], strlen(some[i])));
	TT_ASSERT(!rag_stopword("retry", 5));
	TT_ASSERT(!rag_stopword("", 0));
	TT_ASSERT(!rag_stopword("zzz", 3));
	TT_ASSERT(!rag_stopword("th", 2));
}

TT_TEST(chunks_overlap_and_line_sources)
{
	char dir[64], text[8192];
	size_t o = 0;
	tmp_dir(dir, sizeof(dir));
	TT_ASSERT(dir[0] != '\0');
	/* 300 words, 10 per line: w0 .. w299 */
	for (int i = 0; i < 300; i++)
		o += (size_t)snprintf(text + o, sizeof(text) - o, "w%d%s", i, i % 10 == 9 ? "\n" : " ");
	TT_EQ(write_file(dir, "a.txt", text), 0);
	rag_index *ix = build(dir, 120, 30);
	TT_ASSERT(ix != NULL);
	/* strides of 90 words: [0,120) [90,210) [180,300) */
	TT_EQ(ix->nchunks, 3);
	TT_STREQ(rag_chunk_source(ix, 0), "a.txt:1");
	TT_STREQ(rag_chunk_source(ix, 1), "a.txt:10");
	TT_STREQ(rag_chunk_source(ix, 2), "a.txt:19");
	TT_ASSERT(strncmp(ix->text + ix->chunks[1].off, "w90 ", 4) == 0);
	TT_ASSERT(strncmp(ix->text + ix->chunks[2].off + ix->chunks[2].len - 4, "w299", 4) == 0);
	TT_EQ(ix->chunks[0].ntok, 120);
	/* an overlap word is in two chunks; a word near the start in one */
	rag_scratch s = {0};
	rag_hit hits[RAG_TOP_MAX];
	rag_query_opts q = qdefault;
	q.top_k = 10;
	TT_EQ(rag_query(ix, &s, "w100", 4, &q, hits), 2);
	TT_EQ(rag_query(ix, &s, "w5", 2, &q, hits), 1);
	TT_EQ(rag_query(ix, &s, "nothing here", 12, &q, hits), 0);
	rag_scratch_free(&s);
	rag_index_unref(ix);
	/* a chunk as large as the file: one chunk */
	ix = build(dir, 1000, 0);
	TT_ASSERT(ix != NULL);
	TT_EQ(ix->nchunks, 1);
	rag_index_unref(ix);
	rm_tree(dir);
}

TT_TEST(markdown_sections_headings_and_fences)
{
	char dir[64];
	tmp_dir(dir, sizeof(dir));
	TT_EQ(write_file(dir, "doc.md",
	                 "Preamble words here.\n"
	                 "# Intro #\n"
	                 "Intro text about apples.\n"
	                 "```sh\n"
	                 "# not a heading: a shell comment about pears\n"
	                 "```\n"
	                 "## Usage of C#\n"
	                 "Usage text about oranges.\n"
	                 "#hashtag is not a heading\n"
	                 "#\n"),
	      0);
	rag_index *ix = build(dir, 120, 30);
	TT_ASSERT(ix != NULL);
	TT_EQ(ix->nchunks, 3);
	TT_STREQ(rag_chunk_source(ix, 0), "doc.md:1");
	TT_STREQ(rag_chunk_source(ix, 1), "doc.md#Intro");
	TT_STREQ(rag_chunk_source(ix, 2), "doc.md#Usage of C#");
	rag_scratch s = {0};
	rag_hit hits[4];
	TT_EQ(rag_query(ix, &s, "pears", 5, &qdefault, hits), 1);
	TT_STREQ(rag_chunk_source(ix, hits[0].chunk), "doc.md#Intro");
	TT_EQ(rag_query(ix, &s, "hashtag", 7, &qdefault, hits), 1);
	TT_STREQ(rag_chunk_source(ix, hits[0].chunk), "doc.md#Usage of C#");
	rag_scratch_free(&s);
	rag_index_unref(ix);
	rm_tree(dir);
}

TT_TEST(listing_recurses_filters_and_skips_big_files)
{
	rag_index *ix = build(CORPUS, 120, 30);
	TT_ASSERT(ix != NULL);
	TT_EQ(ix->st.files, 12); /* 11 .md + notes/tides.txt; ignored.rst is not read */
	rag_scratch s = {0};
	TT_STREQ(top_path(ix, &s, "zanzibarquux"), "");
	TT_STREQ(top_path(ix, &s, "neap spring tides"), "notes/tides.txt");
	rag_scratch_free(&s);
	rag_index_unref(ix);

	char dir[64], path[128];
	tmp_dir(dir, sizeof(dir));
	TT_EQ(write_file(dir, "small.md", "# Small\nkept\n"), 0);
	TT_EQ(write_file(dir, ".hidden.md", "# Hidden\nsecretword\n"), 0);
	TT_EQ(write_file(dir, "UPPER.MD", "# Upper\nuppercase suffix\n"), 0);
	/* 17 MiB, sparse: skipped by its size, never read */
	snprintf(path, sizeof(path), "%s/big.txt", dir);
	int fd = open(path, O_CREAT | O_WRONLY, 0644);
	TT_ASSERT(fd >= 0);
	TT_EQ(ftruncate(fd, 17 << 20), 0);
	close(fd);
	/* a link to a folder is not followed (no loops) */
	snprintf(path, sizeof(path), "%s/loop", dir);
	TT_EQ(symlink(dir, path), 0);
	ix = build(dir, 120, 30);
	TT_ASSERT(ix != NULL);
	TT_EQ(ix->st.files, 2);
	TT_EQ(ix->st.skipped_big, 1);
	TT_STREQ(top_path(ix, &s, "secretword"), "");
	TT_STREQ(top_path(ix, &s, "uppercase"), "UPPER.MD");
	rag_scratch_free(&s);
	rag_index_unref(ix);

	rag_listing ls;
	char err[256];
	TT_RC(rag_scan("/nonexistent/rag", default_ext, 2, &ls, err, sizeof(err)), TR_EIO);
	TT_STREQ(err, "cannot open '/nonexistent/rag': No such file or directory");
	snprintf(path, sizeof(path), "%s/small.md", dir);
	TT_RC(rag_scan(path, default_ext, 2, &ls, err, sizeof(err)), TR_EIO);
	TT_ASSERT(strstr(err, "not a folder") != NULL);
	rm_tree(dir);
}

TT_TEST(invalid_utf8_in_files_is_replaced)
{
	char dir[64];
	tmp_dir(dir, sizeof(dir));
	/* Latin-1 "été", a stray continuation byte, an overlong '/', a
	 * surrogate, a cut sequence at the end; valid UTF-8 kept as is */
	TT_EQ(write_file(dir, "a.txt",
	                 "\xe9t\xe9 summer \x80 \xc0\xaf \xed\xa0\x80 caf\xc3\xa9 \xe2\x82"),
	      0);
	rag_index *ix = build(dir, 120, 30);
	TT_ASSERT(ix != NULL);
	TT_EQ(ix->nchunks, 1);
	const char *want = "?t? summer ? ?? ??? caf\xc3\xa9 ??";
	TT_EQ(ix->chunks[0].len, strlen(want));
	TT_ASSERT(memcmp(ix->text + ix->chunks[0].off, want, strlen(want)) == 0);
	rag_scratch s = {0};
	TT_STREQ(top_path(ix, &s, "café"), "a.txt");
	TT_STREQ(top_path(ix, &s, "summer"), "a.txt");
	rag_scratch_free(&s);
	rag_index_unref(ix);
	rm_tree(dir);
}

TT_TEST(empty_folder_answers_nothing)
{
	char dir[64];
	tmp_dir(dir, sizeof(dir));
	rag_index *ix = build(dir, 120, 30);
	TT_ASSERT(ix != NULL);
	TT_EQ(ix->nchunks, 0);
	rag_scratch s = {0};
	TT_STREQ(top_path(ix, &s, "anything"), "");
	rag_scratch_free(&s);
	rag_index_unref(ix);
	rm_tree(dir);
}

/* ---- ranking ------------------------------------------------------------- */

TT_TEST(quality_test_corpus)
{
	static const struct {
		const char *q, *want;
	} cases[] = {
		{"how do bees tell each other where flowers are?", "bees.md"},
		{"waggle dance", "bees.md"},
		{"what is a pyroclastic flow", "volcanoes.md"},
		{"shield volcano lava", "volcanoes.md"},
		{"how do I keep a sourdough starter alive", "bread.md"},
		{"Sicilian defence", "chess.md"},
		{"espresso pressure and crema", "coffee.md"},
		{"café crème", "coffee.md"},
		{"rebase or merge a branch", "git.md"},
		{"how does RuBisCO fix carbon dioxide", "photosynthesis.md"},
		{"why are leaves green", "photosynthesis.md"},
		{"tapering before race day", "marathon.md"},
		{"how did Romans carry water to cities", "aqueducts.md"},
		{"bebop improvisation over chord changes", "jazz.md"},
		{"measure gauge with a swatch", "knitting.md"},
		{"what causes spring and neap tides", "notes/tides.txt"},
	};
	rag_index *ix = build(CORPUS, 120, 30);
	TT_ASSERT(ix != NULL);
	rag_scratch s = {0};
	int bad = 0;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *got = top_path(ix, &s, cases[i].q);
		if (strcmp(got, cases[i].want) != 0) {
			fprintf(stderr, "  '%s': got '%s', want '%s'\n", cases[i].q, got, cases[i].want);
			bad++;
		}
	}
	/* scores: best first, positive, at most top_k */
	rag_hit hits[RAG_TOP_MAX];
	rag_query_opts q = qdefault;
	q.top_k = 100;
	int n = rag_query(ix, &s, "water", 5, &q, hits);
	TT_ASSERT(n >= 3);
	for (int i = 1; i < n; i++)
		TT_ASSERT(hits[i - 1].score >= hits[i].score);
	TT_ASSERT(hits[n - 1].score > 0);
	q.top_k = 2;
	TT_EQ(rag_query(ix, &s, "water", 5, &q, hits), 2);
	q.min_score = 1e6;
	TT_EQ(rag_query(ix, &s, "water", 5, &q, hits), 0);
	rag_scratch_free(&s);
	rag_index_unref(ix);
	TT_EQ(bad, 0);
}

TT_TEST(quality_assistant_docs)
{
	static const struct {
		const char *q, *want;
	} cases[] = {
		{"how do retries work?", "retries.md"},
		{"which errors are retried by default", "retries.md"},
		{"full jitter exponential delay", "backoff.md"},
		{"what happens when the deadline passes", "deadlines.md"},
		{"branch on the intent field", "routes.md"},
		{"run branches concurrently and join", "parallel.md"},
		{"step events sent to telemetry", "taps.md"},
		{"cache results with a ttl", "cache.md"},
		{"identical concurrent calls share one execution", "coalesce.md"},
		{"what does a full mailbox do", "backpressure.md"},
		{"restart intensity of a supervisor", "supervision.md"},
		{"reload the files with SIGHUP", "hot-reload.md"},
		{"which HTTP endpoints are there", "http-api.md"},
		{"prometheus metrics", "metrics.md"},
		{"API keys and rate limits per tenant", "tenants.md"},
	};
	rag_index *ix = build(DOCS, 120, 30);
	TT_ASSERT(ix != NULL);
	TT_ASSERT(ix->st.files >= 8 && ix->st.files <= 15);
	rag_scratch s = {0};
	int bad = 0;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *got = top_path(ix, &s, cases[i].q);
		if (strcmp(got, cases[i].want) != 0) {
			fprintf(stderr, "  '%s': got '%s', want '%s'\n", cases[i].q, got, cases[i].want);
			bad++;
		}
	}
	rag_scratch_free(&s);
	rag_index_unref(ix);
	TT_EQ(bad, 0);
}

/* ---- the actor on a node -------------------------------------------------- */

enum { KICK = 1 };

static struct {
	uv_mutex_t mu;
	tr_ref target;
	msgpack_sbuffer req;   /* the next request body */
	uint32_t req_tag;
	msgpack_sbuffer rep;   /* the last answer's body */
	uint16_t rep_flags;
	int rep_err;
	atomic_int answers;
} cl;

static int client_msg(tr_ctx *ctx, probe *p, tr_msg *m)
{
	(void)p;
	if (m->tag == KICK) {
		tr_msg *q = tr_msg_new();
		if (q == NULL)
			return TR_ENOMEM;
		uv_mutex_lock(&cl.mu);
		q->tag = cl.req_tag;
		q->body = tr_body_new(cl.req.data, cl.req.size);
		tr_ref to = cl.target;
		uv_mutex_unlock(&cl.mu);
		return tr_ask(ctx, to, q, 10000, NULL);
	}
	if (m->flags & TR_MSGF_REPLY) {
		uv_mutex_lock(&cl.mu);
		msgpack_sbuffer_clear(&cl.rep);
		if (m->body != NULL)
			msgpack_sbuffer_write(&cl.rep, (const char *)m->body->data, m->body->len);
		cl.rep_flags = m->flags;
		cl.rep_err = m->err;
		uv_mutex_unlock(&cl.mu);
		atomic_fetch_add(&cl.answers, 1);
	}
	return TR_OK;
}

static probe_cfg client_cfg = {.id = 1, .on_msg = client_msg};
static tr_ref client;

/* Sends the request now in cl.req to `to` and waits for its answer. */
static int ask_rag(tr_node *n, tr_ref to, uint32_t tag)
{
	int before = atomic_load(&cl.answers);
	uv_mutex_lock(&cl.mu);
	cl.target = to;
	cl.req_tag = tag;
	uv_mutex_unlock(&cl.mu);
	if (tn_send(n, client, KICK, 0) != TR_OK)
		return 0;
	uint64_t until = tr_now_ns() + 10000000000ull;
	while (atomic_load(&cl.answers) == before && tr_now_ns() < until)
		tn_sleep_ms(1);
	return atomic_load(&cl.answers) > before;
}

/* Packs {"text": text} (n bytes) as the request; text NULL: {}. */
static void req_text(const char *text, size_t n)
{
	msgpack_packer pk;
	uv_mutex_lock(&cl.mu);
	msgpack_sbuffer_clear(&cl.req);
	msgpack_packer_init(&pk, &cl.req, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, text ? 1 : 0);
	if (text) {
		msgpack_pack_str_with_body(&pk, "text", 4);
		msgpack_pack_str_with_body(&pk, text, n);
	}
	uv_mutex_unlock(&cl.mu);
}

static const msgpack_object *mget(const msgpack_object *o, const char *k)
{
	if (o == NULL || o->type != MSGPACK_OBJECT_MAP)
		return NULL;
	for (uint32_t i = 0; i < o->via.map.size; i++) {
		const msgpack_object *key = &o->via.map.ptr[i].key;
		if (key->type == MSGPACK_OBJECT_STR && key->via.str.size == strlen(k) &&
		    memcmp(key->via.str.ptr, k, key->via.str.size) == 0)
			return &o->via.map.ptr[i].val;
	}
	return NULL;
}

static int obj_is(const msgpack_object *o, const char *s)
{
	return o != NULL && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
	       memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

/* The last answer, unpacked (destroy it). */
static int last_answer(msgpack_unpacked *u)
{
	size_t off = 0;
	msgpack_unpacked_init(u);
	uv_mutex_lock(&cl.mu);
	int ok = msgpack_unpack_next(u, cl.rep.data, cl.rep.size, &off) == MSGPACK_UNPACK_SUCCESS;
	uv_mutex_unlock(&cl.mu);
	return ok;
}

/* The last answer was an error whose message is `want`. */
static int last_error_is(const char *want)
{
	msgpack_unpacked u;
	int ok = last_answer(&u) && (cl.rep_flags & TR_MSGF_ERROR) &&
	         obj_is(mget(&u.data, "message"), want);
	if (!ok) {
		const msgpack_object *m = mget(&u.data, "message");
		fprintf(stderr, "  got flags %#x message '%.*s', want '%s'\n", cl.rep_flags,
		        m && m->type == MSGPACK_OBJECT_STR ? (int)m->via.str.size : 0,
		        m && m->type == MSGPACK_OBJECT_STR ? m->via.str.ptr : "", want);
	}
	msgpack_unpacked_destroy(&u);
	return ok;
}

/* Number of passages in the last answer (-1 if it is not a good answer);
 * with want_path, also that sources[0] is it. */
static int last_passages(const char *want_path)
{
	msgpack_unpacked u;
	int n = -1;
	if (last_answer(&u) && !(cl.rep_flags & TR_MSGF_ERROR)) {
		const msgpack_object *p = mget(&u.data, "passages"), *s = mget(&u.data, "sources");
		if (p && p->type == MSGPACK_OBJECT_ARRAY && s && s->type == MSGPACK_OBJECT_ARRAY) {
			n = (int)p->via.array.size;
			for (uint32_t i = 0; i < p->via.array.size; i++) {
				const msgpack_object *e = &p->via.array.ptr[i];
				const msgpack_object *sc = mget(e, "score");
				if (!mget(e, "text") || !mget(e, "source") || !sc ||
				    sc->type != MSGPACK_OBJECT_FLOAT64 || sc->via.f64 <= 0)
					n = -1;
			}
			if (want_path && (s->via.array.size == 0 || !obj_is(&s->via.array.ptr[0], want_path)))
				n = -1;
		}
	}
	msgpack_unpacked_destroy(&u);
	return n;
}

/* A spec for kind rag with settings packed by fill(). */
typedef void (*fill_fn)(msgpack_packer *pk, void *ud);

static void spec_make(tr_actor_spec *a, msgpack_sbuffer *sb, const char *name, fill_fn fill,
                      void *ud)
{
	msgpack_packer pk;
	msgpack_sbuffer_init(sb);
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	memset(a, 0, sizeof(*a));
	a->name = (char *)name;
	a->kind = "rag";
	a->receive_fn = -1;
	if (fill != NULL) {
		fill(&pk, ud);
		a->config = (unsigned char *)sb->data;
		a->config_len = sb->size;
	}
}

static void pk_str(msgpack_packer *pk, const char *s)
{
	msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* {dir = ud} */
static void fill_dir(msgpack_packer *pk, void *ud)
{
	msgpack_pack_map(pk, 1);
	pk_str(pk, "dir");
	pk_str(pk, ud);
}

/* {dir = ud, top_k = 3, min_score = 0.2} */
static void fill_dir_top3(msgpack_packer *pk, void *ud)
{
	msgpack_pack_map(pk, 3);
	pk_str(pk, "dir");
	pk_str(pk, ud);
	pk_str(pk, "top_k");
	msgpack_pack_int(pk, 3);
	pk_str(pk, "min_score");
	msgpack_pack_double(pk, 0.2);
}

static tr_node *node_with_client(void)
{
	tr_node *n = tn_start(2);
	if (n == NULL)
		return NULL;
	if (!cl.answers && cl.req.data == NULL) {
		uv_mutex_init(&cl.mu);
		msgpack_sbuffer_init(&cl.req);
		msgpack_sbuffer_init(&cl.rep);
	}
	if (tn_spawn(n, &client_cfg, NULL, &client) != TR_OK) {
		tn_stop(n);
		return NULL;
	}
	return n;
}

TT_TEST(actor_answers_passages_and_sources)
{
	tr_node *n = node_with_client();
	TT_ASSERT(n != NULL);
	tr_actor_spec a;
	msgpack_sbuffer sb;
	tr_ref r;
	spec_make(&a, &sb, "rag", fill_dir_top3, CORPUS);
	TT_OK(tr_node_spawn(n, &tr_rag_ops, &a, NULL, &r));
	msgpack_sbuffer_destroy(&sb);

	req_text("how do bees tell where the flowers are?", 39);
	TT_ASSERT(ask_rag(n, r, TR_TAG_STEP));
	int np = last_passages("bees.md");
	TT_ASSERT(np >= 1 && np <= 3);
	msgpack_unpacked u;
	TT_ASSERT(last_answer(&u));
	const msgpack_object *p0 = &mget(&u.data, "passages")->via.array.ptr[0];
	TT_ASSERT(obj_is(mget(p0, "source"), "bees.md#The waggle dance"));
	const msgpack_object *t = mget(p0, "text");
	TT_ASSERT(t->type == MSGPACK_OBJECT_STR &&
	          memmem(t->via.str.ptr, t->via.str.size, "waggle", 6) != NULL);
	/* the message's own fields are kept */
	TT_ASSERT(obj_is(mget(&u.data, "text"), "how do bees tell where the flowers are?"));
	msgpack_unpacked_destroy(&u);

	/* sources are unique files even when passages share one */
	req_text("lava magma eruption volcano ash", 31);
	TT_ASSERT(ask_rag(n, r, TR_TAG_STEP));
	TT_ASSERT(last_passages("volcanoes.md") >= 2);
	TT_ASSERT(last_answer(&u));
	TT_EQ(mget(&u.data, "sources")->via.array.size, 1);
	msgpack_unpacked_destroy(&u);

	/* only stop words, or unknown words: an answer with no passages */
	req_text("what is the", 11);
	TT_ASSERT(ask_rag(n, r, TR_TAG_STEP));
	TT_EQ(last_passages(NULL), 0);
	req_text("zanzibarquux", 12);
	TT_ASSERT(ask_rag(n, r, TR_TAG_STEP));
	TT_EQ(last_passages(NULL), 0);

	/* invalid UTF-8 around a real word still finds it */
	req_text("\xff\xfe waggle \xc3", 11);
	TT_ASSERT(ask_rag(n, r, TR_TAG_STEP));
	TT_EQ(last_passages("bees.md") >= 1, 1);

	/* 1 MiB of text: answered (its first RAG_QUERY_TERMS terms count) */
	size_t big = 1u << 20;
	char *huge = malloc(big);
	TT_ASSERT(huge != NULL);
	for (size_t i = 0; i < big; i++)
		huge[i] = "sourdough starter "[i % 18];
	req_text(huge, big);
	free(huge);
	TT_ASSERT(ask_rag(n, r, TR_TAG_STEP));
	TT_EQ(last_passages("bread.md") >= 1, 1);
	TT_EQ(tn_stop(n), 0);
	TT_EQ(rag_shared_count(), 0);
}

TT_TEST(actor_bad_inputs)
{
	tr_node *n = node_with_client();
	TT_ASSERT(n != NULL);
	tr_actor_spec a;
	msgpack_sbuffer sb;
	tr_ref r;
	spec_make(&a, &sb, "rag", fill_dir, CORPUS);
	TT_OK(tr_node_spawn(n, &tr_rag_ops, &a, NULL, &r));
	msgpack_sbuffer_destroy(&sb);

	req_text(NULL, 0);
	TT_ASSERT(ask_rag(n, r, TR_TAG_STEP));
	TT_ASSERT(last_error_is("the message has no 'text' (the query to search for)"));
	TT_EQ(cl.rep_err, TR_EINVAL);

	req_text("", 0);
	TT_ASSERT(ask_rag(n, r, TR_TAG_STEP));
	TT_ASSERT(last_error_is("'text' is empty: nothing to search for"));
	req_text(" \t\n ", 4);
	TT_ASSERT(ask_rag(n, r, TR_TAG_STEP));
	TT_ASSERT(last_error_is("'text' is empty: nothing to search for"));

	/* wrong types */
	msgpack_packer pk;
	static const char *const want[] = {"'text' must be a string, got an integer",
	                                   "'text' must be a string, got a list",
	                                   "'text' must be a string, got a boolean",
	                                   "'text' must be a string, got a table",
	                                   "'text' must be a string, got binary data"};
	for (int i = 0; i < 5; i++) {
		uv_mutex_lock(&cl.mu);
		msgpack_sbuffer_clear(&cl.req);
		msgpack_packer_init(&pk, &cl.req, msgpack_sbuffer_write);
		msgpack_pack_map(&pk, 1);
		pk_str(&pk, "text");
		if (i == 0)
			msgpack_pack_int(&pk, 42);
		else if (i == 1)
			msgpack_pack_array(&pk, 0);
		else if (i == 2)
			msgpack_pack_true(&pk);
		else if (i == 3)
			msgpack_pack_map(&pk, 0);
		else
			msgpack_pack_bin_with_body(&pk, "ab", 2);
		uv_mutex_unlock(&cl.mu);
		TT_ASSERT(ask_rag(n, r, TR_TAG_STEP));
		TT_ASSERT(last_error_is(want[i]));
	}
	/* text = nil is "no text" */
	uv_mutex_lock(&cl.mu);
	msgpack_sbuffer_clear(&cl.req);
	msgpack_packer_init(&pk, &cl.req, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 1);
	pk_str(&pk, "text");
	msgpack_pack_nil(&pk);
	uv_mutex_unlock(&cl.mu);
	TT_ASSERT(ask_rag(n, r, TR_TAG_STEP));
	TT_ASSERT(last_error_is("the message has no 'text' (the query to search for)"));

	/* a body that is not a map; then bytes that are not msgpack */
	uv_mutex_lock(&cl.mu);
	msgpack_sbuffer_clear(&cl.req);
	msgpack_packer_init(&pk, &cl.req, msgpack_sbuffer_write);
	msgpack_pack_array(&pk, 1);
	pk_str(&pk, "text");
	uv_mutex_unlock(&cl.mu);
	TT_ASSERT(ask_rag(n, r, TR_TAG_STEP));
	TT_ASSERT(last_error_is("the message is not a map"));
	uv_mutex_lock(&cl.mu);
	msgpack_sbuffer_clear(&cl.req);
	msgpack_sbuffer_write(&cl.req, "\xc1\x81", 2);
	uv_mutex_unlock(&cl.mu);
	TT_ASSERT(ask_rag(n, r, TR_TAG_STEP));
	TT_ASSERT(last_error_is("the message is not a map"));

	/* an ask that is not a step */
	req_text("bees", 4);
	TT_ASSERT(ask_rag(n, r, 7));
	TT_ASSERT(last_error_is("rag answers pipeline steps only (got tag 7)"));

	/* still alive and answering after all that */
	req_text("bees", 4);
	TT_ASSERT(ask_rag(n, r, TR_TAG_STEP));
	TT_ASSERT(last_passages("bees.md") >= 1);
	tr_actor_stats st;
	TT_OK(tr_actor_stats_get(n, r, &st));
	TT_EQ(st.restarts, 0);
	TT_EQ(tn_stop(n), 0);
}

TT_TEST(actor_missing_dir_fails_to_start)
{
	tr_node *n = tn_start(1);
	TT_ASSERT(n != NULL);
	tr_actor_spec a;
	msgpack_sbuffer sb;
	tr_ref r;
	spec_make(&a, &sb, "rag", fill_dir, "/nonexistent/rag-docs");
	TT_RC(tr_node_spawn(n, &tr_rag_ops, &a, NULL, &r), TR_ENOTFOUND);
	msgpack_sbuffer_destroy(&sb);
	/* bad settings fail init too (the loader would have refused them) */
	spec_make(&a, &sb, "rag", NULL, NULL);
	a.config = (unsigned char *)"\x81\xa5top_k\x00";
	a.config_len = 8;
	TT_RC(tr_node_spawn(n, &tr_rag_ops, &a, NULL, &r), TR_EINVAL);
	msgpack_sbuffer_destroy(&sb);
	TT_EQ(rag_shared_count(), 0);
	TT_EQ(tn_stop(n), 0);
}

/* {dir = ud, chunk = 60} */
static void fill_dir_chunk60(msgpack_packer *pk, void *ud)
{
	msgpack_pack_map(pk, 2);
	pk_str(pk, "dir");
	pk_str(pk, ud);
	pk_str(pk, "chunk");
	msgpack_pack_int(pk, 60);
}

TT_TEST(instances_share_one_index)
{
	tr_node *n = node_with_client();
	TT_ASSERT(n != NULL);
	tr_actor_spec a, a2;
	msgpack_sbuffer sb, sb2;
	tr_ref r[4], other;
	/* the same folder named two ways is the same index */
	spec_make(&a, &sb, "rag", fill_dir_top3, CORPUS);
	spec_make(&a2, &sb2, "rag", fill_dir, TR_SOURCE_ROOT "/tests/data/../data/rag/");
	for (int i = 0; i < 4; i++)
		TT_OK(tr_node_spawn(n, &tr_rag_ops, i == 3 ? &a2 : &a, NULL, &r[i]));
	TT_EQ(rag_shared_count(), 1);
	msgpack_sbuffer_destroy(&sb2);
	/* another chunk size is another index */
	spec_make(&a2, &sb2, "rag", fill_dir_chunk60, CORPUS);
	TT_OK(tr_node_spawn(n, &tr_rag_ops, &a2, NULL, &other));
	TT_EQ(rag_shared_count(), 2);
	msgpack_sbuffer_destroy(&sb);
	msgpack_sbuffer_destroy(&sb2);
	for (int i = 0; i < 4; i++) {
		req_text("Queen's Gambit", 14);
		TT_ASSERT(ask_rag(n, r[i], TR_TAG_STEP));
		TT_ASSERT(last_passages("chess.md") >= 1);
	}
	req_text("Queen's Gambit", 14);
	TT_ASSERT(ask_rag(n, other, TR_TAG_STEP));
	TT_ASSERT(last_passages("chess.md") >= 1);
	TT_EQ(tn_stop(n), 0);
	TT_EQ(rag_shared_count(), 0);
}

/* Asks for `q` until it has passages (want 1) or none (want 0); ms at most. */
static int poll_until(tr_node *n, tr_ref r, const char *q, int want, unsigned ms)
{
	uint64_t until = tr_now_ns() + (uint64_t)ms * 1000000u;
	do {
		req_text(q, strlen(q));
		if (!ask_rag(n, r, TR_TAG_STEP))
			return 0;
		int np = last_passages(NULL);
		if ((want && np > 0) || (!want && np == 0))
			return 1;
		tn_sleep_ms(100);
	} while (tr_now_ns() < until);
	return 0;
}

TT_TEST(watch_rebuilds_when_files_change)
{
	char dir[64];
	tmp_dir(dir, sizeof(dir));
	TT_EQ(write_file(dir, "a.md", "# Animals\nThe alpaca grazes.\n"), 0);
	tr_node *n = node_with_client();
	TT_ASSERT(n != NULL);
	tr_actor_spec a;
	msgpack_sbuffer sb;
	tr_ref r;
	spec_make(&a, &sb, "rag", fill_dir, dir);
	TT_OK(tr_node_spawn(n, &tr_rag_ops, &a, NULL, &r));
	msgpack_sbuffer_destroy(&sb);
	TT_ASSERT(poll_until(n, r, "alpaca", 1, 0));
	TT_ASSERT(poll_until(n, r, "zebra", 0, 0));

	/* a new file: found within a scan period or two */
	uint64_t t0 = tr_now_ns();
	TT_EQ(write_file(dir, "b.md", "# Stripes\nThe zebra runs.\n"), 0);
	TT_ASSERT(poll_until(n, r, "zebra", 1, 3 * RAG_WATCH_MS + 1000));
	fprintf(stderr, "  new file found after %.1f s\n", (double)(tr_now_ns() - t0) / 1e9);
	/* a changed file: the new words found, the old ones gone */
	TT_EQ(write_file(dir, "a.md", "# Animals\nThe giraffe browses.\n"), 0);
	TT_ASSERT(poll_until(n, r, "giraffe", 1, 3 * RAG_WATCH_MS + 1000));
	TT_ASSERT(poll_until(n, r, "alpaca", 0, 0));
	/* a removed file */
	char path[128];
	snprintf(path, sizeof(path), "%s/b.md", dir);
	TT_EQ(unlink(path), 0);
	TT_ASSERT(poll_until(n, r, "zebra", 0, 3 * RAG_WATCH_MS + 1000));
	TT_EQ(tn_stop(n), 0);
	TT_EQ(rag_shared_count(), 0);
	rm_tree(dir);
}

/* {dir = ud, watch = false} */
static void fill_dir_nowatch(msgpack_packer *pk, void *ud)
{
	msgpack_pack_map(pk, 2);
	pk_str(pk, "dir");
	pk_str(pk, ud);
	pk_str(pk, "watch");
	msgpack_pack_false(pk);
}

TT_TEST(no_watch_rereads_on_a_new_instance)
{
	char dir[64];
	tmp_dir(dir, sizeof(dir));
	TT_EQ(write_file(dir, "a.md", "# A\nThe alpaca grazes.\n"), 0);
	tr_node *n = node_with_client();
	TT_ASSERT(n != NULL);
	tr_actor_spec a;
	msgpack_sbuffer sb;
	tr_ref r, r2;
	spec_make(&a, &sb, "rag", fill_dir_nowatch, dir);
	TT_OK(tr_node_spawn(n, &tr_rag_ops, &a, NULL, &r));
	TT_EQ(write_file(dir, "b.md", "# B\nThe zebra runs.\n"), 0);
	tn_sleep_ms(RAG_WATCH_MS + 500);
	TT_ASSERT(poll_until(n, r, "zebra", 0, 0)); /* not watching */
	/* a new instance (a restart, a reload) lists the folder again, and
	 * the instances sharing the index move to the new one */
	TT_OK(tr_node_spawn(n, &tr_rag_ops, &a, NULL, &r2));
	msgpack_sbuffer_destroy(&sb);
	TT_EQ(rag_shared_count(), 1);
	TT_ASSERT(poll_until(n, r2, "zebra", 1, 0));
	TT_ASSERT(poll_until(n, r, "zebra", 1, 0));
	TT_EQ(tn_stop(n), 0);
	rm_tree(dir);
}

/* ---- settings ----------------------------------------------------------- */

/* Packs one setting whose value is given as raw msgpack bytes. */
static const char *check_one(const char *key, const char *mp, size_t mpn, char *err, size_t n)
{
	unsigned char buf[256];
	size_t kn = strlen(key), o = 0;
	tr_actor_spec a;
	memset(&a, 0, sizeof(a));
	a.name = "docs";
	a.kind = "rag";
	buf[o++] = 0x81;
	buf[o++] = (unsigned char)(0xa0 | kn);
	memcpy(buf + o, key, kn);
	o += kn;
	memcpy(buf + o, mp, mpn);
	o += mpn;
	a.config = buf;
	a.config_len = o;
	if (tr_rag_check(&a, err, n) == TR_OK)
		snprintf(err, n, "ok");
	return err;
}

TT_TEST(settings_errors)
{
	char err[512];
	static const struct {
		const char *key;
		const char *mp;
		size_t n;
		const char *want;
	} cases[] = {
		{"top_k", "\x00", 1, "actor 'docs': top_k: must be between 1 and 100, got 0"},
		{"top_k", "\x65", 1, "actor 'docs': top_k: must be between 1 and 100, got 101"},
		{"top_k", "\xa1x", 2, "actor 'docs': top_k: expected an integer, got string"},
		{"top_k", "\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00", 9,
		 "actor 'docs': top_k: expected an integer, got number"},
		{"topk", "\x03", 1, "actor 'docs': unknown setting 'topk' (did you mean 'top_k'?)"},
		{"zzzzzz", "\x03", 1,
		 "actor 'docs': unknown setting 'zzzzzz' (this kind takes dir, chunk, overlap, top_k, "
		 "min_score, k1, b, extensions, watch, backend)"},
		{"backend", "\xa8" "postgres", 9, "ok"}, /* a hand-made spec: no config to look at */
		{"backend", "\xa7" "elastic", 8,
		 "actor 'docs': backend: 'elastic' is not available (backends: bm25, postgres)"},
		{"backend", "\xa4" "bm25", 5, "ok"},
		{"dir", "\xa0", 1,
		 "actor 'docs': dir: must not be empty (a folder, relative to the node's directory)"},
		{"dir", "\x05", 1, "actor 'docs': dir: expected a string, got integer"},
		{"chunk", "\x00", 1, "actor 'docs': chunk: must be between 1 and 10000, got 0"},
		{"chunk", "\x08", 1, "ok"}, /* the default overlap shrinks to chunk / 4 */
		{"overlap", "\xcc\x80", 2, "actor 'docs': overlap: must be less than chunk (120), got 128"},
		{"min_score", "\xff", 1, "actor 'docs': min_score: must be between 0 and 1e+06, got -1"},
		{"min_score", "\xcb\x3f\xc9\x99\x99\x99\x99\x99\x9a", 9, "ok"}, /* 0.2 */
		{"k1", "\x0b", 1, "actor 'docs': k1: must be between 0 and 10, got 11"},
		{"b", "\x02", 1, "actor 'docs': b: must be between 0 and 1, got 2"},
		{"watch", "\x01", 1, "actor 'docs': watch: expected true or false, got integer"},
		{"watch", "\xc2", 1, "ok"},
		{"extensions", "\x90", 1,
		 "actor 'docs': extensions: must list at least one suffix, such as \".md\""},
		{"extensions", "\x92\xa3.md\xa2md", 8,
		 "actor 'docs': extensions: element 2: expected a suffix such as \".md\", got \"md\""},
		{"extensions", "\x91\x01", 2,
		 "actor 'docs': extensions: element 1: expected a string, got integer"},
		{"extensions", "\xa3.md", 4,
		 "actor 'docs': extensions: expected a list of strings, got string"},
		{"extensions", "\x92\xa3.MD\xa4.rst", 10, "ok"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		check_one(cases[i].key, cases[i].mp, cases[i].n, err, sizeof(err));
		if (strcmp(err, cases[i].want) != 0) {
			fprintf(stderr, "  %s: got \"%s\"\n  want \"%s\"\n", cases[i].key, err,
			        cases[i].want);
			TT_ASSERT(0);
		}
	}
	/* backend = "postgres": the embedded index's settings are refused,
	 * top_k and min_score are its own too */
	{
		static const struct {
			const char *mp;
			size_t n; /* 0: strlen (no NUL in these) */
			const char *want;
		} pg[] = {
			{"\x82\xa7" "backend" "\xa8" "postgres" "\xa3" "dir" "\xa4" "docs", 0,
			 "actor 'docs': dir: only with backend \"bm25\" (the postgres backend reads the "
			 "chunks `troupe ingest` stored in troupe_chunks)"},
			{"\x82\xa7" "backend" "\xa8" "postgres" "\xa5" "watch" "\xc2", 0,
			 "actor 'docs': watch: only with backend \"bm25\" (the postgres backend reads the "
			 "chunks `troupe ingest` stored in troupe_chunks)"},
			{"\x83\xa7" "backend" "\xa8" "postgres" "\xa5" "top_k" "\x08" "\xa9" "min_score"
			 "\x01", 0, "ok"},
		};
		for (size_t i = 0; i < sizeof(pg) / sizeof(pg[0]); i++) {
			tr_actor_spec p;
			memset(&p, 0, sizeof(p));
			p.name = "docs";
			p.kind = "rag";
			p.config = (unsigned char *)pg[i].mp;
			p.config_len = pg[i].n ? pg[i].n : strlen(pg[i].mp);
			if (tr_rag_check(&p, err, sizeof(err)) == TR_OK)
				snprintf(err, sizeof(err), "ok");
			TT_STREQ(err, pg[i].want);
		}
	}
	/* no settings at all: the defaults are valid */
	tr_actor_spec a;
	memset(&a, 0, sizeof(a));
	a.name = "docs";
	TT_OK(tr_rag_check(&a, err, sizeof(err)));
	/* settings that are not a map */
	a.config = (unsigned char *)"\x91\x01";
	a.config_len = 2;
	TT_RC(tr_rag_check(&a, err, sizeof(err)), TR_EINVAL);
	TT_STREQ(err, "actor 'docs': settings are not a table");
}

TT_TEST(loader_reports_file_and_line)
{
	char dir[64], path[128];
	tmp_dir(dir, sizeof(dir));
	TT_EQ(write_file(dir, "p.lua",
	                 "actor \"rag\" { kind = \"rag\", top_k = 8, min_score = 0.2 }\n"
	                 "actor \"bad\" { kind = \"rag\",\n"
	                 "               top_k = 0 }\n"
	                 "actor \"pg\" { kind = \"rag\", backend = \"postgres\" }\n"
	                 "pipeline \"p\" { step \"rag\" {}, step \"bad\" {}, step \"pg\" {} }\n"),
	      0);
	TT_OK(tr_actors_register_builtin());
	snprintf(path, sizeof(path), "%s/p.lua", dir);
	const char *files[] = {path};
	tr_config *c = NULL;
	tr_diag d;
	tr_diag_init(&d);
	TT_RC(tr_config_load(files, 1, &c, &d), TR_EINVAL);
	char want1[256], want2[256];
	snprintf(want1, sizeof(want1), "%s:2: actor 'bad': top_k: must be between 1 and 100, got 0",
	         path);
	snprintf(want2, sizeof(want2),
	         "%s:4: actor 'pg': backend \"postgres\" queries the node's PostgreSQL pool; "
	         "declare postgres { conninfo = \"...\" }",
	         path);
	TT_EQ(d.n, 2);
	TT_STREQ(d.msgs[0], want1);
	TT_STREQ(d.msgs[1], want2);
	tr_diag_free(&d);
	/* the same through the command (meson passes its path) */
	const char *exe = getenv("TROUPE_EXE");
	if (exe != NULL) {
		char cmd[512], out[1024], want[600];
		snprintf(cmd, sizeof(cmd), "'%s' check '%s' 2>&1", exe, path);
		FILE *p = popen(cmd, "r");
		TT_ASSERT(p != NULL);
		size_t n = fread(out, 1, sizeof(out) - 1, p);
		out[n] = '\0';
		int st = pclose(p);
		snprintf(want, sizeof(want), "%s\n%s\n", want1, want2);
		TT_STREQ(out, want);
		TT_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	} else {
		fprintf(stderr, "  (TROUPE_EXE not set: troupe check itself not run)\n");
	}
	/* the assistant's own file is valid with the kind registered */
	const char *asst[] = {TR_SOURCE_ROOT "/pipelines/assistant.lua"};
	tr_diag_init(&d);
	TT_OK(tr_config_load(asst, 1, &c, &d));
	TT_EQ(d.n, 0);
	tr_diag_free(&d);
	tr_config_free(c);
	rm_tree(dir);
}

TT_LIST = {
	TT_ENTRY(tokens_lowercase_stopwords_stems_utf8),
	TT_ENTRY(stop_words),
	TT_ENTRY(chunks_overlap_and_line_sources),
	TT_ENTRY(markdown_sections_headings_and_fences),
	TT_ENTRY(listing_recurses_filters_and_skips_big_files),
	TT_ENTRY(invalid_utf8_in_files_is_replaced),
	TT_ENTRY(empty_folder_answers_nothing),
	TT_ENTRY(quality_test_corpus),
	TT_ENTRY(quality_assistant_docs),
	TT_ENTRY(actor_answers_passages_and_sources),
	TT_ENTRY(actor_bad_inputs),
	TT_ENTRY(actor_missing_dir_fails_to_start),
	TT_ENTRY(instances_share_one_index),
	TT_ENTRY(watch_rebuilds_when_files_change),
	TT_ENTRY(no_watch_rereads_on_a_new_instance),
	TT_ENTRY(settings_errors),
	TT_ENTRY(loader_reports_file_and_line),
	TT_END,
};

TT_MAIN()
