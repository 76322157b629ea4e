/*
 * main.c -- the `troupe` command.
 *
 *   troupe run [--threads N] [--log-level L] [--pid-file F] [--chaos SPEC] [FILE...]
 *   troupe check FILE...
 *   troupe reload (--pid PID | --pid-file F)
 *   troupe db migrate [--conninfo S] [FILE...]      (cli_db.c)
 *   troupe ingest DIR [--tenant T] [--conninfo S]   (cli_db.c)
 *   troupe version
 *   troupe help | --help
 *
 * `run` validates the pipeline files (exit 1 with every diagnostic when
 * they are broken), starts the scheduler, deploys what the files declare
 * (pipe/live.h) and then serves until SIGINT/SIGTERM: it shuts the node
 * down (every actor's terminate() runs) and exits 0. SIGHUP reloads the
 * files: a broken file is rejected and logged, the running version keeps
 * serving. Logs are JSON lines on stderr.
 *
 * The main thread is the control thread: it owns the tr_live and is the
 * only one that sees the signals (they are blocked before any worker
 * starts, so every worker inherits the mask).
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <troupe/troupe.h>

#include "actors/kit.h"
#include "actors/telemetry/telemetry.h"
#include "cli.h"
#include "cluster/cluster.h"
#include "core/chaos.h"
#include "db/pg.h"
#include "db/redis.h"
#include "http/door.h"
#include "lua/tlua.h"
#include "msg/msg_int.h"
#include "pipe/live.h"
#include "pipe/spec.h"

static void usage(FILE *f)
{
	fputs("usage: troupe <command> [options]\n"
	      "\n"
	      "commands:\n"
	      "  run [--http ADDR] [--threads N] [--log-level L] [--pid-file F] [--chaos SPEC] [FILE...]\n"
	      "                                 start a node from pipeline files (Ctrl-C to stop)\n"
	      "  check FILE...                  validate pipeline files without starting anything\n"
	      "  reload (--pid PID | --pid-file F)\n"
	      "                                 ask a running node to reload its files (SIGHUP)\n"
	      "  db migrate [--conninfo S] [FILE...]\n"
	      "                                 apply the SQL migrations (PostgreSQL backends)\n"
	      "  ingest DIR [--tenant T] [--conninfo S] [FILE...]\n"
	      "                                 load a folder for rag's postgres backend\n"
	      "  version                        print the version\n"
	      "  help                           this text\n"
	      "\n"
	      "`troupe COMMAND --help` describes one command.\n",
	      f);
}

/* ---- logging: one JSON object per line on stderr ------------------------ */

enum { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };
static const char *const level_names[] = {"debug", "info", "warn", "error"};
static int log_min = LOG_INFO;

static int parse_level(const char *s)
{
	for (int i = 0; i < 4; i++)
		if (strcmp(s, level_names[i]) == 0)
			return i;
	return -1;
}

/* Writes s as the inside of a JSON string (RFC 8259 escapes). */
static void json_escape(FILE *f, const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			fprintf(f, "\\%c", *p);
		else if (*p == '\n')
			fputs("\\n", f);
		else if (*p == '\t')
			fputs("\\t", f);
		else if (*p < 0x20)
			fprintf(f, "\\u%04x", *p);
		else
			fputc(*p, f);
	}
}

/* log_json(level, msg, "key", "string value", ..., NULL): string fields;
 * a key starting with '#' takes an unsigned long long instead (printed as
 * a JSON number, without the '#'). One fprintf sequence under the stdio
 * lock, so concurrent lines do not interleave. */
static void log_json(int level, const char *msg, ...)
{
	va_list ap;
	const char *k;

	if (level < log_min)
		return;
	flockfile(stderr);
	fprintf(stderr, "{\"ts_us\":%llu,\"level\":\"%s\",\"msg\":\"",
	        (unsigned long long)tr_wall_us(), level_names[level]);
	json_escape(stderr, msg);
	fputc('"', stderr);
	va_start(ap, msg);
	while ((k = va_arg(ap, const char *)) != NULL) {
		if (k[0] == '#') {
			fprintf(stderr, ",\"%s\":%llu", k + 1, va_arg(ap, unsigned long long));
		} else {
			fprintf(stderr, ",\"%s\":\"", k);
			json_escape(stderr, va_arg(ap, const char *));
			fputc('"', stderr);
		}
	}
	va_end(ap);
	fputs("}\n", stderr);
	funlockfile(stderr);
}

