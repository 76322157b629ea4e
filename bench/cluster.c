/*
 * bench/cluster.c -- remote actors over the cluster's data plane: two
 * nodes in one process (as nngbench keeps both ends in one), each with
 * its cluster actor, talking over TCP loopback.
 *
 *   cluster pingpong|count|ask64 SECONDS THREADS
 *
 * pingpong: one ask at a time from an actor on node a to an echo on node
 *   b; round trips/s, and p50/p99 of the round trip.
 * count: an actor on a streams sends to a counter on b (a refused send,
 *   TR_EREJECTED when the link is full, is sent again 1 ms later); msgs/s
 *   counted on b.
 * ask64: 64 asks in flight at all times; answers/s.
 * THREADS: worker threads per node (the cluster actor on the last one).
 *
 * Prints one line per figure:
 *   peer=troupe bench=cluster_<name>_tcp threads=T rate=R unit=U seconds=S
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <troupe/troupe.h>

#include "cluster/cluster.h"

static const unsigned char secret[] = "bench secret: 16 bytes or more";

enum { T_GO = 1, T_MORE, T_PING, T_COUNT };

#define MAX_SAMPLES (8u * 1024u * 1024u)
#define CHUNK 1024u

static struct {
	tr_ref target;
	atomic_int stop;
	atomic_uint_fast64_t done;   /* round trips, answers, or counted messages */
	atomic_uint_fast64_t refused;
	uint64_t *samples;
	atomic_uint_fast64_t nsamples;
	int inflight;
	int mode;                    /* 0 pingpong, 1 count, 2 ask64 */
} B;

static tr_msg *msg_of(uint32_t tag, uint64_t arg)
{
	tr_msg *m = tr_msg_new();
	if (m != NULL) {
		m->tag = tag;
		m->arg = arg;
	}
	return m;
}

/* ---- node b ------------------------------------------------------------ */

static int echo_receive(tr_ctx *ctx, void *st, tr_msg *m)
{
	(void)st;
	if (m->flags & TR_MSGF_ASK)
		return tr_reply(ctx, m, msg_of(T_PING, m->arg));
	return TR_OK;
}

static int counter_receive(tr_ctx *ctx, void *st, tr_msg *m)
{
	(void)ctx;
	(void)st;
	if (m->tag == T_COUNT)
		atomic_fetch_add_explicit(&B.done, 1, memory_order_relaxed);
	return TR_OK;
}

static const tr_actor_ops echo_ops = {.name = "echo", .size = 8, .receive = echo_receive};
static const tr_actor_ops counter_ops = {.name = "counter", .size = 8, .receive = counter_receive};

/* ---- node a ------------------------------------------------------------ */

static void ask_one(tr_ctx *ctx)
{
	if (tr_ask(ctx, B.target, msg_of(T_PING, tr_now_ns()), 10000, NULL) != TR_OK)
		atomic_fetch_add_explicit(&B.refused, 1, memory_order_relaxed);
}

static void stream(tr_ctx *ctx)
{
	for (unsigned i = 0; i < CHUNK; i++) {
		if (atomic_load_explicit(&B.stop, memory_order_relaxed))
			return;
		int rc = tr_send(ctx, B.target, msg_of(T_COUNT, 0));
		if (rc == TR_EREJECTED) {
			atomic_fetch_add_explicit(&B.refused, 1, memory_order_relaxed);
			(void)tr_timer_after(ctx, T_MORE, 1, NULL);
			return;
		}
	}
	(void)tr_send(ctx, tr_self(ctx), msg_of(T_MORE, 0));
}

static int driver_receive(tr_ctx *ctx, void *st, tr_msg *m)
{
	(void)st;
	if (m->tag == T_GO || m->tag == T_MORE) {
		if (B.mode == 1)
			stream(ctx);
		else
			for (int i = 0; m->tag == T_GO && i < B.inflight; i++)
				ask_one(ctx);
		return TR_OK;
	}
	if (m->tag == T_PING && (m->flags & TR_MSGF_REPLY)) {
		if (!(m->flags & TR_MSGF_ERROR)) {
			atomic_fetch_add_explicit(&B.done, 1, memory_order_relaxed);
			uint64_t k = atomic_fetch_add_explicit(&B.nsamples, 1, memory_order_relaxed);
			if (B.mode == 0 && k < MAX_SAMPLES)
				B.samples[k] = tr_now_ns() - m->arg;
		}
		if (!atomic_load_explicit(&B.stop, memory_order_relaxed))
			ask_one(ctx);
	} else if (m->flags & TR_MSGF_ERROR) {
		if (!atomic_load_explicit(&B.stop, memory_order_relaxed))
			ask_one(ctx);
	}
	return TR_OK;
}

static const tr_actor_ops driver_ops = {.name = "driver", .size = 8, .receive = driver_receive};

/* ---- setup ---------------------------------------------------------------- */

