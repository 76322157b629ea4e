/*
 * bench/savina.c -- Savina-style actor benchmarks for troupe, the same
 * designs and arguments as ../shared/peers/savina (Erlang, CAF), plus the
 * memory of idle actors.
 *
 *   savina pingpong N           [--threads T]   -> roundtrips/s
 *   savina threadring R H       [--threads T]   -> hops/s
 *   savina counting N           [--threads T]   -> msgs/s
 *   savina fjthroughput A M     [--threads T]   -> msgs/s
 *   savina spawn N W            [--threads T]   -> spawns/s
 *   savina actor_memory N       [--threads T]   -> bytes/actor
 *   savina idle_cpu A MS        [--threads T]   -> cpu%
 *       A idle actors, then MS ms of nothing: process CPU as % of a core.
 *   savina pairs P N            [--threads T]   -> roundtrips/s
 *       P independent ping-pong pairs (spawned round robin over the
 *       workers), N round trips each: scaling with cores.
 *   savina spread A N           [--threads T]   -> msgs/s
 *       one parent spawns A actors on its worker; each handles N
 *       messages of ~50 us of computation: scaling through migration.
 *   options: --migrate 0|1 (default 1), --spin US (default 0)
 *
 * Prints one line:
 *   peer=troupe bench=B threads=T rate=R unit=U seconds=S
 * The clock covers the benchmark only: node start-up and shutdown are
 * excluded, spawning the benchmark's actors is included (as the peers do).
 * Every actor is an ordinary actor with a bounded mailbox (default 1024,
 * overflow=block); producers that outrun a mailbox wait for its
 * TR_TAG_WRITABLE, they never spin.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

#include <troupe/troupe.h>

enum { GO = 1, PING, PONG, TOKEN, NUM, GET, DONE, SPAWNED };

static uv_sem_t finished;
static uint64_t result_check; /* a benchmark-specific value checked after */

static void finish(void)
{
	uv_sem_post(&finished);
}

/* ---- pingpong ------------------------------------------------------ */

typedef struct pp {
	tr_ref peer;
	uint64_t left;
} pp;

static int pong_recv(tr_ctx *ctx, void *st, tr_msg *m)
{
	(void)st;
	if (m->tag == PING)
		return tr_send_u64(ctx, m->from, PONG, 0);
	return TR_OK;
}

static const tr_actor_ops pong_ops = {.name = "pong", .size = 0, .receive = pong_recv};


/* ---- threadring ---------------------------------------------------- */

typedef struct ringer {
	tr_ref next;
} ringer;

static int ring_recv(tr_ctx *ctx, void *st, tr_msg *m)
{
	ringer *r = st;
	if (m->tag == TOKEN) {
		if (m->arg == 0) {
			finish();
			return TR_OK;
		}
		return tr_send_u64(ctx, r->next, TOKEN, m->arg - 1);
	}
	return TR_OK;
}

typedef struct ring_driver {
	uint64_t r, h;
} ring_driver;

/* A ring member learns its successor from the `from` of a GO message. */
static int ringset_recv(tr_ctx *ctx, void *st, tr_msg *m)
{
	ringer *r = st;
	if (m->tag == GO) {
		r->next = m->from;
		return TR_OK;
	}
	return ring_recv(ctx, st, m);
}

static const tr_actor_ops ringset_ops = {.name = "ringer", .size = sizeof(ringer),
                                         .receive = ringset_recv};

static int ring_driver_recv(tr_ctx *ctx, void *st, tr_msg *m)
{
	ring_driver *d = st;
	if (m->tag != GO)
		return TR_OK;
	d->r = m->arg >> 32;
	d->h = m->arg & 0xffffffffu;
	tr_ref *refs = malloc(d->r * sizeof(tr_ref));
	if (refs == NULL)
		return TR_ENOMEM;
	for (uint64_t i = 0; i < d->r; i++) {
		int rc = tr_spawn(ctx, &ringset_ops, NULL, NULL, &refs[i]);
		if (rc != TR_OK) {
			free(refs);
			return rc;
		}
	}
	/* tr_node_send keeps the caller's `from`: each member learns its
	 * successor from the GO message's sender field. */
	for (uint64_t i = 0; i < d->r; i++) {
		tr_msg *s = tr_msg_new();
		s->tag = GO;
		s->from = refs[(i + 1) % d->r];
		int rc = tr_node_send(tr_ctx_node(ctx), refs[i], s);
		if (rc != TR_OK) {
			free(refs);
			return rc;
		}
	}
	int rc = tr_send_u64(ctx, refs[0], TOKEN, d->h);
	free(refs);
	return rc;
}

