/*
 * lua/sandbox.c -- sandboxed Lua states: a capped allocator, an
 * instruction budget, a whitelisted environment, running files, and
 * calling a numbered function with a msgpack message (tr_lua_call).
 *
 * Why each piece:
 *  - The allocator counts every byte the state holds and refuses growth
 *    past the cap, so `string.rep("x", 1e9)` or a table-growth loop ends
 *    with a memory error in that state instead of taking the process down.
 *    It uses libc directly: it is Lua's own allocator and must not see the
 *    runtime's failure injection (tests inject failures into C code paths
 *    and expect Lua to behave).
 *  - The count hook charges instructions to a budget that is reset per
 *    top-level call. Once spent it becomes sticky (count 1 on the thread
 *    that tripped it): a script that wraps its loop in pcall gets the error
 *    again on its next instruction outside, so it cannot swallow it.
 *  - The environment is a fresh table of safe functions and copies of the
 *    safe libraries; the real globals (with dofile, loadfile, the original
 *    load) stay unreachable. string.dump is removed from the real string
 *    table too (strings reach it through their metatable), and that
 *    metatable is hidden (__metatable = false) so a script cannot patch it.
 *  - Catching an error is C work the count hook does not see: a loop of
 *    pcall(error) is a few instructions per turn but microseconds of
 *    unwinding. So each catch point (pcall, xpcall, coroutine.resume and
 *    the functions coroutine.wrap makes) and each undefined-global error
 *    charges CATCH_STEPS to the budget, which keeps the budget a bound on
 *    time (found by fuzz_lua_check: `while true do pcall(error) end` ran
 *    3 s, a loop of caught unknown-name errors 20 s, under a 50 M limit).
 *  - Reading an undefined global is an error naming it (with a suggestion),
 *    which turns `acter "x"` into a message instead of "attempt to call a
 *    nil value".
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "core/alloc.h"
#include "lua/lua_int.h"
#include "lua/pattern.h"
#include "msg/msg_int.h"

const char tr__lua_key_env;
const char tr__lua_key_fns;
const char tr__lua_key_decls;

tr__lsb *tr__lua_sb(lua_State *L)
{
	void *ud = NULL;
	(void)lua_getallocf(L, &ud);
	return ud;
}

/* ------------------------------------------------------------------ */
/* memory                                                               */

/* Remembers where the first refused allocation of this call happened: a
 * memory error unwinds without running the message handler, so this is
 * the only chance to name the line. Reading the call stack allocates
 * nothing. */
static void note_oom(tr__lsb *s)
{
	lua_Debug ar;

	if (s->L == NULL || s->oom_where[0] != '\0')
		return;
	for (int lvl = 0; lua_getstack(s->L, lvl, &ar); lvl++) {
		if (lua_getinfo(s->L, "Sl", &ar) && ar.currentline > 0) {
			snprintf(s->oom_where, sizeof(s->oom_where), "%s:%d: ", ar.short_src,
			         ar.currentline);
			return;
		}
	}
}

/* When ptr is NULL, osize is a type tag, not a size (lua.h). Lua assumes
 * shrinking never fails, so only growth is refused. */
static void *lalloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	tr__lsb *s = ud;
	size_t old = ptr != NULL ? osize : 0;
	void *np;

	if (nsize == 0) {
		free(ptr);
		s->used -= old;
		return NULL;
	}
	if (nsize > old && nsize - old > s->limit - s->used) {
		note_oom(s);
		return NULL;
	}
	np = realloc(ptr, nsize);
	if (np == NULL) {
		note_oom(s);
		return NULL;
	}
	s->used = s->used - old + nsize;
	return np;
}

static int panic(lua_State *L)
{
	const char *m = lua_tostring(L, -1);
	fprintf(stderr, "troupe: unprotected Lua error: %s\n", m ? m : "?");
	return 0; /* Lua aborts */
}

/* ------------------------------------------------------------------ */
/* instructions                                                         */

static void hook(lua_State *L, lua_Debug *ar)
{
	tr__lsb *s = tr__lua_sb(L);

	s->steps += (uint64_t)lua_gethookcount(L);
	if (s->steps < s->max_steps)
		return;
	/* Sticky from here on: every instruction of this thread errors. */
	lua_sethook(L, hook, LUA_MASKCOUNT, 1);
	if (lua_getinfo(L, "Sl", ar) && ar->currentline > 0)
		lua_pushfstring(L, "%s:%d: instruction limit exceeded (%I instructions)", ar->short_src,
		                ar->currentline, (lua_Integer)s->max_steps);
	else
		lua_pushfstring(L, "instruction limit exceeded (%I instructions)",
		                (lua_Integer)s->max_steps);
	lua_error(L);
}

