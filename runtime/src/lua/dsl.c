/*
 * lua/dsl.c -- the pipeline DSL (node, actor, supervisor, pipeline, step,
 * route, parallel, tenant, tool), the loader that turns files into a
 * tr_config, and its diagnostics.
 *
 * Two phases, so that every problem is reported, not only the first:
 *
 *  1. The files run in one sandbox. The DSL functions only record: each
 *     call makes a plain descriptor table (what, name, options table, file
 *     index and line of the call) and declarations are appended to a list
 *     in the registry. `step "x" {...}` returns its descriptor, so that
 *     pipeline and route tables simply contain them. Descriptors carry a
 *     private light-userdata key that scripts cannot forge.
 *  2. A C pass walks the declarations in order, checks every field with
 *     raw reads (no metamethod of a user table ever runs) and builds the
 *     tr_config. Each problem becomes one "file:line: message".
 *
 * Functions (receive, when, handler) are numbered in the order the DSL sees them,
 * in both modes: tr_lua_state_new() reruns the files in replay mode (no
 * declarations recorded) and finds every function under the same number.
 *
 * Memory: the C pass runs inside lua_pcall; a Lua memory error unwinds it.
 * Everything it allocates is therefore attached at once to the config
 * being built (arrays zeroed first, counts raised as elements are filled)
 * or to the vctx scratch, and the caller frees both on every path.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <msgpack.h>

#include <troupe/sup.h>

#include "core/alloc.h"
#include "lua/lua_int.h"
#include "msg/msg_int.h"
#include "pipe/kinds.h"
#include "pipe/spec.h"

/* The key under which a descriptor keeps its kind ("step", ...). */
static const char mark;

#define NAME_MAX_LEN 63

/* ================================================================== */
/* phase 1: the DSL functions                                          */

static int caller_line(lua_State *L)
{
	lua_Debug ar;
	if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "l", &ar))
		return ar.currentline;
	return 0;
}

/* Pushes a new descriptor {what, file, line}. */
static void new_desc(lua_State *L, const char *what)
{
	tr__lsb *s = tr__lua_sb(L);
	int line = caller_line(L);

	lua_createtable(L, 0, 6);
	lua_pushstring(L, what);
	lua_rawsetp(L, -2, &mark);
	lua_pushinteger(L, s->cur_file);
	lua_setfield(L, -2, "file");
	lua_pushinteger(L, line);
	lua_setfield(L, -2, "line");
}

/* Appends the descriptor on top to the declarations (loader only). */
static void declare(lua_State *L)
{
	if (!tr__lua_sb(L)->build)
		return;
	lua_rawgetp(L, LUA_REGISTRYINDEX, &tr__lua_key_decls);
	lua_pushvalue(L, -2);
	lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
	lua_pop(L, 1);
}

/* If opts (at oi) holds a function under key k, numbers it and stores the
 * number as the descriptor's "fn" (descriptor at di). */
static void number_fn(lua_State *L, int di, int oi, const char *k)
{
	lua_Integer n;

	if (lua_type(L, oi) != LUA_TTABLE)
		return;
	lua_pushstring(L, k);
	if (lua_rawget(L, oi) != LUA_TFUNCTION) {
		lua_pop(L, 1);
		return;
	}
	lua_rawgetp(L, LUA_REGISTRYINDEX, &tr__lua_key_fns);
	n = (lua_Integer)lua_rawlen(L, -1);
	lua_insert(L, -2);
	lua_rawseti(L, -2, n + 1);
	lua_pop(L, 1);
	lua_pushinteger(L, n);
	lua_setfield(L, di, "fn");
}

/* The second call of `actor "x" { ... }` and friends: upvalue 1 is the
 * descriptor; the options table is argument 1. The descriptor keeps
 * where this call is ("called_file", "called": its line) and, if the
 * options come again
 * (`local a = actor "x"; a {...}; a {...}`), where they came again first
 * ("twice", "twice_file"); the first table is the one kept. */
static int desc_body(lua_State *L)
{
	const char *what;

	lua_settop(L, 1);
	lua_pushvalue(L, lua_upvalueindex(1)); /* 2: descriptor */
	if (lua_getfield(L, 2, "called") != LUA_TNIL) {
		if (lua_getfield(L, 2, "twice") == LUA_TNIL) {
			lua_pushinteger(L, caller_line(L));
			lua_setfield(L, 2, "twice");
			lua_pushinteger(L, tr__lua_sb(L)->cur_file);
			lua_setfield(L, 2, "twice_file");
		}
		lua_settop(L, 2);
		return 1;
	}
	lua_pop(L, 1);
	lua_pushinteger(L, caller_line(L));
	lua_setfield(L, 2, "called");
	lua_pushinteger(L, tr__lua_sb(L)->cur_file);
	lua_setfield(L, 2, "called_file");
	lua_pushvalue(L, 1);
	lua_setfield(L, 2, "opts");
	lua_rawgetp(L, 2, &mark);
	what = lua_tostring(L, -1);
	lua_pop(L, 1);
	number_fn(L, 2, 1, strcmp(what, "actor") == 0  ? "receive"
	                   : strcmp(what, "tool") == 0 ? "handler"
	                                               : "when");
	return 1;
}

/* actor "x", supervisor "x", pipeline "x", step "x", route "field",
 * tenant "x", tool "x":
 * upvalue 1 is the kind; returns the function that takes the options. */
static int desc_named(lua_State *L)
{
	const char *what = lua_tostring(L, lua_upvalueindex(1));

	lua_settop(L, 1);
	new_desc(L, what);
	lua_pushvalue(L, 1);
	lua_setfield(L, -2, "name");
	if (strcmp(what, "step") != 0 && strcmp(what, "route") != 0)
		declare(L);
	lua_pushcclosure(L, desc_body, 1);
	return 1;
}

/* node { ... } and parallel { ... }: the options come at once. */
static int desc_direct(lua_State *L)
{
	const char *what = lua_tostring(L, lua_upvalueindex(1));

	lua_settop(L, 1);
	if (lua_type(L, 1) == LUA_TSTRING)
		return luaL_error(L, "%s has no name: write %s { ... }", what, what);
	new_desc(L, what);
	lua_pushvalue(L, 1);
	lua_setfield(L, -2, "opts");
	lua_getfield(L, -1, "line");
	lua_setfield(L, -2, "called");
	lua_getfield(L, -1, "file");
	lua_setfield(L, -2, "called_file");
	if (strcmp(what, "parallel") != 0) { /* node, postgres, redis */
		declare(L);
		return 0;
	}
	number_fn(L, 2, 1, "when");
	return 1;
}

void tr__lua_dsl_open(lua_State *L)
{
	static const char *const named[] = {"actor", "supervisor", "pipeline", "step", "route",
	                                    "tenant", "tool"};
	static const char *const direct[] = {"node", "parallel", "postgres", "redis"};

	for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++) {
		lua_pushstring(L, named[i]);
		lua_pushcclosure(L, desc_named, 1);
		lua_setfield(L, -2, named[i]);
	}
	for (size_t i = 0; i < sizeof(direct) / sizeof(direct[0]); i++) {
		lua_pushstring(L, direct[i]);
		lua_pushcclosure(L, desc_direct, 1);
		lua_setfield(L, -2, direct[i]);
	}
}

/* ================================================================== */
/* diagnostics                                                          */

void tr_diag_init(tr_diag *d)
{
	d->msgs = NULL;
	d->n = 0;
}

void tr_diag_free(tr_diag *d)
{
	for (size_t i = 0; i < d->n; i++)
		tr__free(d->msgs[i]);
	tr__free(d->msgs);
	tr_diag_init(d);
}

/* Appends a copy of msg. TR_OK or TR_ENOMEM. */
static int diag_add(tr_diag *d, const char *msg)
{
	char *m = tr__strndup(msg, strlen(msg));
	char **v;

	if (m == NULL)
		return TR_ENOMEM;
	v = tr__realloc(d->msgs, (d->n + 1) * sizeof(*v));
	if (v == NULL) {
		tr__free(m);
		return TR_ENOMEM;
	}
	d->msgs = v;
	d->msgs[d->n++] = m;
	return TR_OK;
}

unsigned tr__lua_editdist(const char *a, const char *b, unsigned cap)
{
	size_t la = strlen(a), lb = strlen(b);
	unsigned row[64], prev, best;

	if (la >= 63 || lb >= 63)
		return cap + 1;
	if ((la > lb ? la - lb : lb - la) > cap)
		return cap + 1;
	for (size_t j = 0; j <= lb; j++)
		row[j] = (unsigned)j;
	for (size_t i = 1; i <= la; i++) {
		prev = row[0];
		row[0] = (unsigned)i;
		best = row[0];
		for (size_t j = 1; j <= lb; j++) {
			unsigned cur = row[j];
			unsigned sub = prev + (a[i - 1] != b[j - 1]);
			unsigned v = row[j] + 1 < row[j - 1] + 1 ? row[j] + 1 : row[j - 1] + 1;
			row[j] = v < sub ? v : sub;
			prev = cur;
			if (row[j] < best)
				best = row[j];
		}
		if (best > cap)
			return cap + 1;
	}
	return row[lb] <= cap ? row[lb] : cap + 1;
}

/* The closest of names[0..n) to k within distance 2, or NULL. */
static const char *suggest(const char *k, const char *const *names, size_t n)
{
	const char *best = NULL;
	unsigned bd = 3;

	for (size_t i = 0; i < n; i++) {
		unsigned d = tr__lua_editdist(k, names[i], 2);
		if (d < bd && strcmp(k, names[i]) != 0) {
			bd = d;
			best = names[i];
		}
	}
	return best;
}

/* ================================================================== */
/* phase 2: validation                                                  */

typedef struct vctx {
	lua_State *L;
	tr_config *c;
	tr_diag *d;
	int partial;        /* a file failed to run: skip name resolution */
	int nomem;
	tr_buf scratch;     /* msgpack of kind configs; owned, freed by the caller */
	const char **names; /* scratch array of names / keys; owned */
	size_t nnames, capnames;
	int *parent;        /* supervisor index per actor then per sup; owned */
} vctx;

/* Where something is: a file index and a line. */
typedef struct where {
	int file;
	int line;
} where;

static const char *file_of(vctx *v, int f)
{
	return f >= 0 && (size_t)f < v->c->nfiles ? v->c->files[f] : "?";
}

static tr_srcpos srcpos(vctx *v, where w)
{
	return (tr_srcpos){file_of(v, w.file), w.line};
}

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void diag(vctx *v, where w, const char *fmt, ...)
{
	char buf[1024];
	int off;
	va_list ap;

	off = snprintf(buf, sizeof(buf), "%s:%d: ", file_of(v, w.file), w.line);
	if (off < 0 || (size_t)off >= sizeof(buf))
		off = 0;
	va_start(ap, fmt);
	vsnprintf(buf + off, sizeof(buf) - (size_t)off, fmt, ap);
	va_end(ap);
	if (diag_add(v->d, buf) != TR_OK)
		v->nomem = 1;
}

/* Attaches a C string copy or flags OOM. */
static char *dup(vctx *v, const char *s)
{
	char *d = tr__strndup(s, strlen(s));
	if (d == NULL)
		v->nomem = 1;
	return d;
}

static int names_push(vctx *v, const char *s)
{
	if (v->nnames == v->capnames) {
		size_t cap = v->capnames ? v->capnames * 2 : 32;
		const char **n = tr__realloc(v->names, cap * sizeof(*n));
		if (n == NULL) {
			v->nomem = 1;
			return -1;
		}
		v->names = n;
		v->capnames = cap;
	}
	v->names[v->nnames++] = s;
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Sorts names[base..] (qsort must not see a NULL array, even empty). */
static void sort_names(vctx *v, size_t base)
{
	if (v->nnames - base > 1)
		qsort(v->names + base, v->nnames - base, sizeof(*v->names), cmp_str);
}

/* "got ..." text for the value at idx. */
static const char *got(lua_State *L, int idx, char *buf, size_t len)
{
	if (lua_type(L, idx) == LUA_TNUMBER) {
		if (lua_isinteger(L, idx))
			snprintf(buf, len, "%lld", (long long)lua_tointeger(L, idx));
		else
			snprintf(buf, len, "%.14g", (double)lua_tonumber(L, idx));
		return buf;
	}
	return luaL_typename(L, idx);
}

/* Raw t[k] pushed; returns its type. */
static int rget(lua_State *L, int t, const char *k)
{
	lua_pushstring(L, k);
	return lua_rawget(L, t);
}

/* A descriptor field that is an integer (0 if absent). */
static int dint(lua_State *L, int t, const char *k)
{
	int r;
	rget(L, t, k);
	r = (int)lua_tointeger(L, -1);
	lua_pop(L, 1);
	return r;
}

static where wof(lua_State *L, int t)
{
	return (where){dint(L, t, "file"), dint(L, t, "line")};
}

/* Reports options given twice to descriptor d (`who` names it), at the
 * second table, pointing back at the first. */
static void check_twice(vctx *v, int d, const char *who)
{
	lua_State *L = v->L;
	where again;
	int ty = rget(L, d, "twice");

	lua_pop(L, 1);
	if (ty == LUA_TNIL)
		return;
	again = (where){dint(L, d, "twice_file"), dint(L, d, "twice")};
	diag(v, again, "%s: options given twice (first at %s:%d)", who,
	     file_of(v, dint(L, d, "called_file")), dint(L, d, "called"));
}

/* The kind of the descriptor at idx, or NULL if it is not one. */
static const char *desc_kind(lua_State *L, int idx)
{
	const char *k;
	if (lua_type(L, idx) != LUA_TTABLE)
		return NULL;
	lua_rawgetp(L, idx, &mark);
	k = lua_tostring(L, -1); /* a string kept alive by the descriptor */
	lua_pop(L, 1);
	return k;
}

/* What the options of one construct are checked against. */
typedef struct fctx {
	vctx *v;
	where w;
	char who[128]; /* "actor 'x'", "step 'rag'", ... */
} fctx;

/* d = s with `who` extended ("step 'x'" -> "step 'x': cache"). */
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static void subwho(fctx *d, const fctx *s, const char *fmt, ...)
{
	size_t off;
	va_list ap;

	*d = *s;
	off = strlen(d->who);
	va_start(ap, fmt);
	vsnprintf(d->who + off, sizeof(d->who) - off, fmt, ap);
	va_end(ap);
}

/* ---- scalar options ------------------------------------------------- */

/* Whether the number at idx is an integer or a whole float (2.0): every
 * integer option takes both. */
static int whole(lua_State *L, int idx)
{
	lua_Number d;

	if (lua_isinteger(L, idx))
		return 1;
	d = lua_tonumber(L, idx);
	return d == floor(d) && fabs(d) < 1e15;
}

/* The value of a number that whole() accepted. */
static lua_Integer whole_value(lua_State *L, int idx)
{
	if (lua_isinteger(L, idx))
		return lua_tointeger(L, idx);
	return (lua_Integer)lua_tonumber(L, idx);
}

static int want_uint(fctx *f, int t, const char *k, uint32_t min, uint32_t max, uint32_t *out)
{
	lua_State *L = f->v->L;
	char b[64];
	int ty = rget(L, t, k);
	lua_Integer i = 0;
	int ok = 0;

	if (ty == LUA_TNIL) {
		lua_pop(L, 1);
		return 0;
	}
	if (ty == LUA_TNUMBER && whole(L, -1)) {
		i = whole_value(L, -1);
		ok = 1;
	}
	if (!ok || i < (lua_Integer)min) {
		diag(f->v, f->w, "%s: %s: expected a %s integer, got %s", f->who, k,
		     min > 0 ? "positive" : "non-negative", got(L, -1, b, sizeof(b)));
	} else if (i > (lua_Integer)max) {
		diag(f->v, f->w, "%s: %s: must be at most %u, got %lld", f->who, k, (unsigned)max,
		     (long long)i);
	} else {
		*out = (uint32_t)i;
	}
	lua_pop(L, 1);
	return 1;
}

/* Parses "1.5s" & co. into µs. 0 on success, -1 bad, -2 too large. */
static int parse_dur(const char *s, uint64_t *us)
{
	static const struct {
		const char *u;
		double mult;
	} units[] = {{"us", 1}, {"ms", 1e3}, {"s", 1e6}, {"m", 60e6}, {"h", 3600e6}};
	double v = 0, scale = 0.1;
	int nd = 0;
	const char *p = s;

	while (*p >= '0' && *p <= '9') {
		v = v * 10 + (*p++ - '0');
		nd++;
	}
	if (*p == '.') {
		p++;
		while (*p >= '0' && *p <= '9') {
			v += (*p++ - '0') * scale;
			scale /= 10;
			nd++;
		}
	}
	if (nd == 0)
		return -1;
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (strcmp(p, units[i].u) == 0) {
			double t = v * units[i].mult;
			if (t > 1e15) /* ~31 years: surely a mistake */
				return -2;
			*us = (uint64_t)(t + 0.5);
			return 0;
		}
	}
	return -1;
}

