/*
 * actors/rag/rag.h -- the parts of the rag kind: its embedded BM25 index
 * (index.c), the sharing of one index among every instance that reads
 * the same folder with the same settings, and its rebuild when the files
 * change (shared.c). The actor itself is rag.c.
 *
 * Design notes.
 *  - An index is immutable once built and refcounted: readers on any
 *    thread hold a reference while they use it; a rebuild makes a new one
 *    and swaps it in, so a query never sees a half-built index and never
 *    waits for a build.
 *  - Text is kept once: a chunk is a byte range of its file's text, so
 *    overlapping chunks share their bytes.
 *  - Postings are one flat array per field (CSR): term t's chunks are
 *    post_chunk[post_start[t] .. post_start[t + 1]), ascending, with their
 *    term frequencies in post_tf. 6 bytes per (term, chunk) pair.
 */
#ifndef TR_ACTORS_RAG_H
#define TR_ACTORS_RAG_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define RAG_FILE_MAX (16u << 20) /* bigger files are skipped (and counted) */
#define RAG_TERM_MAX 64          /* longer tokens are not indexed (nor looked up) */
#define RAG_QUERY_TERMS 64       /* distinct query terms used, at most */
#define RAG_TOP_MAX 100          /* top_k's upper bound */
#define RAG_DEPTH_MAX 32         /* folder nesting followed, at most */

/* ---- tokens ------------------------------------------------------------ */

/*
 * The tokeniser shared by indexing and queries, so both see the same
 * terms: a term is a run of ASCII letters and digits and bytes >= 0x80
 * (so UTF-8 words stay whole, uncased); ASCII is lower-cased; a small
 * English stop-word list is dropped; plural endings are stripped
 * (Harman's S stemmer: "retries" -> "retry", "timeouts" -> "timeout").
 * Tokens over RAG_TERM_MAX bytes are skipped.
 */
typedef struct rag_tok {
	const unsigned char *p, *end;
	char term[RAG_TERM_MAX]; /* the current term, not NUL-terminated */
	size_t len;
} rag_tok;

void rag_tok_init(rag_tok *t, const char *s, size_t n);
/* 1 with the next term in t->term / t->len, 0 at the end. */
int rag_tok_next(rag_tok *t);
/* Whether the lower-case word w is a stop word. */
int rag_stopword(const char *w, size_t n);

/* ---- files -------------------------------------------------------------- */

typedef struct rag_file {
	char *path;       /* relative to the folder, '/'-separated; owned */
	uint64_t size;
	int64_t mtime_ns;
	uint64_t ino;
} rag_file;

/* The files of a folder that an index reads, sorted by path. */
typedef struct rag_listing {
	rag_file *v;
	size_t n;
} rag_listing;

/*
 * Lists `dir` recursively: regular files (symbolic links to files are
 * followed; to folders, not: no loops) whose name ends in one of `ext`
 * (lower-case suffixes with their dot; compared case-insensitively).
 * Names starting with '.' are skipped (.git, editor swap files). At most
 * RAG_DEPTH_MAX levels. TR_OK, or TR_EIO with err when `dir` cannot be
 * opened; unreadable subfolders are skipped.
 */
int rag_scan(const char *dir, char *const *ext, size_t next, rag_listing *out, char *err,
             size_t errlen);
/* Whether two listings name the same files with the same size, mtime and inode. */
int rag_listing_same(const rag_listing *a, const rag_listing *b);
void rag_listing_free(rag_listing *l);

/* ---- the index ---------------------------------------------------------- */

typedef struct rag_build_opts {
	uint32_t chunk;           /* words per chunk, >= 1 */
	uint32_t overlap;         /* words two consecutive chunks share, < chunk */
	const atomic_int *cancel; /* optional: the build stops with TR_ECANCELED once set */
} rag_build_opts;

typedef struct rag_index_stats {
	size_t files;         /* files read */
	size_t skipped_big;   /* over RAG_FILE_MAX */
	size_t unreadable;    /* vanished or unreadable since the scan */
	size_t text_bytes;    /* bytes of text kept (the corpus) */
	size_t chunks, terms, postings;
	size_t mem_bytes;     /* every byte the index holds (its allocations) */
	uint64_t build_ns;
} rag_index_stats;

typedef struct rag_chunk {
	size_t off;     /* into text */
	uint32_t len;
	uint32_t ntok;  /* terms indexed: the document length of BM25 */
	uint32_t file;  /* index into the file table */
	uint32_t src;   /* offset of its NUL-terminated source in srcs */
} rag_chunk;