#define CATCH_STEPS 1000u

/* Charges `n` steps of C work; the count hook raises the limit at its
 * next check once the budget is spent. */
static void charge(lua_State *L, uint64_t n)
{
	tr__lsb *s = tr__lua_sb(L);
	s->steps += n;
}

void tr__lua_budget(lua_State *L, uint64_t steps)
{
	tr__lsb *s = tr__lua_sb(L);

	s->steps = 0;
	s->max_steps = steps;
	s->oom_where[0] = '\0';
	lua_sethook(s->L, hook, LUA_MASKCOUNT, TR__LUA_HOOK_EVERY);
}

/* ------------------------------------------------------------------ */
/* errors                                                               */

/* "something:123: " at the start of m? */
static int has_pos(const char *m)
{
	const char *c = strchr(m, ':');
	const char *nl = strchr(m, '\n');

	if (c == NULL || c == m || (nl != NULL && nl < c))
		return 0;
	c++;
	if (*c < '0' || *c > '9')
		return 0;
	while (*c >= '0' && *c <= '9')
		c++;
	return *c == ':';
}

static int msgh(lua_State *L)
{
	lua_Debug ar;
	const char *m;

	if (lua_type(L, 1) != LUA_TSTRING)
		lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
	else
		lua_pushvalue(L, 1);
	m = lua_tostring(L, -1);
	if (has_pos(m))
		return 1;
	for (int lvl = 1; lua_getstack(L, lvl, &ar); lvl++) {
		if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
			lua_pushfstring(L, "%s:%d: %s", ar.short_src, ar.currentline, m);
			return 1;
		}
	}
	return 1;
}

int tr__lua_pcall(lua_State *L, int nargs, int nres)
{
	int base = lua_gettop(L) - nargs;
	int st;

	lua_pushcfunction(L, msgh);
	lua_insert(L, base);
	st = lua_pcall(L, nargs, nres, base);
	lua_remove(L, base);
	return st;
}

static void fmt_limit(char *buf, size_t len, size_t bytes)
{
	if (bytes % ((size_t)1 << 20) == 0)
		snprintf(buf, len, "%zu MiB", bytes >> 20);
	else
		snprintf(buf, len, "%zu KiB", bytes >> 10);
}

void tr__lua_errmsg(lua_State *L, int status, char *err, size_t errlen)
{
	tr__lsb *s = tr__lua_sb(L);
	char lim[32];

	if (status == LUA_ERRMEM) {
		fmt_limit(lim, sizeof(lim), s->limit);
		snprintf(err, errlen, "%smemory limit (%s) exceeded", s->oom_where, lim);
	} else if (lua_type(L, -1) == LUA_TSTRING) {
		snprintf(err, errlen, "%s", lua_tostring(L, -1));
	} else {
		snprintf(err, errlen, "(error object is a %s value)", luaL_typename(L, -1));
	}
	lua_pop(L, 1);
}

/* ------------------------------------------------------------------ */
/* the environment                                                      */

/* load(chunk [, chunkname [, mode [, env]]]): text chunks only, in the
 * sandbox env unless one is given. Precompiled chunks can crash the VM. */
static int safe_load(lua_State *L)
{
	size_t len;
	const char *s = luaL_checklstring(L, 1, &len);
	const char *name = luaL_optstring(L, 2, "=(load)");
	int has_env = lua_gettop(L) >= 4;

	if (luaL_loadbufferx(L, s, len, name, "t") != LUA_OK) {
		luaL_pushfail(L);
		lua_insert(L, -2);
		return 2;
	}
	if (has_env)
		lua_pushvalue(L, 4);
	else
		lua_rawgetp(L, LUA_REGISTRYINDEX, &tr__lua_key_env);
	if (lua_setupvalue(L, -2, 1) == NULL)
		lua_pop(L, 1);
	return 1;
}

static int safe_collectgarbage(lua_State *L)
{
	const char *opt = luaL_optstring(L, 1, "collect");

	if (strcmp(opt, "count") != 0)
		return luaL_error(L, "collectgarbage: only \"count\" is allowed in the sandbox");
	lua_pushnumber(L, (lua_Number)lua_gc(L, LUA_GCCOUNT) + lua_gc(L, LUA_GCCOUNTB) / 1024.0);
	return 1;
}

