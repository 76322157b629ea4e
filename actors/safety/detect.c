/*
 * actors/safety/detect.c -- the safety kind's rules and detectors. See
 * detect.h.
 */
#include <assert.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/kit.h"
#include "actors/safety/detect.h"
#include "core/alloc.h"
#include "msg/msg_int.h"

#ifndef REG_STARTEND
#error "the safety kind needs regexec's REG_STARTEND (glibc, BSD libc)"
#endif

/* ---- bytes ------------------------------------------------------------- */

static inline int is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static inline int is_upper(unsigned char c)
{
	return c >= 'A' && c <= 'Z';
}

static inline int is_alpha(unsigned char c)
{
	return is_upper(c) || (c >= 'a' && c <= 'z');
}

static inline int is_alnum(unsigned char c)
{
	return is_alpha(c) || is_digit(c);
}

/* Part of a word for boundaries: ASCII letters, digits, '_', and any byte
 * of a multibyte character (so "ssné" is not the word "ssn"). */
static inline int is_word(unsigned char c)
{
	return is_alnum(c) || c == '_' || c >= 0x80;
}

static inline unsigned char lower(unsigned char c)
{
	return is_upper(c) ? (unsigned char)(c + 32) : c;
}

static inline int is_cont(unsigned char c)
{
	return (c & 0xC0) == 0x80;
}

/* ---- settings ---------------------------------------------------------- */

static const char *const known_keys[] = {
	"on_pii", "on_blocklist", "on_injection", "pii", "patterns", "blocklist",
	"injection_threshold", "max_input", "max_output", "refusal", "block_as_error",
	"phone_min_digits", "stream_window", NULL,
};

static const char *const builtin_names[] = {"email", "phone", "card", "iban"};
static const char *const builtin_labels[] = {"[EMAIL]", "[PHONE]", "[CARD]", "[IBAN]"};

#define DEFAULT_REFUSAL "I can't help with that request."

/* on_* = "redact"|"block"|"allow"; `allowed` is a mask of 1 << TR_SAFETY_*.
 * The message lists the allowed values: must be "redact", "block" or
 * "allow". */
static uint8_t read_action(tr_kcfg *c, const char *key, uint8_t dflt, unsigned allowed)
{
	static const uint8_t order[] = {TR_SAFETY_REDACT, TR_SAFETY_BLOCK, TR_SAFETY_ALLOW};
	static const char *const names[] = {"allow", "redact", "block"};
	const msgpack_object *o = tr_kcfg_get(c, key);
	char list[64];
	size_t off = 0, left = 0;

	if (o == NULL)
		return dflt;
	for (int i = 0; i < 3; i++)
		left += (allowed >> i) & 1;
	list[0] = '\0';
	for (int i = 0; i < 3; i++) {
		if (!(allowed & (1u << order[i])))
			continue;
		left--;
		int w = snprintf(list + off, sizeof(list) - off, "\"%s\"%s", names[order[i]],
		                 left > 1 ? ", " : left == 1 ? " or " : "");
		off += (size_t)w;
	}
	if (o->type == MSGPACK_OBJECT_STR) {
		for (int i = 0; i < 3; i++)
			if ((allowed & (1u << i)) && tr_kobj_is(o, names[i]))
				return (uint8_t)i;
		tr_kcfg_fail(c, "%s: must be %s, got \"%.*s\"", key, list, (int)o->via.str.size,
		             o->via.str.ptr);
		return dflt;
	}
	tr_kcfg_fail(c, "%s: must be %s", key, list);
	return dflt;
}

/* A list setting: an array, or an empty table (Lua's {} packs as a map). */
static int read_list(tr_kcfg *c, const char *key, const msgpack_object **v, uint32_t *n)
{
	const msgpack_object *o = tr_kcfg_get(c, key);
	*v = NULL;
	*n = 0;
	if (o == NULL)
		return 0;
	if (o->type == MSGPACK_OBJECT_MAP && o->via.map.size == 0)
		return 1;
	if (o->type != MSGPACK_OBJECT_ARRAY) {
		tr_kcfg_fail(c, "%s: expected a list", key);
		return 0;
	}
	*v = o->via.array.ptr;
	*n = o->via.array.size;
	return 1;
}

static int read_pii(tr_safety_rules *r, tr_kcfg *c)
{
	const msgpack_object *v;
	uint32_t n;

	r->pii = 0xF;
	if (!read_list(c, "pii", &v, &n))
		return c->failed ? TR_EINVAL : TR_OK;
	r->pii = 0;
	for (uint32_t i = 0; i < n; i++) {
		int k;
		if (v[i].type != MSGPACK_OBJECT_STR)
			return tr_kcfg_fail(c, "pii: element %u: expected a string", i + 1);
		for (k = 0; k < 4 && !tr_kobj_is(&v[i], builtin_names[k]); k++)
			;
		if (k == 4)
			return tr_kcfg_fail(c, "pii: element %u: unknown detector \"%.*s\" (known: "
			                    "email, phone, card, iban)", i + 1, (int)v[i].via.str.size,
			                    v[i].via.str.ptr);
		r->pii |= 1u << k;
	}
	return TR_OK;
}

static int name_ok(const char *s, size_t n)
{
	if (n == 0 || n > 32)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!is_alnum((unsigned char)s[i]) && s[i] != '_')
			return 0;
	return 1;
}

