/*
 * lua/lua_int.h -- internals shared by the Lua layer's files: the sandbox
 * (sandbox.c), the DSL (dsl.c) and the converters (conv.c).
 *
 * Every state made here carries a tr__lsb, the bookkeeping of its
 * sandbox, as the ud of its lua_Alloc: the allocator needs it for the
 * memory cap, the count hook for the instruction budget, and the DSL for
 * its mode. lua_getallocf() finds it again from any thread of the state.
 *
 * Errors: a state has no useful panic handler, so everything that may
 * allocate Lua objects runs inside lua_pcall. A memory error therefore
 * unwinds to the nearest pcall; C allocations made meanwhile must already
 * be reachable from the caller's structures (see dsl.c).
 */
#ifndef TR_LUA_LUA_INT_H
#define TR_LUA_LUA_INT_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "lua/tlua.h"

#define TR__LUA_MEM_DEFAULT ((size_t)64 << 20)
#define TR__LUA_LOAD_STEPS 50000000u /* instructions per file run */
#define TR__LUA_CALL_STEPS 10000000u /* instructions per tr_lua_call */
/* The count hook fires every HOOK_EVERY instructions; any count costs the
 * same in 5.4 (deps.md §8), a larger one only makes the budget coarser. */
#define TR__LUA_HOOK_EVERY 1000

typedef struct tr__lsb {
	lua_State *L;        /* the main thread; NULL while opening/closing */
	size_t used;         /* bytes Lua holds now */
	size_t limit;        /* cap on `used` */
	uint64_t steps;      /* instructions run in this top-level call */
	uint64_t max_steps;  /* budget of this top-level call */
	uint64_t call_steps; /* budget given to each tr_lua_call */
	int build;           /* 1: the DSL records declarations (loader) */
	int cur_file;        /* index of the file running now (positions) */
	char oom_where[96];  /* "src:line: " of the first refused allocation */
} tr__lsb;

/* Registry keys (their addresses are the keys: lua_rawsetp). */
extern const char tr__lua_key_env;   /* the sandbox environment table */
extern const char tr__lua_key_fns;   /* functions, in creation order */
extern const char tr__lua_key_decls; /* the loader's declarations */

tr__lsb *tr__lua_sb(lua_State *L);

/*
 * A new sandboxed state: safe libraries, the env table, the DSL. `build`
 * selects the DSL mode. TR_OK or TR_ENOMEM (nothing to free then).
 */
int tr__lua_sandbox_new(const tr_lua_limits *lim, int build, lua_State **out);

/* Starts a top-level call: a fresh budget of `steps` instructions (the
 * hook back to its normal count) and no recorded OOM position. */
void tr__lua_budget(lua_State *L, uint64_t steps);

/* lua_pcall with the sandbox message handler: string errors gain a
 * "src:line: " prefix when they have none. */
int tr__lua_pcall(lua_State *L, int nargs, int nres);

/* After a failed pcall (status, message on top): writes the message,
 * limits translated ("memory limit (64 MiB) exceeded"), into err, and pops
 * it. */
void tr__lua_errmsg(lua_State *L, int status, char *err, size_t errlen);

/* Reads `path` and runs it in the sandbox env as a text chunk. TR_OK;
 * TR_EFAILED for a file that cannot be read or fails (syntax, runtime
 * error, the state's limits), with "path:line: ..." in err; TR_ENOMEM
 * when a C allocation fails. */
int tr__lua_run_file(lua_State *L, const char *path, char *err, size_t errlen);
/* The same for the text buf[0..len), named `path` in messages. */
int tr__lua_run_buf(lua_State *L, const char *path, const char *buf, size_t len, char *err,
                    size_t errlen);

/* Installs the DSL functions into the env table on top of the stack (raises
 * on memory errors: call inside a pcall). */
void tr__lua_dsl_open(lua_State *L);

/* Pushes the msgpack object p[0..n), already accepted by tr_mp_check();
 * raises on memory errors. */
void tr__lua_push_checked(lua_State *L, const unsigned char *p, size_t n);

/* The read-only view of a message for predicates (conv.c): pushes the
 * state's one view table, now reading the checked map p[0..n) (borrowed
 * until _close); raises on memory errors. _close ends the call: reads
 * raise again and the call's writes into the view are wiped. */
void tr__lua_view_push(lua_State *L, const unsigned char *p, size_t n);
void tr__lua_view_close(lua_State *L);

/* Edit distance between a and b, capped: returns cap+1 once past it. */
unsigned tr__lua_editdist(const char *a, const char *b, unsigned cap);

#endif
