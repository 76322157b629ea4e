/*
 * lua/pattern.c -- string.find, string.match, string.gmatch and
 * string.gsub for sandboxed states: Lua 5.4's pattern language, matched by
 * a backtracking matcher that counts its steps (pattern.h has the
 * contract).
 *
 * Design notes:
 *  - The matcher is a recursive backtracker like lstrlib's, so every
 *    result, capture and error message is the same as the stock library's
 *    (tests/unit/test_pattern.c compares the two on thousands of cases).
 *    Only its cost is bounded: a step is one pattern item tried at one
 *    position, one repetition counted by a greedy item, one subject byte
 *    scanned by %b, or 32 bytes compared by a back-reference.
 *  - Steps are drawn from a grant: the smaller of what this call may
 *    still take (TR__LPAT_CALL_STEPS) and what is left of the state's
 *    instruction budget. The hot path only decrements m->left; settle()
 *    moves the steps used into tr__lsb.steps. It runs before any Lua
 *    code can run (a gsub replacement function, an __index) and before
 *    every error, so the budget the count hook sees is never stale by more
 *    than the steps of one call in progress.
 *  - When the grant is the instruction budget and it runs out, settling
 *    leaves steps == max_steps: the hook then raises the instruction limit
 *    on the next count, so a script that catches the pattern error with
 *    pcall still ends.
 *  - Recursion is bounded as in Lua (MAXCCALLS, 200 nested items), which
 *    also bounds the C stack; captures are at most 32.
 *  - The subject and the pattern are Lua strings, so a byte past either
 *    end (the terminating NUL) may be read, as lstrlib does.
 */
#include <ctype.h>
#include <string.h>

#include <lauxlib.h>

#include "lua/lua_int.h"
#include "lua/pattern.h"

#define MAX_DEPTH 200 /* lstrlib's MAXCCALLS */
#define MAX_CAPS 32   /* LUA_MAXCAPTURES */
#define CAP_OPEN (-1) /* a capture whose ')' is not reached yet */
#define CAP_POS (-2)  /* a position capture, () */
#define ESC '%'
#define SPECIALS "^$*+?.([%-"

typedef struct pm {
	const char *s0;    /* the subject */
	const char *s_end; /* its end (its NUL) */
	const char *p_end; /* the pattern's end */
	lua_State *L;
	int depth;         /* nested items left before "pattern too complex" */
	int ncap;          /* captures opened, finished or not */
	long long left;    /* steps left in the grant (negative: spent) */
	long long grant;   /* steps granted and not settled yet */
	long long spent;   /* steps settled by this call */
	struct {
		const char *at;
		ptrdiff_t len; /* or CAP_OPEN, CAP_POS */
	} cap[MAX_CAPS];
} pm;

/* ------------------------------------------------------------------ */
/* the budget                                                           */

static void grant(pm *m)
{
	tr__lsb *sb = tr__lua_sb(m->L);
	long long cap = TR__LPAT_CALL_STEPS - m->spent;
	uint64_t room = sb->steps < sb->max_steps ? sb->max_steps - sb->steps : 0;

	if (cap < 0)
		cap = 0;
	m->grant = room < (uint64_t)cap ? (long long)room : cap;
	m->left = m->grant;
}

/* Charges the steps used since the last grant or settle to the state. */
static void settle(pm *m)
{
	tr__lsb *sb = tr__lua_sb(m->L);
	long long left = m->left > 0 ? m->left : 0;
	long long used = m->grant - left;

	m->spent += used;
	sb->steps += (uint64_t)used;
	m->grant = m->left = left;
}

/* Raises a Lua error, `fmt` with at most one int argument. */
static int pm_error(pm *m, const char *fmt, int arg)
{
	settle(m);
	return luaL_error(m->L, fmt, arg);
}

static void out_of_steps(pm *m)
{
	m->left = -1;
	pm_error(m, TR__LPAT_TOO_COMPLEX, 0);
}

#define STEP(m)                                                               \
	do {                                                                     \
		if (--(m)->left < 0)                                                 \
			out_of_steps(m);                                                 \
	} while (0)

static void charge(pm *m, long long n)
{
	m->left -= n;
	if (m->left < 0)
		out_of_steps(m);
}

/* ------------------------------------------------------------------ */
/* single items                                                         */

