/*
 * actors/generate/extractive.c -- the extractive backend: an answer made
 * of the passages' best sentences, each cited. No model, no randomness:
 * the same question and passages always give the same answer.
 *
 * How it works:
 *  1. Terms. The question's words, lower-cased (ASCII; other bytes are
 *     kept as they are, so UTF-8 words stay whole), with English stop
 *     words and one-letter words dropped and a light plural stem ("ies" ->
 *     "y", a final "s" dropped). Up to 32 from the question; then up to 16
 *     more from the questions of the recent turns in context, which only
 *     weigh 0.3 (so that "and on Windows?" after "how do I install it?"
 *     still finds installation sentences).
 *  2. Sentences. Each passage is split after '.', '!' or '?' followed by
 *     white space, and at line ends; a sentence ends before the word that
 *     would take it past TR_GEN_SENTENCE_LEN bytes. At most
 *     TR_GEN_CANDIDATES_MAX sentences per answer are scored. Splitting
 *     is one pass over a passage's bytes (tokenize()), kept for the
 *     passages seen lately (up to 256 of up to 4 KiB each, compared in
 *     full on a hit): rag returns the same chunks again and again. The
 *     question's terms are then found among each sentence's words.
 *  3. Score. A sentence scores the sum, over the distinct terms it
 *     contains, of weight * log(1 + N / df) (N sentences, df of them with
 *     the term: rare terms count more), times 0.5 + 0.5 * clamp(passage
 *     score, 0, 1). It is a candidate only if it has a term of the
 *     question itself -- history alone never makes an answer, unless the
 *     question has no terms at all ("why?").
 *  4. Pick. Best first (ties: the earlier sentence), skipping repeats
 *     and sentences scoring under 40% of the best (they share only a
 *     common word with the question, and pad the answer with noise),
 *     while max_sentences and max_bytes allow; only a first sentence too
 *     long for max_bytes alone is cut (at a word, with "…").
 *  5. Write. In reading order (passage order, then position), text
 *     cleaned (tr_gen_clean), each sentence cited with " [k]" before its
 *     final punctuation, k numbering distinct sources in order of first
 *     citation; consecutive sentences of one source share one marker.
 *
 * Cost: linear in the bytes in context. Eight passages of 440 bytes take
 * about 113k instructions split anew (10 to 15 us on the 2-core dev box),
 * a few words' hashing each when cached; nothing is allocated once the
 * scratch arrays have grown to the largest answer, except a passage's
 * cache entry (one allocation) when it is first seen.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "actors/generate/generate.h"
#include "actors/generate/window.h"
#include "core/alloc.h"
#include "core/util.h"
#include "msg/msg_int.h"

#define QTERMS_MAX 32
#define TERMS_MAX 48
#define TERM_LEN 32
#define HISTORY_WEIGHT 0.3
#define RELEVANT 0.4 /* of the best sentence's score, to be worth saying */

typedef struct term {
	uint64_t h;
	double qw;   /* 1 for the question's terms, HISTORY_WEIGHT for history's */
	double idf;
	uint32_t df;
	uint8_t n;
	char s[TERM_LEN];
} term;

typedef struct sent {
	uint32_t psg;
	uint32_t off, len;
	uint64_t mask; /* terms it contains */
} sent;

typedef struct rank {
	double score;
	uint32_t si;   /* index into sv */
} rank;

typedef struct pick {
	uint32_t si;   /* index into sv */
	size_t limit;  /* cleaned bytes allowed (cut), or SIZE_MAX */
	uint32_t cite; /* 1-based source number */
} pick;

/* A passage split once (tokenize()): its sentences as scan() would
 * record them, each with its words, before any question's terms. */
typedef struct tword {
	uint32_t off, len;
	uint64_t h; /* hash of the lower-cased word (HASH_STEP over wordc) */
} tword;

typedef struct tsent {
	uint32_t off, end; /* as given to add_sentence(): untrimmed */
	uint32_t w0, wn;   /* its words: tw[w0 .. w0 + wn) */
	uint32_t words;    /* add_sentence()'s `words` */
} tsent;

typedef struct toks {
	tsent *sv;
	tword *wv;
	uint32_t sn, wn, scap, wcap;
} toks;

/* The passages seen lately, split: rag hands generate the same chunks
 * again and again (the documents change rarely, questions repeat), and
 * splitting was most of tr_gen_extract. Direct-mapped on a hash of the
 * text, the text kept to compare in full: a hit is always the same bytes.
 * Only passages up to TOK_CACHE_LEN bytes, so the cache holds at most
 * TOK_CACHE_SLOTS * (4 KiB of text + its sentences and words). */
#define TOK_CACHE_SLOTS 256
#define TOK_CACHE_LEN 4096

