/*
 * actors/intent/model.c -- the intent kind's model: settings, rules and a
 * multinomial naive Bayes classifier. See intent.h.
 *
 * Design notes
 *
 * Words. Text is split on every byte that is not an ASCII letter or
 * digit; bytes >= 0x80 count as letters, so UTF-8 words ("café",
 * "東京") stay whole without decoding anything, and invalid UTF-8 is just
 * more bytes. ASCII letters are lower-cased; nothing else is folded.
 *
 * The classifier. Features are the word unigrams and, with bigrams =
 * true, the pairs of adjacent words, counted in one multinomial per
 * intent with add-alpha (Laplace) smoothing. Bigrams are off by default:
 * on example sets of tens per intent they add features faster than
 * evidence (test_intent scores both on its held-out set). At build time every
 * feature's log P(feature | intent) is computed into one open-addressed
 * table keyed by the lower-cased feature, so classifying is one hash
 * probe per word and per pair, an add per intent, and a softmax: no
 * allocation, no copy of the text (the hash lower-cases as it goes).
 * Words the examples never used are skipped (they say nothing about the
 * intent); a text with no known word at all gets the fallback with
 * confidence 0 rather than the prior's guess.
 *
 * Rules. A pattern is a POSIX extended regex matched case-insensitively
 * with REG_STARTEND, so the text needs no NUL and may hold any bytes.
 * Lua-style classes (%w %d %s ...) are rewritten into bracket
 * expressions first, because people write them out of habit; %w and %a
 * include the bytes >= 0x80, like the tokeniser's words. Keywords are
 * tokenised like text and match whole words (a keyword of several words
 * matches them in a row).
 */
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/intent/intent.h"
#include "actors/kit.h"
#include "core/alloc.h"

typedef struct rule {
	int label;      /* index into labels */
	int is_re;      /* 1: pattern, 0: keywords */
	int re_ok;      /* re needs regfree */
	regex_t re;
	unsigned nslots;                       /* slot names given (incl. skipped groups) */
	char *slot[TR_INTENT_MAX_SLOTS];       /* NULL: group not captured ("_") */
	char **kw;                             /* keywords: lower-cased words joined by ' ' */
	size_t nkw;
} rule;

/* One feature of the classifier: key bytes at keys + key, weights at
 * w + wi * ncls. len 0 marks an empty slot. */
typedef struct feat {
	uint32_t hash;
	uint32_t len;
	uint32_t key;
	uint32_t wi;
} feat;

struct tr_intent_model {
	char *labels[TR_INTENT_MAX_LABELS];
	size_t nlabels;
	int fixed;          /* labels came from `labels`: nothing else may add one */
	char *fallback;     /* owned copy */
	double threshold;
	int bigrams;
	double alpha;

	rule *rules;
	size_t nrules;

	/* The classifier: ncls intents that have examples (cls[i] indexes
	 * labels), their log priors, and the features. */
	size_t ncls;
	int cls[TR_INTENT_MAX_LABELS];
	double prior[TR_INTENT_MAX_LABELS];
	double total[TR_INTENT_MAX_LABELS]; /* features counted per intent (build only) */
	size_t nex[TR_INTENT_MAX_LABELS];   /* examples per intent (build only) */
	feat *tab;
	size_t cap; /* power of two, or 0 */
	size_t n;
	char *keys;
	size_t keys_len, keys_cap;
	float *w;
	size_t w_cap; /* in features */
};

/* ---- words ---------------------------------------------------------------- */

static inline int wordc(unsigned char c)
{
	return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') || c >= 0x80;
}

static inline unsigned char lower(unsigned char c)
{
	return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

/* The next word at or after *pos: 1 with its start and length (and *pos
 * past it), or 0 at the end. */
static inline int next_word(const char *s, size_t n, size_t *pos, size_t *start, size_t *len)
{
	size_t i = *pos;
	while (i < n && !wordc((unsigned char)s[i]))
		i++;
	if (i == n) {
		*pos = n;
		return 0;
	}
	*start = i;
	while (i < n && wordc((unsigned char)s[i]))
		i++;
	*len = i - *start;
	*pos = i;
	return 1;
}

#define FNV_INIT 2166136261u

static inline uint32_t fnv_lower(uint32_t h, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		h ^= lower((unsigned char)s[i]);
		h *= 16777619u;
	}
	return h;
}

static inline uint32_t fnv_byte(uint32_t h, unsigned char c)
{
	return (h ^ c) * 16777619u;
}

static inline int eq_lower(const char *text, const char *low, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (lower((unsigned char)text[i]) != (unsigned char)low[i])
			return 0;
	return 1;
}

/* ---- the feature table ----------------------------------------------------- */

/* The feature a (a unigram), or "a b" (a bigram when b != NULL). */
static const feat *feat_find(const tr_intent_model *m, uint32_t h, const char *a, size_t al,
                             const char *b, size_t bl)
{
	size_t total = b ? al + 1 + bl : al;
	size_t mask = m->cap - 1;
	if (m->cap == 0)
		return NULL;
	for (size_t i = h & mask;; i = (i + 1) & mask) {
		const feat *f = &m->tab[i];
		if (f->len == 0)
			return NULL;
		if (f->hash != h || f->len != total)
			continue;
		const char *k = m->keys + f->key;
		if (eq_lower(a, k, al) && (b == NULL || (k[al] == ' ' && eq_lower(b, k + al + 1, bl))))
			return f;
	}
}