static void log_diag(int level, const char *msg, const tr_diag *d)
{
	for (size_t i = 0; i < d->n; i++)
		log_json(level, msg, "error", d->msgs[i], (const char *)NULL);
}

static int telemetry_events(tr_node *node, size_t max, tr_buf *out)
{
	int rc = tr_telemetry_ring_json(node, NULL, max, out);
	/* no telemetry actor: no events, not an error */
	return rc == TR_ENOTFOUND ? tr__buf_append(out, "[]", 2) : rc;
}

static int parse_uint(const char *s, unsigned long max, unsigned long *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno != 0 || *s == '\0' || *end != '\0' || v > max)
		return -1;
	*out = v;
	return 0;
}

/* ---- troupe run ---------------------------------------------------------- */

static int write_pid_file(const char *path)
{
	FILE *f = fopen(path, "w");
	if (f == NULL)
		return -1;
	fprintf(f, "%ld\n", (long)getpid());
	return fclose(f) == 0 ? 0 : -1;
}

#define DEFAULT_FILE "pipelines/assistant.lua"

static int drain(tr_door *door, const tr_config *c, const sigset_t *set);

/* Door options from the node's settings; `http` overrides its address. */
static tr_door_opts door_opts(const tr_config *c, const char *http)
{
	tr_door_opts o;
	memset(&o, 0, sizeof(o));
	o.listen = http ? http : c ? c->node.http : NULL;
	if (c != NULL) {
		o.max_body = c->node.max_body;
		o.max_header = c->node.max_header;
		o.max_connections = c->node.max_connections;
		o.header_timeout_ms = c->node.header_timeout_us / 1000u;
		o.idle_timeout_ms = c->node.idle_timeout_us / 1000u;
	}
	return o;
}

static void run_help(FILE *f)
{
	fputs("usage: troupe run [--http ADDR] [--threads N] [--log-level L] [--pid-file F] [--chaos SPEC] [FILE...]\n"
	      "  FILE...         pipeline files (Lua), loaded in order into one namespace\n"
	      "                  (default: " DEFAULT_FILE ")\n"
	      "  --http ADDR     serve HTTP on ADDR (host:port; default: node { http })\n"
	      "  --threads N     worker threads (default: node { threads } or the number of CPUs)\n"
	      "  --log-level L   debug|info|warn|error (default info)\n"
	      "  --pid-file F    write the process id to F (for `troupe reload --pid-file F`)\n"
	      "  --chaos SPEC    tests only: inject faults (refused when node { env = \"production\" }),\n"
	      "                  SPEC like seed=42,crash=0.02:1s,slow=0.05:20ms,fail=0.02,fill=0.01,for=10s\n"
	      "                  (crash=P[:GAP] slow=P:DELAY fail=P fill=P for=DURATION; README, Chaos)\n"
	      "signals: SIGINT/SIGTERM stop the node gracefully (in-flight requests are\n"
	      "answered within node { grace }, default 10 s; a second signal exits at once),\n"
	      "SIGHUP reloads the files\n",
	      f);
}

/*
 * The node's backends, before any actor that asks them is deployed: the
 * PostgreSQL pool and the Redis client are actors registered by name
 * ("postgres", "redis"), pinned on the last worker (the doors take every
 * worker; the last one is as good as any). Their settings are read once:
 * a reload that changes them needs a restart (logged by cmd_run).
 * 0, or 1 with the reason logged.
 */