typedef struct tcache_ent {
	uint64_t h;
	uint32_t n, sn, wn;
	const tsent *sv; /* these three point into the entry's one allocation */
	const tword *wv;
	const char *text;
} tcache_ent;

struct tr_gen_ex {
	term terms[TERMS_MAX];
	uint32_t nterms, nqterms;
	uint64_t qmask;
	uint64_t bloom;  /* bloom_bit() of every term's hash */
	sent *sv;      /* sentences scored */
	rank *rv;      /* the candidates among them (same capacity) */
	size_t sn, rn, scap;
	tr_buf ans;
	tr_buf src;
	toks tk;                                  /* scratch: a passage being split */
	tcache_ent *cache[TOK_CACHE_SLOTS];       /* owned, NULL when empty */
	uint64_t cache_hits, cache_misses;
};

/* ---- UTF-8 ------------------------------------------------------------- */

/* Length of the valid sequence at u[0..n), 0 if invalid (RFC 3629). */
static size_t seq_len(const unsigned char *u, size_t n)
{
	unsigned c = u[0];
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		return n >= 2 && (u[1] & 0xc0) == 0x80 ? 2 : 0;
	if (c >= 0xe0 && c <= 0xef) {
		unsigned lo = c == 0xe0 ? 0xa0 : 0x80, hi = c == 0xed ? 0x9f : 0xbf;
		return n >= 3 && u[1] >= lo && u[1] <= hi && (u[2] & 0xc0) == 0x80 ? 3 : 0;
	}
	if (c >= 0xf0 && c <= 0xf4) {
		unsigned lo = c == 0xf0 ? 0x90 : 0x80, hi = c == 0xf4 ? 0x8f : 0xbf;
		return n >= 4 && u[1] >= lo && u[1] <= hi && (u[2] & 0xc0) == 0x80 &&
		               (u[3] & 0xc0) == 0x80
		           ? 4
		           : 0;
	}
	return 0;
}

int tr_gen_utf8_valid(const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	for (size_t i = 0; i < n;) {
		size_t k = seq_len(u + i, n - i);
		if (k == 0)
			return 0;
		i += k;
	}
	return 1;
}

int tr_gen_utf8_repair(tr_buf *out, const char *s, size_t n)
{
	static const char fffd[3] = {(char)0xef, (char)0xbf, (char)0xbd};
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0, run = 0; /* s[run..i) is valid and not yet copied */
	if (n == 0)
		return TR_OK;
	while (i < n) {
		size_t k = u[i] < 0x80 ? 1 : seq_len(u + i, n - i);
		if (k > 0) {
			i += k;
			continue;
		}
		if (tr__buf_append(out, s + run, i - run) != TR_OK ||
		    tr__buf_append(out, fffd, 3) != TR_OK)
			return TR_ENOMEM;
		run = ++i;
	}
	return tr__buf_append(out, s + run, n - run);
}

/* Writes ASCII byte c at o[*w] (o NULL: counts), after the pending space. */
static inline void put_ascii(unsigned char *o, size_t *w, int *space, unsigned char c)
{
	if (o != NULL) {
		if (*space)
			o[*w] = ' ';
		o[*w + (size_t)*space] = c;
	}
	*w += (size_t)*space + 1;
	*space = 0;
}

size_t tr_gen_clean(tr_buf *out, const char *s, size_t n, size_t max, int *more)
{
	static const unsigned char fffd[3] = {0xef, 0xbf, 0xbd};
	const unsigned char *u = (const unsigned char *)s;
	unsigned char *o = NULL;
	size_t w = 0, i = 0;
	int space = 0;
	if (more)
		*more = 0;
	if (out != NULL) {
		/* Room for the worst case (every byte a U+FFFD) at once, so the
		 * loop writes without checking. */
		size_t worst = n > SIZE_MAX / 3 ? SIZE_MAX : 3 * n;
		if (tr__buf_reserve(out, worst < max ? worst : max) != TR_OK)
			return (size_t)-1;
		o = out->data + out->len;
	}
	/* Room for the worst case (every byte 3 out): no check of max per
	 * byte. The usual case: the cost of a sentence, or one written in
	 * full. */
	if (n < SIZE_MAX / 3 && max >= 3 * n + 1) {
		for (; i < n; i++) {
			unsigned char c = u[i];
			if (c - 0x21u < 0x5eu) /* printable ASCII but space */
				put_ascii(o, &w, &space, c);
			else if (c < 0x80) {
				space = w > 0; /* white space and controls: one space, inside only */
			} else {
				break; /* the general loop below takes it from here */
			}
		}
	}
	while (i < n) {
		/* ASCII, most of any text, inline: a printable byte is one
		 * character, the rest white space or controls (a seq_len and a
		 * memcpy per byte were 5 % of the assistant). */
		unsigned char c = u[i];
		if (c < 0x80) {
			if (c <= 0x20 || c == 0x7f) {
				space = w > 0; /* white space and controls: one space, inside only */
				i++;
				continue;
			}
			if (w + (size_t)space + 1 > max) {
				if (more)
					*more = 1;
				break;
			}
			put_ascii(o, &w, &space, c);
			i++;
			continue;
		}
		const unsigned char *p = u + i;
		size_t k = seq_len(p, n - i), emit;
		if (k == 2 && p[0] == 0xc2 && p[1] < 0xa0) {
			space = w > 0; /* C1 controls (U+0080..U+009F) and NEL */
			i += 2;
			continue;
		}
		if (k == 0) {
			p = fffd;
			emit = 3;
			k = 1;
		} else {
			emit = k;
		}
		if (w + (size_t)space + emit > max) {
			if (more)
				*more = 1;
			break;
		}
		if (o != NULL) {
			if (space)
				o[w] = ' ';
			memcpy(o + w + (size_t)space, p, emit);
		}
		w += (size_t)space + emit;
		space = 0;
		i += k;
	}
	if (out != NULL)
		out->len += w;
	return w;
}

