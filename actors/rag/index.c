/*
 * actors/rag/index.c -- the embedded BM25 index: tokeniser, folder
 * listing, chunking, the inverted index and queries. See rag.h.
 *
 * Build cost is linear in the corpus: one pass reads the files, cuts
 * chunks and interns their terms (an open-addressing hash over term
 * bytes); postings are then laid out in two counting passes, so no sort
 * is needed and chunk ids come out ascending.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <uv.h>

#include <troupe/err.h>

#include "actors/rag/rag.h"
#include "core/alloc.h"

/* ---- tokens ------------------------------------------------------------ */

/* Short on purpose: BM25's idf already discounts common words; this only
 * keeps the postings of pure function words out of the index. At most
 * STOP_MAX bytes each; kept in alphabetical order for the reader (the
 * lookup table is sorted at first use anyway). */
static const char *const stop_words[] = {
	"a", "about", "am", "an", "and", "are", "as", "at", "be", "been", "being",
	"but", "by", "can", "could", "d", "did", "do", "does", "doing", "for", "from",
	"had", "has", "have", "having", "he", "her", "here", "him", "his", "how", "i",
	"if", "in", "into", "is", "it", "its", "ll", "m", "me", "my", "of", "on", "or",
	"our", "re", "s", "she", "should", "so", "t", "than", "that", "the", "their",
	"them", "then", "there", "these", "they", "this", "those", "to", "too", "us",
	"ve", "was", "we", "were", "what", "which", "who", "whom", "why", "will",
	"with", "would", "you", "your",
};

#define NSTOP (sizeof(stop_words) / sizeof(stop_words[0]))
#define STOP_MAX 6 /* the longest stop word */

/* A word of at most 8 bytes as a big-endian integer, zero-padded: integer
 * order is then strcmp order, and a compare is one instruction. */
static uint64_t pack8(const char *w, size_t n)
{
	uint64_t v = 0;
	for (size_t i = 0; i < 8; i++)
		v = v << 8 | (i < n ? (unsigned char)w[i] : 0);
	return v;
}

static uint64_t stop_packed[NSTOP];
static uv_once_t stop_once = UV_ONCE_INIT;

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static void stop_init(void)
{
	for (size_t i = 0; i < NSTOP; i++)
		stop_packed[i] = pack8(stop_words[i], strlen(stop_words[i]));
	qsort(stop_packed, NSTOP, sizeof(stop_packed[0]), cmp_u64);
}

int rag_stopword(const char *w, size_t n)
{
	if (n == 0 || n > STOP_MAX)
		return 0;
	uv_once(&stop_once, stop_init);
	uint64_t v = pack8(w, n);
	size_t lo = 0, hi = NSTOP;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (stop_packed[mid] == v)
			return 1;
		if (stop_packed[mid] > v)
			hi = mid;
		else
			lo = mid + 1;
	}
	return 0;
}

static int word_byte(unsigned c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c >= 0x80;
}

static int ends(const char *w, size_t n, const char *suf)
{
	size_t k = strlen(suf);
	return n >= k && memcmp(w + n - k, suf, k) == 0;
}

/* Harman's S stemmer, on ASCII words only (UTF-8 words are left alone:
 * their plural rules are not English ones). */
static size_t stem(char *w, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)w[i] >= 0x80)
			return n;
	if (n > 3 && ends(w, n, "ies") && !ends(w, n, "eies") && !ends(w, n, "aies")) {
		w[n - 3] = 'y';
		return n - 2;
	}
	if (n > 3 && ends(w, n, "es") && !ends(w, n, "aes") && !ends(w, n, "ees") &&
	    !ends(w, n, "oes"))
		return n - 1;
	if (n > 3 && ends(w, n, "s") && !ends(w, n, "us") && !ends(w, n, "ss"))
		return n - 1;
	return n;
}

void rag_tok_init(rag_tok *t, const char *s, size_t n)
{
	t->p = (const unsigned char *)s;
	t->end = t->p + n;
	t->len = 0;
}

