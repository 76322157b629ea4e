/*
 * test_pattern.c -- the sandbox's bounded pattern functions (lua/pattern.c):
 * the same results and errors as Lua's own string library, case by case,
 * and pattern bombs that end with "pattern too complex (step budget
 * exceeded)" in bounded time, at load and in a receive call.
 *
 * Each comparison case runs twice through one Lua harness (HARNESS
 * below): in a plain state (luaL_openlibs, the stock string table) and in
 * a sandbox state (tr__lua_sandbox_new, whose string table has the bounded
 * functions), and the two serialized results must be equal byte for byte.
 */
#include <time.h>

#include <lauxlib.h>
#include <lualib.h>

#include "tt.h"

#include "lua/lua_int.h"
#include "lua/pattern.h"
#include "lua/tlua.h"
#include "msg/msg_int.h"

#ifndef TR_SOURCE_ROOT
#define TR_SOURCE_ROOT "."
#endif

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the harness ----------------------------------------------------- */

/* run(kind, s, p, a3, a4) -> a string with every result of the call (or
 * false and the error message). Kinds: find, match, gsub, gmatch (all
 * iterations), method (s:find / s:match through the string metatable).
 * A gsub replacement named "@..." is one of REPL. */
static const char HARNESS[] =
	"local S = ...\n"
	"local REPL = {\n"
	"  ['@up'] = function(...) local t = table.pack(...) for i = 1, t.n do t[i] = tostring(t[i]) end\n"
	"            return table.concat(t, '|'):upper() end,\n"
	"  ['@nil'] = function() return nil end,\n"
	"  ['@false'] = function() return false end,\n"
	"  ['@num'] = function() return 42 end,\n"
	"  ['@bad'] = function() return {} end,\n"
	"  ['@err'] = function(x) error('boom ' .. tostring(x), 0) end,\n"
	"  ['@tab'] = setmetatable({ a = 'A', b = false, ab = '<ab>', [1] = 'one', x = 1.5 },\n"
	"             { __index = function(t, k) if k == 'aa' then return 'AA' end end }),\n"
	"  ['@badtab'] = { a = {} },\n"
	"  ['@7'] = 7,\n"
	"  ['@nilarg'] = nil,\n"
	"}\n"
	"local function ser(...)\n"
	"  local out, n = {}, select('#', ...)\n"
	"  for i = 1, n do\n"
	"    local v = select(i, ...)\n"
	"    local t = type(v)\n"
	"    if t == 'string' then out[i] = string.format('%q', v)\n"
	"    elseif t == 'number' then out[i] = math.type(v) .. ' ' .. tostring(v)\n"
	"    elseif t == 'boolean' or t == 'nil' then out[i] = tostring(v)\n"
	"    else out[i] = t end\n"
	"  end\n"
	"  return n .. ':' .. table.concat(out, ', ')\n"
	"end\n"
	"return function(kind, s, p, a3, a4)\n"
	"  if kind == 'gsub' and type(a3) == 'string' and a3:sub(1, 1) == '@' then a3 = REPL[a3] end\n"
	"  if kind == 'gmatch' then\n"
	"    return ser(pcall(function()\n"
	"      local out, it = {}, S.gmatch(s, p, a3)\n"
	"      for _ = 1, 300 do\n"
	"        local r = table.pack(it())\n"
	"        if r[1] == nil then break end\n"
	"        out[#out + 1] = ser(table.unpack(r, 1, r.n))\n"
	"      end\n"
	"      return table.concat(out, ' ; ')\n"
	"    end))\n"
	"  end\n"
	"  if kind == 'method' then\n"
	"    return ser(pcall(function() return s:find(p, a3, a4) end)) ..\n"
	"           ' / ' .. ser(pcall(function() return s:match(p, a3) end))\n"
	"  end\n"
	"  return ser(pcall(S[kind], s, p, a3, a4))\n"
	"end\n";

