/*
 * actors/telemetry/telemetry.c -- the telemetry kind (telemetry.h).
 *
 * Design notes:
 *  - The hot path is one tap event: validate the body (allocation-free),
 *    read event/pipeline/step from the raw msgpack, then under the
 *    actor's own mutex bump counters and put the body in the ring -- a
 *    reference to the message's body, not a copy, so the ring costs no
 *    formatting. JSON is made only for the file/stdout sinks (into a
 *    reused batch buffer) and when someone reads the ring.
 *  - The mutex is there for the readers (status page, /metrics) on other
 *    threads; the actor is its only writer, so it is never contended in
 *    practice.
 *  - Every actor instance registers a tel_shared in a process-wide list
 *    (keyed by node and actor name) at init and removes it at terminate.
 *    Readers hold the list's lock while they look inside, so an entry is
 *    never freed under them. Lock order: the list, then one actor's.
 *
 * The database sinks (sink = "postgres" and/or "redis").
 *  - Each keeps a backlog of events (a body reference each, as the ring
 *    does): at most `backlog` events; an event that finds it full is
 *    dropped and counted (sink_dropped). Nothing ever waits: the writes
 *    are asks to the node's pool (db/pg.h, by name "postgres") and Redis
 *    client (db/redis.h, "redis"), answered later as messages.
 *  - One write at a time per sink, of the oldest `db_batch` events: at
 *    once when that many are waiting, else `flush_ms` after the first.
 *    postgres: one INSERT INTO troupe_events (db/migrations/002_events.sql)
 *    of the whole batch, whose only parameter is the batch as JSON
 *    (TEL_PG_SQL). redis: one XADD <redis_key> MAXLEN ~ <redis_maxlen> *
 *    field value ... per event, all sent at once (the client pipelines
 *    them on its connection); an event's fields are those of its JSON
 *    line (ts_us, tenant, the body's fields), values as text.
 *  - A write that fails while the server is down, slow or overloaded is
 *    retried, the same events in the same order, after a backoff (100 ms
 *    doubling to 5 s, reset by a success), and counted per event in
 *    sink_errors; events keep arriving into the backlog meanwhile. A
 *    write the server refuses for good (postgres: a data or SQL error
 *    such as a missing table, or another server error three times in a
 *    row; redis: an error reply such as WRONGTYPE) is dropped, counted in
 *    sink_failed and logged. One line goes to stderr when a sink starts
 *    failing and one when it writes again.
 *  - Delivery is at least once where it cannot be exactly once: a
 *    postgres write waits at most db_timeout_ms for a connection (the
 *    pool then fails it unrun) and runs at most the pool's
 *    statement_timeout (then it is rolled back), and our own ask timeout
 *    comes after both, so a retried batch was never stored -- unless the
 *    connection broke mid-statement. A redis XADD that timed out (the
 *    client's `timeout`) may have been applied, and its retry adds it again.
 *  - At terminate (a stop, a reload) the events not yet being written get
 *    one more write, whose answer no one reads.
 *
 * Settings of the database sinks (telemetry.h lists them all):
 *   backlog        integer 1..1000000, default 10000: events buffered per
 *                  database sink; past it new events are dropped (counted)
 *   db_batch       integer 1..1000, default 200: events per write (rows of
 *                  one INSERT; XADDs sent together)
 *   db_timeout_ms  integer 10..600000, default 5000: postgres: how long a
 *                  write may wait for a free connection; redis: for its
 *                  reply. Then it counts as failed and is retried.
 *   redis_key      string of 1..512 bytes, default the redis { prefix }
 *                  followed by "events" ("troupe:events"): the stream
 *   redis_maxlen   integer 0..1e10, default 100000: XADD ... MAXLEN ~ n
 *                  (approximate trimming); 0 = no MAXLEN
 *   flush_ms       (as for the file sink) the most a partial batch waits
 * sink "postgres" needs postgres { } declared, sink "redis" redis { }.
 */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "actors/kit.h"
#include "actors/telemetry/telemetry.h"
#include "actors/telemetry/writer.h"
#include "core/alloc.h"
#include "db/pg.h"
#include "db/redis.h"
#include "http/json.h"
#include "lua/lua_int.h"
#include "lua/tlua.h"
#include "msg/msg_int.h"
#include "pipe/mp.h"

const char *const tr_telemetry_sink_names[TR_TEL_NSINKS] = {"postgres", "redis"};
const char *const tr_telemetry_type_names[TR_TEL_NTYPES] = {"start",   "end",   "retry",
                                                            "timeout", "error", "other"};

/* Timer tag of the batch flush (a user tag: below TR_TAG_SYS_BASE). */
#define TEL_TAG_FLUSH 0x7e1e0001u
/* Buffers the writer may be behind before batches are dropped. */
#define TEL_PENDING_BUFFERS 16
#define TEL_PATH_MAX 4000

enum { SINK_RING = 1, SINK_FILE = 2, SINK_STDOUT = 4, SINK_PG = 8, SINK_REDIS = 16 };

/* The database sinks, by index (tr_telemetry_stats' sink_* arrays). */
#define TEL_DB_PG TR_TEL_SINK_PG
#define TEL_DB_REDIS TR_TEL_SINK_REDIS
/* Timer tags of the database sinks' flush and retry (TEL_TAG_DB + index). */
#define TEL_TAG_DB 0x7e1e0010u
/* Backoff after a failed database write: doubling from the first to the max. */
#define TEL_BACKOFF_MIN_MS 100u
#define TEL_BACKOFF_MAX_MS 5000u
/* A batch the server keeps refusing with an error that may be passing
 * (TR_EFAILED) is dropped after this many tries. */
#define TEL_DB_TRIES 3
#define TEL_KEY_MAX 512

/* ---- settings ------------------------------------------------------------ */

typedef struct tel_cfg {
	unsigned sinks;     /* SINK_* */
	char *file;         /* owned */
	uint64_t max_bytes;
	unsigned keep;
	uint32_t ring;
	uint32_t flush_ms;
	uint64_t buffer;
	uint64_t max_line;
	/* the database sinks */
	uint32_t backlog;       /* events buffered per sink at most */
	uint32_t db_batch;      /* events per write */
	uint32_t db_timeout_ms; /* a write's wait (see the file's header) */
	uint64_t pg_ask_ms;     /* postgres: the ask's timeout, past the pool's own bounds */
	char *redis_key;        /* owned */
	uint64_t redis_maxlen;  /* 0: no MAXLEN */
	char node[64];          /* the node's name, for troupe_events.node */
} tel_cfg;


#define SIZE_HINT "a number of bytes, or \"512B\", \"64KiB\", \"1MiB\", \"1GiB\""

/* "64KiB" & co. into bytes (saturating); 0 on success. */
static int parse_size(const char *s, size_t n, uint64_t *out)
{
	static const struct {
		const char *u;
		unsigned shift;
	} units[] = {{"B", 0}, {"KiB", 10}, {"MiB", 20}, {"GiB", 30}};
	uint64_t v = 0;
	size_t i = 0;

	while (i < n && s[i] >= '0' && s[i] <= '9') {
		unsigned d = (unsigned)(s[i++] - '0');
		v = v > (UINT64_MAX - d) / 10 ? UINT64_MAX : v * 10 + d;
	}
	if (i == 0)
		return -1;
	for (size_t u = 0; u < sizeof(units) / sizeof(units[0]); u++) {
		if (n - i == strlen(units[u].u) && memcmp(s + i, units[u].u, n - i) == 0) {
			*out = v > (UINT64_MAX >> units[u].shift) ? UINT64_MAX : v << units[u].shift;
			return 0;
		}
	}
	return -1;
}

static uint64_t kcfg_size(tr_kcfg *k, const char *key, uint64_t dflt, uint64_t min,
                          uint64_t max, const char *lo, const char *hi)
{
	const msgpack_object *o = tr_kcfg_get(k, key);
	uint64_t v;

	if (o == NULL)
		return dflt;
	if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
		v = o->via.u64;
	} else if (o->type == MSGPACK_OBJECT_FLOAT64 && o->via.f64 >= 0 &&
	           o->via.f64 == floor(o->via.f64) && o->via.f64 < 1e19) {
		v = (uint64_t)o->via.f64;
	} else if (o->type == MSGPACK_OBJECT_STR) {
		if (parse_size(o->via.str.ptr, o->via.str.size, &v) != 0) {
			tr_kcfg_fail(k, "%s: bad size '%.*s' (%s)", key, (int)o->via.str.size,
			             o->via.str.ptr, SIZE_HINT);
			return dflt;
		}
	} else {
		tr_kcfg_fail(k, "%s: expected a size (%s), got %s", key, SIZE_HINT, tr_kobj_type(o));
		return dflt;
	}
	if (v < min || v > max) {
		tr_kcfg_fail(k, "%s: must be between %s and %s", key, lo, hi);
		return dflt;
	}
	return v;
}

static void cfg_free(tel_cfg *c)
{
	tr__free(c->file);
	c->file = NULL;
	tr__free(c->redis_key);
	c->redis_key = NULL;
}

#define NSINKS 5
static const char *const sink_names[NSINKS] = {"ring", "file", "stdout", "postgres", "redis"};
static const unsigned sink_bits[NSINKS] = {SINK_RING, SINK_FILE, SINK_STDOUT, SINK_PG,
                                           SINK_REDIS};

/* One sink name in o (a string), or-ed into *sinks. */
static int one_sink(tr_kcfg *k, const msgpack_object *o, unsigned *sinks)
{
	char name[32];
	const char *best = NULL;
	unsigned bd = 3;

	if (o->type != MSGPACK_OBJECT_STR)
		return tr_kcfg_fail(k, "sink: expected \"ring\", \"file\", \"stdout\", \"postgres\" "
		                       "or \"redis\" (or a list of them), got %s", tr_kobj_type(o));
	for (size_t i = 0; i < NSINKS; i++) {
		if (tr_kobj_is(o, sink_names[i])) {
			if (*sinks & sink_bits[i])
				return tr_kcfg_fail(k, "sink: \"%s\" is listed twice", sink_names[i]);
			*sinks |= sink_bits[i];
			return TR_OK;
		}
	}
	if (o->via.str.size < sizeof(name)) {
		memcpy(name, o->via.str.ptr, o->via.str.size);
		name[o->via.str.size] = '\0';
		for (size_t i = 0; i < NSINKS; i++) {
			unsigned d = tr__lua_editdist(name, sink_names[i], 2);
			if (d < bd) {
				bd = d;
				best = sink_names[i];
			}
		}
	}
	if (best != NULL)
		return tr_kcfg_fail(k, "sink: unknown sink '%.*s' (did you mean '%s'?)",
		                    (int)o->via.str.size, o->via.str.ptr, best);
	return tr_kcfg_fail(k, "sink: unknown sink '%.*s' (sinks: ring, file, stdout, postgres, "
	                       "redis)",
	                    o->via.str.size > 40 ? 40 : (int)o->via.str.size, o->via.str.ptr);
}