static int read_patterns(tr_safety_rules *r, tr_kcfg *c)
{
	const msgpack_object *v;
	uint32_t n;

	if (!read_list(c, "patterns", &v, &n) || n == 0)
		return c->failed ? TR_EINVAL : TR_OK;
	if (n > TR_SAFETY_PATTERNS_MAX)
		return tr_kcfg_fail(c, "patterns: at most %d, got %u", TR_SAFETY_PATTERNS_MAX, n);
	r->pats = tr__calloc(n, sizeof(*r->pats));
	if (r->pats == NULL)
		return TR_ENOMEM;
	for (uint32_t i = 0; i < n; i++) {
		const msgpack_object *e = &v[i], *name, *re;
		tr_safety_pattern *p = &r->pats[i];
		char *src;
		int rc;

		if (e->type != MSGPACK_OBJECT_MAP)
			return tr_kcfg_fail(c, "patterns: element %u: expected a table "
			                    "{ name = \"...\", regex = \"...\" }", i + 1);
		for (uint32_t k = 0; k < e->via.map.size; k++) {
			const msgpack_object *key = &e->via.map.ptr[k].key;
			if (!tr_kobj_is(key, "name") && !tr_kobj_is(key, "regex"))
				return tr_kcfg_fail(c, "patterns: element %u: unknown key '%.*s' (a pattern "
				                    "has name and regex)", i + 1,
				                    key->type == MSGPACK_OBJECT_STR ? (int)key->via.str.size : 1,
				                    key->type == MSGPACK_OBJECT_STR ? key->via.str.ptr : "?");
		}
		name = tr_kobj_get(e, "name");
		re = tr_kobj_get(e, "regex");
		if (name == NULL || name->type != MSGPACK_OBJECT_STR)
			return tr_kcfg_fail(c, "patterns: element %u: name: expected a string", i + 1);
		if (!name_ok(name->via.str.ptr, name->via.str.size))
			return tr_kcfg_fail(c, "patterns: element %u: name \"%.*s\" must be 1 to 32 "
			                    "letters, digits or _", i + 1, (int)name->via.str.size,
			                    name->via.str.ptr);
		for (uint32_t j = 0; j < i; j++)
			if (strlen(r->pats[j].name) == name->via.str.size &&
			    memcmp(r->pats[j].name, name->via.str.ptr, name->via.str.size) == 0)
				return tr_kcfg_fail(c, "patterns: element %u: name \"%s\" is used twice", i + 1,
				                    r->pats[j].name);
		if ((p->name = tr__strndup(name->via.str.ptr, name->via.str.size)) == NULL)
			return TR_ENOMEM;
		r->npats = i + 1;
		p->label[0] = '[';
		for (size_t k = 0; p->name[k]; k++)
			p->label[k + 1] = (char)(is_alpha((unsigned char)p->name[k]) &&
			                                 !is_upper((unsigned char)p->name[k])
			                             ? p->name[k] - 32
			                             : p->name[k]);
		p->label_len = strlen(p->name) + 2;
		p->label[p->label_len - 1] = ']';
		p->label[p->label_len] = '\0';
		if (re == NULL || re->type != MSGPACK_OBJECT_STR || re->via.str.size == 0)
			return tr_kcfg_fail(c, "patterns: element %u (%s): regex: expected a non-empty "
			                    "string", i + 1, p->name);
		if ((src = tr__strndup(re->via.str.ptr, re->via.str.size)) == NULL)
			return TR_ENOMEM;
		if (strlen(src) != re->via.str.size) {
			tr__free(src);
			return tr_kcfg_fail(c, "patterns: element %u (%s): regex contains a NUL byte",
			                    i + 1, p->name);
		}
		char why[160];
		if (tr_kregex_check(src, why, sizeof(why)) != TR_OK) {
			tr_kcfg_fail(c, "patterns: element %u (%s): regex refused: %s", i + 1, p->name, why);
			tr__free(src);
			return TR_EINVAL;
		}
		rc = regcomp(&p->re, src, REG_EXTENDED);
		if (rc != 0) {
			char why[128];
			regerror(rc, NULL, why, sizeof(why));
			tr_kcfg_fail(c, "patterns: element %u (%s): bad regex \"%s\": %s", i + 1, p->name,
			             src, why);
			tr__free(src);
			return TR_EINVAL;
		}
		p->compiled = 1;
		/* An empty match redacts nothing and would have to be stepped
		 * over at every byte: almost surely a mistake ("[0-9]*"). */
		if (regexec(&p->re, "", 0, NULL, 0) == 0) {
			tr_kcfg_fail(c, "patterns: element %u (%s): regex \"%s\" matches the empty "
			             "string", i + 1, p->name, src);
			tr__free(src);
			return TR_EINVAL;
		}
		tr__free(src);
	}
	return TR_OK;
}

static int word_cmp(const void *a, const void *b)
{
	const tr_safety_word *x = a, *y = b;
	return (int)(unsigned char)x->lower[0] - (int)(unsigned char)y->lower[0];
}

