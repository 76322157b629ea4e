/*
 * test_window.c -- the generate kind's context window on its own
 * (actors/generate/window.h): session rings keep the last N turns,
 * the LRU forgets the least recently used session and recycles it,
 * retried turns replace instead of doubling, allocation failures leave
 * things as they were, and the token budget: recent turns within half,
 * best passages first, cuts on UTF-8 boundaries, a rendered context
 * exactly as long as counted and never over budget.
 */
#include <stdio.h>
#include <string.h>

#include "actors/generate/window.h"
#include "core/alloc.h"
#include "tt.h"

static int turn_is(const tr_gwin_sess *s, uint32_t back, const char *q, const char *a)
{
	const char *tq, *ta;
	size_t qn, an;
	if (tr_gwin_turn(s, back, &tq, &qn, &ta, &an) != TR_OK)
		return 0;
	return qn == strlen(q) && memcmp(tq, q, qn) == 0 && an == strlen(a) &&
	       memcmp(ta, a, an) == 0;
}

TT_TEST(tokens_round_up)
{
	TT_EQ(tr_gwin_tokens(0), 0);
	TT_EQ(tr_gwin_tokens(1), 1);
	TT_EQ(tr_gwin_tokens(4), 1);
	TT_EQ(tr_gwin_tokens(5), 2);
	TT_EQ(tr_gwin_tokens(4096), 1024);
}

TT_TEST(cut_on_utf8_boundaries)
{
	const char *s = "ab\xc3\xa9" "cd\xe2\x82\xac" "e\xf0\x9f\x98\x80"; /* é € 😀 */
	size_t n = strlen(s);
	TT_EQ(tr_gwin_cut(s, n, 100), n);
	TT_EQ(tr_gwin_cut(s, n, 3), 2);  /* inside é */
	TT_EQ(tr_gwin_cut(s, n, 4), 4);
	TT_EQ(tr_gwin_cut(s, n, 7), 6);  /* inside € */
	TT_EQ(tr_gwin_cut(s, n, 8), 6);
	TT_EQ(tr_gwin_cut(s, n, 9), 9);
	TT_EQ(tr_gwin_cut(s, n, 12), 10); /* inside 😀 */
	/* A run of stray continuation bytes is cut where asked. */
	TT_EQ(tr_gwin_cut("a\x80\x80\x80\x80\x80", 6, 5), 5);
}

TT_TEST(ring_keeps_last_n_newest_first)
{
	tr_gwin *w;
	TT_OK(tr_gwin_new(4, 3, 1, &w));
	tr_gwin_sess *s = tr_gwin_get(w, "s1", 2);
	TT_ASSERT(s != NULL);
	TT_EQ(tr_gwin_nturns(s), 0);
	TT_RC(tr_gwin_turn(s, 0, &(const char *){0}, &(size_t){0}, &(const char *){0},
	                   &(size_t){0}),
	      TR_ENOTFOUND);
	char q[16], a[16];
	for (int i = 1; i <= 5; i++) {
		snprintf(q, sizeof(q), "q%d", i);
		snprintf(a, sizeof(a), "answer %d", i);
		TT_OK(tr_gwin_push(s, q, strlen(q), a, strlen(a), 0));
		TT_EQ(tr_gwin_nturns(s), i < 3 ? i : 3);
	}
	TT_ASSERT(turn_is(s, 0, "q5", "answer 5"));
	TT_ASSERT(turn_is(s, 1, "q4", "answer 4"));
	TT_ASSERT(turn_is(s, 2, "q3", "answer 3"));
	TT_RC(tr_gwin_turn(s, 3, &(const char *){0}, &(size_t){0}, &(const char *){0},
	                   &(size_t){0}),
	      TR_ENOTFOUND);
	/* A retry of the newest question replaces it... */
	TT_OK(tr_gwin_push(s, "q5", 2, "answer 5 again", 14, 1));
	TT_EQ(tr_gwin_nturns(s), 3);
	TT_ASSERT(turn_is(s, 0, "q5", "answer 5 again"));
	TT_ASSERT(turn_is(s, 2, "q3", "answer 3"));
	/* ...but a retry of another question is a new turn. */
	TT_OK(tr_gwin_push(s, "q6", 2, "answer 6", 8, 1));
	TT_ASSERT(turn_is(s, 0, "q6", "answer 6"));
	TT_ASSERT(turn_is(s, 2, "q4", "answer 4"));
	/* Long questions are cut (on a boundary); empty turns are fine. */
	static char big[TR_GWIN_QUESTION_MAX * 2];
	memset(big, 'x', sizeof(big));
	big[TR_GWIN_QUESTION_MAX - 1] = '\xc3';
	big[TR_GWIN_QUESTION_MAX] = '\xa9';
	TT_OK(tr_gwin_push(s, big, sizeof(big), "", 0, 0));
	const char *tq, *ta;
	size_t qn, an;
	TT_OK(tr_gwin_turn(s, 0, &tq, &qn, &ta, &an));
	TT_EQ(qn, TR_GWIN_QUESTION_MAX - 1);
	TT_EQ(an, 0);
	tr_gwin_free(w);
}

