/*
 * actors/generate/window.c -- session history (LRU of rings) and the
 * token budget. See window.h.
 *
 * Design notes. Sessions hang off a chained hash table sized once (a
 * power of two >= max_sessions) and an intrusive LRU list, most recent at
 * the head. A full table recycles its tail session in place: key, ring
 * and the turn buffers are reused, so once max_sessions have been seen
 * the window allocates only when a turn outgrows its slot's buffer.
 */
#include <string.h>

#include "actors/generate/window.h"
#include "core/alloc.h"
#include "msg/msg_int.h"

typedef struct turn {
	char *buf;    /* question then answer, back to back (owned) */
	size_t cap;
	size_t qn, an;
} turn;

struct tr_gwin_sess {
	tr_gwin_sess *hnext;       /* hash chain */
	tr_gwin_sess *prev, *next; /* LRU list; prev is towards the most recent */
	uint64_t hash;
	uint32_t keyn;
	uint32_t cap;              /* ring slots (the window's `turns`) */
	uint32_t head;             /* slot of the oldest turn */
	uint32_t n;                /* turns held */
	unsigned char key[TR_GWIN_KEY_MAX];
	turn t[];
};

struct tr_gwin {
	uint32_t max, count, turns;
	uint64_t seed;
	size_t mask;               /* buckets - 1 */
	tr_gwin_sess **buckets;
	tr_gwin_sess *mru, *lru;
};

size_t tr_gwin_cut(const char *s, size_t n, size_t max)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t k, back = 0;
	if (max >= n)
		return n;
	k = max;
	/* Up to 3 continuation bytes belong to the sequence that starts
	 * before them; a cut inside it moves back to that start. A run of
	 * more than 3 is invalid anyway and is cut where asked. */
	while (k > 0 && back < 3 && (u[k] & 0xc0) == 0x80) {
		k--;
		back++;
	}
	if ((u[k] & 0xc0) == 0x80)
		return max;
	return k;
}

/* FNV-1a, seeded. Not a keyed MAC: chains stay short for honest ids, and
 * a crafted flood is bounded by max_sessions anyway. */
static uint64_t hash_key(uint64_t seed, const unsigned char *k, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull ^ seed;
	for (size_t i = 0; i < n; i++) {
		h ^= k[i];
		h *= 0x100000001b3ull;
	}
	return h ^ (h >> 29);
}

int tr_gwin_new(uint32_t max_sessions, uint32_t turns, uint64_t seed, tr_gwin **out)
{
	tr_gwin *w;
	size_t nb = 1;
	*out = NULL;
	if (max_sessions == 0 || turns == 0)
		return TR_EINVAL;
	while (nb < max_sessions)
		nb <<= 1;
	w = tr__calloc(1, sizeof(*w));
	if (w == NULL)
		return TR_ENOMEM;
	w->buckets = tr__calloc(nb, sizeof(*w->buckets));
	if (w->buckets == NULL) {
		tr__free(w);
		return TR_ENOMEM;
	}
	w->max = max_sessions;
	w->turns = turns;
	w->seed = seed;
	w->mask = nb - 1;
	*out = w;
	return TR_OK;
}

void tr_gwin_free(tr_gwin *w)
{
	if (w == NULL)
		return;
	for (tr_gwin_sess *s = w->mru, *nx; s != NULL; s = nx) {
		nx = s->next;
		for (uint32_t i = 0; i < s->cap; i++)
			tr__free(s->t[i].buf);
		tr__free(s);
	}
	tr__free(w->buckets);
	tr__free(w);
}

uint32_t tr_gwin_count(const tr_gwin *w)
{
	return w->count;
}

static tr_gwin_sess *find(const tr_gwin *w, uint64_t h, const void *key, size_t n)
{
	for (tr_gwin_sess *s = w->buckets[h & w->mask]; s != NULL; s = s->hnext)
		if (s->hash == h && s->keyn == n && memcmp(s->key, key, n) == 0)
			return s;
	return NULL;
}

static void lru_unlink(tr_gwin *w, tr_gwin_sess *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else
		w->mru = s->next;
	if (s->next)
		s->next->prev = s->prev;
	else
		w->lru = s->prev;
	s->prev = s->next = NULL;
}