int rag_tok_next(rag_tok *t)
{
	while (t->p < t->end) {
		while (t->p < t->end && !word_byte(*t->p))
			t->p++;
		const unsigned char *w = t->p;
		while (t->p < t->end && word_byte(*t->p))
			t->p++;
		size_t n = (size_t)(t->p - w);
		if (n == 0 || n > RAG_TERM_MAX)
			continue;
		for (size_t i = 0; i < n; i++) {
			unsigned c = w[i];
			t->term[i] = (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
		}
		if (rag_stopword(t->term, n))
			continue;
		t->len = stem(t->term, n);
		return 1;
	}
	return 0;
}

/* ---- listing ------------------------------------------------------------ */

typedef struct lister {
	rag_listing *out;
	size_t cap;
	char *const *ext;
	size_t next;
	char path[4096];  /* dir + '/' + relative path being walked */
	size_t root_len;  /* bytes of dir + '/' */
	int failed;       /* out of memory */
} lister;

static int ext_ok(const lister *l, const char *name)
{
	size_t n = strlen(name);
	for (size_t i = 0; i < l->next; i++) {
		size_t k = strlen(l->ext[i]);
		if (n > k && strncasecmp(name + n - k, l->ext[i], k) == 0)
			return 1;
	}
	return 0;
}

static int add_file(lister *l, const char *rel, const struct stat *st)
{
	if (l->out->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 64;
		rag_file *v = tr__realloc(l->out->v, cap * sizeof(*v));
		if (v == NULL)
			return TR_ENOMEM;
		l->out->v = v;
		l->cap = cap;
	}
	rag_file *f = &l->out->v[l->out->n];
	f->path = tr__strndup(rel, strlen(rel));
	if (f->path == NULL)
		return TR_ENOMEM;
	f->size = (uint64_t)st->st_size;
	f->mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
	f->ino = (uint64_t)st->st_ino;
	l->out->n++;
	return TR_OK;
}

/* Walks l->path (a folder, path length `len`), depth levels below the root. */
static void walk(lister *l, size_t len, int depth)
{
	DIR *d = opendir(l->path);
	struct dirent *e;
	if (d == NULL)
		return; /* unreadable subfolder: skipped, as documented */
	while (!l->failed && (e = readdir(d)) != NULL) {
		size_t n = strlen(e->d_name);
		struct stat st;
		if (e->d_name[0] == '.' || len + 1 + n >= sizeof(l->path))
			continue;
		l->path[len] = '/';
		memcpy(l->path + len + 1, e->d_name, n + 1);
		if (lstat(l->path, &st) != 0)
			continue;
		if (S_ISDIR(st.st_mode)) {
			if (depth + 1 < RAG_DEPTH_MAX)
				walk(l, len + 1 + n, depth + 1);
			continue;
		}
		if (S_ISLNK(st.st_mode) && (stat(l->path, &st) != 0 || !S_ISREG(st.st_mode)))
			continue; /* links to folders are not followed: no loops */
		if (!S_ISREG(st.st_mode) || !ext_ok(l, e->d_name))
			continue;
		if (add_file(l, l->path + l->root_len, &st) != TR_OK)
			l->failed = 1;
	}
	closedir(d);
	l->path[len] = '\0';
}

static int by_path(const void *a, const void *b)
{
	return strcmp(((const rag_file *)a)->path, ((const rag_file *)b)->path);
}

void rag_listing_free(rag_listing *l)
{
	for (size_t i = 0; l->v != NULL && i < l->n; i++)
		tr__free(l->v[i].path);
	tr__free(l->v);
	l->v = NULL;
	l->n = 0;
}

int rag_scan(const char *dir, char *const *ext, size_t next, rag_listing *out, char *err,
             size_t errlen)
{
	lister *l = tr__calloc(1, sizeof(*l));
	size_t n = strlen(dir);
	struct stat st;
	out->v = NULL;
	out->n = 0;
	if (l == NULL) {
		snprintf(err, errlen, "out of memory");
		return TR_ENOMEM;
	}
	if (n + 2 >= sizeof(l->path)) {
		snprintf(err, errlen, "cannot open '%s': path too long", dir);
		tr__free(l);
		return TR_EIO;
	}
	int e = stat(dir, &st) != 0 ? errno : 0;
	if (e != 0 || !S_ISDIR(st.st_mode)) {
		snprintf(err, errlen, "cannot open '%s': %s", dir, e ? strerror(e) : "not a folder");
		tr__free(l);
		return TR_EIO;
	}
	l->out = out;
	l->ext = ext;
	l->next = next;
	memcpy(l->path, dir, n + 1);
	while (n > 1 && l->path[n - 1] == '/')
		l->path[--n] = '\0';
	l->root_len = n + 1;
	walk(l, n, 0);
	int failed = l->failed;
	tr__free(l);
	if (failed) {
		rag_listing_free(out);
		snprintf(err, errlen, "out of memory");
		return TR_ENOMEM;
	}
	if (out->n > 1)
		qsort(out->v, out->n, sizeof(out->v[0]), by_path);
	return TR_OK;
}

int rag_listing_same(const rag_listing *a, const rag_listing *b)
{
	if (a->n != b->n)
		return 0;
	for (size_t i = 0; i < a->n; i++) {
		const rag_file *x = &a->v[i], *y = &b->v[i];
		if (x->size != y->size || x->mtime_ns != y->mtime_ns || x->ino != y->ino ||
		    strcmp(x->path, y->path) != 0)
			return 0;
	}
	return 1;
}

/* ---- building ------------------------------------------------------------ */

/* Growable array: *p holds *cap elements of `size` bytes; makes room for
 * `need`. */
static int grow(void *pp, size_t *cap, size_t need, size_t size)
{
	void **p = pp;
	if (need <= *cap)
		return TR_OK;
	size_t c = *cap ? *cap : 16;
	while (c < need)
		c *= 2;
	void *q = tr__realloc(*p, c * size);
	if (q == NULL)
		return TR_ENOMEM;
	*p = q;
	*cap = c;
	return TR_OK;
}

/* Returns p shrunk to n elements (or p itself if the shrink fails). */
static void *fit(void *p, size_t n, size_t size)
{
	void *q = n ? tr__realloc(p, n * size) : NULL;
	if (n == 0) {
		tr__free(p);
		return NULL;
	}
	return q ? q : p;
}

/* A word of the section being chunked: text[beg, end). */
typedef struct word {
	size_t beg, end;
} word;

/* The build's working state; the index fields are filled as it goes. */
typedef struct builder {
	rag_index *ix;
	const rag_build_opts *o;
	size_t text_cap, chunks_cap, srcs_cap, terms_cap, vocab_cap;
	/* per chunk: its (term, tf) pairs are pair_*[pair_start[c] .. pair_start[c + 1]) */
	uint32_t *pair_term;
	uint16_t *pair_tf;
	size_t npairs, pairs_cap, tpairs_cap;
	size_t *pair_start;
	size_t pstart_cap;
	/* per term: the last chunk that had it, and where its pair is */
	uint32_t *last_chunk;
	size_t *last_pair;
	word *words;
	size_t words_cap;
	uint64_t total_tok;
} builder;

static uint32_t hash_term(const char *s, size_t n)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)s[i]) * 16777619u;
	return h;
}