/* ---- words and terms --------------------------------------------------- */

static const char *const stop_words[] = {
	"a", "about", "above", "after", "again", "against", "all", "also", "am", "an", "and",
	"any", "are", "as", "at", "be", "because", "been", "before", "being", "below",
	"between", "both", "but", "by", "can", "could", "did", "do", "does", "doing", "done",
	"down", "during", "each", "either", "else", "ever", "every", "few", "for", "from",
	"further", "get", "gets", "got", "had", "has", "have", "having", "he", "her", "here",
	"hers", "him", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself",
	"just", "let", "like", "may", "me", "might", "more", "most", "much", "must", "my",
	"no", "nor", "not", "now", "of", "off", "on", "once", "only", "or", "other", "our",
	"ours", "out", "over", "own", "please", "same", "shall", "she", "should", "so", "some",
	"such", "tell", "than", "that", "the", "their", "theirs", "them", "then", "there",
	"these", "they", "this", "those", "through", "to", "too", "under", "until", "up",
	"upon", "us", "very", "was", "we", "were", "what", "when", "where", "which", "while",
	"who", "whom", "whose", "why", "will", "with", "would", "yet", "you", "your", "yours",
};

/* A byte of a word, lower-cased: ASCII letters and digits, and every byte
 * >= 0x80 as itself (UTF-8 words stay whole); 0 for the rest, which
 * separate words. */
static const unsigned char wordc[256] = {
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f,
	0x70, 0x71, 0x72, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f,
	0x70, 0x71, 0x72, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8b, 0x8c, 0x8d, 0x8e, 0x8f,
	0x90, 0x91, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0x9b, 0x9c, 0x9d, 0x9e, 0x9f,
	0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf,
	0xb0, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xbb, 0xbc, 0xbd, 0xbe, 0xbf,
	0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xcb, 0xcc, 0xcd, 0xce, 0xcf,
	0xd0, 0xd1, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf,
	0xe0, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xeb, 0xec, 0xed, 0xee, 0xef,
	0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff,
};

static int is_stop(const char *w, size_t n)
{
	size_t lo = 0, hi = sizeof(stop_words) / sizeof(stop_words[0]);
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		const char *s = stop_words[mid];
		size_t sn = strlen(s), m = sn < n ? sn : n;
		int c = memcmp(w, s, m);
		if (c == 0)
			c = n < sn ? -1 : n > sn;
		if (c == 0)
			return 1;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return 0;
}

/* The word w[0..n) as a term in out: lower-cased, stemmed. Returns its
 * length, or 0 if it is no term (too short, too long, or with `stop` a
 * stop word). Passages' words skip the stop check: a stop word is never
 * a term, so it cannot match one anyway (and the check is most of the
 * cost of scoring). */
static size_t norm(const char *w, size_t n, char out[TERM_LEN], int stop)
{
	if (n < 2 || n > TERM_LEN)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)w[i];
		out[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
	}
	if (stop && is_stop(out, n))
		return 0;
	if (n > 4 && memcmp(out + n - 3, "ies", 3) == 0) {
		out[n - 3] = 'y';
		n -= 2;
	} else if (n > 3 && out[n - 1] == 's' && out[n - 2] != 's' && out[n - 2] != 'u' &&
	           out[n - 2] != 'i') {
		n--;
	}
	return n;
}

/* A word's hash: rotate and add, one cheap step per byte (the scoring
 * loop's critical path). Weak, but only ever a filter: a hash match is
 * confirmed byte by byte. */