#define DUR_HINT "units us, ms, s, m, h: \"500us\", \"50ms\", \"1.5s\", \"1m\""

static int want_dur(fctx *f, int t, const char *k, uint64_t *out)
{
	lua_State *L = f->v->L;
	char b[64];
	uint64_t us = 0;
	int ty = rget(L, t, k), r;

	if (ty == LUA_TNIL) {
		lua_pop(L, 1);
		return 0;
	}
	if (ty != LUA_TSTRING) {
		diag(f->v, f->w, "%s: %s: expected a duration string (%s), got %s", f->who, k,
		     DUR_HINT, got(L, -1, b, sizeof(b)));
	} else if ((r = parse_dur(lua_tostring(L, -1), &us)) == -1) {
		diag(f->v, f->w, "%s: %s: bad duration '%s' (%s)", f->who, k, lua_tostring(L, -1),
		     DUR_HINT);
	} else if (r == -2) {
		diag(f->v, f->w, "%s: %s: duration '%s' is too large", f->who, k,
		     lua_tostring(L, -1));
	} else if (us == 0) {
		diag(f->v, f->w, "%s: %s: must be more than 0", f->who, k);
	} else {
		*out = us;
	}
	lua_pop(L, 1);
	return 1;
}

/* want_dur kept within [min, max] µs; `lo` and `hi` name the bounds in
 * the message ("1ms", "24h"). */
static int want_dur_in(fctx *f, int t, const char *k, uint64_t min, uint64_t max,
                       const char *lo, const char *hi, uint64_t *out)
{
	lua_State *L = f->v->L;
	uint64_t us = 0;

	if (!want_dur(f, t, k, &us))
		return 0;
	if (us == 0)
		return 1; /* reported */
	if (us >= min && us <= max) {
		*out = us;
		return 1;
	}
	rget(L, t, k);
	diag(f->v, f->w, "%s: %s: must be between %s and %s, got '%s'", f->who, k, lo, hi,
	     lua_tostring(L, -1));
	lua_pop(L, 1);
	return 1;
}

#define SIZE_HINT "a number of bytes, or units B, KiB, MiB, GiB: \"512B\", \"64KiB\", \"1MiB\""

/*
 * Parses a size: a whole number and one binary unit, no space ("512B",
 * "64KiB", "1MiB", "2GiB"), into bytes (saturating at UINT64_MAX). 0 on
 * success. -1 when bad; then *alt is the unit the text probably meant when
 * its unit reads like one in another spelling ("64KB", "64k", "64kib":
 * "KiB"), else NULL. Decimal units are not taken: "KB" is 1000 bytes to
 * some and 1024 to others.
 */
static int parse_size(const char *s, uint64_t *out, const char **alt)
{
	static const struct {
		const char *u;
		unsigned shift;
		const char *like[3]; /* lower-case spellings that mean it */
	} units[] = {{"B", 0, {"b", NULL, NULL}},
	             {"KiB", 10, {"k", "kb", "kib"}},
	             {"MiB", 20, {"m", "mb", "mib"}},
	             {"GiB", 30, {"g", "gb", "gib"}}};
	uint64_t v = 0;
	const char *p = s;
	char low[4];
	size_t nu;

	*alt = NULL;
	while (*p >= '0' && *p <= '9') {
		unsigned dg = (unsigned)(*p++ - '0');
		v = v > (UINT64_MAX - dg) / 10 ? UINT64_MAX : v * 10 + dg;
	}
	if (p == s)
		return -1;
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (strcmp(p, units[i].u) == 0) {
			*out = v > (UINT64_MAX >> units[i].shift) ? UINT64_MAX : v << units[i].shift;
			return 0;
		}
	}
	nu = strlen(p);
	if (nu == 0 || nu >= sizeof(low))
		return -1;
	for (size_t i = 0; i <= nu; i++)
		low[i] = (char)(p[i] >= 'A' && p[i] <= 'Z' ? p[i] - 'A' + 'a' : p[i]);
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
		for (size_t j = 0; j < 3; j++)
			if (units[i].like[j] != NULL && strcmp(low, units[i].like[j]) == 0)
				*alt = units[i].u;
	return -1;
}

/* A size option (see parse_size; a plain whole number is bytes) within
 * [min, max] bytes; `lo` and `hi` name the bounds in the message. */
static int want_size(fctx *f, int t, const char *k, uint64_t min, uint64_t max, const char *lo,
                     const char *hi, uint64_t *out)
{
	lua_State *L = f->v->L;
	char b[64];
	const char *alt = NULL, *s;
	uint64_t n = 0;
	int ty = rget(L, t, k);

	if (ty == LUA_TNIL) {
		lua_pop(L, 1);
		return 0;
	}
	if (ty == LUA_TNUMBER && whole(L, -1) && whole_value(L, -1) >= 0) {
		n = (uint64_t)whole_value(L, -1);
	} else if (ty != LUA_TSTRING) {
		diag(f->v, f->w, "%s: %s: expected a size (%s), got %s", f->who, k, SIZE_HINT,
		     got(L, -1, b, sizeof(b)));
		goto out;
	} else if (parse_size((s = lua_tostring(L, -1)), &n, &alt) != 0 ||
	           strlen(s) != lua_rawlen(L, -1)) {
		if (alt != NULL)
			diag(f->v, f->w, "%s: %s: bad size '%s' (did you mean '%.*s%s'? sizes take "
			     "binary units B, KiB, MiB, GiB: 1KiB = 1024 bytes)", f->who, k, s,
			     (int)strspn(s, "0123456789"), s, alt);
		else
			diag(f->v, f->w, "%s: %s: bad size '%s' (%s)", f->who, k, s, SIZE_HINT);
		goto out;
	}
	if (n < min || n > max) {
		if (ty == LUA_TSTRING)
			diag(f->v, f->w, "%s: %s: must be between %s and %s, got '%s'", f->who, k, lo, hi,
			     lua_tostring(L, -1));
		else
			diag(f->v, f->w, "%s: %s: must be between %s and %s, got %s", f->who, k, lo, hi,
			     got(L, -1, b, sizeof(b)));
		goto out;
	}
	*out = n;
out:
	lua_pop(L, 1);
	return 1;
}

static int want_bool(fctx *f, int t, const char *k, bool *out)
{
	lua_State *L = f->v->L;
	char b[64];
	int ty = rget(L, t, k);

	if (ty == LUA_TNIL) {
		lua_pop(L, 1);
		return 0;
	}
	if (ty != LUA_TBOOLEAN)
		diag(f->v, f->w, "%s: %s: expected true or false, got %s", f->who, k,
		     got(L, -1, b, sizeof(b)));
	else
		*out = lua_toboolean(L, -1);
	lua_pop(L, 1);
	return 1;
}

/* A string option, copied into *out (which owns it). */
static int want_str(fctx *f, int t, const char *k, char **out)
{
	lua_State *L = f->v->L;
	char b[64];
	int ty = rget(L, t, k);

	if (ty == LUA_TNIL) {
		lua_pop(L, 1);
		return 0;
	}
	if (ty != LUA_TSTRING || lua_rawlen(L, -1) == 0 ||
	    strlen(lua_tostring(L, -1)) != lua_rawlen(L, -1)) {
		diag(f->v, f->w, "%s: %s: expected a non-empty string, got %s", f->who, k,
		     ty == LUA_TSTRING ? "an empty or binary string" : got(L, -1, b, sizeof(b)));
	} else {
		tr__free(*out);
		*out = dup(f->v, lua_tostring(L, -1));
	}
	lua_pop(L, 1);
	return 1;
}

/* One of names[] (index into *out). */
static int want_enum(fctx *f, int t, const char *k, const char *const *names, size_t n,
                     int *out)
{
	lua_State *L = f->v->L;
	char b[64], list[160] = "";
	int ty = rget(L, t, k);
	size_t off = 0;

	if (ty == LUA_TNIL) {
		lua_pop(L, 1);
		return 0;
	}
	if (ty == LUA_TSTRING) {
		for (size_t i = 0; i < n; i++) {
			if (strcmp(lua_tostring(L, -1), names[i]) == 0) {
				*out = (int)i;
				lua_pop(L, 1);
				return 1;
			}
		}
	}
	for (size_t i = 0; i < n; i++) {
		int w = snprintf(list + off, sizeof(list) - off, "%s%s", i ? ", " : "", names[i]);
		if (w > 0 && (size_t)w < sizeof(list) - off)
			off += (size_t)w;
	}
	if (ty == LUA_TSTRING) {
		const char *s = suggest(lua_tostring(L, -1), names, n);
		if (s != NULL)
			diag(f->v, f->w, "%s: %s: unknown value '%s' (did you mean '%s'?)", f->who, k,
			     lua_tostring(L, -1), s);
		else
			diag(f->v, f->w, "%s: %s: unknown value '%s' (expected one of %s)", f->who, k,
			     lua_tostring(L, -1), list);
	} else {
		diag(f->v, f->w, "%s: %s: expected one of %s, got %s", f->who, k, list,
		     got(L, -1, b, sizeof(b)));
	}
	lua_pop(L, 1);
	return 1;
}

/* ---- keys --------------------------------------------------------------- */

/* A key of a type or value the construct does not take. */
static void bad_key(fctx *f, int idx)
{
	lua_State *L = f->v->L;
	char b[64];

	if (lua_type(L, idx) == LUA_TNUMBER)
		diag(f->v, f->w, "%s: unexpected key [%s]", f->who, got(L, idx, b, sizeof(b)));
	else
		diag(f->v, f->w, "%s: unexpected %s key", f->who, luaL_typename(L, idx));
}

/*
 * Reports keys of table t that are not in known[]: string keys sorted (so
 * the output does not depend on hash order), with a suggestion. Integer
 * keys are allowed when `positional` (the caller reads them). `extra` (may
 * be NULL) adds text after an unknown key without a suggestion.
 */
static void check_keys(fctx *f, int t, const char *const *known, size_t nknown, int positional,
                       const char *extra)
{
	lua_State *L = f->v->L;
	vctx *v = f->v;
	size_t base = v->nnames, npos = 0;

	lua_pushnil(L);
	while (lua_next(L, t)) {
		lua_pop(L, 1);
		if (lua_type(L, -1) == LUA_TSTRING) {
			const char *k = lua_tostring(L, -1);
			size_t i;
			for (i = 0; i < nknown; i++)
				if (strcmp(k, known[i]) == 0)
					break;
			if (i == nknown)
				names_push(v, k);
		} else if (lua_isinteger(L, -1) && positional) {
			npos++;
		} else {
			bad_key(f, -1);
		}
	}
	sort_names(v, base);
	for (size_t i = base; i < v->nnames; i++) {
		const char *s = suggest(v->names[i], known, nknown);
		if (s != NULL)
			diag(v, f->w, "%s: unknown key '%s' (did you mean '%s'?)", f->who, v->names[i], s);
		else
			diag(v, f->w, "%s: unknown key '%s'%s", f->who, v->names[i], extra ? extra : "");
	}
	v->nnames = base;
}

/* Number of positional elements 1..n (stops at the first nil). */
static size_t seq_count(lua_State *L, int t)
{
	size_t n = 0;
	while (lua_rawgeti(L, t, (lua_Integer)n + 1) != LUA_TNIL) {
		lua_pop(L, 1);
		n++;
	}
	lua_pop(L, 1);
	return n;
}

/* Reports positional keys past the sequence (holes: {a, nil, b}). */
static void check_holes(fctx *f, int t, size_t n)
{
	lua_State *L = f->v->L;

	lua_pushnil(L);
	while (lua_next(L, t)) {
		lua_pop(L, 1);
		if (lua_isinteger(L, -1) &&
		    (lua_tointeger(L, -1) < 1 || (size_t)lua_tointeger(L, -1) > n)) {
			diag(f->v, f->w, "%s: element [%lld] follows a nil: the list has a hole", f->who,
			     (long long)lua_tointeger(L, -1));
		}
	}
}