/* A slot holds a term's hash (high half) and its id + 1 (low half; 0 =
 * empty): probing compares hashes without touching the term arrays. */
static int vocab_rehash(rag_index *ix, uint32_t nslots)
{
	uint64_t *s = tr__calloc(nslots, sizeof(*s));
	if (s == NULL)
		return TR_ENOMEM;
	for (uint32_t k = 0; ix->slots != NULL && k <= ix->mask; k++) {
		uint64_t v = ix->slots[k];
		if (v == 0)
			continue;
		uint32_t i = (uint32_t)(v >> 32) & (nslots - 1);
		while (s[i] != 0)
			i = (i + 1) & (nslots - 1);
		s[i] = v;
	}
	tr__free(ix->slots);
	ix->slots = s;
	ix->mask = nslots - 1;
	return TR_OK;
}

/* Term w's id, or -1 with *slot the empty slot where it would go. */
static long find_term(const rag_index *ix, const char *w, size_t n, uint32_t h, uint32_t *slot)
{
	uint32_t i = h & ix->mask;
	for (;;) {
		uint64_t v = ix->slots[i];
		if (v == 0) {
			*slot = i;
			return -1;
		}
		uint32_t id = (uint32_t)v - 1;
		if ((uint32_t)(v >> 32) == h && ix->term_len[id] == n &&
		    memcmp(ix->terms + ix->term_off[id], w, n) == 0)
			return id;
		i = (i + 1) & ix->mask;
	}
}

/* Makes room for one more term in every per-term array. */
static int vocab_grow(builder *b)
{
	rag_index *ix = b->ix;
	void *p;
	if (ix->nterms < b->vocab_cap)
		return TR_OK;
	size_t cap = b->vocab_cap ? b->vocab_cap * 2 : 1024;
#define VOCAB_GROW(field, type)                                                 \
	if ((p = tr__realloc(field, cap * sizeof(type))) == NULL)                 \
		return TR_ENOMEM;                                                    \
	field = p
	VOCAB_GROW(ix->term_off, uint32_t);
	VOCAB_GROW(ix->term_len, uint8_t);
	VOCAB_GROW(b->last_chunk, uint32_t);
	VOCAB_GROW(b->last_pair, size_t);
#undef VOCAB_GROW
	b->vocab_cap = cap;
	return TR_OK;
}