static int read_blocklist(tr_safety_rules *r, tr_kcfg *c)
{
	const msgpack_object *v;
	uint32_t n;

	if (!read_list(c, "blocklist", &v, &n) || n == 0)
		return c->failed ? TR_EINVAL : TR_OK;
	if (n > TR_SAFETY_WORDS_MAX)
		return tr_kcfg_fail(c, "blocklist: at most %d entries, got %u", TR_SAFETY_WORDS_MAX, n);
	r->words = tr__calloc(n, sizeof(*r->words));
	if (r->words == NULL)
		return TR_ENOMEM;
	for (uint32_t i = 0; i < n; i++) {
		tr_safety_word *w = &r->words[i];
		if (v[i].type != MSGPACK_OBJECT_STR)
			return tr_kcfg_fail(c, "blocklist: element %u: expected a string", i + 1);
		if (v[i].via.str.size == 0)
			return tr_kcfg_fail(c, "blocklist: element %u: empty word", i + 1);
		if (v[i].via.str.size > TR_SAFETY_WORD_LEN)
			return tr_kcfg_fail(c, "blocklist: element %u: longer than %d bytes", i + 1,
			                    TR_SAFETY_WORD_LEN);
		w->len = v[i].via.str.size;
		w->text = tr__strndup(v[i].via.str.ptr, w->len);
		w->lower = tr__strndup(v[i].via.str.ptr, w->len);
		r->nwords = i + 1;
		if (w->text == NULL || w->lower == NULL)
			return TR_ENOMEM;
		for (size_t k = 0; k < w->len; k++)
			w->lower[k] = (char)lower((unsigned char)w->lower[k]);
		w->wstart = is_word((unsigned char)w->lower[0]);
		w->wend = is_word((unsigned char)w->lower[w->len - 1]);
		if (w->len > r->maxword)
			r->maxword = w->len;
	}
	qsort(r->words, r->nwords, sizeof(*r->words), word_cmp);
	for (unsigned b = 0, i = 0; b <= 256; b++) {
		while (i < r->nwords && (unsigned char)r->words[i].lower[0] < b)
			i++;
		r->first[b] = (uint16_t)i;
	}
	return TR_OK;
}

int tr_safety_rules_load(tr_safety_rules *r, const tr_actor_spec *a, char *err, size_t errlen)
{
	tr_kcfg c;
	int rc;

	memset(r, 0, sizeof(*r));
	rc = tr_kcfg_open(&c, a, err, errlen);
	if (rc != TR_OK)
		goto out;
	if ((rc = tr_kcfg_keys(&c, known_keys)) != TR_OK)
		goto out;
	r->on_pii = read_action(&c, "on_pii", TR_SAFETY_REDACT, 7);
	r->on_blocklist = read_action(&c, "on_blocklist", TR_SAFETY_BLOCK, 5);
	r->on_injection = read_action(&c, "on_injection", TR_SAFETY_BLOCK, 5);
	r->inj_threshold = tr_kcfg_num(&c, "injection_threshold", 0.5, 0.01, 100);
	r->max_input = (uint64_t)tr_kcfg_int(&c, "max_input", 8000, 0, 1 << 30);
	r->max_output = (uint64_t)tr_kcfg_int(&c, "max_output", 16000, 0, 1 << 30);
	r->block_as_error = tr_kcfg_bool(&c, "block_as_error", 0);
	r->phone_min = (unsigned)tr_kcfg_int(&c, "phone_min_digits", 10, 7, 15);
	r->window = (size_t)tr_kcfg_int(&c, "stream_window", TR_SAFETY_REACH, TR_SAFETY_REACH, 4096);
	r->refusal = tr_kcfg_str(&c, "refusal", DEFAULT_REFUSAL);
	if (r->refusal == NULL) {
		rc = TR_ENOMEM;
		goto out;
	}
	r->refusal_len = strlen(r->refusal);
	if (!c.failed && r->refusal_len == 0)
		tr_kcfg_fail(&c, "refusal: must not be empty");
	if (c.failed) {
		rc = TR_EINVAL;
		goto out;
	}
	if ((rc = read_pii(r, &c)) != TR_OK || (rc = read_patterns(r, &c)) != TR_OK ||
	    (rc = read_blocklist(r, &c)) != TR_OK)
		goto out;
out:
	if (rc == TR_ENOMEM && err != NULL && errlen > 0 && !c.failed)
		snprintf(err, errlen, "%s: out of memory", c.who);
	tr_kcfg_close(&c);
	return rc;
}

void tr_safety_rules_free(tr_safety_rules *r)
{
	for (size_t i = 0; i < r->npats; i++) {
		if (r->pats[i].compiled)
			regfree(&r->pats[i].re);
		tr__free(r->pats[i].name);
	}
	tr__free(r->pats);
	for (size_t i = 0; i < r->nwords; i++) {
		tr__free(r->words[i].text);
		tr__free(r->words[i].lower);
	}
	tr__free(r->words);
	tr__free(r->refusal);
	memset(r, 0, sizeof(*r));
}

const char *tr_safety_label(const tr_safety_rules *r, unsigned kind, size_t *len)
{
	const char *l;
	if (kind >= TR_SAFETY_CUSTOM) {
		*len = r->pats[kind - TR_SAFETY_CUSTOM].label_len;
		return r->pats[kind - TR_SAFETY_CUSTOM].label;
	}
	l = builtin_labels[kind];
	*len = strlen(l);
	return l;
}

const char *tr_safety_kind_name(const tr_safety_rules *r, unsigned kind)
{
	return kind >= TR_SAFETY_CUSTOM ? r->pats[kind - TR_SAFETY_CUSTOM].name
	                                : builtin_names[kind];
}

/* ---- scratch ----------------------------------------------------------- */

void tr_safety_scan_init(tr_safety_scan *sc)
{
	memset(sc, 0, sizeof(*sc));
}

void tr_safety_scan_free(tr_safety_scan *sc)
{
	tr__free(sc->m);
	tr__free(sc->tok);
	tr__free(sc->cstr);
	memset(sc, 0, sizeof(*sc));
}

void tr_safety_scan_trim(tr_safety_scan *sc, size_t keep)
{
	if (sc->cap * sizeof(*sc->m) > keep || sc->tokcap * sizeof(*sc->tok) > keep ||
	    sc->cstrcap > keep)
		tr_safety_scan_free(sc);
}