/* %a, %d, ... (upper case: the complement); any other character is itself. */
static int class_ok(int c, int cl)
{
	int r;

	switch (tolower(cl)) {
	case 'a': r = isalpha(c); break;
	case 'c': r = iscntrl(c); break;
	case 'd': r = isdigit(c); break;
	case 'g': r = isgraph(c); break;
	case 'l': r = islower(c); break;
	case 'p': r = ispunct(c); break;
	case 's': r = isspace(c); break;
	case 'u': r = isupper(c); break;
	case 'w': r = isalnum(c); break;
	case 'x': r = isxdigit(c); break;
	case 'z': r = c == 0; break; /* deprecated in 5.2, still in 5.4 */
	default: return cl == c;
	}
	if (isupper(cl))
		r = !r;
	return r;
}

/* Whether c is in the set that starts at p ('[') and ends at close (']'). */
static int set_ok(int c, const char *p, const char *close)
{
	int in = 1;

	if (p[1] == '^') {
		in = 0;
		p++;
	}
	for (p++; p < close; p++) {
		if (*p == ESC) {
			p++;
			if (class_ok(c, (unsigned char)*p))
				return in;
		} else if (p[1] == '-' && p + 2 < close) {
			if ((unsigned char)p[0] <= c && c <= (unsigned char)p[2])
				return in;
			p += 2;
		} else if ((unsigned char)*p == c) {
			return in;
		}
	}
	return !in;
}

/* Past the single-character class at p (its quantifier, if any, is next). */
static const char *item_end(pm *m, const char *p)
{
	char c = *p++;

	if (c == ESC) {
		if (p == m->p_end)
			pm_error(m, "malformed pattern (ends with '%%')", 0);
		return p + 1;
	}
	if (c == '[') {
		if (*p == '^')
			p++;
		/* The first member is taken before looking for ']': "[]]" is a set. */
		do {
			if (p == m->p_end)
				pm_error(m, "malformed pattern (missing ']')", 0);
			c = *p++;
			if (c == ESC && p < m->p_end)
				p++;
		} while (*p != ']');
		return p + 1;
	}
	return p;
}

/* Whether the class p..ep matches the subject byte at s. */
static int one_ok(const pm *m, const char *s, const char *p, const char *ep)
{
	int c;

	if (s >= m->s_end)
		return 0;
	c = (unsigned char)*s;
	switch (*p) {
	case '.': return 1;
	case ESC: return class_ok(c, (unsigned char)p[1]);
	case '[': return set_ok(c, p, ep - 1);
	default: return (unsigned char)*p == c;
	}
}

/* ------------------------------------------------------------------ */
/* the matcher                                                          */

static const char *do_match(pm *m, const char *s, const char *p);

/* x* and x+ (after its first): as many as match, then fewer. */
static const char *greedy(pm *m, const char *s, const char *p, const char *ep)
{
	ptrdiff_t n = 0;

	/* Counting stops one past what is left, so charging then fails. */
	while (n <= m->left && one_ok(m, s + n, p, ep))
		n++;
	charge(m, n);
	for (; n >= 0; n--) {
		const char *r = do_match(m, s + n, ep + 1);
		if (r != NULL)
			return r;
	}
	return NULL;
}

/* x-: as few as let the rest match. */
static const char *lazy(pm *m, const char *s, const char *p, const char *ep)
{
	for (;;) {
		const char *r = do_match(m, s, ep + 1);
		if (r != NULL)
			return r;
		if (!one_ok(m, s, p, ep))
			return NULL;
		s++;
	}
}

/* %bxy at s: p points at x. */
static const char *balance(pm *m, const char *s, const char *p)
{
	const char *t = s, *lim = m->s_end;
	int depth = 1;

	if (p >= m->p_end - 1)
		pm_error(m, "malformed pattern (missing arguments to '%%b')", 0);
	if (*s != *p)
		return NULL;
	if (m->left < lim - s)
		lim = s + m->left + 1;
	while (++t < lim) {
		if (*t == p[1]) {
			if (--depth == 0) {
				charge(m, t - s);
				return t + 1;
			}
		} else if (*t == *p) {
			depth++;
		}
	}
	charge(m, t - s);
	return NULL;
}

/* %1..%9 at s: the text of that capture again. */
static const char *backref(pm *m, const char *s, int digit)
{
	int i = digit - '1';
	size_t len;

	if (i < 0 || i >= m->ncap || m->cap[i].len == CAP_OPEN)
		pm_error(m, "invalid capture index %%%d", i + 1);
	/* A position capture's length is negative: as a size it never fits. */
	len = (size_t)m->cap[i].len;
	if ((size_t)(m->s_end - s) < len)
		return NULL;
	charge(m, (long long)(len >> 5));
	return memcmp(m->cap[i].at, s, len) == 0 ? s + len : NULL;
}