/* The id of term w, added if new; -1 when out of memory. */
static long intern(builder *b, const char *w, size_t n)
{
	rag_index *ix = b->ix;
	uint32_t h = hash_term(w, n), slot;
	long id = find_term(ix, w, n, h, &slot);
	if (id >= 0)
		return id;
	if (ix->nterms == UINT32_MAX - 1 || ix->terms_len + n > UINT32_MAX ||
	    vocab_grow(b) != TR_OK || grow(&ix->terms, &b->terms_cap, ix->terms_len + n, 1) != TR_OK)
		return -1;
	id = ix->nterms++;
	memcpy(ix->terms + ix->terms_len, w, n);
	ix->term_off[id] = (uint32_t)ix->terms_len;
	ix->term_len[id] = (uint8_t)n;
	ix->terms_len += n;
	b->last_chunk[id] = UINT32_MAX;
	ix->slots[slot] = (uint64_t)h << 32 | ((uint64_t)id + 1);
	/* keep the table at most half full */
	if ((uint64_t)ix->nterms * 2 > (uint64_t)ix->mask + 1 &&
	    vocab_rehash(ix, (ix->mask + 1) * 2) != TR_OK)
		return -1;
	return id;
}

/* Appends a NUL-terminated source to srcs: file f's path (f !=
 * UINT32_MAX) or else `a`, then c[0, cn); its offset goes to *off. The
 * path is read after srcs has grown: it lives in srcs itself. */
static int add_src(builder *b, uint32_t f, const char *a, const char *c, size_t cn,
                   uint32_t *off)
{
	rag_index *ix = b->ix;
	size_t an = f != UINT32_MAX ? strlen(ix->srcs + ix->file_path[f]) : strlen(a);
	size_t n = an + cn + 1;
	if (ix->srcs_len + n > UINT32_MAX ||
	    grow(&ix->srcs, &b->srcs_cap, ix->srcs_len + n, 1) != TR_OK)
		return TR_ENOMEM;
	if (f != UINT32_MAX)
		a = ix->srcs + ix->file_path[f];
	*off = (uint32_t)ix->srcs_len;
	memcpy(ix->srcs + ix->srcs_len, a, an);
	memcpy(ix->srcs + ix->srcs_len + an, c, cn);
	ix->srcs[ix->srcs_len + an + cn] = '\0';
	ix->srcs_len += n;
	return TR_OK;
}

/* Indexes the chunk text[off, off+len) of file `file`, source `src`. */
static int add_chunk(builder *b, size_t off, size_t len, uint32_t file, uint32_t src)
{
	rag_index *ix = b->ix;
	if (ix->nchunks == UINT32_MAX - 1 ||
	    grow(&ix->chunks, &b->chunks_cap, (size_t)ix->nchunks + 1, sizeof(rag_chunk)) != TR_OK ||
	    grow(&b->pair_start, &b->pstart_cap, (size_t)ix->nchunks + 2, sizeof(size_t)) != TR_OK)
		return TR_ENOMEM;
	uint32_t c = ix->nchunks;
	rag_tok t;
	uint32_t ntok = 0;
	b->pair_start[c] = b->npairs;
	rag_tok_init(&t, ix->text + off, len);
	while (rag_tok_next(&t)) {
		long id = intern(b, t.term, t.len);
		if (id < 0)
			return TR_ENOMEM;
		ntok++;
		if (b->last_chunk[id] == c) {
			if (b->pair_tf[b->last_pair[id]] < UINT16_MAX)
				b->pair_tf[b->last_pair[id]]++;
			continue;
		}
		if (grow(&b->pair_term, &b->tpairs_cap, b->npairs + 1, sizeof(uint32_t)) != TR_OK ||
		    grow(&b->pair_tf, &b->pairs_cap, b->npairs + 1, sizeof(uint16_t)) != TR_OK)
			return TR_ENOMEM;
		b->last_chunk[id] = c;
		b->last_pair[id] = b->npairs;
		b->pair_term[b->npairs] = (uint32_t)id;
		b->pair_tf[b->npairs] = 1;
		b->npairs++;
	}
	ix->chunks[c] = (rag_chunk){.off = off, .len = (uint32_t)len, .ntok = ntok, .file = file,
	                            .src = src};
	ix->nchunks++;
	b->pair_start[c + 1] = b->npairs;
	b->total_tok += ntok;
	return TR_OK;
}

static int is_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* Cuts text[s, e) into chunks of words. `src` (if not UINT32_MAX) is every
 * chunk's source; otherwise each gets "path:LINE", counting lines from
 * `line` at offset s. */