/* ---- names --------------------------------------------------------------- */

static int name_ok(const char *s, size_t len)
{
	if (len == 0 || len > NAME_MAX_LEN || strlen(s) != len)
		return 0;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '-' || c == '.'))
			return 0;
	}
	return 1;
}

/* The declared name of descriptor d (NULL after reporting a bad one). */
static const char *decl_name(vctx *v, int d, const char *what, where w)
{
	lua_State *L = v->L;
	const char *s = NULL;
	char b[64];
	int ty = rget(L, d, "name");

	if (ty != LUA_TSTRING) {
		diag(v, w, "%s: expected a name: %s \"name\" { ... }, got %s", what, what,
		     got(L, -1, b, sizeof(b)));
	} else if (!name_ok(lua_tostring(L, -1), lua_rawlen(L, -1))) {
		diag(v, w, "%s name '%s': use 1 to %d letters, digits, '_', '-' or '.'", what,
		     lua_tostring(L, -1), NAME_MAX_LEN);
	} else {
		s = lua_tostring(L, -1); /* alive: the descriptor holds it */
	}
	lua_pop(L, 1);
	return s;
}

static long find_actor(const tr_config *c, const char *name)
{
	for (size_t i = 0; i < c->nactors; i++)
		if (c->actors[i].name != NULL && strcmp(c->actors[i].name, name) == 0)
			return (long)i;
	return -1;
}

static long find_sup(const tr_config *c, const char *name)
{
	for (size_t i = 0; i < c->nsups; i++)
		if (c->sups[i].name != NULL && strcmp(c->sups[i].name, name) == 0)
			return (long)i;
	return -1;
}

/* Suggestion among actor names (and supervisor names if `sups`). */
static const char *suggest_actor(vctx *v, const char *k, int sups)
{
	size_t base = v->nnames;
	const char *s;

	for (size_t i = 0; i < v->c->nactors; i++)
		if (v->c->actors[i].name)
			names_push(v, v->c->actors[i].name);
	for (size_t i = 0; sups && i < v->c->nsups; i++)
		if (v->c->sups[i].name)
			names_push(v, v->c->sups[i].name);
	/* none declared: names may still be NULL, and NULL + 0 is undefined */
	s = v->nnames > base ? suggest(k, v->names + base, v->nnames - base) : NULL;
	v->nnames = base;
	return s;
}

/* Checks that `name` (for option `k` of f, or the step itself when k is
 * NULL) names a declared actor. */
static void check_actor_ref(fctx *f, const char *k, const char *name)
{
	vctx *v = f->v;
	const char *s;
	char pre[160];

	if (v->partial || find_actor(v->c, name) >= 0)
		return;
	if (k != NULL)
		snprintf(pre, sizeof(pre), "%s: %s", f->who, k);
	else
		snprintf(pre, sizeof(pre), "%s", f->who);
	if (find_sup(v->c, name) >= 0) {
		diag(v, f->w, "%s: '%s' is a supervisor, not an actor", pre, name);
		return;
	}
	s = suggest_actor(v, name, 0);
	if (s != NULL)
		diag(v, f->w, "%s: no actor named '%s' (did you mean '%s'?)", pre, name, s);
	else
		diag(v, f->w, "%s: no actor named '%s'", pre, name);
}

/* ---- node ------------------------------------------------------------- */

/* Bounds of the HTTP door's limits (http/door.h). Bodies and headers are
 * held in memory whole; the door's timers count whole milliseconds. */
#define BODY_MAX (1ull << 30)             /* 1 GiB */
#define HEADER_MIN (1ull << 10)           /* 1 KiB: a request line and a few headers */
#define HEADER_MAX (1ull << 20)           /* 1 MiB */
#define CONNS_MAX 1000000u
#define MS_US 1000ull
#define HOUR_US 3600000000ull

static void build_names(fctx *f, int t, const char *key, char ***out, size_t *n);

/* An nng TCP URL: "tcp://host:port" (or "tls+tcp://host:port") with a
 * numeric port. */
static int tcp_url_ok(const char *u)
{
	if (strncmp(u, "tls+", 4) == 0)
		u += 4;
	const char *c = strrchr(u, ':');
	char *end = NULL;
	long port = c ? strtol(c + 1, &end, 10) : -1;
	return strncmp(u, "tcp://", 6) == 0 && c != NULL && c > u + 6 && end != c + 1 &&
	       *end == '\0' && port >= 0 && port <= 65535;
}

/* cluster = { tls = { cert_file = ..., key_file = ..., ca_file = ..., server_name = ... } }
 * (cluster/tls.h); 1 when the tls key is there. The files are read when
 * the cluster starts, not here: a config is checked on machines that do
 * not hold the node's keys. */
static int build_cluster_tls(fctx *f, int o, tr_node_spec *n)
{
	static const char *const keys[] = {"cert_file", "key_file", "ca_file", "server_name"};
	char **files[] = {&n->cluster.tls.cert_file, &n->cluster.tls.key_file,
	                  &n->cluster.tls.ca_file};
	lua_State *L = f->v->L;
	char b[64];
	int ty = rget(L, o, "tls"), t = lua_gettop(L);
	fctx ft;
	if (ty == LUA_TNIL)
		goto out;
	subwho(&ft, f, ": tls");
	if (ty != LUA_TTABLE) {
		diag(f->v, f->w, "%s: expected a table like { cert_file = \"node.pem\", key_file = "
		     "\"node.key\", ca_file = \"ca.pem\" }, got %s", ft.who, got(L, t, b, sizeof(b)));
		goto out;
	}
	check_keys(&ft, t, keys, sizeof(keys) / sizeof(keys[0]), 0, NULL);
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
		if (!want_str(&ft, t, keys[i], files[i]))
			diag(f->v, f->w, "%s: %s is required (a PEM file)", ft.who, keys[i]);
	want_str(&ft, t, "server_name", &n->cluster.tls.server_name);
out:
	lua_pop(L, 1);
	return ty != LUA_TNIL;
}

/* A tls+tcp URL needs the tls table (which makes every URL tls+tcp). */
static void check_tls_url(fctx *f, int tls, const char *what, const char *u)
{
	if (!tls && strncmp(u, "tls+", 4) == 0)
		diag(f->v, f->w, "%s: %s: '%s' needs tls = { cert_file = ..., key_file = ..., "
		     "ca_file = ... }", f->who, what, u);
}

/* node { cluster = { listen = ..., seeds = {...}, secret_file = ..., heartbeat, suspect_after,
 * down_after, tls = {...} } } */
static void build_cluster(fctx *f, int o, tr_node_spec *n)
{
	static const char *const keys[] = {"listen", "seeds", "secret_file", "heartbeat",
	                                   "suspect_after", "down_after", "tls", "data_listen"};
	lua_State *L = f->v->L;
	char b[64];
	int ty = rget(L, o, "cluster"), t = lua_gettop(L);
	fctx fc;
	if (ty == LUA_TNIL)
		goto out;
	subwho(&fc, f, ": cluster");
	if (ty != LUA_TTABLE) {
		diag(f->v, f->w, "%s: expected a table like { listen = \"tcp://127.0.0.1:7101\", seeds = "
		     "{ ... }, secret_file = \"...\" }, got %s", fc.who, got(L, t, b, sizeof(b)));
		goto out;
	}
	check_keys(&fc, t, keys, sizeof(keys) / sizeof(keys[0]), 0, NULL);
	if (!want_str(&fc, t, "listen", &n->cluster.listen) || n->cluster.listen == NULL)
		diag(f->v, f->w, "%s: listen is required (\"tcp://127.0.0.1:7101\")", fc.who);
	else if (!tcp_url_ok(n->cluster.listen))
		diag(f->v, f->w, "%s: listen: expected \"tcp://host:port\", got '%s'", fc.who,
		     n->cluster.listen);
	build_names(&fc, t, "seeds", &n->cluster.seeds, &n->cluster.nseeds);
	for (size_t i = 0; i < n->cluster.nseeds; i++)
		if (!tcp_url_ok(n->cluster.seeds[i]))
			diag(f->v, f->w, "%s: seeds: element %zu: expected \"tcp://host:port\", got '%s'",
			     fc.who, i + 1, n->cluster.seeds[i]);
	if (want_str(&fc, t, "data_listen", &n->cluster.data_listen) &&
	    n->cluster.data_listen != NULL && !tcp_url_ok(n->cluster.data_listen))
		diag(f->v, f->w, "%s: data_listen: expected \"tcp://host:port\", got '%s'", fc.who,
		     n->cluster.data_listen);
	want_str(&fc, t, "secret_file", &n->cluster.secret_file);
	want_dur_in(&fc, t, "heartbeat", MS_US, HOUR_US, "1ms", "1h", &n->cluster.heartbeat_us);
	want_dur_in(&fc, t, "suspect_after", MS_US, HOUR_US, "1ms", "1h", &n->cluster.suspect_after_us);
	want_dur_in(&fc, t, "down_after", MS_US, HOUR_US, "1ms", "1h", &n->cluster.down_after_us);
	if (n->cluster.suspect_after_us && n->cluster.down_after_us &&
	    n->cluster.down_after_us <= n->cluster.suspect_after_us)
		diag(f->v, f->w, "%s: down_after must be longer than suspect_after", fc.who);
	int tls = build_cluster_tls(&fc, t, n);
	if (n->cluster.listen != NULL)
		check_tls_url(&fc, tls, "listen", n->cluster.listen);
	for (size_t i = 0; i < n->cluster.nseeds; i++)
		check_tls_url(&fc, tls, "seeds", n->cluster.seeds[i]);
out:
	lua_pop(L, 1);
}

static void build_node(vctx *v, int d, where w, int *seen, where *first)
{
	static const char *const keys[] = {"name", "http", "threads", "max_body", "max_header",
	                                   "max_connections", "header_timeout", "idle_timeout",
	                                   "grace", "labels", "cluster", "env"};
	static const char *const envs[] = {"production", "staging", "dev", "test"};
	uint64_t hdr = 0;
	int env = -1;
	lua_State *L = v->L;
	tr_node_spec *n = &v->c->node;
	fctx f = {v, w, "node"};
	char b[64];
	int o;

	if (*seen) {
		diag(v, w, "node is declared twice (first at %s:%d)", file_of(v, first->file),
		     first->line);
		return;
	}
	*seen = 1;
	*first = w;
	n->pos = srcpos(v, w);
	rget(L, d, "opts");
	o = lua_gettop(L);
	if (lua_type(L, o) != LUA_TTABLE) {
		diag(v, w, "node: expected a table: node { name = ..., http = ..., threads = ... }, got %s",
		     got(L, o, b, sizeof(b)));
		lua_pop(L, 1);
		return;
	}
	check_keys(&f, o, keys, sizeof(keys) / sizeof(keys[0]), 0, NULL);
	want_str(&f, o, "name", &n->name);
	if (want_str(&f, o, "http", &n->http) && n->http != NULL) {
		const char *c = strrchr(n->http, ':');
		char *end = NULL;
		long port = c ? strtol(c + 1, &end, 10) : 0;
		if (c == NULL || c == n->http || end == c + 1 || *end != '\0' || port < 1 ||
		    port > 65535)
			diag(v, w, "node: http: expected \"host:port\", got '%s'", n->http);
	}
	want_uint(&f, o, "threads", 0, 1024, &n->threads);
	want_size(&f, o, "max_body", 1, BODY_MAX, "1B", "1GiB", &n->max_body);
	if (want_size(&f, o, "max_header", HEADER_MIN, HEADER_MAX, "1KiB", "1MiB", &hdr))
		n->max_header = (uint32_t)hdr;
	want_uint(&f, o, "max_connections", 1, CONNS_MAX, &n->max_connections);
	want_dur_in(&f, o, "header_timeout", MS_US, HOUR_US, "1ms", "1h", &n->header_timeout_us);
	want_dur_in(&f, o, "idle_timeout", MS_US, 24 * HOUR_US, "1ms", "24h", &n->idle_timeout_us);
	want_dur_in(&f, o, "grace", MS_US, HOUR_US, "1ms", "1h", &n->grace_us);
	build_names(&f, o, "labels", &n->labels, &n->nlabels);
	if (want_enum(&f, o, "env", envs, sizeof(envs) / sizeof(envs[0]), &env) && env >= 0)
		n->env = envs[env];
	build_cluster(&f, o, n);
	lua_pop(L, 1);
}

/* postgres { ... } and redis { ... }: the node's backends, once each. */
static int backend_once(vctx *v, int d, where w, const char *what, bool *on, tr_srcpos *pos,
                        int *o)
{
	lua_State *L = v->L;
	char b[64];
	if (*on) {
		diag(v, w, "%s is declared twice (first at %s:%d)", what, pos->file, pos->line);
		return 0;
	}
	*on = true;
	*pos = srcpos(v, w);
	rget(L, d, "opts");
	*o = lua_gettop(L);
	if (lua_type(L, *o) != LUA_TTABLE) {
		diag(v, w, "%s: expected a table: %s { %s }, got %s", what, what,
		     strcmp(what, "postgres") == 0 ? "conninfo = \"hostaddr=127.0.0.1 dbname=app\", pool = 10"
		                                   : "url = \"redis://127.0.0.1:6379/0\"",
		     got(L, *o, b, sizeof(b)));
		lua_pop(L, 1);
		return 0;
	}
	return 1;
}

static void build_postgres(vctx *v, int d, where w)
{
	static const char *const keys[] = {"conninfo", "conninfo_env", "pool", "queue",
	                                   "connect_timeout", "max_lifetime", "idle_timeout",
	                                   "statement_timeout", "pgbouncer"};
	tr_postgres_spec *p = &v->c->postgres;
	fctx f = {v, w, "postgres"};
	int o;
	if (!backend_once(v, d, w, "postgres", &p->on, &p->pos, &o))
		return;
	check_keys(&f, o, keys, sizeof(keys) / sizeof(keys[0]), 0, NULL);
	want_str(&f, o, "conninfo", &p->conninfo);
	want_str(&f, o, "conninfo_env", &p->conninfo_env);
	if ((p->conninfo == NULL) == (p->conninfo_env == NULL))
		diag(v, w, "postgres: give conninfo = \"...\" or conninfo_env = \"VAR\" (one of them)");
	want_uint(&f, o, "pool", 1, 1000, &p->pool);
	want_uint(&f, o, "queue", 1, 1000000, &p->queue);
	want_dur_in(&f, o, "connect_timeout", MS_US, HOUR_US, "1ms", "1h", &p->connect_timeout_us);
	want_dur_in(&f, o, "max_lifetime", 1000 * MS_US, 7 * 24 * HOUR_US, "1s", "7d",
	            &p->max_lifetime_us);
	want_dur_in(&f, o, "idle_timeout", MS_US, 24 * HOUR_US, "1ms", "24h", &p->idle_timeout_us);
	want_dur_in(&f, o, "statement_timeout", MS_US, 24 * HOUR_US, "1ms", "24h",
	            &p->statement_timeout_us);
	want_bool(&f, o, "pgbouncer", &p->pgbouncer);
	lua_pop(v->L, 1);
}