#define HASH_SEED 0x9e3779b97f4a7c15ull
#define HASH_STEP(h, c) ((((h) << 7) | ((h) >> 57)) + (c))

static uint64_t hash(const char *s, size_t n)
{
	uint64_t h = HASH_SEED;
	for (size_t i = 0; i < n; i++)
		h = HASH_STEP(h, (unsigned char)s[i]);
	return h;
}

/* Which bit of the terms' Bloom word a hash sets. */
static unsigned bloom_bit(uint64_t h)
{
	return (unsigned)((h ^ (h >> 29) ^ (h >> 43)) & 63);
}

/* Index of the term t[0..n) (hash h), or -1. */
static int find_term(const tr_gen_ex *x, uint64_t h, const char *t, size_t n)
{
	for (uint32_t i = 0; i < x->nterms; i++)
		if (x->terms[i].h == h && x->terms[i].n == n && memcmp(x->terms[i].s, t, n) == 0)
			return (int)i;
	return -1;
}

/* Adds the terms of s[0..n) with weight qw, up to `limit` terms in all. */
static void add_terms(tr_gen_ex *x, const char *s, size_t n, double qw, uint32_t limit)
{
	const unsigned char *u = (const unsigned char *)s;
	for (size_t i = 0; i < n && x->nterms < limit;) {
		char t[TERM_LEN];
		size_t j = i, tn;
		while (j < n && wordc[u[j]])
			j++;
		if (j == i) {
			i++;
			continue;
		}
		tn = norm(s + i, j - i, t, 1);
		i = j;
		if (tn == 0)
			continue;
		uint64_t h = hash(t, tn);
		if (find_term(x, h, t, tn) >= 0)
			continue;
		term *e = &x->terms[x->nterms++];
		e->h = h;
		e->qw = qw;
		e->df = 0;
		e->n = (uint8_t)tn;
		memcpy(e->s, t, tn);
	}
}

/* Whether the word w (as lower-cased by wordc, its first tn bytes; with
 * `ies`, its first tn - 1 and then 'y') is the term t. */
static int same(const unsigned char *w, size_t tn, int ies, const term *t)
{
	size_t k = ies ? tn - 1 : tn;
	for (size_t i = 0; i < k; i++)
		if (wordc[w[i]] != (unsigned char)t->s[i])
			return 0;
	return !ies || t->s[tn - 1] == 'y';
}

/* The terms the word u[0..len) is (hash h of all of it), as a mask. */
static uint64_t word_terms(const tr_gen_ex *x, const unsigned char *u, size_t len, uint64_t h)
{
	size_t tn = len;
	int ies = 0;
	uint64_t mask = 0;
	if (len < 2 || len > TERM_LEN)
		return 0;
	/* The stems of norm(), in the same order; a stemmed word is hashed
	 * again (words ending in 's' are a minority). */
	if (wordc[u[len - 1]] == 's') {
		unsigned c2 = wordc[u[len - 2]];
		if (len > 4 && c2 == 'e' && wordc[u[len - 3]] == 'i') {
			tn = len - 2;
			ies = 1;
		} else if (len > 3 && c2 != 's' && c2 != 'u' && c2 != 'i') {
			tn = len - 1;
		}
		if (tn != len) {
			h = HASH_SEED;
			for (size_t i = 0; i < (ies ? tn - 1 : tn); i++)
				h = HASH_STEP(h, wordc[u[i]]);
			if (ies)
				h = HASH_STEP(h, 'y');
		}
	}
	if (!(x->bloom & (1ull << bloom_bit(h))))
		return 0;
	for (uint32_t k = 0; k < x->nterms; k++)
		if (x->terms[k].h == h && x->terms[k].n == tn && same(u, tn, ies, &x->terms[k]))
			mask |= 1ull << k;
	return mask;
}

/* ---- sentences ------------------------------------------------------------ */

static int is_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

/* Records the sentence t[off..end) (trailing white space trimmed) with
 * the terms it contains, if it has a word and 3 bytes at least. */
static int add_sentence(tr_gen_ex *x, uint32_t psg, const char *t, size_t off, size_t end,
                        int words, uint64_t mask)
{
	while (end > off && is_space((unsigned char)t[end - 1]))
		end--;
	if (end - off < 3 || !words || x->sn >= TR_GEN_CANDIDATES_MAX)
		return TR_OK;
	/* Markdown structure is not prose: a heading ("# Retries") or a code
	 * fence line would read as a sentence of the answer. */
	if (t[off] == '#' || (end - off >= 3 && memcmp(t + off, "```", 3) == 0))
		return TR_OK;
	if (x->sn == x->scap) {
		size_t cap = x->scap ? x->scap * 2 : 64;
		sent *nv = tr__realloc(x->sv, cap * sizeof(*nv));
		if (nv == NULL)
			return TR_ENOMEM;
		x->sv = nv;
		rank *nr = tr__realloc(x->rv, cap * sizeof(*nr));
		if (nr == NULL)
			return TR_ENOMEM; /* sv grew alone: harmless, scap says the smaller */
		x->rv = nr;
		x->scap = cap;
	}
	x->sv[x->sn++] = (sent){
		.psg = psg, .off = (uint32_t)off, .len = (uint32_t)(end - off), .mask = mask};
	return TR_OK;
}