static int push(tr_safety_scan *sc, size_t start, size_t end, unsigned kind)
{
	if (sc->n == sc->cap) {
		size_t cap = sc->cap ? sc->cap * 2 : 16;
		tr_safety_match *m = tr__realloc(sc->m, cap * sizeof(*m));
		if (m == NULL)
			return TR_ENOMEM;
		sc->m = m;
		sc->cap = cap;
	}
	sc->m[sc->n++] = (tr_safety_match){start, end, kind};
	return TR_OK;
}

/* ---- email ------------------------------------------------------------- */

static inline int is_local(unsigned char c)
{
	return is_alnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-';
}

static inline int is_dom(unsigned char c)
{
	return is_alnum(c) || c == '-' || c == '.';
}

/* local@domain: the local part is the (at most 64) local characters
 * before the '@', leading dots dropped; the domain is the longest run of
 * two or more labels whose last one is 2+ letters. */
static int find_emails(tr_safety_scan *sc, const unsigned char *s, size_t n)
{
	size_t from = 0;
	const unsigned char *at;

	while (from < n && (at = memchr(s + from, '@', n - from)) != NULL) {
		size_t i = (size_t)(at - s), b = i, e = i + 1, lim, lab, best = 0;
		unsigned nlab = 0;

		from = i + 1;
		while (b > 0 && i - b < 64 && is_local(s[b - 1]))
			b--;
		while (b < i && s[b] == '.')
			b++;
		if (b == i)
			continue;
		lim = n - e < 255 ? n : e + 255;
		while (e < lim && is_dom(s[e]))
			e++;
		lab = i + 1;
		for (size_t k = i + 1; k <= e; k++) {
			if (k < e && s[k] != '.')
				continue;
			if (k == lab || s[lab] == '-' || s[k - 1] == '-')
				break;
			nlab++;
			if (nlab >= 2 && k - lab >= 2) {
				size_t q = lab;
				while (q < k && is_alpha(s[q]))
					q++;
				if (q == k)
					best = k;
			}
			lab = k + 1;
		}
		if (best == 0)
			continue;
		if (push(sc, b, best, TR_SAFETY_EMAIL) != TR_OK)
			return TR_ENOMEM;
		from = best;
	}
	return TR_OK;
}

/* ---- numbers: cards and phones ------------------------------------------ */

int tr_safety_luhn(const char *d, size_t n)
{
	unsigned sum = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned v = (unsigned)(d[n - 1 - i] - '0');
		if (v > 9)
			return 0;
		if (i & 1) {
			v *= 2;
			if (v > 9)
				v -= 9;
		}
		sum += v;
	}
	return n > 0 && sum % 10 == 0;
}

#define GRP_MAX 24

typedef struct grp {
	size_t off;  /* first digit */
	size_t nd;   /* digits */
	char sep;    /* what came before it: 0 (first), ' ', '-', '.', or 'P' (a paren) */
} grp;

static int card_window(const unsigned char *s, const grp *g, size_t k, size_t j)
{
	char d[19];
	size_t n = 0;
	for (size_t x = k; x <= j; x++) {
		memcpy(d + n, s + g[x].off, g[x].nd);
		n += g[x].nd;
	}
	return tr_safety_luhn(d, n);
}

/* Cards inside one run of digit groups: the longest window of groups
 * joined by single spaces or dashes with 13-19 digits that passes Luhn,
 * leftmost first. Returns how many it pushed, or -1 (no memory). */
static int cards_in_run(tr_safety_scan *sc, const unsigned char *s, const grp *g, size_t ng,
                        int plus, int rb_ok)
{
	int found = 0;
	for (size_t k = plus ? 1 : 0; k < ng;) {
		size_t sum = 0, best = SIZE_MAX;
		/* Not the digits after a decimal point, nor before one. */
		for (size_t j = k; j < ng && g[k].sep != '.'; j++) {
			if (j > k && g[j].sep != ' ' && g[j].sep != '-')
				break;
			sum += g[j].nd;
			if (sum > 19)
				break;
			if (sum >= 13 && (j + 1 < ng ? g[j + 1].sep != '.' : rb_ok) &&
			    card_window(s, g, k, j))
				best = j;
		}
		if (best == SIZE_MAX) {
			k++;
			continue;
		}
		if (push(sc, g[k].off, g[best].off + g[best].nd, TR_SAFETY_CARD) != TR_OK)
			return -1;
		found++;
		k = best + 1;
	}
	return found;
}

/* Whether a run that is not a card is a phone number. */
static int phone_run(const tr_safety_rules *r, const unsigned char *s, const grp *g, size_t ng,
                     int plus, int parens, size_t digits)
{
	int dots = 0;
	if (digits > 15 || digits < (plus ? 8u : r->phone_min))
		return 0;
	for (size_t k = 1; k < ng; k++)
		dots |= g[k].sep == '.';
	if (dots) {
		/* 555.123.4567, not 3.14159265358 or 1.234.567.890 */
		if (parens)
			return 0;
		for (size_t k = 0; k < ng; k++) {
			size_t lo = k == 0 && plus ? 1 : 2;
			if ((k > 0 && g[k].sep != '.') || g[k].nd < lo || g[k].nd > 4)
				return 0;
		}
	}
	/* Bare digits are a phone only in the national form with a leading 0
	 * ("0612345678"); 1700000000 is more likely a timestamp or an id. */
	if (ng == 1 && !plus && !parens && (s[g[0].off] != '0' || digits > 12))
		return 0;
	return 1;
}

/* Runs of digit groups: digits, joined by one space, dash or dot, or by a
 * parenthesis (with a space or dash after a closing one); an optional
 * leading '+' or '('. A run must start and end at a word boundary. */