static void build_redis(vctx *v, int d, where w)
{
	static const char *const keys[] = {"url", "url_env", "prefix", "timeout", "connect_timeout",
	                                   "max_pending"};
	tr_redis_spec *r = &v->c->redis;
	fctx f = {v, w, "redis"};
	int o;
	if (!backend_once(v, d, w, "redis", &r->on, &r->pos, &o))
		return;
	check_keys(&f, o, keys, sizeof(keys) / sizeof(keys[0]), 0, NULL);
	want_str(&f, o, "url", &r->url);
	want_str(&f, o, "url_env", &r->url_env);
	if ((r->url == NULL) == (r->url_env == NULL))
		diag(v, w, "redis: give url = \"redis://127.0.0.1:6379/0\" or url_env = \"VAR\" (one "
		     "of them)");
	if (r->url != NULL) {
		char host[64];
		int port, db;
		if (tr_redis_url_parse(r->url, host, sizeof(host), &port, &db) != TR_OK)
			diag(v, w, "redis: url: expected \"redis://<numeric ip>:<port>[/<db>]\", got '%s'",
			     r->url);
	}
	want_str(&f, o, "prefix", &r->prefix);
	want_dur_in(&f, o, "timeout", MS_US, HOUR_US, "1ms", "1h", &r->timeout_us);
	want_dur_in(&f, o, "connect_timeout", MS_US, HOUR_US, "1ms", "1h", &r->connect_timeout_us);
	want_uint(&f, o, "max_pending", 1, 1000000, &r->max_pending);
	lua_pop(v->L, 1);
}

/* ---- actors ------------------------------------------------------------ */

static const char *const overflow_names[] = {"block", "drop_oldest", "drop_newest", "reject"};
static const char *const strategy_names[] = {"one_for_one", "one_for_all", "rest_for_one"};

static int buf_write(void *data, const char *p, size_t n)
{
	return tr__buf_append(data, p, n) == TR_OK ? 0 : -1;
}

/* The one of near[0..n) that key k is a likely typo of, or NULL: one edit
 * away, or two for keys of six letters or more ("recieve"). Short kind
 * settings two edits from a common key are real settings, not typos
 * (telemetry's "sink" is two from "kind"). */
static const char *near_typo(const char *k, const char *const *near, size_t n)
{
	unsigned cap = strlen(k) >= 6 ? 2 : 1;
	const char *best = NULL;
	unsigned bd = cap + 1;

	for (size_t i = 0; i < n; i++) {
		unsigned d = tr__lua_editdist(k, near[i], cap);
		if (d < bd && strcmp(k, near[i]) != 0) {
			bd = d;
			best = near[i];
		}
	}
	return best;
}

/* Encodes the keys of o that are not in known[] as a msgpack map into
 * a->config, sorted by key (stable bytes for the same file). A key that
 * near_typo() finds close to one of near[] ("mailbx") is reported as a
 * typo rather than passed on: the kind would never read it, and the
 * setting the user meant would silently keep its default. */
static void kind_config(fctx *f, int o, const char *const *known, size_t nknown,
                        const char *const *near, size_t nnear, tr_actor_spec *a)
{
	vctx *v = f->v;
	lua_State *L = v->L;
	size_t base = v->nnames, n, keep;
	msgpack_packer pk;
	int bad = 0;

	lua_pushnil(L);
	while (lua_next(L, o)) {
		lua_pop(L, 1);
		if (lua_type(L, -1) == LUA_TSTRING) {
			const char *k = lua_tostring(L, -1);
			size_t i;
			for (i = 0; i < nknown; i++)
				if (strcmp(k, known[i]) == 0)
					break;
			if (i == nknown)
				names_push(v, k);
		} else {
			bad_key(f, -1);
		}
	}
	sort_names(v, base);
	keep = base;
	for (size_t i = base; i < v->nnames; i++) {
		const char *sg = near_typo(v->names[i], near, nnear);
		if (sg != NULL)
			diag(v, f->w, "%s: unknown key '%s' (did you mean '%s'?)", f->who, v->names[i],
			     sg);
		else
			v->names[keep++] = v->names[i];
	}
	v->nnames = keep;
	n = v->nnames - base;
	if (n == 0)
		goto out;
	v->scratch.len = 0;
	msgpack_packer_init(&pk, &v->scratch, buf_write);
	if (msgpack_pack_map(&pk, n)) {
		v->nomem = 1;
		goto out;
	}
	for (size_t i = base; i < v->nnames; i++) {
		const char *k = v->names[i];
		size_t kl = strlen(k);
		int rc;
		if (msgpack_pack_str(&pk, kl) || msgpack_pack_str_body(&pk, k, kl)) {
			v->nomem = 1;
			goto out;
		}
		rget(L, o, k);
		rc = tr_lua_to_msgpack(L, -1, &v->scratch);
		if (rc == TR_ENOMEM) {
			v->nomem = 1;
		} else if (rc != TR_OK) {
			diag(v, f->w, "%s: %s: a %s cannot be passed to a kind (values must be "
			     "strings, numbers, booleans or tables of them)", f->who, k,
			     luaL_typename(L, -1));
			bad = 1;
		}
		lua_pop(L, 1);
	}
	if (!bad && !v->nomem) {
		a->config = tr__malloc(v->scratch.len);
		if (a->config == NULL) {
			v->nomem = 1;
		} else {
			memcpy(a->config, v->scratch.data, v->scratch.len);
			a->config_len = v->scratch.len;
		}
	}
out:
	v->nnames = base;
}

/* "unknown kind 'ragg' (did you mean 'rag'? known kinds: ...)" */
static void diag_kind(vctx *v, where w, const char *who, const char *kind, const char *list)
{
	char copy[512], *save = NULL;
	const char *names[TR_KINDS_MAX + 8], *sg;
	size_t n = 0;

	snprintf(copy, sizeof(copy), "%s", list);
	for (char *t = strtok_r(copy, ", ", &save); t && n < sizeof(names) / sizeof(names[0]);
	     t = strtok_r(NULL, ", ", &save))
		names[n++] = t;
	sg = suggest(kind, names, n);
	if (sg != NULL)
		diag(v, w, "%s: unknown kind '%s' (did you mean '%s'? known kinds: %s)", who, kind, sg,
		     list);
	else
		diag(v, w, "%s: unknown kind '%s' (known kinds: %s)", who, kind, list);
}

/* on = { label = "gpu" } / { node = "n2" }: where a placed actor runs. */
static void build_on(fctx *f, int o, tr_actor_spec *a)
{
	static const char *const keys[] = {"label", "node"};
	lua_State *L = f->v->L;
	fctx fo;
	char b[64];
	int ty = rget(L, o, "on"), t = lua_gettop(L);

	if (ty == LUA_TNIL)
		goto out;
	subwho(&fo, f, ": on");
	if (ty != LUA_TTABLE) {
		diag(f->v, f->w, "%s: expected a table: on = { label = \"gpu\" } or on = { node = "
		     "\"n2\" }, got %s", fo.who, got(L, t, b, sizeof(b)));
		goto out;
	}
	size_t n0 = f->v->d->n;
	check_keys(&fo, t, keys, 2, 0, NULL);
	int given = want_str(&fo, t, "label", &a->on_label);
	given += want_str(&fo, t, "node", &a->on_node);
	if (!given && f->v->d->n == n0) /* else its unknown keys said enough */
		diag(f->v, f->w, "%s: needs label = \"...\" (nodes with that label) or node = "
		     "\"...\" (the node of that name)", fo.who);
out:
	lua_pop(L, 1);
}

static void build_actor(vctx *v, int d, where w, const char *name, tr_actor_spec *a)
{
	static const char *const lua_keys[] = {"name", "receive", "mailbox", "overflow",
	                                       "instances", "batch", "on"};
	/* receive is reported on its own for kind actors, not passed on */
	static const char *const kind_keys[] = {"name", "kind", "receive", "mailbox",
	                                        "overflow", "instances", "batch", "on"};
	/* keys that look like a misspelled one of these are not passed on
	 * ("name" is left out: short kind settings such as "mode" are near it;
	 * so is "on": two letters are near too many settings) */
	static const char *const common_keys[] = {"kind", "receive", "mailbox", "overflow",
	                                          "instances", "batch"};
	lua_State *L = v->L;
	fctx f = {v, w, ""};
	char b[64];
	int o, ov = 0, ty;

	a->receive_fn = -1;
	a->instances = 1;
	a->pos = srcpos(v, w);
	a->cfg = v->c;
	snprintf(f.who, sizeof(f.who), "actor '%s'", name);
	check_twice(v, d, f.who);
	rget(L, d, "opts");
	o = lua_gettop(L);
	if (lua_type(L, o) != LUA_TTABLE) {
		diag(v, w, "%s: expected a table: actor \"%s\" { kind = ... } or { receive = "
		     "function(msg, ctx) ... end }, got %s", f.who, name, got(L, o, b, sizeof(b)));
		lua_pop(L, 1);
		return;
	}
	ty = rget(L, o, "name");
	if (ty != LUA_TNIL && (ty != LUA_TSTRING || strcmp(lua_tostring(L, -1), name) != 0))
		diag(v, w, "%s: name: does not match the declared name '%s'", f.who, name);
	lua_pop(L, 1);

	ty = rget(L, o, "kind");
	if (ty == LUA_TNIL) {
		lua_pop(L, 1);
		check_keys(&f, o, lua_keys, 7, 0,
		           " (a Lua actor takes receive, mailbox, overflow, instances, batch, on)");
		ty = rget(L, o, "receive");
		if (ty == LUA_TNIL)
			diag(v, w, "%s: needs kind = \"...\" (a built-in actor) or receive = "
			     "function(msg, ctx) ... end (a Lua actor)", f.who);
		else if (ty != LUA_TFUNCTION)
			diag(v, w, "%s: receive: expected a function, got %s", f.who,
			     got(L, -1, b, sizeof(b)));
		else
			a->receive_fn = dint(L, d, "fn");
		lua_pop(L, 1);
	} else {
		if (ty != LUA_TSTRING) {
			diag(v, w, "%s: kind: expected a string, got %s", f.who, got(L, -1, b, sizeof(b)));
		} else if (!tr_kind_known(lua_tostring(L, -1))) {
			char list[512];
			tr_kind_list(list, sizeof(list));
			diag_kind(v, w, f.who, lua_tostring(L, -1), list);
		} else {
			a->kind = dup(v, lua_tostring(L, -1));
		}
		lua_pop(L, 1);
		if (rget(L, o, "receive") != LUA_TNIL)
			diag(v, w, "%s: receive: a kind actor has no receive function (drop kind = "
			     "... for a Lua actor)", f.who);
		lua_pop(L, 1);
		kind_config(&f, o, kind_keys, 8, common_keys, 6, a);
	}
	want_uint(&f, o, "mailbox", 1, 1u << 24, &a->mailbox);
	if (want_enum(&f, o, "overflow", overflow_names, 4, &ov))
		a->overflow = (uint8_t)ov;
	want_uint(&f, o, "instances", 1, 1024, &a->instances);
	want_uint(&f, o, "batch", 1, 65536, &a->batch);
	build_on(&f, o, a);
	/* The kind's own settings are checked once every declaration is in
	 * (check_kinds): a kind may name things declared later, as execute's
	 * `tools` does. */
	lua_pop(L, 1);
}

/* Runs each kind actor's settings check (kinds.h), in actor order, after
 * the declarations: the check may look at the whole config (a->cfg). */
static void check_kinds(vctx *v)
{
	tr_config *c = v->c;

	for (size_t i = 0; i < c->nactors && !v->nomem; i++) {
		tr_actor_spec *a = &c->actors[i];
		where w = {0, a->pos.line};
		char kerr[512];
		if (a->kind == NULL || a->name == NULL)
			continue;
		for (size_t f = 0; f < c->nfiles; f++)
			if (c->files[f] == a->pos.file)
				w.file = (int)f;
		kerr[0] = '\0';
		if (tr_kind_check(a, kerr, sizeof(kerr)) != TR_OK)
			diag(v, w, "%s", kerr[0] ? kerr : "invalid settings");
	}
}

/* ---- supervisors -------------------------------------------------------- */

#define WITHIN_MIN_US 1000ull                 /* 1 ms */
#define WITHIN_MAX_US (24ull * 3600000000ull) /* 24 h */

/* A supervisor's `within`: a duration from 1 ms to 24 h. The supervisor
 * counts restarts in whole milliseconds, and a window past a day no
 * longer describes a burst of crashes. */
static void want_window(fctx *f, int o, uint64_t *out)
{
	want_dur_in(f, o, "within", WITHIN_MIN_US, WITHIN_MAX_US, "1ms", "24h", out);
}