/* setmetatable(t, mt) refuses a metatable with a __gc field: Lua runs
 * finalizers with hooks off (lgc.c, GCTM), so a __gc function would run
 * outside the instruction limit (`while true do end` in one hangs the
 * thread at the next collection or at lua_close). Checking here is enough:
 * an object is marked for finalization only if its metatable has __gc
 * when it is set (a field added later is ignored). The real setmetatable
 * is upvalue 1. */
static int safe_setmetatable(lua_State *L)
{
	if (lua_type(L, 2) == LUA_TTABLE) {
		lua_pushliteral(L, "__gc");
		if (lua_rawget(L, 2) != LUA_TNIL)
			return luaL_error(L, "setmetatable: a __gc metamethod is not allowed in the "
			                     "sandbox (finalizers run outside the instruction limit)");
		lua_pop(L, 1);
	}
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, lua_gettop(L) - 1, 1);
	return 1;
}

/* xpcall's message handler, guarded. Lua calls a handler before it
 * unwinds, and when the error was raised by a hook (ours raises only the
 * instruction limit) hooks are still off then (ldo.c restores allowhook
 * in luaD_pcall, after the handler ran): a handler with a loop in it
 * would run unbounded. Once the budget is spent the handler is skipped
 * and the limit's own message goes on. The user's handler is upvalue 1. */
static int guarded_msgh(lua_State *L)
{
	tr__lsb *s = tr__lua_sb(L);

	if (s->steps >= s->max_steps)
		return 1;
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, lua_gettop(L) - 1, 1);
	return 1;
}

/* xpcall(f, msgh, ...) with msgh guarded (above); the real xpcall is
 * upvalue 1. */
static int safe_xpcall(lua_State *L)
{
	int n = lua_gettop(L);

	luaL_checktype(L, 2, LUA_TFUNCTION);
	charge(L, CATCH_STEPS);
	lua_pushvalue(L, 2);
	lua_pushcclosure(L, guarded_msgh, 1);
	lua_replace(L, 2);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, n, LUA_MULTRET);
	return lua_gettop(L);
}

/* pcall, charged (above); the real one is upvalue 1. */
static int charged_call(lua_State *L)
{
	charge(L, CATCH_STEPS);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
	return lua_gettop(L);
}

/* coroutine.wrap(f), whose function is a catch point too: the wrapped
 * function (the real wrap's result) is upvalue 1 of each call. */
static int charged_wrap(lua_State *L)
{
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_insert(L, 1);
	lua_call(L, lua_gettop(L) - 1, 1);
	lua_pushcclosure(L, charged_call, 1);
	return 1;
}

/* Replaces field `k` of the table at `t` by a charged version. */
static void charge_field(lua_State *L, int t, const char *k, lua_CFunction fn)
{
	t = lua_absindex(L, t);
	lua_getfield(L, t, k);
	lua_pushcclosure(L, fn, 1);
	lua_setfield(L, t, k);
}

/* print() writes to stderr: stdout belongs to the program's output. */
static int safe_print(lua_State *L)
{
	int n = lua_gettop(L);

	for (int i = 1; i <= n; i++) {
		size_t len;
		const char *s = luaL_tolstring(L, i, &len);
		if (i > 1)
			fputc('\t', stderr);
		fwrite(s, 1, len, stderr);
		lua_pop(L, 1);
	}
	fputc('\n', stderr);
	return 0;
}

static const char *const dsl_names[] = {"node", "actor", "supervisor", "pipeline", "step",
                                        "route", "parallel", "tenant", "tool", "postgres",
                                        "redis"};
static const char *const base_names[] = {
	"assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal", "rawlen", "rawget",
	"rawset", "select", "tonumber", "tostring", "type", "xpcall", "setmetatable",
	"getmetatable", "_VERSION"};
static const char *const lib_names[] = {"string", "table", "math", "utf8", "coroutine"};

/* __index of the env: reading an undefined global is an error. */
static int strict_index(lua_State *L)
{
	const char *k = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : NULL;
	const char *best = NULL;
	unsigned bd = 3;

	if (k == NULL)
		return 0;
	charge(L, CATCH_STEPS);
	for (size_t i = 0; i < sizeof(dsl_names) / sizeof(dsl_names[0]); i++) {
		unsigned d = tr__lua_editdist(k, dsl_names[i], 2);
		if (d < bd) {
			bd = d;
			best = dsl_names[i];
		}
	}
	if (best != NULL)
		return luaL_error(L, "unknown name '%s' (did you mean '%s'?)", k, best);
	return luaL_error(L, "unknown name '%s'", k);
}

