/*
 * lua/tlua.h -- troupe's Lua layer: the sandbox, the DSL loader that turns
 * pipeline files into a tr_config (pipe/spec.h), conversions between
 * msgpack and Lua values, and the Lua actor behaviour.
 *
 * lua_State ownership: one state per Lua actor instance, and one per
 * pipeline engine (for `when` predicates). A state belongs to the actor
 * that created it and is only touched from that actor's callbacks, which
 * the scheduler never runs concurrently: no locks. Each state is a fresh
 * sandbox into which the same files are run again, so functions are found
 * by their number (tr_config.nfns), not passed between states.
 */
#ifndef TR_LUA_TLUA_H
#define TR_LUA_TLUA_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include <troupe/actor.h>
#include <troupe/msg.h>

#include "pipe/spec.h"

/* Diagnostics: every problem found, each "file:line: message", where file
 * is the path as given to tr_config_load (Lua's own messages -- syntax and
 * runtime errors -- shorten paths longer than 59 bytes to "...tail"). */
typedef struct tr_diag {
	char **msgs; /* owned */
	size_t n;
} tr_diag;

void tr_diag_init(tr_diag *d);
void tr_diag_free(tr_diag *d);

/* Limits of one sandboxed state. Zero fields take the defaults. */
typedef struct tr_lua_limits {
	size_t mem_bytes;       /* heap cap of the state; default 64 MiB */
	uint64_t instructions;  /* per top-level call (file load, one receive,
	                         * one predicate); default 50 M for loading,
	                         * 10 M per call */
} tr_lua_limits;

/*
 * Loads and validates `files` (in order, one shared namespace). On TR_OK,
 * *out is a new config. Otherwise TR_EINVAL (or TR_ENOMEM) and `diag`
 * holds every problem found, each naming file:line; *out is NULL.
 * `diag` must be initialised (tr_diag_init); messages are appended, in a
 * stable order: file errors first, then declarations in file order (keys
 * of one table sorted), then the supervision tree.
 * Reads the files from disk; runs them with a 64 MiB cap and 50 M
 * instructions per file. Not thread-safe only in that it must not race
 * tr_kind_register.
 */
int tr_config_load(const char *const *files, size_t nfiles, tr_config **out, tr_diag *diag);
/*
 * tr_config_load of one file whose text is src[0..len) instead of what is
 * on disk at `name` (the name in messages and in the config): for checking
 * text that is not a file (tests/fuzz). `lim` may be NULL: the limits of
 * tr_config_load; otherwise its instructions are each file's budget (the
 * fuzzer lowers both, so that a runaway input ends sooner). A
 * tr_lua_state_new of the result would read `name` from disk.
 */
int tr__config_load_mem(const char *name, const char *src, size_t len,
                        const tr_lua_limits *lim, tr_config **out, tr_diag *diag);

/*
 * A fresh sandboxed state with the config's files run again (the DSL
 * calls build nothing this time; they only number the functions), ready
 * for tr_lua_call. `lim` may be NULL (defaults). TR_OK, TR_ENOMEM, or
 * TR_EFAILED (with a message in err) if the files no longer load the same
 * way (changed on disk since tr_config_load: the function count differs).
 * Cost: about 20 KiB for pipelines/example.lua; it reads the files again.
 */
int tr_lua_state_new(const tr_config *c, const tr_lua_limits *lim, lua_State **out,
                     char *err, size_t errlen);
void tr_lua_state_free(lua_State *L);

/*
 * Calls function number `fn` as fn(msg, ctx) where msg is the msgpack map
 * in[0..inlen) turned into a Lua table (inlen 0: an empty table) and ctx
 * a table of read-only facts ({actor=, attempt=, tenant=}, may be NULL).
 * The result is appended to `out` as msgpack (nil: nothing appended);
 * *truth (if not NULL) is set to the result's Lua truthiness.
 * TR_OK; TR_EFAILED for a Lua error, with "file:line: message" in err
 * (instruction and memory limits included: "instruction limit exceeded (N
 * instructions)", "memory limit (N MiB) exceeded"); TR_EPROTO if the input
 * is not a msgpack map or the result cannot be encoded (functions, cycles,
 * ...); TR_EINVAL for an unknown function number. Each call gets a fresh
 * instruction budget. The state stays usable after any error.
 */