/* Bytes that may end a sentence: 1 a line end, 2 '.', '!' or '?' (when
 * white space or the end follows). None of them is a word byte. */
static const unsigned char ends[256] = {['\n'] = 1, ['.'] = 2, ['!'] = 2, ['?'] = 2};

#define NONE SIZE_MAX

/*
 * Whether the line end at u[i] ends a sentence. Text files wrap lines
 * inside sentences (markdown, mail): a line end counts only before a blank
 * line, the end of the passage, or a line that starts something else -- a
 * heading, a list item, a quote, a table row, a code fence.
 */
static int line_ends_sentence(const unsigned char *u, size_t i, size_t n)
{
	size_t j = i + 1;
	while (j < n && (u[j] == ' ' || u[j] == '\t' || u[j] == '\r'))
		j++;
	if (j >= n || u[j] == '\n')
		return 1;
	unsigned char c = u[j];
	if (c == '#' || c == '>' || c == '|' || c == '`' || c == '~')
		return 1;
	if ((c == '*' || c == '-' || c == '+') && j + 1 < n && u[j + 1] == ' ')
		return 1;
	if (c >= '0' && c <= '9') {
		while (j < n && u[j] >= '0' && u[j] <= '9')
			j++;
		return j + 1 < n && (u[j] == '.' || u[j] == ')') && u[j + 1] == ' ';
	}
	return 0;
}

/* The array v of *cap elements, doubled (first: its first size); NULL
 * on OOM (v unchanged). */
static void *grow(void *v, uint32_t *cap, size_t elem, uint32_t first)
{
	uint32_t c = *cap ? 2 * *cap : first;
	void *nv = tr__realloc(v, (size_t)c * elem);
	if (nv != NULL)
		*cap = c;
	return nv;
}

/* Appends to the scratch tokens: a sentence or a word. */
static int tk_sent(toks *k, size_t off, size_t end, uint32_t w0, int words)
{
	if (k->sn == k->scap) {
		tsent *nv = grow(k->sv, &k->scap, sizeof(*nv), 64);
		if (nv == NULL)
			return TR_ENOMEM;
		k->sv = nv;
	}
	k->sv[k->sn++] = (tsent){.off = (uint32_t)off, .end = (uint32_t)end, .w0 = w0,
	                         .wn = k->wn - w0, .words = (uint32_t)words};
	return TR_OK;
}

static int tk_word(toks *k, size_t off, size_t len, uint64_t h)
{
	if (k->wn == k->wcap) {
		tword *nv = grow(k->wv, &k->wcap, sizeof(*nv), 256);
		if (nv == NULL)
			return TR_ENOMEM;
		k->wv = nv;
	}
	k->wv[k->wn++] = (tword){.off = (uint32_t)off, .len = (uint32_t)len, .h = h};
	return TR_OK;
}

/*
 * Splits passage t[0..n) into sentences and their words, in one pass:
 * the hot loop of an uncached passage (every byte of it). Word bytes go
 * through the word loop, which hashes as it lower-cases; sentence ends
 * can only be among the other bytes. A sentence that would grow past
 * TR_GEN_SENTENCE_LEN ends before the word (or the byte) that would take
 * it there; a single word longer than that is cut in pieces on UTF-8
 * boundaries (pieces with no word of their own). The terms of the
 * question are not needed here: apply() finds them in the words.
 */
