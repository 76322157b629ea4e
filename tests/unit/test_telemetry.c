/*
 * test_telemetry.c -- the telemetry kind: every settings error with its
 * exact message (in C and through `troupe check` with file:line), the
 * writer's size rotation on its own, and actors on a real node: ring
 * contents and order (and the merge of two instances), counters by event
 * type and per pipeline/step, the Prometheus text (checked by promtool
 * when it is installed), asks passed through, bad bodies (none, not a
 * map, malformed, 1 MiB, invalid UTF-8), a JSON-lines file rotated by
 * size with every line whole, stdout, the engine's real taps from a Lua
 * pipeline file, and what one event costs.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <msgpack.h>
#include <troupe/troupe.h>

#include "actors/kit.h"
#include "actors/telemetry/telemetry.h"
#include "actors/telemetry/writer.h"
#include "core/alloc.h"
#include "http/json.h"
#include "lua/tlua.h"
#include "msg/msg_int.h"
#include "pipe/engine.h"
#include "pipe/mp.h"
#include "tt.h"
#include "tnode.h"

#define ROOT TR_SOURCE_ROOT

static int setup(void)
{
	static int done;
	if (!done)
		done = chdir(ROOT) == 0 && tr_actors_register_builtin() == TR_OK ? 1 : -1;
	return done == 1;
}

static int json_mp(const char *js, tr_buf *out)
{
	json_error_t e;
	json_t *j = json_loads(js, JSON_DECODE_ANY, &e);
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

/* A spec for actor `name` with settings `json` (NULL: none). The config
 * bytes live in a static buffer per slot. */
static tr_actor_spec *spec_of(int slot, const char *name, const char *json, uint32_t instances)
{
	static tr_actor_spec specs[16];
	static tr_buf bufs[16];
	tr_actor_spec *a = &specs[slot];
	memset(a, 0, sizeof(*a));
	a->name = (char *)name;
	a->kind = (char *)"telemetry";
	a->receive_fn = -1;
	a->instances = instances;
	if (json != NULL) {
		json_mp(json, &bufs[slot]);
		a->config = bufs[slot].data;
		a->config_len = bufs[slot].len;
	}
	return a;
}

/* ---- settings ----------------------------------------------------------------- */

static char err[600];

static int check(const char *json, uint32_t instances)
{
	return tr_telemetry_check(spec_of(15, "tel", json, instances), err, sizeof(err));
}

#define BAD(json, want)                                                        \
	do {                                                                       \
		TT_RC(check(json, 1), TR_EINVAL);                                      \
		TT_STREQ(err, want);                                                   \
	} while (0)