typedef struct side {
	lua_State *L;
	int run; /* registry ref of the harness's run() */
	int sandbox;
} side;

static int side_open(side *sd, int sandbox)
{
	sd->sandbox = sandbox;
	if (sandbox) {
		if (tr__lua_sandbox_new(NULL, 0, &sd->L) != TR_OK)
			return 0;
	} else {
		sd->L = luaL_newstate();
		if (sd->L == NULL)
			return 0;
		luaL_openlibs(sd->L);
	}
	if (sandbox)
		tr__lua_budget(sd->L, (uint64_t)1 << 50);
	if (luaL_loadbuffer(sd->L, HARNESS, sizeof(HARNESS) - 1, "=harness") != LUA_OK) {
		fprintf(stderr, "  harness: %s\n", lua_tostring(sd->L, -1));
		return 0;
	}
	lua_getglobal(sd->L, "string");
	if (lua_pcall(sd->L, 1, 1, 0) != LUA_OK) {
		fprintf(stderr, "  harness: %s\n", lua_tostring(sd->L, -1));
		return 0;
	}
	sd->run = luaL_ref(sd->L, LUA_REGISTRYINDEX);
	return 1;
}

static void side_close(side *sd)
{
	if (sd->sandbox)
		tr_lua_state_free(sd->L);
	else
		lua_close(sd->L);
}

/* One call's arguments. a3/a4: NULL is nil, "i:N" an integer, "b:1"/"b:0"
 * a boolean, "f:X" a float, "s:TEXT" a string, "@NAME" a named gsub
 * replacement. sn/pn: lengths when the text holds NULs (0: strlen). */
typedef struct tcase {
	const char *kind, *s, *p, *a3, *a4;
	size_t sn, pn;
} tcase;

static void push_arg(lua_State *L, const char *a)
{
	if (a == NULL)
		lua_pushnil(L);
	else if (a[0] == 'i' && a[1] == ':')
		lua_pushinteger(L, strtoll(a + 2, NULL, 10));
	else if (a[0] == 'f' && a[1] == ':')
		lua_pushnumber(L, strtod(a + 2, NULL));
	else if (a[0] == 'b' && a[1] == ':')
		lua_pushboolean(L, a[2] == '1');
	else if (a[0] == 's' && a[1] == ':')
		lua_pushstring(L, a + 2);
	else
		lua_pushstring(L, a);
}

/* Runs c on one side: the serialized result into out (size n). */
static void side_run(side *sd, const tcase *c, char *out, size_t n)
{
	lua_State *L = sd->L;

	if (sd->sandbox)
		tr__lua_budget(L, (uint64_t)1 << 50);
	lua_rawgeti(L, LUA_REGISTRYINDEX, sd->run);
	lua_pushstring(L, c->kind);
	lua_pushlstring(L, c->s, c->sn ? c->sn : strlen(c->s));
	lua_pushlstring(L, c->p, c->pn ? c->pn : strlen(c->p));
	push_arg(L, c->a3);
	push_arg(L, c->a4);
	if (lua_pcall(L, 5, 1, 0) != LUA_OK)
		snprintf(out, n, "HARNESS ERROR %s", lua_tostring(L, -1));
	else
		snprintf(out, n, "%s", lua_tostring(L, -1));
	lua_pop(L, 1);
}

/* Prints a Lua-ish literal of s[0..n) (for mismatch reports). */
static void show(const char *what, const char *s, size_t n)
{
	fprintf(stderr, "%s\"", what);
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\')
			fputc(ch, stderr);
		else
			fprintf(stderr, "\\%u", ch);
	}
	fprintf(stderr, "\"");
}

typedef struct tally {
	int cases, bad, errors, fails, budget;
} tally;