/* Builds the env (runs inside a pcall). */
static int open_env(lua_State *L)
{
	lua_Debug ar;
	(void)ar;

	luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
	luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 1);
	luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 1);
	luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 1);
	luaL_requiref(L, LUA_UTF8LIBNAME, luaopen_utf8, 1);
	luaL_requiref(L, LUA_COLIBNAME, luaopen_coroutine, 1);
	lua_settop(L, 0);

	/* No dump, anywhere: strings reach the real table via __index. For
	 * the same reason the bounded pattern functions replace lstrlib's in
	 * the real table, before the env copies it (pattern.h). */
	lua_getglobal(L, LUA_STRLIBNAME);
	lua_pushnil(L);
	lua_setfield(L, -2, "dump");
	tr__lpat_open(L, -1);
	lua_pop(L, 1);
	lua_pushliteral(L, "");
	if (lua_getmetatable(L, -1)) {
		lua_pushboolean(L, 0);
		lua_setfield(L, -2, "__metatable");
		lua_pop(L, 1);
	}
	lua_pop(L, 1);

	lua_newtable(L); /* env */
	lua_pushglobaltable(L);
	for (size_t i = 0; i < sizeof(base_names) / sizeof(base_names[0]); i++) {
		lua_getfield(L, -1, base_names[i]);
		lua_setfield(L, -3, base_names[i]);
	}
	for (size_t i = 0; i < sizeof(lib_names) / sizeof(lib_names[0]); i++) {
		lua_getfield(L, -1, lib_names[i]);
		lua_newtable(L);
		lua_pushnil(L);
		while (lua_next(L, -3)) {
			lua_pushvalue(L, -2);
			lua_insert(L, -2);
			lua_rawset(L, -4);
		}
		lua_setfield(L, -4, lib_names[i]);
		lua_pop(L, 1);
	}
	lua_pop(L, 1); /* the real globals */
	lua_pushcfunction(L, safe_load);
	lua_setfield(L, -2, "load");
	lua_pushcfunction(L, safe_collectgarbage);
	lua_setfield(L, -2, "collectgarbage");
	lua_pushcfunction(L, safe_print);
	lua_setfield(L, -2, "print");
	lua_getfield(L, -1, "setmetatable");
	lua_pushcclosure(L, safe_setmetatable, 1);
	lua_setfield(L, -2, "setmetatable");
	lua_getfield(L, -1, "xpcall");
	lua_pushcclosure(L, safe_xpcall, 1);
	lua_setfield(L, -2, "xpcall");
	charge_field(L, -1, "pcall", charged_call);
	lua_getfield(L, -1, "coroutine"); /* the env's copy */
	charge_field(L, -1, "resume", charged_call);
	charge_field(L, -1, "wrap", charged_wrap);
	lua_pop(L, 1);
	lua_pushvalue(L, -1);
	lua_setfield(L, -2, "_G");
	tr__lua_dsl_open(L);
	lua_newtable(L);
	lua_pushcfunction(L, strict_index);
	lua_setfield(L, -2, "__index");
	lua_setmetatable(L, -2);
	lua_rawsetp(L, LUA_REGISTRYINDEX, &tr__lua_key_env);

	lua_newtable(L);
	lua_rawsetp(L, LUA_REGISTRYINDEX, &tr__lua_key_fns);
	lua_newtable(L);
	lua_rawsetp(L, LUA_REGISTRYINDEX, &tr__lua_key_decls);
	return 0;
}

