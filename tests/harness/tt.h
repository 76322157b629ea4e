/*
 * tt.h -- the test harness: a TEST_LIST table, assertions that print both
 * sides, one process per test run (meson runs each test binary), and a
 * summary line. Header-only; include it from exactly one .c per binary.
 *
 *   TT_TEST(name) { ... TT_EQ(a, b); TT_OK(tr_call(...)); ... }
 *   TT_LIST = { TT_ENTRY(name), ..., TT_END };
 *   TT_MAIN()
 *
 * A test fails on its first failed assertion (it returns early). Each
 * binary prints "tt: <file>: N passed, N failed" and exits non-zero on any
 * failure; `./binary NAME` runs one test.
 */
#ifndef TT_H
#define TT_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <troupe/err.h>

typedef void (*tt_fn)(int *tt_failed);
struct tt_entry {
	const char *name;
	tt_fn fn;
};

#define TT_TEST(name) static void tt_##name(int *tt_failed)
#define TT_ENTRY(name) {#name, tt_##name}
#define TT_END {NULL, NULL}
#define TT_LIST static const struct tt_entry tt_list[]

#define TT_FAIL_(...)                                                         \
	do {                                                                     \
		fprintf(stderr, "  %s:%d: ", __FILE__, __LINE__);                    \
		fprintf(stderr, __VA_ARGS__);                                        \
		fprintf(stderr, "\n");                                               \
		*tt_failed = 1;                                                      \
		return;                                                              \
	} while (0)

#define TT_ASSERT(c)                                                          \
	do {                                                                     \
		if (!(c))                                                            \
			TT_FAIL_("assertion failed: %s", #c);                            \
	} while (0)

#define TT_EQ(a, b)                                                           \
	do {                                                                     \
		long long tt_a_ = (long long)(a), tt_b_ = (long long)(b);            \
		if (tt_a_ != tt_b_)                                                  \
			TT_FAIL_("%s == %s: %lld != %lld", #a, #b, tt_a_, tt_b_);        \
	} while (0)

#define TT_NE(a, b)                                                           \
	do {                                                                     \
		long long tt_a_ = (long long)(a), tt_b_ = (long long)(b);            \
		if (tt_a_ == tt_b_)                                                  \
			TT_FAIL_("%s != %s: both %lld", #a, #b, tt_a_);                  \
	} while (0)

#define TT_LE(a, b)                                                           \
	do {                                                                     \
		long long tt_a_ = (long long)(a), tt_b_ = (long long)(b);            \
		if (!(tt_a_ <= tt_b_))                                               \
			TT_FAIL_("%s <= %s: %lld > %lld", #a, #b, tt_a_, tt_b_);         \
	} while (0)

/* An int-returning troupe call must give this exact code. */
#define TT_RC(expr, want)                                                     \
	do {                                                                     \
		int tt_rc_ = (expr), tt_w_ = (want);                                 \
		if (tt_rc_ != tt_w_)                                                 \
			TT_FAIL_("%s: got %s, want %s", #expr, tr_err_name(tt_rc_),      \
			         tr_err_name(tt_w_));                                    \
	} while (0)

#define TT_OK(expr) TT_RC(expr, TR_OK)

#define TT_STREQ(a, b)                                                        \
	do {                                                                     \
		const char *tt_a_ = (a), *tt_b_ = (b);                               \
		if (strcmp(tt_a_, tt_b_) != 0)                                       \
			TT_FAIL_("%s == %s: \"%s\" != \"%s\"", #a, #b, tt_a_, tt_b_);    \
	} while (0)

#define TT_MAIN()                                                             \
	int main(int argc, char **argv)                                          \
	{                                                                        \
		int passed = 0, failed = 0;                                          \
		for (const struct tt_entry *e = tt_list; e->name; e++) {             \
			if (argc > 1 && strcmp(argv[1], e->name) != 0)                   \
				continue;                                                    \
			int f = 0;                                                       \
			fprintf(stderr, "- %s\n", e->name);                              \
			e->fn(&f);                                                       \
			if (f) {                                                         \
				failed++;                                                    \
				fprintf(stderr, "  FAIL %s\n", e->name);                     \
			} else {                                                         \
				passed++;                                                    \
			}                                                                \
		}                                                                    \
		printf("tt: %s: %d passed, %d failed\n", argv[0], passed, failed);   \
		fflush(stdout);                                                      \
		return failed ? 1 : 0;                                               \
	}

#endif