static void compare(side *stock, side *sbx, const tcase *c, tally *t)
{
	static char a[16384], b[16384];

	side_run(stock, c, a, sizeof(a));
	side_run(sbx, c, b, sizeof(b));
	t->cases++;
	if (strstr(a, "1:false") != NULL || strstr(a, "2:false,") != NULL)
		t->errors++;
	if (strstr(a, "true, nil") != NULL)
		t->fails++;
	if (strstr(b, "step budget") != NULL)
		t->budget++;
	if (strcmp(a, b) == 0)
		return;
	if (++t->bad <= 20) {
		fprintf(stderr, "  mismatch: %s(", c->kind);
		show("", c->s, c->sn ? c->sn : strlen(c->s));
		show(", ", c->p, c->pn ? c->pn : strlen(c->p));
		fprintf(stderr, ", %s, %s)\n    stock:   %s\n    sandbox: %s\n", c->a3 ? c->a3 : "nil",
		        c->a4 ? c->a4 : "nil", a, b);
	}
}

/* ---- hand-written cases ------------------------------------------------ */

static const char *const PATTERNS[] = {
	"", "a", "^a", "a$", "^$", "$", "^", ".", "..", "a*", "a+", "a-", "a?", "^a*$", ".-b",
	"a.-a", "(a)", "(a*)", "()", "()a()", "(a)(b)", "((a)(b))", "(a+)%1", "(%w+) (%w+)",
	"(%w+)=(%w+)", "%d+", "%D+", "%a+", "%A", "%s*", "%S+", "%l%u", "%p", "%P+", "%x+", "%X",
	"%c", "%C", "%g+", "%G", "%w+", "%W", "%u+", "%U", "%L", "[abc]", "[^abc]+", "[a-c]+",
	"[%d%s]+", "[]]", "[^]]", "[a-]", "[-a]", "[%]]", "[%a_][%w_]*", "[a-%%]", "[%a-z]",
	"[^%s]+", "[%w_]+=[%w_]+", "%bxy", "%b()", "%b<>", "%f[%w]%w+", "%f[%W]", "%f[%a]",
	"%f[%l]%a", "%f[^%z]", "%f[%z]", "%.", "%%", "%[", "%z", "[%z]", "a%", "[a", "[^", "[]",
	"[^]", "(", ")", "(()", "a)", "%1", "(a)%2", "%0", "(a%1)", "()%1", "%f", "%fa", "%b",
	"%bx", "a**", "x*$", "^(.-)%s*$", "^%s*(.-)%s*$", "(h)(e)(l)(l)(o)", "(.)%1", "(.)(.)%2%1",
	"[%.%%]", "$a", "a$b", "^^", "%$", "(%d+)()", "()()()", "[a-c-e]", "[!-/]+", "%x%x",
	"(.-)(%d)", ".*", ".+$", ".-$", "^.-", "(a?)(b?)", "%s+", "k%d?=v%d?", "([^;]+)",
	"%b%%%", "%bab", "%baa", "[%w%.]+", "(((((a)))))", "[\\1-\\127]+", "[\\128-\\255]",
};

static const char *const SUBJECTS[] = {
	"", "a", "aaa", "abc", "aaab", "hello world", "  trim me  ", "key=value; k2=v2",
	"x(a(b)c)y", "THE (quick) fox", "123abc456", "a.b%c[d]", "xyxyxy", "<a><b>",
	"\n\t\x01\x7f\xff ok", "abba aab", "-a]b[",
};

/* Variants by index, so each pattern x subject pair gets a few. */
static const char *const FIND_INIT[] = {NULL, "i:1", "i:2", "i:-2", "i:0", "i:-100", "i:100",
                                        "i:4", "f:2.0"};
static const char *const GSUB_REPL[] = {
	"s:<%0>", "s:%1-%1", "s:%%", "s:%2", "s:%", "s:%x", "s:", "s:[%1]", "@up", "@nil",
	"@false", "@num", "@bad", "@tab", "@7", "s:%0%0", "@err", "@badtab", "s:%9",
};
static const char *const GSUB_MAX[] = {NULL, "i:1", "i:0", "i:-1", "i:2", "i:100"};