/* Reads a's settings into c (check and init share this). */
static int tel_settings(const tr_actor_spec *a, tel_cfg *c, char *err, size_t errlen)
{
	static const char *const known[] = {"sink",      "file",          "max_bytes", "keep",
	                                    "ring",      "flush_ms",      "buffer",    "max_line",
	                                    "backlog",   "db_batch",      "db_timeout_ms",
	                                    "redis_key", "redis_maxlen",  NULL};
	static const char *const db_only[] = {"backlog", "db_batch", "db_timeout_ms", NULL};
	static const char *const redis_only[] = {"redis_key", "redis_maxlen", NULL};
	const tr_config *cfg = a->cfg;
	const msgpack_object *so;
	tr_kcfg k;
	int rc;

	memset(c, 0, sizeof(*c));
	rc = tr_kcfg_open(&k, a, err, errlen);
	if (rc == TR_OK)
		rc = tr_kcfg_keys(&k, known);
	if (rc != TR_OK)
		goto out;
	so = tr_kcfg_get(&k, "sink");
	if (so == NULL) {
		if (tr_kcfg_get(&k, "file") != NULL)
			c->sinks |= SINK_FILE;
		if (tr_kcfg_get(&k, "ring") != NULL || c->sinks == 0)
			c->sinks |= SINK_RING;
	} else if (so->type == MSGPACK_OBJECT_ARRAY) {
		if (so->via.array.size == 0) {
			rc = tr_kcfg_fail(&k, "sink: the list is empty (sinks: ring, file, stdout, "
			                      "postgres, redis)");
			goto out;
		}
		for (uint32_t i = 0; i < so->via.array.size && rc == TR_OK; i++)
			rc = one_sink(&k, &so->via.array.ptr[i], &c->sinks);
	} else {
		rc = one_sink(&k, so, &c->sinks);
	}
	if (rc != TR_OK)
		goto out;

	c->file = tr_kcfg_str(&k, "file", NULL);
	c->max_bytes = kcfg_size(&k, "max_bytes", 64u << 20, 1024, (uint64_t)1 << 40, "1KiB",
	                         "1024GiB");
	c->keep = (unsigned)tr_kcfg_int(&k, "keep", 3, 0, 100);
	c->ring = (uint32_t)tr_kcfg_int(&k, "ring", 1000, 1, 1000000);
	c->flush_ms = (uint32_t)tr_kcfg_int(&k, "flush_ms", 100, 1, 60000);
	c->buffer = kcfg_size(&k, "buffer", 64u << 10, 4u << 10, 64u << 20, "4KiB", "64MiB");
	c->max_line = kcfg_size(&k, "max_line", 16u << 10, 256, 1u << 20, "256B", "1MiB");
	c->backlog = (uint32_t)tr_kcfg_int(&k, "backlog", 10000, 1, 1000000);
	c->db_batch = (uint32_t)tr_kcfg_int(&k, "db_batch", 200, 1, 1000);
	c->db_timeout_ms = (uint32_t)tr_kcfg_int(&k, "db_timeout_ms", 5000, 10, 600000);
	c->redis_maxlen = (uint64_t)tr_kcfg_int(&k, "redis_maxlen", 100000, 0, 10000000000ll);
	c->redis_key = tr_kcfg_str(&k, "redis_key", NULL);
	if (c->redis_key == NULL && !k.failed) {
		const char *pre = cfg != NULL && cfg->redis.prefix != NULL ? cfg->redis.prefix
		                                                           : "troupe:";
		size_t pn = strlen(pre);
		if ((c->redis_key = tr__malloc(pn + 7)) != NULL) {
			memcpy(c->redis_key, pre, pn);
			memcpy(c->redis_key + pn, "events", 7);
		} else {
			tr_kcfg_fail(&k, "out of memory");
		}
	}
	/* The pool answers a write that waited db_timeout_ms for a connection
	 * (unrun) or ran past statement_timeout (rolled back) itself; our own
	 * timeout comes after both, so it never leaves a write that may
	 * still land. */
	uint64_t stmt_us = cfg != NULL && cfg->postgres.statement_timeout_us
	                       ? cfg->postgres.statement_timeout_us
	                       : 30000000u;
	c->pg_ask_ms = c->db_timeout_ms + stmt_us / 1000u + 5000u;
	snprintf(c->node, sizeof(c->node), "%s",
	         cfg != NULL && cfg->node.name != NULL ? cfg->node.name : "");
	for (const char *const *o = db_only; *o != NULL && !k.failed; o++)
		if (!(c->sinks & (SINK_PG | SINK_REDIS)) && tr_kcfg_get(&k, *o) != NULL)
			tr_kcfg_fail(&k, "%s: only with sink \"postgres\" or \"redis\"", *o);
	for (const char *const *o = redis_only; *o != NULL && !k.failed; o++)
		if (!(c->sinks & SINK_REDIS) && tr_kcfg_get(&k, *o) != NULL)
			tr_kcfg_fail(&k, "%s: only with sink \"redis\"", *o);
	if (!k.failed && (c->redis_key[0] == '\0' || strlen(c->redis_key) > TEL_KEY_MAX))
		tr_kcfg_fail(&k, "redis_key: expected a key of 1 to %d bytes", TEL_KEY_MAX);
	if (!k.failed && (c->sinks & SINK_PG) && cfg != NULL && !cfg->postgres.on)
		tr_kcfg_fail(&k, "sink \"postgres\" writes to the node's PostgreSQL pool; declare "
		                 "postgres { conninfo = \"...\" }");
	if (!k.failed && (c->sinks & SINK_REDIS) && cfg != NULL && !cfg->redis.on)
		tr_kcfg_fail(&k, "sink \"redis\" writes to the node's Redis; declare redis { url = "
		                 "\"redis://...\" }");
	if (k.failed) {
		rc = TR_EINVAL;
		goto out;
	}
	if ((c->sinks & SINK_FILE) && c->file == NULL)
		rc = tr_kcfg_fail(&k, "sink \"file\" needs file = \"path\"");
	else if (c->file != NULL && !(c->sinks & SINK_FILE))
		rc = tr_kcfg_fail(&k, "file: set, but sink has no \"file\" (add it to sink)");
	else if (c->file != NULL && (c->file[0] == '\0' || strlen(c->file) > TEL_PATH_MAX))
		rc = tr_kcfg_fail(&k, "file: expected a path of 1 to %d bytes", TEL_PATH_MAX);
	else if (!(c->sinks & SINK_FILE) && tr_kcfg_get(&k, "max_bytes") != NULL)
		rc = tr_kcfg_fail(&k, "max_bytes: only with sink \"file\"");
	else if (!(c->sinks & SINK_FILE) && tr_kcfg_get(&k, "keep") != NULL)
		rc = tr_kcfg_fail(&k, "keep: only with sink \"file\"");
	else if (!(c->sinks & SINK_RING) && tr_kcfg_get(&k, "ring") != NULL)
		rc = tr_kcfg_fail(&k, "ring: set, but sink has no \"ring\" (add it to sink)");
out:
	tr_kcfg_close(&k);
	if (rc != TR_OK)
		cfg_free(c);
	return rc;
}

int tr_telemetry_check(const tr_actor_spec *a, char *err, size_t errlen)
{
	tel_cfg c;
	int rc = tel_settings(a, &c, err, errlen);
	if (rc == TR_OK)
		cfg_free(&c);
	return rc;
}

/* ---- JSON ------------------------------------------------------------------ */

/* Values are written by the HTTP door's msgpack -> JSON (http/json.h), so
 * an event reads the same in a log line, the ring and an answer. */

static uint64_t be(const unsigned char *p, unsigned n)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

static int put(tr_buf *o, const void *p, size_t n)
{
	return tr__buf_append(o, p, n);
}

static int puts_(tr_buf *o, const char *s)
{
	return tr__buf_append(o, s, strlen(s));
}

/* A map key at p as a JSON key with its colon: strings as they are,
 * integers in decimal; 0 (nothing written) for other keys, which are left
 * out with their values, as the door does. -1 on ENOMEM. */
static int json_key(tr_buf *o, const unsigned char *p, size_t n)
{
	const char *s;
	size_t sn;
	unsigned char c = p[0];
	char b[32];

	if (tr__mp_str(p, n, &s, &sn) == TR_OK)
		return tr__json_str(s, sn, o) == TR_OK && put(o, ":", 1) == TR_OK ? 1 : -1;
	if (c <= 0x7f)
		snprintf(b, sizeof(b), "%u", c);
	else if (c >= 0xe0)
		snprintf(b, sizeof(b), "%d", (int)(signed char)c);
	else if (c >= 0xcc && c <= 0xcf)
		snprintf(b, sizeof(b), "%llu", (unsigned long long)be(p + 1, 1u << (c - 0xcc)));
	else if (c >= 0xd0 && c <= 0xd3) {
		unsigned w = 1u << (c - 0xd0);
		uint64_t v = be(p + 1, w), sign = 1ull << (8 * w - 1);
		/* sign-extend the w-byte two's complement value */
		snprintf(b, sizeof(b), "%lld", (long long)(w == 8 ? (int64_t)v : (int64_t)((v ^ sign) - sign)));
	} else
		return 0;
	return tr__json_str(b, strlen(b), o) == TR_OK && put(o, ":", 1) == TR_OK ? 1 : -1;
}

/* ---- what one actor shares with readers -------------------------------------- */

enum { EV_BODY, EV_PASS, EV_OVERSIZE };

typedef struct tel_ent {
	uint64_t ts_us;
	tr_body *body;      /* a reference (EV_BODY); else NULL */
	uint64_t trace_hi, trace_lo;
	uint32_t tenant;
	uint32_t bytes;     /* body size */
	uint8_t kind;
} tel_ent;

typedef struct tel_step {
	char *pipeline, *step; /* owned */
	uint64_t hash;
	uint64_t n[TR_TEL_NTYPES];
	uint64_t time_us;      /* step_us of its end events */
} tel_step;

#define STEP_IDX_CAP (2 * TR_TEL_STEPS_MAX) /* power of two */

typedef struct tel_shared {
	struct tel_shared *next; /* the registry's list (its lock) */
	tr_node *node;
	char name[64];
	unsigned sinks;          /* SINK_*, set before registering */
	tel_writer *fw, *ow;     /* file and stdout writers (shared, writer.h); NULL
	                          * without that sink; set before registering */
	uv_mutex_t mu;
	/* Guarded by mu. */
	tel_ent *ring;           /* NULL without the ring sink */
	uint32_t cap, head, len; /* head: the next slot written */
	tr_telemetry_stats st;
	tel_step *steps;
	uint32_t nsteps, capsteps;
	uint32_t *idx;           /* step index + 1 per slot; 0 = empty */
} tel_shared;

