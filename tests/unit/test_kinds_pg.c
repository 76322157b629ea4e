/*
 * test_kinds_pg.c -- the built-in kinds on the node's real backends: a
 * throwaway PostgreSQL 15 cluster (scripts/pg) and redis-server
 * (scripts/redis) in temp dirs, stopped at exit (and by watchers if this
 * process dies first), the pool (db/pg.h) and the Redis client
 * (db/redis.h) started on a node as main.c starts them, and the kinds'
 * actors spawned from a Lua file that declares them.
 *
 *  rag, backend = "postgres": ranking of a small two-tenant corpus, the
 *    tenant filter, top_k, min_score, no match, stop words only, SQL in
 *    the text (the table survives), a deadline passed or reached while
 *    the table is locked (timeout), the server down (an error, not a
 *    hang) and back, a node with no pool.
 *  execute, SQL tools: the appointments tool, args converted and
 *    refused as for handlers, a value the server refuses (invalid), SQL
 *    in string args (never SQL), optional args as NULL, params order,
 *    UPDATE counts, duplicate column names, a broken query, the tool's
 *    timeout, the pool's statement_timeout, the run's deadline, the
 *    server down, a run through the engine.
 *  telemetry, sinks "postgres" and "redis": events arrive (rows, XLEN,
 *    typed columns, odd bodies), a slow server (writes wait, nothing is
 *    stored twice), the backlog bound while the server is down (dropped
 *    counted, the actor still answers), recovery when it is back,
 *    metrics, the last write at terminate, and what it costs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>
#include <msgpack.h>
#include <troupe/troupe.h>

#include "actors/execute/execute.h"
#include "actors/kinds.h"
#include "actors/kit.h"
#include "actors/telemetry/telemetry.h"
#include "core/alloc.h"
#include "db/pg.h"
#include "db/redis.h"
#include "http/json.h"
#include "lua/tlua.h"
#include "msg/msg_int.h"
#include "pipe/engine.h"
#include "pipe/mp.h"
#include "tt.h"
#include "tnode.h"

#define ROOT TR_SOURCE_ROOT
#define PG_SCRIPT ROOT "/scripts/pg"
#define REDIS_SCRIPT ROOT "/scripts/redis"

/* ---- the servers ------------------------------------------------------------ */

static char pg_dir[128], pg_conninfo[512];
static char rd_dir[128];
static int rd_port;

/* Runs `script VERB DIR` and reads its VAR= lines. 0 on success. */
static int run_script(const char *script, const char *verb, const char *dir)
{
	char cmd[768], line[600];
	snprintf(cmd, sizeof(cmd), "'%s' %s '%s' 2>&1", script, verb, dir);
	FILE *f = popen(cmd, "r");
	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL) {
		if (strncmp(line, "PG_CONNINFO='", 13) == 0) {
			char *end = strrchr(line + 13, '\'');
			if (end != NULL)
				*end = '\0';
			snprintf(pg_conninfo, sizeof(pg_conninfo), "%.500s", line + 13);
		} else if (strncmp(line, "REDIS_PORT=", 11) == 0) {
			rd_port = atoi(line + 11);
		} else if (strncmp(line, "PG_", 3) != 0 && strncmp(line, "REDIS_", 6) != 0) {
			fprintf(stderr, "  %s %s: %s", script, verb, line);
		}
	}
	int st = pclose(f);
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

static void servers_stop(void)
{
	if (pg_dir[0] != '\0')
		(void)run_script(PG_SCRIPT, "stop", pg_dir);
	if (rd_dir[0] != '\0')
		(void)run_script(REDIS_SCRIPT, "stop", rd_dir);
	pg_dir[0] = rd_dir[0] = '\0';
}

static int temp_dir(char *buf, size_t n, const char *what)
{
	const char *tmp = getenv("TMPDIR");
	snprintf(buf, n, "%s/troupe-%s-XXXXXX", tmp && tmp[0] ? tmp : "/tmp", what);
	if (mkdtemp(buf) == NULL) {
		buf[0] = '\0';
		return -1;
	}
	return 0;
}

static int servers_start(void)
{
	char pid[32], cmd[1024];
	if (temp_dir(pg_dir, sizeof(pg_dir), "kinds-pg") != 0 ||
	    temp_dir(rd_dir, sizeof(rd_dir), "kinds-redis") != 0)
		return -1;
	atexit(servers_stop);
	/* a crash or a timeout's SIGKILL skips atexit: a watcher stops them */
	snprintf(cmd, sizeof(cmd),
	         "(while kill -0 %ld 2>/dev/null; do sleep 0.5; done; '%s' stop '%s'; "
	         "'%s' stop '%s') </dev/null >/dev/null 2>&1 &",
	         (long)getpid(), PG_SCRIPT, pg_dir, REDIS_SCRIPT, rd_dir);
	if (system(cmd) != 0)
		fprintf(stderr, "  cannot start the server watcher\n");
	snprintf(pid, sizeof(pid), "%ld", (long)getpid());
	setenv("REDIS_OWNER_PID", pid, 1);
	return run_script(PG_SCRIPT, "start", pg_dir) == 0 &&
	               run_script(REDIS_SCRIPT, "start", rd_dir) == 0
	           ? 0
	           : -1;
}

/* Runs SQL text with psql (from a file: no quoting). 0 on success. */
static int psql(const char *sql)
{
	char path[64] = "/tmp/test_kinds_pg_XXXXXX.sql", cmd[1024];
	int fd = mkstemps(path, 4);
	if (fd < 0)
		return -1;
	FILE *f = fdopen(fd, "w");
	fputs(sql, f);
	fclose(f);
	snprintf(cmd, sizeof(cmd), "psql '%s' -q -X -v ON_ERROR_STOP=1 -f '%s' >/dev/null",
	         pg_conninfo, path);
	int rc = system(cmd);
	unlink(path);
	return rc == 0 ? 0 : -1;
}

/* The first line of a query's unaligned output, or "" (psql failed). */
static const char *psql_value(const char *sql, char *buf, size_t len)
{
	char path[64] = "/tmp/test_kinds_pg_XXXXXX.sql", cmd[1024];
	int fd = mkstemps(path, 4);
	buf[0] = '\0';
	if (fd < 0)
		return buf;
	FILE *f = fdopen(fd, "w");
	fputs(sql, f);
	fclose(f);
	snprintf(cmd, sizeof(cmd), "psql '%s' -q -X -A -t -f '%s' 2>&1", pg_conninfo, path);
	FILE *p = popen(cmd, "r");
	if (p != NULL) {
		if (fgets(buf, (int)len, p) == NULL)
			buf[0] = '\0';
		buf[strcspn(buf, "\n")] = '\0';
		pclose(p);
	}
	unlink(path);
	return buf;
}

static long psql_long(const char *sql)
{
	char b[128];
	return atol(psql_value(sql, b, sizeof(b)));
}

/* redis-cli's first line of output for `args`. */
static const char *rcli(const char *args, char *buf, size_t len)
{
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "redis-cli -h 127.0.0.1 -p %d %s 2>&1", rd_port, args);
	buf[0] = '\0';
	FILE *p = popen(cmd, "r");
	if (p != NULL) {
		if (fgets(buf, (int)len, p) == NULL)
			buf[0] = '\0';
		buf[strcspn(buf, "\n")] = '\0';
		pclose(p);
	}
	return buf;
}

static long xlen(const char *key)
{
	char a[128], b[64];
	snprintf(a, sizeof(a), "XLEN %s", key);
	return atol(rcli(a, b, sizeof(b)));
}

/* ---- the node ------------------------------------------------------------------ */

static tr_node *node;
static tr_pg *pool;
static tr_redis *rcl;
static tr_config *cfg;
static char lua_path[64];

enum { KICK = 1 };

static tr_ref target, client;
static tr_buf req;
static uint32_t req_tenant;
static uint64_t req_deadline; /* µs since the epoch; 0 = none */
static uv_mutex_t rep_mu;
static tr_buf rep;
static uint16_t rep_flags;
static int32_t rep_err;
static atomic_int replies;
static uint64_t kick_ns, rep_ms;