static int chunk_section(builder *b, size_t s, size_t e, uint32_t file, uint32_t src, int line)
{
	rag_index *ix = b->ix;
	const unsigned char *t = (const unsigned char *)ix->text;
	size_t nw = 0;
	for (size_t i = s; i < e;) {
		while (i < e && is_space(t[i]))
			i++;
		if (i == e)
			break;
		if (grow(&b->words, &b->words_cap, nw + 1, sizeof(word)) != TR_OK)
			return TR_ENOMEM;
		b->words[nw].beg = i;
		while (i < e && !is_space(t[i]))
			i++;
		b->words[nw++].end = i;
	}
	size_t stride = b->o->chunk - b->o->overlap, at = s;
	for (size_t w = 0; w < nw; w += stride) {
		size_t last = w + b->o->chunk < nw ? w + b->o->chunk : nw;
		uint32_t csrc = src;
		for (; at < b->words[w].beg; at++)
			line += t[at] == '\n';
		if (csrc == UINT32_MAX) {
			char num[24];
			int k = snprintf(num, sizeof(num), ":%d", line);
			if (add_src(b, file, NULL, num, (size_t)k, &csrc) != TR_OK)
				return TR_ENOMEM;
		}
		/* files are <= 16 MiB, so a chunk's length fits in 32 bits */
		int rc = add_chunk(b, b->words[w].beg, b->words[last - 1].end - b->words[w].beg, file, csrc);
		if (rc != TR_OK)
			return rc;
		if (last == nw)
			break;
	}
	return TR_OK;
}

/* A markdown heading line text[s, e): "#".."######" then a space. On
 * yes, its title (trimmed, at most 80 bytes) is text[*ts, *te). */
static int heading(const char *text, size_t s, size_t e, size_t *ts, size_t *te)
{
	size_t i = s, h = 0;
	while (i < e && text[i] == '#' && h < 7)
		i++, h++;
	if (h == 0 || h > 6 || (i < e && text[i] != ' ' && text[i] != '\t'))
		return 0;
	while (i < e && is_space((unsigned char)text[i]))
		i++;
	size_t j = e, k;
	while (j > i && is_space((unsigned char)text[j - 1]))
		j--;
	/* a closing run of '#' goes only after a space ("# C#" keeps its '#') */
	for (k = j; k > i && text[k - 1] == '#'; k--)
		;
	if (k < j && (k == i || text[k - 1] == ' ' || text[k - 1] == '\t'))
		for (j = k; j > i && is_space((unsigned char)text[j - 1]); j--)
			;
	if (j == i)
		return 0; /* an empty heading names nothing */
	if (j - i > 80) {
		j = i + 80;
		while (j > i && ((unsigned char)text[j] & 0xc0) == 0x80)
			j--; /* never cut a UTF-8 sequence */
	}
	*ts = i;
	*te = j;
	return 1;
}

static int is_fence(const char *text, size_t s, size_t e)
{
	while (s < e && text[s] == ' ')
		s++;
	return e - s >= 3 && (memcmp(text + s, "```", 3) == 0 || memcmp(text + s, "~~~", 3) == 0);
}

/* Whether text[s, e) is one line (a heading) and then only white space. */
static int only_heading(const char *text, size_t s, size_t e)
{
	while (s < e && text[s] != '\n')
		s++;
	for (; s < e; s++)
		if (text[s] != '\n' && text[s] != ' ' && text[s] != '\t' && text[s] != '\r')
			return 0;
	return 1;
}

/* Splits file `file` (text[s, e)) into sections and chunks them. */
static int chunk_file(builder *b, uint32_t file, size_t s, size_t e, int md)
{
	rag_index *ix = b->ix;
	if (!md)
		return chunk_section(b, s, e, file, UINT32_MAX, 1);
	size_t sec = s;
	int sec_line = 1, line = 1, fenced = 0;
	uint32_t sec_src = UINT32_MAX;
	for (size_t i = s; i < e;) {
		size_t eol = i;
		while (eol < e && ix->text[eol] != '\n')
			eol++;
		size_t ts, te;
		if (is_fence(ix->text, i, eol)) {
			fenced = !fenced;
		} else if (!fenced && heading(ix->text, i, eol, &ts, &te)) {
			/* A section that is only its heading ("# Backpressure"
			 * right before "## max_inflight") is no passage of its own:
			 * its title would be retrieved with nothing to say. It
			 * joins the next section (which names the source). */
			int bare = sec_src != UINT32_MAX && only_heading(ix->text, sec, i);
			int rc = bare ? TR_OK : chunk_section(b, sec, i, file, sec_src, sec_line);
			if (rc != TR_OK)
				return rc;
			char title[84];
			title[0] = '#';
			memcpy(title + 1, ix->text + ts, te - ts);
			if ((rc = add_src(b, file, NULL, title, te - ts + 1, &sec_src)) != TR_OK)
				return rc;
			if (!bare) {
				sec = i;
				sec_line = line;
			}
		}
		i = eol < e ? eol + 1 : e;
		line++;
	}
	return chunk_section(b, sec, e, file, sec_src, sec_line);
}

static int is_md(const char *path)
{
	size_t n = strlen(path);
	return (n > 3 && strcasecmp(path + n - 3, ".md") == 0) ||
	       (n > 9 && strcasecmp(path + n - 9, ".markdown") == 0);
}