int tr__lua_sandbox_new(const tr_lua_limits *lim, int build, lua_State **out)
{
	tr__lsb *s = tr__calloc(1, sizeof(*s));
	lua_State *L = NULL;

	*out = NULL;
	if (s == NULL)
		return TR_ENOMEM;
	s->limit = lim != NULL && lim->mem_bytes ? lim->mem_bytes : TR__LUA_MEM_DEFAULT;
	s->call_steps = lim != NULL && lim->instructions ? lim->instructions : TR__LUA_CALL_STEPS;
	s->max_steps = TR__LUA_LOAD_STEPS;
	s->build = build;
	L = lua_newstate(lalloc, s);
	if (L == NULL)
		goto fail;
	lua_atpanic(L, panic);
	s->L = L;
	/* Generational GC: an actor's state makes a message table and a ctx
	 * table per call that die with it, which a minor collection frees
	 * without walking the state's functions and config again, as each
	 * incremental cycle did (4-8 % more req/s on bench/http's 5-step
	 * no-op pipeline, same run). The memory cap is lalloc's either way. */
	lua_gc(L, LUA_GCGEN, 0, 0);
	tr__lua_budget(L, TR__LUA_LOAD_STEPS);
	lua_pushcfunction(L, open_env);
	if (lua_pcall(L, 0, 0, 0) != LUA_OK)
		goto fail;
	*out = L;
	return TR_OK;
fail:
	if (L != NULL) {
		s->L = NULL;
		lua_close(L);
	}
	tr__free(s);
	return TR_ENOMEM;
}

void tr_lua_state_free(lua_State *L)
{
	tr__lsb *s;

	if (L == NULL)
		return;
	s = tr__lua_sb(L);
	s->L = NULL; /* the allocator must not walk a closing stack */
	lua_close(L);
	tr__free(s);
}

/* ------------------------------------------------------------------ */
/* files                                                                */

#define FILE_MAX (16u << 20)

/* Reads a whole file into a new buffer (*out owned by the caller). */
static int read_file(const char *path, char **out, size_t *len, char *err, size_t errlen)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t cap = 0, n = 0;

	*out = NULL;
	if (f == NULL) {
		snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
		return TR_EFAILED;
	}
	for (;;) {
		if (n == cap) {
			char *nb;
			if (cap >= FILE_MAX) {
				snprintf(err, errlen, "%s: file larger than %u MiB", path, FILE_MAX >> 20);
				goto fail;
			}
			cap = cap ? cap * 2 : 4096;
			nb = tr__realloc(buf, cap);
			if (nb == NULL) {
				snprintf(err, errlen, "%s: out of memory", path);
				tr__free(buf);
				fclose(f);
				return TR_ENOMEM;
			}
			buf = nb;
		}
		size_t r = fread(buf + n, 1, cap - n, f);
		n += r;
		if (r == 0)
			break;
	}
	if (ferror(f)) {
		snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
		goto fail;
	}
	fclose(f);
	*out = buf;
	*len = n;
	return TR_OK;
fail:
	tr__free(buf);
	fclose(f);
	return TR_EFAILED;
}

/* Feeds a file to lua_load a line at a time, so that a load error Lua
 * gives no position for ("attempt to load a binary chunk", or "C stack
 * overflow" from the parser on code nested too deep) can still name the
 * line it was reading: every diagnostic is `file:line: message`. */
typedef struct line_reader {
	const char *p;
	size_t left;
	int line; /* of the last piece handed out */
} line_reader;

static const char *read_line(lua_State *L, void *ud, size_t *size)
{
	line_reader *r = ud;
	const char *nl, *p = r->p;

	(void)L;
	if (r->left == 0) {
		*size = 0;
		return NULL;
	}
	nl = memchr(p, '\n', r->left);
	*size = nl != NULL ? (size_t)(nl - p) + 1 : r->left;
	r->p += *size;
	r->left -= *size;
	r->line++;
	return p;
}

/* Whether Lua's message m already starts with "chunk:line:". */
static int has_line(const char *m)
{
	const char *c = strchr(m, ':');
	const char *d = c;

	while (c != NULL) {
		for (d = c + 1; *d >= '0' && *d <= '9'; d++)
			;
		if (d > c + 1 && *d == ':')
			return 1;
		c = strchr(c + 1, ':');
	}
	return 0;
}

static int load_lines(lua_State *L, const char *buf, size_t len, const char *name)
{
	line_reader r = {buf, len, 0};
	int st = lua_load(L, read_line, &r, name, "t");

	if (st != LUA_OK && st != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING &&
	    !has_line(lua_tostring(L, -1))) {
		char id[LUA_IDSIZE];
		size_t n = strlen(name + 1);
		/* Lua's own shortening of "@path" (lobject.c, luaO_chunkid). */
		if (n < sizeof(id))
			memcpy(id, name + 1, n + 1);
		else
			snprintf(id, sizeof(id), "...%s", name + 1 + n - (sizeof(id) - 4));
		lua_pushfstring(L, "%s:%d: %s", id, r.line > 0 ? r.line : 1, lua_tostring(L, -1));
		lua_remove(L, -2);
	}
	return st;
}