static const char *open_cap(pm *m, const char *s, const char *p, ptrdiff_t what)
{
	const char *r;

	if (m->ncap >= MAX_CAPS)
		pm_error(m, "too many captures", 0);
	m->cap[m->ncap].at = s;
	m->cap[m->ncap].len = what;
	m->ncap++;
	r = do_match(m, s, p);
	if (r == NULL)
		m->ncap--;
	return r;
}

static const char *close_cap(pm *m, const char *s, const char *p)
{
	const char *r;
	int i = m->ncap - 1;

	while (i >= 0 && m->cap[i].len != CAP_OPEN)
		i--;
	if (i < 0)
		pm_error(m, "invalid pattern capture", 0);
	m->cap[i].len = s - m->cap[i].at;
	r = do_match(m, s, p);
	if (r == NULL)
		m->cap[i].len = CAP_OPEN;
	return r;
}

/* Matches the pattern from p against the subject from s: the end of the
 * match, or NULL. Items that need no backtracking loop here; the others
 * recurse. */
static const char *do_match(pm *m, const char *s, const char *p)
{
	const char *ep;

	if (m->depth-- == 0)
		pm_error(m, "pattern too complex", 0);
	for (;;) {
		STEP(m);
		if (p == m->p_end)
			break;
		switch (*p) {
		case '(':
			if (p[1] == ')')
				s = open_cap(m, s, p + 2, CAP_POS);
			else
				s = open_cap(m, s, p + 1, CAP_OPEN);
			goto done;
		case ')':
			s = close_cap(m, s, p + 1);
			goto done;
		case '$':
			if (p + 1 != m->p_end)
				break; /* not last: a plain '$' */
			if (s != m->s_end)
				s = NULL;
			goto done;
		case ESC:
			if (p[1] == 'b') {
				s = balance(m, s, p + 2);
				if (s == NULL)
					goto done;
				p += 4;
				continue;
			}
			if (p[1] == 'f') {
				int prev;
				p += 2;
				if (*p != '[')
					pm_error(m, "missing '[' after '%%f' in pattern", 0);
				ep = item_end(m, p);
				prev = s == m->s0 ? 0 : (unsigned char)s[-1];
				if (set_ok(prev, p, ep - 1) || !set_ok((unsigned char)*s, p, ep - 1)) {
					s = NULL;
					goto done;
				}
				p = ep;
				continue;
			}
			if (isdigit((unsigned char)p[1])) {
				s = backref(m, s, (unsigned char)p[1]);
				if (s == NULL)
					goto done;
				p += 2;
				continue;
			}
			break; /* %a, %., ...: a class */
		default:
			break;
		}
		/* One class with an optional quantifier. */
		ep = item_end(m, p);
		if (!one_ok(m, s, p, ep)) {
			if (*ep == '*' || *ep == '?' || *ep == '-') {
				p = ep + 1; /* zero repetitions are fine */
				continue;
			}
			s = NULL;
			goto done;
		}
		switch (*ep) {
		case '?': {
			const char *r = do_match(m, s + 1, ep + 1);
			if (r != NULL) {
				s = r;
				goto done;
			}
			p = ep + 1;
			continue;
		}
		case '+':
			s = greedy(m, s + 1, p, ep);
			goto done;
		case '*':
			s = greedy(m, s, p, ep);
			goto done;
		case '-':
			s = lazy(m, s, p, ep);
			goto done;
		default:
			s++;
			p = ep;
			continue;
		}
	}
done:
	m->depth++;
	return s;
}

/* ------------------------------------------------------------------ */
/* captures                                                             */

/* Capture i of the match s..e: its length and start, or CAP_POS with
 * the position pushed. With no captures, "capture 0" is the whole match. */
static ptrdiff_t cap_get(pm *m, int i, const char *s, const char *e, const char **at)
{
	if (i >= m->ncap) {
		if (i != 0)
			pm_error(m, "invalid capture index %%%d", i + 1);
		*at = s;
		return e - s;
	}
	*at = m->cap[i].at;
	if (m->cap[i].len == CAP_OPEN)
		pm_error(m, "unfinished capture", 0);
	if (m->cap[i].len == CAP_POS)
		lua_pushinteger(m->L, (m->cap[i].at - m->s0) + 1);
	return m->cap[i].len;
}