static uv_once_t reg_once = UV_ONCE_INIT;
static uv_mutex_t reg_mu;
static tel_shared *reg_head;

static void reg_init(void)
{
	if (uv_mutex_init(&reg_mu) != 0)
		abort(); /* at start-up, before any actor: nothing to fall back to */
}

static int matches(const tel_shared *s, tr_node *node, const char *name)
{
	return s->node == node && (name == NULL || strcmp(s->name, name) == 0);
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 0x100000001b3ull;
	return h;
}

static uint64_t pair_hash(const char *pl, size_t pn, const char *st, size_t sn)
{
	uint64_t h = fnv(0xcbf29ce484222325ull, pl, pn);
	h = fnv(h ^ 0xff, st, sn);
	return h ? h : 1;
}

/* The step entry for (pl, st), made if new; NULL past TR_TEL_STEPS_MAX or
 * on OOM. Called with sh->mu held. */
static tel_step *step_get(tel_shared *sh, const char *pl, size_t pn, const char *st, size_t sn,
                          int make)
{
	uint64_t h = pair_hash(pl, pn, st, sn);
	uint32_t slot;

	if (sh->idx == NULL) {
		if (!make || (sh->idx = tr__calloc(STEP_IDX_CAP, sizeof(uint32_t))) == NULL)
			return NULL;
	}
	for (slot = (uint32_t)h & (STEP_IDX_CAP - 1);; slot = (slot + 1) & (STEP_IDX_CAP - 1)) {
		uint32_t i = sh->idx[slot];
		if (i == 0)
			break;
		tel_step *e = &sh->steps[i - 1];
		if (e->hash == h && strlen(e->pipeline) == pn && memcmp(e->pipeline, pl, pn) == 0 &&
		    strlen(e->step) == sn && memcmp(e->step, st, sn) == 0)
			return e;
	}
	if (!make || sh->nsteps == TR_TEL_STEPS_MAX)
		return NULL;
	if (sh->nsteps == sh->capsteps) {
		uint32_t nc = sh->capsteps ? sh->capsteps * 2 : 16;
		tel_step *ns = tr__realloc(sh->steps, nc * sizeof(*ns));
		if (ns == NULL)
			return NULL;
		sh->steps = ns;
		sh->capsteps = nc;
	}
	tel_step *e = &sh->steps[sh->nsteps];
	memset(e, 0, sizeof(*e));
	e->pipeline = tr__strndup(pl, pn);
	e->step = tr__strndup(st, sn);
	if (e->pipeline == NULL || e->step == NULL) {
		tr__free(e->pipeline);
		tr__free(e->step);
		return NULL;
	}
	e->hash = h;
	sh->idx[slot] = ++sh->nsteps;
	return e;
}

static void shared_free(tel_shared *sh)
{
	if (sh == NULL)
		return;
	for (uint32_t i = 0; sh->ring != NULL && i < sh->cap; i++)
		tr_body_unref(sh->ring[i].body);
	tr__free(sh->ring);
	for (uint32_t i = 0; i < sh->nsteps; i++) {
		tr__free(sh->steps[i].pipeline);
		tr__free(sh->steps[i].step);
	}
	tr__free(sh->steps);
	tr__free(sh->idx);
	uv_mutex_destroy(&sh->mu);
	tr__free(sh);
}

/* ---- the actor ------------------------------------------------------------------ */

/*
 * One database sink's backlog: a ring of events (a body reference each,
 * as the ring sink keeps), the oldest `inflight` of them being written
 * now. Only the actor touches it; its figures are copied into the
 * shared counters under sh->mu.
 */
typedef struct tel_db {
	int idx;             /* TEL_DB_PG, TEL_DB_REDIS */
	tel_ent *q;          /* NULL: the sink is off */
	uint32_t cap, head, len;
	uint32_t inflight;   /* the first `inflight` events of q are being written */
	uint64_t corr;       /* postgres: the ask in flight */
	uint64_t *corrs;     /* redis: one ask per event of the round in flight */
	uint8_t *state;      /* redis: per event of the round: DB_WAIT, DB_DONE, ... */
	uint32_t answered, hint;
	unsigned tries;      /* of the batch at the head (postgres) */
	int timer_armed;
	uint64_t retry_at_ns;/* no write before this (backoff) */
	uint32_t backoff_ms;
	tr_buf buf;          /* scratch: a batch's JSON, a command */
	tr_buf cmd;          /* scratch: a command's msgpack */
	char why[320];       /* the first error of the write in flight */
} tel_db;

typedef struct tel_st {
	const tr_actor_spec *spec;
	tel_cfg cfg;
	tel_shared *sh;      /* owned; registered */
	tr_buf batch;        /* JSON lines not yet handed to the writer */
	uint64_t batch_lines;
	int timer_armed;
	tel_db db[TR_TEL_NSINKS];
} tel_st;

static int db_open(tel_st *st, int idx);
static void db_close(tr_ctx *ctx, tel_st *st, tel_db *d);

static int tel_init(tr_ctx *ctx, void *state, const void *arg)
{
	const tr_actor_spec *a = arg;
	tel_st *st = state;
	tel_shared *sh = NULL;
	char err[512];
	int rc;

	if (a == NULL)
		return TR_EINVAL;
	st->spec = a;
	tr_buf_init(&st->batch);
	rc = tel_settings(a, &st->cfg, err, sizeof(err));
	if (rc != TR_OK)
		goto fail;
	uv_once(&reg_once, reg_init);
	sh = tr__calloc(1, sizeof(*sh));
	if (sh == NULL || uv_mutex_init(&sh->mu) != 0) {
		tr__free(sh);
		sh = NULL;
		rc = TR_ENOMEM;
		snprintf(err, sizeof(err), "out of memory");
		goto fail;
	}
	sh->node = tr_ctx_node(ctx);
	sh->sinks = st->cfg.sinks;
	snprintf(sh->name, sizeof(sh->name), "%s", a->name ? a->name : "");
	st->sh = sh; /* the database sinks' stats live there */
	for (int i = 0; i < TR_TEL_NSINKS; i++) {
		st->db[i].idx = i;
		tr_buf_init(&st->db[i].buf);
		tr_buf_init(&st->db[i].cmd);
	}
	if (((st->cfg.sinks & SINK_PG) && db_open(st, TEL_DB_PG) != TR_OK) ||
	    ((st->cfg.sinks & SINK_REDIS) && db_open(st, TEL_DB_REDIS) != TR_OK)) {
		rc = TR_ENOMEM;
		snprintf(err, sizeof(err), "out of memory for a backlog of %u events",
		         st->cfg.backlog);
		goto fail;
	}
	if (st->cfg.sinks & SINK_RING) {
		sh->ring = tr__calloc(st->cfg.ring, sizeof(tel_ent));
		sh->cap = st->cfg.ring;
		if (sh->ring == NULL) {
			rc = TR_ENOMEM;
			snprintf(err, sizeof(err), "out of memory for a ring of %u events", st->cfg.ring);
			goto fail;
		}
	}
	if (st->cfg.sinks & SINK_FILE) {
		tel_writer_opts wo = {st->cfg.file, st->cfg.max_bytes, st->cfg.keep,
		                      (size_t)st->cfg.buffer * TEL_PENDING_BUFFERS};
		rc = tel_writer_open(&wo, &sh->fw, err, sizeof(err));
		if (rc != TR_OK)
			goto fail;
	}
	if (st->cfg.sinks & SINK_STDOUT) {
		tel_writer_opts wo = {NULL, 0, 0, (size_t)st->cfg.buffer * TEL_PENDING_BUFFERS};
		rc = tel_writer_open(&wo, &sh->ow, err, sizeof(err));
		if (rc != TR_OK)
			goto fail;
	}
	uv_mutex_lock(&reg_mu);
	sh->next = reg_head;
	reg_head = sh;
	uv_mutex_unlock(&reg_mu);
	st->sh = sh;
	return TR_OK;
fail:
	/* init has no other way to say why; check caught the usual causes */
	if (strncmp(err, "actor '", 7) == 0)
		fprintf(stderr, "troupe: %s\n", err);
	else
		fprintf(stderr, "troupe: actor '%s': %s\n", a->name ? a->name : "?", err);
	if (sh != NULL) {
		tel_writer_close(sh->fw);
		tel_writer_close(sh->ow);
		for (int i = 0; i < TR_TEL_NSINKS; i++)
			db_close(NULL, st, &st->db[i]);
	}
	st->sh = NULL;
	shared_free(sh);
	cfg_free(&st->cfg);
	tr_buf_free(&st->batch);
	return rc;
}

static void flush(tel_st *st)
{
	uint64_t dropped = 0;
	if (st->batch.len == 0)
		return;
	if (st->sh->fw != NULL)
		dropped += tel_writer_push(st->sh->fw, st->batch.data, st->batch.len, st->batch_lines);
	if (st->sh->ow != NULL)
		dropped += tel_writer_push(st->sh->ow, st->batch.data, st->batch.len, st->batch_lines);
	st->batch.len = 0;
	st->batch_lines = 0;
	if (dropped > 0) {
		uv_mutex_lock(&st->sh->mu);
		st->sh->st.lines_dropped += dropped;
		uv_mutex_unlock(&st->sh->mu);
	}
}

static void tel_terminate(tr_ctx *ctx, void *state, int reason)
{
	tel_st *st = state;
	(void)reason;
	if (st->sh == NULL)
		return;
	uv_mutex_lock(&reg_mu);
	for (tel_shared **p = &reg_head; *p != NULL; p = &(*p)->next) {
		if (*p == st->sh) {
			*p = st->sh->next;
			break;
		}
	}
	uv_mutex_unlock(&reg_mu);
	flush(st);
	for (int i = 0; i < TR_TEL_NSINKS; i++)
		db_close(ctx, st, &st->db[i]); /* a last write of the backlog, unanswered */
	tel_writer_close(st->sh->fw); /* the last user writes what is queued */
	tel_writer_close(st->sh->ow);
	st->sh->fw = st->sh->ow = NULL;
	shared_free(st->sh);
	st->sh = NULL;
	cfg_free(&st->cfg);
	tr_buf_free(&st->batch);
}

static int is_map(const unsigned char *p)
{
	return (p[0] & 0xf0) == 0x80 || p[0] == 0xde || p[0] == 0xdf;
}

/* The string field k of map p, or NULL. */
static const char *field_str(const unsigned char *p, size_t n, const char *k, size_t *len)
{
	const unsigned char *v;
	size_t vn;
	const char *s;
	if (tr__mp_map_get(p, n, k, &v, &vn) != TR_OK || tr__mp_str(v, vn, &s, len) != TR_OK)
		return NULL;
	return s;
}