static int find_numbers(const tr_safety_rules *r, tr_safety_scan *sc, const unsigned char *s,
                        size_t n, int want_card, int want_phone)
{
	size_t i = 0;

	while (i < n) {
		unsigned char c = s[i];
		grp g[GRP_MAX];
		size_t ng = 0, digits = 0, p, end, start = i;
		int plus = 0, open = 0, parens = 0, rb_ok, cards;
		char pend = 0;

		if (!is_digit(c) && !((c == '+' || c == '(') && i + 1 < n &&
		                      (is_digit(s[i + 1]) ||
		                       (c == '+' && s[i + 1] == '(' && i + 2 < n && is_digit(s[i + 2]))))) {
			i++;
			continue;
		}
		/* Inside a word (A123..., x1.5) or after a decimal point: skip the
		 * whole token. */
		if (i > 0 && (is_word(s[i - 1]) ||
		              ((s[i - 1] == '.' || s[i - 1] == ',') && i > 1 && is_digit(s[i - 2])))) {
			i++;
			while (i < n && is_word(s[i]))
				i++;
			continue;
		}
		p = i;
		if (s[p] == '+') {
			plus = 1;
			p++;
		}
		if (s[p] == '(') {
			open = parens = 1;
			pend = 'P';
			p++;
		}
		for (;;) {
			size_t q = p, t;
			char sk;
			while (q < n && is_digit(s[q]))
				q++;
			g[ng++] = (grp){p, q - p, pend};
			digits += q - p;
			end = q;
			if (q >= n || ng == GRP_MAX)
				break;
			t = q;
			c = s[t];
			if (c == ')') {
				if (!open)
					break;
				open = 0;
				end = ++t; /* the ')' belongs to the run even if nothing follows */
				sk = 'P';
				if (t < n && (s[t] == ' ' || s[t] == '-'))
					t++;
			} else if (c == ' ' || c == '-' || c == '.') {
				sk = (char)c;
				t++;
				if (c != '.' && t < n && s[t] == '(') {
					if (parens)
						break;
					open = parens = 1;
					sk = 'P';
					t++;
				}
			} else if (c == '(') {
				if (parens)
					break;
				open = parens = 1;
				sk = 'P';
				t++;
			} else {
				break;
			}
			if (t >= n || !is_digit(s[t]))
				break;
			pend = sk;
			p = t;
		}
		rb_ok = end >= n || !(is_word(s[end]) || ((s[end] == '.' || s[end] == ',') &&
		                                           end + 1 < n && is_digit(s[end + 1])));
		cards = want_card ? cards_in_run(sc, s, g, ng, plus, rb_ok) : 0;
		if (cards < 0)
			return TR_ENOMEM;
		if (cards == 0 && want_phone && rb_ok && !open &&
		    phone_run(r, s, g, ng, plus, parens, digits) &&
		    push(sc, start, end, TR_SAFETY_PHONE) != TR_OK)
			return TR_ENOMEM;
		i = end > start ? end : start + 1;
	}
	return TR_OK;
}

/* ---- IBAN --------------------------------------------------------------- */

int tr_safety_iban_ok(const char *s, size_t n)
{
	unsigned r = 0;
	if (n < 15 || n > 34 || !is_upper((unsigned char)s[0]) || !is_upper((unsigned char)s[1]) ||
	    !is_digit((unsigned char)s[2]) || !is_digit((unsigned char)s[3]))
		return 0;
	for (size_t k = 0; k < n; k++) {
		unsigned char c = (unsigned char)s[(k + 4) % n];
		if (is_digit(c))
			r = (r * 10 + (unsigned)(c - '0')) % 97;
		else if (is_upper(c))
			r = (r * 100 + (unsigned)(c - 'A' + 10)) % 97;
		else
			return 0;
	}
	return r == 1;
}

/* CCdd then the BBAN: either one token of 15-34 characters, or groups of
 * four joined by single spaces (the last one may be shorter). */
static int find_ibans(tr_safety_scan *sc, const unsigned char *s, size_t n)
{
	for (size_t i = 0; i + 4 <= n; i++) {
		char cb[34];
		size_t ends[10], lens[10], ng = 0, q, clen;

		if (!is_upper(s[i]) || !is_upper(s[i + 1]) || !is_digit(s[i + 2]) ||
		    !is_digit(s[i + 3]) || (i > 0 && is_word(s[i - 1])))
			continue;
		q = i;
		while (q < n && is_alnum(s[q]))
			q++;
		clen = q - i;
		if (clen > 34 || (clen != 4 && clen < 15) || (q < n && is_word(s[q]))) {
			i = q;
			continue;
		}
		memcpy(cb, s + i, clen);
		ends[0] = q;
		lens[0] = clen;
		ng = 1;
		while (clen == 4 * ng && ng < 10 && q + 1 < n && s[q] == ' ' && is_alnum(s[q + 1])) {
			size_t t = q + 1;
			while (t < n && is_alnum(s[t]))
				t++;
			if (t - (q + 1) > 4 || clen + (t - (q + 1)) > 34 || (t < n && is_word(s[t])))
				break;
			memcpy(cb + clen, s + q + 1, t - (q + 1));
			clen += t - (q + 1);
			ends[ng] = q = t;
			lens[ng++] = clen;
		}
		for (size_t k = ng; k-- > 0;) {
			if (tr_safety_iban_ok(cb, lens[k])) {
				if (push(sc, i, ends[k], TR_SAFETY_IBAN) != TR_OK)
					return TR_ENOMEM;
				i = ends[k] - 1;
				break;
			}
		}
	}
	return TR_OK;
}

/* ---- custom patterns ----------------------------------------------------- */