static int tab_grow(tr_intent_model *m)
{
	size_t cap = m->cap ? m->cap * 2 : 256;
	feat *t = tr__calloc(cap, sizeof(feat));
	if (t == NULL)
		return TR_ENOMEM;
	for (size_t i = 0; i < m->cap; i++) {
		const feat *f = &m->tab[i];
		if (f->len == 0)
			continue;
		size_t j = f->hash & (cap - 1);
		while (t[j].len != 0)
			j = (j + 1) & (cap - 1);
		t[j] = *f;
	}
	tr__free(m->tab);
	m->tab = t;
	m->cap = cap;
	return TR_OK;
}

/* Counts one occurrence of the feature for intent class c (training). */
static int feat_count(tr_intent_model *m, int c, uint32_t h, const char *a, size_t al,
                      const char *b, size_t bl)
{
	const feat *f = feat_find(m, h, a, al, b, bl);
	size_t total = b ? al + 1 + bl : al;
	if (f == NULL) {
		if (total > UINT32_MAX / 2 || m->keys_len + total > UINT32_MAX)
			return TR_ELIMIT;
		if ((m->n + 1) * 2 > m->cap && tab_grow(m) != TR_OK)
			return TR_ENOMEM;
		if (m->keys_len + total > m->keys_cap) {
			size_t cap = (m->keys_cap + total) * 2;
			char *k = tr__realloc(m->keys, cap);
			if (k == NULL)
				return TR_ENOMEM;
			m->keys = k;
			m->keys_cap = cap;
		}
		if (m->n == m->w_cap) {
			size_t cap = m->w_cap ? m->w_cap * 2 : 256;
			float *w = tr__realloc(m->w, cap * TR_INTENT_MAX_LABELS * sizeof(float));
			if (w == NULL)
				return TR_ENOMEM;
			m->w = w;
			m->w_cap = cap;
		}
		char *k = m->keys + m->keys_len;
		for (size_t i = 0; i < al; i++)
			k[i] = (char)lower((unsigned char)a[i]);
		if (b != NULL) {
			k[al] = ' ';
			for (size_t i = 0; i < bl; i++)
				k[al + 1 + i] = (char)lower((unsigned char)b[i]);
		}
		size_t j = h & (m->cap - 1);
		while (m->tab[j].len != 0)
			j = (j + 1) & (m->cap - 1);
		m->tab[j] = (feat){h, (uint32_t)total, (uint32_t)m->keys_len, (uint32_t)m->n};
		/* Weights are laid out with TR_INTENT_MAX_LABELS per feature
		 * while counting (the number of intents is not final yet);
		 * finish() packs them to ncls. */
		memset(m->w + m->n * TR_INTENT_MAX_LABELS, 0, TR_INTENT_MAX_LABELS * sizeof(float));
		m->keys_len += total;
		m->n++;
		f = &m->tab[j];
	}
	m->w[(size_t)f->wi * TR_INTENT_MAX_LABELS + (size_t)c] += 1.0f;
	m->total[c] += 1.0;
	return TR_OK;
}

/* Counts the words (and pairs) of one example. Returns the number of
 * words through *nw. */
static int train_text(tr_intent_model *m, int c, const char *s, size_t n, size_t *nw)
{
	size_t pos = 0, st, len, pst = 0, plen = 0;
	uint32_t ph = 0;
	int rc;
	*nw = 0;
	while (next_word(s, n, &pos, &st, &len)) {
		uint32_t h = fnv_lower(FNV_INIT, s + st, len);
		if ((rc = feat_count(m, c, h, s + st, len, NULL, 0)) != TR_OK)
			return rc;
		if (m->bigrams && *nw > 0) {
			uint32_t bh = fnv_lower(fnv_byte(ph, ' '), s + st, len);
			if ((rc = feat_count(m, c, bh, s + pst, plen, s + st, len)) != TR_OK)
				return rc;
		}
		ph = h;
		pst = st;
		plen = len;
		(*nw)++;
	}
	return TR_OK;
}

/* Turns counts into log probabilities, packed to ncls per feature. */
static void finish(tr_intent_model *m)
{
	double v = (double)m->n, all = 0;
	double denom[TR_INTENT_MAX_LABELS];
	for (size_t c = 0; c < m->ncls; c++) {
		all += (double)m->nex[c];
		denom[c] = log(m->total[c] + m->alpha * v);
	}
	for (size_t c = 0; c < m->ncls; c++)
		m->prior[c] = log((double)m->nex[c] / all);
	for (size_t i = 0; i < m->n; i++) {
		const float *src = m->w + i * TR_INTENT_MAX_LABELS;
		float *dst = m->w + i * m->ncls; /* never ahead of src: ncls <= MAX */
		for (size_t c = 0; c < m->ncls; c++)
			dst[c] = (float)(log((double)src[c] + m->alpha) - denom[c]);
	}
	/* Give back what counting reserved. */
	float *w = tr__realloc(m->w, (m->n ? m->n : 1) * m->ncls * sizeof(float));
	if (w != NULL)
		m->w = w;
}

