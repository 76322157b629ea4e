/*
 * test_pg.c -- the PostgreSQL pool actor (db/pg.h) against a real server:
 * a throwaway PostgreSQL 15 cluster that scripts/pg starts in a temp dir
 * (stopped at exit, and by a watcher process if this one dies first).
 *
 * A probe actor asks the pool the way other actors do, a batch of asks
 * at once, and records every answer by its corr (a second answer to one
 * ask is counted, and fails the test). Checked: typed values and
 * columns, parameters that cannot become SQL, one statement only, bad
 * requests and server errors with their codes, messages and SQLSTATEs,
 * statement_timeout, pool exhaustion (running, queued, rejected, and
 * the stats agreeing), deadlines while queued, pre-ping, a server
 * restart, recycling, the server down and back (TR_EIO at once, `up`,
 * recovery by itself), our own connect timeout against a server that
 * never answers, stopping with asks in flight, allocation failures.
 */
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <msgpack.h>
#include <troupe/troupe.h>

#include "core/alloc.h"
#include "db/pg.h"
#include "msg/msg_int.h"
#include "pipe/mp.h"
#include "tt.h"
#include "tnode.h"

/* ---- the server ---------------------------------------------------------- */

#define PG_SCRIPT TR_SOURCE_ROOT "/scripts/pg"

static char srv_dir[128];
static char srv_conninfo[512];
static int srv_port;
static int srv_tried, srv_ok; /* the first start was tried / worked */

/* Runs `scripts/pg CMD DIR`; reads its PG_* lines. 0 on success. */
static int pg_script(const char *cmd)
{
	char command[512], line[512];
	snprintf(command, sizeof(command), "'%s' %s '%s' 2>&1", PG_SCRIPT, cmd, srv_dir);
	FILE *f = popen(command, "r");
	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL) {
		if (strncmp(line, "PG_PORT=", 8) == 0) {
			srv_port = atoi(line + 8);
		} else if (strncmp(line, "PG_CONNINFO='", 13) == 0) {
			char *end = strrchr(line + 13, '\'');
			if (end != NULL)
				*end = '\0';
			snprintf(srv_conninfo, sizeof(srv_conninfo), "%s", line + 13);
		} else if (strncmp(line, "PG_", 3) != 0) {
			fprintf(stderr, "  scripts/pg %s: %s", cmd, line);
		}
	}
	int st = pclose(f);
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

static void srv_stop(void)
{
	if (srv_dir[0] != '\0') {
		(void)pg_script("stop");
		srv_dir[0] = '\0';
	}
}

