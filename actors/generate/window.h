/*
 * actors/generate/window.h -- the generate kind's context window: what a
 * model (or the extractive backend) gets to see for one question.
 *
 * Two parts:
 *  - Session history: a bounded LRU of sessions (at most `max_sessions`,
 *    the least recently used one is forgotten to make room), each a ring
 *    of its last `turns` (question, answer) pairs. One tr_gwin belongs to
 *    one actor instance and is only touched from its callbacks: no locks.
 *  - A token budget: given the budget in bytes, tr_gwin_choose() picks the
 *    most recent turns and the best passages that fit.
 *
 * Token estimate: one token per 4 bytes of UTF-8, rounded up
 * (tr_gwin_tokens). It is what the generate kind reports in usage and
 * what every budget is measured in; real tokenizers give about 3.5 to 4.5
 * bytes per token on English text, so budgets are approximate by design.
 *
 * The context, as it would be handed to a model (tr_gwin_render), is the
 * chosen turns oldest first, then the chosen passages best first:
 *   "User: <question>\nAssistant: <answer>\n"   per turn
 *   "[k] <passage text>\n"                       per passage, k = 1, 2, ...
 * tr_gwin_choose counts exactly these bytes, so a rendered context is
 * never longer than the budget it was chosen for.
 */
#ifndef TR_ACTORS_GENERATE_WINDOW_H
#define TR_ACTORS_GENERATE_WINDOW_H

#include <stddef.h>
#include <stdint.h>

#include <troupe/msg.h>

/* A session key is opaque bytes (generate uses tenant id + session id). */
#define TR_GWIN_KEY_MAX 260
/* Bytes of a question kept in history; longer ones are cut (UTF-8 safe). */
#define TR_GWIN_QUESTION_MAX 1024
/* Bytes of an answer kept in history. */
#define TR_GWIN_ANSWER_MAX (128u * 1024u)
/* A passage is cut to fit only if at least this many of its bytes fit;
 * a shorter remnant would tell a model nothing. */
#define TR_GWIN_CUT_MIN 64
/* Passages tr_gwin_choose considers; later ones are left out. */
#define TR_GWIN_ITEMS_MAX 256

static inline uint32_t tr_gwin_tokens(size_t bytes)
{
	size_t t = bytes / 4 + (bytes % 4 != 0);
	return t > UINT32_MAX ? UINT32_MAX : (uint32_t)t;
}

/* The largest n' <= max (and <= n) such that s[0..n') does not end inside
 * a UTF-8 sequence. Invalid bytes are left for the caller to replace. */
size_t tr_gwin_cut(const char *s, size_t n, size_t max);

typedef struct tr_gwin tr_gwin;
typedef struct tr_gwin_sess tr_gwin_sess;

/* A new, empty set of sessions: up to max_sessions (>= 1) of up to
 * `turns` (>= 1) turns each. `seed` perturbs the hash (per instance, so
 * that crafted session ids cannot aim at one chain everywhere). TR_OK or
 * TR_ENOMEM. Sessions are allocated on first use, then recycled. */
int tr_gwin_new(uint32_t max_sessions, uint32_t turns, uint64_t seed, tr_gwin **out);
/* Frees w and every session (NULL is a no-op). */
void tr_gwin_free(tr_gwin *w);

/* The session `key` (1..TR_GWIN_KEY_MAX bytes), made the most recently
 * used; created empty if absent, reusing the least recently used one when
 * max_sessions are held. NULL on ENOMEM or a bad key length. The pointer
 * is valid until the next tr_gwin_get on w. */
tr_gwin_sess *tr_gwin_get(tr_gwin *w, const void *key, size_t n);
/* The session `key` if held, without touching the LRU order; NULL if not. */
const tr_gwin_sess *tr_gwin_peek(const tr_gwin *w, const void *key, size_t n);
/* Sessions held now (<= max_sessions). */
uint32_t tr_gwin_count(const tr_gwin *w);

/* Turns held by s (<= turns). */
uint32_t tr_gwin_nturns(const tr_gwin_sess *s);
/* The turn `back` steps from the newest (0 = newest): TR_OK with its
 * strings (borrowed until s changes), or TR_ENOTFOUND. */
int tr_gwin_turn(const tr_gwin_sess *s, uint32_t back, const char **q, size_t *qn,
                 const char **a, size_t *an);
/* Appends a turn (copied; the question cut to TR_GWIN_QUESTION_MAX, the
 * answer to TR_GWIN_ANSWER_MAX), forgetting the oldest when the ring is
 * full. With `replace` set and the newest turn's question equal to q, that
 * turn is overwritten instead (a retried step must not count twice).
 * Slots keep their buffers, so a steady session allocates nothing.
 * TR_OK, or TR_ENOMEM with s unchanged. */
int tr_gwin_push(tr_gwin_sess *s, const char *q, size_t qn, const char *a, size_t an,
                 int replace);

/* A candidate passage for tr_gwin_choose. */
typedef struct tr_gwin_item {
	const char *text; /* in */
	size_t len;       /* in: bytes of text */
	double score;     /* in: higher is better */
	size_t use;       /* out: bytes of text in the context (0: left out; < len: cut) */
	uint32_t pos;     /* out: its place among the chosen passages, 1-based; 0: out */
} tr_gwin_item;

typedef struct tr_gwin_fit {
	uint32_t turns;    /* the newest turns in context */
	uint32_t passages; /* passages in context */
	size_t bytes;      /* the rendered context's length */
} tr_gwin_fit;

/*
 * Chooses the context for `budget` bytes:
 *  1. turns of s (may be NULL), newest first, at most max_turns, within
 *     half the budget -- stopping at the first that does not fit, so the
 *     history in context is always the contiguous recent past;
 *  2. passages, best score first (ties: the earlier one), with what is
 *     left; a passage that does not fit whole is cut to fit (on a UTF-8
 *     boundary) when at least TR_GWIN_CUT_MIN of its bytes fit, else left
 *     out, and the smaller ones after it are still tried. Empty passages
 *     and those past the first TR_GWIN_ITEMS_MAX are left out.
 * Sets every item's use/pos and *out; out->bytes <= budget always.
 */
void tr_gwin_choose(const tr_gwin_sess *s, uint32_t max_turns, tr_gwin_item *pv, size_t np,
                    size_t budget, tr_gwin_fit *out);

/* Appends the context chosen by tr_gwin_choose (same s, pv, fit) to out,
 * in the format above: exactly fit->bytes bytes. TR_OK or TR_ENOMEM. */
int tr_gwin_render(const tr_gwin_sess *s, const tr_gwin_item *pv, size_t np,
                   const tr_gwin_fit *fit, tr_buf *out);

#endif
