/*
 * db/pg.h -- the node's PostgreSQL pool: one actor per node, registered
 * as "postgres", that owns up to `pool` libpq connections and runs the
 * queries other actors ask it for, fully asynchronously on its worker's
 * libuv loop (../shared/deps.md §6: PQconnectStart/PQconnectPoll with
 * uv_poll, our own connect timer, PQsendQueryParams, PQsocket re-armed
 * after every poll step, POLLERR handed to libpq, uv_poll stopped before
 * PQfinish).
 *
 * Protocol. Clients tr_ask() the actor (tag TR_TAG_PG_QUERY, any
 * timeout) with the body
 *     {sql = "select ... where a = $1", params = [v1, v2, ...]}
 * where each param is nil, a bool, an integer, a float or a str (sent as
 * text parameters; types are inferred by the server). Only one
 * statement: PQsendQueryParams refuses a second one, so a value can never
 * become SQL. The reply body is
 *     {columns = ["name", ...], rows = [[v, ...], ...], affected = n}
 * with values by column type: bool -> bool; int2/int4/int8 -> integer;
 * float4/float8/numeric -> float; NULL -> nil; anything else -> its text
 * (str). `affected` is PQcmdTuples (0 when empty; the row count of a
 * SELECT).
 * Errors are error replies (TR_MSGF_ERROR) with body
 *     {message = "...", sqlstate = "57014"}   (sqlstate when the server gave one)
 * and err:
 *     TR_EINVAL     the request is bad (no sql, a param of another type,
 *                   more than TR_PG_MAX_PARAMS, COPY FROM STDIN / TO
 *                   STDOUT) -- or the server said SQLSTATE class 22 (data
 *                   exception, e.g. invalid input syntax for type
 *                   integer), 42 (syntax / undefined; two statements in
 *                   sql are 42601) or 08P01 (more params than the
 *                   statement has);
 *     TR_ETIMEDOUT  statement_timeout (57014), or the request's deadline
 *                   (msg->deadline, µs since the epoch) passed while it
 *                   waited for a connection;
 *     TR_EREJECTED  `queue` requests already wait for a connection
 *                   (besides those a connection is being opened for);
 *     TR_EIO        the server cannot be reached now (all connections
 *                   down and reconnecting), or the connection broke
 *                   while the query ran (it may or may not have run;
 *                   also SQLSTATE class 08 and 57P01..57P03, which end
 *                   the session);
 *     TR_EFAILED    any other server error;
 *     TR_ESHUTDOWN  the pool is stopping.
 * Every ask gets exactly one reply.
 *
 * Pool behaviour. Connections open lazily up to `pool` (one is opened at
 * start, so /ready can say whether the server is reachable). A request
 * takes an idle connection, else opens one if below `pool`, else waits
 * (FIFO, at most `queue`). A connection idle for longer than
 * idle_timeout is pre-pinged (an empty query) before it is used; a dead
 * one is closed and the request goes to another (or a new) connection.
 * A connection older than max_lifetime is closed when it next goes idle
 * (recycled; checked when a statement ends, so an old idle connection
 * serves one more statement first). A failed connect retries with
 * exponential backoff (base 100 ms, max 5 s, full jitter) while requests
 * wait, and always for one connection: the pool keeps one open (or
 * opening), so it sees by itself when the server is back. With no
 * connection at all and the backoff running, requests fail at once with
 * TR_EIO.
 * statement_timeout is set per connection at connect, in the startup
 * packet (`-c statement_timeout=N` appended to the `options` conninfo
 * key), never by a SET. Behind PgBouncer that needs the pooler's consent:
 * PgBouncer refuses unknown startup parameters ("unsupported startup
 * parameter"), and its ignore_startup_parameters = options drops the
 * timeout silently: set it on the server role too (ALTER ROLE ... SET
 * statement_timeout).
 * pgbouncer = true: nothing relies on session state (no named prepared
 * statements, no SET after connect); this pool never prepares named
 * statements anyway, so the flag only forbids future session-level
 * features.
 *
 * The conninfo must not need DNS: libpq resolves a host name with a
 * blocking getaddrinfo, on the loop. tr_pg_start refuses host=NAME
 * without hostaddr= (numeric addresses, socket directories and
 * "localhost" are fine).
 */
#ifndef TR_DB_PG_H
#define TR_DB_PG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <troupe/actor.h>

#define TR_PG_NAME "postgres"
#define TR_TAG_PG_QUERY 0x300u
#define TR_PG_MAX_PARAMS 1000

typedef struct tr_pg_opts {
	const char *conninfo;          /* libpq conninfo (copied); use hostaddr= or host=/dir */
	uint32_t pool;                 /* connections, 1..1000; 0 = 10 */
	uint32_t queue;                /* requests waiting for a connection; 0 = 1000 */
	uint64_t connect_timeout_us;   /* per connect attempt; 0 = 5 s */
	uint64_t max_lifetime_us;      /* 0 = 1 h */
	uint64_t idle_timeout_us;      /* pre-ping after this much idleness; 0 = 20 s */
	uint64_t statement_timeout_us; /* server side; 0 = 30 s */
	bool pgbouncer;
} tr_pg_opts;

/* Figures, updated by the pool's worker with relaxed atomics (each is a
 * counter or a gauge on its own; readers want no snapshot consistency).
 * queries: statements sent to the server (whatever their outcome);
 * errors: error replies of any kind (timeouts and rejected included);
 * disconnects: established connections that broke (or stopped answering
 * a pre-ping); recycled: closed for max_lifetime. wait_hist buckets are
 * not cumulative: each counts the waits in its own range. Gauges: open =
 * established connections (idle + busy; a pre-ping is busy), queued =
 * requests waiting for a connection. */
typedef struct tr_pg_stats {
	atomic_uint_fast64_t queries, errors, timeouts, rejected;
	atomic_uint_fast64_t connects, connect_failures, disconnects, prepings, recycled;
	atomic_uint_fast64_t wait_us_sum, wait_count; /* time from ask to the statement sent */
	atomic_uint_fast64_t wait_hist[12]; /* <= 0.1,0.5,1,2,5,10,25,50,100,250,1000 ms, +Inf */
	atomic_uint open, idle, busy, queued; /* gauges */
	atomic_int up;                     /* 1: at least one connection works now */
} tr_pg_stats;

typedef struct tr_pg tr_pg;

/*
 * Starts the pool actor on worker `worker` of the running node n (pinned
 * there: it owns uv handles on that loop) and registers it as TR_PG_NAME.
 * Returns at once; the first connect runs in the background. TR_OK with
 * *out (free with tr_pg_free after the node has stopped), TR_EINVAL (bad
 * options, message in err), TR_EEXIST (a pool is registered already),
 * TR_ENOMEM.
 */
int tr_pg_start(tr_node *n, unsigned worker, const tr_pg_opts *o, tr_pg **out, char *err,
                size_t errlen);
/* The pool's figures (valid until tr_pg_free) and its last connection
 * error ("" when none yet; kept after the pool recovered; copied into
 * buf, one line). */
const tr_pg_stats *tr_pg_stats_of(const tr_pg *p);
void tr_pg_last_error(const tr_pg *p, char *buf, size_t len);
/* Frees the handle. The actor itself ends with its node (it closes its
 * connections then; pending asks get TR_ESHUTDOWN). */
void tr_pg_free(tr_pg *p);

#endif