static int start(const char *name, uint32_t id, unsigned threads, const char *seed, tr_node **n,
                 tr_cluster **c)
{
	tr_node_opts no = {0};
	char err[256];
	const char *seeds[1] = {seed};
	no.threads = threads;
	no.node_id = id;
	if (tr_node_new(&no, n) != TR_OK || tr_node_start(*n) != TR_OK)
		return -1;
	tr_cluster_opts o = {0};
	o.name = name;
	o.node_id = id;
	o.listen = "tcp://127.0.0.1:0";
	o.seeds = seeds;
	o.nseeds = seed != NULL;
	o.secret = secret;
	o.secret_len = sizeof(secret) - 1;
	if (tr_cluster_start(*n, threads - 1, &o, c, err, sizeof(err)) != TR_OK) {
		fprintf(stderr, "cluster: %s\n", err);
		return -1;
	}
	return 0;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static void line(const char *bench, unsigned threads, double rate, const char *unit, double s)
{
	printf("peer=troupe bench=%s threads=%u rate=%.1f unit=%s seconds=%.3f\n", bench, threads,
	       rate, unit, s);
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: cluster pingpong|count|ask64 SECONDS THREADS\n");
		return 2;
	}
	const char *what = argv[1];
	double secs = atof(argv[2]);
	unsigned threads = (unsigned)atoi(argv[3]);
	if (secs <= 0 || threads < 1 || threads > 64) {
		fprintf(stderr, "cluster: bad SECONDS or THREADS\n");
		return 2;
	}
	B.mode = strcmp(what, "pingpong") == 0 ? 0 : strcmp(what, "count") == 0 ? 1
	       : strcmp(what, "ask64") == 0    ? 2
	                                       : -1;
	if (B.mode < 0) {
		fprintf(stderr, "cluster: unknown bench %s\n", what);
		return 2;
	}
	B.inflight = B.mode == 2 ? 64 : 1;
	if (B.mode == 0 && (B.samples = malloc(MAX_SAMPLES * sizeof(uint64_t))) == NULL)
		return 1;

	tr_node *na, *nb;
	tr_cluster *ca, *cb;
	char url[64];
	if (start("a", 1, threads, NULL, &na, &ca) != 0)
		return 1;
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", tr_cluster_port(ca));
	if (start("b", 2, threads, url, &nb, &cb) != 0)
		return 1;
	tr_spawn_opts so = {0};
	so.name = "target";
	so.mbox.mailbox = 65536;
	tr_ref dummy, driver;
	if (tr_node_spawn(nb, B.mode == 1 ? &counter_ops : &echo_ops, NULL, &so, &dummy) != TR_OK)
		return 1;
	uint64_t until = tr_now_ns() + 10000000000ull;
	while (tr_whereis_remote(na, "target", &B.target, 1) == 0) {
		if (tr_now_ns() > until) {
			fprintf(stderr, "cluster: the nodes did not find each other\n");
			return 1;
		}
		sleep_ms(5);
	}
	tr_spawn_opts d = {0};
	if (tr_node_spawn(na, &driver_ops, NULL, &d, &driver) != TR_OK)
		return 1;
	tr_msg *go = msg_of(T_GO, 0);
	uint64_t t0 = tr_now_ns();
	if (tr_node_send(na, driver, go) != TR_OK)
		return 1;
	/* Warm-up: the first 10 % is not counted. */
	sleep_ms((unsigned)(secs * 100));
	uint64_t d0 = atomic_load(&B.done), s0 = atomic_load(&B.nsamples);
	t0 = tr_now_ns();
	sleep_ms((unsigned)(secs * 1000));
	uint64_t d1 = atomic_load(&B.done), s1 = atomic_load(&B.nsamples);
	double el = (double)(tr_now_ns() - t0) / 1e9;
	atomic_store(&B.stop, 1);

	char name[64];
	snprintf(name, sizeof(name), "cluster_%s_tcp", what);
	line(name, threads, (double)(d1 - d0) / el, B.mode == 1 ? "msgs/s"
	                                          : B.mode == 0 ? "roundtrips/s"
	                                                        : "asks/s",
	     el);
	if (B.mode == 0 && s1 > s0) {
		uint64_t n = (s1 < MAX_SAMPLES ? s1 : MAX_SAMPLES) - s0;
		qsort(B.samples + s0, n, sizeof(uint64_t), cmp_u64);
		snprintf(name, sizeof(name), "cluster_%s_tcp_p50", what);
		line(name, threads, (double)B.samples[s0 + n / 2] / 1e3, "us", el);
		snprintf(name, sizeof(name), "cluster_%s_tcp_p99", what);
		line(name, threads, (double)B.samples[s0 + n * 99 / 100] / 1e3, "us", el);
	}
	const tr_cluster_stats *st = tr_cluster_stats_of(ca);
	fprintf(stderr, "# %s: %llu envelopes in %llu batches from a, %llu refused\n", what,
	        (unsigned long long)atomic_load(&st->msgs_out),
	        (unsigned long long)atomic_load(&st->batches_out),
	        (unsigned long long)atomic_load(&B.refused));
	sleep_ms(50);
	tr_cluster_leave(cb, 200);
	tr_cluster_leave(ca, 200);
	tr_node_shutdown(nb, 0);
	tr_node_shutdown(na, 0);
	tr_node_wait(nb);
	tr_node_wait(na);
	/* The handles are left to the exit: nng may still be closing. */
	return 0;
}