static int tokenize(toks *k, const char *t, size_t n)
{
	const unsigned char *u = (const unsigned char *)t;
	size_t i = 0, start = NONE;
	uint32_t w0 = 0;
	int words = 0;
	k->sn = k->wn = 0;
	if (n > UINT32_MAX)
		n = UINT32_MAX; /* offsets are 32-bit; a message is far smaller */
	while (i < n) {
		if (!wordc[u[i]]) {
			unsigned e = ends[u[i]];
			int here = (e == 1 && line_ends_sentence(u, i, n)) ||
			           (e == 2 && (i + 1 == n || is_space(u[i + 1])));
			if (e == 1 && !here) {
				/* a wrapped line: the sentence goes on */
				i++;
				continue;
			}
			if (start != NONE && (here || i - start >= TR_GEN_SENTENCE_LEN)) {
				/* The end byte itself: '.' belongs to its sentence, a
				 * line end to none; a sentence cut for length leaves
				 * this byte to the next one. */
				size_t end = here && e == 2 ? i + 1 : i;
				if (tk_sent(k, start, end, w0, words) != TR_OK)
					return TR_ENOMEM;
				start = NONE;
				w0 = k->wn;
				words = 0;
				i += here;
				continue;
			}
			if (start == NONE && !is_space(u[i]))
				start = i;
			i++;
			continue;
		}
		size_t w = i;
		uint64_t h = HASH_SEED;
		while (i < n && wordc[u[i]]) {
			h = HASH_STEP(h, wordc[u[i]]);
			i++;
		}
		if (start == NONE) {
			start = w;
		} else if (i - start > TR_GEN_SENTENCE_LEN) {
			if (tk_sent(k, start, w, w0, words) != TR_OK)
				return TR_ENOMEM;
			start = w;
			w0 = k->wn;
			words = 0;
		}
		while (i - start > TR_GEN_SENTENCE_LEN) {
			size_t cut = start + tr_gwin_cut(t + start, i - start, TR_GEN_SENTENCE_LEN);
			if (cut <= start)
				cut = start + TR_GEN_SENTENCE_LEN;
			if (tk_sent(k, start, cut, k->wn, 1) != TR_OK)
				return TR_ENOMEM;
			start = cut;
		}
		if (tk_word(k, w, i - w, h) != TR_OK)
			return TR_ENOMEM;
		words = 1;
	}
	if (start != NONE)
		return tk_sent(k, start, n, w0, words);
	return TR_OK;
}

/* Records passage psg's sentences, each with the terms its words are. */
static int apply(tr_gen_ex *x, uint32_t psg, const char *t, const tsent *sv, uint32_t sn,
                 const tword *wv)
{
	const unsigned char *u = (const unsigned char *)t;
	for (uint32_t i = 0; i < sn && x->sn < TR_GEN_CANDIDATES_MAX; i++) {
		const tsent *st = &sv[i];
		uint64_t mask = 0;
		for (uint32_t j = st->w0; j < st->w0 + st->wn; j++)
			mask |= word_terms(x, u + wv[j].off, wv[j].len, wv[j].h);
		if (add_sentence(x, psg, t, st->off, st->end, (int)st->words, mask) != TR_OK)
			return TR_ENOMEM;
	}
	return TR_OK;
}

/* Keeps the scratch tokens of t[0..n) in the slot (best effort: out of
 * memory only means not cached). */
static void cache_put(tr_gen_ex *x, unsigned slot, uint64_t h, const char *t, size_t n)
{
	const toks *k = &x->tk;
	size_t sb = (size_t)k->sn * sizeof(tsent), wb = (size_t)k->wn * sizeof(tword);
	tcache_ent *e = tr__malloc(sizeof(*e) + sb + wb + n);
	if (e == NULL)
		return;
	/* The words first: they need 8-byte alignment (malloc's, and
	 * sizeof(*e) is a multiple of 8); the sentences 4 after them. */
	unsigned char *p = (unsigned char *)(e + 1);
	_Static_assert(sizeof(tcache_ent) % 8 == 0 && sizeof(tword) % 8 == 0, "alignment");
	if (wb > 0)
		memcpy(p, k->wv, wb);
	if (sb > 0)
		memcpy(p + wb, k->sv, sb);
	memcpy(p + wb + sb, t, n);
	*e = (tcache_ent){.h = h, .n = (uint32_t)n, .sn = k->sn, .wn = k->wn,
	                  .wv = (const tword *)p, .sv = (const tsent *)(p + wb),
	                  .text = (const char *)(p + wb + sb)};
	tr__free(x->cache[slot]);
	x->cache[slot] = e;
}

/* Splits passage t[0..n) (from the cache when it was seen lately) and
 * records its sentences with their terms. */
static int scan(tr_gen_ex *x, uint32_t psg, const char *t, size_t n)
{
	if (n <= TOK_CACHE_LEN) {
		uint64_t h = tr__hash_bytes(t, n);
		unsigned slot = (unsigned)(h % TOK_CACHE_SLOTS);
		const tcache_ent *e = x->cache[slot];
		if (e != NULL && e->h == h && e->n == n && memcmp(e->text, t, n) == 0) {
			x->cache_hits++;
			return apply(x, psg, t, e->sv, e->sn, e->wv);
		}
		x->cache_misses++;
		if (tokenize(&x->tk, t, n) != TR_OK)
			return TR_ENOMEM;
		cache_put(x, slot, h, t, n);
	} else if (tokenize(&x->tk, t, n) != TR_OK) {
		return TR_ENOMEM;
	}
	return apply(x, psg, t, x->tk.sv, x->tk.sn, x->tk.wv);
}

