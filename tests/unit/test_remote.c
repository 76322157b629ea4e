/*
 * test_remote.c -- location transparency over the cluster's data plane
 * (cluster/remote.c): actors on two nodes in one process (and one node
 * in a child process that is killed with SIGKILL), on loopback TCP.
 *
 * Checked: names another node publishes are found (exact and "#<k>"
 * instances, not prefixes); asks to a remote actor are answered, in
 * number and content; 200 000 sends arrive all and in order, in fewer
 * nng messages than envelopes (batching); a monitor of a remote actor
 * gets DOWN with its crash reason; an ask to a dead remote ref gets
 * TR_ENOACTOR; a full remote mailbox answers TR_EREJECTED (overload) and
 * every ask is answered; when a node is killed, the asks pending on it
 * fail with TR_ENODEDOWN and monitors get DOWN within down_after plus a
 * margin (printed), its names disappear and new asks are refused at
 * once; garbage and forged batches on the data port are counted and
 * dropped while the link keeps working; a member's first batch that
 * comes before its up frame starts the data link instead of being lost.
 */
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <troupe/troupe.h>

#include "cluster/cluster.h"
#include "tt.h"
#include "tnode.h"
#include "tcluster.h"

/* nng 1.5.2 loses messages queued on a pipe that closes (nng #1713);
 * the kill case does that on purpose. */
__attribute__((visibility("default"), used)) const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
	return "leak:libnng.so\n";
}

#define HB_US 100000u
#define SUSPECT_US 300000u
#define DOWN_US 600000u

static const unsigned char secret[] = "a cluster secret for the tests";

enum { T_GO_ASK = 10, T_GO_SEND, T_GO_MON, T_GO_ASK_SLOW, T_GO_ASK_HOLD, T_GO_ASK_DEAD,
       T_ECHO, T_COUNT, T_CRASH, T_SLOW, T_RESUME };

#define N_SENDS 200000u
#define SEND_CHUNK 2000u

/* What the client on n1 knows and reports. */
static struct {
	tr_ref echo, counter, slow, hold;
	atomic_int sync_err;      /* first synchronous error of an ask or send */
	atomic_uint counted;      /* T_COUNT messages seen by the counter */
	atomic_int out_of_order;
	atomic_uint echo_sum_ok;  /* replies whose arg was the ask's + 1000 */
	atomic_uint refusals;     /* sends the link refused (sent again) */
} S;

typedef struct cnode {
	tr_node *n;
	tr_cluster *c;
	char url[64];
} cnode;

static int cn_start(cnode *cn, const char *name, uint32_t id, const char *seed)
{
	const char *seeds[1] = {seed};
	memset(cn, 0, sizeof(*cn));
	tr_cluster_opts o = tc_opts(name, id, seeds, secret, sizeof(secret) - 1);
	o.heartbeat_us = HB_US;
	o.suspect_after_us = SUSPECT_US;
	o.down_after_us = DOWN_US;
	return tc_start(&o, 2, 1, &cn->n, &cn->c, cn->url, sizeof(cn->url));
}

static void cn_stop(cnode *cn)
{
	if (cn->n == NULL)
		return;
	tr_cluster_leave(cn->c, 300);
	tc_stop(cn->n, cn->c);
	cn->n = NULL;
}

static void note_err(int rc)
{
	int zero = 0;
	if (rc != TR_OK)
		atomic_compare_exchange_strong(&S.sync_err, &zero, rc);
}

static tr_msg *msg_of(uint32_t tag, uint64_t arg)
{
	tr_msg *m = tr_msg_new();
	if (m != NULL) {
		m->tag = tag;
		m->arg = arg;
	}
	return m;
}

/* ---- actors --------------------------------------------------------------- */