TT_TEST(settings_errors)
{
	TT_OK(check(NULL, 1));
	TT_OK(check(NULL, 4)); /* ring only: instances are fine */
	TT_OK(check("{\"sink\": [\"ring\", \"file\", \"stdout\"], \"file\": \"/tmp/x.log\", "
	            "\"max_bytes\": \"1MiB\", \"keep\": 0, \"ring\": 5, \"flush_ms\": 1, "
	            "\"buffer\": 4096, \"max_line\": \"1MiB\"}", 1));
	TT_OK(check("{\"file\": \"/tmp/x.log\"}", 1)); /* sink defaults to file */
	TT_OK(check("{\"sink\": \"stdout\"}", 3));
	BAD("{\"sink\": \"stdot\"}", "actor 'tel': sink: unknown sink 'stdot' (did you mean 'stdout'?)");
	BAD("{\"sink\": \"kafka\"}", "actor 'tel': sink: unknown sink 'kafka' (sinks: ring, file, "
	                        "stdout, postgres, redis)");
	BAD("{\"sink\": 1}", "actor 'tel': sink: expected \"ring\", \"file\", \"stdout\", \"postgres\" or "
	                     "\"redis\" (or a list of them), got integer");
	BAD("{\"sink\": [\"ring\", \"ring\"]}", "actor 'tel': sink: \"ring\" is listed twice");
	BAD("{\"sink\": []}", "actor 'tel': sink: the list is empty (sinks: ring, file, stdout, "
	                     "postgres, redis)");
	BAD("{\"sink\": [\"ring\", {}]}", "actor 'tel': sink: expected \"ring\", \"file\", \"stdout\", "
	                                  "\"postgres\" or \"redis\" (or a list of them), got table");
	BAD("{\"sink\": \"file\"}", "actor 'tel': sink \"file\" needs file = \"path\"");
	BAD("{\"sink\": \"ring\", \"file\": \"/tmp/x\"}",
	    "actor 'tel': file: set, but sink has no \"file\" (add it to sink)");
	BAD("{\"file\": 5}", "actor 'tel': file: expected a string, got integer");
	BAD("{\"file\": \"\"}", "actor 'tel': file: expected a path of 1 to 4000 bytes");
	BAD("{\"max_bytes\": \"1MiB\"}", "actor 'tel': max_bytes: only with sink \"file\"");
	BAD("{\"keep\": 2}", "actor 'tel': keep: only with sink \"file\"");
	BAD("{\"sink\": \"stdout\", \"ring\": 10}",
	    "actor 'tel': ring: set, but sink has no \"ring\" (add it to sink)");
	BAD("{\"file\": \"/tmp/x\", \"max_bytes\": \"10KB\"}",
	    "actor 'tel': max_bytes: bad size '10KB' (a number of bytes, or \"512B\", \"64KiB\", "
	    "\"1MiB\", \"1GiB\")");
	BAD("{\"file\": \"/tmp/x\", \"max_bytes\": 100}",
	    "actor 'tel': max_bytes: must be between 1KiB and 1024GiB");
	BAD("{\"file\": \"/tmp/x\", \"max_bytes\": true}",
	    "actor 'tel': max_bytes: expected a size (a number of bytes, or \"512B\", \"64KiB\", "
	    "\"1MiB\", \"1GiB\"), got boolean");
	BAD("{\"file\": \"/tmp/x\", \"keep\": 101}", "actor 'tel': keep: must be between 0 and 100, got 101");
	BAD("{\"ring\": 0}", "actor 'tel': ring: must be between 1 and 1000000, got 0");
	BAD("{\"ring\": 1.5}", "actor 'tel': ring: expected an integer, got number");
	BAD("{\"flush_ms\": 0}", "actor 'tel': flush_ms: must be between 1 and 60000, got 0");
	BAD("{\"buffer\": \"1KiB\"}", "actor 'tel': buffer: must be between 4KiB and 64MiB");
	BAD("{\"max_line\": \"2MiB\"}", "actor 'tel': max_line: must be between 256B and 1MiB");
	BAD("{\"sinks\": \"ring\"}", "actor 'tel': unknown setting 'sinks' (did you mean 'sink'?)");
	BAD("{\"path\": \"/tmp/x\"}", "actor 'tel': unknown setting 'path' (this kind takes sink, file, "
	                              "max_bytes, keep, ring, flush_ms, buffer, max_line, backlog, "
	                              "db_batch, db_timeout_ms, redis_key, redis_maxlen)");
	TT_OK(check("{\"file\": \"/tmp/x\"}", 2)); /* instances share the file's writer */
	/* the database sinks */
	TT_OK(check("{\"sink\": [\"postgres\", \"redis\", \"ring\"], \"backlog\": 5, "
	            "\"db_batch\": 2, \"db_timeout_ms\": 100, \"redis_key\": \"k\", "
	            "\"redis_maxlen\": 0}", 2));
	BAD("{\"sink\": \"redsi\"}", "actor 'tel': sink: unknown sink 'redsi' (did you mean 'redis'?)");
	BAD("{\"backlog\": 5}", "actor 'tel': backlog: only with sink \"postgres\" or \"redis\"");
	BAD("{\"sink\": \"file\", \"file\": \"/tmp/x\", \"db_batch\": 5}",
	    "actor 'tel': db_batch: only with sink \"postgres\" or \"redis\"");
	BAD("{\"sink\": \"postgres\", \"redis_key\": \"k\"}",
	    "actor 'tel': redis_key: only with sink \"redis\"");
	BAD("{\"sink\": \"postgres\", \"redis_maxlen\": 5}",
	    "actor 'tel': redis_maxlen: only with sink \"redis\"");
	BAD("{\"sink\": \"redis\", \"redis_key\": \"\"}",
	    "actor 'tel': redis_key: expected a key of 1 to 512 bytes");
	BAD("{\"sink\": \"redis\", \"redis_key\": 5}",
	    "actor 'tel': redis_key: expected a string, got integer");
	BAD("{\"sink\": \"postgres\", \"backlog\": 0}",
	    "actor 'tel': backlog: must be between 1 and 1000000, got 0");
	BAD("{\"sink\": \"redis\", \"db_batch\": 1001}",
	    "actor 'tel': db_batch: must be between 1 and 1000, got 1001");
	BAD("{\"sink\": \"redis\", \"db_timeout_ms\": 5}",
	    "actor 'tel': db_timeout_ms: must be between 10 and 600000, got 5");
	BAD("{\"sink\": \"redis\", \"redis_maxlen\": -1}",
	    "actor 'tel': redis_maxlen: must be between 0 and 10000000000, got -1");
	/* with the config it came from: the backend must be declared */
	{
		static tr_config cfg; /* neither postgres { } nor redis { } */
		tr_actor_spec *a = spec_of(15, "tel", "{\"sink\": [\"ring\", \"postgres\"]}", 1);
		a->cfg = &cfg;
		TT_RC(tr_telemetry_check(a, err, sizeof(err)), TR_EINVAL);
		TT_STREQ(err, "actor 'tel': sink \"postgres\" writes to the node's PostgreSQL pool; "
		              "declare postgres { conninfo = \"...\" }");
		a = spec_of(15, "tel", "{\"sink\": \"redis\"}", 1);
		a->cfg = &cfg;
		TT_RC(tr_telemetry_check(a, err, sizeof(err)), TR_EINVAL);
		TT_STREQ(err, "actor 'tel': sink \"redis\" writes to the node's Redis; declare redis { "
		              "url = \"redis://...\" }");
		cfg.postgres.on = cfg.redis.on = true;
		TT_OK(tr_telemetry_check(a, err, sizeof(err)));
	}
}

TT_TEST(troupe_check_reports)
{
	TT_ASSERT(setup());
	const char *exe = getenv("TROUPE_EXE");
	char path[64], cmd[512], out[1024], want[512];
	if (exe == NULL) {
		fprintf(stderr, "  TROUPE_EXE not set: skipped\n");
		return;
	}
	snprintf(path, sizeof(path), "/tmp/test_telemetry_XXXXXX.lua");
	int fd = mkstemps(path, 4);
	TT_ASSERT(fd >= 0);
	FILE *f = fdopen(fd, "w");
	fputs("-- telemetry with a typo on line 3\n\n"
	      "actor \"tel\" { kind = \"telemetry\", sink = { \"ring\", \"fille\" } }\n", f);
	fclose(f);
	snprintf(cmd, sizeof(cmd), "%s check %s 2>&1", exe, path);
	FILE *p = popen(cmd, "r");
	size_t n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = '\0';
	int st = pclose(p);
	unlink(path);
	snprintf(want, sizeof(want), "%s:3: actor 'tel': sink: unknown sink 'fille' (did you mean "
	         "'file'?)\n", path);
	if (strcmp(out, want) != 0)
		TT_FAIL_("got: %s\nwant: %s", out, want);
	TT_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	snprintf(cmd, sizeof(cmd), "%s check tests/data/telemetry/tap.lua >/dev/null 2>&1", exe);
	TT_EQ(system(cmd), 0);
}

/* ---- files -------------------------------------------------------------------- */