/* ---- rules ------------------------------------------------------------------ */

static int kw_at(const char *s, size_t n, size_t pos, const char *kw, size_t kwlen)
{
	size_t kp = 0, st, len;
	for (;;) {
		size_t ke = kp;
		while (ke < kwlen && kw[ke] != ' ')
			ke++;
		if (!next_word(s, n, &pos, &st, &len) || len != ke - kp || !eq_lower(s + st, kw + kp, len))
			return 0;
		if (ke == kwlen)
			return 1;
		kp = ke + 1;
	}
}

/* glibc's REG_STARTEND reads s[rm_so..rm_eo) only, so the text is
 * matched where it lies in the message. ASan's regexec interceptor
 * ignores the flag and reads up to a NUL; without REG_STARTEND there is
 * no other way. Those two get a NUL-terminated copy (an allocation per
 * match; a text with a NUL then ends there without REG_STARTEND). */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define INTENT_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(INTENT_ASAN) || !defined(REG_STARTEND)
#define INTENT_RE_COPY 1
#ifndef REG_STARTEND
#define REG_STARTEND 0
#endif
#else
#define INTENT_RE_COPY 0
#endif

static int re_exec(const regex_t *re, const char *s, size_t n, size_t nm, regmatch_t *pm)
{
	pm[0].rm_so = 0;
	pm[0].rm_eo = (regoff_t)n;
#if INTENT_RE_COPY
	char *z = tr__malloc(n + 1);
	if (z == NULL)
		return 0;
	memcpy(z, s, n);
	z[n] = '\0';
	int rc = regexec(re, z, nm, pm, REG_STARTEND);
	tr__free(z);
	return rc == 0;
#else
	return regexec(re, s, nm, pm, REG_STARTEND) == 0;
#endif
}

static int rule_match(const rule *r, const char *s, size_t n, tr_intent_result *res)
{
	if (r->is_re) {
		regmatch_t pm[TR_INTENT_MAX_SLOTS + 1];
		/* Only the groups that name slots: fewer submatches let regexec
		 * skip work (none at all for a rule without slots). */
		size_t nm = (r->nslots < r->re.re_nsub ? r->nslots : r->re.re_nsub) + 1;
		if (!re_exec(&r->re, s, n, nm, pm))
			return 0;
		res->nslots = 0;
		for (unsigned i = 0; i < r->nslots && i + 1 < nm; i++) {
			const regmatch_t *g = &pm[i + 1];
			if (r->slot[i] == NULL || g->rm_so < 0)
				continue; /* skipped, or a group that took no part */
			tr_intent_slot *sl = &res->slots[res->nslots++];
			sl->name = r->slot[i];
			sl->value = s + g->rm_so;
			sl->len = (size_t)(g->rm_eo - g->rm_so);
		}
		return 1;
	}
	size_t pos = 0, st, len;
	while (next_word(s, n, &pos, &st, &len)) {
		for (size_t k = 0; k < r->nkw; k++)
			if (lower((unsigned char)s[st]) == (unsigned char)r->kw[k][0] &&
			    kw_at(s, n, st, r->kw[k], strlen(r->kw[k])))
				return 1;
	}
	return 0;
}

/* ---- classifying ----------------------------------------------------------- */

void tr__intent_classify(const tr_intent_model *m, const char *s, size_t n, tr_intent_result *r)
{
	double sc[TR_INTENT_MAX_LABELS];
	size_t known = 0, nw = 0, pos = 0, st, len, pst = 0, plen = 0;
	uint32_t ph = 0;

	if (s == NULL)
		s = ""; /* an empty msgpack string may have no bytes behind it */
	r->rule = -1;
	r->nslots = 0;
	r->fell_back = 0;
	for (size_t i = 0; i < m->nrules; i++) {
		if (rule_match(&m->rules[i], s, n, r)) {
			r->intent = m->labels[m->rules[i].label];
			r->confidence = 1.0;
			r->rule = (int)i;
			return;
		}
	}
	r->nslots = 0;
	for (size_t c = 0; c < m->ncls; c++)
		sc[c] = m->prior[c];
	while (m->ncls > 0 && next_word(s, n, &pos, &st, &len)) {
		uint32_t h = fnv_lower(FNV_INIT, s + st, len);
		const feat *f = feat_find(m, h, s + st, len, NULL, 0);
		if (f != NULL) {
			const float *w = m->w + (size_t)f->wi * m->ncls;
			for (size_t c = 0; c < m->ncls; c++)
				sc[c] += w[c];
			known++;
		}
		if (m->bigrams && nw > 0) {
			uint32_t bh = fnv_lower(fnv_byte(ph, ' '), s + st, len);
			f = feat_find(m, bh, s + pst, plen, s + st, len);
			if (f != NULL) {
				const float *w = m->w + (size_t)f->wi * m->ncls;
				for (size_t c = 0; c < m->ncls; c++)
					sc[c] += w[c];
			}
		}
		ph = h;
		pst = st;
		plen = len;
		nw++;
	}
	if (known == 0) {
		r->intent = m->fallback;
		r->confidence = 0.0;
		r->fell_back = 1;
		return;
	}
	size_t best = 0;
	for (size_t c = 1; c < m->ncls; c++)
		if (sc[c] > sc[best])
			best = c;
	double sum = 0;
	for (size_t c = 0; c < m->ncls; c++)
		sum += exp(sc[c] - sc[best]);
	r->confidence = 1.0 / sum;
	r->intent = m->labels[m->cls[best]];
	if (r->confidence < m->threshold) {
		r->intent = m->fallback;
		r->fell_back = 1;
	}
}