/* The fields record() reads from a tap event, found in one pass over its
 * (checked) map: on every event, four lookups walked it four times. The
 * first of duplicate keys counts, as with tr__mp_map_get. */
typedef struct tel_fields {
	const char *ev, *pl, *sp;
	size_t en, pn, sn;
	uint64_t step_us;
} tel_fields;

static void read_fields(const unsigned char *p, size_t n, tel_fields *f)
{
	uint32_t cnt;
	size_t pos;
	unsigned seen = 0;
	memset(f, 0, sizeof(*f));
	if (tr__mp_map_head(p, n, &cnt, &pos) != TR_OK)
		return;
	for (uint32_t i = 0; i < cnt; i++) {
		const unsigned char *k = p + pos, *v;
		size_t ks = tr__mp_size(k), vs, kl;
		const char *kstr, **sv = NULL;
		size_t *lv = NULL;
		v = k + ks;
		vs = tr__mp_size(v);
		pos += ks + vs;
		unsigned bit = 0;
		if (tr__mp_str(k, ks, &kstr, &kl) != TR_OK)
			continue;
		if (kl == 5 && memcmp(kstr, "event", 5) == 0)
			sv = &f->ev, lv = &f->en, bit = 1;
		else if (kl == 8 && memcmp(kstr, "pipeline", 8) == 0)
			sv = &f->pl, lv = &f->pn, bit = 2;
		else if (kl == 4 && memcmp(kstr, "step", 4) == 0)
			sv = &f->sp, lv = &f->sn, bit = 4;
		else if (kl == 7 && memcmp(kstr, "step_us", 7) == 0)
			bit = 8;
		if (bit == 0 || (seen & bit))
			continue;
		seen |= bit;
		if (sv != NULL) {
			if (tr__mp_str(v, vs, sv, lv) != TR_OK)
				*sv = NULL;
		} else {
			if (v[0] <= 0x7f)
				f->step_us = v[0];
			else if (v[0] >= 0xcc && v[0] <= 0xcf)
				f->step_us = be(v + 1, 1u << (v[0] - 0xcc));
		}
	}
}

/* Whether s[0..n) may be a pipeline or step name in a counter (and a
 * metric label): 1..63 bytes of printable ASCII, as declared names are. */
static int label_ok(const char *s, size_t n)
{
	if (s == NULL || n == 0 || n > 63)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (s[i] < 0x20 || s[i] > 0x7e)
			return 0;
	return 1;
}

static int type_of(const char *s, size_t n)
{
	for (int t = 0; s != NULL && t < TR_TEL_OTHER; t++)
		if (strlen(tr_telemetry_type_names[t]) == n &&
		    memcmp(tr_telemetry_type_names[t], s, n) == 0)
			return t;
	return TR_TEL_OTHER;
}

static void trace_hex(char *b, uint64_t hi, uint64_t lo)
{
	snprintf(b, 33, "%016llx%016llx", (unsigned long long)hi, (unsigned long long)lo);
}

/* One event as a JSON object (no newline) appended to o. */
static int event_json(tr_buf *o, const tel_ent *e, const unsigned char *p, size_t n)
{
	char b[96];
	const char *tn = e->tenant ? tr_tenant_name(e->tenant) : NULL;
	const unsigned char *v;
	size_t vn;

	snprintf(b, sizeof(b), "{\"ts_us\":%llu", (unsigned long long)e->ts_us);
	if (puts_(o, b) != TR_OK)
		return TR_ENOMEM;
	if (tn != NULL && (e->kind != EV_BODY || tr__mp_map_get(p, n, "tenant", &v, &vn) != TR_OK)) {
		if (puts_(o, ",\"tenant\":") != TR_OK || tr__json_str(tn, strlen(tn), o) != TR_OK)
			return TR_ENOMEM;
	}
	if (e->kind == EV_PASS || e->kind == EV_OVERSIZE) {
		char tr[33];
		trace_hex(tr, e->trace_hi, e->trace_lo);
		snprintf(b, sizeof(b), ",\"event\":\"%s\",\"bytes\":%u,\"trace\":\"%s\"}",
		         e->kind == EV_PASS ? "pass" : "oversize", e->bytes, tr);
		return puts_(o, b);
	}
	/* the body's fields, ts_us (ours) left out */
	uint32_t cnt;
	size_t pos;
	if (p[0] >= 0x80 && p[0] <= 0x8f) {
		cnt = p[0] & 0x0f;
		pos = 1;
	} else if (p[0] == 0xde) {
		cnt = (uint32_t)be(p + 1, 2);
		pos = 3;
	} else {
		cnt = (uint32_t)be(p + 1, 4);
		pos = 5;
	}
	for (uint32_t i = 0; i < cnt; i++) {
		size_t ks = tr__mp_size(p + pos), vs = tr__mp_size(p + pos + ks), mark = o->len;
		const char *s;
		size_t sn;
		int k;
		if (!(tr__mp_str(p + pos, ks, &s, &sn) == TR_OK && sn == 5 && memcmp(s, "ts_us", 5) == 0)) {
			if (put(o, ",", 1) != TR_OK || (k = json_key(o, p + pos, ks)) < 0 ||
			    (k == 1 && tr__mp_json_checked(p + pos + ks, o) != TR_OK))
				return TR_ENOMEM;
			if (k == 0)
				o->len = mark;
		}
		pos += ks + vs;
	}
	return put(o, "}", 1);
}

/* ---- the database sinks ---------------------------------------------------------- */

/*
 * The postgres sink writes a batch as one INSERT whose only parameter is
 * the batch as a JSON array of rows (json_to_recordset): one statement
 * and one parameter whatever the batch size, and no value is ever SQL.
 * The rows are made here with fixed types (integers where the table has
 * integers, else NULL), so a body with odd fields cannot fail a batch.
 */
#define TEL_PG_SQL                                                                         \
	"INSERT INTO troupe_events (at, node, tenant, pipeline, step, event, attempt, "        \
	"step_us, run_us, trace, error) "                                                       \
	"SELECT to_timestamp(r.ts_us::float8 / 1000000), coalesce(r.node, ''), "                \
	"coalesce(r.tenant, ''), coalesce(r.pipeline, ''), coalesce(r.step, ''), "              \
	"coalesce(r.event, ''), r.attempt, r.step_us, r.run_us, r.trace, r.error "              \
	"FROM json_to_recordset($1::json) AS r(ts_us bigint, node text, tenant text, "          \
	"pipeline text, step text, event text, attempt integer, step_us bigint, run_us bigint, " \
	"trace text, error text)"

/* Per event of a redis round. */
enum { DB_WAIT, DB_DONE, DB_RETRY, DB_FAILED };

static tel_ent *db_at(tel_db *d, uint32_t i)
{
	return &d->q[(d->head + i) % d->cap];
}

static int db_open(tel_st *st, int idx)
{
	tel_db *d = &st->db[idx];
	d->cap = st->cfg.backlog;
	if ((d->q = tr__calloc(d->cap, sizeof(*d->q))) == NULL)
		return TR_ENOMEM;
	if (idx == TEL_DB_REDIS &&
	    ((d->corrs = tr__calloc(st->cfg.db_batch, sizeof(*d->corrs))) == NULL ||
	     (d->state = tr__calloc(st->cfg.db_batch, 1)) == NULL))
		return TR_ENOMEM;
	return TR_OK;
}

/* Drops the oldest n events of d. */
static void db_pop(tel_db *d, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		tel_ent *e = db_at(d, i);
		tr_body_unref(e->body);
		e->body = NULL;
	}
	d->head = (d->head + n) % d->cap;
	d->len -= n;
}

/* Adds to sink d's shared counters and sets its gauge. */
static void db_count(tel_st *st, const tel_db *d, uint64_t written, uint64_t failed,
                     uint64_t errors)
{
	tel_shared *sh = st->sh;
	uv_mutex_lock(&sh->mu);
	sh->st.sink_written[d->idx] += written;
	sh->st.sink_failed[d->idx] += failed;
	sh->st.sink_errors[d->idx] += errors;
	sh->st.sink_queued[d->idx] = d->len;
	uv_mutex_unlock(&sh->mu);
}

/* One stderr line when a sink starts failing and one when it works again,
 * not one per try. */
static void db_log(tel_st *st, tel_db *d, int ok, const char *why)
{
	static const char *const what[] = {"postgres", "redis"};
	if (ok && d->backoff_ms > 0)
		fprintf(stderr, "troupe: actor '%s': sink \"%s\" writes again\n", st->sh->name,
		        what[d->idx]);
	else if (!ok && d->backoff_ms == 0)
		fprintf(stderr, "troupe: actor '%s': sink \"%s\": %s; events are buffered (%u at "
		        "most) and the write is retried\n", st->sh->name, what[d->idx], why,
		        st->cfg.backlog);
}

static void db_arm(tr_ctx *ctx, tel_db *d, uint64_t ms)
{
	if (d->timer_armed)
		return;
	if (tr_timer_after(ctx, TEL_TAG_DB + (uint32_t)d->idx, ms ? ms : 1, NULL) == TR_OK)
		d->timer_armed = 1;
}

/* A write failed and will be retried: back off. */
static void db_backoff(tel_db *d)
{
	d->backoff_ms = d->backoff_ms == 0 ? TEL_BACKOFF_MIN_MS
	                : d->backoff_ms * 2 > TEL_BACKOFF_MAX_MS ? TEL_BACKOFF_MAX_MS
	                                                        : d->backoff_ms * 2;
	d->retry_at_ns = tr_now_ns() + (uint64_t)d->backoff_ms * 1000000u;
}

/* msgpack integer at p as int64: 1, or 0 (not an integer, or too big). */
static int mp_i64(const unsigned char *p, int64_t *v)
{
	unsigned char c = p[0];
	if (c <= 0x7f) {
		*v = c;
	} else if (c >= 0xe0) {
		*v = (int8_t)c;
	} else if (c >= 0xcc && c <= 0xcf) {
		uint64_t u = be(p + 1, 1u << (c - 0xcc));
		if (u > (uint64_t)INT64_MAX)
			return 0;
		*v = (int64_t)u;
	} else if (c >= 0xd0 && c <= 0xd3) {
		unsigned w = 1u << (c - 0xd0);
		uint64_t u = be(p + 1, w), sign = 1ull << (8 * w - 1);
		*v = w == 8 ? (int64_t)u : (int64_t)((u ^ sign) - sign);
	} else {
		return 0;
	}
	return 1;
}

/* A JSON string the server's json type can turn into text: NUL bytes
 * (which it refuses, as \u0000) become U+FFFD. */