int tr__lua_run_file(lua_State *L, const char *path, char *err, size_t errlen)
{
	char *buf = NULL;
	size_t len = 0;
	int rc = read_file(path, &buf, &len, err, errlen);
	if (rc != TR_OK)
		return rc;
	rc = tr__lua_run_buf(L, path, buf, len, err, errlen);
	tr__free(buf);
	return rc;
}

int tr__lua_run_buf(lua_State *L, const char *path, const char *buf, size_t len, char *err,
                    size_t errlen)
{
	size_t plen = strlen(path);
	char *name = tr__malloc(plen + 2);
	int st;

	if (name == NULL) {
		snprintf(err, errlen, "%s: out of memory", path);
		return TR_ENOMEM;
	}
	name[0] = '@';
	memcpy(name + 1, path, plen + 1);
	/* lua_load runs protected: a syntax or memory error is a status. */
	st = load_lines(L, buf, len, name);
	tr__free(name);
	if (st == LUA_OK) {
		lua_rawgetp(L, LUA_REGISTRYINDEX, &tr__lua_key_env);
		if (lua_setupvalue(L, -2, 1) == NULL)
			lua_pop(L, 1);
		st = tr__lua_pcall(L, 0, 0);
	}
	if (st == LUA_OK)
		return TR_OK;
	/* A Lua memory error is the file's problem (the cap), not ours. */
	tr__lua_errmsg(L, st, err, errlen);
	return TR_EFAILED;
}

/* ------------------------------------------------------------------ */
/* states for actors and engines                                        */

static int nfns(lua_State *L)
{
	int n;
	lua_rawgetp(L, LUA_REGISTRYINDEX, &tr__lua_key_fns);
	n = (int)lua_rawlen(L, -1);
	lua_pop(L, 1);
	return n;
}

int tr_lua_state_new(const tr_config *c, const tr_lua_limits *lim, lua_State **out, char *err,
                     size_t errlen)
{
	lua_State *L = NULL;
	tr__lsb *s;
	int rc, n;

	*out = NULL;
	rc = tr__lua_sandbox_new(lim, 0, &L);
	if (rc != TR_OK) {
		snprintf(err, errlen, "cannot create a Lua state: %s", tr_strerror(rc));
		return rc;
	}
	s = tr__lua_sb(L);
	for (size_t i = 0; i < c->nfiles; i++) {
		s->cur_file = (int)i;
		tr__lua_budget(L, lim != NULL && lim->instructions ? lim->instructions
		                                                   : TR__LUA_LOAD_STEPS);
		rc = tr__lua_run_file(L, c->files[i], err, errlen);
		if (rc != TR_OK) {
			rc = rc == TR_ENOMEM ? TR_ENOMEM : TR_EFAILED;
			goto fail;
		}
	}
	n = nfns(L);
	if (n != c->nfns) {
		snprintf(err, errlen, "%s: the files changed since they were loaded (%d functions now, %d then)",
		         c->nfiles ? c->files[0] : "(no files)", n, c->nfns);
		rc = TR_EFAILED;
		goto fail;
	}
	*out = L;
	return TR_OK;
fail:
	tr_lua_state_free(L);
	return rc;
}

typedef struct call_args {
	int fn;
	const unsigned char *in;
	size_t inlen;
	const tr_lua_ctx *ctx;
	tr_buf *out;   /* NULL: a predicate (tr_lua_test) */
	int truth;
	int rc;        /* TR_OK, or an error found without raising */
	char *err;
	size_t errlen;
} call_args;