size_t tr__intent_vocab(const tr_intent_model *m)
{
	return m->n;
}

size_t tr__intent_nlabels(const tr_intent_model *m)
{
	return m->nlabels;
}

const char *tr__intent_fallback(const tr_intent_model *m)
{
	return m->fallback;
}

/* ---- settings --------------------------------------------------------------- */

static const char *const known_keys[] = {"labels",  "rules",   "examples", "threshold",
                                         "fallback", "bigrams", "smoothing", NULL};


/* A Lua {} arrives as an empty map: it is an empty list too. */
static int is_list(const msgpack_object *o)
{
	return o->type == MSGPACK_OBJECT_ARRAY ||
	       (o->type == MSGPACK_OBJECT_MAP && o->via.map.size == 0);
}

static uint32_t list_len(const msgpack_object *o)
{
	return o->type == MSGPACK_OBJECT_ARRAY ? o->via.array.size : 0;
}

static int label_find(const tr_intent_model *m, const char *s, size_t n)
{
	for (size_t i = 0; i < m->nlabels; i++)
		if (strlen(m->labels[i]) == n && memcmp(m->labels[i], s, n) == 0)
			return (int)i;
	return -1;
}

static void label_list(const tr_intent_model *m, char *buf, size_t len)
{
	size_t off = 0;
	buf[0] = '\0';
	for (size_t i = 0; i < m->nlabels; i++) {
		int w = snprintf(buf + off, len - off, "%s%s", i ? ", " : "", m->labels[i]);
		if (w < 0 || (size_t)w >= len - off)
			break;
		off += (size_t)w;
	}
}

/* The label index for intent name s, adding it unless labels are fixed:
 * -1 with the problem recorded (`what` names the setting). */
static int label_use(tr_kcfg *c, tr_intent_model *m, const char *what, const char *s, size_t n)
{
	int i = label_find(m, s, n);
	char list[300];
	if (i >= 0)
		return i;
	if (n == 0) {
		tr_kcfg_fail(c, "%s: an intent name must not be empty", what);
		return -1;
	}
	if (memchr(s, '\0', n) != NULL) {
		tr_kcfg_fail(c, "%s: an intent name must not contain a NUL byte", what);
		return -1;
	}
	if (m->fixed) {
		label_list(m, list, sizeof(list));
		tr_kcfg_fail(c, "%s: intent '%.*s' is not one of labels (%s)", what, (int)n, s, list);
		return -1;
	}
	if (m->nlabels == TR_INTENT_MAX_LABELS) {
		tr_kcfg_fail(c, "%s: too many intents (at most %d)", what, TR_INTENT_MAX_LABELS);
		return -1;
	}
	if ((m->labels[m->nlabels] = tr__strndup(s, n)) == NULL) {
		tr_kcfg_fail(c, "out of memory");
		return -1;
	}
	return (int)m->nlabels++;
}

static int read_labels(tr_kcfg *c, tr_intent_model *m)
{
	const msgpack_object *o = tr_kcfg_get(c, "labels");
	if (o == NULL)
		return TR_OK;
	if (!is_list(o))
		return tr_kcfg_fail(c, "labels: expected a list of intent names, got %s", tr_kobj_type(o));
	if (list_len(o) == 0)
		return tr_kcfg_fail(c, "labels: must name at least one intent");
	for (uint32_t i = 0; i < list_len(o); i++) {
		const msgpack_object *e = &o->via.array.ptr[i];
		char what[32];
		snprintf(what, sizeof(what), "labels[%u]", i + 1);
		if (e->type != MSGPACK_OBJECT_STR)
			return tr_kcfg_fail(c, "%s: expected a string, got %s", what, tr_kobj_type(e));
		if (label_find(m, e->via.str.ptr, e->via.str.size) >= 0)
			return tr_kcfg_fail(c, "%s: '%.*s' is listed twice", what, (int)e->via.str.size,
			                    e->via.str.ptr);
		if (label_use(c, m, what, e->via.str.ptr, e->via.str.size) < 0)
			return TR_EINVAL;
	}
	m->fixed = 1;
	return TR_OK;
}