static int pg_jstr(tr_buf *o, const char *s, size_t n)
{
	if (memchr(s, 0, n) == NULL)
		return tr__json_str(s, n, o);
	tr_buf t;
	int rc = TR_OK;
	tr_buf_init(&t);
	for (size_t i = 0; i < n && rc == TR_OK; i++)
		rc = s[i] ? put(&t, s + i, 1) : put(&t, "\xef\xbf\xbd", 3);
	if (rc == TR_OK)
		rc = tr__json_str((const char *)t.data, t.len, o);
	tr_buf_free(&t);
	return rc;
}

/* `,"key":` then the string field k of body p as a JSON string, or null. */
static int pg_strcol(tr_buf *o, const char *key, const unsigned char *p, size_t n,
                     const char *k, const char *dflt)
{
	size_t sn = 0;
	const char *s = p != NULL ? field_str(p, n, k, &sn) : NULL;
	if (puts_(o, ",\"") || puts_(o, key) || puts_(o, "\":"))
		return TR_ENOMEM;
	if (s == NULL && dflt == NULL)
		return puts_(o, "null");
	return s != NULL ? pg_jstr(o, s, sn) : pg_jstr(o, dflt, strlen(dflt));
}

/* `,"key":<integer>` from body field k, or null when it is not an integer
 * in [min, max]. */
static int pg_intcol(tr_buf *o, const char *key, const unsigned char *p, size_t n,
                     const char *k, int64_t min, int64_t max)
{
	const unsigned char *v;
	size_t vn;
	int64_t x;
	char b[40];
	if (p != NULL && tr__mp_map_get(p, n, k, &v, &vn) == TR_OK && mp_i64(v, &x) && x >= min &&
	    x <= max)
		snprintf(b, sizeof(b), ",\"%s\":%lld", key, (long long)x);
	else
		snprintf(b, sizeof(b), ",\"%s\":null", key);
	return puts_(o, b);
}

/* One event as a row of troupe_events (a JSON object) appended to o. */
static int pg_row(tr_buf *o, const tel_cfg *c, const tel_ent *e)
{
	const unsigned char *p = e->kind == EV_BODY && e->body ? e->body->data : NULL;
	size_t n = p ? e->body->len : 0, sn;
	const char *tn = e->tenant ? tr_tenant_name(e->tenant) : NULL;
	const char *ev = e->kind == EV_PASS ? "pass" : e->kind == EV_OVERSIZE ? "oversize" : "";
	const unsigned char *v;
	size_t vn;
	char b[64], tr[33];
	int bad;

	trace_hex(tr, e->trace_hi, e->trace_lo);
	snprintf(b, sizeof(b), "{\"ts_us\":%llu,\"node\":", (unsigned long long)e->ts_us);
	bad = puts_(o, b) || pg_jstr(o, c->node, strlen(c->node)) ||
	      pg_strcol(o, "tenant", p, n, "tenant", tn ? tn : "") ||
	      pg_strcol(o, "pipeline", p, n, "pipeline", "") ||
	      pg_strcol(o, "step", p, n, "step", "") || pg_strcol(o, "event", p, n, "event", ev) ||
	      pg_intcol(o, "attempt", p, n, "attempt", INT32_MIN, INT32_MAX) ||
	      pg_intcol(o, "step_us", p, n, "step_us", INT64_MIN, INT64_MAX) ||
	      pg_intcol(o, "run_us", p, n, "run_us", INT64_MIN, INT64_MAX) ||
	      pg_strcol(o, "trace", p, n, "trace",
	                e->trace_hi || e->trace_lo ? tr : NULL);
	if (bad)
		return TR_ENOMEM;
	/* error: its text, or the JSON of another value */
	if (puts_(o, ",\"error\":"))
		return TR_ENOMEM;
	if (p != NULL && tr__mp_map_get(p, n, "error", &v, &vn) == TR_OK && v[0] != 0xc0) {
		const char *s;
		if (tr__mp_str(v, vn, &s, &sn) == TR_OK) {
			bad = pg_jstr(o, s, sn) != TR_OK;
		} else {
			tr_buf t;
			tr_buf_init(&t);
			bad = tr__mp_json_checked(v, &t) != TR_OK ||
			      pg_jstr(o, (const char *)t.data, t.len) != TR_OK;
			tr_buf_free(&t);
		}
	} else {
		bad = puts_(o, "null") != TR_OK;
	}
	return bad || put(o, "}", 1) ? TR_ENOMEM : TR_OK;
}

/* The first k events of d as a postgres batch: {sql, params = [json]} in d->cmd. */
static int pg_batch(tel_st *st, tel_db *d, uint32_t k)
{
	msgpack_packer pk;
	int bad = 0;
	d->buf.len = 0;
	d->cmd.len = 0;
	bad |= put(&d->buf, "[", 1);
	for (uint32_t i = 0; i < k && !bad; i++)
		bad |= (i > 0 && put(&d->buf, ",", 1)) || pg_row(&d->buf, &st->cfg, db_at(d, i));
	bad |= put(&d->buf, "]", 1);
	tr__mp_packer(&pk, &d->cmd);
	bad |= msgpack_pack_map(&pk, 2) || tr__mp_pack_cstr(&pk, "sql") ||
	       tr__mp_pack_cstr(&pk, TEL_PG_SQL) || tr__mp_pack_cstr(&pk, "params") ||
	       msgpack_pack_array(&pk, 1) ||
	       tr_kpack_str(&pk, (const char *)d->buf.data, d->buf.len);
	return bad ? TR_ENOMEM : TR_OK;
}

/* Appends one command argument (a str) to the packer. */
static int arg_str(msgpack_packer *pk, const char *s, size_t n, uint32_t *argc)
{
	(*argc)++;
	return tr_kpack_str(pk, s, n);
}

/* Event e as an XADD command {argv = [...]} in d->cmd: the stream key,
 * MAXLEN ~ n, then ts_us, the tenant (as a JSON line has it) and the
 * body's fields, each value as text (strings and binary as they are,
 * integers in decimal, true/false, nil as "", anything else as JSON). */
static int redis_cmd(tel_st *st, tel_db *d, const tel_ent *e)
{
	const unsigned char *p = e->kind == EV_BODY && e->body ? e->body->data : NULL;
	size_t n = p ? e->body->len : 0;
	const char *tn = e->tenant ? tr_tenant_name(e->tenant) : NULL;
	const unsigned char *tv;
	size_t tvn;
	msgpack_packer pk, ck;
	uint32_t argc = 0;
	char b[64];
	int bad = 0;

	d->buf.len = 0;
	d->cmd.len = 0;
	tr__mp_packer(&pk, &d->buf);
	bad |= arg_str(&pk, "XADD", 4, &argc) ||
	       arg_str(&pk, st->cfg.redis_key, strlen(st->cfg.redis_key), &argc);
	if (st->cfg.redis_maxlen > 0) {
		snprintf(b, sizeof(b), "%llu", (unsigned long long)st->cfg.redis_maxlen);
		bad |= arg_str(&pk, "MAXLEN", 6, &argc) || arg_str(&pk, "~", 1, &argc) ||
		       arg_str(&pk, b, strlen(b), &argc);
	}
	snprintf(b, sizeof(b), "%llu", (unsigned long long)e->ts_us);
	bad |= arg_str(&pk, "*", 1, &argc) || arg_str(&pk, "ts_us", 5, &argc) ||
	       arg_str(&pk, b, strlen(b), &argc);
	if (tn != NULL && (p == NULL || tr__mp_map_get(p, n, "tenant", &tv, &tvn) != TR_OK))
		bad |= arg_str(&pk, "tenant", 6, &argc) || arg_str(&pk, tn, strlen(tn), &argc);
	if (p == NULL) {
		char tr[33];
		trace_hex(tr, e->trace_hi, e->trace_lo);
		snprintf(b, sizeof(b), "%u", e->bytes);
		bad |= arg_str(&pk, "event", 5, &argc) ||
		       arg_str(&pk, e->kind == EV_PASS ? "pass" : "oversize",
		               e->kind == EV_PASS ? 4 : 8, &argc) ||
		       arg_str(&pk, "bytes", 5, &argc) || arg_str(&pk, b, strlen(b), &argc) ||
		       arg_str(&pk, "trace", 5, &argc) || arg_str(&pk, tr, 32, &argc);
	} else {
		uint32_t cnt;
		size_t pos;
		tr_buf t;
		tr_buf_init(&t);
		if (tr__mp_map_head(p, n, &cnt, &pos) != TR_OK)
			cnt = 0;
		for (uint32_t i = 0; i < cnt && !bad; i++) {
			const unsigned char *kp = p + pos, *vp;
			size_t ks = tr__mp_size(kp), vs = tr__mp_size(kp + ks);
			const char *s;
			size_t sn;
			int64_t x;
			vp = kp + ks;
			pos += ks + vs;
			/* the key: a string, or an integer in decimal; others are left out */
			if (tr__mp_str(kp, ks, &s, &sn) == TR_OK) {
				if (sn == 5 && memcmp(s, "ts_us", 5) == 0)
					continue; /* ours */
				bad |= arg_str(&pk, s, sn, &argc);
			} else if (mp_i64(kp, &x)) {
				snprintf(b, sizeof(b), "%lld", (long long)x);
				bad |= arg_str(&pk, b, strlen(b), &argc);
			} else {
				continue;
			}
			unsigned char c = vp[0];
			if (tr__mp_str(vp, vs, &s, &sn) == TR_OK) {
				bad |= arg_str(&pk, s, sn, &argc);
			} else if (c == 0xc4 || c == 0xc5 || c == 0xc6) {
				size_t hdr = c == 0xc4 ? 2 : c == 0xc5 ? 3 : 5;
				argc++;
				bad |= msgpack_pack_bin(&pk, vs - hdr) ||
				       msgpack_pack_bin_body(&pk, vp + hdr, vs - hdr);
			} else if (c == 0xc0) {
				bad |= arg_str(&pk, "", 0, &argc);
			} else if (c == 0xc2 || c == 0xc3) {
				bad |= arg_str(&pk, c == 0xc3 ? "true" : "false", c == 0xc3 ? 4 : 5, &argc);
			} else if (mp_i64(vp, &x)) {
				snprintf(b, sizeof(b), "%lld", (long long)x);
				bad |= arg_str(&pk, b, strlen(b), &argc);
			} else {
				/* big unsigned, floats, tables, ext: their JSON */
				t.len = 0;
				bad |= tr__mp_json_checked(vp, &t) != TR_OK ||
				       arg_str(&pk, (const char *)t.data, t.len, &argc);
			}
		}
		tr_buf_free(&t);
	}
	tr__mp_packer(&ck, &d->cmd);
	bad |= msgpack_pack_map(&ck, 1) || tr__mp_pack_cstr(&ck, "argv") ||
	       msgpack_pack_array(&ck, argc) || put(&d->cmd, d->buf.data, d->buf.len);
	return bad ? TR_ENOMEM : TR_OK;
}

/* An ask to the actor named `name` with d->cmd as its body (deadline:
 * µs since the epoch, 0 = none). */