static int call_k(lua_State *L)
{
	call_args *a = lua_touserdata(L, 1);
	lua_Debug ar;

	lua_settop(L, 0);
	luaL_checkstack(L, 8, NULL);
	lua_rawgetp(L, LUA_REGISTRYINDEX, &tr__lua_key_fns);
	lua_rawgeti(L, 1, (lua_Integer)a->fn + 1);
	if (lua_type(L, 2) != LUA_TFUNCTION) {
		snprintf(a->err, a->errlen, "no Lua function number %d", a->fn);
		a->rc = TR_EINVAL;
		return 0;
	}
	/* Only the arguments the function can see: ctx is built for a
	 * function that declares it (or takes ...), not for `function(msg)`
	 * (a table per call: 2 % of a no-op Lua actor pipeline's CPU). */
	lua_pushvalue(L, 2);
	lua_getinfo(L, ">u", &ar);
	int nargs = ar.isvararg || ar.nparams >= 2 ? 2 : 1;
	lua_pushvalue(L, 2); /* kept at 2 to name it if its result is bad */
	if (a->inlen == 0) {
		lua_createtable(L, 0, 0);
	} else if (a->out == NULL) {
		tr__lua_view_push(L, a->in, a->inlen); /* checked by the caller */
	} else if (tr_mp_check(a->in, a->inlen, TR_MP_MAX_DEPTH) != TR_OK ||
	           !((a->in[0] & 0xf0) == 0x80 || a->in[0] == 0xde || a->in[0] == 0xdf)) {
		snprintf(a->err, a->errlen, "the message is not a msgpack map");
		a->rc = TR_EPROTO;
		return 0;
	} else {
		tr__lua_push_checked(L, a->in, a->inlen);
	}
	if (nargs < 2) {
		/* the function has no parameter for ctx */
	} else if (a->ctx != NULL) {
		lua_createtable(L, 0, 3);
		if (a->ctx->actor != NULL) {
			lua_pushstring(L, a->ctx->actor);
			lua_setfield(L, -2, "actor");
		}
		lua_pushinteger(L, (lua_Integer)a->ctx->attempt);
		lua_setfield(L, -2, "attempt");
		if (a->ctx->tenant != NULL) {
			lua_pushstring(L, a->ctx->tenant);
			lua_setfield(L, -2, "tenant");
		}
	} else {
		lua_pushnil(L);
	}
	lua_call(L, nargs, 1);
	a->truth = lua_toboolean(L, -1);
	if (a->out != NULL && !lua_isnil(L, -1) && tr_lua_to_msgpack(L, -1, a->out) != TR_OK) {
		lua_pushvalue(L, 2);
		lua_getinfo(L, ">S", &ar);
		snprintf(a->err, a->errlen,
		         "%s:%d: the function's result cannot be encoded as msgpack (functions, "
		         "userdata, cycles, non-string keys or nesting deeper than %d)",
		         ar.short_src, ar.linedefined, TR_MP_MAX_DEPTH);
		a->rc = TR_EPROTO;
	}
	return 0;
}

int tr_lua_call(lua_State *L, int fn, const unsigned char *in, size_t inlen,
                const tr_lua_ctx *ctx, tr_buf *out, int *truth, char *err, size_t errlen)
{
	tr__lsb *s = tr__lua_sb(L);
	call_args a = {fn, in, inlen, ctx, out, 0, TR_OK, err, errlen};
	size_t start = out != NULL ? out->len : 0;
	int top = lua_gettop(L), st;

	if (errlen > 0)
		err[0] = '\0';
	if (truth != NULL)
		*truth = 0;
	tr__lua_budget(L, s->call_steps);
	lua_pushcfunction(L, call_k);
	lua_pushlightuserdata(L, &a);
	st = tr__lua_pcall(L, 1, 0);
	if (st != LUA_OK) {
		tr__lua_errmsg(L, st, err, errlen);
		a.rc = TR_EFAILED;
	} else if (s->steps >= s->max_steps) {
		/* The limit tripped in a coroutine and its error was caught
		 * (pcall(coroutine.wrap(f))): the budget is the call's, not one
		 * thread's, so the call fails all the same. */
		snprintf(err, errlen, "instruction limit exceeded (%llu instructions)",
		         (unsigned long long)s->max_steps);
		a.rc = TR_EFAILED;
	}
	lua_settop(L, top);
	if (out == NULL)
		tr__lua_view_close(L);
	if (a.rc != TR_OK) {
		if (out != NULL)
			out->len = start;
		return a.rc;
	}
	if (truth != NULL)
		*truth = a.truth;
	return TR_OK;
}

int tr_lua_test(lua_State *L, int fn, const unsigned char *in, size_t inlen,
                const tr_lua_ctx *ctx, int *truth, char *err, size_t errlen)
{
	if (inlen > 0 && !((in[0] & 0xf0) == 0x80 || in[0] == 0xde || in[0] == 0xdf)) {
		snprintf(err, errlen, "the message is not a msgpack map");
		return TR_EPROTO;
	}
	return tr_lua_call(L, fn, in, inlen, ctx, NULL, truth, err, errlen);
}