static int start_backends(tr_node *node, const tr_config *c, tr_pg **pg, tr_redis **rd)
{
	unsigned w = tr_node_threads(node) - 1;
	char err[256];
	if (c->postgres.on) {
		const tr_postgres_spec *p = &c->postgres;
		const char *ci = p->conninfo ? p->conninfo : getenv(p->conninfo_env);
		if (ci == NULL || *ci == '\0') {
			log_json(LOG_ERROR, "postgres: conninfo_env names an unset variable", "variable",
			         p->conninfo_env, (const char *)NULL);
			return 1;
		}
		tr_pg_opts o = {ci, p->pool, p->queue, p->connect_timeout_us, p->max_lifetime_us,
		                p->idle_timeout_us, p->statement_timeout_us, p->pgbouncer};
		if (tr_pg_start(node, w, &o, pg, err, sizeof(err)) != TR_OK) {
			log_json(LOG_ERROR, "cannot start the postgres pool", "error", err, (const char *)NULL);
			return 1;
		}
		log_json(LOG_INFO, "postgres pool started", "#pool",
		         (unsigned long long)(p->pool ? p->pool : 10), (const char *)NULL);
	}
	if (c->redis.on) {
		const tr_redis_spec *r = &c->redis;
		const char *url = r->url ? r->url : getenv(r->url_env);
		char host[64];
		int port, db;
		if (url == NULL || tr_redis_url_parse(url, host, sizeof(host), &port, &db) != TR_OK) {
			log_json(LOG_ERROR, "redis: expected url redis://<numeric ip>:<port>[/<db>]", "url",
			         url ? url : "", "variable", r->url_env ? r->url_env : "", (const char *)NULL);
			return 1;
		}
		tr_redis_opts o = {host, port, db, r->timeout_us, r->connect_timeout_us, r->max_pending};
		if (tr_redis_start(node, w, &o, rd, err, sizeof(err)) != TR_OK) {
			log_json(LOG_ERROR, "cannot start the redis client", "error", err, (const char *)NULL);
			return 1;
		}
		log_json(LOG_INFO, "redis client started", "url", url, (const char *)NULL);
	}
	return 0;
}

/* The node's id in refs: a hash of its name, the same on every start,
 * so refs and the cluster agree on who is who (0 is "no actor"). */