/* ---- composing ------------------------------------------------------------ */

int tr_gen_ex_new(tr_gen_ex **out)
{
	tr_gen_ex *x = tr__calloc(1, sizeof(*x));
	*out = x;
	if (x == NULL)
		return TR_ENOMEM;
	tr_buf_init(&x->ans);
	tr_buf_init(&x->src);
	return TR_OK;
}

void tr_gen_ex_free(tr_gen_ex *x)
{
	if (x == NULL)
		return;
	tr__free(x->sv);
	tr__free(x->rv);
	tr__free(x->tk.sv);
	tr__free(x->tk.wv);
	for (unsigned i = 0; i < TOK_CACHE_SLOTS; i++)
		tr__free(x->cache[i]);
	tr_buf_free(&x->ans);
	tr_buf_free(&x->src);
	tr__free(x);
}

/* Bytes a sentence may add besides its own: the space before it and a
 * marker " [k]" with k <= TR_GEN_SENTENCES_MAX (two digits). */
#define FRAME 6
static const char ellipsis[] = "\xe2\x80\xa6"; /* U+2026 */

static double passage_weight(double score)
{
	if (!(score > 0))
		score = 0;
	if (score > 1)
		score = 1;
	return 0.5 + 0.5 * score;
}

static int by_rank(const void *a, const void *b)
{
	const rank *x = a, *y = b;
	if (x->score != y->score)
		return x->score > y->score ? -1 : 1;
	return x->si < y->si ? -1 : x->si > y->si;
}

/* Chooses up to max_sentences of the best candidates within max_bytes:
 * one sort, then one pass (each candidate is looked at once). */
static uint32_t choose(tr_gen_ex *x, uint32_t max_sentences, size_t max_bytes, pick *pk,
                       const tr_gen_psg *pv)
{
	uint32_t np = 0;
	size_t used = 0;
	qsort(x->rv, x->rn, sizeof(*x->rv), by_rank);
	for (size_t r = 0; r < x->rn && np < max_sentences; r++) {
		const sent *best = &x->sv[x->rv[r].si];
		if (x->rv[r].score < RELEVANT * x->rv[0].score)
			break; /* the rest matched only common words */
		const char *bt = pv[best->psg].text + best->off;
		int dup = 0;
		for (uint32_t j = 0; j < np && !dup; j++) {
			const sent *o = &x->sv[pk[j].si];
			dup = o->len == best->len && memcmp(pv[o->psg].text + o->off, bt, o->len) == 0;
		}
		if (dup)
			continue;
		size_t cost = tr_gen_clean(NULL, bt, best->len, SIZE_MAX, NULL) + FRAME;
		size_t limit = SIZE_MAX;
		if (used + cost > max_bytes) {
			if (np > 0)
				continue; /* a shorter one may still fit */
			limit = max_bytes - FRAME - (sizeof(ellipsis) - 1);
			cost = max_bytes;
		}
		pk[np++] = (pick){.si = x->rv[r].si, .limit = limit};
		used += cost;
	}
	return np;
}

/* Appends " [k]", before the final punctuation of what is there if any. */
static int cite(tr_buf *b, uint32_t k)
{
	char m[8];
	size_t n = 0;
	unsigned char end = b->len ? b->data[b->len - 1] : 0;
	int punct = end == '.' || end == '!' || end == '?';
	if (punct)
		b->len--;
	m[n++] = ' ';
	m[n++] = '[';
	if (k >= 10)
		m[n++] = (char)('0' + k / 10);
	m[n++] = (char)('0' + k % 10);
	m[n++] = ']';
	if (punct)
		m[n++] = (char)end;
	return tr__buf_append(b, m, n);
}