static int db_ask(tr_ctx *ctx, tel_db *d, const char *name, uint32_t tag, uint64_t ms,
                  uint64_t deadline, uint64_t *corr)
{
	tr_ref to;
	if (tr_whereis(tr_ctx_node(ctx), name, &to) != TR_OK)
		return TR_ENOACTOR;
	tr_msg *m = tr_msg_new();
	if (m == NULL)
		return TR_ENOMEM;
	if ((m->body = tr_body_new(d->cmd.data, d->cmd.len)) == NULL) {
		tr_msg_free(m);
		return TR_ENOMEM;
	}
	m->tag = tag;
	m->deadline = deadline;
	return tr_ask(ctx, to, m, ms, corr);
}

/* Whether a write that failed with err may work later: 1 (retried), 0
 * (refused for good: dropped), -1 (a server error: postgres retries the
 * batch TEL_DB_TRIES times, then drops it). */
static int transient(int err, const char *msg)
{
	static const char *const busy[] = {"LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN",
	                                   "CLUSTERDOWN", "OOM"};
	if (err == TR_EINVAL || err == TR_EPROTO || err == TR_ETOOBIG || err == TR_ENOMEM)
		return 0;
	if (err != TR_EFAILED)
		return 1; /* down, slow, full, restarting */
	for (size_t i = 0; i < sizeof(busy) / sizeof(busy[0]); i++)
		if (strncmp(msg, busy[i], strlen(busy[i])) == 0)
			return 1;
	return -1;
}

/* The message of an error reply (for the log) in d->why. */
static void reply_message(tel_db *d, const tr_msg *m)
{
	const unsigned char *v;
	size_t vn, sn;
	const char *s;
	if (m->body != NULL && m->body->len > 0 && tr_body_check(m->body) == TR_OK &&
	    tr__mp_map_get(m->body->data, m->body->len, "message", &v, &vn) == TR_OK &&
	    tr__mp_str(v, vn, &s, &sn) == TR_OK)
		snprintf(d->why, sizeof(d->why), "%.*s", (int)(sn > 300 ? 300 : sn), s);
	else
		snprintf(d->why, sizeof(d->why), "%s", tr_strerror(m->err ? m->err : TR_EFAILED));
}

static void db_kick(tr_ctx *ctx, tel_st *st, tel_db *d, int due);

/* The write of the oldest `inflight` events is over. */
static void db_settled(tr_ctx *ctx, tel_st *st, tel_db *d, uint32_t written, uint32_t failed,
                       uint32_t retry)
{
	d->inflight = 0;
	db_count(st, d, written, failed, retry);
	if (retry > 0) {
		db_log(st, d, 0, d->why);
		db_backoff(d);
	} else {
		if (written > 0)
			db_log(st, d, 1, NULL);
		d->backoff_ms = 0;
		d->retry_at_ns = 0;
	}
	d->why[0] = '\0';
	db_kick(ctx, st, d, 0);
}

/* The postgres batch in flight is answered (m), or failed to go (err). */
static void pg_settle(tr_ctx *ctx, tel_st *st, tel_db *d, const tr_msg *m, int err)
{
	uint32_t k = d->inflight;
	int tr;

	if (m != NULL && !(m->flags & TR_MSGF_ERROR)) {
		db_pop(d, k);
		d->tries = 0;
		db_settled(ctx, st, d, k, 0, 0);
		return;
	}
	if (m != NULL) {
		reply_message(d, m);
		err = m->err ? m->err : TR_EFAILED;
	} else {
		snprintf(d->why, sizeof(d->why), "%s",
		         err == TR_ENOACTOR ? "the node runs no PostgreSQL pool" : tr_strerror(err));
	}
	tr = transient(err, d->why);
	if (tr == 0 || (tr < 0 && ++d->tries >= TEL_DB_TRIES)) {
		fprintf(stderr, "troupe: actor '%s': sink \"postgres\": %u events dropped: %s\n",
		        st->sh->name, k, d->why);
		db_pop(d, k);
		d->tries = 0;
		db_settled(ctx, st, d, 0, k, 0);
		return;
	}
	db_settled(ctx, st, d, 0, 0, k);
}

/* The redis round in flight is over: the events to retry stay, in
 * order, at the head; the others go. */
static void redis_settle(tr_ctx *ctx, tel_st *st, tel_db *d)
{
	uint32_t k = d->inflight, w = k, written = 0, failed = 0;
	for (uint32_t j = k; j-- > 0;) {
		tel_ent *e = db_at(d, j);
		if (d->state[j] == DB_RETRY) {
			/* w > j once anything was left out: never over one not yet seen */
			if (--w != j) {
				*db_at(d, w) = *e;
				e->body = NULL;
			}
			continue;
		}
		written += d->state[j] == DB_DONE;
		failed += d->state[j] == DB_FAILED;
		tr_body_unref(e->body);
		e->body = NULL;
	}
	/* the kept ones sit in [w, k): the head moves past the others */
	d->head = (d->head + w) % d->cap;
	d->len -= w;
	if (failed > 0)
		fprintf(stderr, "troupe: actor '%s': sink \"redis\": %u events dropped (refused)\n",
		        st->sh->name, failed);
	db_settled(ctx, st, d, written, failed, k - w);
}

/* Writes the oldest events of d: one batch. */
static void db_send(tr_ctx *ctx, tel_st *st, tel_db *d)
{
	uint32_t k = d->len < st->cfg.db_batch ? d->len : st->cfg.db_batch;
	int rc;

	d->inflight = k;
	d->why[0] = '\0';
	if (d->idx == TEL_DB_PG) {
		rc = pg_batch(st, d, k);
		if (rc == TR_OK)
			rc = db_ask(ctx, d, TR_PG_NAME, TR_TAG_PG_QUERY, st->cfg.pg_ask_ms,
			            tr_wall_us() + (uint64_t)st->cfg.db_timeout_ms * 1000u, &d->corr);
		if (rc != TR_OK)
			pg_settle(ctx, st, d, NULL, rc);
		return;
	}
	/* redis: one XADD per event, all sent now (the client pipelines them) */
	d->answered = 0;
	d->hint = 0;
	for (uint32_t i = 0; i < k; i++) {
		rc = redis_cmd(st, d, db_at(d, i));
		if (rc == TR_OK)
			rc = db_ask(ctx, d, TR_REDIS_NAME, TR_TAG_REDIS_CMD, st->cfg.db_timeout_ms, 0,
			            &d->corrs[i]);
		if (rc == TR_OK) {
			d->state[i] = DB_WAIT;
			continue;
		}
		/* not sent: retried with the round's others (dropped on ENOMEM) */
		d->state[i] = rc == TR_ENOMEM ? DB_FAILED : DB_RETRY;
		d->answered++;
		if (d->why[0] == '\0')
			snprintf(d->why, sizeof(d->why), "%s",
			         rc == TR_ENOACTOR ? "the node runs no Redis client" : tr_strerror(rc));
	}
	if (d->answered == k)
		redis_settle(ctx, st, d);
}

/* Writes a batch when one is due: a full one at once, else once the
 * flush timer fires (due); never while one is in flight, nor during a
 * backoff. */
static void db_kick(tr_ctx *ctx, tel_st *st, tel_db *d, int due)
{
	uint64_t now;
	if (d->q == NULL || d->inflight > 0 || d->len == 0)
		return;
	now = tr_now_ns();
	if (now < d->retry_at_ns) {
		db_arm(ctx, d, (d->retry_at_ns - now + 999999) / 1000000);
		return;
	}
	if (due || d->len >= st->cfg.db_batch) {
		db_send(ctx, st, d);
		return;
	}
	db_arm(ctx, d, st->cfg.flush_ms);
	if (!d->timer_armed)
		db_send(ctx, st, d); /* no timer: write now rather than never */
}

/* A reply to one of d's asks: 1 if it was one. */
static int db_reply(tr_ctx *ctx, tel_st *st, tel_db *d, const tr_msg *m)
{
	if (d->q == NULL || d->inflight == 0)
		return 0;
	if (d->idx == TEL_DB_PG) {
		if (m->corr != d->corr)
			return 0;
		pg_settle(ctx, st, d, m, TR_OK);
		return 1;
	}
	/* replies come in order, mostly: start after the last one found */
	for (uint32_t n = 0; n < d->inflight; n++) {
		uint32_t i = (d->hint + n) % d->inflight;
		if (d->corrs[i] != m->corr || d->state[i] != DB_WAIT)
			continue;
		d->hint = i + 1;
		if (!(m->flags & TR_MSGF_ERROR)) {
			d->state[i] = DB_DONE;
		} else {
			char why[sizeof(d->why)];
			memcpy(why, d->why, sizeof(why));
			reply_message(d, m);
			d->state[i] = transient(m->err, d->why) != 0 ? DB_RETRY : DB_FAILED;
			if (why[0] != '\0')
				memcpy(d->why, why, sizeof(why)); /* the first error tells */
		}
		if (++d->answered == d->inflight)
			redis_settle(ctx, st, d);
		return 1;
	}
	return 0;
}

/* Frees d. With ctx (terminate), the events not in flight are written
 * once more, best effort: their answers come to no one. */
static void db_close(tr_ctx *ctx, tel_st *st, tel_db *d)
{
	if (d->q != NULL && ctx != NULL) {
		uint32_t from = d->inflight; /* those in flight may still land */
		uint64_t corr;
		while (from < d->len) {
			uint32_t k = d->len - from < st->cfg.db_batch ? d->len - from : st->cfg.db_batch;
			uint32_t save = d->head;
			d->head = (d->head + from) % d->cap;
			if (d->idx == TEL_DB_PG) {
				if (pg_batch(st, d, k) == TR_OK)
					(void)db_ask(ctx, d, TR_PG_NAME, TR_TAG_PG_QUERY, 0, 0, &corr);
			} else {
				for (uint32_t i = 0; i < k; i++)
					if (redis_cmd(st, d, db_at(d, i)) == TR_OK)
						(void)db_ask(ctx, d, TR_REDIS_NAME, TR_TAG_REDIS_CMD, 0, 0, &corr);
			}
			d->head = save;
			from += k;
		}
	}
	if (d->q != NULL)
		db_pop(d, d->len);
	tr__free(d->q);
	tr__free(d->corrs);
	tr__free(d->state);
	d->q = NULL;
	d->corrs = NULL;
	d->state = NULL;
	tr_buf_free(&d->buf);
	tr_buf_free(&d->cmd);
}

/* Records one event (ring, counters, the database sinks' backlogs, a
 * line for the writer). */