static const tr_actor_ops ring_driver_ops = {.name = "ring_driver", .size = sizeof(ring_driver),
                                             .receive = ring_driver_recv};

/* ---- counting ------------------------------------------------------ */

typedef struct counter {
	uint64_t sum;
} counter;

static int counter_recv(tr_ctx *ctx, void *st, tr_msg *m)
{
	counter *c = st;
	if (m->tag == NUM) {
		c->sum += m->arg;
		return TR_OK;
	}
	if (m->tag == GET && (m->flags & TR_MSGF_ASK)) {
		tr_msg *r = tr_msg_new();
		if (r == NULL)
			return TR_ENOMEM;
		r->tag = GET;
		r->arg = c->sum;
		return tr_reply(ctx, m, r);
	}
	return TR_OK;
}

static const tr_actor_ops counter_ops = {.name = "counter", .size = sizeof(counter),
                                         .receive = counter_recv};

typedef struct producer {
	tr_ref counter;
	uint64_t next; /* next number to send; counts down to 1 */
} producer;

static int producer_recv(tr_ctx *ctx, void *st, tr_msg *m)
{
	producer *p = st;
	if (m->tag == GO) {
		p->next = m->arg;
		tr_spawn_opts o = {0};
		o.mbox.mailbox = 4096;
		int rc = tr_spawn(ctx, &counter_ops, NULL, &o, &p->counter);
		if (rc != TR_OK)
			return rc;
	} else if (m->tag == GET && (m->flags & TR_MSGF_REPLY)) {
		result_check = (m->flags & TR_MSGF_ERROR) ? 0 : m->arg;
		finish();
		return TR_OK;
	} else if (m->tag != TR_TAG_WRITABLE) {
		return TR_OK;
	}
	while (p->next > 0) {
		int rc = tr_send_u64(ctx, p->counter, NUM, p->next);
		if (rc == TR_EFULL)
			return TR_OK; /* TR_TAG_WRITABLE resumes us */
		if (rc != TR_OK)
			return rc;
		p->next--;
	}
	tr_msg *q = tr_msg_new();
	if (q == NULL)
		return TR_ENOMEM;
	q->tag = GET;
	return tr_ask(ctx, p->counter, q, 0, NULL);
}

static const tr_actor_ops producer_ops = {.name = "producer", .size = sizeof(producer),
                                          .receive = producer_recv};

/* ---- fjthroughput -------------------------------------------------- */

static atomic_uint fj_remaining;

typedef struct fj_worker {
	uint64_t left;
} fj_worker;

static int fj_worker_init(tr_ctx *ctx, void *st, const void *arg)
{
	(void)ctx;
	((fj_worker *)st)->left = *(const uint64_t *)arg;
	return TR_OK;
}

static int fj_worker_recv(tr_ctx *ctx, void *st, tr_msg *m)
{
	fj_worker *w = st;
	(void)ctx;
	if (m->tag == NUM && --w->left == 0) {
		if (atomic_fetch_sub(&fj_remaining, 1) == 1)
			finish();
	}
	return TR_OK;
}

static const tr_actor_ops fj_worker_ops = {.name = "fj_worker", .size = sizeof(fj_worker),
                                           .init = fj_worker_init, .receive = fj_worker_recv};

/* Rounds the driver sends before it yields; see fj_driver_recv. */
#ifndef FJ_ROUNDS
#define FJ_ROUNDS 16
#endif

typedef struct fj_driver {
	tr_ref *workers;
	uint64_t a, m, round, i;
} fj_driver;