static char dir[64];

static void rm_dir(void)
{
	char cmd[128];
	if (dir[0] != '\0') {
		snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
		(void)system(cmd);
	}
}

static long file_size(const char *path)
{
	struct stat sb;
	return stat(path, &sb) == 0 ? (long)sb.st_size : -1;
}

/* Reads a whole file (malloc'd, NUL-terminated) or NULL. */
static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *b = NULL;
	size_t cap = 0, n = 0;
	if (f == NULL)
		return NULL;
	for (;;) {
		if (n + 4097 > cap) {
			cap = cap ? cap * 2 : 65536;
			b = realloc(b, cap);
		}
		size_t r = fread(b + n, 1, cap - n - 1, f);
		n += r;
		if (r == 0)
			break;
	}
	fclose(f);
	b[n] = '\0';
	if (len)
		*len = n;
	return b;
}

/* Every line of `path` is a JSON object; appends their "seq" fields (or
 * -1) to seqs. Returns the number of lines, or -1 for a bad line. */
static int read_lines(const char *path, long *seqs, int *nseq, int cap)
{
	size_t len;
	char *b = slurp(path, &len);
	int lines = 0;
	if (b == NULL)
		return -1;
	for (char *p = b, *nl; *p; p = nl + 1) {
		nl = strchr(p, '\n');
		if (nl == NULL) {
			fprintf(stderr, "  %s: last line has no newline\n", path);
			free(b);
			return -1;
		}
		*nl = '\0';
		json_error_t e;
		json_t *j = json_loads(p, 0, &e);
		if (j == NULL || !json_is_object(j)) {
			fprintf(stderr, "  %s: bad line: %s\n", path, p);
			free(b);
			return -1;
		}
		json_t *s = json_object_get(j, "seq");
		if (*nseq < cap)
			seqs[(*nseq)++] = s ? (long)json_integer_value(s) : -1;
		json_decref(j);
		lines++;
	}
	free(b);
	return lines;
}

/* A JSON line of 86 bytes with seq = i (0..9999). */
static size_t line_of(char *buf, size_t cap, int i)
{
	return (size_t)snprintf(buf, cap, "{\"seq\":%4d,\"pad\":\"%064d\"}\n", i, i);
}

TT_TEST(writer_rotates)
{
	char path[128], p1[140], p2[140], p3[140], line[256];
	tel_writer *w;
	tel_writer_opts o;
	tr_buf b;
	snprintf(dir, sizeof(dir), "/tmp/test_telemetry_XXXXXX");
	TT_ASSERT(mkdtemp(dir) != NULL);
	snprintf(path, sizeof(path), "%s/w.log", dir);
	snprintf(p1, sizeof(p1), "%s.1", path);
	snprintf(p2, sizeof(p2), "%s.2", path);
	snprintf(p3, sizeof(p3), "%s.3", path);
	o = (tel_writer_opts){path, 1024, 2, 1 << 20};
	TT_OK(tel_writer_open(&o, &w, err, sizeof(err)));
	tel_writer *w2;
	TT_OK(tel_writer_open(&o, &w2, err, sizeof(err)));
	TT_ASSERT(w2 == w); /* one writer per file */
	tel_writer_close(w2);
	tr_buf_init(&b);
	size_t ll = line_of(line, sizeof(line), 0);
	for (int i = 0; i < 100; i++) {
		line_of(line, sizeof(line), i);
		tr__buf_append(&b, line, ll);
		if (i % 7 == 6) {
			TT_EQ(tel_writer_push(w, b.data, b.len, 7), 0);
			b.len = 0;
		}
	}
	tel_writer_push(w, b.data, b.len, 2);
	b.len = 0;
	/* one line longer than max_bytes gets a file of its own */
	char big[3000];
	memset(big, 'x', sizeof(big));
	int bn = snprintf(big, sizeof(big), "{\"seq\":100,\"pad\":\"");
	memset(big + bn, 'y', 2000);
	memcpy(big + bn + 2000, "\"}\n", 3);
	tel_writer_push(w, big, (size_t)bn + 2003, 1);
	line_of(line, sizeof(line), 101);
	tel_writer_push(w, line, ll, 1);
	/* past max_pending: dropped whole, and said so */
	TT_EQ(tel_writer_push(w, big, (size_t)(1 << 20) + 1, 5), 5);
	tel_writer_stats ws;
	tel_writer_stats_get(w, &ws);
	tel_writer_close(w); /* the last reference: drains */
	/* files are packed greedily, whole lines only: 11 lines of 86 bytes
	 * per 1 KiB, so line 99 opened a file of its own; the big line
	 * rotated it out to path.2 and took path.1; line 101 is in path */
	TT_EQ(ll, 86);
	long seqs[256];
	int ns = 0;
	TT_EQ(read_lines(p2, seqs, &ns, 256), 100 % (1024 / 86));
	TT_EQ(read_lines(p1, seqs, &ns, 256), 1);
	TT_EQ(read_lines(path, seqs, &ns, 256), 1);
	TT_EQ(file_size(p3), -1); /* keep = 2 */
	TT_LE(file_size(p2), 1024);
	TT_EQ(seqs[ns - 1], 101);
	TT_EQ(seqs[ns - 2], 100);
	TT_EQ(seqs[ns - 3], 99);
	for (int i = 1; i < ns; i++)
		TT_EQ(seqs[i], seqs[i - 1] + 1); /* in order, none lost within the kept files */
	/* keep = 0 truncates; an unopenable path is an error with its reason */
	o = (tel_writer_opts){path, 1024, 0, 1 << 20};
	TT_OK(tel_writer_open(&o, &w, err, sizeof(err)));
	for (int i = 0; i < 30; i++) {
		line_of(line, sizeof(line), i);
		tr__buf_append(&b, line, ll);
	}
	tel_writer_push(w, b.data, b.len, 30);
	b.len = 0;
	tel_writer_close(w);
	TT_LE(file_size(path), 1024);
	TT_EQ(file_size(path) % 86, 0);
	o = (tel_writer_opts){"/nonexistent/dir/x.log", 1024, 0, 1 << 20};
	TT_RC(tel_writer_open(&o, &w, err, sizeof(err)), TR_EIO);
	TT_STREQ(err, "file: cannot open '/nonexistent/dir/x.log': No such file or directory");
	tr_buf_free(&b);
}