/* Lua-style classes, as bracket-expression bodies. */
static const char *lua_class(char c)
{
	switch (c) {
	case 'a': return "[:alpha:]\x80-\xff";
	case 'c': return "[:cntrl:]";
	case 'd': return "[:digit:]";
	case 'l': return "[:lower:]";
	case 'p': return "[:punct:]";
	case 's': return "[:space:]";
	case 'u': return "[:upper:]";
	case 'w': return "[:alnum:]\x80-\xff";
	case 'x': return "[:xdigit:]";
	default: return NULL;
	}
}

/* Rewrites %-classes of pattern p[0..n) into an ERE (tr__malloc'd,
 * NUL-terminated). NULL with the problem in why. */
static char *translate(const char *p, size_t n, char *why, size_t whylen)
{
	char *out = tr__malloc(n * 24 + 1), *o = out;
	int in_br = 0;
	if (out == NULL) {
		snprintf(why, whylen, "out of memory");
		return NULL;
	}
	for (size_t i = 0; i < n; i++) {
		char ch = p[i];
		if (ch == '\0') {
			snprintf(why, whylen, "contains a NUL byte");
			goto bad;
		}
		if (!in_br && ch == '\\' && i + 1 < n) {
			*o++ = ch;
			*o++ = p[++i];
			continue;
		}
		if (!in_br && ch == '[') {
			/* "[]...]" and "[^]...]": that first ']' is a member. */
			in_br = 1;
			*o++ = ch;
			if (i + 1 < n && p[i + 1] == '^')
				*o++ = p[++i];
			if (i + 1 < n && p[i + 1] == ']')
				*o++ = p[++i];
			continue;
		}
		if (in_br && ch == '[' && i + 1 < n && (p[i + 1] == ':' || p[i + 1] == '=' || p[i + 1] == '.')) {
			/* [:alpha:] and friends: copied whole, so their ']' does not
			 * end the bracket. */
			char d = p[i + 1];
			size_t j = i + 2;
			while (j + 1 < n && !(p[j] == d && p[j + 1] == ']'))
				j++;
			if (j + 1 >= n) {
				memcpy(o, p + i, n - i);
				o += n - i;
				break; /* regcomp reports it */
			}
			memcpy(o, p + i, j + 2 - i);
			o += j + 2 - i;
			i = j + 1;
			continue;
		}
		if (in_br && ch == ']') {
			in_br = 0;
			*o++ = ch;
			continue;
		}
		if (ch != '%') {
			*o++ = ch;
			continue;
		}
		if (i + 1 == n) {
			snprintf(why, whylen, "ends with '%%' (write %%%% for a percent sign)");
			goto bad;
		}
		char k = p[++i];
		if (k == '\0') {
			snprintf(why, whylen, "contains a NUL byte");
			goto bad;
		}
		char lk = (char)lower((unsigned char)k);
		const char *cls = lua_class(lk);
		if (cls != NULL) {
			int neg = k != lk;
			if (neg && in_br) {
				snprintf(why, whylen, "%%%c inside [...] is not supported", k);
				goto bad;
			}
			if (!in_br)
				*o++ = '[';
			if (neg)
				*o++ = '^';
			memcpy(o, cls, strlen(cls));
			o += strlen(cls);
			if (!in_br)
				*o++ = ']';
		} else if (wordc((unsigned char)k) && (unsigned char)k < 0x80) {
			snprintf(why, whylen,
			         "unknown class '%%%c' (classes: %%a %%c %%d %%l %%p %%s %%u %%w %%x, "
			         "capitals for their complements, %%%% for a percent sign)",
			         k);
			goto bad;
		} else if (in_br || strchr(".[]()*+?{}|^$\\", k) == NULL) {
			*o++ = k; /* %% and %< are just the character ... */
		} else {
			*o++ = '\\'; /* ... and %. a literal dot, as in Lua */
			*o++ = k;
		}
	}
	*o = '\0';
	return out;
bad:
	tr__free(out);
	return NULL;
}

/* The words of s, lower-cased and joined by one space (tr__malloc'd);
 * "" when it has none. */
static char *words_of(const char *s, size_t n)
{
	char *out = tr__malloc(n + 1), *o = out;
	size_t pos = 0, st, len;
	if (out == NULL)
		return NULL;
	while (next_word(s, n, &pos, &st, &len)) {
		if (o != out)
			*o++ = ' ';
		for (size_t i = 0; i < len; i++)
			*o++ = (char)lower((unsigned char)s[st + i]);
	}
	*o = '\0';
	return out;
}