TT_TEST(sessions_are_separate_and_bounded)
{
	tr_gwin *w;
	TT_OK(tr_gwin_new(3, 2, 7, &w));
	TT_ASSERT(tr_gwin_get(w, "", 0) == NULL);
	static char longkey[TR_GWIN_KEY_MAX + 1];
	TT_ASSERT(tr_gwin_get(w, longkey, sizeof(longkey)) == NULL);
	TT_ASSERT(tr_gwin_get(w, longkey, TR_GWIN_KEY_MAX) != NULL);
	TT_EQ(tr_gwin_count(w), 1);
	tr_gwin_free(w);

	TT_OK(tr_gwin_new(3, 2, 7, &w));
	tr_gwin_sess *a = tr_gwin_get(w, "a", 1);
	TT_OK(tr_gwin_push(a, "qa", 2, "ra", 2, 0));
	tr_gwin_sess *b = tr_gwin_get(w, "b", 1);
	TT_OK(tr_gwin_push(b, "qb", 2, "rb", 2, 0));
	tr_gwin_sess *c = tr_gwin_get(w, "c", 1);
	TT_OK(tr_gwin_push(c, "qc", 2, "rc", 2, 0));
	TT_EQ(tr_gwin_count(w), 3);
	TT_ASSERT(turn_is(tr_gwin_peek(w, "a", 1), 0, "qa", "ra"));
	TT_ASSERT(turn_is(tr_gwin_peek(w, "b", 1), 0, "qb", "rb"));
	/* Touch "a": "b" is now the least recently used. */
	TT_ASSERT(tr_gwin_get(w, "a", 1) == a);
	tr_gwin_sess *d = tr_gwin_get(w, "d", 1);
	TT_ASSERT(d != NULL);
	TT_EQ(tr_gwin_count(w), 3);
	TT_ASSERT(d == b); /* recycled in place */
	TT_EQ(tr_gwin_nturns(d), 0);
	TT_ASSERT(tr_gwin_peek(w, "b", 1) == NULL);
	TT_ASSERT(tr_gwin_peek(w, "a", 1) != NULL);
	TT_ASSERT(tr_gwin_peek(w, "c", 1) != NULL);
	/* "b" comes back empty, evicting "c" (least recent now). */
	b = tr_gwin_get(w, "b", 1);
	TT_EQ(tr_gwin_nturns(b), 0);
	TT_ASSERT(tr_gwin_peek(w, "c", 1) == NULL);
	TT_ASSERT(turn_is(tr_gwin_peek(w, "a", 1), 0, "qa", "ra"));

	/* Many sessions through a small table: count stays bounded, every
	 * held key is found, and churn allocates nothing new. */
	char key[32];
	for (int i = 0; i < 10000; i++) {
		snprintf(key, sizeof(key), "user-%d", i);
		tr_gwin_sess *s = tr_gwin_get(w, key, strlen(key));
		TT_ASSERT(s != NULL);
		TT_OK(tr_gwin_push(s, key, strlen(key), "ok", 2, 0));
		TT_LE(tr_gwin_count(w), 3);
	}
	for (int i = 9997; i < 10000; i++) {
		snprintf(key, sizeof(key), "user-%d", i);
		TT_ASSERT(turn_is(tr_gwin_peek(w, key, strlen(key)), 0, key, "ok"));
	}
	tr__alloc_fail_after(1);
	for (int i = 0; i < 100; i++) {
		snprintf(key, sizeof(key), "again-%d", i);
		tr_gwin_sess *s = tr_gwin_get(w, key, strlen(key));
		TT_ASSERT(s != NULL);
		TT_OK(tr_gwin_push(s, key, 8, "ok", 2, 0)); /* fits the old buffers */
	}
	tr__alloc_fail_after(0);
	tr_gwin_free(w);
}