static void hand_cases(side *stock, side *sbx, tally *t)
{
	size_t np = sizeof(PATTERNS) / sizeof(PATTERNS[0]);
	size_t ns = sizeof(SUBJECTS) / sizeof(SUBJECTS[0]);
	unsigned k = 0;

	for (size_t i = 0; i < np; i++) {
		for (size_t j = 0; j < ns; j++, k++) {
			const char *p = PATTERNS[i], *s = SUBJECTS[j];
			const char *init = FIND_INIT[k % 9];
			tcase c[] = {
				{"find", s, p, NULL, NULL, 0, 0},
				{"find", s, p, init, NULL, 0, 0},
				{"find", s, p, init, k % 2 ? "b:1" : "b:0", 0, 0},
				{"match", s, p, init, NULL, 0, 0},
				{"gmatch", s, p, k % 3 ? NULL : init, NULL, 0, 0},
				{"gsub", s, p, GSUB_REPL[k % 19], GSUB_MAX[k % 6], 0, 0},
				{"gsub", s, p, GSUB_REPL[(k / 19) % 19], NULL, 0, 0},
				{"method", s, p, k % 4 ? NULL : init, k % 5 ? NULL : "b:1", 0, 0},
			};
			for (size_t n = 0; n < sizeof(c) / sizeof(c[0]); n++)
				compare(stock, sbx, &c[n], t);
		}
	}
	/* NULs in the subject and the pattern; arguments of the wrong type. */
	static const tcase extra[] = {
		{"find", "a\0b", "\0", NULL, NULL, 3, 1},
		{"find", "a\0b", "a%zb", NULL, NULL, 3, 0},
		{"find", "a\0b", "[\0]", NULL, NULL, 3, 3},
		{"match", "a\0b\0c", "(%Z+)", "i:2", NULL, 5, 0},
		{"gsub", "a\0b\0c", "\0", "s:-", NULL, 5, 1},
		{"find", "a\0b", "a\0", NULL, "b:1", 3, 2},
		{"find", "a.b", ".", "i:1", "b:1", 0, 0},
		{"find", "x", "x", "s:notanumber", NULL, 0, 0},
		{"find", "x", "x", "f:1.5", NULL, 0, 0},
		{"gsub", "x", "x", NULL, NULL, 0, 0},
		{"gsub", "x", "x", "b:1", NULL, 0, 0},
		{"gsub", "xxx", "x", "s:y", "f:2.5", 0, 0},
		{"gsub", "xxx", "x", "s:y", "s:2", 0, 0},
		{"gmatch", "xxx", "x", "s:zz", NULL, 0, 0},
		{"gmatch", "abc", "", "i:4", NULL, 0, 0},
		{"gmatch", "abc", "", "i:5", NULL, 0, 0},
		{"gmatch", "abc", "()", "i:-1", NULL, 0, 0},
		{"gmatch", "abc", "^a", NULL, NULL, 0, 0},
		{"gmatch", "^a^a", "^a", NULL, NULL, 0, 0},
		{"gsub", "hello world", "o", "@nilarg", NULL, 0, 0},
		{"gsub", "abc", "%w", "s:%0%0", "i:2", 0, 0},
		{"gsub", "abc", "", "s:-", NULL, 0, 0},
		{"gsub", "abc", "^", "s:>", NULL, 0, 0},
		{"gsub", "abc", "$", "s:<", NULL, 0, 0},
		{"gsub", "abc", "b*", "s:X", NULL, 0, 0},
		{"gsub", "abc", "()", "s:%1", NULL, 0, 0},
		{"gsub", "abc", "()", "@tab", NULL, 0, 0},
		{"gsub", "a a", "(a)", "@up", NULL, 0, 0},
		{"match", "aaa", "^(a*)(a)$", NULL, NULL, 0, 0},
		{"find", "abc", "(", NULL, NULL, 0, 0},
		{"find", "abc", "b(", NULL, NULL, 0, 0},
		{"match", "abc", "(((((((((((((((((((((((((((((((((a)))))))))))))))))))))))))))))))))",
		 NULL, NULL, 0, 0},
		{"match", "abc", "((((((((((((((((((((((((((((((((a))))))))))))))))))))))))))))))))",
		 NULL, NULL, 0, 0},
	};
	for (size_t n = 0; n < sizeof(extra) / sizeof(extra[0]); n++)
		compare(stock, sbx, &extra[n], t);
}