static int read_rule(tr_kcfg *c, tr_intent_model *m, const msgpack_object *o, uint32_t idx)
{
	rule *r = &m->rules[idx];
	char what[48], why[200];
	const msgpack_object *intent, *pat, *kws, *slots;

	snprintf(what, sizeof(what), "rules[%u]", idx + 1);
	if (o->type != MSGPACK_OBJECT_MAP)
		return tr_kcfg_fail(c, "%s: expected a table { intent = ..., pattern = ... }, got %s",
		                    what, tr_kobj_type(o));
	for (uint32_t i = 0; i < o->via.map.size; i++) {
		const msgpack_object *k = &o->via.map.ptr[i].key;
		if (!tr_kobj_is(k, "intent") && !tr_kobj_is(k, "pattern") &&
		    !tr_kobj_is(k, "keywords") && !tr_kobj_is(k, "slots")) {
			if (k->type != MSGPACK_OBJECT_STR)
				return tr_kcfg_fail(c, "%s: keys must be strings", what);
			return tr_kcfg_fail(c, "%s: unknown key '%.*s' (a rule takes intent, pattern, "
			                    "keywords, slots)", what, (int)k->via.str.size, k->via.str.ptr);
		}
	}
	intent = tr_kobj_get(o, "intent");
	pat = tr_kobj_get(o, "pattern");
	kws = tr_kobj_get(o, "keywords");
	slots = tr_kobj_get(o, "slots");
	if (intent == NULL)
		return tr_kcfg_fail(c, "%s: intent is missing", what);
	if (intent->type != MSGPACK_OBJECT_STR)
		return tr_kcfg_fail(c, "%s.intent: expected a string, got %s", what, tr_kobj_type(intent));
	char iwhat[64];
	snprintf(iwhat, sizeof(iwhat), "%s.intent", what);
	r->label = label_use(c, m, iwhat, intent->via.str.ptr, intent->via.str.size);
	if (r->label < 0)
		return TR_EINVAL;
	if ((pat == NULL) == (kws == NULL))
		return tr_kcfg_fail(c, "%s: give either pattern or keywords", what);
	if (kws != NULL) {
		if (slots != NULL)
			return tr_kcfg_fail(c, "%s.slots: only a pattern has slots", what);
		if (!is_list(kws))
			return tr_kcfg_fail(c, "%s.keywords: expected a list of strings, got %s", what,
			                    tr_kobj_type(kws));
		if (list_len(kws) == 0)
			return tr_kcfg_fail(c, "%s.keywords: the list is empty", what);
		r->kw = tr__calloc(list_len(kws), sizeof(char *));
		if (r->kw == NULL)
			return tr_kcfg_fail(c, "out of memory");
		for (uint32_t i = 0; i < list_len(kws); i++) {
			const msgpack_object *e = &kws->via.array.ptr[i];
			if (e->type != MSGPACK_OBJECT_STR)
				return tr_kcfg_fail(c, "%s.keywords[%u]: expected a string, got %s", what, i + 1,
				                    tr_kobj_type(e));
			if ((r->kw[i] = words_of(e->via.str.ptr, e->via.str.size)) == NULL)
				return tr_kcfg_fail(c, "out of memory");
			r->nkw = i + 1;
			if (r->kw[i][0] == '\0')
				return tr_kcfg_fail(c, "%s.keywords[%u]: '%.*s' has no word in it", what, i + 1,
				                    (int)e->via.str.size, e->via.str.ptr);
		}
		return TR_OK;
	}
	r->is_re = 1;
	if (pat->type != MSGPACK_OBJECT_STR)
		return tr_kcfg_fail(c, "%s.pattern: expected a string, got %s", what, tr_kobj_type(pat));
	if (pat->via.str.size == 0)
		return tr_kcfg_fail(c, "%s.pattern: is empty", what);
	char *ere = translate(pat->via.str.ptr, pat->via.str.size, why, sizeof(why));
	if (ere == NULL)
		return tr_kcfg_fail(c, "%s.pattern: %s", what, why);
	if (tr_kregex_check(ere, why, sizeof(why)) != TR_OK) {
		tr__free(ere);
		return tr_kcfg_fail(c, "%s.pattern: refused: %s", what, why);
	}
	int rc = regcomp(&r->re, ere, REG_EXTENDED | REG_ICASE);
	tr__free(ere);
	if (rc != 0) {
		regerror(rc, &r->re, why, sizeof(why));
		return tr_kcfg_fail(c, "%s.pattern: bad regex '%.*s': %s", what, (int)pat->via.str.size,
		                    pat->via.str.ptr, why);
	}
	r->re_ok = 1;
	if (slots == NULL)
		return TR_OK;
	if (!is_list(slots))
		return tr_kcfg_fail(c, "%s.slots: expected a list of names, got %s", what, tr_kobj_type(slots));
	if (list_len(slots) > TR_INTENT_MAX_SLOTS)
		return tr_kcfg_fail(c, "%s.slots: at most %d names", what, TR_INTENT_MAX_SLOTS);
	if (list_len(slots) > r->re.re_nsub)
		return tr_kcfg_fail(c, "%s.slots: %u names but the pattern has %zu group%s", what,
		                    list_len(slots), r->re.re_nsub, r->re.re_nsub == 1 ? "" : "s");
	for (uint32_t i = 0; i < list_len(slots); i++) {
		const msgpack_object *e = &slots->via.array.ptr[i];
		if (e->type != MSGPACK_OBJECT_STR)
			return tr_kcfg_fail(c, "%s.slots[%u]: expected a string, got %s", what, i + 1,
			                    tr_kobj_type(e));
		r->nslots = i + 1;
		if (e->via.str.size == 0 || (e->via.str.size == 1 && e->via.str.ptr[0] == '_'))
			continue; /* this group is not captured */
		for (uint32_t j = 0; j < i; j++)
			if (r->slot[j] != NULL && strlen(r->slot[j]) == e->via.str.size &&
			    memcmp(r->slot[j], e->via.str.ptr, e->via.str.size) == 0)
				return tr_kcfg_fail(c, "%s.slots[%u]: '%s' is named twice", what, i + 1,
				                    r->slot[j]);
		if ((r->slot[i] = tr__strndup(e->via.str.ptr, e->via.str.size)) == NULL)
			return tr_kcfg_fail(c, "out of memory");
	}
	return TR_OK;
}