static int find_pattern(tr_safety_scan *sc, const tr_safety_pattern *p, unsigned kind,
                        const char *s, size_t n)
{
	size_t pos = 0;
	while (pos < n) {
		regmatch_t pm[1];
		size_t so, eo;
		pm[0].rm_so = (regoff_t)pos;
		pm[0].rm_eo = (regoff_t)n;
		if (regexec(&p->re, s, 1, pm, REG_STARTEND | (pos > 0 ? REG_NOTBOL : 0)) != 0)
			break;
		so = (size_t)pm[0].rm_so;
		eo = (size_t)pm[0].rm_eo;
		if (eo <= so) {
			pos = so + 1;
			continue;
		}
		/* Whole characters only: a byte-level class may stop inside one. */
		for (int k = 0; k < 3 && so > 0 && is_cont((unsigned char)s[so]); k++)
			so--;
		for (int k = 0; k < 3 && eo < n && is_cont((unsigned char)s[eo]); k++)
			eo++;
		if (push(sc, so, eo, kind) != TR_OK)
			return TR_ENOMEM;
		pos = eo;
	}
	return TR_OK;
}

/* ---- all PII ------------------------------------------------------------- */

static int match_cmp(const void *a, const void *b)
{
	const tr_safety_match *x = a, *y = b;
	if (x->start != y->start)
		return x->start < y->start ? -1 : 1;
	if (x->end != y->end)
		return x->end > y->end ? -1 : 1;
	return x->kind < y->kind ? -1 : x->kind > y->kind;
}

int tr_safety_pii(const tr_safety_rules *r, tr_safety_scan *sc, const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t keep = 0;

	sc->n = 0;
	if ((r->pii & (1u << TR_SAFETY_EMAIL)) && find_emails(sc, u, n) != TR_OK)
		return TR_ENOMEM;
	if ((r->pii & ((1u << TR_SAFETY_PHONE) | (1u << TR_SAFETY_CARD))) &&
	    find_numbers(r, sc, u, n, (r->pii >> TR_SAFETY_CARD) & 1,
	                 (r->pii >> TR_SAFETY_PHONE) & 1) != TR_OK)
		return TR_ENOMEM;
	if ((r->pii & (1u << TR_SAFETY_IBAN)) && find_ibans(sc, u, n) != TR_OK)
		return TR_ENOMEM;
	if (r->npats > 0) {
		/* REG_STARTEND bounds the search, but sanitizers' regexec
		 * interceptors still strlen() the subject: give it a NUL. */
		if (n + 1 > sc->cstrcap) {
			size_t cap = n + 1 > 256 ? n + 1 : 256;
			char *c = tr__realloc(sc->cstr, cap);
			if (c == NULL)
				return TR_ENOMEM;
			sc->cstr = c;
			sc->cstrcap = cap;
		}
		memcpy(sc->cstr, s, n);
		sc->cstr[n] = '\0';
		for (size_t i = 0; i < r->npats; i++)
			if (find_pattern(sc, &r->pats[i], TR_SAFETY_CUSTOM + (unsigned)i, sc->cstr, n) !=
			    TR_OK)
				return TR_ENOMEM;
	}
	if (sc->n < 2)
		return TR_OK;
	qsort(sc->m, sc->n, sizeof(*sc->m), match_cmp);
	/* Sorted by start, longest first: keep a match unless it overlaps the
	 * last one kept; a longer one that overlaps replaces it (the one kept
	 * before that ends before either starts). */
	for (size_t i = 1; i < sc->n; i++) {
		tr_safety_match *last = &sc->m[keep], *m = &sc->m[i];
		if (m->start >= last->end)
			sc->m[++keep] = *m;
		else if (m->end - m->start > last->end - last->start)
			*last = *m;
	}
	sc->n = keep + 1;
	return TR_OK;
}

int tr_safety_redact(const tr_safety_rules *r, const char *s, size_t n,
                     const tr_safety_match *m, size_t nm, tr_buf *out)
{
	size_t at = 0;
	for (size_t i = 0; i < nm; i++) {
		size_t ll;
		const char *l = tr_safety_label(r, m[i].kind, &ll);
		if (tr__buf_append(out, s + at, m[i].start - at) != TR_OK ||
		    tr__buf_append(out, l, ll) != TR_OK)
			return TR_ENOMEM;
		at = m[i].end;
	}
	return tr__buf_append(out, s + at, n - at);
}

/* ---- blocklist ----------------------------------------------------------- */

size_t tr_safety_blocklist(const tr_safety_rules *r, const char *s, size_t n, int end_pending,
                           size_t *hits, size_t max, size_t *first_end)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t nh = 0;

	if (r->nwords == 0 || max == 0)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned c = lower(u[i]);
		for (size_t k = r->first[c]; k < r->first[c + 1]; k++) {
			const tr_safety_word *w = &r->words[k];
			size_t end = i + w->len, x, h;
			if (w->len > n - i || (w->wstart && i > 0 && is_word(u[i - 1])))
				continue;
			for (x = 1; x < w->len && lower(u[i + x]) == (unsigned char)w->lower[x]; x++)
				;
			if (x < w->len)
				continue;
			if (w->wend && ((end < n && is_word(u[end])) || (end == n && end_pending)))
				continue;
			for (h = 0; h < nh && hits[h] != k; h++)
				;
			if (h < nh)
				continue;
			if (nh == 0 && first_end != NULL)
				*first_end = end;
			hits[nh++] = k;
			if (nh == max)
				return nh;
		}
	}
	return nh;
}

/* ---- prompt injection ---------------------------------------------------- */

/*
 * Phrase rules over word tokens (ASCII case-insensitive). A pattern is
 * elements separated by one space: "a|b" one of these words, "[a|b]" an
 * optional one, "{a|b}" up to three of them. Scores are hundredths; each
 * rule counts once however often it matches. The list is short on
 * purpose: each entry is a phrase rarely seen in an honest request, and
 * the weak ones ("you are now") only count together with others.
 */
