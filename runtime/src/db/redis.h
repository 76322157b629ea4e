/*
 * db/redis.h -- the node's Redis client: one actor per node, registered
 * as "redis", holding one hiredis async connection on its worker's libuv
 * loop, through a corrected copy of hiredis 0.14's libuv adapter
 * (db/hiredis_uv.h: Debian's hangs on a refused connect and calls
 * uv_poll_start on every command; ../shared/deps.md §7).
 *
 * Protocol. Clients tr_ask() the actor:
 *   TR_TAG_REDIS_CMD     body {argv = [a1, a2, ...]}: one command; each
 *                        argument a str, bin or integer (sent with
 *                        redisAsyncCommandArgv: binary-safe, never a format).
 *   TR_TAG_REDIS_SCRIPT  body {script = "lua source", keys = [...], args = [...]}:
 *                        EVALSHA of the script's SHA-1 (computed once
 *                        per distinct script and cached), with SCRIPT LOAD
 *                        and a retry when the server answers NOSCRIPT
 *                        (a restarted or flushed server).
 *                        keys and args may be absent (empty); their
 *                        elements are str, bin or integer as for argv.
 * The reply body is {reply = value}: status and bulk strings -> str (bin
 * when not valid UTF-8), integers -> integer, nil -> nil, arrays ->
 * arrays (nested; an error nested in an array, as EXEC gives, -> str of
 * its text). Errors are error replies with body {message = "..."}:
 *     TR_EINVAL     a bad request (no argv, an argument of another type,
 *                   no script), or a command that would change the shared
 *                   connection for every caller on it (SUBSCRIBE and the
 *                   other pub/sub commands, MONITOR, CLIENT REPLY, MULTI,
 *                   EXEC, DISCARD, WATCH, UNWATCH, HELLO, RESET, SELECT,
 *                   QUIT): use a script for atomic multi-key work;
 *     TR_EFAILED    the server answered an error reply (message = its text);
 *     TR_ETIMEDOUT  no reply within `timeout` (the connection is then torn
 *                   down and reconnected: hiredis 0.14 cannot cancel one
 *                   command; the other commands in flight get TR_EIO);
 *     TR_EREJECTED  `max_pending` commands are already in flight;
 *     TR_EIO        not connected now (reconnecting, or the first connect
 *                   still running): callers fall back to their in-process
 *                   state at once, never wait; or the connection broke
 *                   while the command was in flight (it may or may not
 *                   have run);
 *     TR_ESHUTDOWN  the client is stopping.
 * Every ask gets exactly one reply. All commands share one connection,
 * in order: a blocking command (BLPOP, WAIT, a slow script) holds up
 * every command behind it, and past `timeout` costs the connection.
 *
 * Connection. Connects at start; on a refused/failed connect or a lost
 * connection, reconnects with exponential backoff (base 100 ms, max 5 s,
 * full jitter), forever, and answers TR_EIO meanwhile. `up` in the stats
 * says whether it is connected (the node's /ready reports "degraded"
 * while it is not).
 */
#ifndef TR_DB_REDIS_H
#define TR_DB_REDIS_H

#include <stdatomic.h>
#include <stdint.h>

#include <troupe/actor.h>

#define TR_REDIS_NAME "redis"
#define TR_TAG_REDIS_CMD 0x310u
#define TR_TAG_REDIS_SCRIPT 0x311u

typedef struct tr_redis_opts {
	const char *host;        /* numeric IPv4/IPv6 (no DNS on the loop); copied */
	int port;                /* 1..65535 */
	int db;                  /* SELECT after connect when > 0 */
	uint64_t timeout_us;     /* per command; 0 = 1 s */
	uint64_t connect_timeout_us; /* 0 = 1 s */
	uint32_t max_pending;    /* 0 = 10000 */
} tr_redis_opts;

/*
 * Figures, updated by the client's worker with relaxed atomics. commands:
 * asks received; errors: answered TR_EFAILED, TR_EINVAL, TR_EIO with the
 * command in flight (connection lost) or TR_ENOMEM; timeouts: TR_ETIMEDOUT;
 * rejected: TR_EREJECTED (max_pending); unavailable: TR_EIO because not
 * connected at arrival; connects: connections made (after SELECT when
 * db > 0); connect_failures: attempts that failed (refused, timed out,
 * SELECT refused); disconnects: connections lost or dropped after a
 * timeout; script_loads: SCRIPT LOADs sent after NOSCRIPT; pending:
 * commands in flight now.
 */
typedef struct tr_redis_stats {
	atomic_uint_fast64_t commands, errors, timeouts, rejected, unavailable;
	atomic_uint_fast64_t connects, connect_failures, disconnects, script_loads;
	atomic_uint pending;     /* gauge */
	atomic_int up;           /* 1: connected now */
} tr_redis_stats;

typedef struct tr_redis tr_redis;

/* As tr_pg_start (db/pg.h): pinned on `worker`, registered as
 * TR_REDIS_NAME, connects in the background. TR_OK with *out (free with
 * tr_redis_free after the node has stopped), TR_EINVAL (bad options,
 * message in err), TR_EEXIST (a client is registered already),
 * TR_ENOMEM. The stats stay valid until tr_redis_free; last_error is ""
 * until something fails, then the latest failure (kept after recovery). */
int tr_redis_start(tr_node *n, unsigned worker, const tr_redis_opts *o, tr_redis **out,
                   char *err, size_t errlen);
const tr_redis_stats *tr_redis_stats_of(const tr_redis *r);
void tr_redis_last_error(const tr_redis *r, char *buf, size_t len);
void tr_redis_free(tr_redis *r);

#endif