static int fj_driver_recv(tr_ctx *ctx, void *st, tr_msg *m)
{
	fj_driver *d = st;
	if (m->tag == GO) {
		d->a = m->arg >> 32;
		d->m = m->arg & 0xffffffffu;
		d->workers = malloc(d->a * sizeof(tr_ref));
		if (d->workers == NULL)
			return TR_ENOMEM;
		atomic_store(&fj_remaining, (unsigned)d->a);
		for (uint64_t i = 0; i < d->a; i++) {
			int rc = tr_spawn(ctx, &fj_worker_ops, &d->m, NULL, &d->workers[i]);
			if (rc != TR_OK)
				return rc;
		}
	} else if (m->tag != TR_TAG_WRITABLE && m->tag != PING) {
		return TR_OK;
	}
	/* Cooperative preemption: after FJ_ROUNDS rounds the driver yields
	 * (a message to itself) so the workers run while their messages are
	 * still in cache. Erlang's scheduler does this to its driver by
	 * counting reductions; a troupe actor does it by itself. */
	uint64_t stop_at = d->round + FJ_ROUNDS;
	for (; d->round < d->m; d->round++, d->i = 0) {
		if (d->round == stop_at && d->i == 0)
			return tr_send_u64(ctx, tr_self(ctx), PING, 0);
		for (; d->i < d->a; d->i++) {
			int rc = tr_send_u64(ctx, d->workers[d->i], NUM, d->round);
			if (rc == TR_EFULL)
				return TR_OK;
			if (rc != TR_OK)
				return rc;
		}
	}
	free(d->workers);
	d->workers = NULL;
	tr_stop(ctx, TR_OK);
	return TR_OK;
}

static const tr_actor_ops fj_driver_ops = {.name = "fj_driver", .size = sizeof(fj_driver),
                                           .receive = fj_driver_recv};

/* ---- spawn --------------------------------------------------------- */

static int child_init(tr_ctx *ctx, void *st, const void *arg)
{
	(void)st;
	int rc = tr_send_u64(ctx, *(const tr_ref *)arg, SPAWNED, 0);
	tr_stop(ctx, TR_OK); /* reported back: exit right after starting */
	return rc;
}

static int child_recv(tr_ctx *ctx, void *st, tr_msg *m)
{
	(void)ctx;
	(void)st;
	(void)m;
	return TR_OK;
}

static const tr_actor_ops child_ops = {.name = "child", .size = 0, .init = child_init,
                                       .receive = child_recv};

typedef struct spawner {
	tr_ref self;
	uint64_t n, started, reported;
} spawner;

static int spawner_recv(tr_ctx *ctx, void *st, tr_msg *m)
{
	spawner *s = st;
	if (m->tag == GO) {
		s->self = tr_self(ctx);
		s->n = m->arg >> 32;
		uint64_t w = m->arg & 0xffffffffu;
		for (; s->started < s->n && s->started < w; s->started++) {
			int rc = tr_spawn(ctx, &child_ops, &s->self, NULL, NULL);
			if (rc != TR_OK)
				return rc;
		}
		return TR_OK;
	}
	if (m->tag == SPAWNED) {
		s->reported++;
		if (s->started < s->n) {
			s->started++;
			return tr_spawn(ctx, &child_ops, &s->self, NULL, NULL);
		}
		if (s->reported == s->n)
			finish();
	}
	return TR_OK;
}

static const tr_actor_ops spawner_ops = {.name = "spawner", .size = sizeof(spawner),
                                         .receive = spawner_recv};

/* ---- actor_memory -------------------------------------------------- */

static int idle_recv(tr_ctx *ctx, void *st, tr_msg *m)
{
	(void)ctx;
	(void)st;
	(void)m;
	return TR_OK;
}

static const tr_actor_ops idle_ops = {.name = "idle", .size = 8, .receive = idle_recv};

static int mem_driver_recv(tr_ctx *ctx, void *st, tr_msg *m)
{
	(void)st;
	if (m->tag != GO)
		return TR_OK;
	for (uint64_t i = 0; i < m->arg; i++) {
		int rc = tr_spawn(ctx, &idle_ops, NULL, NULL, NULL);
		if (rc != TR_OK)
			return rc;
	}
	finish();
	return TR_OK;
}

static const tr_actor_ops mem_driver_ops = {.name = "mem_driver", .size = 0,
                                            .receive = mem_driver_recv};

