/*
 * bench/nngfloor.c -- what nng alone costs for one message at a time
 * each way, the floor under troupe's remote ask (bench/cluster runs it
 * next to build/bench/cluster pingpong).
 *
 *   nngfloor stream|pushpull SECONDS
 *
 * stream:   one nng_stream over tcp loopback (nng's transport layer, no
 *           SP protocol above it): 64 bytes sent, echoed back whole.
 * pushpull: two push/pull pairs over tcp loopback, one each way, as the
 *           cluster's data plane uses them: a 64-byte message sent,
 *           echoed back on the other pair.
 *
 * Both ends live in this process. Receives are aio callbacks, each
 * arming the next receive and then sending (as nngbench drives nng). A
 * send completes inside the call, with no completion task, as the
 * cluster's try_send does: push/pull by nng_sendmsg NNG_FLAG_NONBLOCK,
 * the stream by a callback-less aio waited for in place (64 bytes on a
 * loopback socket with room are written inside nng_stream_send).
 * The echo runs in nng's callback, so there is no hand-off to any other
 * thread: an actor runtime adds at least one per direction (from nng's
 * thread to the worker that runs the target), which is why these are
 * floors. One round trip at a time; the first 10 % of SECONDS is not
 * counted.
 *
 * Prints, in the peers' format (threads = the CPUs this process may run
 * on, as nngbench counts them; set them with taskset):
 *   peer=nng bench=floor_<stream|pushpull>_tcp_64B      roundtrips/s
 *   peer=nng bench=floor_<stream|pushpull>_tcp_64B_p50  us (and _p99)
 */
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nng/nng.h>
#include <nng/protocol/pipeline0/pull.h>
#include <nng/protocol/pipeline0/push.h>
#include <nng/supplemental/util/platform.h>

#define SIZE 64
#define MAX_SAMPLES (4u * 1024u * 1024u)