static int client_msg(tr_ctx *ctx, probe *p, tr_msg *m)
{
	(void)p;
	if (m->tag == KICK) {
		tr_msg *q = tr_msg_new();
		q->tag = (uint32_t)m->arg;
		q->tenant = req_tenant;
		q->deadline = req_deadline;
		if (req.len > 0)
			q->body = tr_body_new(req.data, req.len);
		kick_ns = tr_now_ns();
		return tr_ask(ctx, target, q, 30000, NULL);
	}
	if (m->flags & TR_MSGF_REPLY) {
		uv_mutex_lock(&rep_mu);
		rep.len = 0;
		if (m->body != NULL)
			tr__buf_append(&rep, m->body->data, m->body->len);
		rep_flags = m->flags;
		rep_err = m->err;
		rep_ms = (tr_now_ns() - kick_ns) / 1000000u;
		uv_mutex_unlock(&rep_mu);
		atomic_fetch_add(&replies, 1);
	}
	return TR_OK;
}

/* Asks `to` with req (tag `tag`) and waits for the answer (30 s at most). */
static int ask_to(tr_ref to, uint32_t tag)
{
	int before = atomic_load(&replies);
	target = to;
	if (tn_send(node, client, KICK, tag) != TR_OK)
		return 0;
	for (int i = 0; i < 30000 && atomic_load(&replies) == before; i++)
		tn_sleep_ms(1);
	return atomic_load(&replies) > before;
}