static void push_cap(pm *m, int i, const char *s, const char *e)
{
	const char *at;
	ptrdiff_t len = cap_get(m, i, s, e, &at);

	if (len != CAP_POS)
		lua_pushlstring(m->L, at, (size_t)len);
}

/* Pushes the captures (the whole match when there are none and s is not
 * NULL); returns how many. */
static int push_caps(pm *m, const char *s, const char *e)
{
	int n = m->ncap == 0 && s != NULL ? 1 : m->ncap;

	luaL_checkstack(m->L, n, "too many captures");
	for (int i = 0; i < n; i++)
		push_cap(m, i, s, e);
	return n;
}

/* ------------------------------------------------------------------ */
/* the library functions                                                */

static void pm_init(pm *m, lua_State *L, const char *s, size_t ls, const char *p, size_t lp)
{
	m->s0 = s;
	m->s_end = s + ls;
	m->p_end = p + lp;
	m->L = L;
	m->depth = MAX_DEPTH;
	m->ncap = 0;
	m->left = m->grant = m->spent = 0;
}

static void pm_restart(pm *m)
{
	m->ncap = 0;
	m->depth = MAX_DEPTH;
}

/* An init argument as a 1-based start: negative counts from the end,
 * 0 and anything before the start are 1. */
static size_t start_at(lua_Integer i, size_t len)
{
	if (i > 0)
		return (size_t)i;
	if (i == 0 || i < -(lua_Integer)len)
		return 1;
	return len + (size_t)i + 1;
}

static int has_specials(const char *p, size_t lp)
{
	for (size_t i = 0; i < lp; i++)
		if (p[i] != '\0' && memchr(SPECIALS, p[i], sizeof(SPECIALS) - 1) != NULL)
			return 1;
	return 0;
}

static int find_or_match(lua_State *L, int find)
{
	size_t ls, lp;
	const char *s = luaL_checklstring(L, 1, &ls);
	const char *p = luaL_checklstring(L, 2, &lp);
	size_t init = start_at(luaL_optinteger(L, 3, 1), ls) - 1;
	const char *at;
	int anchor;
	pm m;

	if (init > ls) {
		luaL_pushfail(L);
		return 1;
	}
	if (find && (lua_toboolean(L, 4) || !has_specials(p, lp))) {
		/* glibc's memmem is linear: no budget needed. */
		const char *hit = lp == 0 ? s + init : memmem(s + init, ls - init, p, lp);
		if (hit == NULL) {
			luaL_pushfail(L);
			return 1;
		}
		lua_pushinteger(L, (hit - s) + 1);
		lua_pushinteger(L, (lua_Integer)((size_t)(hit - s) + lp));
		return 2;
	}
	anchor = *p == '^';
	if (anchor) {
		p++;
		lp--;
	}
	pm_init(&m, L, s, ls, p, lp);
	grant(&m);
	at = s + init;
	do {
		const char *e;
		pm_restart(&m);
		e = do_match(&m, at, p);
		if (e != NULL) {
			settle(&m);
			if (!find)
				return push_caps(&m, at, e);
			lua_pushinteger(L, (at - s) + 1);
			lua_pushinteger(L, e - s);
			return push_caps(&m, NULL, NULL) + 2;
		}
	} while (at++ < m.s_end && !anchor);
	settle(&m);
	luaL_pushfail(L);
	return 1;
}

static int l_find(lua_State *L)
{
	return find_or_match(L, 1);
}

static int l_match(lua_State *L)
{
	return find_or_match(L, 0);
}

typedef struct gm {
	pm m;
	const char *at;   /* where the next search starts */
	const char *p;    /* the pattern */
	const char *last; /* end of the last match (an empty match there is skipped) */
} gm;

/* The iterator: upvalues are the subject, the pattern and the gm. */
static int gmatch_next(lua_State *L)
{
	gm *g = lua_touserdata(L, lua_upvalueindex(3));

	g->m.L = L; /* it may be called from another coroutine */
	g->m.spent = 0;
	grant(&g->m);
	for (const char *at = g->at; at <= g->m.s_end; at++) {
		const char *e;
		pm_restart(&g->m);
		e = do_match(&g->m, at, g->p);
		if (e != NULL && e != g->last) {
			g->at = g->last = e;
			settle(&g->m);
			return push_caps(&g->m, at, e);
		}
	}
	settle(&g->m);
	return 0;
}