typedef struct rag_index {
	atomic_uint refs;
	char *text;           /* every file's bytes, one after the other */
	size_t text_len;
	rag_chunk *chunks;
	uint32_t nchunks;
	char *srcs;           /* sources: "guide.md#Heading", "notes.txt:12", file paths */
	size_t srcs_len;
	uint32_t *file_path;  /* per file: offset of its relative path in srcs */
	uint32_t nfiles;
	uint64_t serial;      /* unique per index built in the process */
	/* vocabulary: open addressing, slot = hash << 32 | (term id + 1), 0 empty */
	uint64_t *slots;
	uint32_t mask;
	uint32_t *term_off;   /* into terms */
	uint8_t *term_len;
	char *terms;
	size_t terms_len;
	uint32_t nterms;
	uint32_t *post_start; /* nterms + 1 */
	uint32_t *post_chunk;
	uint16_t *post_tf;
	double avgdl;
	rag_index_stats st;
} rag_index;

/*
 * Builds an index of the files in `ls` (paths relative to `dir`): each is
 * split into sections (markdown: at '#' headings outside code fences;
 * other files: one section), each section into chunks of o->chunk words
 * (whitespace-separated) overlapping by o->overlap. A chunk's source is
 * "path#Heading" under a markdown heading, else "path:LINE" (its first
 * line). Files that vanished or grew past RAG_FILE_MAX since the scan are
 * counted and skipped. TR_OK with *out (one reference), TR_ENOMEM, or
 * TR_ECANCELED.
 */
int rag_index_build(const char *dir, const rag_listing *ls, const rag_build_opts *o,
                    rag_index **out);
void rag_index_ref(rag_index *ix);
/* Drops one reference; the last one frees the index. NULL is ignored. */
void rag_index_unref(rag_index *ix);

static inline const char *rag_chunk_source(const rag_index *ix, uint32_t c)
{
	return ix->srcs + ix->chunks[c].src;
}
static inline const char *rag_chunk_path(const rag_index *ix, uint32_t c)
{
	return ix->srcs + ix->file_path[ix->chunks[c].file];
}

/* ---- queries ------------------------------------------------------------ */

typedef struct rag_query_opts {
	double k1, b;
	uint32_t top_k;     /* 1..RAG_TOP_MAX */
	double min_score;
} rag_query_opts;

typedef struct rag_hit {
	uint32_t chunk;
	double score;
} rag_hit;

/* A reader's working memory: a score and a length norm per chunk. Owned
 * by one reader (an actor instance); made for each new index, not per
 * query. Zero-initialise. */
typedef struct rag_scratch {
	float *acc;
	float *norm;
	uint32_t *touched;
	uint32_t cap;
	uint64_t serial;  /* the index norm was computed for */
	double k1, b;
} rag_scratch;

void rag_scratch_free(rag_scratch *s);

/*
 * Scores every chunk that holds a term of q (its first RAG_QUERY_TERMS
 * distinct terms the index knows) with BM25 (idf = ln(1 + (N - df + 0.5)
 * / (df + 0.5)), so scores are >= 0) and writes the best qo->top_k with a
 * score >= qo->min_score to hits, best first (ties: earlier chunk first).
 * Returns how many, or TR_ENOMEM (scratch could not grow).
 */
int rag_query(const rag_index *ix, rag_scratch *s, const char *q, size_t qn,
              const rag_query_opts *qo, rag_hit *hits);

/* ---- sharing ------------------------------------------------------------ */

/*
 * One index per (folder, chunk, overlap, extensions, watch) in the
 * process, shared by every actor instance that asks for it: refcounted,
 * built by the first, freed by the last. With watch, a thread of its own
 * lists the folder every RAG_WATCH_MS and, when a file was added,
 * removed or changed, builds a new index (off the scheduler's threads)
 * and swaps it in; readers move to it at their next query.
 */
#define RAG_WATCH_MS 2000

typedef struct rag_shared rag_shared;

typedef struct rag_shared_opts {
	const char *dir;     /* as configured: relative to the current directory */
	uint32_t chunk, overlap;
	char *const *ext;    /* lower-case suffixes with their dot */
	size_t next;
	int watch;
} rag_shared_opts;

/* TR_OK with *out, or an error with a message in err ("dir: cannot open
 * 'docs': No such file or directory"). Builds the index now (on the
 * caller's thread) if no instance has it yet. */
int rag_shared_acquire(const rag_shared_opts *o, rag_shared **out, char *err, size_t errlen);
/* The last release stops the watcher (an unfinished build is cancelled)
 * and frees the entry; indexes still referenced live on until unref. */
void rag_shared_release(rag_shared *sh);
/* The current index, with a reference for the caller. */
rag_index *rag_shared_current(rag_shared *sh);
/* Bumped each time a new index is swapped in (acquire load). */
unsigned rag_shared_gen(rag_shared *sh);
/* Entries alive in the process (tests). */
size_t rag_shared_count(void);

#endif