/* ---- random cases (fixed seed) ---------------------------------------- */

static uint32_t seed = 20240608u;

static unsigned rnd(unsigned n)
{
	seed = seed * 1664525u + 1013904223u;
	return (seed >> 8) % n;
}

static void cat(char *buf, size_t n, const char *s)
{
	size_t l = strlen(buf);
	snprintf(buf + l, n - l, "%s", s);
}

/* A random pattern: mostly well-formed items, sometimes noise. At most
 * three quantified items keep the stock matcher fast on short subjects. */
static void rnd_pattern(char *buf, size_t n, int depth)
{
	static const char *const atoms[] = {
		"a", "b", "x", " ", ".", "%a", "%d", "%s", "%w", "%p", "%l", "%u", "%x", "%c", "%g",
		"%A", "%S", "%W", "%D", "[ab]", "[^a]", "[a-c]", "[%d_]", "[]a]", "[%s%p]", "%%",
		"%.", "%(", "(", ")", "1", "[^%w]",
	};
	static const char *const specials[] = {"()", "%b()", "%bab", "%f[%w]", "%f[^a]", "%f[%s]",
	                                       "%1", "%2", "$"};
	static const char *const quants[] = {"*", "+", "-", "?"};
	int items = 1 + (int)rnd(5), quants_left = 3;

	if (depth == 0 && rnd(12) == 0) {
		/* noise: any mix of pattern characters */
		static const char noise[] = "%[]()^$*+-?.ab1fz";
		int len = 1 + (int)rnd(7);
		for (int i = 0; i < len; i++) {
			char c[2] = {noise[rnd(sizeof(noise) - 1)], 0};
			cat(buf, n, c);
		}
		return;
	}
	if (depth == 0 && rnd(6) == 0)
		cat(buf, n, "^");
	for (int i = 0; i < items; i++) {
		unsigned r = rnd(20);
		if (r == 0 && depth < 2) {
			cat(buf, n, "(");
			rnd_pattern(buf, n, depth + 1);
			cat(buf, n, ")");
		} else if (r == 1) {
			cat(buf, n, specials[rnd(sizeof(specials) / sizeof(specials[0]))]);
		} else {
			const char *a = atoms[rnd(sizeof(atoms) / sizeof(atoms[0]))];
			cat(buf, n, a);
			if (quants_left > 0 && a[0] != '(' && a[0] != ')' && rnd(3) == 0) {
				cat(buf, n, quants[rnd(4)]);
				quants_left--;
			}
		}
	}
	if (depth == 0 && rnd(8) == 0)
		cat(buf, n, "$");
}

static void rnd_subject(char *buf, size_t n)
{
	static const char alpha[] = "aaabbx  ()1%.-_\nAZ";
	int len = (int)rnd(22);

	for (int i = 0; i < len && (size_t)i + 1 < n; i++) {
		buf[i] = alpha[rnd(sizeof(alpha) - 1)];
		buf[i + 1] = '\0';
	}
	if (len == 0)
		buf[0] = '\0';
}