static int l_gmatch(lua_State *L)
{
	size_t ls, lp;
	const char *s = luaL_checklstring(L, 1, &ls);
	const char *p = luaL_checklstring(L, 2, &lp);
	size_t init = start_at(luaL_optinteger(L, 3, 1), ls) - 1;
	gm *g;

	lua_settop(L, 2); /* the strings live on as upvalues */
	g = lua_newuserdatauv(L, sizeof(*g), 0);
	if (init > ls)
		init = ls + 1; /* past the end: nothing, without overflowing */
	pm_init(&g->m, L, s, ls, p, lp);
	g->at = s + init;
	g->p = p;
	g->last = NULL;
	lua_pushcclosure(L, gmatch_next, 3);
	return 1;
}

/* A replacement string (argument 3): %0-%9 and %%. */
static void add_repl(pm *m, luaL_Buffer *b, const char *s, const char *e)
{
	size_t l;
	const char *r = lua_tolstring(m->L, 3, &l);
	const char *q;

	while ((q = memchr(r, ESC, l)) != NULL) {
		luaL_addlstring(b, r, (size_t)(q - r));
		q++; /* a final '%' meets the NUL: an error below */
		if (*q == ESC) {
			luaL_addchar(b, ESC);
		} else if (*q == '0') {
			luaL_addlstring(b, s, (size_t)(e - s));
		} else if (isdigit((unsigned char)*q)) {
			const char *at;
			ptrdiff_t len = cap_get(m, *q - '1', s, e, &at);
			if (len == CAP_POS)
				luaL_addvalue(b);
			else
				luaL_addlstring(b, at, (size_t)len);
		} else {
			pm_error(m, "invalid use of '%c' in replacement string", ESC);
		}
		l -= (size_t)(q + 1 - r);
		r = q + 1;
	}
	luaL_addlstring(b, r, l);
}

/* Adds the replacement of the match s..e; whether it changed the text.
 * A function or a table may run Lua code: the steps are settled first
 * and granted again after. */
static int add_value(pm *m, luaL_Buffer *b, const char *s, const char *e, int tr)
{
	lua_State *L = m->L;

	if (tr == LUA_TFUNCTION) {
		int n;
		lua_pushvalue(L, 3);
		n = push_caps(m, s, e);
		settle(m);
		lua_call(L, n, 1);
		grant(m);
	} else if (tr == LUA_TTABLE) {
		push_cap(m, 0, s, e);
		settle(m);
		lua_gettable(L, 3);
		grant(m);
	} else {
		add_repl(m, b, s, e);
		return 1;
	}
	if (!lua_toboolean(L, -1)) { /* nil or false: keep the match */
		lua_pop(L, 1);
		luaL_addlstring(b, s, (size_t)(e - s));
		return 0;
	}
	if (!lua_isstring(L, -1))
		return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
	luaL_addvalue(b);
	return 1;
}

static int l_gsub(lua_State *L)
{
	size_t ls, lp;
	const char *src = luaL_checklstring(L, 1, &ls);
	const char *p = luaL_checklstring(L, 2, &lp);
	const char *last = NULL;
	int tr = lua_type(L, 3);
	lua_Integer max_n = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
	int anchor = *p == '^';
	lua_Integer n = 0;
	int changed = 0;
	luaL_Buffer b;
	pm m;

	luaL_argexpected(L, tr == LUA_TNUMBER || tr == LUA_TSTRING || tr == LUA_TFUNCTION ||
	                     tr == LUA_TTABLE,
	                 3, "string/function/table");
	luaL_buffinit(L, &b);
	if (anchor) {
		p++;
		lp--;
	}
	pm_init(&m, L, src, ls, p, lp);
	grant(&m);
	while (n < max_n) {
		const char *e;
		pm_restart(&m);
		e = do_match(&m, src, p);
		if (e != NULL && e != last) {
			n++;
			changed = add_value(&m, &b, src, e, tr) | changed;
			src = last = e;
		} else if (src < m.s_end) {
			luaL_addchar(&b, *src++);
		} else {
			break;
		}
		if (anchor)
			break;
	}
	settle(&m);
	if (!changed) {
		lua_pushvalue(L, 1);
	} else {
		luaL_addlstring(&b, src, (size_t)(m.s_end - src));
		luaL_pushresult(&b);
	}
	lua_pushinteger(L, n);
	return 2;
}

void tr__lpat_open(lua_State *L, int idx)
{
	static const luaL_Reg fns[] = {
		{"find", l_find}, {"match", l_match}, {"gmatch", l_gmatch}, {"gsub", l_gsub},
	};

	idx = lua_absindex(L, idx);
	for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
		lua_pushcfunction(L, fns[i].func);
		lua_setfield(L, idx, fns[i].name);
	}
}
