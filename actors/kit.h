/*
 * actors/kit.h -- what every built-in actor kind shares: reading its
 * settings (the actor table's keys other than kind/mailbox/overflow/
 * instances/batch, as one msgpack map: tr_actor_spec.config), reading a
 * step's message, and answering it.
 *
 * The step protocol (pipe/engine.h): a kind actor gets asks with tag
 * TR_TAG_STEP whose body is the message, a msgpack map. It answers each
 * with the message plus the fields it adds (tr_kout_reply), or with an
 * error (tr_step_fail: an error reply whose body is {message = "..."},
 * which the engine puts in the run's error). Fields the built-in kinds
 * read and write, by convention:
 *   text     the user's message (string)            input
 *   tenant, session                                  set by the HTTP door
 *   intent, confidence, slots                        intent
 *   passages = [{text, source, score}]               rag
 *   answer, sources = [..], usage = {..}             generate
 *   safety = {verdict, reasons}                      safety (redacts in place)
 *   tool, args -> result                             execute
 *
 * Settings are checked twice with the same code: by `troupe check` (the
 * kind's check function, through tr_kind_register_checked) and by the
 * actor's init; errors name the actor ("actor 'rag': top_k: ...").
 */
#ifndef TR_ACTORS_KIT_H
#define TR_ACTORS_KIT_H

#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>
#include <troupe/troupe.h>

#include "pipe/spec.h"

/* ---- regexes ---------------------------------------------------------- */

/*
 * Before regcomp: glibc compiles a counted or stacked repetition by
 * copying the repeated tree (x{3} is three copies of x, x+ is xx*), so
 * a short pattern like "(a{200}){200}" or "a+++++..." (each '+' doubles
 * what came before) takes gigabytes and minutes to compile: a config
 * must not be able to do that to the node (found by fuzz_lua_check: an
 * intent rule with sixty '+' in a row ran the loader out of 2 GiB). This
 * estimates the compiled size of an ERE from its structure and refuses,
 * with a message in why:
 * longer than TR_KRE_MAX_LEN, a quantifier right after another one, a
 * count above TR_KRE_MAX_COUNT, groups nested deeper than 32, or an
 * estimated size past TR_KRE_MAX_COST. TR_OK or TR_EINVAL. A pattern that
 * passes may still be invalid: regcomp says so.
 */
#define TR_KRE_MAX_LEN 4096
#define TR_KRE_MAX_COUNT 10000
#define TR_KRE_MAX_COST 100000
int tr_kregex_check(const char *ere, char *why, size_t whylen);

/* ---- settings --------------------------------------------------------- */

typedef struct tr_kcfg {
	msgpack_unpacked u;
	const msgpack_object_map *map; /* NULL: no settings */
	char who[80];                  /* "actor 'rag'" */
	char *err;                     /* the first problem goes here */
	size_t errlen;
	int failed;
} tr_kcfg;

/* Opens a's settings; TR_OK, or TR_EPROTO (with err) if they are not a
 * map. Always close. */
int tr_kcfg_open(tr_kcfg *c, const tr_actor_spec *a, char *err, size_t errlen);
void tr_kcfg_close(tr_kcfg *c);
/* Records a problem (only the first is kept); returns TR_EINVAL. */
int tr_kcfg_fail(tr_kcfg *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Every key must be one of `known` (NULL-terminated); an unknown one is
 * an error with a "did you mean" when one is close. */
int tr_kcfg_keys(tr_kcfg *c, const char *const *known);
const msgpack_object *tr_kcfg_get(const tr_kcfg *c, const char *key);
/* Typed reads: an absent key gives dflt; a wrong type or a value out of
 * range records an error and gives dflt. Strings are copied (tr__malloc;
 * the caller frees); NULL dflt stays NULL. */
char *tr_kcfg_str(tr_kcfg *c, const char *key, const char *dflt);
double tr_kcfg_num(tr_kcfg *c, const char *key, double dflt, double min, double max);
int64_t tr_kcfg_int(tr_kcfg *c, const char *key, int64_t dflt, int64_t min, int64_t max);
int tr_kcfg_bool(tr_kcfg *c, const char *key, int dflt);
/* A list of strings (or absent: *n = 0). *out is a tr__malloc'd array of
 * tr__malloc'd strings; free with tr_kstrv_free. */
int tr_kcfg_strv(tr_kcfg *c, const char *key, char ***out, size_t *n);
void tr_kstrv_free(char **v, size_t n);

/* ---- the step's message ------------------------------------------------ */

typedef struct tr_kmsg {
	msgpack_unpacked u;
	const msgpack_object_map *map; /* always set (an empty body: empty map) */
	msgpack_object_map empty;
} tr_kmsg;

/* TR_OK, TR_EPROTO when the body is not a msgpack map, or TR_ENOMEM.
 * Always close (the unpacked objects live in a per-thread zone until). */
int tr_kmsg_open(tr_kmsg *k, const tr_msg *m);
void tr_kmsg_close(tr_kmsg *k);
const msgpack_object *tr_kmsg_get(const tr_kmsg *k, const char *key);
/* The string field `key`: TR_OK with its bytes (not NUL-terminated),
 * TR_ENOTFOUND, or TR_EINVAL when it is not a string. */
int tr_kmsg_str(const tr_kmsg *k, const char *key, const char **s, size_t *n);
/* The same field looked up in a msgpack object that is a map. */
const msgpack_object *tr_kobj_get(const msgpack_object *map, const char *key);
int tr_kobj_is(const msgpack_object *o, const char *s);
/* The Lua-facing name of o's type, for messages: "string", "integer",
 * "number", "boolean", "list", "table", "binary data", "nil". */
const char *tr_kobj_type(const msgpack_object *o);

/* ---- answering ---------------------------------------------------------- */

/* Fields to add to the message: pack the key with tr_kout_key, then its
 * value with the returned packer. */
typedef struct tr_kout {
	tr_buf pairs;
	msgpack_packer pk;
	uint32_t n;
	/* Set by whoever appends bytes to `pairs` that msgpack-c did not pack
	 * (a tool's converted result): the reply is then checked by the next
	 * hop (tr_body_check), not trusted as made. */
	uint8_t raw;
} tr_kout;

void tr_kout_init(tr_kout *o);
void tr_kout_free(tr_kout *o);
msgpack_packer *tr_kout_key(tr_kout *o, const char *key);
int tr_kpack_str(msgpack_packer *pk, const char *s, size_t n);
/* Replies to req with its message plus o's fields (they win); frees o. */
int tr_kout_reply(tr_ctx *ctx, const tr_msg *req, tr_kout *o);
/* Error reply with the body {message = <formatted>}; `err` classifies it
 * (engine.c classify): TR_EINVAL / TR_EPROTO = the input is bad: class
 * "invalid", never retried, HTTP 422; TR_ETIMEDOUT "timeout"; anything
 * else (TR_EFAILED) "error". */
int tr_step_fail(tr_ctx *ctx, const tr_msg *req, int err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Registers every built-in kind (actors/builtin.c). Call once at start,
 * before loading files. */
int tr_actors_register_builtin(void);

#endif