/* n1's client: does what T_GO_* say; its replies land in the event log. */
static int client_fn(tr_ctx *ctx, probe *p, tr_msg *m)
{
	switch (m->tag) {
	case T_GO_ASK:
		for (uint64_t i = 0; i < m->arg; i++)
			note_err(tr_ask(ctx, S.echo, msg_of(T_ECHO, i), 5000, NULL));
		break;
	case T_GO_SEND:
		p->k = m->arg;
		/* fall through */
	case T_RESUME: {
		/* In chunks; when the link refuses (TR_EREJECTED: the
		 * cluster's bounded queue is full), again 1 ms later. */
		for (unsigned i = 0; i < SEND_CHUNK && p->k > 0; i++) {
			int rc = tr_send(ctx, S.counter, msg_of(T_COUNT, p->n));
			if (rc == TR_EREJECTED) {
				atomic_fetch_add(&S.refusals, 1);
				note_err(tr_timer_after(ctx, T_RESUME, 1, NULL));
				return TR_OK;
			}
			note_err(rc);
			p->n++;
			p->k--;
		}
		if (p->k > 0)
			note_err(tr_send(ctx, tr_self(ctx), msg_of(T_RESUME, 0)));
		break;
	}
	case T_GO_MON:
		note_err(tr_monitor(ctx, m->arg ? S.hold : S.echo, NULL));
		break;
	case T_GO_ASK_SLOW:
		for (uint64_t i = 0; i < m->arg; i++)
			note_err(tr_ask(ctx, S.slow, msg_of(T_SLOW, i), 5000, NULL));
		break;
	case T_GO_ASK_HOLD:
		for (uint64_t i = 0; i < m->arg; i++)
			note_err(tr_ask(ctx, S.hold, msg_of(T_SLOW, i), 20000, NULL));
		break;
	case T_GO_ASK_DEAD: {
		/* The synchronous result is what the test wants here. */
		int rc = tr_ask(ctx, S.hold, msg_of(T_SLOW, 0), 1000, NULL);
		atomic_store(&S.sync_err, rc);
		break;
	}
	case T_ECHO:
		if ((m->flags & TR_MSGF_REPLY) && !(m->flags & TR_MSGF_ERROR) && m->arg >= 1000)
			atomic_fetch_add(&S.echo_sum_ok, 1);
		break;
	default:
		break;
	}
	return TR_OK;
}

static int echo_fn(tr_ctx *ctx, probe *p, tr_msg *m)
{
	(void)p;
	if (m->tag == T_CRASH)
		return TR_EFAILED;
	if (m->tag == T_ECHO && (m->flags & TR_MSGF_ASK))
		return tr_reply(ctx, m, msg_of(T_ECHO, m->arg + 1000));
	return TR_OK;
}

static int counter_fn(tr_ctx *ctx, probe *p, tr_msg *m)
{
	(void)ctx;
	if (m->tag != T_COUNT)
		return TR_OK;
	if (m->arg != p->n)
		atomic_store(&S.out_of_order, 1);
	p->n++;
	atomic_fetch_add(&S.counted, 1);
	return TR_OK;
}

/* Takes its time over the first message, so its mailbox of 2 fills. */
static int slow_fn(tr_ctx *ctx, probe *p, tr_msg *m)
{
	if (p->n++ == 0)
		tn_sleep_ms(300);
	if (m->flags & TR_MSGF_ASK)
		return tr_reply(ctx, m, msg_of(T_SLOW, m->arg));
	return TR_OK;
}

/* Keeps every ask and never answers (until its node dies). */
static int hold_fn(tr_ctx *ctx, probe *p, tr_msg *m)
{
	(void)p;
	if (m->flags & TR_MSGF_ASK)
		(void)tr_take(ctx); /* leaked on purpose: the process is killed */
	return TR_OK;
}

static const probe_cfg client_cfg = {.id = 1, .on_msg = client_fn};
static const probe_cfg echo_cfg = {.id = 2, .on_msg = echo_fn};
static const probe_cfg counter_cfg = {.id = 3, .on_msg = counter_fn};
static const probe_cfg slow_cfg = {.id = 4, .on_msg = slow_fn};
static const probe_cfg hold_cfg = {.id = 5, .on_msg = hold_fn};
static const probe_cfg plain_cfg = {.id = 6};

/* ---- helpers ---------------------------------------------------------------- */

struct find {
	tr_node *n;
	const char *name;
	size_t want;
	tr_ref ref;
};

static int found_(void *ud)
{
	struct find *f = ud;
	tr_ref v[8];
	size_t k = tr_whereis_remote(f->n, f->name, v, 8);
	if (k > 0)
		f->ref = v[0];
	return k == f->want;
}

static int find_remote(tr_node *n, const char *name, size_t want, tr_ref *out, unsigned ms)
{
	struct find f = {n, name, want, TR_REF_NONE};
	int ok = tn_wait(found_, &f, ms);
	if (out != NULL)
		*out = f.ref;
	return ok;
}