static void build_sup(vctx *v, int d, where w, const char *name, tr_supervisor_spec *s)
{
	static const char *const keys[] = {"strategy", "max_restarts", "within", "children"};
	lua_State *L = v->L;
	fctx f = {v, w, ""};
	char b[64];
	int o, st = 0, ty;
	size_t n;

	s->pos = srcpos(v, w);
	s->max_restarts = 3;
	s->within_us = 5000000;
	snprintf(f.who, sizeof(f.who), "supervisor '%s'", name);
	check_twice(v, d, f.who);
	rget(L, d, "opts");
	o = lua_gettop(L);
	if (lua_type(L, o) != LUA_TTABLE) {
		diag(v, w, "%s: expected a table: supervisor \"%s\" { children = { ... } }, got %s",
		     f.who, name, got(L, o, b, sizeof(b)));
		lua_pop(L, 1);
		return;
	}
	check_keys(&f, o, keys, 4, 0, NULL);
	if (want_enum(&f, o, "strategy", strategy_names, 3, &st))
		s->strategy = (uint8_t)st;
	want_uint(&f, o, "max_restarts", 0, 1000000, &s->max_restarts);
	want_window(&f, o, &s->within_us);
	ty = rget(L, o, "children");
	if (ty == LUA_TNIL) {
		diag(v, w, "%s: missing children = { \"actor\", ... }", f.who);
	} else if (ty != LUA_TTABLE) {
		diag(v, w, "%s: children: expected a list of names, got %s", f.who,
		     got(L, -1, b, sizeof(b)));
	} else if ((n = seq_count(L, lua_gettop(L))) == 0) {
		diag(v, w, "%s has no children", f.who);
	} else {
		int ci = lua_gettop(L);
		fctx fc;
		subwho(&fc, &f, ": children");
		check_keys(&fc, ci, NULL, 0, 1, NULL);
		check_holes(&fc, ci, n);
		s->children = tr__calloc(n, sizeof(char *));
		if (s->children == NULL) {
			v->nomem = 1;
		} else {
			for (size_t i = 0; i < n; i++) {
				lua_rawgeti(L, ci, (lua_Integer)i + 1);
				if (lua_type(L, -1) != LUA_TSTRING)
					diag(v, w, "%s: children: element %zu: expected a name, got %s", f.who,
					     i + 1, got(L, -1, b, sizeof(b)));
				else
					s->children[s->nchildren++] = dup(v, lua_tostring(L, -1));
				lua_pop(L, 1);
			}
		}
	}
	lua_pop(L, 2);
}

/* ---- tenants ------------------------------------------------------------- */

/*
 * tenant "acme" { keys = { sha256 = "<hex>" } or { { sha256 = ... }, ... },
 * rate = "50/s", burst = 100 }. A key is only ever its SHA-256: the config
 * is read by people and tools that must not learn the keys, so anything
 * that looks like a raw key is refused with a hint, and no diagnostic
 * quotes what was given as a key.
 */
#define KEY_FORM "{ sha256 = \"<64 hex digits>\" }"
#define RAW_KEY_HINT "raw keys are never accepted: put the key's SHA-256, e.g. " \
	"printf %s KEY | sha256sum"
#define RATE_HINT "a number per s, m or h: \"50/s\", \"100/m\", \"0.5/s\""
#define RATE_MAX 1e6        /* requests per second */
#define BURST_MAX 1000000u

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* One key entry (KEY_FORM) at idx, appended to tenant ti's keys (room for
 * it is there); f names the entry ("tenant 'a': keys: element 2"). */
static void key_entry(fctx *f, int idx, size_t ti)
{
	static const char *const keys[] = {"sha256"};
	vctx *v = f->v;
	lua_State *L = v->L;
	tr_tenant_spec *t = &v->c->tenants[ti];
	unsigned char h[32];
	char b[64];
	size_t n0 = v->d->n, len;
	const char *s;
	int ty;

	if (lua_type(L, idx) != LUA_TTABLE) {
		int str = lua_type(L, idx) == LUA_TSTRING;
		diag(v, f->w, "%s: expected %s, got %s%s%s%s", f->who, KEY_FORM, got(L, idx, b, sizeof(b)),
		     str ? " (" : "", str ? RAW_KEY_HINT : "", str ? ")" : "");
		return;
	}
	check_keys(f, idx, keys, 1, 0, " (a key is " KEY_FORM "; " RAW_KEY_HINT ")");
	ty = rget(L, idx, "sha256");
	if (ty == LUA_TNIL) {
		if (v->d->n == n0) /* else its unknown keys said enough */
			diag(v, f->w, "%s: missing sha256 = \"<64 hex digits>\"", f->who);
		goto out;
	}
	if (ty != LUA_TSTRING) {
		diag(v, f->w, "%s: sha256: expected 64 hex digits, got %s", f->who,
		     got(L, -1, b, sizeof(b)));
		goto out;
	}
	s = lua_tostring(L, -1);
	len = lua_rawlen(L, -1);
	if (len != 64) {
		diag(v, f->w, "%s: sha256: expected 64 hex digits, got %zu character%s (%s)", f->who,
		     len, len == 1 ? "" : "s", RAW_KEY_HINT);
		goto out;
	}
	for (size_t i = 0; i < 64; i++) {
		int hi = hexval(s[i]);
		if (hi < 0) {
			diag(v, f->w, "%s: sha256: character %zu is not a hex digit (0-9, a-f)", f->who,
			     i + 1);
			goto out;
		}
		if (i % 2 == 0)
			h[i / 2] = (unsigned char)(hi << 4);
		else
			h[i / 2] |= (unsigned char)hi;
	}
	for (size_t k = 0; k < t->nkeys; k++) {
		if (memcmp(t->keys[k], h, 32) == 0) {
			diag(v, f->w, "%s: the same key is listed twice", f->who);
			goto out;
		}
	}
	/* A key names one tenant: a request that presents it must not have
	 * two answers. Linear: configs hold tens of keys, not millions. */
	for (size_t o = 0; o < ti; o++) {
		const tr_tenant_spec *ot = &v->c->tenants[o];
		for (size_t k = 0; k < ot->nkeys; k++) {
			if (memcmp(ot->keys[k], h, 32) == 0) {
				diag(v, f->w, "%s: already a key of tenant '%s' (%s:%d); a key must "
				     "belong to one tenant", f->who, ot->name, ot->pos.file, ot->pos.line);
				goto out;
			}
		}
	}
	memcpy(t->keys[t->nkeys++], h, 32);
out:
	lua_pop(L, 1);
}

static void build_keys(fctx *f, int o, size_t ti)
{
	vctx *v = f->v;
	lua_State *L = v->L;
	tr_tenant_spec *t = &v->c->tenants[ti];
	char b[64];
	int ty = rget(L, o, "keys"), ki = lua_gettop(L), single;
	size_t n;
	fctx fk;

	subwho(&fk, f, ": keys");
	if (ty == LUA_TNIL) {
		diag(v, f->w, "%s: missing keys = %s (the SHA-256 of each API key, e.g. printf %%s "
		     "KEY | sha256sum)", f->who, KEY_FORM);
		goto out;
	}
	if (ty != LUA_TTABLE) {
		int str = ty == LUA_TSTRING;
		diag(v, f->w, "%s: expected %s or a list of them, got %s%s%s%s", fk.who, KEY_FORM,
		     got(L, ki, b, sizeof(b)), str ? " (" : "", str ? RAW_KEY_HINT : "",
		     str ? ")" : "");
		goto out;
	}
	lua_pushnil(L);
	if (lua_next(L, ki) == 0) {
		diag(v, f->w, "%s: the list is empty (a tenant needs at least one key)", fk.who);
		goto out;
	}
	lua_pop(L, 2);
	n = seq_count(L, ki);
	single = n == 0; /* { sha256 = ... }, or { key = ... } meant as one */
	if (!single) {
		single = rget(L, ki, "sha256") != LUA_TNIL;
		lua_pop(L, 1);
	}
	if (single) {
		if ((t->keys = tr__calloc(1, sizeof(*t->keys))) == NULL)
			v->nomem = 1;
		else
			key_entry(&fk, ki, ti);
		goto out;
	}
	check_keys(&fk, ki, NULL, 0, 1, " (a key is " KEY_FORM "; " RAW_KEY_HINT ")");
	check_holes(&fk, ki, n);
	if ((t->keys = tr__calloc(n, sizeof(*t->keys))) == NULL) {
		v->nomem = 1;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		fctx fe;
		subwho(&fe, &fk, ": element %zu", i + 1);
		lua_rawgeti(L, ki, (lua_Integer)i + 1);
		key_entry(&fe, lua_gettop(L), ti);
		lua_pop(L, 1);
	}
out:
	lua_pop(L, 1);
}

/* Parses "50/s", "100/m", "0.5/h" into requests per second. 0 on success,
 * -1 bad. */
static int parse_rate(const char *s, double *per_s)
{
	double v = 0, scale = 0.1;
	int nd = 0;
	const char *p = s;

	while (*p >= '0' && *p <= '9') {
		v = v * 10 + (*p++ - '0');
		nd++;
	}
	if (*p == '.') {
		p++;
		while (*p >= '0' && *p <= '9') {
			v += (*p++ - '0') * scale;
			scale /= 10;
			nd++;
		}
	}
	if (nd == 0 || *p++ != '/')
		return -1;
	if (strcmp(p, "s") == 0)
		*per_s = v;
	else if (strcmp(p, "m") == 0)
		*per_s = v / 60;
	else if (strcmp(p, "h") == 0)
		*per_s = v / 3600;
	else
		return -1;
	return 0;
}

static void build_rate(fctx *f, int o, tr_tenant_spec *t)
{
	vctx *v = f->v;
	lua_State *L = v->L;
	char b[64];
	double r = 0;
	int ty = rget(L, o, "rate"), tb;

	if (ty == LUA_TSTRING) {
		const char *s = lua_tostring(L, -1);
		if (parse_rate(s, &r) != 0 || strlen(s) != lua_rawlen(L, -1))
			diag(v, f->w, "%s: rate: bad rate '%s' (%s)", f->who, s, RATE_HINT);
		else if (r <= 0)
			diag(v, f->w, "%s: rate: must be more than 0 (leave rate out for no limit)",
			     f->who);
		else if (r > RATE_MAX)
			diag(v, f->w, "%s: rate: must be at most %.0f/s, got '%s'", f->who, RATE_MAX, s);
		else
			t->rate = r;
	} else if (ty != LUA_TNIL) {
		diag(v, f->w, "%s: rate: expected a rate string (%s), got %s", f->who, RATE_HINT,
		     got(L, -1, b, sizeof(b)));
	}
	lua_pop(L, 1);
	tb = rget(L, o, "burst");
	lua_pop(L, 1);
	if (tb != LUA_TNIL && ty == LUA_TNIL)
		diag(v, f->w, "%s: burst: only with a rate (a tenant without one is not limited)",
		     f->who);
	else
		want_uint(f, o, "burst", 1, BURST_MAX, &t->burst);
	if (t->rate > 0 && t->burst == 0)
		t->burst = t->rate < 1 ? 1 : (uint32_t)ceil(t->rate);
}

static void build_tenant(vctx *v, int d, where w, const char *name, size_t ti)
{
	static const char *const keys[] = {"keys", "rate", "burst"};
	lua_State *L = v->L;
	tr_tenant_spec *t = &v->c->tenants[ti];
	fctx f = {v, w, ""};
	char b[64];
	int o;

	t->pos = srcpos(v, w);
	snprintf(f.who, sizeof(f.who), "tenant '%s'", name);
	check_twice(v, d, f.who);
	rget(L, d, "opts");
	o = lua_gettop(L);
	if (lua_type(L, o) != LUA_TTABLE) {
		diag(v, w, "%s: expected a table: tenant \"%s\" { keys = %s, rate = \"50/s\" }, got %s",
		     f.who, name, KEY_FORM, got(L, o, b, sizeof(b)));
		lua_pop(L, 1);
		return;
	}
	check_keys(&f, o, keys, 3, 0, NULL);
	build_keys(&f, o, ti);
	build_rate(&f, o, t);
	lua_pop(L, 1);
}

/* ---- tools ---------------------------------------------------------------- */

/*
 * tool "book" { args = { date = "string", slot = "int", note = "string?" },
 *               handler = function(args, ctx) ... end, timeout = "500ms",
 *               description = "...", sql = "..." }
 * Tools have their own namespace (like tenants); the execute kind runs
 * them. An arg type is one of arg_types, with a trailing "?" for an
 * optional arg.
 */
static const char *const arg_types[] = {"string", "int", "number", "bool", "table"};
static const uint8_t arg_type_ids[] = {TR_ARG_STRING, TR_ARG_INT, TR_ARG_NUMBER, TR_ARG_BOOL,
                                       TR_ARG_TABLE};
#define ARG_TYPES_HINT "string, int, number, bool or table, with a trailing ? for an " \
	"optional arg"

/* Other languages' names for the types: a hint, since they are too far
 * from ours for the edit distance ("integer" -> "int"). */
static const char *type_alias(const char *s)
{
	static const struct {
		const char *alias, *type;
	} al[] = {{"integer", "int"},  {"boolean", "bool"},  {"float", "number"},
	          {"double", "number"}, {"str", "string"},   {"text", "string"},
	          {"map", "table"},     {"list", "table"},   {"array", "table"},
	          {"object", "table"},  {"dict", "table"}};
	for (size_t i = 0; i < sizeof(al) / sizeof(al[0]); i++)
		if (strcmp(s, al[i].alias) == 0)
			return al[i].type;
	return suggest(s, arg_types, sizeof(arg_types) / sizeof(arg_types[0]));
}

/* The arg type named at idx ("int", "string?") into *arg; reports and
 * returns 0 when bad. `an` is the arg's name. */
static int arg_type(fctx *f, int idx, const char *an, tr_tool_arg *arg)
{
	lua_State *L = f->v->L;
	char b[64], base[16];
	const char *s, *sg;
	size_t len;

	if (lua_type(L, idx) != LUA_TSTRING) {
		diag(f->v, f->w, "%s: args: '%s': expected a type name (%s), got %s", f->who, an,
		     ARG_TYPES_HINT, got(L, idx, b, sizeof(b)));
		return 0;
	}
	s = lua_tolstring(L, idx, &len);
	arg->optional = len > 0 && s[len - 1] == '?';
	if (len - arg->optional < sizeof(base) && strlen(s) == len) {
		memcpy(base, s, len - arg->optional);
		base[len - arg->optional] = '\0';
		for (size_t i = 0; i < sizeof(arg_types) / sizeof(arg_types[0]); i++) {
			if (strcmp(base, arg_types[i]) == 0) {
				arg->type = arg_type_ids[i];
				return 1;
			}
		}
		if ((sg = type_alias(base)) != NULL) {
			diag(f->v, f->w, "%s: args: '%s': unknown type '%s' (did you mean '%s%s'?)",
			     f->who, an, s, sg, arg->optional ? "?" : "");
			return 0;
		}
	}
	diag(f->v, f->w, "%s: args: '%s': unknown type '%.40s' (types: %s)", f->who, an, s,
	     ARG_TYPES_HINT);
	return 0;
}