/* Replaces each byte that is not part of a valid UTF-8 sequence (stray
 * continuation bytes, overlong forms, surrogates, past U+10FFFF) with
 * '?', in place: passages are handed on as strings (JSON, prompts), and
 * the length, so every offset, stays the same. Latin-1 files lose their
 * accented letters; nothing else changes. */
static void utf8_scrub(char *s, size_t n)
{
	unsigned char *p = (unsigned char *)s;
	for (size_t i = 0; i < n;) {
		unsigned c = p[i];
		size_t k = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3
		                      : c >= 0xf0 && c <= 0xf4                ? 4
		                                                              : 0;
		int ok = k > 0 && i + k <= n;
		for (size_t j = 1; ok && j < k; j++)
			ok = (p[i + j] & 0xc0) == 0x80;
		if (ok && k == 3)
			ok = !(c == 0xe0 && p[i + 1] < 0xa0) && !(c == 0xed && p[i + 1] >= 0xa0);
		if (ok && k == 4)
			ok = !(c == 0xf0 && p[i + 1] < 0x90) && !(c == 0xf4 && p[i + 1] >= 0x90);
		if (!ok) {
			p[i++] = '?';
			continue;
		}
		i += k;
	}
}

/* Reads dir/rel into the text arena: TR_OK (appended), TR_ENOTFOUND
 * (unreadable: skipped), TR_ETOOBIG (skipped), TR_ENOMEM. */