/* Replies (or error replies with `err`, 0 = not errors) the client got. */
static int replies(uint32_t tag, int err)
{
	int c = 0;
	uv_mutex_lock(&evlog.mu);
	for (int i = 0; i < atomic_load(&evlog.n); i++) {
		const ev *e = &evlog.evs[i];
		if (e->who != 1 || !(e->flags & TR_MSGF_REPLY))
			continue;
		if (err == 0 ? (e->tag == tag && !(e->flags & TR_MSGF_ERROR))
		             : ((e->flags & TR_MSGF_ERROR) && e->err == err))
			c++;
	}
	uv_mutex_unlock(&evlog.mu);
	return c;
}

struct nrep {
	uint32_t tag;
	int err, n;
};

static int nrep_(void *ud)
{
	struct nrep *w = ud;
	return replies(w->tag, w->err) >= w->n;
}

static int wait_replies(uint32_t tag, int err, int n, unsigned ms)
{
	struct nrep w = {tag, err, n};
	return tn_wait(nrep_, &w, ms);
}

/* All answers to the client: replies and error replies. */
static int answers(void)
{
	int c = 0;
	uv_mutex_lock(&evlog.mu);
	for (int i = 0; i < atomic_load(&evlog.n); i++)
		if (evlog.evs[i].who == 1 && (evlog.evs[i].flags & TR_MSGF_REPLY))
			c++;
	uv_mutex_unlock(&evlog.mu);
	return c;
}

static int counted_(void *ud)
{
	return atomic_load(&S.counted) >= *(unsigned *)ud;
}

static double ms_since(uint64_t t0)
{
	return (double)(tr_now_ns() - t0) / 1e6;
}

/* ---- scenarios ---------------------------------------------------------------- */