static int read_rules(tr_kcfg *c, tr_intent_model *m)
{
	const msgpack_object *o = tr_kcfg_get(c, "rules");
	if (o == NULL)
		return TR_OK;
	if (!is_list(o))
		return tr_kcfg_fail(c, "rules: expected a list of rules, got %s", tr_kobj_type(o));
	if (list_len(o) == 0)
		return TR_OK;
	m->rules = tr__calloc(list_len(o), sizeof(rule));
	if (m->rules == NULL)
		return tr_kcfg_fail(c, "out of memory");
	for (uint32_t i = 0; i < list_len(o); i++) {
		m->nrules = i + 1;
		if (read_rule(c, m, &o->via.array.ptr[i], i) != TR_OK)
			return TR_EINVAL;
	}
	return TR_OK;
}

/* The classifier class for label l, adding it. */
static int cls_of(tr_intent_model *m, int l)
{
	for (size_t i = 0; i < m->ncls; i++)
		if (m->cls[i] == l)
			return (int)i;
	m->cls[m->ncls] = l; /* ncls <= nlabels <= MAX */
	return (int)m->ncls++;
}

static int train_one(tr_kcfg *c, tr_intent_model *m, int l, const char *s, size_t n,
                     const char *what)
{
	size_t nw;
	int k = cls_of(m, l);
	int rc = train_text(m, k, s, n, &nw);
	if (rc == TR_ELIMIT)
		return tr_kcfg_fail(c, "%s: too much example text", what);
	if (rc != TR_OK)
		return tr_kcfg_fail(c, "out of memory");
	if (nw == 0)
		return tr_kcfg_fail(c, "%s: '%.*s' has no word in it", what, (int)(n > 40 ? 40 : n), s);
	m->nex[k]++;
	return TR_OK;
}

static int cmp_key(const void *a, const void *b)
{
	const msgpack_object *x = &((const msgpack_object_kv *)a)->key;
	const msgpack_object *y = &((const msgpack_object_kv *)b)->key;
	size_t n = x->via.str.size < y->via.str.size ? x->via.str.size : y->via.str.size;
	int d = memcmp(x->via.str.ptr, y->via.str.ptr, n);
	if (d != 0)
		return d;
	return x->via.str.size < y->via.str.size ? -1 : x->via.str.size > y->via.str.size;
}

static int read_examples(tr_kcfg *c, tr_intent_model *m)
{
	const msgpack_object *o = tr_kcfg_get(c, "examples");
	char what[128];
	if (o != NULL && o->type == MSGPACK_OBJECT_BOOLEAN && !o->via.boolean)
		return TR_OK; /* rules only */
	if (o == NULL) {
		/* The built-in assistant examples, for the labels we use. */
		for (const tr_intent_example *e = tr__intent_defaults; e->label != NULL; e++) {
			int l = label_find(m, e->label, strlen(e->label));
			if (l < 0 && m->fixed)
				continue;
			if (l < 0 && (l = label_use(c, m, "examples", e->label, strlen(e->label))) < 0)
				return TR_EINVAL;
			if (train_one(c, m, l, e->text, strlen(e->text), "examples") != TR_OK)
				return TR_EINVAL;
		}
		return TR_OK;
	}
	if (o->type != MSGPACK_OBJECT_MAP)
		return tr_kcfg_fail(c, "examples: expected a table { intent = { \"text\", ... } }, "
		                    "got %s", tr_kobj_type(o));
	if (o->via.map.size == 0)
		return tr_kcfg_fail(c, "examples: is empty (give some, or examples = false for "
		                    "rules only)");
	/* In key order: Lua hands the table over in no fixed order, and the
	 * first intent is the default fallback when there is no "question". */
	msgpack_object_kv *kv = tr__malloc(o->via.map.size * sizeof(*kv));
	if (kv == NULL)
		return tr_kcfg_fail(c, "out of memory");
	memcpy(kv, o->via.map.ptr, o->via.map.size * sizeof(*kv));
	for (uint32_t i = 0; i < o->via.map.size; i++) {
		if (kv[i].key.type != MSGPACK_OBJECT_STR) {
			tr_kcfg_fail(c, "examples: keys must be intent names (strings), got %s",
			             tr_kobj_type(&kv[i].key));
			tr__free(kv);
			return TR_EINVAL;
		}
	}
	qsort(kv, o->via.map.size, sizeof(*kv), cmp_key);
	int rc = TR_OK;
	for (uint32_t i = 0; i < o->via.map.size && rc == TR_OK; i++) {
		const msgpack_object *k = &kv[i].key, *v = &kv[i].val;
		snprintf(what, sizeof(what), "examples.%.*s", (int)(k->via.str.size > 64 ? 64 : k->via.str.size),
		         k->via.str.ptr);
		int l = label_use(c, m, "examples", k->via.str.ptr, k->via.str.size);
		if (l < 0) {
			rc = TR_EINVAL;
		} else if (!is_list(v)) {
			rc = tr_kcfg_fail(c, "%s: expected a list of example texts, got %s", what, tr_kobj_type(v));
		} else if (list_len(v) == 0) {
			rc = tr_kcfg_fail(c, "%s: no examples", what);
		} else {
			for (uint32_t j = 0; j < list_len(v) && rc == TR_OK; j++) {
				const msgpack_object *e = &v->via.array.ptr[j];
				char ewhat[160];
				snprintf(ewhat, sizeof(ewhat), "%s[%u]", what, j + 1);
				if (e->type != MSGPACK_OBJECT_STR)
					rc = tr_kcfg_fail(c, "%s: expected a string, got %s", ewhat, tr_kobj_type(e));
				else
					rc = train_one(c, m, l, e->via.str.ptr, e->via.str.size, ewhat);
			}
		}
	}
	tr__free(kv);
	return rc;
}