static void record(tr_ctx *ctx, tel_st *st, const tr_msg *m, uint8_t kind)
{
	tel_shared *sh = st->sh;
	tel_ent e = {0};
	const unsigned char *p = m->body ? m->body->data : NULL;
	size_t n = m->body ? m->body->len : 0;
	const char *pl = NULL, *sp = NULL, *ev = NULL;
	size_t pn = 0, sn = 0, en = 0;
	uint64_t step_us = 0;
	int type = TR_TEL_OTHER, has_step = 0;

	e.ts_us = tr_wall_us();
	e.tenant = m->tenant;
	e.trace_hi = m->trace_hi;
	e.trace_lo = m->trace_lo;
	e.bytes = (uint32_t)n;
	e.kind = kind;
	if (kind == EV_BODY) {
		/* tr_body_check: an engine's own tap event is valid as made
		 * (tr__body_mark_checked), one from the wire is walked. */
		if (n == 0 || !is_map(p) || tr_body_check(m->body) != TR_OK) {
			uv_mutex_lock(&sh->mu);
			sh->st.invalid++;
			uv_mutex_unlock(&sh->mu);
			return;
		}
		tel_fields f;
		read_fields(p, n, &f);
		ev = f.ev, en = f.en;
		pl = f.pl, pn = f.pn;
		sp = f.sp, sn = f.sn;
		has_step = sp != NULL;
		if (!label_ok(pl, pn) || !label_ok(sp, sn))
			pl = sp = NULL; /* counted in step_overflow below */
		type = type_of(ev, en);
		if (type == TR_TEL_END)
			step_us = f.step_us;
		if (n > st->cfg.max_line)
			e.kind = EV_OVERSIZE;
		else if (sh->ring != NULL)
			e.body = tr_body_ref(m->body);
	}

	/* the database sinks: a reference each, up to their backlog */
	uint32_t dbdrop[TR_TEL_NSINKS] = {0};
	for (int i = 0; i < TR_TEL_NSINKS; i++) {
		tel_db *d = &st->db[i];
		if (d->q == NULL)
			continue;
		if (d->len == d->cap) {
			dbdrop[i] = 1;
			continue;
		}
		tel_ent *q = db_at(d, d->len++);
		*q = e;
		q->body = e.kind == EV_BODY ? tr_body_ref(m->body) : NULL;
	}

	uv_mutex_lock(&sh->mu);
	for (int i = 0; i < TR_TEL_NSINKS; i++) {
		sh->st.sink_dropped[i] += dbdrop[i];
		sh->st.sink_queued[i] = st->db[i].len;
	}
	if (kind == EV_PASS) {
		sh->st.passed++;
	} else {
		sh->st.events++;
		sh->st.by_type[type]++;
		sh->st.oversize += e.kind == EV_OVERSIZE;
		if (pl != NULL && sp != NULL) {
			tel_step *s = step_get(sh, pl, pn, sp, sn, 1);
			if (s != NULL) {
				s->n[type]++;
				s->time_us += step_us;
			} else {
				sh->st.step_overflow++;
			}
		} else if (has_step) {
			sh->st.step_overflow++;
		}
	}
	if (sh->ring != NULL) {
		tel_ent *slot = &sh->ring[sh->head];
		tr_body_unref(slot->body);
		*slot = e;
		sh->head = sh->head + 1 == sh->cap ? 0 : sh->head + 1;
		if (sh->len < sh->cap)
			sh->len++;
	}
	uv_mutex_unlock(&sh->mu);
	for (int i = 0; i < TR_TEL_NSINKS; i++)
		db_kick(ctx, st, &st->db[i], 0);

	if (sh->fw == NULL && sh->ow == NULL)
		return;
	size_t mark = st->batch.len;
	if (event_json(&st->batch, &e, p, n) != TR_OK || put(&st->batch, "\n", 1) != TR_OK) {
		st->batch.len = mark; /* out of memory: this line is lost */
		uv_mutex_lock(&sh->mu);
		sh->st.lines_dropped++;
		uv_mutex_unlock(&sh->mu);
		return;
	}
	st->batch_lines++;
	if (st->batch.len >= st->cfg.buffer) {
		flush(st);
	} else if (!st->timer_armed) {
		if (tr_timer_after(ctx, TEL_TAG_FLUSH, st->cfg.flush_ms, NULL) == TR_OK)
			st->timer_armed = 1;
		else
			flush(st);
	}
}

static int tel_receive(tr_ctx *ctx, void *state, tr_msg *m)
{
	tel_st *st = state;

	if (m->flags & TR_MSGF_TIMER) {
		if (m->tag == TEL_TAG_FLUSH) {
			st->timer_armed = 0;
			flush(st);
		}
		for (int i = 0; i < TR_TEL_NSINKS; i++) {
			if (m->tag == TEL_TAG_DB + (uint32_t)i) {
				st->db[i].timer_armed = 0;
				db_kick(ctx, st, &st->db[i], 1);
			}
		}
		return TR_OK;
	}
	if (m->flags & TR_MSGF_REPLY) {
		/* the pool's and the client's answers (runtime-made ones included) */
		for (int i = 0; i < TR_TEL_NSINKS; i++)
			if (db_reply(ctx, st, &st->db[i], m))
				break;
		return TR_OK;
	}
	if (m->tag >= TR_TAG_SYS_BASE)
		return TR_OK;
	if (m->flags & TR_MSGF_ASK) {
		/* a pipeline step: an empty reply keeps the message as it is */
		tr_msg *rep = tr_msg_new();
		if (rep != NULL) {
			rep->tag = m->tag;
			(void)tr_reply(ctx, m, rep); /* a gone asker is not our error */
		} else {
			(void)tr_reply_error(ctx, m, TR_ENOMEM);
		}
		record(ctx, st, m, EV_PASS);
		return TR_OK;
	}
	record(ctx, st, m, EV_BODY);
	return TR_OK;
}

const tr_actor_ops tr_telemetry_ops = {
	.name = "telemetry",
	.size = sizeof(tel_st),
	.init = tel_init,
	.receive = tel_receive,
	.terminate = tel_terminate,
};

/* ---- readers ---------------------------------------------------------------------- */

/* Writers already counted in one sum (actors may share one). */
typedef struct wseen {
	tel_writer *v[64];
	size_t n;
} wseen;

static void add_writer(tr_telemetry_stats *o, tel_writer *w, wseen *seen)
{
	tel_writer_stats ws;
	if (w == NULL)
		return;
	for (size_t i = 0; i < seen->n; i++)
		if (seen->v[i] == w)
			return;
	if (seen->n < sizeof(seen->v) / sizeof(seen->v[0]))
		seen->v[seen->n++] = w;
	tel_writer_stats_get(w, &ws);
	o->bytes_written += ws.bytes_written;
	o->write_errors += ws.write_errors;
	o->rotations += ws.rotations;
}

static void add_stats(tr_telemetry_stats *o, const tel_shared *s, wseen *seen)
{
	o->actors++;
	o->events += s->st.events;
	for (int t = 0; t < TR_TEL_NTYPES; t++)
		o->by_type[t] += s->st.by_type[t];
	o->passed += s->st.passed;
	o->invalid += s->st.invalid;
	o->oversize += s->st.oversize;
	o->ring_len += s->len;
	o->lines_dropped += s->st.lines_dropped;
	o->step_pairs += s->nsteps;
	o->step_overflow += s->st.step_overflow;
	for (int i = 0; i < TR_TEL_NSINKS; i++) {
		o->sink_written[i] += s->st.sink_written[i];
		o->sink_dropped[i] += s->st.sink_dropped[i];
		o->sink_failed[i] += s->st.sink_failed[i];
		o->sink_errors[i] += s->st.sink_errors[i];
		o->sink_queued[i] += s->st.sink_queued[i];
	}
	add_writer(o, s->fw, seen);
	add_writer(o, s->ow, seen);
}

int tr_telemetry_stats_get(tr_node *node, const char *name, tr_telemetry_stats *out)
{
	wseen seen = {{0}, 0};
	memset(out, 0, sizeof(*out));
	uv_once(&reg_once, reg_init);
	uv_mutex_lock(&reg_mu);
	for (tel_shared *s = reg_head; s != NULL; s = s->next) {
		if (!matches(s, node, name))
			continue;
		uv_mutex_lock(&s->mu);
		add_stats(out, s, &seen);
		uv_mutex_unlock(&s->mu);
	}
	uv_mutex_unlock(&reg_mu);
	return out->actors ? TR_OK : TR_ENOTFOUND;
}

typedef struct copy_ent {
	tel_ent e;
	uint64_t seq; /* ties in ts_us keep ring order */
} copy_ent;