/* ---- on a node ---------------------------------------------------------------- */

static tr_node *node;

/* A plain message (a tap event) with body `js` to `to`. */
static int send_json(tr_ref to, const char *js, uint32_t tenant)
{
	tr_buf b;
	tr_buf_init(&b);
	if (json_mp(js, &b) != TR_OK)
		return TR_EINVAL;
	tr_msg *m = tr_msg_new();
	m->tag = TR_TAG_STEP;
	m->tenant = tenant;
	m->trace_lo = 0xabc;
	m->body = tr_body_new(b.data, b.len);
	tr_buf_free(&b);
	return tr_node_send(node, to, m);
}

static int send_raw(tr_ref to, const void *p, size_t n)
{
	tr_msg *m = tr_msg_new();
	m->tag = TR_TAG_STEP;
	if (n > 0)
		m->body = tr_body_new(p, n);
	return tr_node_send(node, to, m);
}

static const char *wait_name;
static uint64_t wait_n;

static int seen_events(void *ud)
{
	tr_telemetry_stats s;
	(void)ud;
	return tr_telemetry_stats_get(node, wait_name, &s) == TR_OK &&
	       s.events + s.invalid + s.passed >= wait_n;
}

/* Waits until `name` has taken n messages in all. */
static int wait_events(const char *name, uint64_t n)
{
	wait_name = name;
	wait_n = n;
	return tn_wait(seen_events, NULL, 10000);
}

static tr_ref spawn(const tr_actor_spec *a, const char *regname)
{
	tr_spawn_opts so = {0};
	tr_ref r = TR_REF_NONE;
	so.name = regname;
	so.mbox.mailbox = 65536;
	if (tr_node_spawn(node, &tr_telemetry_ops, a, &so, &r) != TR_OK)
		fprintf(stderr, "  cannot spawn %s\n", regname);
	return r;
}

/* The ring of `name` parsed (caller frees with json_decref). */
static json_t *ring(const char *name, size_t max)
{
	tr_buf b;
	json_error_t e;
	tr_buf_init(&b);
	if (tr_telemetry_ring_json(node, name, max, &b) != TR_OK)
		return NULL;
	json_t *j = json_loadb((const char *)b.data, b.len, 0, &e);
	if (j == NULL)
		fprintf(stderr, "  ring is not JSON (%s): %.*s\n", e.text, (int)b.len, (const char *)b.data);
	tr_buf_free(&b);
	return j;
}

TT_TEST(start)
{
	TT_ASSERT(setup());
	node = tn_start(2);
	TT_ASSERT(node != NULL);
}

TT_TEST(ring_and_counters)
{
	tr_ref r = spawn(spec_of(0, "tel1", "{\"ring\": 5}", 1), "tel1");
	char js[256];
	uint32_t acme;
	TT_OK(tr_tenant_intern("acme", 4, &acme));
	static const char *const evs[] = {"start", "end", "retry", "timeout", "error", "odd"};
	for (int i = 0; i < 12; i++) {
		snprintf(js, sizeof(js), "{\"event\": \"%s\", \"pipeline\": \"%s\", \"step\": \"%s\", "
		         "\"attempt\": 0, \"step_us\": 10, \"seq\": %d}", evs[i % 6], i < 6 ? "a" : "b",
		         i % 2 ? "rag" : "intent", i);
		TT_OK(send_json(r, js, i == 11 ? acme : 0));
	}
	TT_ASSERT(wait_events("tel1", 12));
	tr_telemetry_stats s;
	TT_OK(tr_telemetry_stats_get(node, "tel1", &s));
	TT_EQ(s.actors, 1);
	TT_EQ(s.events, 12);
	for (int t = 0; t < TR_TEL_NTYPES; t++)
		TT_EQ(s.by_type[t], 2);
	TT_EQ(s.ring_len, 5);
	TT_EQ(s.step_pairs, 4); /* a/intent a/rag b/intent b/rag */
	TT_EQ(s.invalid, 0);
	TT_RC(tr_telemetry_stats_get(node, "nope", &s), TR_ENOTFOUND);

	/* the ring: the last 5, oldest first, each with ts_us and the body's fields */
	json_t *j = ring("tel1", 0);
	TT_ASSERT(j != NULL && json_is_array(j));
	TT_EQ(json_array_size(j), 5);
	json_int_t last_ts = 0;
	for (size_t i = 0; i < 5; i++) {
		json_t *e = json_array_get(j, i);
		TT_EQ(json_integer_value(json_object_get(e, "seq")), 7 + (long)i);
		json_int_t ts = json_integer_value(json_object_get(e, "ts_us"));
		TT_ASSERT(ts >= last_ts && ts > 1600000000000000ll);
		last_ts = ts;
		TT_STREQ(json_string_value(json_object_get(e, "pipeline")), "b");
		/* ts_us comes first, then the body's fields in their order */
		TT_STREQ(json_object_iter_key(json_object_iter(e)), "ts_us");
	}
	TT_STREQ(json_string_value(json_object_get(json_array_get(j, 4), "tenant")), "acme");
	TT_ASSERT(json_object_get(json_array_get(j, 3), "tenant") == NULL);
	json_decref(j);
	j = ring("tel1", 2);
	TT_EQ(json_array_size(j), 2);
	TT_EQ(json_integer_value(json_object_get(json_array_get(j, 0), "seq")), 10);
	json_decref(j);
	tr_buf b;
	tr_buf_init(&b);
	TT_RC(tr_telemetry_ring_json(node, "nope", 0, &b), TR_ENOTFOUND);
	tr_buf_free(&b);
}