static void random_cases(side *stock, side *sbx, tally *t, int count)
{
	static const char *const kinds[] = {"find", "match", "gmatch", "gsub", "method"};
	static const char *const inits[] = {NULL, NULL, "i:1", "i:2", "i:-3", "i:0", "i:30", "i:7"};
	static const char *const repls[] = {"s:<%0>", "s:%1", "s:%2", "@up", "@tab", "s:%%",
	                                    "@false", "s:_"};

	for (int i = 0; i < count; i++) {
		char p[160] = "", s[32];
		const char *kind = kinds[rnd(5)];
		tcase c = {kind, s, p, NULL, NULL, 0, 0};

		rnd_pattern(p, sizeof(p), 0);
		rnd_subject(s, sizeof(s));
		if (strcmp(kind, "gsub") == 0) {
			c.a3 = repls[rnd(8)];
			c.a4 = GSUB_MAX[rnd(6)];
		} else {
			c.a3 = inits[rnd(8)];
			c.a4 = rnd(4) == 0 ? "b:1" : NULL;
		}
		compare(stock, sbx, &c, t);
	}
}

TT_TEST(same_as_stock)
{
	side stock, sbx;
	tally hand = {0}, rand = {0};
	double t0 = now_s();

	TT_ASSERT(side_open(&stock, 0));
	TT_ASSERT(side_open(&sbx, 1));
	hand_cases(&stock, &sbx, &hand);
	random_cases(&stock, &sbx, &rand, 4000);
	fprintf(stderr,
	        "  hand-written: %d cases (%d errors, %d with nil), random: %d cases (%d errors, "
	        "%d with nil); %d and %d differ; %.2f s\n",
	        hand.cases, hand.errors, hand.fails, rand.cases, rand.errors, rand.fails, hand.bad,
	        rand.bad, now_s() - t0);
	TT_EQ(hand.bad, 0);
	TT_EQ(rand.bad, 0);
	TT_EQ(hand.budget + rand.budget, 0);
	TT_ASSERT(hand.cases > 500 && rand.errors > 20);
	side_close(&stock);
	side_close(&sbx);
}

/* The env's string table, the real one and the strings' __index all hold
 * the bounded functions. */
TT_TEST(installed_everywhere)
{
	lua_State *L = NULL;
	static const char *const names[] = {"find", "match", "gmatch", "gsub"};

	TT_OK(tr__lua_sandbox_new(NULL, 0, &L));
	lua_rawgetp(L, LUA_REGISTRYINDEX, &tr__lua_key_env);
	lua_getfield(L, -1, "string");        /* env.string */
	lua_getglobal(L, "string");           /* the real table */
	lua_pushliteral(L, "");
	TT_ASSERT(lua_getmetatable(L, -1));
	lua_getfield(L, -1, "__index");       /* the strings' methods */
	lua_State *P = luaL_newstate();
	luaL_openlibs(P);
	lua_getglobal(P, "string");
	for (size_t i = 0; i < 4; i++) {
		lua_getfield(L, -5, names[i]);
		lua_getfield(L, -5, names[i]);
		lua_getfield(L, -3, names[i]);
		lua_getfield(P, -1, names[i]);
		TT_ASSERT(lua_tocfunction(L, -1) != NULL);
		TT_ASSERT(lua_tocfunction(L, -1) == lua_tocfunction(L, -2));
		TT_ASSERT(lua_tocfunction(L, -1) == lua_tocfunction(L, -3));
		TT_ASSERT(lua_tocfunction(L, -1) != lua_tocfunction(P, -1));
		lua_pop(L, 3);
		lua_pop(P, 1);
	}
	lua_close(P);
	tr_lua_state_free(L);
}

/* ---- bombs -------------------------------------------------------------- */

#define BOMB_FIND "string.find(('a'):rep(40), ('a*'):rep(30) .. 'b')"