typedef struct inj_rule {
	const char *name;
	int score;
	const char *pat;
} inj_rule;

#define INJ_FILL "{all|any|of|the|your|my|these|those|every}"
#define INJ_STRONG                                                                          \
	"all|any|every|previous|prior|above|earlier|preceding|former|initial|original|system|" \
	"your|existing|current|safety"
#define INJ_NOUN                                                                             \
	"instructions|instruction|directions|directives|rules|prompts|prompt|guidelines|"     \
	"guardrails|commands|constraints|restrictions"

static const inj_rule inj_rules[] = {
	{"ignore_instructions", 60,
	 "ignore|disregard|forget|override|bypass|skip " INJ_FILL " " INJ_STRONG
	 " {the|of|your|my|these|those|previous|prior|above|earlier|preceding|system|safety|other} "
	 INJ_NOUN},
	{"disregard_above", 50,
	 "disregard|forget [all|everything|anything] [of] [the|what|that|everything] "
	 "above|previous|prior|preceding|earlier"},
	{"ignore_above", 50, "ignore [all|everything|anything] [of] the|everything|all above"},
	{"you_are_now", 30, "you|you're [are] now"},
	{"from_now_on", 20, "from now on [you|you're] [are|will|must|shall]"},
	{"system_prompt", 40, "system prompt|prompts"},
	{"reveal_prompt", 50,
	 "reveal|show|print|output|repeat|leak|display|tell|give|dump [me|us] [your|the] "
	 "{hidden|secret|initial|original|full|system|entire|whole|exact|first} prompt|prompts"},
	{"reveal_instructions", 50,
	 "reveal|show|print|output|repeat|leak|display|tell|give|dump [me|us] [your|the] "
	 "hidden|secret|initial|original|system instructions|rules|guidelines"},
	{"developer_mode", 40, "developer|dev|god|debug|admin|dan|jailbreak|unrestricted|sudo mode"},
	{"jailbreak", 40, "jailbreak|jailbroken|jailbreaking"},
	{"do_anything_now", 50, "do anything now"},
	{"no_restrictions", 30,
	 "without|no|remove|disable [any|all|your|the] "
	 "restrictions|filters|limits|limitations|censorship|guardrails|safeguards"},
	{"act_unrestricted", 40,
	 "act|behave|respond [as|like] [an|a] unrestricted|unfiltered|uncensored|unaligned|evil"},
	{"new_instructions", 30, "new|updated|real|actual|true instructions|instruction"},
};
#define INJ_NRULES (sizeof(inj_rules) / sizeof(inj_rules[0]))

/* Chat-template role markers pasted into a message. */
static const char *const inj_markers[] = {"<|im_start|>", "<|im_end|>", "<|system|>",
                                          "[inst]", "<<sys>>"};
#define INJ_MARKER_SCORE 50
#define INJ_BASE64_SCORE 30
#define INJ_BASE64_MIN 40

/* The rules compiled once: each element's alternatives with their
 * lengths, and a 256-bit filter of (first two letters, length) so that
 * most tokens are turned away with one AND. */
#define INJ_ALTS_MAX 24
#define INJ_ELEMS_MAX 8

typedef struct inj_elem {
	char kind; /* 'w' one word, '[' optional, '{' up to three */
	uint8_t nalt;
	uint64_t filter[4];
	const char *alt[INJ_ALTS_MAX];
	uint8_t len[INJ_ALTS_MAX];
} inj_elem;

typedef struct inj_prog {
	uint8_t nel;
	inj_elem el[INJ_ELEMS_MAX];
} inj_prog;

static inj_prog inj_progs[INJ_NRULES];
static uint64_t inj_first[4]; /* union of the first elements' filters */
static pthread_once_t inj_once = PTHREAD_ONCE_INIT;

static inline unsigned tok_bit(const unsigned char *t, size_t n)
{
	return (lower(t[0]) * 31u + lower(t[n > 1]) * 7u + (unsigned)n) & 255u;
}

static inline int has_bit(const uint64_t *f, unsigned b)
{
	return (f[b >> 6] >> (b & 63)) & 1;
}

/* The table above is ours: a pattern that does not fit is a bug. */
static void inj_compile(void)
{
	for (size_t r = 0; r < INJ_NRULES; r++) {
		const char *p = inj_rules[r].pat;
		inj_prog *g = &inj_progs[r];
		while (*p != '\0') {
			inj_elem *e;
			const char *end;
			if (*p == ' ') {
				p++;
				continue;
			}
			assert(g->nel < INJ_ELEMS_MAX);
			e = &g->el[g->nel++];
			e->kind = *p == '[' || *p == '{' ? *p++ : 'w';
			end = e->kind == 'w' ? p + strcspn(p, " ") : strchr(p, e->kind == '[' ? ']' : '}');
			while (p < end) {
				size_t l = strcspn(p, "| ]}");
				assert(e->nalt < INJ_ALTS_MAX && l > 0 && l < 256);
				e->alt[e->nalt] = p;
				e->len[e->nalt++] = (uint8_t)l;
				unsigned b = tok_bit((const unsigned char *)p, l);
				e->filter[b >> 6] |= 1ull << (b & 63);
				p += l;
				if (*p == '|')
					p++;
			}
			if (e->kind != 'w')
				p++; /* the closing bracket */
		}
		assert(g->nel > 0 && g->el[0].kind == 'w');
		for (int w = 0; w < 4; w++)
			inj_first[w] |= g->el[0].filter[w];
	}
}