TT_TEST(out_of_memory_leaves_things_unchanged)
{
	tr_gwin *w;
	tr__alloc_fail_after(1);
	TT_RC(tr_gwin_new(2, 2, 0, &w), TR_ENOMEM);
	TT_ASSERT(w == NULL);
	tr__alloc_fail_after(2);
	TT_RC(tr_gwin_new(2, 2, 0, &w), TR_ENOMEM);
	tr__alloc_fail_after(0);
	TT_RC(tr_gwin_new(0, 2, 0, &w), TR_EINVAL);
	TT_RC(tr_gwin_new(2, 0, 0, &w), TR_EINVAL);
	TT_OK(tr_gwin_new(2, 2, 0, &w));
	tr__alloc_fail_after(1);
	TT_ASSERT(tr_gwin_get(w, "a", 1) == NULL);
	tr__alloc_fail_after(0);
	TT_EQ(tr_gwin_count(w), 0);
	tr_gwin_sess *s = tr_gwin_get(w, "a", 1);
	TT_OK(tr_gwin_push(s, "q1", 2, "a1", 2, 0));
	TT_OK(tr_gwin_push(s, "q2", 2, "a2", 2, 0));
	tr__alloc_fail_after(1);
	TT_RC(tr_gwin_push(s, "a much longer question", 22, "and its answer", 14, 0), TR_ENOMEM);
	tr__alloc_fail_after(0);
	TT_EQ(tr_gwin_nturns(s), 2);
	TT_ASSERT(turn_is(s, 0, "q2", "a2"));
	TT_ASSERT(turn_is(s, 1, "q1", "a1"));
	tr_gwin_free(w);
	tr_gwin_free(NULL);
}

/* Renders and checks the invariants every choice must keep. */
static int render_ok(const tr_gwin_sess *s, tr_gwin_item *pv, size_t np, const tr_gwin_fit *f,
                     size_t budget, tr_buf *out)
{
	out->len = 0;
	if (tr_gwin_render(s, pv, np, f, out) != TR_OK)
		return 0;
	return out->len == f->bytes && f->bytes <= budget;
}

TT_TEST(budget_picks_recent_turns_and_best_passages)
{
	tr_gwin *w;
	tr_buf out;
	tr_gwin_fit f;
	tr_buf_init(&out);
	TT_OK(tr_gwin_new(4, 8, 3, &w));
	tr_gwin_sess *s = tr_gwin_get(w, "s", 1);
	/* Each turn line: 19 + 10 + 10 = 39 bytes. */
	TT_OK(tr_gwin_push(s, "question 1", 10, "answer   1", 10, 0));
	TT_OK(tr_gwin_push(s, "question 2", 10, "answer   2", 10, 0));
	TT_OK(tr_gwin_push(s, "question 3", 10, "answer   3", 10, 0));

	tr_gwin_item pv[3] = {
		{.text = "low score passage", .len = 17, .score = 0.1},
		{.text = "best passage", .len = 12, .score = 0.9},
		{.text = "middle passage", .len = 14, .score = 0.5},
	};
	/* Room for everything. */
	tr_gwin_choose(s, 8, pv, 3, 10000, &f);
	TT_EQ(f.turns, 3);
	TT_EQ(f.passages, 3);
	TT_EQ(pv[1].pos, 1);
	TT_EQ(pv[2].pos, 2);
	TT_EQ(pv[0].pos, 3);
	TT_ASSERT(render_ok(s, pv, 3, &f, 10000, &out));
	const char *want = "User: question 1\nAssistant: answer   1\n"
	                   "User: question 2\nAssistant: answer   2\n"
	                   "User: question 3\nAssistant: answer   3\n"
	                   "[1] best passage\n[2] middle passage\n[3] low score passage\n";
	TT_EQ(out.len, strlen(want));
	TT_ASSERT(memcmp(out.data, want, out.len) == 0);

	/* max_turns bounds the history. */
	tr_gwin_choose(s, 1, pv, 3, 10000, &f);
	TT_EQ(f.turns, 1);
	TT_ASSERT(render_ok(s, pv, 3, &f, 10000, &out));
	TT_ASSERT(memcmp(out.data, "User: question 3\n", 17) == 0);

	/* Turns take at most half: 90 bytes -> 1 turn (39 <= 45 < 78). */
	tr_gwin_choose(s, 8, pv, 3, 90, &f);
	TT_EQ(f.turns, 1);
	/* 51 bytes left: "[1] best passage\n" (17) and "[2] middle passage\n" (19);
	 * the last (22) does not fit and is too short to cut. */
	TT_EQ(f.passages, 2);
	TT_EQ(pv[0].use, 0);
	TT_EQ(pv[0].pos, 0);
	TT_ASSERT(render_ok(s, pv, 3, &f, 90, &out));

	/* No session: all for passages. Budget 0: nothing at all. */
	tr_gwin_choose(NULL, 8, pv, 3, 60, &f);
	TT_EQ(f.turns, 0);
	TT_EQ(f.passages, 3);
	TT_ASSERT(render_ok(NULL, pv, 3, &f, 60, &out));
	tr_gwin_choose(s, 8, pv, 3, 0, &f);
	TT_EQ(f.turns + f.passages, 0);
	TT_EQ(f.bytes, 0);
	tr_gwin_choose(s, 8, NULL, 0, 30, &f);
	TT_EQ(f.passages, 0);
	tr_buf_free(&out);
	tr_gwin_free(w);
}