/* args = { name = "type", ... } at o into t (sorted by name). */
static void build_tool_args(fctx *f, int o, tr_tool_spec *t)
{
	vctx *v = f->v;
	lua_State *L = v->L;
	size_t base = v->nnames, n;
	char b[64];
	int ty = rget(L, o, "args"), ai = lua_gettop(L), bad = 0;

	if (ty == LUA_TNIL)
		goto out;
	if (ty != LUA_TTABLE) {
		diag(v, f->w, "%s: args: expected a table of name = \"type\" (%s), got %s", f->who,
		     ARG_TYPES_HINT, got(L, ai, b, sizeof(b)));
		goto out;
	}
	lua_pushnil(L);
	while (lua_next(L, ai)) {
		lua_pop(L, 1);
		if (lua_type(L, -1) != LUA_TSTRING) {
			diag(v, f->w, "%s: args: expected name = \"type\" pairs, got a %s key%s%s", f->who,
			     luaL_typename(L, -1), lua_type(L, -1) == LUA_TNUMBER ? " " : "",
			     lua_type(L, -1) == LUA_TNUMBER ? got(L, -1, b, sizeof(b)) : "");
			bad = 1;
		} else {
			names_push(v, lua_tostring(L, -1));
		}
	}
	sort_names(v, base);
	n = v->nnames - base;
	if (n > TR_TOOL_ARGS_MAX) {
		diag(v, f->w, "%s: args: more than %d args", f->who, TR_TOOL_ARGS_MAX);
		goto out;
	}
	if (n == 0 || bad)
		goto out;
	t->args = tr__calloc(n, sizeof(tr_tool_arg));
	if (t->args == NULL) {
		v->nomem = 1;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		const char *an = v->names[base + i];
		tr_tool_arg arg = {NULL, 0, false};
		if (!name_ok(an, strlen(an))) {
			diag(v, f->w, "%s: args: arg name '%.63s': use 1 to %d letters, digits, '_', "
			     "'-' or '.'", f->who, an, NAME_MAX_LEN);
			continue;
		}
		rget(L, ai, an);
		if (arg_type(f, lua_gettop(L), an, &arg)) {
			arg.name = dup(v, an);
			if (arg.name != NULL)
				t->args[t->nargs++] = arg;
		}
		lua_pop(L, 1);
	}
out:
	v->nnames = base;
	lua_pop(L, 1);
}


/* An SQL tool's params (the args filling $1, $2, ...): each an arg of
 * the tool, every arg used once, none a table. */
static void build_sql_params(fctx *f, int o, tr_tool_spec *t)
{
	vctx *v = f->v;
	build_names(f, o, "params", &t->params, &t->nparams);
	if (t->nparams == 0 && t->nargs == 1) {
		t->params = tr__calloc(1, sizeof(char *));
		if (t->params == NULL || (t->params[0] = dup(v, t->args[0].name)) == NULL) {
			v->nomem = 1;
			return;
		}
		t->nparams = 1;
	} else if (t->nparams == 0 && t->nargs > 1) {
		diag(v, f->w, "%s: params: a SQL tool with several args needs params = { \"%s\", ... } "
		     "naming the arg of $1, $2, ... in order", f->who, t->args[0].name);
		return;
	}
	for (size_t i = 0; i < t->nparams; i++) {
		const tr_tool_arg *a = NULL;
		for (size_t j = 0; j < t->nargs; j++)
			if (strcmp(t->args[j].name, t->params[i]) == 0)
				a = &t->args[j];
		if (a == NULL)
			diag(v, f->w, "%s: params: '%s' (for $%zu) is not one of the tool's args", f->who,
			     t->params[i], i + 1);
		else if (a->type == TR_ARG_TABLE)
			diag(v, f->w, "%s: params: '%s' is a table, which cannot be a SQL parameter",
			     f->who, t->params[i]);
		for (size_t j = 0; j < i; j++)
			if (strcmp(t->params[j], t->params[i]) == 0)
				diag(v, f->w, "%s: params: '%s' is given twice (use $%zu again in the SQL "
				     "instead)", f->who, t->params[i], j + 1);
	}
	for (size_t j = 0; j < t->nargs; j++) {
		size_t i;
		for (i = 0; i < t->nparams; i++)
			if (strcmp(t->args[j].name, t->params[i]) == 0)
				break;
		if (i == t->nparams && t->nparams > 0)
			diag(v, f->w, "%s: args: '%s' is not in params, so the SQL never sees it", f->who,
			     t->args[j].name);
	}
}

static void build_tool(vctx *v, int d, where w, const char *name, tr_tool_spec *t)
{
	static const char *const keys[] = {"args", "handler", "timeout", "description", "sql",
	                                   "params"};
	lua_State *L = v->L;
	fctx f = {v, w, ""};
	char b[64];
	int o, ty;

	t->pos = srcpos(v, w);
	t->handler_fn = -1;
	snprintf(f.who, sizeof(f.who), "tool '%s'", name);
	check_twice(v, d, f.who);
	rget(L, d, "opts");
	o = lua_gettop(L);
	if (lua_type(L, o) != LUA_TTABLE) {
		diag(v, w, "%s: expected a table: tool \"%s\" { args = { ... }, handler = "
		     "function(args, ctx) ... end }, got %s", f.who, name, got(L, o, b, sizeof(b)));
		lua_pop(L, 1);
		return;
	}
	check_keys(&f, o, keys, sizeof(keys) / sizeof(keys[0]), 0,
	           " (a tool takes args, handler, timeout, description, sql, params)");
	build_tool_args(&f, o, t);
	want_dur_in(&f, o, "timeout", MS_US, HOUR_US, "1ms", "1h", &t->timeout_us);
	want_str(&f, o, "description", &t->description);
	want_str(&f, o, "sql", &t->sql);
	ty = rget(L, o, "handler");
	if (ty == LUA_TFUNCTION) {
		t->handler_fn = dint(L, d, "fn");
		if (t->sql != NULL)
			diag(v, w, "%s: give handler or sql, not both", f.who);
		if (rget(L, o, "params") != LUA_TNIL)
			diag(v, w, "%s: params: only SQL tools (sql = \"...\") take params", f.who);
		lua_pop(L, 1);
	} else if (ty != LUA_TNIL) {
		diag(v, w, "%s: handler: expected a function(args, ctx), got %s", f.who,
		     got(L, -1, b, sizeof(b)));
	} else if (t->sql != NULL) {
		build_sql_params(&f, o, t);
	} else {
		diag(v, w, "%s: needs handler = function(args, ctx) ... end (it returns the tool's "
		     "result)", f.who);
	}
	lua_pop(L, 2);
}

/* ---- steps --------------------------------------------------------------- */

static void build_list(vctx *v, int t, tr_step_list *out, fctx *f, int depth);

static const char *const retry_names[] = {"timeout", "error", "overload", "rejected", "crashed"};
static const uint32_t retry_bits[] = {TR_RETRY_TIMEOUT, TR_RETRY_ERROR, TR_RETRY_OVERLOAD,
                                      TR_RETRY_OVERLOAD, TR_RETRY_CRASHED};

/* A set of names (a list, or one string) into a bit mask: key `key` of
 * the table at o, each name one of names[0..n) with bit bits[i]. The mask
 * is left as it was when the key is absent. `what` names an element in
 * messages ("error class", plural `whats`). */
static void build_mask(fctx *f, int o, const char *key, const char *const *names,
                       const uint32_t *bits, size_t nnames, const char *what,
                       const char *whats, uint32_t *mask)
{
	lua_State *L = f->v->L;
	char b[64], known[160];
	int ty = rget(L, o, key), t = lua_gettop(L);
	size_t n = 1, kl = 0;

	known[0] = '\0';
	for (size_t j = 0; j < nnames; j++)
		kl += (size_t)snprintf(known + kl, kl < sizeof(known) ? sizeof(known) - kl : 0, "%s%s",
		                       j ? ", " : "", names[j]);
	if (ty == LUA_TNIL)
		goto out;
	if (ty != LUA_TTABLE && ty != LUA_TSTRING) {
		diag(f->v, f->w, "%s: %s: expected a list of %s (%s), got %s", f->who, key, whats,
		     known, got(L, t, b, sizeof(b)));
		goto out;
	}
	if (ty == LUA_TTABLE) {
		fctx fr;
		char sub[64];
		snprintf(sub, sizeof(sub), ": %s", key);
		subwho(&fr, f, sub);
		n = seq_count(L, t);
		check_keys(&fr, t, NULL, 0, 1, NULL);
		check_holes(&fr, t, n);
	}
	*mask = 0;
	for (size_t i = 0; i < n; i++) {
		const char *s, *sg;
		size_t j;
		if (ty == LUA_TTABLE)
			lua_rawgeti(L, t, (lua_Integer)i + 1);
		else
			lua_pushvalue(L, t);
		if (lua_type(L, -1) != LUA_TSTRING) {
			diag(f->v, f->w, "%s: %s: element %zu: expected a string, got %s", f->who, key,
			     i + 1, got(L, -1, b, sizeof(b)));
			lua_pop(L, 1);
			continue;
		}
		s = lua_tostring(L, -1);
		for (j = 0; j < nnames; j++)
			if (strcmp(s, names[j]) == 0)
				break;
		if (j < nnames)
			*mask |= bits[j];
		else if ((sg = suggest(s, names, nnames)) != NULL)
			diag(f->v, f->w, "%s: %s: unknown %s '%s' (did you mean '%s'?)", f->who, key, what,
			     s, sg);
		else
			diag(f->v, f->w, "%s: %s: unknown %s '%s' (known: %s)", f->who, key, what, s,
			     known);
		lua_pop(L, 1);
	}
out:
	lua_pop(L, 1);
}

static void build_retry_on(fctx *f, int o, uint32_t *mask)
{
	build_mask(f, o, "retry_on", retry_names, retry_bits, 5, "error class", "error classes",
	           mask);
}

/* A list of message field names (or one name), key `key` of the table at
 * t: *out (owned, NULL when empty) and *n. */
static void build_names(fctx *f, int t, const char *key, char ***out, size_t *n)
{
	lua_State *L = f->v->L;
	vctx *v = f->v;
	char b[64];
	int kt = rget(L, t, key);
	if (kt == LUA_TSTRING) {
		*out = tr__calloc(1, sizeof(char *));
		if (*out == NULL)
			v->nomem = 1;
		else if (((*out)[0] = dup(v, lua_tostring(L, -1))) != NULL)
			*n = 1;
	} else if (kt == LUA_TTABLE) {
		int ki = lua_gettop(L);
		size_t k = seq_count(L, ki);
		fctx fk;
		char sub[64];
		snprintf(sub, sizeof(sub), ": %s", key);
		subwho(&fk, f, sub);
		check_keys(&fk, ki, NULL, 0, 1, NULL);
		check_holes(&fk, ki, k);
		*out = k ? tr__calloc(k, sizeof(char *)) : NULL;
		if (k && *out == NULL)
			v->nomem = 1;
		for (size_t i = 0; *out && i < k; i++) {
			lua_rawgeti(L, ki, (lua_Integer)i + 1);
			if (lua_type(L, -1) != LUA_TSTRING)
				diag(v, f->w, "%s: %s: element %zu: expected a field name, got %s", f->who,
				     key, i + 1, got(L, -1, b, sizeof(b)));
			else if (((*out)[*n] = dup(v, lua_tostring(L, -1))) != NULL)
				(*n)++;
			lua_pop(L, 1);
		}
	} else if (kt != LUA_TNIL) {
		diag(v, f->w, "%s: %s: expected a list of field names, got %s", f->who, key,
		     got(L, -1, b, sizeof(b)));
	}
	lua_pop(L, 1);
}

static void build_backoff(fctx *f, int o, tr_backoff *bo)
{
	static const char *const keys[] = {"base", "max", "jitter"};
	lua_State *L = f->v->L;
	char b[64];
	int ty = rget(L, o, "backoff"), t = lua_gettop(L);

	if (ty == LUA_TTABLE) {
		fctx fb;
		subwho(&fb, f, ": backoff");
		check_keys(&fb, t, keys, 3, 0, NULL);
		want_dur(&fb, t, "base", &bo->base_us);
		want_dur(&fb, t, "max", &bo->max_us);
		want_bool(&fb, t, "jitter", &bo->jitter);
		if (bo->base_us > bo->max_us)
			diag(f->v, f->w, "%s: backoff: base is larger than max", f->who);
	} else if (ty != LUA_TNIL) {
		diag(f->v, f->w, "%s: backoff: expected a table like { base = \"10ms\", max = \"1s\", "
		     "jitter = true }, got %s", f->who, got(L, t, b, sizeof(b)));
	}
	lua_pop(L, 1);
}

static void build_cache(fctx *f, int o, tr_cache_spec *cs)
{
	static const char *const keys[] = {"ttl", "key", "capacity", "store"};
	static const char *const stores[] = {"memory", "redis"};
	lua_State *L = f->v->L;
	vctx *v = f->v;
	char b[64];
	int ty = rget(L, o, "cache"), t = lua_gettop(L);
	fctx fc;

	subwho(&fc, f, ": cache");
	if (ty == LUA_TNIL)
		goto out;
	if (ty != LUA_TTABLE) {
		diag(v, f->w, "%s: expected a table like { ttl = \"60s\", key = { \"text\" } }, got %s",
		     fc.who, got(L, t, b, sizeof(b)));
		goto out;
	}
	cs->on = true;
	cs->capacity = 10000;
	check_keys(&fc, t, keys, 4, 0, NULL);
	char *store = NULL;
	if (want_str(&fc, t, "store", &store) && store != NULL) {
		if (strcmp(store, "redis") == 0)
			cs->store = TR_CACHE_REDIS;
		else if (strcmp(store, "memory") != 0)
			diag(v, f->w, "%s: store: expected \"memory\" or \"redis\", got '%s'%s", fc.who,
			     store, suggest(store, stores, 2) ? " (a typo?)" : "");
		tr__free(store);
	}
	if (!want_dur(&fc, t, "ttl", &cs->ttl_us))
		diag(v, f->w, "%s: missing ttl (e.g. ttl = \"60s\")", fc.who);
	want_uint(&fc, t, "capacity", 1, 10000000, &cs->capacity);
	build_names(&fc, t, "key", &cs->keys, &cs->nkeys);
out:
	lua_pop(L, 1);
}

/* The `when` of a step, route or parallel: the number given by the DSL.
 * On a route too `when` is always the predicate, never a branch. */