static int json_mp(const char *js, tr_buf *out)
{
	json_error_t e;
	json_t *j = json_loads(js, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
	int rc;
	out->len = 0;
	if (j == NULL) {
		fprintf(stderr, "  bad test JSON: %s: %s\n", js, e.text);
		return TR_EINVAL;
	}
	rc = tr__json_to_mp(j, out);
	json_decref(j);
	return rc;
}

static int ask_json(tr_ref to, const char *js)
{
	return json_mp(js, &req) == TR_OK && ask_to(to, TR_TAG_STEP);
}

/* The answer's field k as parsed JSON (NULL when absent); decref it. */
static json_t *rep_get(const char *k)
{
	const unsigned char *v;
	size_t vn;
	tr_buf j;
	json_error_t e;
	json_t *out = NULL;
	if (tr__mp_map_get(rep.data, rep.len, k, &v, &vn) != TR_OK)
		return NULL;
	tr_buf_init(&j);
	if (tr__mp_json(v, vn, &j) == TR_OK)
		out = json_loadb((const char *)j.data, j.len, JSON_DECODE_ANY, &e);
	tr_buf_free(&j);
	return out;
}

static const char *rep_text(char *buf, size_t len)
{
	tr_buf j;
	tr_buf_init(&j);
	buf[0] = '\0';
	if (rep.len > 0 && tr__mp_json(rep.data, rep.len, &j) == TR_OK)
		snprintf(buf, len, "%.*s", (int)j.len, (const char *)j.data);
	tr_buf_free(&j);
	return buf;
}

/* The answer is an error with this code, and its message starts with
 * `prefix` (or is exactly `exact`, when given). */
static int failed_with(int code, const char *prefix, const char *exact)
{
	char b[1024];
	const unsigned char *v;
	const char *s;
	size_t vn, sn;
	if (!(rep_flags & TR_MSGF_ERROR) || rep_err != code) {
		fprintf(stderr, "    not a %s error: flags %x err %s, body %s\n", tr_err_name(code),
		        rep_flags, tr_err_name(rep_err), rep_text(b, sizeof(b)));
		return 0;
	}
	if (tr__mp_map_get(rep.data, rep.len, "message", &v, &vn) != TR_OK ||
	    tr__mp_str(v, vn, &s, &sn) != TR_OK) {
		fprintf(stderr, "    no message\n");
		return 0;
	}
	snprintf(b, sizeof(b), "%.*s", (int)sn, s);
	if ((exact != NULL && strcmp(b, exact) != 0) ||
	    (prefix != NULL && strncmp(b, prefix, strlen(prefix)) != 0)) {
		fprintf(stderr, "    message: %s\n    want:    %s%s\n", b, exact ? exact : prefix,
		        exact ? "" : "...");
		return 0;
	}
	return 1;
}

/* Whether JSON a equals the JSON text b (object keys in any order). */
static int same_json(json_t *a, const char *b)
{
	json_error_t e;
	json_t *y = json_loads(b, JSON_DECODE_ANY, &e);
	int eq = a != NULL && y != NULL && json_equal(a, y);
	if (!eq) {
		char *s = a ? json_dumps(a, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
		fprintf(stderr, "    got:  %s\n    want: %s\n", s ? s : "(absent)", b);
		free(s);
	}
	json_decref(y);
	return eq;
}

#define OK_ANSWER()                                                            \
	do {                                                                       \
		char ob_[1024];                                                        \
		if (rep_flags & TR_MSGF_ERROR)                                         \
			TT_FAIL_("an error: %s %s", tr_err_name(rep_err),                  \
			         rep_text(ob_, sizeof(ob_)));                              \
	} while (0)

#define FIELD(k, want)                                                         \
	do {                                                                       \
		OK_ANSWER();                                                           \
		json_t *fj_ = rep_get(k);                                              \
		int fok_ = same_json(fj_, want);                                       \
		json_decref(fj_);                                                      \
		TT_ASSERT(fok_);                                                       \
	} while (0)

#define FAILS(to, js, code, prefix, exact)                                     \
	do {                                                                       \
		TT_ASSERT(ask_json(to, js));                                           \
		TT_ASSERT(failed_with(code, prefix, exact));                           \
	} while (0)

static tr_ref spawn_kind(const tr_actor_ops *ops, const char *name)
{
	tr_spawn_opts so = {0};
	tr_ref r = TR_REF_NONE;
	so.name = name;
	so.mbox.mailbox = 65536;
	if (tr_node_spawn(node, ops, tr_config_actor(cfg, name), &so, &r) != TR_OK)
		fprintf(stderr, "  cannot spawn %s\n", name);
	return r;
}

static int pg_up_(void *ud)
{
	(void)ud;
	return atomic_load(&tr_pg_stats_of(pool)->up) == 1;
}

static int redis_up_(void *ud)
{
	(void)ud;
	return atomic_load(&tr_redis_stats_of(rcl)->up) == 1;
}

static const char *const pipeline_file =
	"postgres { conninfo = \"hostaddr=127.0.0.1 port=1 dbname=unused\" }\n"
	"redis { url = \"redis://127.0.0.1:1\", prefix = \"kp:\" }\n"
	"tool \"appointments\" {\n"
	"  sql = \"select id, start_time from appointments where patient_id = $1 and status <> "
	"'cancelled' order by start_time\",\n"
	"  args = { patient_id = \"int\" },\n"
	"}\n"
	"tool \"by_text\" { sql = \"select id from appointments where patient_id = $1 order by id\",\n"
	"  args = { p = \"string\" } }\n"
	"tool \"find_status\" { sql = \"select id, status from appointments where status = $1 "
	"order by id\", args = { status = \"string\" } }\n"
	"tool \"maybe\" { sql = \"select coalesce($1::text, 'none') as v, $2::int as n\",\n"
	"  args = { v = \"string?\", n = \"int?\" }, params = { \"v\", \"n\" } }\n"
	"tool \"between\" { sql = \"select count(*) as n, min(id) as first from appointments "
	"where patient_id = $2 and start_time >= $1::timestamptz\",\n"
	"  args = { from = \"string\", who = \"int\" }, params = { \"from\", \"who\" } }\n"
	"tool \"cancel\" { sql = \"update appointments set status = 'cancelled' where id = $1\",\n"
	"  args = { id = \"int\" } }\n"
	"tool \"dup_cols\" { sql = \"select 1 as a, 2.5 as a, true as b, null as c, 'x' as a\" }\n"
	"tool \"broken\" { sql = \"select nosuchcol from appointments\" }\n"
	"tool \"slow\" { sql = \"select pg_sleep(2)\", timeout = \"200ms\" }\n"
	"tool \"slower\" { sql = \"select pg_sleep(4)\" }\n"
	"tool \"echo\" { args = { s = \"string\" }, handler = function(a) return a end }\n"
	"actor \"exec\" { kind = \"execute\" }\n"
	"actor \"docs\" { kind = \"rag\", backend = \"postgres\" }\n"
	"actor \"docs2\" { kind = \"rag\", backend = \"postgres\", top_k = 1 }\n"
	"actor \"docs_strict\" { kind = \"rag\", backend = \"postgres\", min_score = 0.25 }\n"
	"actor \"tel_pg\" { kind = \"telemetry\", sink = \"postgres\", flush_ms = 20, "
	"db_batch = 50 }\n"
	"actor \"tel_pg_small\" { kind = \"telemetry\", sink = { \"postgres\", \"ring\" }, "
	"flush_ms = 20, backlog = 100, db_batch = 20, db_timeout_ms = 1000 }\n"
	"actor \"tel_rd\" { kind = \"telemetry\", sink = \"redis\", flush_ms = 20, db_batch = 50 }\n"
	"actor \"tel_rd_small\" { kind = \"telemetry\", sink = \"redis\", flush_ms = 20, "
	"backlog = 100, db_batch = 20, redis_key = \"kp:small\", redis_maxlen = 0 }\n"
	"actor \"tel_lazy\" { kind = \"telemetry\", sink = { \"postgres\", \"redis\" }, "
	"flush_ms = 60000, redis_key = \"kp:lazy\" }\n"
	"pipeline \"appts\" { step \"exec\" {} }\n";

static const char *const schema_sql =
	"CREATE TABLE appointments (id serial PRIMARY KEY, patient_id int NOT NULL,\n"
	"  start_time timestamptz NOT NULL, status text NOT NULL);\n"
	"INSERT INTO appointments (patient_id, start_time, status) VALUES\n"
	"  (1, '2024-05-02 10:00+00', 'booked'), (1, '2024-05-01 09:00+00', 'booked'),\n"
	"  (1, '2024-05-03 11:00+00', 'cancelled'), (2, '2024-05-04 12:00+00', 'booked');\n"
	"INSERT INTO troupe_documents (id, tenant, source, sha256) VALUES\n"
	"  (11, 'acme', 'guide.md', 'x'), (12, 'acme', 'billing.md', 'x'),\n"
	"  (13, 'globex', 'guide.md', 'y'), (14, '', 'faq.md', 'z');\n"
	"INSERT INTO troupe_chunks (document_id, tenant, ord, source, body) VALUES\n"
	"  (11, 'acme', 0, 'guide.md#Retries', 'Retries use exponential backoff with full jitter; "
	"a step retries on timeouts and overload by default.'),\n"
	"  (11, 'acme', 1, 'guide.md#Timeouts', 'Every step has a timeout. When the timeout "
	"passes, the attempt fails and may be retried.'),\n"
	"  (12, 'acme', 0, 'billing.md#Invoices', 'Invoices are sent on the first day of each "
	"month; refunds take five business days.'),\n"
	"  (13, 'globex', 0, 'guide.md#Retries', 'Globex retries nothing: every failure pages the "
	"on-call engineer.'),\n"
	"  (14, '', 0, 'faq.md:1', 'The assistant answers questions about billing and retries "
	"from the ingested documents.');\n";

static tr_ref exec_ref, docs_ref, docs2_ref, strict_ref;

TT_TEST(start)
{
	static probe_cfg pc = {.id = 1, .on_msg = client_msg};
	char err[512], cmd[1024];
	tr_diag d;

	TT_ASSERT(chdir(ROOT) == 0);
	TT_OK(tr_actors_register_builtin());
	uv_mutex_init(&rep_mu);
	tr_buf_init(&req);
	tr_buf_init(&rep);
	TT_EQ(servers_start(), 0);
	snprintf(cmd, sizeof(cmd), "psql '%s' -q -X -v ON_ERROR_STOP=1 -f db/migrations/"
	         "001_documents.sql -f db/migrations/002_events.sql >/dev/null", pg_conninfo);
	TT_EQ(system(cmd), 0);
	TT_EQ(psql(schema_sql), 0);

	snprintf(lua_path, sizeof(lua_path), "/tmp/test_kinds_pg_XXXXXX.lua");
	int fd = mkstemps(lua_path, 4);
	TT_ASSERT(fd >= 0);
	FILE *f = fdopen(fd, "w");
	fputs(pipeline_file, f);
	fclose(f);
	const char *files[] = {lua_path};
	tr_diag_init(&d);
	if (tr_config_load(files, 1, &cfg, &d) != TR_OK) {
		for (size_t i = 0; i < d.n; i++)
			fprintf(stderr, "  %s\n", d.msgs[i]);
		TT_FAIL_("the pipeline file does not load");
	}
	tr_diag_free(&d);

	node = tn_start(2);
	TT_ASSERT(node != NULL);
	/* statement_timeout 2.5 s: the tool "slower" runs into it */
	tr_pg_opts po = {.conninfo = pg_conninfo, .pool = 4, .connect_timeout_us = 2000000,
	                 .statement_timeout_us = 2500000};
	if (tr_pg_start(node, 0, &po, &pool, err, sizeof(err)) != TR_OK)
		TT_FAIL_("tr_pg_start: %s", err);
	tr_redis_opts ro = {.host = "127.0.0.1", .port = rd_port, .timeout_us = 1000000};
	if (tr_redis_start(node, 1, &ro, &rcl, err, sizeof(err)) != TR_OK)
		TT_FAIL_("tr_redis_start: %s", err);
	TT_ASSERT(tn_wait(pg_up_, NULL, 10000));
	TT_ASSERT(tn_wait(redis_up_, NULL, 10000));
	TT_OK(tn_spawn(node, &pc, "client", &client));
	exec_ref = spawn_kind(&tr_execute_ops, "exec");
	docs_ref = spawn_kind(&tr_rag_ops, "docs");
	docs2_ref = spawn_kind(&tr_rag_ops, "docs2");
	strict_ref = spawn_kind(&tr_rag_ops, "docs_strict");
	TT_ASSERT(!tr_ref_is_none(exec_ref) && !tr_ref_is_none(docs_ref) &&
	          !tr_ref_is_none(docs2_ref) && !tr_ref_is_none(strict_ref));
}

/* ---- rag ------------------------------------------------------------------------ */

static uint32_t tenant_id(const char *name)
{
	uint32_t id = 0;
	(void)tr_tenant_intern(name, strlen(name), &id);
	return id;
}

/* The answer's passages' sources, joined: "a|b". */
static const char *sources_of(char *buf, size_t len)
{
	json_t *p = rep_get("passages");
	size_t off = 0;
	buf[0] = '\0';
	for (size_t i = 0; p != NULL && i < json_array_size(p) && off < len; i++) {
		const char *s = json_string_value(json_object_get(json_array_get(p, i), "source"));
		off += (size_t)snprintf(buf + off, len - off, "%s%s", i ? "|" : "", s ? s : "?");
	}
	json_decref(p);
	return buf;
}

#define TOP(want)                                                              \
	do {                                                                       \
		char sb_[512];                                                         \
		OK_ANSWER();                                                           \
		TT_STREQ(sources_of(sb_, sizeof(sb_)), want);                          \
	} while (0)

TT_TEST(rag_ranks_by_tenant)
{
	req_tenant = tenant_id("acme");
	TT_ASSERT(ask_json(docs_ref, "{\"text\": \"how are invoices sent?\", \"session\": \"s1\"}"));
	TOP("billing.md#Invoices");
	FIELD("passages", "[{\"text\": \"Invoices are sent on the first day of each month; refunds "
	                  "take five business days.\", \"source\": \"billing.md#Invoices\", "
	                  "\"score\": 0.2}]");
	FIELD("sources", "[\"billing.md\"]");
	FIELD("session", "\"s1\""); /* the message rides along */
	TT_ASSERT(ask_json(docs_ref, "{\"text\": \"what is the step timeout\"}"));
	TOP("guide.md#Timeouts|guide.md#Retries");
	FIELD("sources", "[\"guide.md\"]"); /* one document, once */
	TT_ASSERT(ask_json(docs_ref, "{\"text\": \"How do RETRIES work?\"}"));
	TOP("guide.md#Retries|guide.md#Timeouts");
	/* top_k and min_score */
	TT_ASSERT(ask_json(docs2_ref, "{\"text\": \"how do retries work\"}"));
	TOP("guide.md#Retries");
	TT_ASSERT(ask_json(strict_ref, "{\"text\": \"what is the step timeout\"}"));
	TOP("guide.md#Timeouts"); /* 0.3 passes, 0.2 does not */
	/* another tenant sees its own chunks only; no tenant: the '' ones */
	req_tenant = tenant_id("globex");
	TT_ASSERT(ask_json(docs_ref, "{\"text\": \"how do retries work\"}"));
	TOP("guide.md#Retries");
	FIELD("passages", "[{\"text\": \"Globex retries nothing: every failure pages the on-call "
	                  "engineer.\", \"source\": \"guide.md#Retries\", \"score\": 0.1}]");
	TT_ASSERT(ask_json(docs_ref, "{\"text\": \"invoices\"}"));
	TOP("");
	req_tenant = 0;
	TT_ASSERT(ask_json(docs_ref, "{\"text\": \"retries and billing\"}"));
	TOP("faq.md:1");
	FIELD("sources", "[\"faq.md\"]");
	req_tenant = tenant_id("nobody");
	TT_ASSERT(ask_json(docs_ref, "{\"text\": \"retries\"}"));
	TOP("");
	req_tenant = 0;
}

TT_TEST(rag_no_match_and_hostile_text)
{
	char b[64];
	req_tenant = tenant_id("acme");
	TT_ASSERT(ask_json(docs_ref, "{\"text\": \"zebra quantum\"}"));
	FIELD("passages", "[]");
	FIELD("sources", "[]");
	TT_ASSERT(ask_json(docs_ref, "{\"text\": \"the and of is\"}")); /* stop words only */
	FIELD("passages", "[]");
	/* SQL in the text is text */
	TT_ASSERT(ask_json(docs_ref, "{\"text\": \"'); drop table troupe_chunks; --\"}"));
	FIELD("passages", "[]");
	TT_ASSERT(ask_json(docs_ref, "{\"text\": \"retries' OR '1'='1\"}"));
	TOP("guide.md#Retries|guide.md#Timeouts");
	TT_ASSERT(ask_json(docs_ref, "{\"text\": \"a & b | !c <-> d:* \\\\ \\\" ' $1 %s\"}"));
	OK_ANSWER(); /* tsquery syntax in the text is not tsquery syntax */
	TT_ASSERT(ask_json(docs_ref, "{\"text\": \"http://a.com/x?a=1&b=2 retries\"}"));
	OK_ANSWER();
	TT_STREQ(psql_value("SELECT count(*) FROM troupe_chunks", b, sizeof(b)), "5");
	/* bad input is the same as with bm25 */
	FAILS(docs_ref, "{\"text\": \"   \"}", TR_EINVAL, NULL,
	      "'text' is empty: nothing to search for");
	FAILS(docs_ref, "{\"text\": 5}", TR_EINVAL, NULL, "'text' must be a string, got an integer");
	/* invalid UTF-8 and NUL bytes (which the server refuses) are left out */
	{
		static const char raw[] = "\x81\xa4text\xb2retries\xff\xfe\x00\xc0\xafwork\xe2\x82";
		req.len = 0;
		tr__buf_append(&req, raw, sizeof(raw) - 1);
		TT_ASSERT(ask_to(docs_ref, TR_TAG_STEP));
		TOP("guide.md#Retries|guide.md#Timeouts");
	}
	/* a big text is its first 64 distinct words */
	{
		size_t n = 200000;
		char *big = malloc(n + 32);
		memcpy(big, "{\"text\": \"", 10);
		for (size_t i = 0; i < n; i++)
			big[10 + i] = "retries invoice "[i % 16];
		memcpy(big + 10 + n, "\"}", 3);
		TT_ASSERT(ask_json(docs_ref, big));
		free(big);
		OK_ANSWER();
	}
	req_tenant = 0;
}

/* The table locked by another session: the query waits, the step's
 * deadline ends it as a timeout; a deadline already passed fails at once. */
TT_TEST(rag_deadline)
{
	char cmd[1024];
	req_tenant = tenant_id("acme");
	req_deadline = tr_wall_us() - 1000;
	FAILS(docs_ref, "{\"text\": \"retries\"}", TR_ETIMEDOUT, NULL,
	      "rag: postgres: the run's deadline passed before the query");
	snprintf(cmd, sizeof(cmd),
	         "psql '%s' -q -X -c 'BEGIN; LOCK TABLE troupe_chunks IN ACCESS EXCLUSIVE MODE; "
	         "SELECT pg_sleep(1); COMMIT;' >/dev/null 2>&1 &", pg_conninfo);
	TT_EQ(system(cmd), 0);
	for (int i = 0; i < 100 && psql_long("SELECT count(*) FROM pg_locks WHERE mode = "
	                                     "'AccessExclusiveLock' AND relation = "
	                                     "'troupe_chunks'::regclass") == 0; i++)
		tn_sleep_ms(20);
	req_deadline = tr_wall_us() + 300000;
	FAILS(docs_ref, "{\"text\": \"retries\"}", TR_ETIMEDOUT, "rag: postgres: no answer within ",
	      NULL);
	fprintf(stderr, "  locked table: timed out after %llu ms (deadline 300 ms)\n",
	        (unsigned long long)rep_ms);
	TT_ASSERT(rep_ms >= 250 && rep_ms < 1500);
	req_deadline = 0;
	/* once the lock goes, the same query answers */
	TT_ASSERT(ask_json(docs_ref, "{\"text\": \"retries\"}"));
	TOP("guide.md#Retries|guide.md#Timeouts");
	req_tenant = 0;
}

/* ---- execute: SQL tools ----------------------------------------------------------- */

TT_TEST(sql_tool_runs)
{
	TT_ASSERT(ask_json(exec_ref, "{\"text\": \"my appointments\", \"tool\": \"appointments\", "
	                             "\"args\": {\"patient_id\": 1}}"));
	FIELD("tool", "\"appointments\"");
	FIELD("text", "\"my appointments\"");
	{
		json_t *r = rep_get("result");
		TT_ASSERT(r != NULL);
		TT_EQ(json_integer_value(json_object_get(r, "count")), 2);
		json_t *rows = json_object_get(r, "rows");
		TT_EQ(json_array_size(rows), 2);
		TT_EQ(json_integer_value(json_object_get(json_array_get(rows, 0), "id")), 2);
		TT_EQ(json_integer_value(json_object_get(json_array_get(rows, 1), "id")), 1);
		const char *t = json_string_value(json_object_get(json_array_get(rows, 0), "start_time"));
		TT_ASSERT(t != NULL && strncmp(t, "2024-05-01 ", 11) == 0);
		TT_EQ(json_object_size(json_array_get(rows, 0)), 2);
		json_decref(r);
	}
	/* a numeric string is an int (regex slots), from slots too */
	TT_ASSERT(ask_json(exec_ref, "{\"slots\": {\"tool\": \"appointments\", \"patient_id\": \"2\", "
	                             "\"what\": \"x\"}}"));
	OK_ANSWER();
	{
		json_t *r = rep_get("result");
		TT_EQ(json_integer_value(json_object_get(r, "count")), 1);
		json_decref(r);
	}
	TT_ASSERT(ask_json(exec_ref, "{\"tool\": \"appointments\", \"args\": {\"patient_id\": 99}}"));
	FIELD("result", "{\"rows\": [], \"count\": 0}");
	/* optional args are NULL; params in their order */
	TT_ASSERT(ask_json(exec_ref, "{\"tool\": \"maybe\", \"args\": {}}"));
	FIELD("result", "{\"rows\": [{\"v\": \"none\", \"n\": null}], \"count\": 1}");
	TT_ASSERT(ask_json(exec_ref, "{\"tool\": \"maybe\", \"args\": {\"n\": \"7\", \"v\": \"hi\"}}"));
	FIELD("result", "{\"rows\": [{\"v\": \"hi\", \"n\": 7}], \"count\": 1}");
	TT_ASSERT(ask_json(exec_ref, "{\"tool\": \"between\", \"args\": {\"who\": 1, "
	                             "\"from\": \"2024-05-02\"}}"));
	FIELD("result", "{\"rows\": [{\"n\": 2, \"first\": 1}], \"count\": 1}");
	/* types by column; a name seen before gets a suffix */
	TT_ASSERT(ask_json(exec_ref, "{\"tool\": \"dup_cols\"}"));
	FIELD("result", "{\"rows\": [{\"a\": 1, \"a_2\": 2.5, \"b\": true, \"c\": null, "
	                "\"a_3\": \"x\"}], \"count\": 1}");
	/* handler tools still run beside SQL ones */
	TT_ASSERT(ask_json(exec_ref, "{\"tool\": \"echo\", \"args\": {\"s\": \"hi\"}}"));
	FIELD("result", "{\"s\": \"hi\"}");
}

TT_TEST(sql_tool_bad_args_and_injection)
{
	char b[64];
	FAILS(exec_ref, "{\"tool\": \"appointments\", \"args\": {\"patient_id\": \"abc\"}}",
	      TR_EINVAL, NULL,
	      "tool 'appointments': arg 'patient_id': expected int, got string \"abc\"");
	FAILS(exec_ref, "{\"tool\": \"appointments\", \"args\": {\"patient_id\": 1.5}}", TR_EINVAL,
	      NULL, "tool 'appointments': arg 'patient_id': expected int, got number 1.5");
	FAILS(exec_ref, "{\"tool\": \"appointments\", \"args\": {}}", TR_EINVAL, NULL,
	      "tool 'appointments': missing required arg 'patient_id' (int)");
	FAILS(exec_ref, "{\"tool\": \"appointments\"}", TR_EINVAL, NULL,
	      "tool 'appointments': missing required arg 'patient_id' (int)");
	FAILS(exec_ref, "{\"tool\": \"appointments\", \"args\": {\"patient\": 1}}", TR_EINVAL, NULL,
	      "tool 'appointments': unknown arg 'patient' (args: patient_id)");
	FAILS(exec_ref, "{\"tool\": \"appointments\", \"args\": {\"patient_id\": "
	                "\"1; drop table appointments\"}}", TR_EINVAL, NULL,
	      "tool 'appointments': arg 'patient_id': expected int, got string \"1; drop table "
	      "appointments\"");
	/* a string the server cannot read as an integer: the caller's input */
	FAILS(exec_ref, "{\"tool\": \"by_text\", \"args\": {\"p\": \"abc\"}}", TR_EINVAL, NULL,
	      "tool 'by_text': invalid input syntax for type integer: \"abc\"");
	FAILS(exec_ref, "{\"tool\": \"by_text\", \"args\": {\"p\": \"1 OR 1=1\"}}", TR_EINVAL, NULL,
	      "tool 'by_text': invalid input syntax for type integer: \"1 OR 1=1\"");
	TT_ASSERT(ask_json(exec_ref, "{\"tool\": \"by_text\", \"args\": {\"p\": \"1\"}}"));
	FIELD("result", "{\"rows\": [{\"id\": 1}, {\"id\": 2}, {\"id\": 3}], \"count\": 3}");
	/* SQL in a string arg is a value */
	static const char *const hostile[] = {
		"{\"tool\": \"find_status\", \"args\": {\"status\": \"x' OR '1'='1\"}}",
		"{\"tool\": \"find_status\", \"args\": {\"status\": \"'; DROP TABLE appointments; --\"}}",
		"{\"tool\": \"find_status\", \"args\": {\"status\": \"booked'; DELETE FROM "
		"appointments; SELECT '\"}}",
		"{\"tool\": \"find_status\", \"args\": {\"status\": \"$1\"}}",
		"{\"tool\": \"find_status\", \"args\": {\"status\": \"\\\\'); DROP TABLE x; --\"}}",
	};
	for (size_t i = 0; i < sizeof(hostile) / sizeof(hostile[0]); i++) {
		TT_ASSERT(ask_json(exec_ref, hostile[i]));
		FIELD("result", "{\"rows\": [], \"count\": 0}");
	}
	TT_ASSERT(ask_json(exec_ref, "{\"tool\": \"find_status\", \"args\": {\"status\": "
	                             "\"cancelled\"}}"));
	FIELD("result", "{\"rows\": [{\"id\": 3, \"status\": \"cancelled\"}], \"count\": 1}");
	TT_STREQ(psql_value("SELECT count(*) FROM appointments", b, sizeof(b)), "4");
}

TT_TEST(sql_tool_changes_and_errors)
{
	TT_ASSERT(ask_json(exec_ref, "{\"tool\": \"cancel\", \"args\": {\"id\": 2}}"));
	FIELD("result", "{\"rows\": [], \"count\": 1}"); /* rows changed */
	TT_ASSERT(ask_json(exec_ref, "{\"tool\": \"appointments\", \"args\": {\"patient_id\": 1}}"));
	OK_ANSWER();
	{
		json_t *r = rep_get("result");
		TT_EQ(json_integer_value(json_object_get(r, "count")), 1);
		json_decref(r);
	}
	TT_ASSERT(ask_json(exec_ref, "{\"tool\": \"cancel\", \"args\": {\"id\": 999}}"));
	FIELD("result", "{\"rows\": [], \"count\": 0}");
	/* the tool's own SQL is wrong: not the caller's fault */
	FAILS(exec_ref, "{\"tool\": \"broken\"}", TR_EFAILED, NULL,
	      "tool 'broken': its SQL failed: column \"nosuchcol\" does not exist");
	/* the tool's timeout (200 ms), not the query's 2 s */
	FAILS(exec_ref, "{\"tool\": \"slow\"}", TR_ETIMEDOUT, NULL,
	      "tool 'slow': timed out: no answer from postgres within 200ms");
	fprintf(stderr, "  slow tool: timed out after %llu ms (its timeout: 200 ms)\n",
	        (unsigned long long)rep_ms);
	TT_ASSERT(rep_ms >= 190 && rep_ms < 1500);
	/* no timeout of its own: the pool's statement_timeout (2.5 s here) ends it */
	FAILS(exec_ref, "{\"tool\": \"slower\"}", TR_ETIMEDOUT, NULL,
	      "tool 'slower': timed out: canceling statement due to statement timeout");
	/* the run's deadline bounds a tool without a timeout */
	req_deadline = tr_wall_us() - 1;
	FAILS(exec_ref, "{\"tool\": \"appointments\", \"args\": {\"patient_id\": 1}}", TR_ETIMEDOUT,
	      NULL, "tool 'appointments': timed out: the run's deadline passed before its query");
	req_deadline = 0;
	/* the actor never crashed */
	tr_actor_stats as;
	TT_OK(tr_actor_stats_get(node, exec_ref, &as));
	TT_EQ(as.restarts, 0);
}

/* Through the engine: an invalid value is the run's "invalid" (HTTP
 * 422), a good call answers with the rows. */
TT_TEST(sql_tool_in_a_run)
{
	static tr_pipe_arg pa;
	tr_spawn_opts so = {0};
	tr_ref eng;
	pa = (tr_pipe_arg){cfg, tr_config_pipeline(cfg, "appts"), NULL, NULL, NULL, 0};
	TT_ASSERT(pa.spec != NULL);
	so.name = "pipeline:appts";
	TT_OK(tr_node_spawn(node, &tr_pipe_ops, &pa, &so, &eng));
	TT_OK(json_mp("{\"tool\": \"by_text\", \"args\": {\"p\": \"2\"}}", &req));
	TT_ASSERT(ask_to(eng, TR_TAG_RUN));
	FIELD("result", "{\"rows\": [{\"id\": 4}], \"count\": 1}");
	TT_OK(json_mp("{\"tool\": \"by_text\", \"args\": {\"p\": \"two\"}}", &req));
	TT_ASSERT(ask_to(eng, TR_TAG_RUN));
	TT_ASSERT(rep_flags & TR_MSGF_ERROR);
	json_t *code = rep_get("code");
	TT_ASSERT(same_json(code, "\"invalid\""));
	json_decref(code);
}

/* ---- telemetry: the postgres and redis sinks ------------------------------------ */

static int send_event(tr_ref to, const char *js, uint32_t tenant)
{
	tr_buf b;
	tr_buf_init(&b);
	if (json_mp(js, &b) != TR_OK) {
		tr_buf_free(&b);
		return TR_EINVAL;
	}
	tr_msg *m = tr_msg_new();
	m->tag = TR_TAG_STEP;
	m->tenant = tenant;
	m->trace_hi = 0x1234;
	m->trace_lo = 0xabcd;
	m->body = tr_body_new(b.data, b.len);
	tr_buf_free(&b);
	return tr_node_send(node, to, m);
}

static int send_events(tr_ref to, int n, int from)
{
	char js[256];
	for (int i = 0; i < n; i++) {
		snprintf(js, sizeof(js), "{\"event\": \"end\", \"pipeline\": \"p\", \"step\": \"s%d\", "
		         "\"attempt\": 0, \"step_us\": %d, \"run_us\": %d, \"trace\": \"t%d\"}",
		         (from + i) % 3, from + i, 2 * (from + i), from + i);
		if (send_event(to, js, 0) != TR_OK)
			return -1;
	}
	return 0;
}

static const char *wait_actor;
static int wait_sink;
static uint64_t wait_written;

static int written_ge_(void *ud)
{
	tr_telemetry_stats s;
	(void)ud;
	return tr_telemetry_stats_get(node, wait_actor, &s) == TR_OK &&
	       s.sink_written[wait_sink] >= wait_written;
}

static int wait_written_ge(const char *actor, int sink, uint64_t n, unsigned ms)
{
	wait_actor = actor;
	wait_sink = sink;
	wait_written = n;
	return tn_wait(written_ge_, NULL, ms);
}

static tr_telemetry_stats stats_of(const char *actor)
{
	tr_telemetry_stats s;
	memset(&s, 0, sizeof(s));
	(void)tr_telemetry_stats_get(node, actor, &s);
	return s;
}

static tr_ref tel_pg, tel_pg_small, tel_rd, tel_rd_small;

TT_TEST(telemetry_postgres_writes)
{
	char b[512];
	tel_pg = spawn_kind(&tr_telemetry_ops, "tel_pg");
	TT_ASSERT(!tr_ref_is_none(tel_pg));
	TT_EQ(send_events(tel_pg, 120, 0), 0);
	TT_ASSERT(wait_written_ge("tel_pg", TR_TEL_SINK_PG, 120, 10000));
	tr_telemetry_stats s = stats_of("tel_pg");
	TT_EQ(s.sink_written[TR_TEL_SINK_PG], 120);
	TT_EQ(s.sink_dropped[TR_TEL_SINK_PG] + s.sink_failed[TR_TEL_SINK_PG], 0);
	TT_EQ(s.sink_queued[TR_TEL_SINK_PG], 0);
	TT_EQ(psql_long("SELECT count(*) FROM troupe_events"), 120);
	/* batches of at most 50, in order */
	TT_EQ(psql_long("SELECT count(*) FROM troupe_events e1 JOIN troupe_events e2 ON "
	                "e2.id = e1.id + 1 WHERE e2.step_us <> e1.step_us + 1"), 0);
	TT_STREQ(psql_value("SELECT node, tenant, pipeline, step, event, attempt, step_us, run_us, "
	                    "trace, coalesce(error, '-'), at > now() - interval '1 minute' FROM "
	                    "troupe_events WHERE step_us = 7", b, sizeof(b)),
	         "troupe||p|s1|end|0|7|14|t7|-|t");
	/* a tenant from the envelope, the engine's own fields, odd bodies */
	uint32_t acme = tenant_id("acme");
	TT_OK(send_event(tel_pg, "{\"event\": \"error\", \"pipeline\": \"q\", \"step\": \"x\", "
	                         "\"error\": \"timeout\", \"step_us\": 1001}", acme));
	TT_OK(send_event(tel_pg, "{\"event\": \"odd\", \"attempt\": \"one\", \"step_us\": -5, "
	                         "\"run_us\": 1.5, \"error\": {\"code\": 7}, \"step\": [1], "
	                         "\"tenant\": \"given\"}", acme));
	TT_OK(send_event(tel_pg, "{\"attempt\": 99999999999, \"pipeline\": \"nul\\u0000here\", "
	                         "\"step\": \"'); DROP TABLE troupe_events; --\"}", 0));
	TT_OK(send_event(tel_pg, "{}", 0));
	TT_ASSERT(wait_written_ge("tel_pg", TR_TEL_SINK_PG, 124, 10000));
	TT_STREQ(psql_value("SELECT tenant, pipeline, step, event, error, trace FROM troupe_events "
	                    "WHERE step_us = 1001", b, sizeof(b)),
	         "acme|q|x|error|timeout|0000000000001234000000000000abcd");
	TT_STREQ(psql_value("SELECT tenant, event, coalesce(attempt::text, 'null'), step_us, "
	                    "coalesce(run_us::text, 'null'), error, step FROM troupe_events WHERE "
	                    "event = 'odd'", b, sizeof(b)),
	         "given|odd|null|-5|null|{\"code\":7}|");
	TT_STREQ(psql_value("SELECT coalesce(attempt::text, 'null'), pipeline = E'nul\\uFFFDhere', "
	                    "step, trace FROM troupe_events WHERE step LIKE '%DROP%'", b, sizeof(b)),
	         "null|t|'); DROP TABLE troupe_events; --|0000000000001234000000000000abcd");
	TT_EQ(psql_long("SELECT count(*) FROM troupe_events WHERE event = '' AND pipeline = ''"), 1);
}

/* A slow server (the table locked by another session): the write waits,
 * the actor goes on answering and buffering, and once the lock goes every
 * event is stored once. */
TT_TEST(telemetry_postgres_slow)
{
	char cmd[1024];
	long before = psql_long("SELECT count(*) FROM troupe_events");
	uint64_t w0 = stats_of("tel_pg").sink_written[TR_TEL_SINK_PG];
	snprintf(cmd, sizeof(cmd),
	         "psql '%s' -q -X -c 'BEGIN; LOCK TABLE troupe_events IN ACCESS EXCLUSIVE MODE; "
	         "SELECT pg_sleep(1.5); COMMIT;' >/dev/null 2>&1 &", pg_conninfo);
	TT_EQ(system(cmd), 0);
	for (int i = 0; i < 100 && psql_long("SELECT count(*) FROM pg_locks WHERE mode = "
	                                     "'AccessExclusiveLock' AND relation = "
	                                     "'troupe_events'::regclass") == 0; i++)
		tn_sleep_ms(20);
	TT_EQ(send_events(tel_pg, 80, 20000), 0);
	tn_sleep_ms(300);
	tr_telemetry_stats s = stats_of("tel_pg");
	TT_EQ(s.sink_written[TR_TEL_SINK_PG], w0); /* the write waits on the lock */
	TT_ASSERT(s.sink_queued[TR_TEL_SINK_PG] == 80);
	TT_OK(json_mp("{\"text\": \"hi\"}", &req));
	TT_ASSERT(ask_to(tel_pg, TR_TAG_STEP));
	TT_ASSERT(rep_ms < 200);
	TT_ASSERT(wait_written_ge("tel_pg", TR_TEL_SINK_PG, w0 + 81, 10000));
	s = stats_of("tel_pg");
	TT_EQ(s.sink_errors[TR_TEL_SINK_PG], 0);
	TT_EQ(s.sink_written[TR_TEL_SINK_PG], w0 + 81);
	TT_EQ(psql_long("SELECT count(*) FROM troupe_events") - before, 81);
	TT_EQ(psql_long("SELECT count(DISTINCT step_us) FROM troupe_events WHERE step_us >= 20000"),
	      80);
}

/* The server down: the backlog holds `backlog` events, the rest are
 * dropped and counted, the actor answers at once; back up: the backlog
 * is written. */
TT_TEST(telemetry_postgres_down_and_back)
{
	tel_pg_small = spawn_kind(&tr_telemetry_ops, "tel_pg_small");
	TT_ASSERT(!tr_ref_is_none(tel_pg_small));
	long before = psql_long("SELECT count(*) FROM troupe_events");
	TT_EQ(run_script(PG_SCRIPT, "down", pg_dir), 0);
	TT_EQ(send_events(tel_pg_small, 300, 1000), 0);
	/* every event taken (the ring counts them), 200 over the bound */
	for (int i = 0; i < 5000 && stats_of("tel_pg_small").events < 300; i++)
		tn_sleep_ms(1);
	tr_telemetry_stats s = stats_of("tel_pg_small");
	TT_EQ(s.events, 300);
	TT_EQ(s.sink_dropped[TR_TEL_SINK_PG], 200);
	TT_EQ(s.sink_queued[TR_TEL_SINK_PG], 100);
	TT_EQ(s.sink_written[TR_TEL_SINK_PG], 0);
	/* the actor still answers: a step through it passes at once */
	TT_OK(json_mp("{\"text\": \"hi\"}", &req));
	TT_ASSERT(ask_to(tel_pg_small, TR_TAG_STEP));
	TT_EQ(rep_flags & TR_MSGF_ERROR, 0);
	TT_ASSERT(rep_ms < 500);
	for (int i = 0; i < 5000 && stats_of("tel_pg_small").sink_errors[TR_TEL_SINK_PG] == 0; i++)
		tn_sleep_ms(1);
	TT_ASSERT(stats_of("tel_pg_small").sink_errors[TR_TEL_SINK_PG] > 0);
	/* the metrics say so */
	{
		tr_buf mb;
		tr_buf_init(&mb);
		TT_OK(tr_telemetry_metrics(node, &mb));
		tr__buf_append(&mb, "", 1);
		const char *t = (const char *)mb.data;
		if (strstr(t, "tel_pg_small") == NULL || getenv("SHOW_METRICS"))
			fprintf(stderr, "%s", t);
		TT_ASSERT(strstr(t, "# TYPE troupe_telemetry_sink_queued gauge\n") != NULL);
		/* 201: the step passed through is an event too */
		TT_ASSERT(strstr(t, "troupe_telemetry_sink_dropped_total{actor=\"tel_pg_small\","
		                    "sink=\"postgres\"} 201\n") != NULL);
		TT_ASSERT(strstr(t, "troupe_telemetry_sink_queued{actor=\"tel_pg_small\","
		                    "sink=\"postgres\"} 100\n") != NULL);
		TT_ASSERT(strstr(t, "troupe_telemetry_sink_written_total{actor=\"tel_pg\","
		                    "sink=\"postgres\"} 205\n") != NULL);
		TT_ASSERT(strstr(t, "sink=\"redis\"") == NULL); /* no redis sink yet */
		tr_buf_free(&mb);
	}
	/* back: the 100 kept are written (the pool reconnects by itself) */
	TT_EQ(run_script(PG_SCRIPT, "start", pg_dir), 0);
	TT_ASSERT(wait_written_ge("tel_pg_small", TR_TEL_SINK_PG, 100, 20000));
	s = stats_of("tel_pg_small");
	TT_EQ(s.sink_written[TR_TEL_SINK_PG], 100);
	TT_EQ(s.sink_queued[TR_TEL_SINK_PG], 0);
	TT_EQ(psql_long("SELECT count(*) FROM troupe_events") - before, 100);
	/* the first 100, in order */
	TT_EQ(psql_long("SELECT min(step_us) FROM troupe_events WHERE step_us BETWEEN 1000 AND 4999"),
	      1000);
	TT_EQ(psql_long("SELECT max(step_us) FROM troupe_events WHERE step_us BETWEEN 1000 AND 4999"),
	      1099);
	/* and new events flow again */
	TT_EQ(send_events(tel_pg_small, 10, 5000), 0);
	TT_ASSERT(wait_written_ge("tel_pg_small", TR_TEL_SINK_PG, 110, 10000));
}

TT_TEST(telemetry_redis_writes)
{
	char b[512];
	tel_rd = spawn_kind(&tr_telemetry_ops, "tel_rd");
	TT_ASSERT(!tr_ref_is_none(tel_rd));
	TT_EQ(send_events(tel_rd, 120, 0), 0);
	TT_ASSERT(wait_written_ge("tel_rd", TR_TEL_SINK_REDIS, 120, 10000));
	tr_telemetry_stats s = stats_of("tel_rd");
	TT_EQ(s.sink_written[TR_TEL_SINK_REDIS], 120);
	TT_EQ(s.sink_queued[TR_TEL_SINK_REDIS], 0);
	TT_EQ(xlen("kp:events"), 120); /* the default key: the redis { prefix } + "events" */
	/* fields as the JSON line has them, values as text */
	FILE *p;
	char cmd[256], all[2048] = "";
	snprintf(cmd, sizeof(cmd), "redis-cli -h 127.0.0.1 -p %d XRANGE kp:events - + COUNT 1",
	         rd_port);
	p = popen(cmd, "r");
	TT_ASSERT(p != NULL);
	while (fgets(b, sizeof(b), p) != NULL) {
		b[strcspn(b, "\n")] = '\0';
		strncat(all, b, sizeof(all) - strlen(all) - 2);
		strcat(all, "|");
	}
	pclose(p);
	/* id|ts_us|<value>|event|end|pipeline|p|step|s0|attempt|0|step_us|0|run_us|0|trace|t0| */
	char *after_ts = strstr(all, "|ts_us|");
	TT_ASSERT(after_ts != NULL);
	after_ts = strchr(after_ts + 7, '|');
	TT_ASSERT(after_ts != NULL);
	TT_STREQ(after_ts, "|event|end|pipeline|p|step|s0|attempt|0|step_us|0|run_us|0|trace|t0|");
	/* odd values, a tenant, binary-safe strings */
	TT_OK(send_event(tel_rd, "{\"event\": \"odd\", \"n\": 1.5, \"t\": true, \"z\": null, "
	                         "\"m\": {\"a\": [1]}, \"s\": \"a b\\u0000c\"}", tenant_id("acme")));
	TT_ASSERT(wait_written_ge("tel_rd", TR_TEL_SINK_REDIS, 121, 10000));
	snprintf(cmd, sizeof(cmd), "redis-cli -h 127.0.0.1 -p %d --no-raw XREVRANGE kp:events + - "
	         "COUNT 1", rd_port);
	p = popen(cmd, "r");
	all[0] = '\0';
	while (p != NULL && fgets(b, sizeof(b), p) != NULL) {
		b[strcspn(b, "\n")] = '\0';
		char *q = strchr(b, '"');
		strncat(all, q ? q : b, sizeof(all) - strlen(all) - 2);
		strcat(all, "|");
	}
	if (p != NULL)
		pclose(p);
	after_ts = strstr(all, "\"tenant\"");
	TT_ASSERT(after_ts != NULL);
	TT_STREQ(after_ts, "\"tenant\"|\"acme\"|\"event\"|\"odd\"|\"n\"|\"1.5\"|\"t\"|\"true\"|"
	                   "\"z\"|\"\"|\"m\"|\"{\\\"a\\\":[1]}\"|\"s\"|\"a b\\x00c\"|");
}

TT_TEST(telemetry_redis_down_and_back)
{
	char b[64];
	tel_rd_small = spawn_kind(&tr_telemetry_ops, "tel_rd_small");
	TT_ASSERT(!tr_ref_is_none(tel_rd_small));
	TT_EQ(send_events(tel_rd_small, 10, 0), 0);
	TT_ASSERT(wait_written_ge("tel_rd_small", TR_TEL_SINK_REDIS, 10, 10000));
	TT_EQ(xlen("kp:small"), 10);
	rcli("SHUTDOWN NOSAVE", b, sizeof(b));
	for (int i = 0; i < 5000 && redis_up_(NULL); i++)
		tn_sleep_ms(1);
	TT_ASSERT(!redis_up_(NULL));
	TT_EQ(send_events(tel_rd_small, 300, 100), 0);
	for (int i = 0; i < 5000 && stats_of("tel_rd_small").events < 310; i++)
		tn_sleep_ms(1);
	tr_telemetry_stats s = stats_of("tel_rd_small");
	TT_EQ(s.events, 310);
	TT_EQ(s.sink_dropped[TR_TEL_SINK_REDIS], 200);
	TT_EQ(s.sink_queued[TR_TEL_SINK_REDIS], 100);
	TT_OK(json_mp("{\"text\": \"hi\"}", &req));
	TT_ASSERT(ask_to(tel_rd_small, TR_TAG_STEP));
	TT_EQ(rep_flags & TR_MSGF_ERROR, 0);
	TT_ASSERT(rep_ms < 500);
	for (int i = 0; i < 5000 && stats_of("tel_rd_small").sink_errors[TR_TEL_SINK_REDIS] == 0;
	     i++)
		tn_sleep_ms(1);
	TT_ASSERT(stats_of("tel_rd_small").sink_errors[TR_TEL_SINK_REDIS] > 0);
	/* back on the same port (an empty server: no persistence) */
	TT_EQ(run_script(REDIS_SCRIPT, "restart", rd_dir), 0);
	TT_ASSERT(wait_written_ge("tel_rd_small", TR_TEL_SINK_REDIS, 110, 20000));
	s = stats_of("tel_rd_small");
	TT_EQ(s.sink_written[TR_TEL_SINK_REDIS], 110);
	TT_EQ(s.sink_queued[TR_TEL_SINK_REDIS], 0);
	TT_EQ(xlen("kp:small"), 100);
	/* the oldest 100 kept, in order: step_us 100 .. 199 */
	{
		char cmd[256], line[256], first[32] = "", last[32] = "";
		int n = 0, want_next = 0;
		snprintf(cmd, sizeof(cmd), "redis-cli -h 127.0.0.1 -p %d XRANGE kp:small - +", rd_port);
		FILE *p = popen(cmd, "r");
		while (p != NULL && fgets(line, sizeof(line), p) != NULL) {
			line[strcspn(line, "\n")] = '\0';
			if (want_next) {
				snprintf(n++ == 0 ? first : last, 32, "%.31s", line);
				want_next = 0;
			}
			want_next = strcmp(line, "step_us") == 0;
		}
		if (p != NULL)
			pclose(p);
		TT_EQ(n, 100);
		TT_STREQ(first, "100");
		TT_STREQ(last, "199");
	}
	tr_buf mb;
	tr_buf_init(&mb);
	TT_OK(tr_telemetry_metrics(node, &mb));
	tr__buf_append(&mb, "", 1);
	TT_ASSERT(strstr((const char *)mb.data, "troupe_telemetry_sink_written_total{actor="
	                                        "\"tel_rd_small\",sink=\"redis\"} 110\n") != NULL);
	tr_buf_free(&mb);
}

/* An actor that stops writes what it still holds (flush_ms is a minute). */
TT_TEST(telemetry_last_write_at_stop)
{
	tr_ref lazy = spawn_kind(&tr_telemetry_ops, "tel_lazy");
	TT_ASSERT(!tr_ref_is_none(lazy));
	long before = psql_long("SELECT count(*) FROM troupe_events");
	TT_EQ(send_events(lazy, 7, 7000), 0);
	for (int i = 0; i < 5000 && stats_of("tel_lazy").events < 7; i++)
		tn_sleep_ms(1);
	TT_EQ(stats_of("tel_lazy").sink_written[TR_TEL_SINK_PG], 0);
	tr_msg *m = tr_msg_new();
	m->tag = TR_TAG_STOP;
	m->flags = TR_MSGF_SYSTEM;
	TT_OK(tr_node_send(node, lazy, m));
	long n = 0;
	for (int i = 0; i < 100 && (n = psql_long("SELECT count(*) FROM troupe_events")) < before + 7;
	     i++)
		tn_sleep_ms(50);
	TT_EQ(n - before, 7);
	for (int i = 0; i < 100 && xlen("kp:lazy") < 7; i++)
		tn_sleep_ms(50);
	TT_EQ(xlen("kp:lazy"), 7);
}

/* What it costs: printed, not asserted. */
TT_TEST(cost)
{
	int n = tn_quick() ? 1000 : 5000;
	const char *names[] = {"tel_pg", "tel_rd"};
	tr_ref refs[] = {tel_pg, tel_rd};
	int sinks[] = {TR_TEL_SINK_PG, TR_TEL_SINK_REDIS};
	for (int k = 0; k < 2; k++) {
		tr_actor_stats a0, a1;
		uint64_t w0 = stats_of(names[k]).sink_written[sinks[k]];
		TT_OK(tr_actor_stats_get(node, refs[k], &a0));
		uint64_t t0 = tr_now_ns();
		TT_EQ(send_events(refs[k], n, 100000), 0);
		TT_ASSERT(wait_written_ge(names[k], sinks[k], w0 + (uint64_t)n, 30000));
		double s = (double)(tr_now_ns() - t0) / 1e9;
		TT_OK(tr_actor_stats_get(node, refs[k], &a1));
		fprintf(stderr, "  %s: %d events stored in %.3f s (%.0f/s), %.2f us of actor time per "
		        "event\n", names[k], n, s, n / s,
		        (double)(a1.receive_ns - a0.receive_ns) / 1e3 / n);
	}
	/* one rag query and one SQL tool call, asked one after the other */
	uint64_t t0 = tr_now_ns();
	int calls = tn_quick() ? 50 : 300;
	req_tenant = tenant_id("acme");
	for (int i = 0; i < calls; i++)
		TT_ASSERT(ask_json(docs_ref, "{\"text\": \"how do retries work\"}"));
	double rag_us = (double)(tr_now_ns() - t0) / 1e3 / calls;
	req_tenant = 0;
	t0 = tr_now_ns();
	for (int i = 0; i < calls; i++)
		TT_ASSERT(ask_json(exec_ref, "{\"tool\": \"appointments\", \"args\": "
		                             "{\"patient_id\": 1}}"));
	double sql_us = (double)(tr_now_ns() - t0) / 1e3 / calls;
	fprintf(stderr, "  round trip from a test thread: rag (postgres) %.0f us, SQL tool %.0f us\n",
	        rag_us, sql_us);
}

/* ---- the server down for rag and execute (last: the pool then takes a
 * while to come back) --------------------------------------------------------------- */

static int step_ok_(void *ud)
{
	tr_ref *r = ud;
	return ask_json(*r, "{\"text\": \"retries\"}") && !(rep_flags & TR_MSGF_ERROR);
}

TT_TEST(server_down_is_an_error_not_a_hang)
{
	req_tenant = tenant_id("acme");
	TT_EQ(run_script(PG_SCRIPT, "down", pg_dir), 0);
	/* the first ask may meet a connection that only now learns it broke */
	for (int i = 0; i < 3; i++) {
		TT_ASSERT(ask_json(docs_ref, "{\"text\": \"retries\"}"));
		TT_ASSERT(failed_with(TR_EFAILED, "rag: postgres: ", NULL));
		TT_ASSERT(rep_ms < 6000);
	}
	fprintf(stderr, "  rag, server down: failed after %llu ms\n", (unsigned long long)rep_ms);
	FAILS(exec_ref, "{\"tool\": \"appointments\", \"args\": {\"patient_id\": 1}}", TR_EFAILED,
	      "tool 'appointments': postgres: ", NULL);
	TT_ASSERT(rep_ms < 6000);
	/* back: the pool reconnects by itself, and so the steps work again */
	TT_EQ(run_script(PG_SCRIPT, "start", pg_dir), 0);
	TT_ASSERT(tn_wait(step_ok_, &docs_ref, 20000));
	TT_ASSERT(ask_json(docs_ref, "{\"text\": \"how do retries work\"}"));
	TOP("guide.md#Retries|guide.md#Timeouts");
	req_tenant = 0;
}

/* A node with no pool at all: a clear step error. */
TT_TEST(no_pool_on_the_node)
{
	static probe_cfg pc = {.id = 2, .on_msg = client_msg};
	tr_node *saved = node;
	tr_ref saved_client = client;
	tr_ref r, e;
	node = tn_start(1);
	TT_ASSERT(node != NULL);
	TT_OK(tn_spawn(node, &pc, "client", &client));
	r = spawn_kind(&tr_rag_ops, "docs");
	e = spawn_kind(&tr_execute_ops, "exec");
	FAILS(r, "{\"text\": \"retries\"}", TR_EFAILED, NULL,
	      "rag: postgres: the node runs no PostgreSQL pool (declare postgres { conninfo = "
	      "\"...\" })");
	FAILS(e, "{\"tool\": \"maybe\"}", TR_EFAILED, NULL,
	      "tool 'maybe': the node runs no PostgreSQL pool (declare postgres { conninfo = "
	      "\"...\" })");
	/* telemetry keeps its backlog and counts the failed writes */
	tr_ref t = spawn_kind(&tr_telemetry_ops, "tel_pg_small");
	TT_EQ(send_events(t, 5, 0), 0);
	for (int i = 0; i < 5000 && stats_of("tel_pg_small").sink_errors[TR_TEL_SINK_PG] == 0; i++)
		tn_sleep_ms(1);
	TT_ASSERT(stats_of("tel_pg_small").sink_errors[TR_TEL_SINK_PG] >= 5);
	TT_EQ(stats_of("tel_pg_small").sink_queued[TR_TEL_SINK_PG], 5);
	TT_EQ(tn_stop(node), 0);
	node = saved;
	client = saved_client;
}

TT_TEST(stop)
{
	TT_EQ(tn_stop(node), 0);
	tr_pg_free(pool);
	tr_redis_free(rcl);
	tr_config_free(cfg);
	unlink(lua_path);
	tr_buf_free(&req);
	tr_buf_free(&rep);
	servers_stop();
}

TT_LIST = {
	TT_ENTRY(start),
	TT_ENTRY(rag_ranks_by_tenant),
	TT_ENTRY(rag_no_match_and_hostile_text),
	TT_ENTRY(rag_deadline),
	TT_ENTRY(sql_tool_runs),
	TT_ENTRY(sql_tool_bad_args_and_injection),
	TT_ENTRY(sql_tool_changes_and_errors),
	TT_ENTRY(sql_tool_in_a_run),
	TT_ENTRY(telemetry_postgres_writes),
	TT_ENTRY(telemetry_postgres_slow),
	TT_ENTRY(telemetry_postgres_down_and_back),
	TT_ENTRY(telemetry_redis_writes),
	TT_ENTRY(telemetry_redis_down_and_back),
	TT_ENTRY(telemetry_last_write_at_stop),
	TT_ENTRY(cost),
	TT_ENTRY(server_down_is_an_error_not_a_hang),
	TT_ENTRY(no_pool_on_the_node),
	TT_ENTRY(stop),
	TT_END,
};

TT_MAIN()