/* Starts the cluster (once per process; again after srv_down). */
static int srv_start(void)
{
	if (srv_dir[0] == '\0') {
		const char *tmp = getenv("TMPDIR");
		snprintf(srv_dir, sizeof(srv_dir), "%s/troupe-pg-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
		if (mkdtemp(srv_dir) == NULL) {
			srv_dir[0] = '\0';
			return -1;
		}
		atexit(srv_stop);
		/* If this process dies without atexit (a crash, a timeout's
		 * SIGKILL), a watcher stops the server. Its stdio is not ours:
		 * meson waits for our stdout to close. */
		char cmd[768];
		snprintf(cmd, sizeof(cmd),
		         "(while kill -0 %ld 2>/dev/null; do sleep 0.5; done; '%s' stop '%s') "
		         "</dev/null >/dev/null 2>&1 &",
		         (long)getpid(), PG_SCRIPT, srv_dir);
		if (system(cmd) != 0)
			fprintf(stderr, "  cannot start the server watcher\n");
	}
	int rc = pg_script("start");
	if (!srv_tried)
		srv_ok = rc == 0;
	srv_tried = 1;
	return rc;
}

/* ---- building queries ---------------------------------------------------- */

/*
 * Params by letters: n nil, b bool (int), i int64 (long long), u uint64,
 * f double, s str, m a map (not allowed), a an array (not allowed).
 */
static void pack_params(msgpack_packer *pk, const char *fmt, va_list ap)
{
	msgpack_pack_array(pk, strlen(fmt));
	for (const char *f = fmt; *f; f++) {
		switch (*f) {
		case 'n': msgpack_pack_nil(pk); break;
		case 'b':
			if (va_arg(ap, int))
				msgpack_pack_true(pk);
			else
				msgpack_pack_false(pk);
			break;
		case 'i': msgpack_pack_int64(pk, va_arg(ap, long long)); break;
		case 'u': msgpack_pack_uint64(pk, va_arg(ap, unsigned long long)); break;
		case 'f': msgpack_pack_double(pk, va_arg(ap, double)); break;
		case 's': tr__mp_pack_cstr(pk, va_arg(ap, const char *)); break;
		case 'm':
			msgpack_pack_map(pk, 1);
			tr__mp_pack_cstr(pk, "a");
			msgpack_pack_int(pk, 1);
			break;
		default: msgpack_pack_array(pk, 0); break;
		}
	}
}

static void build_query(tr_buf *out, const char *sql, const char *fmt, va_list ap)
{
	msgpack_packer pk;
	out->len = 0;
	tr__mp_packer(&pk, out);
	msgpack_pack_map(&pk, fmt != NULL ? 2 : 1);
	tr__mp_pack_cstr(&pk, "sql");
	tr__mp_pack_cstr(&pk, sql);
	if (fmt != NULL) {
		tr__mp_pack_cstr(&pk, "params");
		pack_params(&pk, fmt, ap);
	}
}

/* ---- the node, the pool, the asking probe --------------------------------- */

enum { KICK = 1, KILL_POOL = 2 };
#define MAXQ 64

static tr_node *node;
static tr_pg *pool;
static tr_ref pg_ref, cli_ref;

static uv_mutex_t mu;
static int mu_inited;
static uint64_t ask_timeout_ms = 20000;

typedef struct item {
	/* the ask */
	tr_buf body;
	int nobody;
	uint32_t tag;
	uint64_t deadline;
	/* its answer */
	uint64_t corr;
	int done;
	int ask_failed; /* tr_ask refused it: no answer follows */
	uint16_t flags;
	int32_t err;
	tr_buf rbody;
	uint64_t ms; /* from the kick */
	msgpack_unpacked u;
	int parsed;
} item;

static item Q[MAXQ];
static int nq, nanswers, dups, strays;
static uint64_t kick_ns;

static int client_msg(tr_ctx *ctx, probe *p, tr_msg *m)
{
	(void)p;
	if (m->flags & TR_MSGF_REPLY) {
		uv_mutex_lock(&mu);
		int i;
		for (i = 0; i < nq && Q[i].corr != m->corr; i++)
			;
		if (i == nq || m->corr == 0) {
			strays++;
		} else if (Q[i].done) {
			dups++;
		} else {
			Q[i].done = 1;
			Q[i].flags = m->flags;
			Q[i].err = (m->flags & TR_MSGF_ERROR) ? m->err : 0;
			Q[i].rbody.len = 0;
			if (m->body != NULL)
				tr__buf_append(&Q[i].rbody, m->body->data, m->body->len);
			Q[i].ms = (tr_now_ns() - kick_ns) / 1000000u;
			nanswers++;
		}
		uv_mutex_unlock(&mu);
	} else if (m->tag == KICK) {
		uv_mutex_lock(&mu);
		kick_ns = tr_now_ns();
		for (int i = 0; i < nq; i++) {
			tr_msg *q = tr_msg_new();
			uint64_t corr = 0;
			int rc = TR_ENOMEM;
			if (q != NULL) {
				q->tag = Q[i].tag;
				q->deadline = Q[i].deadline;
				if (!Q[i].nobody)
					q->body = tr_body_new(Q[i].body.data, Q[i].body.len);
				if (Q[i].nobody || q->body != NULL)
					rc = tr_ask(ctx, pg_ref, q, ask_timeout_ms, &corr);
				else
					tr_msg_free(q);
			}
			if (rc != TR_OK) {
				Q[i].done = 1;
				Q[i].ask_failed = 1;
				Q[i].err = rc;
				nanswers++;
			} else {
				Q[i].corr = corr;
			}
		}
		uv_mutex_unlock(&mu);
	} else if (m->tag == KILL_POOL) {
		(void)tr_exit(ctx, pg_ref, TR_ESHUTDOWN);
	}
	return TR_OK;
}

static const probe_cfg cli_cfg = {.id = 1, .on_msg = client_msg};

static void q_reset(void)
{
	uv_mutex_lock(&mu);
	for (int i = 0; i < MAXQ; i++) {
		if (Q[i].parsed)
			msgpack_unpacked_destroy(&Q[i].u);
		tr_buf b = Q[i].body, rb = Q[i].rbody;
		memset(&Q[i], 0, sizeof(Q[i]));
		b.len = rb.len = 0;
		Q[i].body = b;
		Q[i].rbody = rb;
	}
	nq = nanswers = 0;
	uv_mutex_unlock(&mu);
}

static item *q_add_(const char *sql, const char *fmt, va_list ap)
{
	item *q = &Q[nq++];
	q->tag = TR_TAG_PG_QUERY;
	build_query(&q->body, sql, fmt, ap);
	return q;
}

/* Adds one ask to the next batch: sql with params by letters (fmt NULL:
 * no params key at all). */
static item *q_add(const char *sql, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	item *q = q_add_(sql, fmt, ap);
	va_end(ap);
	return q;
}

static item *q_add_raw(const void *data, size_t len)
{
	item *q = &Q[nq++];
	q->tag = TR_TAG_PG_QUERY;
	q->body.len = 0;
	tr__buf_append(&q->body, data, len);
	return q;
}

static int answers_ge_(void *ud)
{
	uv_mutex_lock(&mu);
	int ok = nanswers >= *(int *)ud;
	uv_mutex_unlock(&mu);
	return ok;
}

static int answers(void)
{
	uv_mutex_lock(&mu);
	int n = nanswers;
	uv_mutex_unlock(&mu);
	return n;
}

static void q_parse(void)
{
	uv_mutex_lock(&mu);
	for (int i = 0; i < nq; i++) {
		size_t off = 0;
		if (!Q[i].done || Q[i].parsed || Q[i].rbody.len == 0)
			continue;
		msgpack_unpacked_init(&Q[i].u);
		Q[i].parsed = 1;
		if (msgpack_unpack_next(&Q[i].u, (const char *)Q[i].rbody.data, Q[i].rbody.len, &off) !=
		    MSGPACK_UNPACK_SUCCESS)
			Q[i].u.data.type = MSGPACK_OBJECT_NIL;
	}
	uv_mutex_unlock(&mu);
}

/* Sends the batch; waits up to ms for every answer. 0 when all came. */
static int q_go(unsigned ms)
{
	int want = nq;
	if (tn_send(node, cli_ref, KICK, 0) != TR_OK)
		return -1;
	int ok = tn_wait(answers_ge_, &want, ms);
	q_parse();
	return ok ? 0 : -1;
}

/* One ask on its own: reset, add, go. */
static item *q1(const char *sql, const char *fmt, ...)
{
	va_list ap;
	q_reset();
	va_start(ap, fmt);
	item *q = q_add_(sql, fmt, ap);
	va_end(ap);
	return q_go(20000) == 0 ? q : NULL;
}

/* ---- reading answers ------------------------------------------------------ */

static const msgpack_object *mget(const msgpack_object *m, const char *k)
{
	if (m == NULL || m->type != MSGPACK_OBJECT_MAP)
		return NULL;
	size_t n = strlen(k);
	for (uint32_t i = 0; i < m->via.map.size; i++) {
		const msgpack_object *key = &m->via.map.ptr[i].key;
		if (key->type == MSGPACK_OBJECT_STR && key->via.str.size == n &&
		    memcmp(key->via.str.ptr, k, n) == 0)
			return &m->via.map.ptr[i].val;
	}
	return NULL;
}

static const msgpack_object *root(const item *q)
{
	return q->parsed ? &q->u.data : NULL;
}

/* A str object as a C string (static buffers, two in turn). */
static const char *str(const msgpack_object *o)
{
	static char buf[2][1024];
	static int k;
	char *b = buf[k++ & 1];
	if (o == NULL || o->type != MSGPACK_OBJECT_STR)
		return "(none)";
	size_t n = o->via.str.size < 1023 ? o->via.str.size : 1023;
	memcpy(b, o->via.str.ptr, n);
	b[n] = '\0';
	return b;
}

static const char *message(const item *q)
{
	return str(mget(root(q), "message"));
}

static const char *sqlstate(const item *q)
{
	return str(mget(root(q), "sqlstate"));
}

static int is_ok(const item *q)
{
	return q != NULL && q->done && !q->ask_failed && !(q->flags & TR_MSGF_ERROR);
}

static uint32_t nrows(const item *q)
{
	const msgpack_object *r = mget(root(q), "rows");
	return r && r->type == MSGPACK_OBJECT_ARRAY ? r->via.array.size : 0;
}

static const msgpack_object *cell(const item *q, uint32_t row, uint32_t col)
{
	static const msgpack_object none = {.type = MSGPACK_OBJECT_EXT};
	const msgpack_object *r = mget(root(q), "rows");
	if (r == NULL || r->type != MSGPACK_OBJECT_ARRAY || row >= r->via.array.size)
		return &none;
	const msgpack_object *a = &r->via.array.ptr[row];
	if (a->type != MSGPACK_OBJECT_ARRAY || col >= a->via.array.size)
		return &none;
	return &a->via.array.ptr[col];
}

static int is_int(const msgpack_object *o, int64_t v)
{
	if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
		return v >= 0 && o->via.u64 == (uint64_t)v;
	if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
		return o->via.i64 == v;
	return 0;
}

static int is_float(const msgpack_object *o, double v)
{
	if (o->type != MSGPACK_OBJECT_FLOAT64 && o->type != MSGPACK_OBJECT_FLOAT32)
		return 0;
	return isnan(v) ? isnan(o->via.f64) : o->via.f64 == v;
}

static int is_bool(const msgpack_object *o, int v)
{
	return o->type == MSGPACK_OBJECT_BOOLEAN && o->via.boolean == (v != 0);
}

static int is_str(const msgpack_object *o, const char *s)
{
	return o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
	       memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

static const char *column(const item *q, uint32_t i)
{
	const msgpack_object *c = mget(root(q), "columns");
	if (c == NULL || c->type != MSGPACK_OBJECT_ARRAY || i >= c->via.array.size)
		return "(none)";
	return str(&c->via.array.ptr[i]);
}

static int64_t affected(const item *q)
{
	const msgpack_object *a = mget(root(q), "affected");
	return a && a->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? (int64_t)a->via.u64 : -1;
}

/* ---- pool lifecycle ------------------------------------------------------- */

#define ST(f) atomic_load(&tr_pg_stats_of(pool)->f)

static void stop(void)
{
	if (node != NULL)
		tn_stop(node);
	node = NULL;
	if (pool != NULL)
		tr_pg_free(pool);
	pool = NULL;
}

static tr_pg_opts opts(void)
{
	tr_pg_opts o;
	memset(&o, 0, sizeof(o));
	o.conninfo = srv_conninfo;
	return o;
}

static int start(const tr_pg_opts *o)
{
	char err[256];
	if (!mu_inited) {
		uv_mutex_init(&mu);
		mu_inited = 1;
		for (int i = 0; i < MAXQ; i++) {
			tr_buf_init(&Q[i].body);
			tr_buf_init(&Q[i].rbody);
		}
	}
	stop(); /* a failed test may have left one */
	if (!srv_tried)
		(void)srv_start();
	if (!srv_ok) {
		fprintf(stderr, "  no PostgreSQL server (scripts/pg start failed)\n");
		return TR_EIO;
	}
	q_reset();
	dups = strays = 0;
	ask_timeout_ms = 20000;
	node = tn_start(2);
	if (node == NULL)
		return TR_EFAILED;
	int rc = tr_pg_start(node, 1, o, &pool, err, sizeof(err));
	if (rc != TR_OK) {
		fprintf(stderr, "  tr_pg_start: %s\n", err);
		return rc;
	}
	if (tr_whereis(node, TR_PG_NAME, &pg_ref) != TR_OK)
		return TR_ENOTFOUND;
	tr_spawn_opts po = {0};
	return tr_node_spawn(node, &probe_ops, &cli_cfg, &po, &cli_ref);
}

static int up_is_(void *ud)
{
	return ST(up) == *(int *)ud;
}

static int wait_up(int want, unsigned ms)
{
	return tn_wait(up_is_, &want, ms);
}

struct gauges {
	unsigned busy, queued;
};

static int gauges_are_(void *ud)
{
	struct gauges *g = ud;
	return ST(busy) == g->busy && ST(queued) == g->queued;
}

static int wait_gauges(unsigned busy, unsigned queued, unsigned ms)
{
	struct gauges g = {busy, queued};
	return tn_wait(gauges_are_, &g, ms);
}

static int dups_(void)
{
	uv_mutex_lock(&mu);
	int d = dups + strays;
	uv_mutex_unlock(&mu);
	return d;
}

/* Table t with its two rows, whatever an earlier test did to it. */
static int reset_table(void)
{
	item *q = q1("drop table if exists t", NULL);
	if (!is_ok(q))
		return -1;
	q = q1("create table t (id int primary key, name text, score float8, ok bool, note text)", NULL);
	if (!is_ok(q))
		return -1;
	q = q1("insert into t values ($1, $2, $3, $4, $5), ($6, $7, $8, $9, $10)", "isfbnisfbs", 1LL,
	       "alice", 1.5, 1, 2LL, "bob", -2.25, 0, "hi");
	return is_ok(q) && affected(q) == 2 ? 0 : -1;
}

static int whereis_gone_(void *ud)
{
	tr_ref r;
	(void)ud;
	return tr_whereis(node, TR_PG_NAME, &r) == TR_ENOTFOUND;
}

/* ---- tests ---------------------------------------------------------------- */

TT_TEST(server_starts)
{
	TT_EQ(srv_start(), 0);
	TT_ASSERT(srv_port > 0);
	TT_ASSERT(strstr(srv_conninfo, "hostaddr=127.0.0.1") != NULL);
	/* start on a running cluster says the same again */
	int port = srv_port;
	TT_EQ(srv_start(), 0);
	TT_EQ(srv_port, port);
}

TT_TEST(bad_options)
{
	char err[256];
	tr_pg *p = NULL;
	tr_pg_opts o = opts();
	TT_OK(start(&o));
	o.conninfo = "hostaddr=127.0.0.1 no_such_option=1";
	TT_RC(tr_pg_start(node, 0, &o, &p, err, sizeof(err)), TR_EINVAL);
	TT_ASSERT(strstr(err, "bad conninfo") != NULL);
	o.conninfo = "host=db.example.com dbname=x";
	TT_RC(tr_pg_start(node, 0, &o, &p, err, sizeof(err)), TR_EINVAL);
	TT_ASSERT(strstr(err, "needs a DNS lookup") != NULL);
	o = opts();
	o.pool = 1001;
	TT_RC(tr_pg_start(node, 0, &o, &p, err, sizeof(err)), TR_EINVAL);
	TT_STREQ(err, "postgres: pool must be 1..1000, not 1001");
	/* One pool per node. */
	o = opts();
	TT_RC(tr_pg_start(node, 0, &o, &p, err, sizeof(err)), TR_EEXIST);
	TT_ASSERT(p == NULL);
	stop();
}

TT_TEST(first_connection_and_up)
{
	tr_pg_opts o = opts();
	TT_OK(start(&o));
	TT_ASSERT(wait_up(1, 10000));
	TT_EQ(ST(open), 1);
	TT_EQ(ST(idle), 1);
	TT_EQ(ST(connects), 1);
	TT_EQ(ST(connect_failures), 0);
	char buf[64];
	tr_pg_last_error(pool, buf, sizeof(buf));
	TT_STREQ(buf, "");
	stop();
}

TT_TEST(typed_values_and_columns)
{
	tr_pg_opts o = opts();
	item *q;
	TT_OK(start(&o));
	TT_EQ(reset_table(), 0);
	q = q1("select id, name, score, ok, note from t order by id", "");
	TT_ASSERT(is_ok(q));
	TT_STREQ(column(q, 0), "id");
	TT_STREQ(column(q, 1), "name");
	TT_STREQ(column(q, 2), "score");
	TT_STREQ(column(q, 3), "ok");
	TT_STREQ(column(q, 4), "note");
	TT_EQ(nrows(q), 2);
	TT_EQ(affected(q), 2);
	TT_ASSERT(is_int(cell(q, 0, 0), 1));
	TT_ASSERT(is_str(cell(q, 0, 1), "alice"));
	TT_ASSERT(is_float(cell(q, 0, 2), 1.5));
	TT_ASSERT(is_bool(cell(q, 0, 3), 1));
	TT_EQ(cell(q, 0, 4)->type, MSGPACK_OBJECT_NIL);
	TT_ASSERT(is_int(cell(q, 1, 0), 2));
	TT_ASSERT(is_float(cell(q, 1, 2), -2.25));
	TT_ASSERT(is_bool(cell(q, 1, 3), 0));
	TT_ASSERT(is_str(cell(q, 1, 4), "hi"));
	/* Every type class, and parameters that round-trip exactly. */
	q = q1("select $1::int8 as big, $2::int2 as small, 3::numeric / 2 as num, $3::float8 as f,"
	       " $4::numeric as huge, 'NaN'::float8 as nan, $5::text as t, null::int as nothing,"
	       " '2024-01-02'::date as d, $6::bool as b, $7::float4 as f4, $8 as untyped",
	       "iifusbfs", (long long)INT64_MIN, -7LL, 0.1, (unsigned long long)UINT64_MAX,
	       "h\xc3\xa9llo \xe2\x9c\x93", 1, 0.5, "plain");
	TT_ASSERT(is_ok(q));
	TT_STREQ(column(q, 0), "big");
	TT_STREQ(column(q, 11), "untyped");
	TT_ASSERT(is_int(cell(q, 0, 0), INT64_MIN));
	TT_ASSERT(is_int(cell(q, 0, 1), -7));
	TT_ASSERT(is_float(cell(q, 0, 2), 1.5));
	TT_ASSERT(is_float(cell(q, 0, 3), 0.1));
	TT_ASSERT(is_float(cell(q, 0, 4), 18446744073709551615.0));
	TT_ASSERT(is_float(cell(q, 0, 5), NAN));
	TT_ASSERT(is_str(cell(q, 0, 6), "h\xc3\xa9llo \xe2\x9c\x93"));
	TT_EQ(cell(q, 0, 7)->type, MSGPACK_OBJECT_NIL);
	TT_ASSERT(is_str(cell(q, 0, 8), "2024-01-02"));
	TT_ASSERT(is_bool(cell(q, 0, 9), 1));
	TT_ASSERT(is_float(cell(q, 0, 10), 0.5));
	TT_ASSERT(is_str(cell(q, 0, 11), "plain"));
	/* An empty result still names its columns. */
	q = q1("select id, name from t where id < 0", "");
	TT_ASSERT(is_ok(q));
	TT_EQ(nrows(q), 0);
	TT_STREQ(column(q, 1), "name");
	TT_EQ(dups_(), 0);
	TT_EQ(ST(queries), 6);
	TT_EQ(ST(errors), 0);
	stop();
}

TT_TEST(injection_is_a_value)
{
	static const char evil[] = "x'); DROP TABLE t; --";
	tr_pg_opts o = opts();
	item *q;
	TT_OK(start(&o));
	TT_EQ(reset_table(), 0);
	q = q1("select count(*) as n from t where name = $1", "s", evil);
	TT_ASSERT(is_ok(q));
	TT_ASSERT(is_int(cell(q, 0, 0), 0));
	q = q1("insert into t (id, name) values (3, $1)", "s", evil);
	TT_ASSERT(is_ok(q));
	q = q1("select name from t where id = $1", "i", 3LL);
	TT_ASSERT(is_ok(q));
	TT_ASSERT(is_str(cell(q, 0, 0), evil));
	q = q1("select count(*) from t", NULL);
	TT_ASSERT(is_ok(q));
	TT_ASSERT(is_int(cell(q, 0, 0), 3));
	stop();
}

TT_TEST(one_statement_only)
{
	tr_pg_opts o = opts();
	item *q;
	TT_OK(start(&o));
	TT_EQ(reset_table(), 0);
	q = q1("select 1; select 2", NULL);
	TT_ASSERT(q != NULL && !is_ok(q));
	TT_RC(q->err, TR_EINVAL);
	TT_STREQ(sqlstate(q), "42601");
	TT_STREQ(message(q), "cannot insert multiple commands into a prepared statement");
	q = q1("delete from t; select 1", NULL);
	TT_RC(q->err, TR_EINVAL);
	q = q1("select count(*) from t", NULL);
	TT_ASSERT(is_int(cell(q, 0, 0), 2));
	stop();
}

TT_TEST(bad_requests)
{
	tr_pg_opts o = opts();
	msgpack_packer pk;
	tr_buf b;
	TT_OK(start(&o));
	q_reset();
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	/* 0: {params = [1]} */
	msgpack_pack_map(&pk, 1);
	tr__mp_pack_cstr(&pk, "params");
	msgpack_pack_array(&pk, 1);
	msgpack_pack_int(&pk, 1);
	q_add_raw(b.data, b.len);
	/* 1: {sql = 5} */
	b.len = 0;
	msgpack_pack_map(&pk, 1);
	tr__mp_pack_cstr(&pk, "sql");
	msgpack_pack_int(&pk, 5);
	q_add_raw(b.data, b.len);
	/* 2: a map as param; 3: an array as param; 4: params not an array */
	q_add("select $1", "m");
	q_add("select $1, $2", "ia", 1LL);
	b.len = 0;
	msgpack_pack_map(&pk, 2);
	tr__mp_pack_cstr(&pk, "sql");
	tr__mp_pack_cstr(&pk, "select 1");
	tr__mp_pack_cstr(&pk, "params");
	tr__mp_pack_cstr(&pk, "x");
	q_add_raw(b.data, b.len);
	/* 5: 1001 params */
	b.len = 0;
	msgpack_pack_map(&pk, 2);
	tr__mp_pack_cstr(&pk, "sql");
	tr__mp_pack_cstr(&pk, "select 1");
	tr__mp_pack_cstr(&pk, "params");
	msgpack_pack_array(&pk, TR_PG_MAX_PARAMS + 1);
	for (int i = 0; i <= TR_PG_MAX_PARAMS; i++)
		msgpack_pack_int(&pk, i);
	q_add_raw(b.data, b.len);
	/* 6: no body; 7: an array body; 8: another tag; 9: empty sql;
	 * 10: NUL in a param */
	q_add("select 1", NULL)->nobody = 1;
	b.len = 0;
	msgpack_pack_array(&pk, 0);
	q_add_raw(b.data, b.len);
	q_add("select 1", NULL)->tag = 0x999;
	q_add("", NULL);
	b.len = 0;
	msgpack_pack_map(&pk, 2);
	tr__mp_pack_cstr(&pk, "sql");
	tr__mp_pack_cstr(&pk, "select $1");
	tr__mp_pack_cstr(&pk, "params");
	msgpack_pack_array(&pk, 1);
	msgpack_pack_str(&pk, 3);
	msgpack_pack_str_body(&pk, "a\0b", 3);
	q_add_raw(b.data, b.len);
	tr_buf_free(&b);
	TT_EQ(q_go(5000), 0);
	for (int i = 0; i < nq; i++) {
		TT_ASSERT(Q[i].done && (Q[i].flags & TR_MSGF_ERROR));
		TT_RC(Q[i].err, TR_EINVAL);
	}
	TT_STREQ(message(&Q[0]), "the query has no sql");
	TT_STREQ(message(&Q[1]), "sql must be a string");
	TT_STREQ(message(&Q[2]),
	         "param $1 is a map: a param is nil, a bool, an integer, a float or a string");
	TT_STREQ(message(&Q[3]),
	         "param $2 is an array: a param is nil, a bool, an integer, a float or a string");
	TT_STREQ(message(&Q[4]), "params must be an array");
	TT_STREQ(message(&Q[5]), "too many params: 1001 (at most 1000)");
	TT_STREQ(message(&Q[6]), "the query has no body: want {sql = \"...\", params = [...]}");
	TT_STREQ(message(&Q[7]), "the query body must be a map {sql = \"...\", params = [...]}");
	TT_STREQ(message(&Q[8]), "unknown tag 0x999: the pool answers 0x300 (query)");
	TT_STREQ(message(&Q[9]), "sql is empty");
	TT_STREQ(message(&Q[10]), "param $1 contains a NUL byte");
	TT_STREQ(sqlstate(&Q[0]), "(none)");
	TT_EQ(ST(errors), 11);
	TT_EQ(ST(queries), 0);
	/* nil params are no params */
	b.len = 0;
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	msgpack_pack_map(&pk, 2);
	tr__mp_pack_cstr(&pk, "sql");
	tr__mp_pack_cstr(&pk, "select 7 as seven");
	tr__mp_pack_cstr(&pk, "params");
	msgpack_pack_nil(&pk);
	q_reset();
	q_add_raw(b.data, b.len);
	tr_buf_free(&b);
	TT_EQ(q_go(5000), 0);
	TT_ASSERT(is_ok(&Q[0]));
	TT_ASSERT(is_int(cell(&Q[0], 0, 0), 7));
	TT_EQ(dups_(), 0);
	stop();
}

TT_TEST(server_errors)
{
	tr_pg_opts o = opts();
	item *q;
	TT_OK(start(&o));
	TT_EQ(reset_table(), 0);
	uint64_t e0 = ST(errors);
	q = q1("selec 1", NULL);
	TT_RC(q->err, TR_EINVAL);
	TT_STREQ(sqlstate(q), "42601");
	TT_STREQ(message(q), "syntax error at or near \"selec\"");
	q = q1("select $1::int", "s", "abc");
	TT_RC(q->err, TR_EINVAL);
	TT_STREQ(sqlstate(q), "22P02");
	q = q1("select * from no_such_table", NULL);
	TT_RC(q->err, TR_EINVAL);
	TT_STREQ(sqlstate(q), "42P01");
	q = q1("select 1 / $1", "i", 0LL);
	TT_RC(q->err, TR_EINVAL);
	TT_STREQ(sqlstate(q), "22012");
	/* More params than the statement has: the server calls it a protocol
	 * violation; for us a bad request. */
	q = q1("select $1::int", "ii", 1LL, 2LL);
	TT_RC(q->err, TR_EINVAL);
	TT_STREQ(sqlstate(q), "08P01");
	/* Other server errors. */
	q = q1("insert into t (id) values (1)", NULL);
	TT_RC(q->err, TR_EFAILED);
	TT_STREQ(sqlstate(q), "23505");
	q = q1("copy t to stdout", NULL);
	TT_RC(q->err, TR_EINVAL);
	TT_STREQ(message(q), "COPY FROM STDIN / TO STDOUT is not supported by the pool");
	/* The pool still works; a NOTICE does not disturb it. */
	q = q1("do $$ begin raise notice 'hello'; end $$", NULL);
	TT_ASSERT(is_ok(q));
	q = q1("select 2", NULL);
	TT_ASSERT(is_ok(q));
	TT_EQ(ST(errors), e0 + 7);
	TT_EQ(dups_(), 0);
	stop();
}

TT_TEST(statement_timeout)
{
	tr_pg_opts o = opts();
	o.statement_timeout_us = 200000;
	TT_OK(start(&o));
	TT_ASSERT(wait_up(1, 10000));
	item *q = q1("select pg_sleep(3)", NULL);
	TT_ASSERT(q != NULL);
	TT_RC(q->err, TR_ETIMEDOUT);
	TT_STREQ(sqlstate(q), "57014");
	TT_STREQ(message(q), "canceling statement due to statement timeout");
	TT_ASSERT(q->ms >= 150 && q->ms < 2000);
	TT_EQ(ST(timeouts), 1);
	/* The same connection goes on. */
	q = q1("select 1", NULL);
	TT_ASSERT(is_ok(q));
	TT_EQ(ST(open), 1);
	TT_EQ(ST(connects), 1);
	stop();
}

TT_TEST(exhaustion)
{
	tr_pg_opts o = opts();
	o.pool = 2;
	o.queue = 3;
	TT_OK(start(&o));
	TT_ASSERT(wait_up(1, 10000));
	q_reset();
	for (int i = 0; i < 8; i++)
		q_add("select pg_sleep(0.3)", NULL);
	int three = 3;
	TT_EQ(tn_send(node, cli_ref, KICK, 0), TR_OK);
	/* The three beyond pool + queue are refused at once. */
	TT_ASSERT(tn_wait(answers_ge_, &three, 2000));
	TT_ASSERT(wait_gauges(2, 3, 2000));
	TT_EQ(ST(rejected), 3);
	int eight = 8;
	TT_ASSERT(tn_wait(answers_ge_, &eight, 10000));
	q_parse();
	int ok = 0, rej = 0;
	for (int i = 0; i < 8; i++) {
		if (is_ok(&Q[i])) {
			ok++;
			TT_ASSERT(Q[i].ms >= 250);
		} else {
			TT_RC(Q[i].err, TR_EREJECTED);
			TT_STREQ(message(&Q[i]), "3 queries already wait for a connection (queue = 3)");
			TT_ASSERT(Q[i].ms < 250);
			rej++;
		}
	}
	TT_EQ(ok, 5);
	TT_EQ(rej, 3);
	/* 2 ran at once, then 2, then 1: three rounds of 0.3 s. */
	uint64_t last = 0;
	for (int i = 0; i < 8; i++)
		if (is_ok(&Q[i]) && Q[i].ms > last)
			last = Q[i].ms;
	TT_ASSERT(last >= 850);
	TT_EQ(ST(queries), 5);
	TT_EQ(ST(rejected), 3);
	TT_EQ(ST(errors), 3);
	TT_EQ(ST(wait_count), 5);
	uint64_t hist = 0;
	for (int i = 0; i < 12; i++)
		hist += ST(wait_hist[i]);
	TT_EQ(hist, 5);
	/* the last one waited two rounds */
	TT_ASSERT(ST(wait_hist[10]) >= 3); /* 0.3 and 0.6 s */
	TT_ASSERT(ST(wait_us_sum) >= 3 * 250000u);
	TT_EQ(ST(open), 2);
	TT_EQ(ST(busy), 0);
	TT_EQ(ST(idle), 2);
	TT_EQ(ST(queued), 0);
	TT_EQ(ST(connects), 2);
	TT_EQ(dups_(), 0);
	stop();
}

TT_TEST(deadline_while_queued)
{
	tr_pg_opts o = opts();
	o.pool = 1;
	TT_OK(start(&o));
	TT_ASSERT(wait_up(1, 10000));
	q_reset();
	q_add("select pg_sleep(0.6)", NULL);
	q_add("select 1", NULL)->deadline = tr_wall_us() + 150000;
	q_add("select 2", NULL)->deadline = tr_wall_us() - 1000;
	q_add("select 3", NULL)->deadline = tr_wall_us() + 5000000;
	TT_EQ(q_go(5000), 0);
	TT_ASSERT(is_ok(&Q[0]));
	TT_RC(Q[1].err, TR_ETIMEDOUT);
	TT_ASSERT(strncmp(message(&Q[1]), "the deadline passed after ", 26) == 0);
	TT_ASSERT(Q[1].ms >= 100 && Q[1].ms < 500);
	TT_RC(Q[2].err, TR_ETIMEDOUT);
	TT_STREQ(message(&Q[2]), "the deadline had passed when the query arrived");
	TT_ASSERT(is_ok(&Q[3]));
	TT_ASSERT(is_int(cell(&Q[3], 0, 0), 3));
	TT_EQ(ST(timeouts), 2);
	TT_EQ(ST(queued), 0);
	stop();
}

TT_TEST(preping_after_idle)
{
	tr_pg_opts o = opts();
	o.idle_timeout_us = 300000;
	TT_OK(start(&o));
	TT_ASSERT(wait_up(1, 10000));
	TT_ASSERT(is_ok(q1("select 1", NULL)));
	uint64_t p0 = ST(prepings);
	TT_ASSERT(is_ok(q1("select 1", NULL)));
	TT_EQ(ST(prepings), p0);
	tn_sleep_ms(400);
	TT_ASSERT(is_ok(q1("select 1", NULL)));
	TT_EQ(ST(prepings), p0 + 1);
	TT_EQ(ST(connects), 1);
	stop();
}

TT_TEST(server_restart)
{
	tr_pg_opts o = opts();
	o.pool = 2;
	o.idle_timeout_us = 200000;
	TT_OK(start(&o));
	TT_ASSERT(wait_up(1, 10000));
	q_reset();
	q_add("select pg_sleep(0.1)", NULL);
	q_add("select pg_sleep(0.1)", NULL);
	TT_EQ(q_go(5000), 0);
	TT_ASSERT(is_ok(&Q[0]) && is_ok(&Q[1]));
	TT_EQ(ST(open), 2);
	uint64_t d0 = ST(disconnects), p0 = ST(prepings), c0 = ST(connects);
	TT_EQ(pg_script("restart"), 0);
	/* Both idle connections died with the old server; the pool finds
	 * its way back by itself. */
	TT_ASSERT(wait_up(1, 15000));
	TT_ASSERT(ST(disconnects) >= d0 + 2);
	TT_ASSERT(ST(connects) > c0);
	tn_sleep_ms(300); /* idle longer than idle_timeout: pre-pinged */
	item *q = q1("select 1", NULL);
	TT_ASSERT(is_ok(q));
	TT_ASSERT(ST(prepings) > p0);
	q_reset();
	q_add("select pg_sleep(0.05)", NULL);
	q_add("select pg_sleep(0.05)", NULL);
	TT_EQ(q_go(5000), 0);
	TT_ASSERT(is_ok(&Q[0]) && is_ok(&Q[1]));
	TT_EQ(dups_(), 0);
	stop();
}

TT_TEST(recycle_after_max_lifetime)
{
	tr_pg_opts o = opts();
	o.max_lifetime_us = 500000;
	TT_OK(start(&o));
	TT_ASSERT(wait_up(1, 10000));
	item *q = q1("select pg_backend_pid()", NULL);
	TT_ASSERT(is_ok(q));
	int64_t pid1 = cell(q, 0, 0)->via.i64;
	TT_EQ(ST(recycled), 0);
	tn_sleep_ms(600);
	/* Older than max_lifetime: used once more, closed when it goes idle. */
	q = q1("select pg_backend_pid()", NULL);
	TT_ASSERT(is_ok(q));
	TT_EQ(cell(q, 0, 0)->via.i64, pid1);
	TT_EQ(ST(recycled), 1);
	q = q1("select pg_backend_pid()", NULL);
	TT_ASSERT(is_ok(q));
	int64_t pid2 = cell(q, 0, 0)->via.i64;
	TT_NE(pid1, pid2);
	TT_EQ(ST(connects), 2);
	TT_EQ(ST(disconnects), 0);
	TT_EQ(ST(open), 1);
	stop();
}

TT_TEST(server_down_and_back)
{
	tr_pg_opts o = opts();
	o.connect_timeout_us = 1000000;
	TT_OK(start(&o));
	TT_ASSERT(wait_up(1, 10000));
	TT_ASSERT(is_ok(q1("select 1", NULL)));
	TT_EQ(pg_script("down"), 0);
	TT_ASSERT(wait_up(0, 10000));
	item *q = q1("select 1", NULL);
	TT_ASSERT(q != NULL);
	TT_RC(q->err, TR_EIO);
	TT_ASSERT(strncmp(message(q), "the server cannot be reached: ", 30) == 0);
	TT_ASSERT(q->ms < 1500);
	/* Again, while the backoff runs. */
	q_reset();
	for (int i = 0; i < 4; i++)
		q_add("select 1", NULL);
	TT_EQ(q_go(5000), 0);
	for (int i = 0; i < 4; i++) {
		TT_RC(Q[i].err, TR_EIO);
		TT_ASSERT(Q[i].ms < 1500);
	}
	char buf[256];
	tr_pg_last_error(pool, buf, sizeof(buf));
	TT_ASSERT(buf[0] != '\0');
	TT_ASSERT(ST(connect_failures) >= 1);
	TT_EQ(ST(open), 0);
	TT_EQ(srv_start(), 0);
	TT_ASSERT(wait_up(1, 15000));
	q = q1("select 1", NULL);
	TT_ASSERT(is_ok(q));
	TT_EQ(dups_(), 0);
	stop();
}

TT_TEST(connect_timeout)
{
	/* A socket that completes TCP handshakes (the kernel does, into the
	 * backlog) and never says a word: libpq waits for the server's first
	 * message forever. */
	struct sockaddr_in a;
	socklen_t al = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	TT_ASSERT(fd >= 0);
	TT_EQ(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	TT_EQ(getsockname(fd, (struct sockaddr *)&a, &al), 0);
	TT_EQ(listen(fd, 64), 0);
	char ci[200];
	snprintf(ci, sizeof(ci),
	         "hostaddr=127.0.0.1 port=%d user=troupe dbname=postgres sslmode=disable "
	         "gssencmode=disable",
	         ntohs(a.sin_port));
	tr_pg_opts o = opts();
	o.conninfo = ci;
	o.connect_timeout_us = 300000;
	int rc = start(&o);
	if (rc != TR_OK)
		close(fd);
	TT_OK(rc);
	item *q = q1("select 1", NULL);
	int ok = q != NULL;
	close(fd);
	TT_ASSERT(ok);
	TT_RC(q->err, TR_EIO);
	TT_ASSERT(strstr(message(q), "connect timed out after 300 ms") != NULL);
	TT_ASSERT(q->ms >= 200 && q->ms < 2000);
	TT_EQ(ST(up), 0);
	TT_ASSERT(ST(connect_failures) >= 1);
	TT_EQ(ST(connects), 0);
	char buf[256];
	tr_pg_last_error(pool, buf, sizeof(buf));
	TT_STREQ(buf, "connect timed out after 300 ms");
	stop();
}

TT_TEST(stop_with_asks_in_flight)
{
	tr_pg_opts o = opts();
	o.pool = 2;
	o.queue = 10;
	TT_OK(start(&o));
	TT_ASSERT(wait_up(1, 10000));
	q_reset();
	for (int i = 0; i < 6; i++)
		q_add("select pg_sleep(2)", NULL);
	TT_EQ(tn_send(node, cli_ref, KICK, 0), TR_OK);
	TT_ASSERT(wait_gauges(2, 4, 3000));
	uint64_t t0 = tr_now_ns();
	TT_EQ(tn_send(node, cli_ref, KILL_POOL, 0), TR_OK);
	int six = 6;
	TT_ASSERT(tn_wait(answers_ge_, &six, 3000));
	TT_ASSERT(tr_now_ns() - t0 < 1500000000u);
	q_parse();
	for (int i = 0; i < 6; i++) {
		TT_RC(Q[i].err, TR_ESHUTDOWN);
		TT_ASSERT(strncmp(message(&Q[i]), "the pool is stopping", 20) == 0);
	}
	tn_sleep_ms(50);
	TT_EQ(answers(), 6);
	TT_EQ(dups_(), 0);
	TT_EQ(ST(up), 0);
	TT_EQ(ST(open), 0);
	/* Its name goes with it. */
	TT_ASSERT(tn_wait(whereis_gone_, NULL, 1000));
	stop();

	/* The node stopping with asks in flight: no crash, no leak, and it
	 * does not wait for the server. */
	TT_OK(start(&o));
	TT_ASSERT(wait_up(1, 10000));
	q_reset();
	for (int i = 0; i < 5; i++)
		q_add("select pg_sleep(2)", NULL);
	TT_EQ(tn_send(node, cli_ref, KICK, 0), TR_OK);
	TT_ASSERT(wait_gauges(2, 3, 3000));
	t0 = tr_now_ns();
	stop();
	TT_ASSERT(tr_now_ns() - t0 < 1500000000u);
}

/* One query with the k-th allocation from the kick on failing, whichever
 * thread makes it (the probe's ask, the pool's request, its reply, the
 * connection opened after it...). 1: an error came, 0: a result, -1: no
 * answer. */
static int query_failing_at(long k)
{
	int one = 1;
	q_reset();
	q_add("select $1::text as v", "s", "value");
	tr__alloc_fail_after(k);
	if (tn_send(node, cli_ref, KICK, 0) != TR_OK) {
		tr__alloc_fail_after(0);
		return 1;
	}
	int got = tn_wait(answers_ge_, &one, 5000);
	tn_sleep_ms(5); /* what the pool does after answering, failing too */
	tr__alloc_fail_after(0);
	if (!got)
		return -1;
	q_parse();
	if (Q[0].ask_failed || (Q[0].flags & TR_MSGF_ERROR))
		return 1;
	return is_str(cell(&Q[0], 0, 0), "value") ? 0 : -1;
}

TT_TEST(allocation_failures)
{
	tr_pg_opts o = opts();
	int failed = 0;
	TT_OK(start(&o));
	TT_ASSERT(wait_up(1, 10000));
	ask_timeout_ms = 3000;
	for (long k = 1; k <= 24; k++) {
		int r = query_failing_at(k);
		TT_ASSERT(r >= 0);
		failed += r;
	}
	TT_ASSERT(failed > 0);
	ask_timeout_ms = 20000;
	item *q = q1("select $1::text as v", "s", "value");
	TT_ASSERT(is_ok(q));
	TT_ASSERT(is_str(cell(q, 0, 0), "value"));
	stop();

	/* Every connection is recycled after its query: the failures also
	 * land in opening the next one. */
	o.max_lifetime_us = 1;
	TT_OK(start(&o));
	TT_ASSERT(wait_up(1, 10000));
	ask_timeout_ms = 3000;
	for (long k = 1; k <= 24; k++) {
		TT_ASSERT(wait_up(1, 5000));
		TT_ASSERT(query_failing_at(k) >= 0);
	}
	ask_timeout_ms = 20000;
	TT_ASSERT(wait_up(1, 10000));
	q = q1("select $1::text as v", "s", "value");
	TT_ASSERT(is_ok(q));
	TT_ASSERT(ST(recycled) >= 10);
	TT_ASSERT(ST(connect_failures) >= 1); /* the reconnects were hit too */
	tn_sleep_ms(20);
	TT_EQ(dups_(), 0);
	stop();
}

TT_TEST(server_stops)
{
	stop();
	q_reset();
	for (int i = 0; i < MAXQ; i++) {
		tr_buf_free(&Q[i].body);
		tr_buf_free(&Q[i].rbody);
	}
	srv_stop();
	TT_EQ(srv_dir[0], '\0');
}

TT_LIST = {
	TT_ENTRY(server_starts),
	TT_ENTRY(bad_options),
	TT_ENTRY(first_connection_and_up),
	TT_ENTRY(typed_values_and_columns),
	TT_ENTRY(injection_is_a_value),
	TT_ENTRY(one_statement_only),
	TT_ENTRY(bad_requests),
	TT_ENTRY(server_errors),
	TT_ENTRY(statement_timeout),
	TT_ENTRY(exhaustion),
	TT_ENTRY(deadline_while_queued),
	TT_ENTRY(preping_after_idle),
	TT_ENTRY(server_restart),
	TT_ENTRY(recycle_after_max_lifetime),
	TT_ENTRY(server_down_and_back),
	TT_ENTRY(connect_timeout),
	TT_ENTRY(stop_with_asks_in_flight),
	TT_ENTRY(allocation_failures),
	TT_ENTRY(server_stops),
	TT_END,
};

TT_MAIN()