static void sc_basic(int *tt_failed)
{
	cnode a, b;
	tr_ref client, dummy;
	memset(&S, 0, sizeof(S));
	ev_reset();
	TT_ASSERT(cn_start(&a, "n1", 1, NULL) == 0);
	TT_ASSERT(cn_start(&b, "n2", 2, a.url) == 0);
	TT_ASSERT(tn_spawn(b.n, &echo_cfg, "echo", &dummy) == TR_OK);
	TT_ASSERT(tn_spawn(b.n, &counter_cfg, "counter", &dummy) == TR_OK);
	TT_ASSERT(tn_spawn(b.n, &plain_cfg, "svc#0", &dummy) == TR_OK);
	TT_ASSERT(tn_spawn(b.n, &plain_cfg, "svc#1", &dummy) == TR_OK);
	TT_ASSERT(tn_spawn(b.n, &plain_cfg, "svcx", &dummy) == TR_OK);
	TT_ASSERT(tn_spawn(b.n, &plain_cfg, "svc#1@3", &dummy) == TR_OK);
	tr_spawn_opts so = {0};
	so.name = "slow";
	so.mbox.mailbox = 2;
	so.mbox.overflow = TR_OVERFLOW_REJECT;
	TT_ASSERT(tr_node_spawn(b.n, &probe_ops, &slow_cfg, &so, &dummy) == TR_OK);
	TT_ASSERT(tn_spawn(a.n, &client_cfg, "client", &client) == TR_OK);

	/* Names: published by n2, found from n1. */
	uint64_t t0 = tr_now_ns();
	TT_ASSERT(find_remote(a.n, "echo", 1, &S.echo, 5000));
	printf("  n2's names seen on n1 after %.0f ms\n", ms_since(t0));
	TT_ASSERT(S.echo.node == 2);
	TT_ASSERT(find_remote(a.n, "counter", 1, &S.counter, 2000));
	TT_ASSERT(find_remote(a.n, "slow", 1, &S.slow, 2000));
	TT_ASSERT(find_remote(a.n, "svc", 2, NULL, 2000)); /* svc#0, svc#1: not svcx, not @3 */
	TT_ASSERT(find_remote(a.n, "sv", 0, NULL, 10));
	TT_ASSERT(find_remote(a.n, "nobody", 0, NULL, 10));

	/* Asks. */
	TT_ASSERT(tn_send(a.n, client, T_GO_ASK, 1000) == TR_OK);
	TT_ASSERT(wait_replies(T_ECHO, 0, 1000, 10000));
	TT_EQ(atomic_load(&S.echo_sum_ok), 1000);
	TT_EQ(atomic_load(&S.sync_err), 0);

	/* Sends: all, in order, batched. */
	uint64_t batches0 = ST(a.c, batches_out), msgs0 = ST(a.c, msgs_out);
	unsigned want = N_SENDS;
	t0 = tr_now_ns();
	TT_ASSERT(tn_send(a.n, client, T_GO_SEND, N_SENDS) == TR_OK);
	int all = tn_wait(counted_, &want, 30000);
	double ms = ms_since(t0);
	if (!all)
		fprintf(stderr, "  counted %u of %u; sync error %s; refused %llu, out %llu, in %llu\n",
		        atomic_load(&S.counted), N_SENDS, tr_err_name(atomic_load(&S.sync_err)),
		        (unsigned long long)ST(a.c, remote_refused),
		        (unsigned long long)ST(a.c, msgs_out), (unsigned long long)ST(b.c, msgs_in));
	TT_ASSERT(all);
	uint64_t batches = ST(a.c, batches_out) - batches0, msgs = ST(a.c, msgs_out) - msgs0;
	printf("  %u sends in %.0f ms (%.0f msgs/s), %llu envelopes in %llu batches, "
	       "%u refused and sent again\n", N_SENDS, ms, N_SENDS / (ms / 1e3),
	       (unsigned long long)msgs, (unsigned long long)batches, atomic_load(&S.refusals));
	TT_EQ(atomic_load(&S.counted), N_SENDS);
	TT_EQ(atomic_load(&S.out_of_order), 0);
	TT_EQ(atomic_load(&S.sync_err), 0);
	TT_ASSERT(batches > 0 && batches * 4 < msgs);

	/* Overload: a full remote mailbox refuses, every ask is answered. */
	ev_reset();
	int before = answers();
	TT_ASSERT(tn_send(a.n, client, T_GO_ASK_SLOW, 20) == TR_OK);
	uint64_t until = tr_now_ns() + 5000000000ull;
	while (answers() < before + 20 && tr_now_ns() < until)
		tn_sleep_ms(5);
	int rejected = replies(0, TR_EREJECTED), ok = replies(T_SLOW, 0);
	printf("  20 asks to a remote mailbox of 2: %d answered, %d rejected\n", ok, rejected);
	TT_EQ(answers() - before, 20);
	TT_ASSERT(rejected >= 1 && ok >= 1 && ok + rejected == 20);

	/* Remote monitor: the crash reason arrives as DOWN. */
	TT_ASSERT(tn_send(a.n, client, T_GO_MON, 0) == TR_OK);
	tn_sleep_ms(100); /* the MONITOR envelope goes first */
	TT_ASSERT(tn_send(b.n, S.echo, T_CRASH, 0) == TR_OK);
	TT_ASSERT(ev_wait_tag(1, TR_TAG_DOWN, 1, 5000));
	ev d;
	TT_ASSERT(ev_find(1, TR_TAG_DOWN, &d));
	TT_EQ(d.err, TR_EFAILED);
	TT_ASSERT(tr_ref_eq(d.from, S.echo));

	/* A dead remote ref: TR_ENOACTOR comes back. */
	TT_ASSERT(tn_send(a.n, client, T_GO_ASK, 1) == TR_OK);
	TT_ASSERT(wait_replies(0, TR_ENOACTOR, 1, 5000));
	TT_ASSERT(find_remote(a.n, "echo", 0, NULL, 3000)); /* its name went with it */
	printf("  refused %llu, undelivered on n2 %llu, bad batches %llu\n",
	       (unsigned long long)ST(a.c, remote_refused),
	       (unsigned long long)ST(b.c, remote_undelivered),
	       (unsigned long long)ST(b.c, bad_batches));
	TT_EQ(ST(a.c, bad_batches) + ST(b.c, bad_batches), 0);
	cn_stop(&b);
	cn_stop(&a);
}