static void lru_push_front(tr_gwin *w, tr_gwin_sess *s)
{
	s->prev = NULL;
	s->next = w->mru;
	if (w->mru)
		w->mru->prev = s;
	w->mru = s;
	if (w->lru == NULL)
		w->lru = s;
}

static void hash_unlink(tr_gwin *w, tr_gwin_sess *s)
{
	tr_gwin_sess **pp = &w->buckets[s->hash & w->mask];
	while (*pp != s)
		pp = &(*pp)->hnext;
	*pp = s->hnext;
	s->hnext = NULL;
}

const tr_gwin_sess *tr_gwin_peek(const tr_gwin *w, const void *key, size_t n)
{
	if (n == 0 || n > TR_GWIN_KEY_MAX)
		return NULL;
	return find(w, hash_key(w->seed, key, n), key, n);
}

tr_gwin_sess *tr_gwin_get(tr_gwin *w, const void *key, size_t n)
{
	uint64_t h;
	tr_gwin_sess *s;
	if (n == 0 || n > TR_GWIN_KEY_MAX)
		return NULL;
	h = hash_key(w->seed, key, n);
	s = find(w, h, key, n);
	if (s != NULL) {
		if (w->mru != s) {
			lru_unlink(w, s);
			lru_push_front(w, s);
		}
		return s;
	}
	if (w->count < w->max) {
		s = tr__calloc(1, sizeof(*s) + (size_t)w->turns * sizeof(turn));
		if (s == NULL)
			return NULL;
		s->cap = w->turns;
		w->count++;
	} else {
		/* Forget the least recently used session; keep its buffers. */
		s = w->lru;
		lru_unlink(w, s);
		hash_unlink(w, s);
	}
	s->hash = h;
	s->keyn = (uint32_t)n;
	memcpy(s->key, key, n);
	s->head = 0;
	s->n = 0;
	s->hnext = w->buckets[h & w->mask];
	w->buckets[h & w->mask] = s;
	lru_push_front(w, s);
	return s;
}

uint32_t tr_gwin_nturns(const tr_gwin_sess *s)
{
	return s->n;
}

static turn *slot(const tr_gwin_sess *s, uint32_t back)
{
	return (turn *)&s->t[(s->head + s->n - 1 - back) % s->cap];
}

int tr_gwin_turn(const tr_gwin_sess *s, uint32_t back, const char **q, size_t *qn,
                 const char **a, size_t *an)
{
	const turn *t;
	if (s == NULL || back >= s->n)
		return TR_ENOTFOUND;
	t = slot(s, back);
	*q = t->buf;
	*qn = t->qn;
	*a = t->buf + t->qn;
	*an = t->an;
	return TR_OK;
}

int tr_gwin_push(tr_gwin_sess *s, const char *q, size_t qn, const char *a, size_t an,
                 int replace)
{
	enum { REPLACE, APPEND, OVERWRITE_OLDEST } how;
	turn *t;
	size_t need;
	qn = tr_gwin_cut(q, qn, TR_GWIN_QUESTION_MAX);
	an = tr_gwin_cut(a, an, TR_GWIN_ANSWER_MAX);
	need = qn + an;
	if (replace && s->n > 0 && slot(s, 0)->qn == qn && memcmp(slot(s, 0)->buf, q, qn) == 0) {
		how = REPLACE;
		t = slot(s, 0);
	} else if (s->n < s->cap) {
		how = APPEND;
		t = &s->t[(s->head + s->n) % s->cap];
	} else {
		how = OVERWRITE_OLDEST;
		t = &s->t[s->head];
	}
	if (need > t->cap) {
		/* Grow before touching the ring, so ENOMEM leaves it as it was. */
		char *nb = tr__realloc(t->buf, need);
		if (nb == NULL)
			return TR_ENOMEM;
		t->buf = nb;
		t->cap = need;
	}
	if (how == APPEND)
		s->n++;
	else if (how == OVERWRITE_OLDEST)
		s->head = (s->head + 1) % s->cap; /* the oldest slot is now the newest */
	if (qn)
		memcpy(t->buf, q, qn);
	if (an)
		memcpy(t->buf + qn, a, an);
	t->qn = qn;
	t->an = an;
	return TR_OK;
}