TT_TEST(metrics_text)
{
	tr_buf b;
	tr_buf_init(&b);
	TT_OK(tr_telemetry_metrics(node, &b));
	tr__buf_append(&b, "", 1);
	const char *t = (const char *)b.data;
	TT_ASSERT(strstr(t, "# TYPE troupe_telemetry_events_total counter\n") != NULL);
	TT_ASSERT(strstr(t, "troupe_telemetry_events_total{actor=\"tel1\",event=\"start\"} 2\n") != NULL);
	TT_ASSERT(strstr(t, "troupe_telemetry_events_total{actor=\"tel1\",event=\"other\"} 2\n") != NULL);
	TT_ASSERT(strstr(t, "troupe_telemetry_step_events_total{actor=\"tel1\",pipeline=\"a\","
	                    "step=\"intent\",event=\"start\"} 1\n") != NULL);
	TT_ASSERT(strstr(t, "troupe_telemetry_step_events_total{actor=\"tel1\",pipeline=\"b\","
	                    "step=\"rag\",event=\"end\"} 1\n") != NULL);
	TT_ASSERT(strstr(t, "troupe_telemetry_step_seconds_total{actor=\"tel1\",pipeline=\"a\","
	                    "step=\"rag\"} 0.000010\n") != NULL);
	TT_ASSERT(strstr(t, "troupe_telemetry_invalid_total{actor=\"tel1\"} 0\n") != NULL);
	/* promtool, when installed, must find nothing wrong */
	if (system("command -v promtool >/dev/null 2>&1") == 0) {
		char path[64], cmd[160];
		snprintf(path, sizeof(path), "/tmp/test_telemetry_metrics_XXXXXX");
		int fd = mkstemp(path);
		TT_ASSERT(fd >= 0);
		TT_EQ(write(fd, b.data, b.len - 1), (long)(b.len - 1));
		close(fd);
		snprintf(cmd, sizeof(cmd), "promtool check metrics < %s", path);
		int st = system(cmd);
		unlink(path);
		TT_EQ(st, 0);
	} else {
		fprintf(stderr, "  promtool not installed: format not linted\n");
	}
	tr_buf_free(&b);
}

/* On tag 1, asks *ud (a ref) with {text = "hi"} and trace 0x1234. */
static int asker_msg(tr_ctx *ctx, probe *p, tr_msg *m)
{
	if (m->tag != 1 || (m->flags & TR_MSGF_REPLY))
		return TR_OK;
	tr_msg *q = tr_msg_new();
	q->tag = TR_TAG_STEP;
	q->trace_lo = 0x1234;
	q->body = tr_body_new("\x81\xa4text\xa2hi", 9);
	return tr_ask(ctx, *(tr_ref *)p->ud, q, 5000, NULL);
}

TT_TEST(bad_bodies_and_pass_through)
{
	static probe_cfg pc;
	tr_ref r = spawn(spec_of(1, "tel2", "{\"ring\": 50, \"max_line\": 256}", 1), "tel2");
	/* none, not a map, malformed, truncated: counted, not recorded */
	TT_OK(send_raw(r, NULL, 0));
	TT_OK(send_raw(r, "\x93\x01\x02\x03", 4));
	TT_OK(send_raw(r, "\xc1", 1));
	TT_OK(send_raw(r, "\x82\xa1" "a", 3));
	/* invalid UTF-8 and odd values become valid JSON */
	static const char odd[] = "\x84\xa5" "event\xa3" "end\xa1" "s\xa3\xff" "a\xfe\x01\xc0\xa1"
	                          "f\xcb\x7f\xf8" "\x00\x00\x00\x00\x00\x00";
	TT_OK(send_raw(r, odd, sizeof(odd) - 1));
	/* 1 MiB: recorded as a summary */
	{
		size_t n = 1u << 20;
		char *big = malloc(n + 16);
		big[0] = (char)0x81;
		big[1] = (char)0xa4;
		memcpy(big + 2, "text", 4);
		big[6] = (char)0xdb;
		big[7] = 0;
		big[8] = 0x10;
		big[9] = 0;
		big[10] = 0;
		memset(big + 11, 'z', n);
		TT_OK(send_raw(r, big, n + 11));
		free(big);
	}
	/* an ask is answered at once with an empty reply (the message stays) */
	pc = (probe_cfg){.id = 7, .on_msg = asker_msg, .ud = &r};
	tr_ref pr;
	TT_OK(tn_spawn(node, &pc, "asker7", &pr));
	TT_OK(tn_send(node, pr, 1, 0));
	TT_ASSERT(wait_events("tel2", 7));
	/* a step name that cannot be a label is recorded, not counted apart */
	TT_OK(send_json(r, "{\"event\": \"end\", \"pipeline\": \"p\\n\", \"step\": \"s\"}", 0));
	TT_ASSERT(wait_events("tel2", 8));
	tr_telemetry_stats s;
	TT_OK(tr_telemetry_stats_get(node, "tel2", &s));
	TT_EQ(s.invalid, 4);
	TT_EQ(s.events, 3);
	TT_EQ(s.oversize, 1);
	TT_EQ(s.passed, 1);
	TT_EQ(s.by_type[TR_TEL_END], 2);
	TT_EQ(s.by_type[TR_TEL_OTHER], 1);
	TT_EQ(s.step_pairs, 0);
	TT_EQ(s.step_overflow, 1);
	json_t *j = ring("tel2", 0);
	TT_ASSERT(j != NULL);
	TT_EQ(json_array_size(j), 4);
	TT_STREQ(json_string_value(json_object_get(json_array_get(j, 3), "pipeline")), "p\n");
	json_t *e = json_array_get(j, 0);
	TT_STREQ(json_string_value(json_object_get(e, "s")), "\xef\xbf\xbd" "a\xef\xbf\xbd");
	TT_ASSERT(json_is_null(json_object_get(e, "f"))); /* NaN */
	TT_ASSERT(json_object_get(e, "1") != NULL);       /* integer key as text */
	e = json_array_get(j, 1);
	TT_STREQ(json_string_value(json_object_get(e, "event")), "oversize");
	TT_EQ(json_integer_value(json_object_get(e, "bytes")), (1 << 20) + 11);
	e = json_array_get(j, 2);
	TT_STREQ(json_string_value(json_object_get(e, "event")), "pass");
	TT_EQ(json_integer_value(json_object_get(e, "bytes")), 9);
	TT_STREQ(json_string_value(json_object_get(e, "trace")), "00000000000000000000000000001234");
	json_decref(j);
	/* the asker got an empty reply, not an error */
	ev e7;
	TT_ASSERT(ev_wait_tag(7, TR_TAG_STEP, 1, 5000));
	TT_ASSERT(ev_find(7, TR_TAG_STEP, &e7));
	TT_ASSERT(e7.flags & TR_MSGF_REPLY);
	TT_EQ(e7.flags & TR_MSGF_ERROR, 0);
	TT_ASSERT(e7.corr != 0);
}