static int write_answer(tr_gen_ex *x, pick *pk, uint32_t np, const tr_gen_psg *pv,
                        tr_gen_answer *out)
{
	size_t src_off[TR_GEN_SENTENCES_MAX];
	uint32_t src_psg[TR_GEN_SENTENCES_MAX];

	/* Reading order: passage order, then position (= candidate order). */
	for (uint32_t i = 1; i < np; i++) {
		pick p = pk[i];
		uint32_t j = i;
		while (j > 0 && pk[j - 1].si > p.si) {
			pk[j] = pk[j - 1];
			j--;
		}
		pk[j] = p;
	}
	/* Number the sources in order of first citation. */
	for (uint32_t i = 0; i < np; i++) {
		const tr_gen_psg *p = &pv[x->sv[pk[i].si].psg];
		uint32_t k = 0;
		for (; k < out->nsources; k++) {
			const tr_gen_psg *q = &pv[src_psg[k]];
			if (q->srcn == p->srcn && memcmp(q->src, p->src, p->srcn) == 0)
				break;
		}
		if (k == out->nsources) {
			src_psg[k] = x->sv[pk[i].si].psg;
			src_off[k] = x->src.len;
			out->srcn[k] = tr_gen_clean(&x->src, p->src, p->srcn, TR_GEN_SOURCE_LEN, NULL);
			if (out->srcn[k] == (size_t)-1)
				return TR_ENOMEM;
			out->nsources++;
		}
		pk[i].cite = k + 1;
	}
	for (uint32_t k = 0; k < out->nsources; k++)
		out->src[k] = (const char *)x->src.data + src_off[k];

	for (uint32_t i = 0; i < np; i++) {
		const sent *s = &x->sv[pk[i].si];
		int more = 0;
		if (i > 0 && tr__buf_append(&x->ans, " ", 1) != TR_OK)
			return TR_ENOMEM;
		size_t mark = x->ans.len;
		if (tr_gen_clean(&x->ans, pv[s->psg].text + s->off, s->len, pk[i].limit, &more) ==
		    (size_t)-1)
			return TR_ENOMEM;
		if (more) {
			/* Cut: back to a word boundary when one is near. */
			size_t k = x->ans.len;
			while (k > mark && x->ans.len - k < 48 && x->ans.data[k - 1] != ' ')
				k--;
			if (k > mark + (x->ans.len - mark) / 2 && x->ans.data[k - 1] == ' ')
				x->ans.len = k - 1;
			if (tr__buf_append(&x->ans, ellipsis, sizeof(ellipsis) - 1) != TR_OK)
				return TR_ENOMEM;
		}
		if ((i + 1 == np || pk[i + 1].cite != pk[i].cite) && cite(&x->ans, pk[i].cite) != TR_OK)
			return TR_ENOMEM;
		out->chunk_end[out->nchunks++] = x->ans.len;
	}
	out->text = (const char *)x->ans.data;
	out->len = x->ans.len;
	out->found = 1;
	return TR_OK;
}

int tr_gen_extract(tr_gen_ex *x, const char *q, size_t qn, const char *const *hq,
                   const size_t *hqn, size_t nh, const tr_gen_psg *pv, size_t np,
                   uint32_t max_sentences, size_t max_bytes, tr_gen_answer *out)
{
	pick pk[TR_GEN_SENTENCES_MAX];
	uint32_t npk;

	memset(out, 0, sizeof(*out));
	out->text = "";
	x->ans.len = 0;
	x->src.len = 0;
	x->sn = 0;
	x->rn = 0;
	x->nterms = 0;
	if (max_sentences > TR_GEN_SENTENCES_MAX)
		max_sentences = TR_GEN_SENTENCES_MAX;

	add_terms(x, q, qn, 1.0, QTERMS_MAX);
	x->nqterms = x->nterms;
	x->qmask = x->nterms ? (~0ull >> (64 - x->nterms)) : 0;
	for (size_t i = 0; i < nh; i++)
		add_terms(x, hq[i], hqn[i], HISTORY_WEIGHT, TERMS_MAX);
	if (x->nterms == 0 || np == 0)
		return TR_OK;
	x->bloom = 0;
	for (uint32_t t = 0; t < x->nterms; t++)
		x->bloom |= 1ull << bloom_bit(x->terms[t].h);

	for (size_t p = 0; p < np; p++)
		if (scan(x, (uint32_t)p, pv[p].text, pv[p].len) != TR_OK)
			return TR_ENOMEM;
	out->sentences = (uint32_t)x->sn;
	for (size_t i = 0; i < x->sn; i++)
		for (uint64_t m = x->sv[i].mask; m; m &= m - 1)
			x->terms[__builtin_ctzll(m)].df++;
	for (uint32_t t = 0; t < x->nterms; t++)
		x->terms[t].idf = x->terms[t].df ? log(1.0 + (double)x->sn / x->terms[t].df) : 0;
	x->rn = 0;
	for (size_t i = 0; i < x->sn; i++) {
		const sent *s = &x->sv[i];
		double sc = 0;
		if (x->nqterms > 0 ? !(s->mask & x->qmask) : !s->mask)
			continue;
		for (uint64_t m = s->mask; m; m &= m - 1) {
			const term *t = &x->terms[__builtin_ctzll(m)];
			sc += t->qw * t->idf;
		}
		x->rv[x->rn++] = (rank){.score = sc * passage_weight(pv[s->psg].score),
		                        .si = (uint32_t)i};
	}
	npk = choose(x, max_sentences, max_bytes, pk, pv);
	if (npk == 0)
		return TR_OK;
	return write_answer(x, pk, npk, pv, out);
}