static uint32_t node_id_of(const char *name)
{
	uint32_t h = 2166136261u;
	for (const unsigned char *p = (const unsigned char *)name; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h ? h : 1;
}

/* node { cluster = { ... } }: the cluster actor, once the node runs.
 * 0, or 1 with the reason logged. */
static int start_cluster(tr_node *node, const tr_config *c, tr_cluster **out)
{
	const tr_node_spec *n = &c->node;
	unsigned char secret[4096];
	size_t slen = 0;
	char err[256];
	if (n->cluster.listen == NULL)
		return 0;
	if (n->cluster.secret_file == NULL) {
		log_json(LOG_ERROR, "cluster: secret_file is required (links authenticate with it)",
		         (const char *)NULL);
		return 1;
	}
	FILE *f = fopen(n->cluster.secret_file, "rb");
	if (f != NULL) {
		slen = fread(secret, 1, sizeof(secret), f);
		fclose(f);
	}
	while (slen > 0 && (secret[slen - 1] == '\n' || secret[slen - 1] == '\r'))
		slen--;
	if (f == NULL || slen < 16) {
		log_json(LOG_ERROR, f == NULL ? "cluster: cannot read secret_file"
		                              : "cluster: the secret must be at least 16 bytes",
		         "file", n->cluster.secret_file, (const char *)NULL);
		memset(secret, 0, sizeof(secret));
		return 1;
	}
	tr_cluster_opts o = {.name = n->name,
	                     .node_id = tr_node_id(node),
	                     .listen = n->cluster.listen,
	                     .data_listen = n->cluster.data_listen,
	                     .seeds = (const char *const *)n->cluster.seeds,
	                     .nseeds = n->cluster.nseeds,
	                     .secret = secret,
	                     .secret_len = slen,
	                     .labels = (const char *const *)n->labels,
	                     .nlabels = n->nlabels,
	                     .heartbeat_us = n->cluster.heartbeat_us,
	                     .suspect_after_us = n->cluster.suspect_after_us,
	                     .down_after_us = n->cluster.down_after_us};
	/* The DSL requires all three files once tls is given. */
	tr_cluster_tls_opts tls = {n->cluster.tls.cert_file, n->cluster.tls.key_file,
	                           n->cluster.tls.ca_file, n->cluster.tls.server_name};
	if (tls.cert_file != NULL)
		o.tls = &tls;
	int rc = tr_cluster_start(node, tr_node_threads(node) - 1, &o, out, err, sizeof(err));
	memset(secret, 0, sizeof(secret));
	if (rc != TR_OK) {
		log_json(LOG_ERROR, "cannot start the cluster", "error", err, (const char *)NULL);
		return 1;
	}
	log_json(LOG_INFO, "cluster started", "listen", n->cluster.listen, "#port",
	         (unsigned long long)tr_cluster_port(*out), "#node_id",
	         (unsigned long long)tr_node_id(node), (const char *)NULL);
	return 0;
}

static int same_str(const char *a, const char *b)
{
	return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* A reload keeps the backends started with the node: say so when the
 * files now ask for other ones. */
static void backends_changed(const tr_config *was, const tr_config *now)
{
	const tr_postgres_spec *a = &was->postgres, *b = &now->postgres;
	const tr_redis_spec *x = &was->redis, *y = &now->redis;
	if (a->on != b->on || !same_str(a->conninfo, b->conninfo) ||
	    !same_str(a->conninfo_env, b->conninfo_env) || a->pool != b->pool || a->queue != b->queue ||
	    a->connect_timeout_us != b->connect_timeout_us || a->max_lifetime_us != b->max_lifetime_us ||
	    a->idle_timeout_us != b->idle_timeout_us ||
	    a->statement_timeout_us != b->statement_timeout_us || a->pgbouncer != b->pgbouncer)
		log_json(LOG_WARN, "postgres { } changed: it takes effect at the next restart",
		         (const char *)NULL);
	if (x->on != y->on || !same_str(x->url, y->url) || !same_str(x->url_env, y->url_env) ||
	    x->timeout_us != y->timeout_us || x->connect_timeout_us != y->connect_timeout_us ||
	    x->max_pending != y->max_pending)
		log_json(LOG_WARN, "redis { } changed: it takes effect at the next restart",
		         (const char *)NULL);
}

static int cmd_run(int argc, char **argv)
{
	tr_node_opts o;
	const char *pid_file = NULL, *http = NULL;
	const char **files = NULL;
	tr_door *door = NULL;
	uint64_t t_start = tr_now_ns();
	size_t nfiles = 0;
	tr_config *cfg = NULL;
	tr_node *node = NULL;
	tr_live *live = NULL;
	tr_pg *pg = NULL;
	tr_redis *rd = NULL;
	tr_cluster *cl = NULL;
	tr_diag d;
	tr_chaos_spec chaos;
	const char *chaos_arg = NULL;
	int rc, code = 1;

	memset(&o, 0, sizeof(o));
	tr_diag_init(&d);
	files = calloc((size_t)argc + 1, sizeof(*files));
	if (files == NULL) {
		fputs("troupe run: out of memory\n", stderr);
		return 1;
	}
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];
		int has_val = i + 1 < argc;
		unsigned long v;
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			run_help(stdout);
			code = 0;
			goto out;
		} else if (strcmp(a, "--threads") == 0 && has_val) {
			if (parse_uint(argv[++i], 64, &v) != 0 || v == 0) {
				fprintf(stderr, "troupe run: --threads wants a number from 1 to 64, got '%s'\n",
				        argv[i]);
				code = 2;
				goto out;
			}
			o.threads = (unsigned)v;
		} else if (strcmp(a, "--log-level") == 0 && has_val) {
			if ((log_min = parse_level(argv[++i])) < 0) {
				fprintf(stderr,
				        "troupe run: --log-level wants debug, info, warn or error, got '%s'\n",
				        argv[i]);
				code = 2;
				goto out;
			}
		} else if (strcmp(a, "--pid-file") == 0 && has_val) {
			pid_file = argv[++i];
		} else if (strcmp(a, "--http") == 0 && has_val) {
			http = argv[++i];
		} else if (strcmp(a, "--chaos") == 0 && has_val) {
			char err[256];
			chaos_arg = argv[++i];
			if (tr_chaos_parse(chaos_arg, &chaos, err, sizeof(err)) != TR_OK) {
				fprintf(stderr, "troupe run: --%s\n", err);
				code = 2;
				goto out;
			}
		} else if (a[0] == '-') {
			fprintf(stderr, "troupe run: unknown option or missing value '%s' (see troupe run --help)\n", a);
			code = 2;
			goto out;
		} else {
			files[nfiles++] = a;
		}
	}

	if (nfiles == 0)
		files[nfiles++] = DEFAULT_FILE;

	/* Validate before anything starts: a broken file costs no thread. The
	 * config read here also gives the node's settings; tr_live_load reads
	 * the files again to deploy them (so that a reload works the same). */
	rc = tr_config_load(files, nfiles, &cfg, &d);
	if (rc != TR_OK) {
		log_diag(LOG_ERROR, "invalid pipeline files", &d);
		if (d.n == 0)
			log_json(LOG_ERROR, "cannot load pipeline files", "error", tr_strerror(rc),
			         (const char *)NULL);
		goto out;
	}
	if (chaos_arg != NULL) {
		/* Before any worker starts and before the deployment, so that
		 * its actors are spawned as candidates (core/chaos.h). */
		char err[256];
		if (tr_chaos_start(&chaos, cfg->node.env, err, sizeof(err)) != TR_OK) {
			log_json(LOG_ERROR, "chaos refused", "error", err, "env", cfg->node.env,
			         (const char *)NULL);
			code = 2;
			goto out;
		}
		log_json(LOG_WARN, "chaos on: faults are injected (tests only)", "spec", chaos_arg,
		         "env", cfg->node.env ? cfg->node.env : "", "#for_ms",
		         (unsigned long long)(chaos.for_us / 1000u), (const char *)NULL);
	}
	if (o.threads == 0)
		o.threads = cfg->node.threads;
	if (cfg->node.cluster.listen != NULL)
		o.node_id = node_id_of(cfg->node.name);

	/* A peer that closes while we write must cost an EPIPE on that
	 * connection, not the process (libuv leaves SIGPIPE alone). */
	signal(SIGPIPE, SIG_IGN);

	/* Block the control signals before any thread starts, so every worker
	 * inherits the mask and only sigtimedwait() below sees them. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	rc = tr_node_new(&o, &node);
	if (rc == TR_OK)
		rc = tr_node_start(node);
	if (rc == TR_OK)
		rc = tr_live_new(node, &live);
	if (rc != TR_OK) {
		log_json(LOG_ERROR, "cannot start the node", "error", tr_strerror(rc), (const char *)NULL);
		if (node != NULL) {
			tr_node_shutdown(node, 1);
			tr_node_wait(node);
		}
		goto out;
	}
	if (start_backends(node, cfg, &pg, &rd) != 0 || start_cluster(node, cfg, &cl) != 0) {
		tr_node_shutdown(node, 1);
		tr_node_wait(node);
		goto out;
	}
	rc = tr_live_load(live, files, nfiles, &d);
	if (rc != TR_OK) {
		log_diag(LOG_ERROR, "cannot deploy the pipeline files", &d);
		tr_node_shutdown(node, 1);
		tr_node_wait(node);
		goto out;
	}
	tr_door_opts dopts = door_opts(tr_live_config(live), http);
	if (dopts.listen != NULL) {
		char err[256];
		rc = tr_door_start(node, &dopts, &door, err, sizeof(err));
		if (rc == TR_OK) {
			tr_door_set_backends(door, pg, rd);
			tr_door_set_cluster(door, cl);
			rc = tr_door_set_config(door, tr_live_config(live), tr_live_gen(live));
		}
		else
			log_json(LOG_ERROR, "cannot start the HTTP door", "error", err, (const char *)NULL);
		if (rc != TR_OK) {
			tr_node_shutdown(node, 1);
			tr_node_wait(node);
			goto out;
		}
	}
	if (pid_file != NULL && write_pid_file(pid_file) != 0) {
		log_json(LOG_ERROR, "cannot write the pid file", "file", pid_file, "error",
		         strerror(errno), (const char *)NULL);
		tr_node_shutdown(node, 1);
		tr_node_wait(node);
		goto out;
	}
	{
		const tr_config *c = tr_live_config(live);
		log_json(LOG_INFO, "node started", "#threads", (unsigned long long)tr_node_threads(node),
		         "#pid", (unsigned long long)getpid(), "#generation",
		         (unsigned long long)tr_live_gen(live), "#actors",
		         (unsigned long long)(c ? c->nactors : 0), "#pipelines",
		         (unsigned long long)(c ? c->npipelines : 0), "http",
		         dopts.listen ? dopts.listen : "", "#http_port",
		         (unsigned long long)(door ? tr_door_port(door) : 0), "#startup_us",
		         (unsigned long long)((tr_now_ns() - t_start) / 1000u), (const char *)NULL);
	}

	/* Control loop: signals, and every 100 ms a poll that retires the
	 * generations a reload replaced once they have drained. */
	for (;;) {
		struct timespec tick = {0, 100 * 1000 * 1000};
		int sig = sigtimedwait(&set, NULL, &tick);
		if (sig < 0) {
			tr_live_poll(live);
			if (tr_chaos_poll())
				log_json(LOG_WARN, "chaos over: no more faults", (const char *)NULL);
			continue;
		}
		if (sig == SIGHUP) {
			tr_diag_free(&d);
			tr_diag_init(&d);
			rc = tr_live_reload(live, &d);
			if (rc == TR_OK && door != NULL &&
			    tr_door_set_config(door, tr_live_config(live), tr_live_gen(live)) != TR_OK)
				log_json(LOG_WARN, "HTTP door keeps the previous tenants and graphs: out of memory",
				         (const char *)NULL);
			if (rc == TR_OK) {
				const tr_config *nc = tr_live_config(live);
				char err[256];
				if (tr_chaos_running() && nc != NULL &&
				    tr_chaos_allowed(nc->node.env, err, sizeof(err)) != TR_OK) {
					tr_chaos_stop();
					log_json(LOG_ERROR, "chaos stopped: the reloaded files mark the node production",
					         "error", err, (const char *)NULL);
				}
				log_json(LOG_INFO, "reloaded", "#generation",
				         (unsigned long long)tr_live_gen(live), (const char *)NULL);
				backends_changed(cfg, tr_live_config(live));
			} else {
				log_diag(LOG_ERROR, "reload rejected", &d);
				log_json(LOG_WARN, "still serving the previous version", "#generation",
				         (unsigned long long)tr_live_gen(live), (const char *)NULL);
			}
			continue;
		}
		log_json(LOG_INFO, "stopping", "signal", sig == SIGINT ? "SIGINT" : "SIGTERM",
		         (const char *)NULL);
		/* The others stop sending us new work, and what they sent is
		 * answered during the drain; leave only after it. */
		tr_cluster_retire(cl);
		break;
	}
	if (door != NULL && drain(door, tr_live_config(live), &set) != 0) {
		/* a second signal: no more waiting */
		log_json(LOG_WARN, "second signal: exiting now", "#inflight",
		         (unsigned long long)tr_door_inflight(door), (const char *)NULL);
		if (pid_file != NULL)
			unlink(pid_file);
		_exit(1);
	}
	if (cl != NULL) {
		/* The empty name list goes out on the cluster's next tick (at
		 * most 250 ms); until the others have it they may still route
		 * new work here, which is served. Then LEAVE: they mark us
		 * "left" at once. */
		struct timespec settle = {0, 300 * 1000 * 1000};
		nanosleep(&settle, NULL);
		tr_cluster_leave(cl, 500);
	}
	tr_node_shutdown(node, 0);
	code = tr_node_wait(node) == 0 ? 0 : 1;
	if (pid_file != NULL)
		unlink(pid_file);
	log_json(LOG_INFO, "stopped", (const char *)NULL);