#define CHECK(expr)                                                                      \
	do {                                                                             \
		int rv_ = (expr);                                                        \
		if (rv_ != 0) {                                                          \
			fprintf(stderr, "nngfloor: %s: %s\n", #expr, nng_strerror(rv_)); \
			exit(1);                                                         \
		}                                                                        \
	} while (0)

/* One end. Stream mode: s, with buf receiving into `got` bytes so far
 * (a stream may deliver a message in pieces) and out what it sends.
 * Push/pull mode: in, out. tx (stream only) has no callback. */
typedef struct end {
	int client;
	nng_stream *s;
	nng_socket in, out;
	nng_aio *rx, *tx;
	unsigned char buf[SIZE], obuf[SIZE];
	size_t got;
} end;

static struct {
	end a, b;           /* a measures, b echoes */
	int stream;
	uint64_t t0;        /* when a sent the round trip in flight */
	uint64_t *samples;  /* ns per round trip; owned here, freed at exit */
	atomic_ulong n;
	atomic_int stop;
} F;

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void stream_recv(end *e)
{
	nng_iov iov = {e->buf + e->got, SIZE - e->got};
	CHECK(nng_aio_set_iov(e->rx, 1, &iov));
	nng_stream_recv(e->s, e->rx);
}

/* 64 bytes on a loopback socket with room: written inside the call. */
static void stream_send(end *e)
{
	nng_iov iov = {e->obuf, SIZE};
	CHECK(nng_aio_set_iov(e->tx, 1, &iov));
	nng_stream_send(e->s, e->tx);
	nng_aio_wait(e->tx);
	CHECK(nng_aio_result(e->tx));
}

/* As the cluster's try_send: a non-blocking send into a socket with a
 * queue of 8 (its SENDBUF), which one message at a time never fills. */
static void msg_send(end *e)
{
	nng_msg *m;
	CHECK(nng_msg_alloc(&m, SIZE));
	memset(nng_msg_body(m), 0x5a, SIZE);
	int rv = nng_sendmsg(e->out, m, NNG_FLAG_NONBLOCK);
	if (rv != 0) {
		nng_msg_free(m);
		if (!atomic_load_explicit(&F.stop, memory_order_relaxed))
			CHECK(rv); /* a full queue would stall the round trips */
	}
}

/* A round trip came back to a (or a ping to b): count it, send the next. */
static void arrived(end *e)
{
	if (e->client) {
		uint64_t t = now_ns();
		unsigned long k = atomic_fetch_add_explicit(&F.n, 1, memory_order_relaxed);
		if (k < MAX_SAMPLES)
			F.samples[k] = t - F.t0;
		if (atomic_load_explicit(&F.stop, memory_order_relaxed))
			return;
		F.t0 = now_ns();
	}
	if (F.stream)
		stream_send(e);
	else
		msg_send(e);
}

static void rx_cb(void *arg)
{
	end *e = arg;
	if (nng_aio_result(e->rx) != 0)
		return; /* closed at exit */
	if (F.stream) {
		e->got += nng_aio_count(e->rx);
		if (e->got < SIZE) {
			stream_recv(e);
			return;
		}
		memcpy(e->obuf, e->buf, SIZE); /* before buf is armed again */
		e->got = 0;
		stream_recv(e);
	} else {
		nng_msg_free(nng_aio_get_msg(e->rx));
		nng_recv_aio(e->in, e->rx);
	}
	arrived(e);
}

static void setup_stream(void)
{
	nng_stream_listener *l;
	nng_stream_dialer *d;
	nng_aio *la, *da;
	char url[64];
	int port;
	CHECK(nng_stream_listener_alloc(&l, "tcp://127.0.0.1:0"));
	CHECK(nng_stream_listener_listen(l));
	CHECK(nng_stream_listener_get_int(l, NNG_OPT_TCP_BOUND_PORT, &port));
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", port);
	CHECK(nng_stream_dialer_alloc(&d, url));
	CHECK(nng_aio_alloc(&la, NULL, NULL));
	CHECK(nng_aio_alloc(&da, NULL, NULL));
	nng_stream_listener_accept(l, la);
	nng_stream_dialer_dial(d, da);
	nng_aio_wait(la);
	nng_aio_wait(da);
	CHECK(nng_aio_result(la));
	CHECK(nng_aio_result(da));
	F.b.s = nng_aio_get_output(la, 0);
	F.a.s = nng_aio_get_output(da, 0);
	/* As nng's own tcp transport sets it. */
	CHECK(nng_stream_set_bool(F.a.s, NNG_OPT_TCP_NODELAY, true));
	CHECK(nng_stream_set_bool(F.b.s, NNG_OPT_TCP_NODELAY, true));
}

/* from's push dials to's pull. */
static void pair_up(end *from, end *to)
{
	char url[64];
	nng_listener l;
	int port;
	CHECK(nng_pull0_open(&to->in));
	CHECK(nng_push0_open(&from->out));
	CHECK(nng_socket_set_int(from->out, NNG_OPT_SENDBUF, 8));
	CHECK(nng_listen(to->in, "tcp://127.0.0.1:0", &l, 0));
	CHECK(nng_listener_get_int(l, NNG_OPT_TCP_BOUND_PORT, &port));
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", port);
	CHECK(nng_dial(from->out, url, NULL, 0));
}

static int cmp_u64(const void *x, const void *y)
{
	uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
	return a < b ? -1 : a > b;
}

int main(int argc, char **argv)
{
	if (argc != 3 || (strcmp(argv[1], "stream") != 0 && strcmp(argv[1], "pushpull") != 0) ||
	    atof(argv[2]) <= 0) {
		fprintf(stderr, "usage: nngfloor stream|pushpull SECONDS\n");
		return 2;
	}
	double secs = atof(argv[2]);
	F.stream = strcmp(argv[1], "stream") == 0;
	F.a.client = 1;
	if ((F.samples = malloc(MAX_SAMPLES * sizeof(uint64_t))) == NULL)
		return 1;
	if (F.stream) {
		setup_stream();
	} else {
		pair_up(&F.a, &F.b);
		pair_up(&F.b, &F.a);
		nng_msleep(100); /* both dials connected */
	}
	end *ends[2] = {&F.a, &F.b};
	for (int i = 0; i < 2; i++) {
		CHECK(nng_aio_alloc(&ends[i]->rx, rx_cb, ends[i]));
		if (F.stream)
			CHECK(nng_aio_alloc(&ends[i]->tx, NULL, NULL));
		if (F.stream)
			stream_recv(ends[i]);
		else
			nng_recv_aio(ends[i]->in, ends[i]->rx);
	}
	F.t0 = now_ns();
	if (F.stream)
		stream_send(&F.a);
	else
		msg_send(&F.a);
	nng_msleep((nng_duration)(secs * 100));
	unsigned long s0 = atomic_load(&F.n);
	uint64_t w0 = now_ns();
	nng_msleep((nng_duration)(secs * 1000));
	unsigned long s1 = atomic_load(&F.n);
	double el = (double)(now_ns() - w0) / 1e9;
	atomic_store(&F.stop, 1);
	nng_msleep(50); /* the round trip in flight ends */
	if (s1 > MAX_SAMPLES)
		s1 = MAX_SAMPLES;
	if (s1 <= s0) {
		fprintf(stderr, "nngfloor: no round trip completed\n");
		return 1;
	}
	cpu_set_t cpus;
	int threads = sched_getaffinity(0, sizeof(cpus), &cpus) == 0 ? CPU_COUNT(&cpus) : 0;
	unsigned long k = s1 - s0;
	qsort(F.samples + s0, k, sizeof(uint64_t), cmp_u64);
	const char *name = F.stream ? "floor_stream_tcp_64B" : "floor_pushpull_tcp_64B";
	printf("peer=nng bench=%s threads=%d rate=%.1f unit=roundtrips/s seconds=%.3f\n", name,
	       threads, (double)k / el, el);
	printf("peer=nng bench=%s_p50 threads=%d rate=%.1f unit=us seconds=%.3f\n", name, threads,
	       (double)F.samples[s0 + k / 2] / 1e3, el);
	printf("peer=nng bench=%s_p99 threads=%d rate=%.1f unit=us seconds=%.3f\n", name, threads,
	       (double)F.samples[s0 + k * 99 / 100] / 1e3, el);
	/* The sockets and streams are left to the exit (as nngbench does):
	 * closing them could meet nng 1.5.2's close hang (#1543). */
	return 0;
}