static int read_file(builder *b, const char *dir, const char *rel, size_t *off, size_t *len)
{
	rag_index *ix = b->ix;
	char path[4096];
	struct stat st;
	if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, rel) >= sizeof(path))
		return TR_ENOTFOUND;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return TR_ENOTFOUND;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return TR_ENOTFOUND;
	}
	if ((uint64_t)st.st_size > RAG_FILE_MAX) {
		close(fd);
		return TR_ETOOBIG;
	}
	/* Read up to one byte past the stated size: a file growing while we
	 * read is cut at RAG_FILE_MAX, never read without bound. */
	size_t want = (size_t)st.st_size + 1, got = 0;
	if (want > RAG_FILE_MAX)
		want = RAG_FILE_MAX;
	if (grow(&ix->text, &b->text_cap, ix->text_len + want, 1) != TR_OK) {
		close(fd);
		return TR_ENOMEM;
	}
	while (got < want) {
		ssize_t r = read(fd, ix->text + ix->text_len + got, want - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	close(fd);
	utf8_scrub(ix->text + ix->text_len, got);
	*off = ix->text_len;
	*len = got;
	ix->text_len += got;
	return TR_OK;
}

/* Lays the (term, tf) pairs out as postings grouped by term. */
static int postings(builder *b)
{
	rag_index *ix = b->ix;
	ix->post_start = tr__calloc((size_t)ix->nterms + 1, sizeof(uint32_t));
	ix->post_chunk = tr__malloc((b->npairs ? b->npairs : 1) * sizeof(uint32_t));
	ix->post_tf = tr__malloc((b->npairs ? b->npairs : 1) * sizeof(uint16_t));
	if (ix->post_start == NULL || ix->post_chunk == NULL || ix->post_tf == NULL ||
	    b->npairs > UINT32_MAX)
		return TR_ENOMEM;
	for (size_t i = 0; i < b->npairs; i++)
		ix->post_start[b->pair_term[i] + 1]++;
	for (uint32_t t = 0; t < ix->nterms; t++) {
		ix->post_start[t + 1] += ix->post_start[t];
		b->last_chunk[t] = ix->post_start[t]; /* reused: the term's write cursor */
	}
	for (uint32_t c = 0; c < ix->nchunks; c++) {
		for (size_t i = b->pair_start[c]; i < b->pair_start[c + 1]; i++) {
			uint32_t t = b->pair_term[i], at = b->last_chunk[t]++;
			ix->post_chunk[at] = c;
			ix->post_tf[at] = b->pair_tf[i];
		}
	}
	ix->st.postings = b->npairs;
	return TR_OK;
}

static void builder_free(builder *b)
{
	tr__free(b->pair_term);
	tr__free(b->pair_tf);
	tr__free(b->pair_start);
	tr__free(b->last_chunk);
	tr__free(b->last_pair);
	tr__free(b->words);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Index serial numbers: a reader's scratch remembers the index it was
 * prepared for by serial, since a freed index's address may be reused. */
static atomic_ullong serials;

int rag_index_build(const char *dir, const rag_listing *ls, const rag_build_opts *o,
                    rag_index **out)
{
	uint64_t t0 = now_ns();
	builder b;
	int rc = TR_ENOMEM;
	rag_index *ix = tr__calloc(1, sizeof(*ix));
	memset(&b, 0, sizeof(b));
	*out = NULL;
	if (ix == NULL)
		return TR_ENOMEM;
	atomic_init(&ix->refs, 1);
	ix->serial = atomic_fetch_add_explicit(&serials, 1, memory_order_relaxed) + 1;
	b.ix = ix;
	b.o = o;
	if (ls->n >= UINT32_MAX)
		goto fail;
	ix->file_path = tr__calloc(ls->n ? ls->n : 1, sizeof(uint32_t));
	if (ix->file_path == NULL || vocab_rehash(ix, 1024) != TR_OK)
		goto fail;
	for (size_t i = 0; i < ls->n; i++) {
		size_t off = 0, len = 0;
		if (o->cancel != NULL && atomic_load_explicit(o->cancel, memory_order_relaxed)) {
			rc = TR_ECANCELED;
			goto fail;
		}
		if (ls->v[i].size > RAG_FILE_MAX) {
			ix->st.skipped_big++; /* not even opened */
			continue;
		}
		int r = read_file(&b, dir, ls->v[i].path, &off, &len);
		if (r == TR_ETOOBIG) {
			ix->st.skipped_big++;
			continue;
		}
		if (r == TR_ENOTFOUND) {
			ix->st.unreadable++;
			continue;
		}
		if (r != TR_OK)
			goto fail;
		uint32_t f = ix->nfiles;
		if (add_src(&b, UINT32_MAX, ls->v[i].path, "", 0, &ix->file_path[f]) != TR_OK)
			goto fail;
		ix->nfiles++;
		if ((rc = chunk_file(&b, f, off, off + len, is_md(ls->v[i].path))) != TR_OK)
			goto fail;
		rc = TR_ENOMEM;
	}
	if (postings(&b) != TR_OK)
		goto fail;
	ix->avgdl = ix->nchunks ? (double)b.total_tok / ix->nchunks : 1.0;
	if (ix->avgdl <= 0)
		ix->avgdl = 1.0;
	/* Give back what the growth doubling left unused. */
	ix->text = fit(ix->text, ix->text_len, 1);
	ix->chunks = fit(ix->chunks, ix->nchunks, sizeof(rag_chunk));
	ix->srcs = fit(ix->srcs, ix->srcs_len, 1);
	ix->terms = fit(ix->terms, ix->terms_len, 1);
	ix->term_off = fit(ix->term_off, ix->nterms, sizeof(uint32_t));
	ix->term_len = fit(ix->term_len, ix->nterms, sizeof(uint8_t));
	ix->st.files = ix->nfiles;
	ix->st.text_bytes = ix->text_len;
	ix->st.chunks = ix->nchunks;
	ix->st.terms = ix->nterms;
	ix->st.mem_bytes = sizeof(*ix) + ix->text_len + (size_t)ix->nchunks * sizeof(rag_chunk) +
	                   ix->srcs_len + ix->nfiles * sizeof(uint32_t) +
	                   ((size_t)ix->mask + 1) * sizeof(uint64_t) +
	                   (size_t)ix->nterms * (sizeof(uint32_t) + 1) + ix->terms_len +
	                   ((size_t)ix->nterms + 1) * sizeof(uint32_t) +
	                   ix->st.postings * (sizeof(uint32_t) + sizeof(uint16_t));
	builder_free(&b);
	ix->st.build_ns = now_ns() - t0;
	*out = ix;
	return TR_OK;
fail:
	builder_free(&b);
	rag_index_unref(ix);
	return rc;
}

void rag_index_ref(rag_index *ix)
{
	/* relaxed: the caller already holds a reference (or the lock that
	 * guards the pointer it read), so the index cannot go meanwhile */
	atomic_fetch_add_explicit(&ix->refs, 1, memory_order_relaxed);
}

void rag_index_unref(rag_index *ix)
{
	if (ix == NULL)
		return;
	/* acq_rel: the release orders this holder's reads before the free;
	 * the acquire, on the last drop, sees every other holder's. */
	if (atomic_fetch_sub_explicit(&ix->refs, 1, memory_order_acq_rel) != 1)
		return;
	tr__free(ix->text);
	tr__free(ix->chunks);
	tr__free(ix->srcs);
	tr__free(ix->file_path);
	tr__free(ix->slots);
	tr__free(ix->term_off);
	tr__free(ix->term_len);
	tr__free(ix->terms);
	tr__free(ix->post_start);
	tr__free(ix->post_chunk);
	tr__free(ix->post_tf);
	tr__free(ix);
}

/* ---- queries ------------------------------------------------------------ */

void rag_scratch_free(rag_scratch *s)
{
	tr__free(s->acc);
	tr__free(s->touched);
	tr__free(s->norm);
	memset(s, 0, sizeof(*s));
}

/* Readies s for ix and k1/b: room for every chunk, and each chunk's BM25
 * length norm k1 * (1 - b + b * dl / avgdl), computed once per index. */
static int scratch_fit(rag_scratch *s, const rag_index *ix, double k1, double b)
{
	uint32_t n = ix->nchunks ? ix->nchunks : 1;
	if (n > s->cap || s->acc == NULL) {
		float *acc = tr__calloc(n, sizeof(float)), *norm = tr__malloc(n * sizeof(float));
		uint32_t *touched = tr__malloc(n * sizeof(uint32_t));
		if (acc == NULL || touched == NULL || norm == NULL) {
			tr__free(acc);
			tr__free(touched);
			tr__free(norm);
			return TR_ENOMEM;
		}
		rag_scratch_free(s);
		s->acc = acc;
		s->touched = touched;
		s->norm = norm;
		s->cap = n;
	}
	if (s->serial != ix->serial || s->k1 != k1 || s->b != b) {
		for (uint32_t c = 0; c < ix->nchunks; c++)
			s->norm[c] = (float)(k1 * (1.0 - b + b * ix->chunks[c].ntok / ix->avgdl));
		s->serial = ix->serial;
		s->k1 = k1;
		s->b = b;
	}
	return TR_OK;
}

/* Whether hit a ranks below hit b (lower score; on a tie, later chunk). */
static int below(const rag_hit *a, const rag_hit *b)
{
	return a->score < b->score || (a->score == b->score && a->chunk > b->chunk);
}

/* Min-heap on `below`: the worst kept hit at the root. */
static void sift_down(rag_hit *h, uint32_t n, uint32_t i)
{
	for (;;) {
		uint32_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < n && below(&h[l], &h[m]))
			m = l;
		if (r < n && below(&h[r], &h[m]))
			m = r;
		if (m == i)
			return;
		rag_hit x = h[i];
		h[i] = h[m];
		h[m] = x;
		i = m;
	}
}

int rag_query(const rag_index *ix, rag_scratch *s, const char *q, size_t qn,
              const rag_query_opts *qo, rag_hit *hits)
{
	uint32_t terms[RAG_QUERY_TERMS], nt = 0, ntouched = 0;
	rag_tok t;
	if (ix->nchunks == 0)
		return 0;
	if (scratch_fit(s, ix, qo->k1, qo->b) != TR_OK)
		return TR_ENOMEM;
	rag_tok_init(&t, q, qn);
	while (nt < RAG_QUERY_TERMS && rag_tok_next(&t)) {
		uint32_t slot;
		long id = find_term(ix, t.term, t.len, hash_term(t.term, t.len), &slot);
		int dup = id < 0;
		for (uint32_t i = 0; i < nt && !dup; i++)
			dup = terms[i] == (uint32_t)id;
		if (!dup)
			terms[nt++] = (uint32_t)id;
	}
	const double N = ix->nchunks;
	float *acc = s->acc;
	const float *norm = s->norm;
	for (uint32_t i = 0; i < nt; i++) {
		uint32_t p0 = ix->post_start[terms[i]], p1 = ix->post_start[terms[i] + 1];
		double df = p1 - p0;
		float w = (float)(log(1.0 + (N - df + 0.5) / (df + 0.5)) * (qo->k1 + 1.0));
		/* chunks ascend within a term's postings: acc and norm are read
		 * in order, which keeps this loop in cache */
		for (uint32_t p = p0; p < p1; p++) {
			uint32_t c = ix->post_chunk[p];
			float tf = ix->post_tf[p];
			if (acc[c] == 0.0f)
				s->touched[ntouched++] = c;
			acc[c] += w * tf / (tf + norm[c]);
		}
	}
	uint32_t k = qo->top_k, n = 0;
	for (uint32_t i = 0; i < ntouched; i++) {
		uint32_t c = s->touched[i];
		rag_hit h = {c, s->acc[c]};
		s->acc[c] = 0.0f;
		if (h.score < qo->min_score)
			continue;
		if (n < k) {
			hits[n++] = h;
			if (n == k) /* heapify once full */
				for (uint32_t j = k / 2 + 1; j-- > 0;)
					sift_down(hits, n, j);
		} else if (below(&hits[0], &h)) {
			hits[0] = h;
			sift_down(hits, n, 0);
		}
	}
	/* Best first: a small insertion sort (n <= RAG_TOP_MAX). */
	for (uint32_t i = 1; i < n; i++) {
		rag_hit x = hits[i];
		uint32_t j = i;
		while (j > 0 && below(&hits[j - 1], &x)) {
			hits[j] = hits[j - 1];
			j--;
		}
		hits[j] = x;
	}
	return (int)n;
}