static int cmp_ent(const void *a, const void *b)
{
	const copy_ent *x = a, *y = b;
	if (x->e.ts_us != y->e.ts_us)
		return x->e.ts_us < y->e.ts_us ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

int tr_telemetry_ring_json(tr_node *node, const char *name, size_t max, tr_buf *out)
{
	copy_ent *v = NULL;
	size_t cap = 0, n = 0, found = 0, from;
	int rc = TR_OK;

	uv_once(&reg_once, reg_init);
	uv_mutex_lock(&reg_mu);
	for (tel_shared *s = reg_head; s != NULL; s = s->next)
		if (matches(s, node, name)) {
			found++;
			cap += s->cap; /* >= its len while we hold reg_mu: the ring never grows */
		}
	if (cap > 0 && (v = tr__malloc(cap * sizeof(*v))) == NULL)
		rc = TR_ENOMEM;
	for (tel_shared *s = reg_head; s != NULL && rc == TR_OK; s = s->next) {
		if (!matches(s, node, name) || s->ring == NULL)
			continue;
		uv_mutex_lock(&s->mu);
		/* oldest first: the slot after the newest, len of them */
		uint32_t start = (s->head + s->cap - s->len) % s->cap;
		for (uint32_t i = 0; i < s->len && n < cap; i++) {
			tel_ent *e = &s->ring[(start + i) % s->cap];
			v[n].e = *e;
			v[n].seq = n;
			if (e->body != NULL)
				tr_body_ref(e->body);
			n++;
		}
		uv_mutex_unlock(&s->mu);
	}
	uv_mutex_unlock(&reg_mu);
	if (rc != TR_OK)
		return rc;
	if (found == 0) {
		tr__free(v);
		return TR_ENOTFOUND;
	}
	if (n > 1)
		qsort(v, n, sizeof(*v), cmp_ent);
	from = max > 0 && n > max ? n - max : 0;
	if (put(out, "[", 1) != TR_OK)
		rc = TR_ENOMEM;
	for (size_t i = from; i < n && rc == TR_OK; i++) {
		const tel_ent *e = &v[i].e;
		if ((i > from && put(out, ",", 1) != TR_OK) ||
		    event_json(out, e, e->body ? e->body->data : NULL, e->body ? e->body->len : 0) !=
		        TR_OK)
			rc = TR_ENOMEM;
	}
	if (rc == TR_OK && put(out, "]", 1) != TR_OK)
		rc = TR_ENOMEM;
	for (size_t i = 0; i < n; i++)
		tr_body_unref(v[i].e.body);
	tr__free(v);
	return rc;
}

/* A Prometheus label value: \ " and newline escaped. */
static int label(tr_buf *o, const char *s)
{
	for (; *s; s++) {
		const char *r = *s == '\\' ? "\\\\" : *s == '"' ? "\\\"" : *s == '\n' ? "\\n" : NULL;
		if ((r ? puts_(o, r) : put(o, s, 1)) != TR_OK)
			return TR_ENOMEM;
	}
	return TR_OK;
}

/* One sample; `micros`: v is in µs and is written in seconds. */
static int metric(tr_buf *o, const char *m, const char *actor, const char *pl, const char *st,
                  const char *ev, uint64_t v, int micros)
{
	char b[48];
	int bad = puts_(o, m) || puts_(o, "{actor=\"") || label(o, actor) || puts_(o, "\"");
	if (!bad && pl != NULL)
		bad = puts_(o, ",pipeline=\"") || label(o, pl) || puts_(o, "\",step=\"") ||
		      label(o, st) || puts_(o, "\"");
	if (!bad && ev != NULL)
		bad = puts_(o, ",event=\"") || puts_(o, ev) || puts_(o, "\"");
	if (micros)
		snprintf(b, sizeof(b), "} %llu.%06llu\n", (unsigned long long)(v / 1000000u),
		         (unsigned long long)(v % 1000000u));
	else
		snprintf(b, sizeof(b), "} %llu\n", (unsigned long long)v);
	return bad || puts_(o, b) ? TR_ENOMEM : TR_OK;
}

/* Whether s is the first registered actor of its name on its node. */
static int first_of_name(const tel_shared *s)
{
	for (const tel_shared *x = reg_head; x != s; x = x->next)
		if (x->node == s->node && strcmp(x->name, s->name) == 0)
			return 0;
	return 1;
}

static int same_group(const tel_shared *x, const tel_shared *first)
{
	return x->node == first->node && strcmp(x->name, first->name) == 0;
}

/* Is pair p of actor s counted by an earlier actor of its group? */
static int pair_seen_before(tel_shared *s, tel_shared *first, const tel_step *p)
{
	for (tel_shared *x = first; x != s; x = x->next)
		if (same_group(x, first) &&
		    step_get(x, p->pipeline, strlen(p->pipeline), p->step, strlen(p->step), 0))
			return 1;
	return 0;
}

/* The step lines of one family (ev: that event type; -1: step time) for
 * the group starting at `first`, summed over its actors. */
static int step_lines(tr_buf *o, tel_shared *first, const char *family, int ev)
{
	int rc = TR_OK;
	for (tel_shared *s = first; s != NULL && rc == TR_OK; s = s->next) {
		if (!same_group(s, first))
			continue;
		for (uint32_t i = 0; i < s->nsteps && rc == TR_OK; i++) {
			const tel_step *p = &s->steps[i];
			uint64_t v = 0;
			if (pair_seen_before(s, first, p))
				continue;
			for (tel_shared *x = s; x != NULL; x = x->next) {
				const tel_step *q;
				if (!same_group(x, first))
					continue;
				q = x == s ? p
				           : step_get(x, p->pipeline, strlen(p->pipeline), p->step,
				                      strlen(p->step), 0);
				if (q != NULL)
					v += ev >= 0 ? q->n[ev] : q->time_us;
			}
			if (ev >= 0)
				rc = metric(o, family, first->name, p->pipeline, p->step,
				            tr_telemetry_type_names[ev], v, 0);
			else
				rc = metric(o, family, first->name, p->pipeline, p->step, NULL, v, 1);
		}
	}
	return rc;
}

static int family_head_typed(tr_buf *o, const char *name, const char *help, const char *type)
{
	return puts_(o, "# HELP ") || puts_(o, name) || puts_(o, " ") || puts_(o, help) ||
	               puts_(o, "\n# TYPE ") || puts_(o, name) || puts_(o, " ") || puts_(o, type) ||
	               puts_(o, "\n")
	           ? TR_ENOMEM
	           : TR_OK;
}

static int family_head(tr_buf *o, const char *name, const char *help)
{
	return family_head_typed(o, name, help, "counter");
}

/* The database sinks' families, for the groups that have one. */
static int sink_families(tr_buf *out, tel_shared *const *groups, const tr_telemetry_stats *sums,
                         size_t ng)
{
	static const struct {
		const char *name, *help, *type;
		size_t off;
	} fam[] = {
		{"troupe_telemetry_sink_written_total", "Events a database sink stored.", "counter",
		 offsetof(tr_telemetry_stats, sink_written)},
		{"troupe_telemetry_sink_dropped_total",
		 "Events a database sink dropped because its backlog was full.", "counter",
		 offsetof(tr_telemetry_stats, sink_dropped)},
		{"troupe_telemetry_sink_failed_total",
		 "Events a database sink dropped because the server refused them.", "counter",
		 offsetof(tr_telemetry_stats, sink_failed)},
		{"troupe_telemetry_sink_errors_total",
		 "Event writes that failed and were retried (server down, slow, overloaded).",
		 "counter", offsetof(tr_telemetry_stats, sink_errors)},
		{"troupe_telemetry_sink_queued", "Events a database sink holds now, not yet stored.",
		 "gauge", offsetof(tr_telemetry_stats, sink_queued)},
	};
	static const unsigned bits[TR_TEL_NSINKS] = {SINK_PG, SINK_REDIS};
	unsigned any = 0;
	int rc = TR_OK;
	for (size_t g = 0; g < ng; g++)
		any |= groups[g]->sinks;
	if (!(any & (SINK_PG | SINK_REDIS)))
		return TR_OK;
	for (size_t f = 0; f < sizeof(fam) / sizeof(fam[0]) && rc == TR_OK; f++) {
		rc = family_head_typed(out, fam[f].name, fam[f].help, fam[f].type);
		for (size_t g = 0; g < ng && rc == TR_OK; g++) {
			for (int i = 0; i < TR_TEL_NSINKS && rc == TR_OK; i++) {
				char b[48];
				const uint64_t *v = (const uint64_t *)((const char *)&sums[g] + fam[f].off);
				if (!(groups[g]->sinks & bits[i]))
					continue;
				snprintf(b, sizeof(b), "\"} %llu\n", (unsigned long long)v[i]);
				rc = puts_(out, fam[f].name) || puts_(out, "{actor=\"") ||
				             label(out, groups[g]->name) || puts_(out, "\",sink=\"") ||
				             puts_(out, tr_telemetry_sink_names[i]) || puts_(out, b)
				         ? TR_ENOMEM
				         : TR_OK;
			}
		}
	}
	return rc;
}

int tr_telemetry_metrics(tr_node *node, tr_buf *out)
{
	static const struct {
		const char *name, *help;
		size_t off;
	} simple[] = {
		{"troupe_telemetry_passed_total", "Asks answered as a pass-through step.",
		 offsetof(tr_telemetry_stats, passed)},
		{"troupe_telemetry_invalid_total", "Messages without a msgpack map body.",
		 offsetof(tr_telemetry_stats, invalid)},
		{"troupe_telemetry_oversize_total", "Events past max_line, recorded as a summary.",
		 offsetof(tr_telemetry_stats, oversize)},
		{"troupe_telemetry_lines_dropped_total", "Lines lost because the writer was behind.",
		 offsetof(tr_telemetry_stats, lines_dropped)},
		{"troupe_telemetry_written_bytes_total", "Bytes written to the file or stdout.",
		 offsetof(tr_telemetry_stats, bytes_written)},
		{"troupe_telemetry_write_errors_total", "Failed writes, renames and opens.",
		 offsetof(tr_telemetry_stats, write_errors)},
		{"troupe_telemetry_rotations_total", "File rotations.",
		 offsetof(tr_telemetry_stats, rotations)},
	};
	tel_shared *groups[64];
	tr_telemetry_stats sums[64];
	size_t ng = 0;
	int rc = TR_OK;

	uv_once(&reg_once, reg_init);
	uv_mutex_lock(&reg_mu);
	/* Every actor of the node locked for the scrape, in list order (only
	 * readers ever hold more than one, and always in this order), so the
	 * families agree with each other. */
	for (tel_shared *s = reg_head; s != NULL; s = s->next) {
		if (s->node != node)
			continue;
		uv_mutex_lock(&s->mu);
		if (first_of_name(s) && ng < sizeof(groups) / sizeof(groups[0])) {
			memset(&sums[ng], 0, sizeof(sums[ng]));
			groups[ng++] = s;
		}
	}
	for (size_t g = 0; g < ng; g++) {
		wseen seen = {{0}, 0};
		for (tel_shared *x = groups[g]; x != NULL; x = x->next)
			if (same_group(x, groups[g]))
				add_stats(&sums[g], x, &seen);
	}
	if (ng > 0)
		rc = family_head(out, "troupe_telemetry_events_total",
		                 "Events recorded by telemetry actors, by type.");
	for (size_t g = 0; g < ng && rc == TR_OK; g++)
		for (int t = 0; t < TR_TEL_NTYPES && rc == TR_OK; t++)
			rc = metric(out, "troupe_telemetry_events_total", groups[g]->name, NULL, NULL,
			            tr_telemetry_type_names[t], sums[g].by_type[t], 0);
	for (size_t i = 0; ng > 0 && i < sizeof(simple) / sizeof(simple[0]) && rc == TR_OK; i++) {
		rc = family_head(out, simple[i].name, simple[i].help);
		for (size_t g = 0; g < ng && rc == TR_OK; g++)
			rc = metric(out, simple[i].name, groups[g]->name, NULL, NULL, NULL,
			            *(const uint64_t *)((const char *)&sums[g] + simple[i].off), 0);
	}
	if (ng > 0 && rc == TR_OK)
		rc = family_head(out, "troupe_telemetry_step_events_total",
		                 "Step events by pipeline, step and type.");
	for (size_t g = 0; g < ng && rc == TR_OK; g++)
		for (int t = 0; t < TR_TEL_NTYPES && rc == TR_OK; t++)
			rc = step_lines(out, groups[g], "troupe_telemetry_step_events_total", t);
	if (ng > 0 && rc == TR_OK)
		rc = family_head(out, "troupe_telemetry_step_seconds_total",
		                 "Total step time (step_us) of the end events of each step.");
	for (size_t g = 0; g < ng && rc == TR_OK; g++)
		rc = step_lines(out, groups[g], "troupe_telemetry_step_seconds_total", -1);
	if (rc == TR_OK)
		rc = sink_families(out, groups, sums, ng);
	for (tel_shared *s = reg_head; s != NULL; s = s->next)
		if (s->node == node)
			uv_mutex_unlock(&s->mu);
	uv_mutex_unlock(&reg_mu);
	return rc;
}