/* Two ring instances of one name: read as one ring, merged by time. */
TT_TEST(instances_merge)
{
	tr_actor_spec *a = spec_of(2, "pair", "{\"ring\": 10}", 2);
	tr_ref r0 = spawn(a, "pair#0"), r1 = spawn(a, "pair#1");
	char js[64];
	for (int i = 0; i < 8; i++) {
		snprintf(js, sizeof(js), "{\"event\": \"end\", \"seq\": %d}", i);
		TT_OK(send_json(i % 2 ? r1 : r0, js, 0));
		TT_ASSERT(wait_events("pair", (uint64_t)i + 1)); /* one at a time: distinct times */
		tn_sleep_ms(1);
	}
	tr_telemetry_stats s;
	TT_OK(tr_telemetry_stats_get(node, "pair", &s));
	TT_EQ(s.actors, 2);
	TT_EQ(s.events, 8);
	json_t *j = ring("pair", 6);
	TT_EQ(json_array_size(j), 6);
	for (size_t i = 0; i < 6; i++)
		TT_EQ(json_integer_value(json_object_get(json_array_get(j, i), "seq")), 2 + (long)i);
	json_decref(j);
	/* metrics sum them under one actor label */
	tr_buf b;
	tr_buf_init(&b);
	TT_OK(tr_telemetry_metrics(node, &b));
	tr__buf_append(&b, "", 1);
	TT_ASSERT(strstr((const char *)b.data,
	                 "troupe_telemetry_events_total{actor=\"pair\",event=\"end\"} 8\n") != NULL);
	tr_buf_free(&b);
}

/* A file sink: JSON lines, rotated by size, all written by the end. */
TT_TEST(file_sink_rotates)
{
	char js[512], path[128], p1[140], p2[140], p3[140];
	snprintf(path, sizeof(path), "%s/events.log", dir);
	snprintf(p1, sizeof(p1), "%s.1", path);
	snprintf(p2, sizeof(p2), "%s.2", path);
	snprintf(p3, sizeof(p3), "%s.3", path);
	snprintf(js, sizeof(js), "{\"sink\": [\"file\", \"ring\"], \"file\": \"%s\", \"max_bytes\": "
	         "\"2KiB\", \"keep\": 2, \"flush_ms\": 5, \"ring\": 10}", path);
	tr_ref r = spawn(spec_of(3, "filetel", js, 1), "filetel");
	for (int i = 0; i < 200; i++) {
		snprintf(js, sizeof(js), "{\"event\": \"end\", \"pipeline\": \"p\", \"step\": \"s\", "
		         "\"seq\": %d, \"text\": \"line \\n with \\\"quotes\\\" and \\u00e9\"}", i);
		TT_OK(send_json(r, js, 0));
	}
	TT_ASSERT(wait_events("filetel", 200));
	tr_telemetry_stats s;
	for (int i = 0; i < 5000; i++) { /* written within flush_ms, on the writer thread */
		char *t = slurp(path, NULL);
		int done = t != NULL && strstr(t, "\"seq\":199,") != NULL;
		free(t);
		if (done)
			break;
		tn_sleep_ms(1);
	}
	TT_OK(tr_telemetry_stats_get(node, "filetel", &s));
	TT_ASSERT(s.rotations >= 5);
	TT_EQ(s.write_errors, 0);
	TT_EQ(s.lines_dropped, 0);
	long seqs[400];
	int ns = 0, n2, n1, n0;
	n2 = read_lines(p2, seqs, &ns, 400);
	n1 = read_lines(p1, seqs, &ns, 400);
	n0 = read_lines(path, seqs, &ns, 400);
	TT_ASSERT(n2 > 0 && n1 > 0 && n0 > 0);
	TT_EQ(file_size(p3), -1);
	TT_LE(file_size(p2), 2048);
	TT_LE(file_size(p1), 2048);
	TT_LE(file_size(path), 2048);
	TT_EQ(seqs[ns - 1], 199);
	for (int i = 1; i < ns; i++)
		TT_EQ(seqs[i], seqs[i - 1] + 1);
	/* a line has ts_us first and the text escaped */
	size_t len;
	char *b = slurp(path, &len);
	TT_ASSERT(b != NULL && strncmp(b, "{\"ts_us\":", 9) == 0);
	TT_ASSERT(strstr(b, "\"text\":\"line \\n with \\\"quotes\\\" and \xc3\xa9\"") != NULL);
	free(b);
}

/* Two instances naming one file share its writer: every line whole,
 * none lost, bytes counted once. */