static int read_fallback(tr_kcfg *c, tr_intent_model *m)
{
	const msgpack_object *o = tr_kcfg_get(c, "fallback");
	char list[300];
	if (o == NULL) {
		int q = label_find(m, "question", 8);
		const char *d = q >= 0 ? "question" : m->nlabels > 0 ? m->labels[0] : "question";
		m->fallback = tr__strndup(d, strlen(d));
		return m->fallback ? TR_OK : tr_kcfg_fail(c, "out of memory");
	}
	if (o->type != MSGPACK_OBJECT_STR)
		return tr_kcfg_fail(c, "fallback: expected a string, got %s", tr_kobj_type(o));
	if (o->via.str.size == 0 || memchr(o->via.str.ptr, '\0', o->via.str.size) != NULL)
		return tr_kcfg_fail(c, "fallback: must be a non-empty intent name");
	if (m->fixed && label_find(m, o->via.str.ptr, o->via.str.size) < 0) {
		label_list(m, list, sizeof(list));
		return tr_kcfg_fail(c, "fallback: intent '%.*s' is not one of labels (%s)",
		                    (int)o->via.str.size, o->via.str.ptr, list);
	}
	m->fallback = tr__strndup(o->via.str.ptr, o->via.str.size);
	return m->fallback ? TR_OK : tr_kcfg_fail(c, "out of memory");
}

void tr__intent_free(tr_intent_model *m)
{
	if (m == NULL)
		return;
	for (size_t i = 0; i < m->nlabels; i++)
		tr__free(m->labels[i]);
	for (size_t i = 0; i < m->nrules; i++) {
		rule *r = &m->rules[i];
		if (r->re_ok)
			regfree(&r->re);
		for (unsigned j = 0; j < TR_INTENT_MAX_SLOTS; j++)
			tr__free(r->slot[j]);
		tr_kstrv_free(r->kw, r->nkw);
	}
	tr__free(m->rules);
	tr__free(m->fallback);
	tr__free(m->tab);
	tr__free(m->keys);
	tr__free(m->w);
	tr__free(m);
}

int tr__intent_build(const tr_actor_spec *a, tr_intent_model **out, char *err, size_t errlen)
{
	tr_kcfg c;
	tr_intent_model *m = tr__calloc(1, sizeof(*m));
	int rc = tr_kcfg_open(&c, a, err, errlen);

	*out = NULL;
	if (m == NULL) {
		if (rc == TR_OK)
			rc = tr_kcfg_fail(&c, "out of memory");
		goto done;
	}
	if (rc != TR_OK || tr_kcfg_keys(&c, known_keys) != TR_OK)
		goto done;
	m->threshold = tr_kcfg_num(&c, "threshold", 0.5, 0.0, 1.0);
	m->bigrams = tr_kcfg_bool(&c, "bigrams", 0);
	m->alpha = tr_kcfg_num(&c, "smoothing", 1.0, 0.001, 100.0);
	if (c.failed || read_labels(&c, m) != TR_OK || read_rules(&c, m) != TR_OK ||
	    read_examples(&c, m) != TR_OK || read_fallback(&c, m) != TR_OK)
		goto done;
	if (m->nrules == 0 && m->ncls == 0) {
		if (tr_kcfg_get(&c, "examples") != NULL)
			tr_kcfg_fail(&c, "examples = false needs rules (nothing to classify with)");
		else
			tr_kcfg_fail(&c, "nothing to classify with: the built-in examples cover none of "
			             "labels; give examples or rules");
		goto done;
	}
	if (m->ncls > 0)
		finish(m);
done:
	if (c.failed && rc == TR_OK)
		rc = TR_EINVAL;
	tr_kcfg_close(&c);
	if (rc != TR_OK) {
		tr__intent_free(m);
		return rc;
	}
	*out = m;
	return TR_OK;
}