/* n2 in a child process: started, reports its port, waits to be killed. */
static pid_t start_victim(const char *seed, int *port)
{
	int fds[2];
	if (pipe(fds) != 0)
		return -1;
	fflush(stdout);
	fflush(stderr);
	pid_t pid = fork();
	if (pid == 0) {
		cnode b;
		tr_ref r;
		close(fds[0]);
		int p = -1;
		if (cn_start(&b, "victim", 3, seed) == 0 && tn_spawn(b.n, &hold_cfg, "hold", &r) == TR_OK)
			p = tr_cluster_port(b.c);
		if (write(fds[1], &p, sizeof(p)) != (ssize_t)sizeof(p))
			_exit(1);
		for (;;)
			pause();
	}
	close(fds[1]);
	*port = -1;
	if (pid > 0 && read(fds[0], port, sizeof(*port)) != (ssize_t)sizeof(*port))
		*port = -1;
	close(fds[0]);
	return pid;
}

static void sc_node_down(int *tt_failed)
{
	cnode a;
	tr_ref client;
	int port;
	char vurl[64];
	memset(&S, 0, sizeof(S));
	ev_reset();
	/* The victim first: nng must not be running in a process that forks
	 * ("nng is not fork-reentrant safe"). */
	pid_t pid = start_victim(NULL, &port);
	TT_ASSERT(pid > 0);
	if (port < 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		TT_ASSERT(port >= 0);
	}
	snprintf(vurl, sizeof(vurl), "tcp://127.0.0.1:%d", port);
	TT_ASSERT(cn_start(&a, "n1", 1, vurl) == 0);
	TT_ASSERT(tn_spawn(a.n, &client_cfg, "client", &client) == TR_OK);
	int found = find_remote(a.n, "hold", 1, &S.hold, 5000);
	if (!found) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		TT_ASSERT(found);
	}
	TT_ASSERT(tn_send(a.n, client, T_GO_MON, 1) == TR_OK);
	TT_ASSERT(tn_send(a.n, client, T_GO_ASK_HOLD, 50) == TR_OK);
	tn_sleep_ms(300); /* all carried and held */
	TT_EQ(answers(), 0);
	uint64_t t0 = tr_now_ns();
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	int all = wait_replies(0, TR_ENODEDOWN, 50, 5000);
	double ms = ms_since(t0);
	printf("  victim killed: %d of 50 pending asks failed with node_down after %.0f ms "
	       "(down_after %u ms)\n", replies(0, TR_ENODEDOWN), ms, DOWN_US / 1000);
	TT_ASSERT(all);
	TT_ASSERT(ms < DOWN_US / 1000.0 + 1500.0);
	TT_ASSERT(ev_wait_tag(1, TR_TAG_DOWN, 1, 2000));
	ev d;
	TT_ASSERT(ev_find(1, TR_TAG_DOWN, &d));
	TT_EQ(d.err, TR_ENODEDOWN);
	TT_ASSERT(find_remote(a.n, "hold", 0, NULL, 10));
	TT_ASSERT(tn_send(a.n, client, T_GO_ASK_DEAD, 0) == TR_OK);
	tn_sleep_ms(100);
	TT_EQ(atomic_load(&S.sync_err), TR_ENODEDOWN);
	TT_EQ(answers(), 50);
	TT_ASSERT(ST(a.c, remote_failed) >= 51);
	cn_stop(&a);
}

/* ---- hostile bytes on the data port ---------------------------------------------- */

static int connect_url(const char *url)
{
	const char *colon = strrchr(url, ':');
	if (colon == NULL)
		return -1;
	struct sockaddr_in sa = {0};
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)atoi(colon + 1));
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

