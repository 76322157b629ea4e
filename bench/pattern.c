/*
 * bench/pattern.c -- the cost of the sandbox's bounded pattern functions
 * (lua/pattern.c) against Lua's own, on typical calls with short strings.
 *
 *   pattern [N]
 *
 * Each case is a Lua loop of N calls (default 1000000), timed in a plain
 * state (luaL_openlibs: the stock string library) and in a sandbox state
 * (the bounded functions, the count hook on). An empty loop in each gives
 * the baseline that is subtracted. One line a case:
 *   peer=troupe bench=pattern_<case> threads=1 rate=<ns> unit=ns/call seconds=S stock_ns=<ns> ratio=<r>
 * (rate: the sandbox's ns per call; ratio: sandbox / stock).
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <lauxlib.h>
#include <lualib.h>

#include "lua/lua_int.h"
#include "lua/tlua.h"

static const struct {
	const char *name, *call;
} CASES[] = {
	{"find_plain", "string.find(s, 'world')"},
	{"find_class", "string.find(s, '%d+')"},
	{"find_method", "s:find('w%a+')"},
	{"match_kv", "string.match(kv, '(%w+)=(%w+)')"},
	{"match_trim", "string.match(pad, '^%s*(.-)%s*$')"},
	{"gsub_space", "string.gsub(s, '%s+', ' ')"},
	{"gsub_caps", "string.gsub(s, '(%w+)', '<%1>')"},
	{"gmatch_words", "for w in string.gmatch(s, '%a+') do end"},
};

static const char SETUP[] = "s = 'hello world, 42 times over'\n"
                            "kv = 'user_name=alice'\n"
                            "pad = '   some padded text   '\n";

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Seconds for N iterations of `body` in L (the globals of SETUP set). */
static double time_loop(lua_State *L, int sandbox, const char *body, long n)
{
	char code[512];
	double t0;

	snprintf(code, sizeof(code),
	         "local s, kv, pad = s, kv, pad for i = 1, %ld do %s end", n, body);
	if (sandbox)
		tr__lua_budget(L, (uint64_t)1 << 50);
	if (luaL_loadstring(L, code) != LUA_OK) {
		fprintf(stderr, "pattern: %s\n", lua_tostring(L, -1));
		exit(1);
	}
	t0 = now_s();
	if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
		fprintf(stderr, "pattern: %s\n", lua_tostring(L, -1));
		exit(1);
	}
	return now_s() - t0;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1000000;
	lua_State *stock = luaL_newstate();
	lua_State *sbx = NULL;

	if (n <= 0 || stock == NULL || tr__lua_sandbox_new(NULL, 0, &sbx) != TR_OK) {
		fprintf(stderr, "usage: pattern [N > 0]\n");
		return 2;
	}
	luaL_openlibs(stock);
	tr__lua_budget(sbx, (uint64_t)1 << 50);
	if (luaL_dostring(stock, SETUP) != LUA_OK || luaL_dostring(sbx, SETUP) != LUA_OK) {
		fprintf(stderr, "pattern: setup failed\n");
		return 1;
	}
	double base_stock = time_loop(stock, 0, "", n), base_sbx = time_loop(sbx, 1, "", n);
	for (size_t i = 0; i < sizeof(CASES) / sizeof(CASES[0]); i++) {
		double t0 = now_s();
		/* Best of three, each side, to dampen noise. */
		double a = 1e30, b = 1e30;
		for (int k = 0; k < 3; k++) {
			double x = time_loop(stock, 0, CASES[i].call, n) - base_stock;
			double y = time_loop(sbx, 1, CASES[i].call, n) - base_sbx;
			a = x < a ? x : a;
			b = y < b ? y : b;
		}
		double ns_a = a * 1e9 / (double)n, ns_b = b * 1e9 / (double)n;
		printf("peer=troupe bench=pattern_%s threads=1 rate=%.1f unit=ns/call seconds=%.3f "
		       "stock_ns=%.1f ratio=%.2f\n",
		       CASES[i].name, ns_b, now_s() - t0, ns_a, ns_a > 0 ? ns_b / ns_a : 0.0);
	}
	lua_close(stock);
	tr_lua_state_free(sbx);
	return 0;
}