static int tok_in(const inj_elem *e, const unsigned char *s, const uint32_t *tok, size_t ntok,
                  size_t i)
{
	const unsigned char *t;
	size_t n;
	if (i >= ntok)
		return 0;
	t = s + tok[2 * i];
	n = tok[2 * i + 1];
	if (!has_bit(e->filter, tok_bit(t, n)))
		return 0;
	for (unsigned a = 0; a < e->nalt; a++) {
		size_t k;
		if (e->len[a] != n)
			continue;
		for (k = 0; k < n && lower(t[k]) == (unsigned char)e->alt[a][k]; k++)
			;
		if (k == n)
			return 1;
	}
	return 0;
}

static int inj_match(const inj_prog *g, unsigned el, const unsigned char *s, const uint32_t *tok,
                     size_t ntok, size_t i)
{
	const inj_elem *e;
	if (el == g->nel)
		return 1;
	e = &g->el[el];
	if (e->kind == '[')
		return (tok_in(e, s, tok, ntok, i) && inj_match(g, el + 1, s, tok, ntok, i + 1)) ||
		       inj_match(g, el + 1, s, tok, ntok, i);
	if (e->kind == '{') {
		for (size_t k = 0; k <= 3; k++) {
			if (inj_match(g, el + 1, s, tok, ntok, i + k))
				return 1;
			if (!tok_in(e, s, tok, ntok, i + k))
				break;
		}
		return 0;
	}
	return tok_in(e, s, tok, ntok, i) && inj_match(g, el + 1, s, tok, ntok, i + 1);
}

static inline int is_tok(unsigned char c)
{
	return is_alnum(c) || c == '\'' || c >= 0x80;
}

static inline int is_b64(unsigned char c)
{
	return is_alnum(c) || c == '+' || c == '/' || c == '-' || c == '_';
}

static int has_marker(const unsigned char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (s[i] != '<' && s[i] != '[')
			continue;
		for (size_t k = 0; k < sizeof(inj_markers) / sizeof(inj_markers[0]); k++) {
			const char *m = inj_markers[k];
			size_t l = strlen(m), x;
			if (l > n - i)
				continue;
			for (x = 0; x < l && lower(s[i + x]) == (unsigned char)m[x]; x++)
				;
			if (x == l)
				return 1;
		}
	}
	return 0;
}

/* A run of 40+ base64 characters mixing upper case, lower case and
 * digits (long words, hex digests and numbers do not). */
static int has_base64(const unsigned char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		size_t b = i;
		int up = 0, lo = 0, dg = 0;
		while (i < n && is_b64(s[i])) {
			up |= is_upper(s[i]);
			lo |= s[i] >= 'a' && s[i] <= 'z';
			dg |= is_digit(s[i]);
			i++;
		}
		if (i - b >= INJ_BASE64_MIN && up && lo && dg)
			return 1;
		if (i == b)
			i++;
	}
	return 0;
}

static void why_add(char *why, size_t whylen, size_t *off, const char *name)
{
	int w;
	if (why == NULL || *off >= whylen)
		return;
	w = snprintf(why + *off, whylen - *off, "%s%s", *off ? ", " : "", name);
	if (w > 0)
		*off += (size_t)w;
}

int tr_safety_injection(tr_safety_scan *sc, const char *str, size_t n, double *score, char *why,
                        size_t whylen)
{
	const unsigned char *s = (const unsigned char *)str;
	int total = 0;
	size_t off = 0;
	uint8_t hit[INJ_NRULES];

	pthread_once(&inj_once, inj_compile);
	if (why != NULL && whylen > 0)
		why[0] = '\0';
	*score = 0;
	sc->ntok = 0;
	for (size_t i = 0; i < n;) {
		size_t b;
		if (!is_tok(s[i])) {
			i++;
			continue;
		}
		b = i;
		while (i < n && is_tok(s[i]))
			i++;
		if (sc->ntok * 2 + 2 > sc->tokcap) {
			size_t cap = sc->tokcap ? sc->tokcap * 2 : 256;
			uint32_t *t = tr__realloc(sc->tok, cap * sizeof(*t));
			if (t == NULL)
				return TR_ENOMEM;
			sc->tok = t;
			sc->tokcap = cap;
		}
		sc->tok[2 * sc->ntok] = (uint32_t)b;
		sc->tok[2 * sc->ntok + 1] = (uint32_t)(i - b);
		sc->ntok++;
	}
	memset(hit, 0, sizeof(hit));
	/* Every rule starts with a required word: a token whose filter bit
	 * no rule's first word has cannot start a match (most tokens). */
	for (size_t i = 0; i < sc->ntok; i++) {
		unsigned bit = tok_bit(s + sc->tok[2 * i], sc->tok[2 * i + 1]);
		if (!has_bit(inj_first, bit))
			continue;
		for (size_t k = 0; k < INJ_NRULES; k++)
			if (!hit[k] && has_bit(inj_progs[k].el[0].filter, bit) &&
			    inj_match(&inj_progs[k], 0, s, sc->tok, sc->ntok, i))
				hit[k] = 1;
	}
	for (size_t k = 0; k < INJ_NRULES; k++) {
		if (hit[k]) {
			total += inj_rules[k].score;
			why_add(why, whylen, &off, inj_rules[k].name);
		}
	}
	if (has_marker(s, n)) {
		total += INJ_MARKER_SCORE;
		why_add(why, whylen, &off, "role_marker");
	}
	if (has_base64(s, n)) {
		total += INJ_BASE64_SCORE;
		why_add(why, whylen, &off, "base64_blob");
	}
	*score = total / 100.0;
	return TR_OK;
}