out:
	/* The deployment's specs are read by actors until the node stops:
	 * free it only now. */
	tr_door_free(door);
	tr_live_free(live);
	tr_node_free(node);
	tr_pg_free(pg);
	tr_redis_free(rd);
	tr_cluster_free(cl);
	tr_config_free(cfg);
	tr_diag_free(&d);
	free(files);
	return code;
}

/*
 * Graceful stop: the door stops accepting and closes idle connections;
 * the runs in flight get up to the grace period to be answered. Returns
 * 0 when drained (or the grace ran out: logged), 1 when a second stop
 * signal came meanwhile.
 */
static int drain(tr_door *door, const tr_config *c, const sigset_t *set)
{
	uint64_t grace_ns = (c && c->node.grace_us ? c->node.grace_us : 10000000u) * 1000u;
	uint64_t until = tr_now_ns() + grace_ns;
	tr_door_drain(door);
	log_json(LOG_INFO, "draining", "#inflight", (unsigned long long)tr_door_inflight(door),
	         "#grace_ms", (unsigned long long)(grace_ns / 1000000u), (const char *)NULL);
	/* Not only the runs dispatched: a request the door has not read yet
	 * (waiting on a keep-alive connection, or in a door that has not run
	 * its drain) is answered too, so wait for every connection. */
	while (!tr_door_drained(door)) {
		if (tr_now_ns() >= until) {
			log_json(LOG_WARN, "grace period over", "#inflight",
			         (unsigned long long)tr_door_inflight(door), (const char *)NULL);
			return 0;
		}
		struct timespec tick = {0, 10 * 1000 * 1000};
		int sig = sigtimedwait(set, NULL, &tick);
		if (sig == SIGINT || sig == SIGTERM)
			return 1;
	}
	log_json(LOG_INFO, "drained", (const char *)NULL);
	return 0;
}