typedef struct tr_lua_ctx {
	const char *actor;
	uint32_t attempt;
	const char *tenant;
} tr_lua_ctx;

int tr_lua_call(lua_State *L, int fn, const unsigned char *in, size_t inlen,
                const tr_lua_ctx *ctx, tr_buf *out, int *truth, char *err, size_t errlen);

/*
 * A predicate: fn(msg, ctx) like tr_lua_call, with *truth its result's
 * truthiness and nothing encoded. `in` must be a map that tr_mp_check()
 * accepted (the engine checks every body once). msg is a read-only view
 * of those bytes, not a copy: a field is converted when it is read, so a
 * predicate on one field of a large message costs that field only.
 * pairs(msg) and #msg work on a full copy; writes are visible inside the
 * call and dropped after it; outside the call any read raises. Errors as
 * tr_lua_call (TR_EPROTO if `in` is not a map).
 */
int tr_lua_test(lua_State *L, int fn, const unsigned char *in, size_t inlen,
                const tr_lua_ctx *ctx, int *truth, char *err, size_t errlen);

/* msgpack <-> Lua (states from tr_lua_state_new only: they carry the
 * sandbox bookkeeping). Push: exactly one object in p[0..n), checked with
 * tr_mp_check first; TR_OK (one value pushed), TR_EPROTO (malformed, depth
 * past TR_MP_MAX_DEPTH, ext types, nil/NaN/table map keys) or TR_ENOMEM
 * (the state's cap); nothing pushed on error. Maps become tables, arrays
 * sequences, bin a string; a uint64 above INT64_MAX becomes a float.
 * Encode: appends to `out` (unchanged on error). Tables with keys exactly
 * 1..n (n >= 1) encode as arrays, others (the empty table too) as maps
 * with string or integer keys; TR_EPROTO for functions, userdata, threads,
 * cycles, boolean or fractional keys, depth past TR_MP_MAX_DEPTH;
 * TR_ETOOBIG past TR_MSG_MAX_WIRE; TR_ENOMEM. Reads tables raw (no
 * metamethods) and raises no Lua error. */
int tr_lua_push_msgpack(lua_State *L, const unsigned char *p, size_t n);
int tr_lua_to_msgpack(lua_State *L, int idx, tr_buf *out);

/*
 * The Lua actor behaviour: spawn with arg = const tr_lua_actor_arg *.
 * Each instance owns its lua_State. On a message (body = msgpack map) it
 * calls the actor's receive(msg, ctx); if the message is an ask, the
 * return value is the reply body (nil replies with an empty body). A Lua
 * error crashes the actor (reason TR_EFAILED): its supervisor restarts it
 * and the pending ask gets TR_ECRASHED, as for a C actor.
 */
typedef struct tr_lua_actor_arg {
	const tr_config *config;     /* outlives the actor */
	const tr_actor_spec *spec;   /* spec->receive_fn >= 0 */
} tr_lua_actor_arg;

extern const tr_actor_ops tr_lua_actor_ops;

/*
 * `troupe check FILE...`: loads the files as tr_config_load does, prints
 * each diagnostic on stderr ("file:line: message"), or "FILE...: ok" on
 * stdout. argv[0] is the command's name ("check") and the files follow,
 * so main() passes (argc - 1, argv + 1) for `troupe check a.lua b.lua`.
 * Returns the exit status: 0 valid, 1 invalid, 2 usage (no files).
 */
int tr_check_main(int argc, char **argv);

/* The tag of a step request (the pipeline engine asks with it); Lua
 * actors answer any user tag the same way. */
#define TR_TAG_STEP 0x100u

#endif