static const struct bomb {
	const char *name, *code;
} BOMBS[] = {
	{"find (issue 8)", BOMB_FIND},
	{"a string method", "local s = ('a'):rep(40) return s:find(('a*'):rep(30) .. 'b')"},
	{"match", "return string.match(('a'):rep(40), ('a*'):rep(30) .. 'b')"},
	{"nested quantifiers in gsub", "return string.gsub(('ab'):rep(30), ('.-'):rep(25) .. 'c', 'x')"},
	{"lazy items in gmatch over a long subject",
	 "local n = 0 for x in (('a'):rep(300000)):gmatch('a.-b') do n = n + 1 end return n"},
	{"gmatch, one iteration", "return (('a'):rep(40)):gmatch(('a?'):rep(30) .. 'b')()"},
	{"%b on a huge unbalanced string", "return string.find(('('):rep(1000000), '%b()')"},
	{"a back-reference", "return string.find(('a'):rep(100000), '(.*)%1b')"},
	{"optional items (the classic)", "return string.find(('a'):rep(30), ('a?'):rep(30) .. ('a'):rep(30) .. 'b')"},
	{"captures in the bomb", "return string.match(('a'):rep(40), ('(a*)'):rep(20) .. 'b')"},
};

/* Runs code in a fresh sandbox state as a file would run at load; the
 * error into err. */
static int run_load(const char *code, char *err, size_t errlen, double *secs)
{
	lua_State *L = NULL;
	int rc;
	double t0;

	if (tr__lua_sandbox_new(NULL, 0, &L) != TR_OK)
		return TR_ENOMEM;
	tr__lua_budget(L, TR__LUA_LOAD_STEPS);
	t0 = now_s();
	rc = tr__lua_run_buf(L, "bomb.lua", code, strlen(code), err, errlen);
	*secs = now_s() - t0;
	tr_lua_state_free(L);
	return rc;
}

/* A bound, not a speed test: without the step count these never end.
 * Generous because the TSan pass runs them 10-30 times slower. */
#define BOUND_S 45.0

TT_TEST(bombs_end_at_load)
{
	char err[512];
	double secs;

	for (size_t i = 0; i < sizeof(BOMBS) / sizeof(BOMBS[0]); i++) {
		int rc = run_load(BOMBS[i].code, err, sizeof(err), &secs);
		fprintf(stderr, "  %-42s %.3f s  %s\n", BOMBS[i].name, secs, err);
		TT_RC(rc, TR_EFAILED);
		TT_ASSERT(strstr(err, "bomb.lua:1: " TR__LPAT_TOO_COMPLEX) != NULL);
		TT_ASSERT(secs < BOUND_S);
	}
}

/* Many cheap calls: each is far inside the per-call budget, together they
 * are past the instruction budget, which the calls are charged to. Caught
 * pattern errors do not help either. */
TT_TEST(steps_charged_to_the_instruction_budget)
{
	char err[512];
	double secs;
	/* ~2000 steps a call, about 30 instructions of Lua around it. */
	static const char cheap[] =
		"local s = ('a'):rep(60) for i = 1, 1e9 do string.find(s, 'a-a-b') end";
	static const char caught[] =
		"while true do pcall(string.find, ('a'):rep(40), ('a*'):rep(30) .. 'b') end";
	static const char gm[] =
		"local s = ('a'):rep(60) while true do for x in s:gmatch('a-a-b') do end end";

	TT_RC(run_load(cheap, err, sizeof(err), &secs), TR_EFAILED);
	fprintf(stderr, "  cheap calls:  %.3f s  %s\n", secs, err);
	TT_ASSERT(strstr(err, "instruction limit exceeded") != NULL ||
	          strstr(err, TR__LPAT_TOO_COMPLEX) != NULL);
	TT_ASSERT(secs < BOUND_S);
	TT_RC(run_load(caught, err, sizeof(err), &secs), TR_EFAILED);
	fprintf(stderr, "  caught bombs: %.3f s  %s\n", secs, err);
	TT_ASSERT(strstr(err, "instruction limit exceeded") != NULL);
	TT_ASSERT(secs < BOUND_S);
	TT_RC(run_load(gm, err, sizeof(err), &secs), TR_EFAILED);
	fprintf(stderr, "  gmatch loop:  %.3f s  %s\n", secs, err);
	TT_ASSERT(secs < BOUND_S);

	/* The steps show in the state's count. */
	lua_State *L = NULL;
	TT_OK(tr__lua_sandbox_new(NULL, 0, &L));
	tr__lua_budget(L, TR__LUA_LOAD_STEPS);
	static const char one[] = "string.find(('a'):rep(1000), 'a-b')";
	TT_OK(tr__lua_run_buf(L, "one.lua", one, sizeof(one) - 1, err, sizeof(err)));
	uint64_t steps = tr__lua_sb(L)->steps;
	fprintf(stderr, "  one call on 1000 bytes: %llu steps charged\n", (unsigned long long)steps);
	TT_ASSERT(steps > 500000); /* about n*n/2 for 'a-b' */
	tr_lua_state_free(L);
}