static double cpu_seconds(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static long rss_bytes(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long pages = 0, rss = 0;
	if (f == NULL)
		return 0;
	if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
		rss = 0;
	fclose(f);
	return rss * sysconf(_SC_PAGESIZE);
}


/* ---- pairs (not Savina): independent ping-pong pairs --------------- */

static atomic_uint pairs_left;

static int pair_recv(tr_ctx *ctx, void *st, tr_msg *m)
{
	pp *p = st;
	if (m->tag == GO) {
		p->left = m->arg;
		int rc = tr_spawn(ctx, &pong_ops, NULL, NULL, &p->peer);
		if (rc != TR_OK)
			return rc;
	} else if (m->tag == PONG) {
		if (--p->left == 0) {
			if (atomic_fetch_sub(&pairs_left, 1) == 1)
				finish();
			return TR_OK;
		}
	}
	return tr_send_u64(ctx, p->peer, PING, 0);
}

static const tr_actor_ops pair_ops = {.name = "pair", .size = sizeof(pp), .receive = pair_recv};

/* ---- spread (not Savina): compute-heavy actors, born on one worker -- */

static atomic_uint spread_left;

typedef struct spreader {
	uint64_t left;
	double acc;
} spreader;

static int spread_recv(tr_ctx *ctx, void *st, tr_msg *m)
{
	spreader *s = st;
	if (m->tag == GO)
		s->left = m->arg;
	/* ~50 us of arithmetic per message (a retrieval-scoring-sized step) */
	for (int i = 0; i < 30000; i++)
		s->acc = s->acc * 1.0000001 + (double)i;
	if (--s->left == 0) {
		if (atomic_fetch_sub(&spread_left, 1) == 1)
			finish();
		return TR_OK;
	}
	return tr_send_u64(ctx, tr_self(ctx), NUM, 0);
}

static const tr_actor_ops spreader_ops = {.name = "spreader", .size = sizeof(spreader),
                                          .receive = spread_recv};

static int spread_parent_recv(tr_ctx *ctx, void *st, tr_msg *m)
{
	(void)st;
	if (m->tag != GO)
		return TR_OK;
	uint64_t a = m->arg >> 32, n = m->arg & 0xffffffffu;
	atomic_store(&spread_left, (unsigned)a);
	for (uint64_t i = 0; i < a; i++) {
		tr_ref r;
		int rc = tr_spawn(ctx, &spreader_ops, NULL, NULL, &r);
		if (rc == TR_OK)
			rc = tr_send_u64(ctx, r, GO, n);
		if (rc != TR_OK)
			return rc;
	}
	return TR_OK;
}

static const tr_actor_ops spread_parent_ops = {.name = "spread_parent", .size = 0,
                                               .receive = spread_parent_recv};

/* ---- main ---------------------------------------------------------- */

static int usage(void)
{
	fprintf(stderr, "usage: savina pingpong N | threadring R H | counting N | fjthroughput A M |\n"
	                "              spawn N W | actor_memory N | idle_cpu A MS | pairs P N | spread A N\n"
	                "              [--threads T] [--migrate 0|1] [--spin US]\n");
	return 2;
}

static uint64_t num(const char *s)
{
	return strtoull(s, NULL, 10);
}

int main(int argc, char **argv)
{
	const char *bench = NULL;
	uint64_t args[2] = {0, 0};
	int nargs = 0;
	tr_node_opts o = {0};
	o.threads = 1;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
			o.threads = (unsigned)num(argv[++i]);
		else if (strcmp(argv[i], "--migrate") == 0 && i + 1 < argc)
			o.migrate = num(argv[++i]) ? 1 : 2;
		else if (strcmp(argv[i], "--spin") == 0 && i + 1 < argc)
			o.spin_us = (uint32_t)num(argv[++i]);
		else if (bench == NULL)
			bench = argv[i];
		else if (nargs < 2)
			args[nargs++] = num(argv[i]);
		else
			return usage();
	}
	if (bench == NULL)
		return usage();

	const tr_actor_ops *ops;
	uint64_t go, count;
	const char *unit;
	uint64_t ndrivers = 1;
	if (strcmp(bench, "pingpong") == 0 && nargs == 1) {
		ops = &pair_ops; /* one pair */
		go = count = args[0];
		unit = "roundtrips/s";
	} else if (strcmp(bench, "threadring") == 0 && nargs == 2) {
		ops = &ring_driver_ops;
		go = (args[0] << 32) | args[1];
		count = args[1];
		unit = "hops/s";
	} else if (strcmp(bench, "counting") == 0 && nargs == 1) {
		ops = &producer_ops;
		go = count = args[0];
		unit = "msgs/s";
	} else if (strcmp(bench, "fjthroughput") == 0 && nargs == 2) {
		ops = &fj_driver_ops;
		go = (args[0] << 32) | args[1];
		count = args[0] * args[1];
		unit = "msgs/s";
	} else if (strcmp(bench, "spawn") == 0 && nargs == 2) {
		ops = &spawner_ops;
		go = (args[0] << 32) | args[1];
		count = args[0];
		unit = "spawns/s";
	} else if (strcmp(bench, "actor_memory") == 0 && nargs == 1) {
		ops = &mem_driver_ops;
		go = count = args[0];
		unit = "bytes/actor";
	} else if (strcmp(bench, "idle_cpu") == 0 && nargs == 2) {
		ops = &mem_driver_ops; /* spawn A idle actors, then measure */
		go = count = args[0];
		unit = "cpu%";
	} else if (strcmp(bench, "pairs") == 0 && nargs == 2) {
		ops = &pair_ops;
		ndrivers = args[0];
		go = args[1];
		count = args[0] * args[1];
		unit = "roundtrips/s";
	} else if (strcmp(bench, "spread") == 0 && nargs == 2) {
		ops = &spread_parent_ops;
		go = (args[0] << 32) | args[1];
		count = args[0] * args[1];
		unit = "msgs/s";
	} else {
		return usage();
	}

	uv_sem_init(&finished, 0);
	tr_node *node;
	int rc = tr_node_new(&o, &node);
	if (rc == TR_OK)
		rc = tr_node_start(node);
	if (rc != TR_OK) {
		fprintf(stderr, "savina: node: %s\n", tr_strerror(rc));
		return 1;
	}
	long rss0 = rss_bytes();
	uint64_t t0 = tr_now_ns();
	tr_ref driver;
	rc = TR_OK;
	tr_spawn_opts so = {0};
	/* The spawner gets one report per live child (up to W at once, plus
	 * a turn's worth not yet accounted): size its mailbox for that. */
	if (ops == &spawner_ops)
		so.mbox.mailbox = (uint32_t)(2 * args[1] + 2 * TR_BATCH_DEFAULT);
	/* pairs: P drivers spawned from outside go round robin over the
	 * workers; every other bench has one driver. */
	atomic_store(&pairs_left, (unsigned)ndrivers);
	for (uint64_t i = 0; i < ndrivers && rc == TR_OK; i++) {
		rc = tr_node_spawn(node, ops, NULL, &so, &driver);
		tr_msg *m = tr_msg_new();
		m->tag = GO;
		m->arg = go;
		if (rc == TR_OK)
			rc = tr_node_send(node, driver, m);
		else
			tr_msg_free(m);
	}
	if (rc != TR_OK) {
		fprintf(stderr, "savina: start: %s\n", tr_strerror(rc));
		return 1;
	}
	uv_sem_wait(&finished);
	double idle_pct = 0;
	int idle = strcmp(unit, "cpu%") == 0;
	if (idle) {
		/* The node now holds A idle actors and nothing to do: CPU time
		 * of the whole process over MS ms of wall time, as a percentage
		 * of one core. A worker that polled instead of sleeping would
		 * show ~100 per thread. */
		double c0 = cpu_seconds();
		t0 = tr_now_ns();
		uv_sleep((unsigned)args[1]);
		idle_pct = 100.0 * (cpu_seconds() - c0) / ((double)(tr_now_ns() - t0) / 1e9);
	}
	uint64_t t1 = tr_now_ns();
	long rss1 = rss_bytes();
	double secs = (double)(t1 - t0) / 1e9;
	int bad = 0;
	if (strcmp(bench, "counting") == 0 && result_check != count * (count + 1) / 2) {
		fprintf(stderr, "savina: counting: total %llu, want %llu\n",
		        (unsigned long long)result_check, (unsigned long long)(count * (count + 1) / 2));
		bad = 1;
	}
	double rate = strcmp(unit, "bytes/actor") == 0 ? (double)(rss1 - rss0) / (double)count
	              : strcmp(unit, "cpu%") == 0     ? idle_pct
	                                              : (double)count / secs;
	printf("peer=troupe bench=%s threads=%u rate=%.*f unit=%s seconds=%.3f\n", bench,
	       tr_node_threads(node), idle ? 3 : 1, rate, unit, secs);
	fflush(stdout);
	if (getenv("SAVINA_DEBUG") != NULL) {
		tr_node_stats ns;
		tr_node_stats_get(node, &ns);
		fprintf(stderr, "# migrations=%llu wakeups=%llu spawned=%llu\n",
		        (unsigned long long)ns.migrations, (unsigned long long)ns.wakeups,
		        (unsigned long long)ns.spawned);
	}
	tr_node_shutdown(node, 0);
	tr_node_wait(node);
	tr_node_free(node);
	uv_sem_destroy(&finished);
	return bad;
}