static void build_when(fctx *f, int d, int o, int *when_fn)
{
	lua_State *L = f->v->L;
	char b[64];
	int ty = rget(L, o, "when");

	if (ty == LUA_TFUNCTION)
		*when_fn = dint(L, d, "fn");
	else if (ty != LUA_TNIL)
		diag(f->v, f->w, "%s: when: expected a function(msg) returning true or false, got %s",
		     f->who, got(L, -1, b, sizeof(b)));
	lua_pop(L, 1);
}

static void build_call(vctx *v, int d, int o, tr_step *s, fctx *f)
{
	static const char *const keys[] = {"timeout", "first_byte_timeout", "retries",
	                                   "retry_on", "backoff", "fallback",
	                                   "cache", "coalesce", "when"};
	lua_State *L = v->L;

	s->u.call.timeout_us = 1000000;
	s->u.call.retry_on = TR_RETRY_DEFAULT;
	s->u.call.backoff = (tr_backoff){10000, 1000000, true};
	rget(L, d, "name");
	s->u.call.actor = dup(v, lua_tostring(L, -1));
	lua_pop(L, 1);
	if (s->u.call.actor != NULL)
		check_actor_ref(f, NULL, s->u.call.actor);
	check_keys(f, o, keys, sizeof(keys) / sizeof(keys[0]), 0, NULL);
	want_dur(f, o, "timeout", &s->u.call.timeout_us);
	want_dur(f, o, "first_byte_timeout", &s->u.call.first_byte_timeout_us);
	want_uint(f, o, "retries", 0, 100, &s->u.call.retries);
	build_retry_on(f, o, &s->u.call.retry_on);
	build_backoff(f, o, &s->u.call.backoff);
	if (want_str(f, o, "fallback", &s->u.call.fallback) && s->u.call.fallback != NULL)
		check_actor_ref(f, "fallback", s->u.call.fallback);
	build_cache(f, o, &s->u.call.cache);
	want_bool(f, o, "coalesce", &s->u.call.coalesce);
	build_when(f, d, o, &s->when_fn);
}

static void build_route(vctx *v, int d, int o, tr_step *s, fctx *f, int depth)
{
	lua_State *L = v->L;
	size_t base = v->nnames, nb;
	int ty;
	char b[64];

	rget(L, d, "name");
	s->u.route.field = dup(v, lua_tostring(L, -1));
	lua_pop(L, 1);
	build_when(f, d, o, &s->when_fn);
	/* branches: every string key but default and when */
	lua_pushnil(L);
	while (lua_next(L, o)) {
		if (lua_type(L, -2) != LUA_TSTRING) {
			diag(v, f->w, "%s: branch keys must be field values (strings), got %s %s", f->who,
			     luaL_typename(L, -2), got(L, -2, b, sizeof(b)));
		} else if (strcmp(lua_tostring(L, -2), "default") != 0 &&
		           strcmp(lua_tostring(L, -2), "when") != 0) {
			names_push(v, lua_tostring(L, -2));
		}
		lua_pop(L, 1);
	}
	nb = v->nnames - base;
	sort_names(v, base);
	if (nb > 0) {
		s->u.route.branches = tr__calloc(nb, sizeof(tr_route_branch));
		if (s->u.route.branches == NULL) {
			v->nomem = 1;
			nb = 0;
		}
	}
	for (size_t i = 0; i < nb; i++) {
		tr_route_branch *br = &s->u.route.branches[i];
		const char *val = v->names[base + i];
		fctx fb;
		br->pos = srcpos(v, f->w);
		br->value = dup(v, val);
		s->u.route.nbranches++;
		subwho(&fb, f, ": branch '%s'", val);
		rget(L, o, val);
		build_list(v, lua_gettop(L), &br->steps, &fb, depth + 1);
		lua_pop(L, 1);
	}
	v->nnames = base;
	ty = rget(L, o, "default");
	if (ty == LUA_TNIL) {
		diag(v, f->w, "%s: missing default = { ... } (the steps for any other value)", f->who);
	} else {
		fctx fd;
		subwho(&fd, f, ": default");
		build_list(v, lua_gettop(L), &s->u.route.dflt, &fd, depth + 1);
	}
	lua_pop(L, 1);
}

static void build_parallel(vctx *v, int d, int o, tr_step *s, fctx *f, int depth)
{
	static const char *const keys[] = {"join", "when"};
	lua_State *L = v->L;
	size_t n = seq_count(L, o);
	char b[64];
	int ty;

	check_keys(f, o, keys, 2, 1, NULL);
	check_holes(f, o, n);
	build_when(f, d, o, &s->when_fn);
	if (n == 0) {
		diag(v, f->w, "%s has no branches: parallel { {step ...}, {step ...}, join = ... }",
		     f->who);
	} else {
		s->u.par.branches = tr__calloc(n, sizeof(tr_step_list));
		if (s->u.par.branches == NULL)
			v->nomem = 1;
		for (size_t i = 0; s->u.par.branches && i < n; i++) {
			fctx fb;
			subwho(&fb, f, ": branch %zu", i + 1);
			s->u.par.nbranches++;
			lua_rawgeti(L, o, (lua_Integer)i + 1);
			build_list(v, lua_gettop(L), &s->u.par.branches[i], &fb, depth + 1);
			lua_pop(L, 1);
		}
	}
	ty = rget(L, o, "join");
	if (ty == LUA_TSTRING && strcmp(lua_tostring(L, -1), "all") == 0) {
		s->u.par.join = TR_JOIN_ALL;
	} else if (ty == LUA_TSTRING && strcmp(lua_tostring(L, -1), "first") == 0) {
		s->u.par.join = TR_JOIN_FIRST;
	} else if (ty == LUA_TNUMBER && whole(L, -1)) {
		lua_Integer j = whole_value(L, -1);
		if (n > 0 && (j < 1 || (size_t)j > n))
			diag(v, f->w, "%s: join = %lld is out of range (1..%zu, the number of branches)",
			     f->who, (long long)j, n);
		s->u.par.join = TR_JOIN_N;
		s->u.par.join_n = j >= 1 && j <= (lua_Integer)UINT32_MAX ? (uint32_t)j : 0;
	} else if (ty != LUA_TNIL) {
		diag(v, f->w, "%s: join: expected \"all\", \"first\" or a number of branches, got %s%s%s",
		     f->who, ty == LUA_TSTRING ? "'" : "", ty == LUA_TSTRING ? lua_tostring(L, -1)
		                                                               : got(L, -1, b, sizeof(b)),
		     ty == LUA_TSTRING ? "'" : "");
	}
	lua_pop(L, 1);
}

/* One element of a step list: the descriptor at idx, number i (1-based)
 * in the list described by `outer`. */
static void build_step(vctx *v, int idx, tr_step *s, fctx *outer, size_t i, int depth)
{
	lua_State *L = v->L;
	const char *k = desc_kind(L, idx);
	fctx f = {v, outer->w, ""};
	char b[64];
	int o, ty;

	s->when_fn = -1;
	if (k == NULL || (strcmp(k, "step") != 0 && strcmp(k, "route") != 0 &&
	                  strcmp(k, "parallel") != 0)) {
		if (lua_type(L, idx) == LUA_TFUNCTION)
			diag(v, outer->w, "%s: element %zu: expected step, route or parallel, got a "
			     "function (missing { ... } after step \"name\"?)", outer->who, i);
		else if (k != NULL)
			diag(v, outer->w, "%s: element %zu: %s cannot be used as a step", outer->who, i,
			     k);
		else
			diag(v, outer->w, "%s: element %zu: expected step, route or parallel, got %s",
			     outer->who, i, got(L, idx, b, sizeof(b)));
		return;
	}
	f.w = wof(L, idx);
	if (depth > TR_STEP_NEST_MAX) {
		diag(v, f.w, "%s: steps nested deeper than %d (or a table that contains itself)",
		     outer->who, TR_STEP_NEST_MAX);
		return;
	}
	ty = rget(L, idx, "name");
	if (strcmp(k, "parallel") == 0) {
		snprintf(f.who, sizeof(f.who), "parallel");
	} else if (ty != LUA_TSTRING || lua_rawlen(L, -1) == 0) {
		diag(v, f.w, "%s: expected a %s: %s \"name\" { ... }, got %s", k,
		     strcmp(k, "step") == 0 ? "actor name" : "message field name", k,
		     got(L, -1, b, sizeof(b)));
		lua_pop(L, 1);
		return;
	} else {
		snprintf(f.who, sizeof(f.who), "%s '%s'", k, lua_tostring(L, -1));
	}
	lua_pop(L, 1);
	check_twice(v, idx, f.who);
	rget(L, idx, "opts");
	o = lua_gettop(L);
	if (lua_type(L, o) != LUA_TTABLE) {
		diag(v, f.w, "%s: expected an options table, got %s", f.who, got(L, o, b, sizeof(b)));
		lua_pop(L, 1);
		return;
	}
	if (strcmp(k, "step") == 0) {
		s->kind = TR_STEP_CALL;
		s->pos = srcpos(v, f.w);
		build_call(v, idx, o, s, &f);
	} else if (strcmp(k, "route") == 0) {
		s->kind = TR_STEP_ROUTE;
		s->pos = srcpos(v, f.w);
		build_route(v, idx, o, s, &f, depth);
	} else {
		s->kind = TR_STEP_PARALLEL;
		s->pos = srcpos(v, f.w);
		build_parallel(v, idx, o, s, &f, depth);
	}
	lua_pop(L, 1);
}

/* A list of steps at t: one descriptor, or a table of them. */
static void build_list(vctx *v, int t, tr_step_list *out, fctx *f, int depth)
{
	lua_State *L = v->L;
	size_t n;
	char b[64];

	luaL_checkstack(L, 16, "steps");
	if (desc_kind(L, t) != NULL) {
		out->v = tr__calloc(1, sizeof(tr_step));
		if (out->v == NULL) {
			v->nomem = 1;
			return;
		}
		out->n = 1;
		build_step(v, t, &out->v[0], f, 1, depth);
		return;
	}
	if (lua_type(L, t) != LUA_TTABLE) {
		diag(v, f->w, "%s: expected a step or a list of steps, got %s", f->who,
		     got(L, t, b, sizeof(b)));
		return;
	}
	if (depth > TR_STEP_NEST_MAX) {
		diag(v, f->w, "%s: steps nested deeper than %d (or a table that contains itself)",
		     f->who, TR_STEP_NEST_MAX);
		return;
	}
	n = seq_count(L, t);
	check_keys(f, t, NULL, 0, 1, NULL);
	check_holes(f, t, n);
	if (n == 0)
		return;
	out->v = tr__calloc(n, sizeof(tr_step));
	if (out->v == NULL) {
		v->nomem = 1;
		return;
	}
	out->n = n;
	for (size_t i = 0; i < n; i++) {
		lua_rawgeti(L, t, (lua_Integer)i + 1);
		build_step(v, lua_gettop(L), &out->v[i], f, i + 1, depth);
		lua_pop(L, 1);
	}
}

/* cache = { store = "redis" } needs a redis { } declaration. */
static void check_redis_caches(vctx *v, const tr_step_list *l)
{
	for (size_t i = 0; i < l->n; i++) {
		const tr_step *s = &l->v[i];
		if (s->kind == TR_STEP_CALL && s->u.call.cache.on && s->u.call.cache.store == TR_CACHE_REDIS) {
			where w = {0, s->pos.line};
			for (size_t f = 0; f < v->c->nfiles; f++)
				if (v->c->files[f] == s->pos.file)
					w.file = (int)f;
			diag(v, w, "step '%s': cache: store = \"redis\" needs a redis { url = \"...\" } "
			     "declaration", s->u.call.actor);
		} else if (s->kind == TR_STEP_ROUTE) {
			for (size_t b = 0; b < s->u.route.nbranches; b++)
				check_redis_caches(v, &s->u.route.branches[b].steps);
			check_redis_caches(v, &s->u.route.dflt);
		} else if (s->kind == TR_STEP_PARALLEL) {
			for (size_t b = 0; b < s->u.par.nbranches; b++)
				check_redis_caches(v, &s->u.par.branches[b]);
		}
	}
}

/* ---- pipelines ------------------------------------------------------------ */

static void build_pipeline(vctx *v, int d, where w, tr_pipeline_spec *p)
{
	static const char *const keys[] = {"deadline", "max_inflight", "tap", "tap_events",
	                                   "stream", "output"};
	static const char *const ev_names[] = {"start", "end", "retry", "timeout", "error"};
	static const uint32_t ev_bits[] = {TR_TAP_START, TR_TAP_END, TR_TAP_RETRY, TR_TAP_TIMEOUT,
	                                   TR_TAP_ERROR};
	lua_State *L = v->L;
	fctx f = {v, w, ""};
	char b[64];
	size_t n;
	int o;

	p->pos = srcpos(v, w);
	p->deadline_us = 30000000;
	p->max_inflight = 1000;
	snprintf(f.who, sizeof(f.who), "pipeline '%s'", p->name);
	check_twice(v, d, f.who);
	rget(L, d, "opts");
	o = lua_gettop(L);
	if (lua_type(L, o) != LUA_TTABLE) {
		diag(v, w, "%s: expected a table: pipeline \"%s\" { step \"...\" { ... }, ... }, got %s",
		     f.who, p->name, got(L, o, b, sizeof(b)));
		lua_pop(L, 1);
		return;
	}
	check_keys(&f, o, keys, 6, 1, NULL);
	want_dur(&f, o, "deadline", &p->deadline_us);
	want_uint(&f, o, "max_inflight", 1, 1000000, &p->max_inflight);
	if (want_str(&f, o, "tap", &p->tap) && p->tap != NULL)
		check_actor_ref(&f, "tap", p->tap);
	build_mask(&f, o, "tap_events", ev_names, ev_bits, 5, "step event", "step events",
	           &p->tap_events);
	if (rget(L, o, "tap_events") == LUA_TTABLE && seq_count(L, lua_gettop(L)) == 0)
		diag(v, w, "%s: tap_events: expected at least one step event (start, end, retry, "
		     "timeout, error)", f.who);
	lua_pop(L, 1);
	build_names(&f, o, "output", &p->output, &p->noutput);
	if (want_str(&f, o, "stream", &p->stream) && p->stream != NULL)
		check_actor_ref(&f, "stream", p->stream);
	n = seq_count(L, o);
	check_holes(&f, o, n);
	if (n == 0) {
		diag(v, w, "%s has no steps", f.who);
	} else {
		p->steps.v = tr__calloc(n, sizeof(tr_step));
		if (p->steps.v == NULL) {
			v->nomem = 1;
		} else {
			p->steps.n = n;
			for (size_t i = 0; i < n; i++) {
				lua_rawgeti(L, o, (lua_Integer)i + 1);
				build_step(v, lua_gettop(L), &p->steps.v[i], &f, i + 1, 1);
				lua_pop(L, 1);
			}
		}
	}
	lua_pop(L, 1);
}