TT_TEST(instances_share_a_file)
{
	char js[256], path[128];
	snprintf(path, sizeof(path), "%s/shared.log", dir);
	snprintf(js, sizeof(js), "{\"file\": \"%s\", \"flush_ms\": 2}", path);
	tr_actor_spec *a = spec_of(7, "shared", js, 2);
	tr_ref r0 = spawn(a, "shared#0"), r1 = spawn(a, "shared#1");
	for (int i = 0; i < 400; i++) {
		snprintf(js, sizeof(js), "{\"event\": \"end\", \"seq\": %d}", i);
		TT_OK(send_json(i % 2 ? r1 : r0, js, 0));
	}
	TT_ASSERT(wait_events("shared", 400));
	tr_telemetry_stats s;
	long sz = -1;
	for (int i = 0; i < 5000; i++) {
		TT_OK(tr_telemetry_stats_get(node, "shared", &s));
		sz = file_size(path);
		char *t = slurp(path, NULL);
		int lines = 0;
		for (char *p = t; p && (p = strchr(p, '\n')) != NULL; p++)
			lines++;
		free(t);
		if (lines == 400 && (long)s.bytes_written == sz)
			break;
		tn_sleep_ms(1);
	}
	TT_EQ(s.actors, 2);
	TT_EQ((long)s.bytes_written, sz);
	long seqs[400];
	int ns = 0;
	TT_EQ(read_lines(path, seqs, &ns, 400), 400);
	long sum = 0;
	for (int i = 0; i < ns; i++)
		sum += seqs[i];
	TT_EQ(sum, 399L * 400 / 2); /* each seq once */
}

/* stdout: lines reach fd 1 (redirected to a file here), flushed at stop. */
TT_TEST(stdout_sink)
{
	char path[128];
	fflush(stdout);
	snprintf(path, sizeof(path), "%s/stdout.txt", dir);
	int saved = dup(STDOUT_FILENO);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	TT_ASSERT(saved >= 0 && fd >= 0);
	dup2(fd, STDOUT_FILENO);
	close(fd);
	/* flush_ms is long: only the stop writes them */
	tr_ref r = spawn(spec_of(4, "outtel", "{\"sink\": \"stdout\", \"flush_ms\": 60000}", 1),
	                 "outtel");
	for (int i = 0; i < 3; i++) {
		char js[64];
		snprintf(js, sizeof(js), "{\"event\": \"start\", \"seq\": %d}", i);
		TT_OK(send_json(r, js, 0));
	}
	TT_ASSERT(wait_events("outtel", 3));
	TT_EQ(file_size(path), 0); /* buffered */
	tr_msg *m = tr_msg_new();
	m->tag = TR_TAG_STOP;
	m->flags = TR_MSGF_SYSTEM;
	TT_OK(tr_node_send(node, r, m));
	tr_actor_stats as;
	for (int i = 0; i < 5000 && tr_actor_stats_get(node, r, &as) == TR_OK; i++)
		tn_sleep_ms(1);
	fflush(stdout);
	dup2(saved, STDOUT_FILENO);
	close(saved);
	long seqs[8];
	int ns = 0;
	TT_EQ(read_lines(path, seqs, &ns, 8), 3);
	TT_EQ(seqs[0], 0);
	TT_EQ(seqs[2], 2);
	tr_telemetry_stats s;
	TT_RC(tr_telemetry_stats_get(node, "outtel", &s), TR_ENOTFOUND); /* gone with its actor */
}

/* The engine's own taps, from a Lua pipeline file. */
static atomic_int runs_done;
static tr_config *tap_cfg;
static int fail_run; /* 1: the runs fail (the Lua step raises) */

static int run_client(tr_ctx *ctx, probe *p, tr_msg *m)
{
	if (m->tag == 1) {
		for (uint64_t i = 0; i < m->arg; i++) {
			tr_msg *q = tr_msg_new();
			q->tag = TR_TAG_RUN;
			q->body = fail_run ? tr_body_new("\x81\xa4" "fail\xc3", 7)
			                   : tr_body_new("\x81\xa4text\xa2hi", 9);
			int rc = tr_ask(ctx, p->peer, q, 5000, NULL);
			if (rc != TR_OK)
				return rc;
		}
	} else if (m->flags & TR_MSGF_REPLY) {
		atomic_fetch_add(&runs_done, 1);
	}
	return TR_OK;
}

static int eng_init(tr_ctx *ctx, probe *p, tr_msg *m)
{
	(void)ctx;
	(void)m;
	p->peer = *(tr_ref *)p->ud;
	return TR_OK;
}

static int runs_ge(void *ud)
{
	return atomic_load(&runs_done) >= *(int *)ud;
}