/* ---- troupe reload ------------------------------------------------------- */

static int cmd_reload(int argc, char **argv)
{
	unsigned long pid = 0;
	const char *pid_file = NULL;

	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			fputs("usage: troupe reload (--pid PID | --pid-file F)\n"
			      "  sends SIGHUP to a node started by `troupe run`; the node reloads its\n"
			      "  files and logs \"reloaded\" or \"reload rejected\" with every error\n",
			      stdout);
			return 0;
		} else if (strcmp(argv[i], "--pid") == 0 && i + 1 < argc) {
			if (parse_uint(argv[++i], 0x7fffffff, &pid) != 0 || pid < 2) {
				fprintf(stderr, "troupe reload: --pid wants a process id, got '%s'\n", argv[i]);
				return 2;
			}
		} else if (strcmp(argv[i], "--pid-file") == 0 && i + 1 < argc) {
			pid_file = argv[++i];
		} else {
			fprintf(stderr, "troupe reload: unknown option or missing value '%s' (see troupe reload --help)\n",
			        argv[i]);
			return 2;
		}
	}
	if (pid_file != NULL) {
		char buf[32] = {0};
		FILE *f = fopen(pid_file, "r");
		if (f == NULL) {
			fprintf(stderr, "troupe reload: cannot read %s: %s\n", pid_file, strerror(errno));
			return 1;
		}
		size_t n = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		buf[n] = '\0';
		buf[strcspn(buf, "\r\n")] = '\0';
		if (parse_uint(buf, 0x7fffffff, &pid) != 0 || pid < 2) {
			fprintf(stderr, "troupe reload: %s does not hold a process id\n", pid_file);
			return 1;
		}
	}
	if (pid == 0) {
		fputs("troupe reload: name the node with --pid PID or --pid-file F\n", stderr);
		return 2;
	}
	if (kill((pid_t)pid, SIGHUP) != 0) {
		fprintf(stderr, "troupe reload: cannot signal process %lu: %s\n", pid, strerror(errno));
		return 1;
	}
	printf("reload requested (SIGHUP to %lu); the node logs the result\n", pid);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[1];
	/* Built-in kinds first: both `check` and `run` must know their
	 * settings checks. */
	if (tr_actors_register_builtin() != TR_OK) {
		fputs("troupe: cannot register the built-in actor kinds\n", stderr);
		return 1;
	}
	/* The telemetry kind's counters and ring, for /metrics and /v1/events. */
	tr_door_extend(tr_telemetry_metrics, telemetry_events);
	if (strcmp(cmd, "run") == 0)
		return cmd_run(argc - 2, argv + 2);
	if (strcmp(cmd, "check") == 0) {
		if (argc == 3 && (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0)) {
			fputs("usage: troupe check FILE...\n"
			      "  validates pipeline files without starting anything: every problem is\n"
			      "  printed on stderr as file:line: message; exit 0 valid, 1 invalid\n",
			      stdout);
			return 0;
		}
		return tr_check_main(argc - 1, argv + 1);
	}
	if (strcmp(cmd, "reload") == 0)
		return cmd_reload(argc - 2, argv + 2);
	if (strcmp(cmd, "db") == 0)
		return tr__cmd_db(argc - 2, argv + 2);
	if (strcmp(cmd, "ingest") == 0)
		return tr__cmd_ingest(argc - 2, argv + 2);
	if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
		printf("troupe %s\n", TROUPE_VERSION);
		return 0;
	}
	if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "troupe: unknown command '%s'\n", cmd);
	usage(stderr);
	return 2;
}