TT_TEST(budget_cuts_big_passages_and_tries_smaller_ones)
{
	static char big[1 << 20];
	tr_buf out;
	tr_gwin_fit f;
	tr_buf_init(&out);
	/* A megabyte of two-byte characters: a cut never splits one. */
	for (size_t i = 0; i + 1 < sizeof(big); i += 2) {
		big[i] = '\xc3';
		big[i + 1] = '\xa9';
	}
	tr_gwin_item pv[4] = {
		{.text = big, .len = sizeof(big), .score = 1.0},
		{.text = "", .len = 0, .score = 0.9},
		{.text = "small one", .len = 9, .score = 0.2},
		{.text = "another small one", .len = 17, .score = 0.1},
	};
	for (size_t budget = 50; budget < 9000; budget += 97) {
		tr_gwin_choose(NULL, 4, pv, 4, budget, &f);
		TT_ASSERT(render_ok(NULL, pv, 4, &f, budget, &out));
		TT_EQ(pv[1].pos, 0); /* empty: never */
		if (pv[0].pos != 0) {
			TT_EQ(pv[0].use % 2, 0);
			TT_ASSERT(pv[0].use >= TR_GWIN_CUT_MIN - 1);
			TT_EQ(pv[0].pos, 1);
		} else {
			/* Too little room to cut: the small ones still go in. */
			TT_ASSERT(budget < TR_GWIN_CUT_MIN + 5);
			TT_EQ(pv[2].pos, 1);
		}
	}
	/* More passages than are considered. */
	static tr_gwin_item many[TR_GWIN_ITEMS_MAX + 10];
	for (size_t i = 0; i < TR_GWIN_ITEMS_MAX + 10; i++)
		many[i] = (tr_gwin_item){.text = "p", .len = 1, .score = (double)i};
	tr_gwin_choose(NULL, 0, many, TR_GWIN_ITEMS_MAX + 10, 1 << 20, &f);
	TT_EQ(f.passages, TR_GWIN_ITEMS_MAX);
	TT_EQ(many[TR_GWIN_ITEMS_MAX - 1].pos, 1);
	TT_EQ(many[TR_GWIN_ITEMS_MAX].pos, 0);
	TT_ASSERT(render_ok(NULL, many, TR_GWIN_ITEMS_MAX + 10, &f, 1 << 20, &out));
	tr_buf_free(&out);
}

TT_LIST = {
	TT_ENTRY(tokens_round_up),
	TT_ENTRY(cut_on_utf8_boundaries),
	TT_ENTRY(ring_keeps_last_n_newest_first),
	TT_ENTRY(sessions_are_separate_and_bounded),
	TT_ENTRY(out_of_memory_leaves_things_unchanged),
	TT_ENTRY(budget_picks_recent_turns_and_best_passages),
	TT_ENTRY(budget_cuts_big_passages_and_tries_smaller_ones),
	TT_END,
};

TT_MAIN()