TT_TEST(engine_taps)
{
	static tr_lua_actor_arg la;
	static tr_pipe_arg pa;
	static probe_cfg pc;
	static tr_ref eng;
	tr_config *c = NULL;
	tr_diag d;
	const char *f = "tests/data/telemetry/tap.lua";
	tr_spawn_opts so = {0};
	tr_diag_init(&d);
	TT_OK(tr_config_load(&f, 1, &c, &d));
	tr_diag_free(&d);
	so.name = "tel";
	TT_OK(tr_node_spawn(node, &tr_telemetry_ops, tr_config_actor(c, "tel"), &so, NULL));
	la = (tr_lua_actor_arg){c, tr_config_actor(c, "up")};
	so.name = "up";
	TT_OK(tr_node_spawn(node, &tr_lua_actor_ops, &la, &so, NULL));
	pa = (tr_pipe_arg){c, tr_config_pipeline(c, "p"), NULL, NULL, NULL, 0};
	so.name = "pipeline:p";
	TT_OK(tr_node_spawn(node, &tr_pipe_ops, &pa, &so, &eng));
	pc = (probe_cfg){.id = 9, .on_msg = run_client, .on_init = eng_init, .ud = &eng};
	tr_ref cl;
	TT_OK(tn_spawn(node, &pc, "runner", &cl));
	tr_telemetry_stats s0, s;
	TT_OK(tr_telemetry_stats_get(node, "tel", &s0));
	/* 6 good runs: start + end each; then one that crashes the Lua step
	 * (unsupervised here, so only one): start + error */
	TT_OK(tn_send(node, cl, 1, 6));
	int want = 6;
	TT_ASSERT(tn_wait(runs_ge, &want, 10000));
	fail_run = 1;
	TT_OK(tn_send(node, cl, 1, 1));
	want = 7;
	TT_ASSERT(tn_wait(runs_ge, &want, 10000));
	for (int i = 0; i < 2000; i++) {
		TT_OK(tr_telemetry_stats_get(node, "tel", &s));
		if (s.events - s0.events >= 14)
			break;
		tn_sleep_ms(1);
	}
	if (s.events - s0.events != 14) {
		tr_buf dbg;
		tr_buf_init(&dbg);
		tr_telemetry_ring_json(node, "tel", 0, &dbg);
		fprintf(stderr, "  ring: %.*s\n", (int)dbg.len, (const char *)dbg.data);
		tr_buf_free(&dbg);
	}
	TT_EQ(s.events - s0.events, 14);
	TT_EQ(s.by_type[TR_TEL_START] - s0.by_type[TR_TEL_START], 7);
	TT_EQ(s.by_type[TR_TEL_END] - s0.by_type[TR_TEL_END], 6);
	TT_EQ(s.by_type[TR_TEL_ERROR] - s0.by_type[TR_TEL_ERROR], 1);
	/* every actor's ring at once (NULL), the last 3 */
	json_t *j = ring(NULL, 3);
	TT_ASSERT(j != NULL);
	TT_EQ(json_array_size(j), 3);
	json_decref(j);
	/* the events of the file's "tel" have the engine's fields */
	j = ring("tel", 0);
	TT_ASSERT(j != NULL);
	int found = 0;
	for (size_t i = 0; i < json_array_size(j); i++) {
		json_t *e = json_array_get(j, i);
		const char *pl = json_string_value(json_object_get(e, "pipeline"));
		if (pl == NULL || strcmp(pl, "p") != 0)
			continue;
		found++;
		TT_STREQ(json_string_value(json_object_get(e, "step")), "up");
		TT_ASSERT(json_is_integer(json_object_get(e, "run_us")));
		TT_ASSERT(json_is_integer(json_object_get(e, "step_us")));
		TT_EQ(strlen(json_string_value(json_object_get(e, "trace"))), 32);
		const char *ev = json_string_value(json_object_get(e, "event"));
		if (strcmp(ev, "error") == 0)
			TT_STREQ(json_string_value(json_object_get(e, "error")), "crashed");
	}
	TT_EQ(found, 14);
	json_decref(j);
	tr_buf b;
	tr_buf_init(&b);
	TT_OK(tr_telemetry_metrics(node, &b));
	tr__buf_append(&b, "", 1);
	TT_ASSERT(strstr((const char *)b.data, "troupe_telemetry_step_events_total{actor=\"tel\","
	                 "pipeline=\"p\",step=\"up\",event=\"end\"} 6\n") != NULL);
	tr_buf_free(&b);
	tap_cfg = c; /* freed at stop: the actors read it until then */
}

/* What one event costs in the actor, ring only and with a file. */
TT_TEST(cost)
{
	char js[256], path[128];
	int n = tn_quick() ? 2000 : 50000;
	snprintf(path, sizeof(path), "%s/cost.log", dir);
	snprintf(js, sizeof(js), "{\"sink\": [\"ring\", \"file\"], \"file\": \"%s\"}", path);
	tr_ref rr = spawn(spec_of(5, "cost_ring", NULL, 1), "cost_ring");
	tr_ref rf = spawn(spec_of(6, "cost_file", js, 1), "cost_file");
	/* an engine tap's body */
	const char *ev = "{\"event\": \"end\", \"pipeline\": \"assistant\", \"step\": \"rag\", "
	                 "\"attempt\": 0, \"step_us\": 312, \"run_us\": 950, \"trace\": "
	                 "\"0123456789abcdef0123456789abcdef\"}";
	for (int k = 0; k < 2; k++) {
		tr_ref r = k ? rf : rr;
		const char *name = k ? "cost_file" : "cost_ring";
		tr_actor_stats a0, a1;
		TT_OK(tr_actor_stats_get(node, r, &a0));
		for (int i = 0; i < n; i++) {
			TT_OK(send_json(r, ev, 0));
			if (i % 10000 == 9999)
				TT_ASSERT(wait_events(name, (uint64_t)i + 1)); /* stay under the mailbox */
		}
		TT_ASSERT(wait_events(name, (uint64_t)n));
		TT_OK(tr_actor_stats_get(node, r, &a1));
		fprintf(stderr, "  telemetry (%s): %.2f us per tap event in receive (%llu events)\n",
		        k ? "ring + file" : "ring", (double)(a1.receive_ns - a0.receive_ns) / 1e3 /
		        (double)(a1.processed - a0.processed),
		        (unsigned long long)(a1.processed - a0.processed));
	}
}

TT_TEST(stop)
{
	TT_EQ(tn_stop(node), 0);
	tr_config_free(tap_cfg);
	rm_dir();
}

TT_LIST = {
	TT_ENTRY(settings_errors),
	TT_ENTRY(troupe_check_reports),
	TT_ENTRY(writer_rotates),
	TT_ENTRY(start),
	TT_ENTRY(ring_and_counters),
	TT_ENTRY(metrics_text),
	TT_ENTRY(bad_bodies_and_pass_through),
	TT_ENTRY(instances_merge),
	TT_ENTRY(file_sink_rotates),
	TT_ENTRY(instances_share_a_file),
	TT_ENTRY(stdout_sink),
	TT_ENTRY(engine_taps),
	TT_ENTRY(cost),
	TT_ENTRY(stop),
	TT_END,
};

TT_MAIN()