/* ---- the budget ---------------------------------------------------------- */

#define TURN_FRAME (sizeof("User: ") - 1 + sizeof("\nAssistant: ") - 1 + 1)

static size_t digits(uint32_t k)
{
	size_t d = 1;
	while (k >= 10) {
		k /= 10;
		d++;
	}
	return d;
}

/* "[k] " + text + "\n" */
static size_t passage_frame(uint32_t k)
{
	return digits(k) + 4;
}

void tr_gwin_choose(const tr_gwin_sess *s, uint32_t max_turns, tr_gwin_item *pv, size_t np,
                    size_t budget, tr_gwin_fit *out)
{
	uint16_t order[TR_GWIN_ITEMS_MAX];
	size_t used = 0, left;
	uint32_t k = 0;

	memset(out, 0, sizeof(*out));
	for (size_t i = 0; i < np; i++) {
		pv[i].use = 0;
		pv[i].pos = 0;
	}
	/* 1. Recent turns, within half the budget. */
	if (s != NULL) {
		size_t half = budget / 2;
		uint32_t n = s->n < max_turns ? s->n : max_turns;
		for (uint32_t b = 0; b < n; b++) {
			const turn *t = slot(s, b);
			size_t line = TURN_FRAME + t->qn + t->an;
			if (used + line > half)
				break;
			used += line;
			out->turns++;
		}
	}
	/* 2. Passages, best first (an insertion sort of indices; stable, so
	 * ties keep their order). */
	if (np > TR_GWIN_ITEMS_MAX)
		np = TR_GWIN_ITEMS_MAX;
	for (size_t i = 0; i < np; i++) {
		size_t j = i;
		while (j > 0 && pv[order[j - 1]].score < pv[i].score) {
			order[j] = order[j - 1];
			j--;
		}
		order[j] = (uint16_t)i;
	}
	for (size_t i = 0; i < np; i++) {
		tr_gwin_item *it = &pv[order[i]];
		size_t frame = passage_frame(k + 1);
		if (it->len == 0 || used + frame >= budget)
			continue;
		left = budget - used - frame;
		if (it->len <= left)
			it->use = it->len;
		else if (left >= TR_GWIN_CUT_MIN)
			it->use = tr_gwin_cut(it->text, it->len, left);
		if (it->use == 0)
			continue;
		it->pos = ++k;
		used += frame + it->use;
	}
	out->passages = k;
	out->bytes = used;
}

int tr_gwin_render(const tr_gwin_sess *s, const tr_gwin_item *pv, size_t np,
                   const tr_gwin_fit *fit, tr_buf *out)
{
	for (uint32_t b = fit->turns; b > 0; b--) {
		const turn *t = slot(s, b - 1);
		if (tr__buf_append(out, "User: ", 6) != TR_OK ||
		    tr__buf_append(out, t->buf, t->qn) != TR_OK ||
		    tr__buf_append(out, "\nAssistant: ", 12) != TR_OK ||
		    tr__buf_append(out, t->buf + t->qn, t->an) != TR_OK ||
		    tr__buf_append(out, "\n", 1) != TR_OK)
			return TR_ENOMEM;
	}
	for (uint32_t k = 1; k <= fit->passages; k++) {
		for (size_t i = 0; i < np; i++) {
			char num[16];
			size_t d;
			uint32_t v = k;
			if (pv[i].pos != k)
				continue;
			d = digits(k);
			num[0] = '[';
			for (size_t j = d; j > 0; j--, v /= 10)
				num[j] = (char)('0' + v % 10);
			num[d + 1] = ']';
			num[d + 2] = ' ';
			if (tr__buf_append(out, num, d + 3) != TR_OK ||
			    tr__buf_append(out, pv[i].text, pv[i].use) != TR_OK ||
			    tr__buf_append(out, "\n", 1) != TR_OK)
				return TR_ENOMEM;
			break;
		}
	}
	return TR_OK;
}