/* In a receive call (tr_lua_call, as a Lua actor's worker runs it): the
 * call fails with the message, the state stays usable. */
TT_TEST(bombs_end_in_a_receive)
{
	tr_config *c = NULL;
	tr_diag d;
	const char *path = TR_SOURCE_ROOT "/tests/lua/good/sandbox.lua";
	lua_State *L = NULL;
	char err[512];

	tr_diag_init(&d);
	TT_OK(tr_config_load(&path, 1, &c, &d));
	tr_diag_free(&d);
	TT_OK(tr_lua_state_new(c, NULL, &L, err, sizeof(err)));
	int fn = tr_config_actor(c, "eval")->receive_fn;
	for (size_t i = 0; i < sizeof(BOMBS) / sizeof(BOMBS[0]); i++) {
		/* {code = <code>} */
		tr_buf in, out;
		size_t n = strlen(BOMBS[i].code);
		unsigned char hdr[] = {0x81, 0xa4, 'c', 'o', 'd', 'e', 0xd9, (unsigned char)n};
		TT_ASSERT(n < 256);
		tr_buf_init(&in);
		tr_buf_init(&out);
		tr__buf_append(&in, hdr, sizeof(hdr));
		tr__buf_append(&in, BOMBS[i].code, n);
		double t0 = now_s();
		int rc = tr_lua_call(L, fn, in.data, in.len, NULL, &out, NULL, err, sizeof(err));
		double secs = now_s() - t0;
		fprintf(stderr, "  %-42s %.3f s  %s\n", BOMBS[i].name, secs, err);
		TT_RC(rc, TR_EFAILED);
		TT_ASSERT(strstr(err, TR__LPAT_TOO_COMPLEX) != NULL);
		TT_ASSERT(secs < BOUND_S);
		/* the next call works */
		in.len = 0;
		static const char ok[] = "return (('key=v'):gsub('(%w+)=(%w+)', '%2=%1'))";
		unsigned char h2[] = {0x81, 0xa4, 'c', 'o', 'd', 'e', 0xd9, sizeof(ok) - 1};
		tr__buf_append(&in, h2, sizeof(h2));
		tr__buf_append(&in, ok, sizeof(ok) - 1);
		out.len = 0;
		TT_OK(tr_lua_call(L, fn, in.data, in.len, NULL, &out, NULL, err, sizeof(err)));
		TT_ASSERT(out.len == 6 && memcmp(out.data, "\xa5v=key", 6) == 0);
		tr_buf_free(&in);
		tr_buf_free(&out);
	}
	tr_lua_state_free(L);
	tr_config_free(c);
}

TT_LIST = {
	TT_ENTRY(same_as_stock),
	TT_ENTRY(installed_everywhere),
	TT_ENTRY(bombs_end_at_load),
	TT_ENTRY(steps_charged_to_the_instruction_budget),
	TT_ENTRY(bombs_end_in_a_receive),
	TT_END,
};

TT_MAIN()