/* ---- supervision tree ---------------------------------------------------- */

/* Children exist, belong to one supervisor, and no supervisor contains
 * itself. parent[]: actors first, then supervisors; -1 = top level. */
static void check_tree(vctx *v)
{
	tr_config *c = v->c;
	size_t na = c->nactors, ns = c->nsups;

	v->parent = tr__malloc((na + ns + 1) * sizeof(int));
	if (v->parent == NULL) {
		v->nomem = 1;
		return;
	}
	for (size_t i = 0; i < na + ns; i++)
		v->parent[i] = -1;
	for (size_t si = 0; si < ns; si++) {
		tr_supervisor_spec *s = &c->sups[si];
		where w = {0, s->pos.line};
		for (size_t f = 0; f < c->nfiles; f++)
			if (c->files[f] == s->pos.file)
				w.file = (int)f;
		for (size_t k = 0; k < s->nchildren; k++) {
			const char *ch = s->children[k];
			long ai = find_actor(c, ch), xi = find_sup(c, ch), slot;
			if (ch == NULL)
				continue;
			for (size_t j = 0; j < k; j++) {
				if (s->children[j] && strcmp(s->children[j], ch) == 0) {
					diag(v, w, "supervisor '%s': child '%s' is listed twice", s->name, ch);
					ai = xi = -2;
					break;
				}
			}
			if (ai == -2)
				continue;
			if (ai < 0 && xi < 0) {
				const char *sg;
				if (v->partial)
					continue;
				sg = suggest_actor(v, ch, 1);
				if (sg != NULL)
					diag(v, w, "supervisor '%s': unknown child '%s' (did you mean '%s'?)",
					     s->name, ch, sg);
				else
					diag(v, w, "supervisor '%s': unknown child '%s' (not a declared actor "
					     "or supervisor)", s->name, ch);
				continue;
			}
			slot = ai >= 0 ? ai : (long)na + xi;
			if (v->parent[slot] >= 0) {
				const tr_supervisor_spec *o = &c->sups[v->parent[slot]];
				diag(v, w, "supervisor '%s': %s '%s' already belongs to supervisor '%s' (%s:%d)",
				     s->name, ai >= 0 ? "actor" : "supervisor", ch, o->name, o->pos.file,
				     o->pos.line);
				continue;
			}
			v->parent[slot] = (int)si;
		}
	}
	/* Cycles: each supervisor has at most one parent now, so walking up
	 * from i either ends at the top or comes back to i. Report each cycle
	 * once, at its first-declared member. */
	for (size_t i = 0; i < ns; i++) {
		int j = v->parent[na + i], min = (int)i, len = 1;
		while (j >= 0 && j != (int)i && len <= (int)ns) {
			if (j < min)
				min = j;
			j = v->parent[na + (size_t)j];
			len++;
		}
		if (j != (int)i || min != (int)i)
			continue;
		/* path in "contains" order: i contains the last parent found, ... */
		char path[512];
		size_t off = 0;
		int chain[64], nch = 0;
		j = (int)i;
		do {
			if (nch < 64)
				chain[nch++] = j;
			j = v->parent[na + (size_t)j];
		} while (j != (int)i);
		off += (size_t)snprintf(path, sizeof(path), "%s", c->sups[i].name);
		for (int k = nch - 1; k >= 0 && off < sizeof(path); k--)
			off += (size_t)snprintf(path + off, sizeof(path) - off, " -> %s",
			                        c->sups[chain[k]].name);
		where w = {0, c->sups[i].pos.line};
		for (size_t f = 0; f < c->nfiles; f++)
			if (c->files[f] == c->sups[i].pos.file)
				w.file = (int)f;
		diag(v, w, "supervisor '%s' contains itself (%s)", c->sups[i].name, path);
	}
}

/* ---- the pass ---------------------------------------------------------------- */

/* Earlier declaration of `name` among actors and supervisors, for the
 * duplicate message. Returns 1 and fills kind/pos if found. */
static int taken(vctx *v, const char *name, const char **kind, tr_srcpos *pos)
{
	long i = find_actor(v->c, name);
	if (i >= 0) {
		*kind = "actor";
		*pos = v->c->actors[i].pos;
		return 1;
	}
	i = find_sup(v->c, name);
	if (i >= 0) {
		*kind = "supervisor";
		*pos = v->c->sups[i].pos;
		return 1;
	}
	return 0;
}

static int validate_k(lua_State *L)
{
	vctx *v = lua_touserdata(L, 1);
	tr_config *c = v->c;
	size_t n, na = 0, ns = 0, np = 0, nt = 0, nto = 0;
	int decls, seen_node = 0, tenants_over = 0;
	where first_node = {0, 0};

	lua_settop(L, 0);
	luaL_checkstack(L, 32, "validation");
	lua_rawgetp(L, LUA_REGISTRYINDEX, &tr__lua_key_decls);
	decls = lua_gettop(L);
	n = lua_rawlen(L, decls);
	for (size_t i = 1; i <= n; i++) {
		const char *k;
		lua_rawgeti(L, decls, (lua_Integer)i);
		k = desc_kind(L, -1);
		na += strcmp(k, "actor") == 0;
		ns += strcmp(k, "supervisor") == 0;
		np += strcmp(k, "pipeline") == 0;
		nt += strcmp(k, "tenant") == 0;
		nto += strcmp(k, "tool") == 0;
		lua_pop(L, 1);
	}
	if ((na && !(c->actors = tr__calloc(na, sizeof(tr_actor_spec)))) ||
	    (ns && !(c->sups = tr__calloc(ns, sizeof(tr_supervisor_spec)))) ||
	    (np && !(c->pipelines = tr__calloc(np, sizeof(tr_pipeline_spec)))) ||
	    (nt && !(c->tenants = tr__calloc(nt, sizeof(tr_tenant_spec)))) ||
	    (nto && !(c->tools = tr__calloc(nto, sizeof(tr_tool_spec))))) {
		v->nomem = 1;
		return 0;
	}
	/* Declarations first, so that steps may name actors declared later
	 * (or in a later file). */
	for (size_t i = 1; i <= n && !v->nomem; i++) {
		int d;
		const char *k, *name, *tk;
		tr_srcpos tp;
		where w;

		lua_rawgeti(L, decls, (lua_Integer)i);
		d = lua_gettop(L);
		k = desc_kind(L, d);
		w = wof(L, d);
		if (strcmp(k, "node") == 0) {
			build_node(v, d, w, &seen_node, &first_node);
		} else if (strcmp(k, "postgres") == 0) {
			build_postgres(v, d, w);
		} else if (strcmp(k, "redis") == 0) {
			build_redis(v, d, w);
		} else if ((name = decl_name(v, d, k, w)) == NULL) {
			/* reported */
		} else if (strcmp(k, "pipeline") == 0) {
			const tr_pipeline_spec *p = tr_config_pipeline(c, name);
			if (p != NULL) {
				diag(v, w, "pipeline '%s' is declared twice (first at %s:%d)", name,
				     p->pos.file, p->pos.line);
			} else {
				c->pipelines[c->npipelines].name = dup(v, name);
				c->pipelines[c->npipelines].pos = srcpos(v, w);
				c->npipelines++;
				lua_pushinteger(L, (lua_Integer)c->npipelines);
				lua_setfield(L, d, "accepted");
			}
		} else if (strcmp(k, "tenant") == 0) {
			/* tenants have their own namespace */
			const tr_tenant_spec *t = tr_config_tenant(c, name);
			if (t != NULL) {
				diag(v, w, "tenant '%s' is declared twice (first at %s:%d)", name,
				     t->pos.file, t->pos.line);
			} else if (c->ntenants == TR_TENANT_MAX) {
				if (!tenants_over) /* once, at the first one past */
					diag(v, w, "tenant '%s': more than %d tenants", name, TR_TENANT_MAX);
				tenants_over = 1;
			} else {
				c->tenants[c->ntenants].name = dup(v, name);
				build_tenant(v, d, w, name, c->ntenants++);
			}
		} else if (strcmp(k, "tool") == 0) {
			/* tools have their own namespace too */
			const tr_tool_spec *t = tr_config_tool(c, name);
			if (t != NULL) {
				diag(v, w, "tool '%s' is declared twice (first at %s:%d)", name, t->pos.file,
				     t->pos.line);
			} else {
				tr_tool_spec *nt_ = &c->tools[c->ntools++];
				nt_->name = dup(v, name);
				build_tool(v, d, w, name, nt_);
			}
		} else if (taken(v, name, &tk, &tp)) {
			if (strcmp(tk, k) == 0)
				diag(v, w, "%s '%s' is declared twice (first at %s:%d)", k, name, tp.file,
				     tp.line);
			else
				diag(v, w, "%s '%s': the name is taken by %s '%s' (%s:%d)", k, name, tk, name,
				     tp.file, tp.line);
		} else if (strcmp(k, "actor") == 0) {
			tr_actor_spec *a = &c->actors[c->nactors++];
			a->name = dup(v, name);
			build_actor(v, d, w, name, a);
		} else {
			tr_supervisor_spec *s = &c->sups[c->nsups++];
			s->name = dup(v, name);
			build_sup(v, d, w, name, s);
		}
		lua_settop(L, decls);
	}
	check_kinds(v);
	for (size_t i = 0; i < c->ntools; i++) {
		const tr_tool_spec *t = &c->tools[i];
		where w = {0, t->pos.line};
		for (size_t f = 0; f < c->nfiles; f++)
			if (c->files[f] == t->pos.file)
				w.file = (int)f;
		if (t->sql != NULL && !c->postgres.on)
			diag(v, w, "tool '%s': sql: SQL tools run on the node's PostgreSQL pool; declare "
			     "postgres { conninfo = \"...\" }", t->name);
	}
	for (size_t i = 1; i <= n && !v->nomem; i++) {
		lua_rawgeti(L, decls, (lua_Integer)i);
		int d = lua_gettop(L);
		if (strcmp(desc_kind(L, d), "pipeline") == 0) {
			int acc = dint(L, d, "accepted");
			if (acc > 0)
				build_pipeline(v, d, wof(L, d), &c->pipelines[acc - 1]);
		}
		lua_settop(L, decls);
	}
	for (size_t i = 0; i < c->npipelines && !c->redis.on; i++)
		check_redis_caches(v, &c->pipelines[i].steps);
	if (!v->nomem)
		check_tree(v);
	if (c->node.name == NULL && !v->nomem)
		c->node.name = dup(v, "troupe");
	lua_rawgetp(L, LUA_REGISTRYINDEX, &tr__lua_key_fns);
	c->nfns = (int)lua_rawlen(L, -1);
	return 0;
}

/* tr_config_load; with srcs, file i's text is srcs[i][0..lens[i]) instead
 * of what is on disk; lim (NULL: the defaults) caps the state's memory
 * and each file's instructions. */
static int config_load(const char *const *files, const char *const *srcs, const size_t *lens,
                       size_t nfiles, const tr_lua_limits *lim, tr_config **out, tr_diag *diag)
{
	uint64_t steps = lim != NULL && lim->instructions ? lim->instructions : TR__LUA_LOAD_STEPS;
	size_t n0 = diag->n;
	tr_config *c = NULL;
	lua_State *L = NULL;
	vctx v;
	char err[1024];
	int rc = TR_OK, st;

	memset(&v, 0, sizeof(v));
	tr_buf_init(&v.scratch);
	*out = NULL;
	if (nfiles == 0) {
		rc = diag_add(diag, "no pipeline files given");
		return rc == TR_OK ? TR_EINVAL : rc;
	}
	c = tr__calloc(1, sizeof(*c));
	if (c == NULL)
		return TR_ENOMEM;
	c->files = tr__calloc(nfiles, sizeof(char *));
	if (c->files == NULL)
		goto nomem;
	for (size_t i = 0; i < nfiles; i++) {
		if ((c->files[i] = tr__strndup(files[i], strlen(files[i]))) == NULL)
			goto nomem;
		c->nfiles++;
	}
	rc = tr__lua_sandbox_new(lim, 1, &L);
	if (rc != TR_OK)
		goto fail;
	v.L = L;
	v.c = c;
	v.d = diag;
	for (size_t i = 0; i < nfiles; i++) {
		tr__lua_sb(L)->cur_file = (int)i;
		tr__lua_budget(L, steps);
		rc = srcs != NULL ? tr__lua_run_buf(L, c->files[i], srcs[i], lens[i], err, sizeof(err))
		                  : tr__lua_run_file(L, c->files[i], err, sizeof(err));
		if (rc == TR_ENOMEM)
			goto nomem;
		if (rc != TR_OK) {
			if (diag_add(diag, err) != TR_OK)
				goto nomem;
			v.partial = 1;
		}
	}
	lua_settop(L, 0);
	lua_pushcfunction(L, validate_k);
	lua_pushlightuserdata(L, &v);
	st = lua_pcall(L, 1, 0, 0);
	if (st != LUA_OK) {
		tr__lua_errmsg(L, st, err, sizeof(err));
		if (diag_add(diag, err) != TR_OK)
			goto nomem;
	}
	if (v.nomem)
		goto nomem;
	rc = diag->n > n0 ? TR_EINVAL : TR_OK;
	goto fail; /* the common cleanup; c is kept below on success */
nomem:
	rc = TR_ENOMEM;
fail:
	tr_lua_state_free(L);
	tr_buf_free(&v.scratch);
	tr__free(v.names);
	tr__free(v.parent);
	if (rc == TR_OK)
		*out = c;
	else
		tr_config_free(c);
	return rc;
}

int tr_config_load(const char *const *files, size_t nfiles, tr_config **out, tr_diag *diag)
{
	return config_load(files, NULL, NULL, nfiles, NULL, out, diag);
}

int tr__config_load_mem(const char *name, const char *src, size_t len,
                        const tr_lua_limits *lim, tr_config **out, tr_diag *diag)
{
	return config_load(&name, &src, &len, 1, lim, out, diag);
}