/* An SP push peer's handshake, then one frame with `body`. */
static int send_frame(const char *url, const unsigned char *body, size_t n)
{
	unsigned char hs[8] = {0x00, 'S', 'P', 0x00, 0x00, 0x50, 0x00, 0x00};
	unsigned char len[8];
	int fd = connect_url(url);
	if (fd < 0)
		return -1;
	for (int i = 0; i < 8; i++)
		len[i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
	int ok = write(fd, hs, 8) == 8 && write(fd, len, 8) == 8 &&
	         write(fd, body, n) == (ssize_t)n;
	tn_sleep_ms(100);
	close(fd);
	return ok ? 0 : -1;
}

struct grew {
	const tr_cluster *c;
	uint64_t from;
};

static int grew_(void *ud)
{
	struct grew *g = ud;
	return ST(g->c, bad_batches) > g->from;
}

static void sc_garbage(int *tt_failed)
{
	cnode a, b;
	tr_ref client, dummy;
	tr_cluster_member v[8];
	char durl[160] = "";
	memset(&S, 0, sizeof(S));
	ev_reset();
	TT_ASSERT(cn_start(&a, "n1", 1, NULL) == 0);
	TT_ASSERT(cn_start(&b, "n2", 2, a.url) == 0);
	TT_ASSERT(tn_spawn(b.n, &echo_cfg, "echo", &dummy) == TR_OK);
	TT_ASSERT(tn_spawn(a.n, &client_cfg, "client", &client) == TR_OK);
	TT_ASSERT(find_remote(a.n, "echo", 1, &S.echo, 5000));
	size_t nv = tr_cluster_view(a.c, v, 8);
	for (size_t i = 0; i < nv; i++)
		if (strcmp(v[i].name, "n2") == 0)
			snprintf(durl, sizeof(durl), "%s", v[i].data);
	TT_ASSERT(durl[0] != '\0');
	printf("  n2's data listener: %s\n", durl);

	/* Not a batch at all. */
	struct grew g = {b.c, ST(b.c, bad_batches)};
	TT_ASSERT(send_frame(durl, (const unsigned char *)"hello, troupe", 13) == 0);
	TT_ASSERT(tn_wait(grew_, &g, 3000));
	/* A batch that claims to be from n1, with a made-up token. */
	unsigned char forged[64] = {'T', 'R', 'B', 1, 0, 0, 0, 1};
	memset(forged + 8, 0xab, 16);
	forged[27] = 1; /* count 1 */
	g.from = ST(b.c, bad_batches);
	TT_ASSERT(send_frame(durl, forged, sizeof(forged)) == 0);
	TT_ASSERT(tn_wait(grew_, &g, 3000));
	printf("  bad batches counted on n2: %llu\n", (unsigned long long)ST(b.c, bad_batches));
	/* The real link still works. */
	TT_ASSERT(tn_send(a.n, client, T_GO_ASK, 10) == TR_OK);
	TT_ASSERT(wait_replies(T_ECHO, 0, 10, 5000));
	cn_stop(&b);
	cn_stop(&a);
}

/* n1's first batch reaches n2 before the up frame n1 sent on the
 * membership link (the race CI met once under ASan: the batch was dropped
 * as from an unknown sender). n2 is made to ignore up frames for its data
 * link, so the only way the link starts is from that batch. */
static void sc_late_up(int *tt_failed)
{
	cnode a, b;
	tr_ref client, dummy, seen;
	memset(&S, 0, sizeof(S));
	ev_reset();
	tr__cluster_test_late_up(2);
	TT_ASSERT(cn_start(&a, "n1", 1, NULL) == 0);
	TT_ASSERT(tn_spawn(a.n, &client_cfg, "client", &client) == TR_OK);
	TT_ASSERT(cn_start(&b, "n2", 2, a.url) == 0);
	TT_ASSERT(tn_spawn(b.n, &echo_cfg, "echo", &dummy) == TR_OK);
	/* Both ways: n1's names on n2 (its batch was taken), n2's on n1
	 * (n2 started its own data link from that batch). */
	uint64_t t0 = tr_now_ns();
	TT_ASSERT(find_remote(b.n, "client", 1, &seen, 5000));
	TT_ASSERT(tr_ref_eq(seen, client));
	TT_ASSERT(find_remote(a.n, "echo", 1, &S.echo, 5000));
	printf("  names seen both ways after %.0f ms, n2 ignoring up frames\n", ms_since(t0));
	TT_ASSERT(tn_send(a.n, client, T_GO_ASK, 10) == TR_OK);
	TT_ASSERT(wait_replies(T_ECHO, 0, 10, 5000));
	TT_EQ(ST(a.c, bad_batches) + ST(b.c, bad_batches), 0);
	cn_stop(&b);
	cn_stop(&a);
	tr__cluster_test_late_up(0);
}

TT_TEST(basic)
{
	tc_in_child(sc_basic, "basic", tt_failed);
}

TT_TEST(node_down)
{
	tc_in_child(sc_node_down, "node_down", tt_failed);
}

TT_TEST(garbage)
{
	tc_in_child(sc_garbage, "garbage", tt_failed);
}

TT_TEST(late_up)
{
	tc_in_child(sc_late_up, "late_up", tt_failed);
}

TT_LIST = {
	TT_ENTRY(basic),
	TT_ENTRY(node_down),
	TT_ENTRY(garbage),
	TT_ENTRY(late_up),
	TT_END,
};

TT_MAIN()
