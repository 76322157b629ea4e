/*
 * test_mbox.c -- bounded mailboxes: every overflow policy under contention
 * from two sender threads, block-policy wake-ups (no busy retry), system
 * messages that jump the queue and are never dropped, watermarks and the
 * pressure signal, and asks refused or evicted by a full mailbox.
 */
#include <stdlib.h>

#include "tt.h"
#include "tnode.h"

enum { GATE = 1, DATA, KICK, ASKED };

/* A probe whose first GATE message holds its worker until `gate` opens,
 * so its mailbox fills while senders keep going. */
static atomic_int gate;

static int gated_msg(tr_ctx *ctx, probe *p, tr_msg *m)
{
	(void)ctx;
	(void)p;
	if (m->tag == GATE)
		while (!atomic_load(&gate))
			tn_sleep_ms(1);
	return TR_OK;
}

typedef struct sender_arg {
	tr_node *n;
	tr_ref to;
	int id, count;
	int ok, full, rejected, dropped, other;
} sender_arg;

static void sender_thread(void *p)
{
	sender_arg *s = p;
	for (int i = 0; i < s->count; i++) {
		tr_msg *m = tr_msg_new();
		m->tag = DATA;
		m->arg = ((uint64_t)s->id << 32) | (uint64_t)i;
		switch (tr_node_send(s->n, s->to, m)) {
		case TR_OK: s->ok++; break;
		case TR_EFULL: s->full++; break;
		case TR_EREJECTED: s->rejected++; break;
		case TR_EDROPPED: s->dropped++; break;
		default: s->other++; break;
		}
	}
}

struct gated_run {
	int cap;
	sender_arg s[2];
	tr_actor_stats st;
	tr_ref r;
	tr_node *n;
};

/* Fills a gated actor of `policy` from two threads, returns counts. */
static int run_gated(int policy, int cap, int per_thread, struct gated_run *g)
{
	g->n = tn_start(2);
	if (g->n == NULL)
		return -1;
	atomic_store(&gate, 0);
	static probe_cfg c = {.id = 1, .on_msg = gated_msg};
	tr_spawn_opts o = {0};
	o.mbox.mailbox = (uint32_t)cap;
	o.mbox.overflow = (uint8_t)policy;
	if (tr_node_spawn(g->n, &probe_ops, &c, &o, &g->r) != TR_OK)
		return -1;
	if (tn_send(g->n, g->r, GATE, 0) != TR_OK || !ev_wait_tag(1, GATE, 1, 5000))
		return -1;
	uv_thread_t t[2];
	for (int i = 0; i < 2; i++) {
		g->s[i] = (sender_arg){.n = g->n, .to = g->r, .id = i, .count = per_thread};
		uv_thread_create(&t[i], sender_thread, &g->s[i]);
	}
	for (int i = 0; i < 2; i++)
		uv_thread_join(&t[i]);
	if (tr_actor_stats_get(g->n, g->r, &g->st) != TR_OK)
		return -1;
	g->cap = cap;
	return 0;
}

TT_TEST(policy_reject_two_threads)
{
	struct gated_run g;
	int per = tn_quick() ? 2000 : 20000;
	TT_EQ(run_gated(TR_OVERFLOW_REJECT, 64, per, &g), 0);
	int ok = g.s[0].ok + g.s[1].ok, rej = g.s[0].rejected + g.s[1].rejected;
	TT_EQ(ok + rej, 2 * per);
	TT_EQ(g.s[0].other + g.s[1].other + g.s[0].full + g.s[1].full, 0);
	/* The GATE message being processed holds its slot until the turn
	 * ends, so exactly capacity - 1 data messages got in. */
	TT_EQ(ok, 63);
	TT_EQ(g.st.rejected, rej);   /* every refusal counted */
	TT_EQ(g.st.depth, 64);
	TT_LE(g.st.max_depth, 64);
	atomic_store(&gate, 1);
	TT_ASSERT(ev_wait_tag(1, DATA, ok, 5000));
	tn_sleep_ms(20);
	TT_EQ(ev_count(1, DATA), ok);
	TT_EQ(tn_stop(g.n), 0);
}

TT_TEST(policy_drop_newest_two_threads)
{
	struct gated_run g;
	int per = tn_quick() ? 2000 : 20000;
	TT_EQ(run_gated(TR_OVERFLOW_DROP_NEWEST, 100, per, &g), 0);
	int ok = g.s[0].ok + g.s[1].ok, drop = g.s[0].dropped + g.s[1].dropped;
	TT_EQ(ok, 99); /* capacity - the GATE message in process */
	TT_EQ(ok + drop, 2 * per);
	TT_EQ(g.st.dropped, drop);
	atomic_store(&gate, 1);
	TT_ASSERT(ev_wait_tag(1, DATA, ok, 5000));
	tn_sleep_ms(20);
	TT_EQ(ev_count(1, DATA), ok);
	TT_EQ(tn_stop(g.n), 0);
}

TT_TEST(policy_drop_oldest_two_threads)
{
	struct gated_run g;
	int per = tn_quick() ? 2000 : 20000;
	TT_EQ(run_gated(TR_OVERFLOW_DROP_OLDEST, 50, per, &g), 0);
	TT_EQ(g.s[0].ok + g.s[1].ok, 2 * per); /* every send accepted */
	TT_EQ(g.st.dropped, 2 * per - 49);       /* and the oldest evicted */
	TT_LE(g.st.max_depth, 50);
	atomic_store(&gate, 1);
	TT_ASSERT(ev_wait_tag(1, DATA, 49, 5000));
	tn_sleep_ms(20);
	TT_EQ(ev_count(1, DATA), 49);
	/* What survived is, for each sender, a contiguous run of its newest
	 * messages, in order (whichever sender finished last keeps most). */
	int k[2] = {0, 0};
	uint64_t lo[2] = {UINT64_MAX, UINT64_MAX}, hi[2] = {0, 0};
	int ordered = 1;
	uv_mutex_lock(&evlog.mu);
	for (int i = 0; i < atomic_load(&evlog.n); i++) {
		ev *e = &evlog.evs[i];
		if (e->tag != DATA)
			continue;
		int id = (int)(e->arg >> 32);
		uint64_t seq = e->arg & 0xffffffffu;
		if (k[id] > 0 && seq <= hi[id])
			ordered = 0;
		k[id]++;
		if (seq < lo[id])
			lo[id] = seq;
		hi[id] = seq;
	}
	uv_mutex_unlock(&evlog.mu);
	TT_ASSERT(ordered);
	for (int id = 0; id < 2; id++) {
		if (k[id] == 0)
			continue;
		TT_EQ(hi[id], (uint64_t)per - 1);
		TT_EQ(hi[id] - lo[id] + 1, (uint64_t)k[id]);
	}
	TT_EQ(tn_stop(g.n), 0);
}

TT_TEST(policy_block_two_threads)
{
	struct gated_run g;
	int per = tn_quick() ? 2000 : 20000;
	TT_EQ(run_gated(TR_OVERFLOW_BLOCK, 32, per, &g), 0);
	int ok = g.s[0].ok + g.s[1].ok, full = g.s[0].full + g.s[1].full;
	TT_EQ(ok, 31);
	TT_EQ(ok + full, 2 * per);
	TT_EQ(g.st.rejected, full);
	atomic_store(&gate, 1);
	TT_ASSERT(ev_wait_tag(1, DATA, 31, 5000));
	TT_EQ(tn_stop(g.n), 0);
}

/* ---- block: an actor sender is woken once per refusal ---------------- */

static atomic_int full_seen, writable_seen, producer_done;

/* Sends `total` messages to "sink" as fast as the sink allows. Never
 * retries without a TR_TAG_WRITABLE in between. */
static int producer_msg(tr_ctx *ctx, probe *p, tr_msg *m)
{
	if (m->tag == TR_TAG_WRITABLE)
		atomic_fetch_add(&writable_seen, 1);
	if (m->tag != KICK && m->tag != TR_TAG_WRITABLE)
		return TR_OK;
	if (m->tag == KICK)
		p->k = m->arg;
	tr_ref sink;
	if (tr_whereis(tr_ctx_node(ctx), "sink", &sink) != TR_OK)
		return TR_EFAILED;
	while (p->n < p->k) {
		int rc = tr_send_u64(ctx, sink, DATA, p->n);
		if (rc == TR_EFULL) {
			atomic_fetch_add(&full_seen, 1);
			return TR_OK; /* wait for TR_TAG_WRITABLE */
		}
		if (rc != TR_OK)
			return rc;
		p->n++;
	}
	atomic_store(&producer_done, 1);
	return TR_OK;
}

static int slow_sink(tr_ctx *ctx, probe *p, tr_msg *m)
{
	(void)ctx;
	if (m->tag == DATA) {
		if (m->arg != p->n)
			return TR_EFAILED; /* lost or reordered */
		p->n++;
		if ((p->n & 127) == 0)
			tn_sleep_ms(1);
	}
	return TR_OK;
}

TT_TEST(block_wakes_sender_once)
{
	tr_node *n = tn_start(2);
	atomic_store(&full_seen, 0);
	atomic_store(&writable_seen, 0);
	atomic_store(&producer_done, 0);
	probe_cfg sc = {.id = 2, .on_msg = slow_sink};
	probe_cfg pc = {.id = 1, .on_msg = producer_msg};
	tr_spawn_opts o = {0};
	o.name = "sink";
	o.mbox.mailbox = 64;
	o.mbox.overflow = TR_OVERFLOW_BLOCK;
	tr_ref s, p;
	TT_OK(tr_node_spawn(n, &probe_ops, &sc, &o, &s));
	TT_OK(tn_spawn(n, &pc, "producer", &p));
	int total = tn_quick() ? 5000 : 50000;
	TT_OK(tn_send(n, p, KICK, (uint64_t)total));
	TT_ASSERT(ev_wait_tag(2, DATA, total, 20000));
	TT_EQ(atomic_load(&producer_done), 1);
	TT_LE(1, atomic_load(&full_seen)); /* it really was throttled */
	TT_EQ(atomic_load(&writable_seen), atomic_load(&full_seen));
	tr_actor_stats st;
	TT_OK(tr_actor_stats_get(n, s, &st));
	TT_LE(st.max_depth, 64); /* memory stayed bounded */
	TT_EQ(st.processed, (uint64_t)total);
	TT_EQ(tn_stop(n), 0);
}

/* ---- system messages --------------------------------------------------- */

TT_TEST(system_messages_jump_queue_never_dropped)
{
	tr_node *n = tn_start(2);
	atomic_store(&gate, 0);
	probe_cfg c = {.id = 1, .on_msg = gated_msg, .trap_exit = 1};
	tr_spawn_opts o = {0};
	o.mbox.mailbox = 8;
	o.mbox.overflow = TR_OVERFLOW_REJECT;
	tr_ref r;
	TT_OK(tr_node_spawn(n, &probe_ops, &c, &o, &r));
	TT_OK(tn_send(n, r, GATE, 0));
	TT_ASSERT(ev_wait_tag(1, GATE, 1, 5000));
	for (int i = 0; i < 7; i++) /* + the GATE in process = 8 */
		TT_OK(tn_send(n, r, DATA, (uint64_t)i));
	TT_RC(tn_send(n, r, DATA, 99), TR_EREJECTED);
	for (int i = 0; i < 20; i++) {
		tr_msg *m = tr_msg_new();
		m->tag = TR_TAG_EXIT; /* trapped: delivered as a message */
		m->flags = TR_MSGF_SYSTEM;
		m->err = TR_OK;
		TT_OK(tr_node_send(n, r, m));
	}
	atomic_store(&gate, 1);
	TT_ASSERT(ev_wait(1 + 20 + 7, 5000));
	uv_mutex_lock(&evlog.mu);
	for (int i = 1; i <= 20; i++)
		TT_EQ(evlog.evs[i].tag, TR_TAG_EXIT); /* all before the queued data */
	TT_EQ(evlog.evs[21].tag, DATA);
	uv_mutex_unlock(&evlog.mu);
	TT_EQ(tn_stop(n), 0);
}

/* ---- watermarks ------------------------------------------------------- */

static int watcher_msg(tr_ctx *ctx, probe *p, tr_msg *m)
{
	(void)p;
	if (m->tag == KICK) {
		tr_ref t;
		if (tr_whereis(tr_ctx_node(ctx), "target", &t) != TR_OK)
			return TR_EFAILED;
		return tr_pressure_watch(ctx, t);
	}
	return TR_OK;
}

TT_TEST(watermarks_raise_and_clear_pressure)
{
	tr_node *n = tn_start(2);
	atomic_store(&gate, 0);
	probe_cfg tc = {.id = 1, .on_msg = gated_msg};
	probe_cfg wc = {.id = 2, .on_msg = watcher_msg};
	tr_spawn_opts o = {0};
	o.name = "target";
	o.mbox.mailbox = 100;
	o.mbox.hiwat = 80;
	o.mbox.lowat = 20;
	o.mbox.overflow = TR_OVERFLOW_REJECT;
	tr_ref t, w;
	TT_OK(tr_node_spawn(n, &probe_ops, &tc, &o, &t));
	TT_OK(tn_spawn(n, &wc, "watcher", &w));
	TT_OK(tn_send(n, w, KICK, 0));
	TT_ASSERT(ev_wait_tag(2, KICK, 1, 5000));
	TT_OK(tn_send(n, t, GATE, 0));
	TT_ASSERT(ev_wait_tag(1, GATE, 1, 5000));
	for (int i = 0; i < 78; i++) /* + the GATE in process = 79 */
		TT_OK(tn_send(n, t, DATA, 0));
	tr_actor_stats st;
	TT_OK(tr_actor_stats_get(n, t, &st));
	TT_EQ(st.pressure, 0);
	TT_OK(tn_send(n, t, DATA, 0)); /* the 80th: hiwat */
	TT_OK(tr_actor_stats_get(n, t, &st));
	TT_EQ(st.pressure, 1);
	TT_ASSERT(ev_wait_tag(2, TR_TAG_PRESSURE, 1, 5000));
	ev e;
	TT_ASSERT(ev_find(2, TR_TAG_PRESSURE, &e));
	TT_EQ(e.arg, 1);
	atomic_store(&gate, 1);
	TT_ASSERT(ev_wait_tag(2, TR_TAG_PRESSURE, 2, 5000));
	uv_mutex_lock(&evlog.mu);
	int cleared = 0;
	for (int i = 0; i < atomic_load(&evlog.n); i++)
		if (evlog.evs[i].who == 2 && evlog.evs[i].tag == TR_TAG_PRESSURE && evlog.evs[i].arg == 0)
			cleared = 1;
	uv_mutex_unlock(&evlog.mu);
	TT_ASSERT(cleared);
	TT_OK(tr_actor_stats_get(n, t, &st));
	TT_EQ(st.pressure, 0);
	TT_EQ(tn_stop(n), 0);
}

/* ---- asks against full mailboxes -------------------------------------- */

static int ask_full_msg(tr_ctx *ctx, probe *p, tr_msg *m)
{
	(void)p;
	if (m->tag != KICK)
		return TR_OK;
	tr_ref t;
	if (tr_whereis(tr_ctx_node(ctx), "target", &t) != TR_OK)
		return TR_EFAILED;
	tr_msg *q = tr_msg_new();
	q->tag = DATA;
	int rc = tr_ask(ctx, t, q, 0, NULL);
	tr_msg *r = tr_msg_new();
	r->tag = ASKED;
	r->err = rc;
	ev_push(1, r, 0);
	tr_msg_free(r);
	return TR_OK;
}

TT_TEST(asks_refused_or_evicted_get_answers)
{
	for (int policy = TR_OVERFLOW_DROP_OLDEST; policy <= TR_OVERFLOW_REJECT; policy++) {
		tr_node *n = tn_start(2);
		atomic_store(&gate, 0);
		probe_cfg tc = {.id = 2, .on_msg = gated_msg};
		probe_cfg ac = {.id = 1, .on_msg = ask_full_msg};
		tr_spawn_opts o = {0};
		o.name = "target";
		o.mbox.mailbox = 4;
		o.mbox.overflow = (uint8_t)policy;
		tr_ref t, a;
		TT_OK(tr_node_spawn(n, &probe_ops, &tc, &o, &t));
		TT_OK(tn_spawn(n, &ac, "asker", &a));
		TT_OK(tn_send(n, t, GATE, 0));
		TT_ASSERT(ev_wait_tag(2, GATE, 1, 5000));
		TT_OK(tn_send(n, a, KICK, 0)); /* the ask gets in (depth 1) */
		TT_ASSERT(ev_wait_tag(1, ASKED, 1, 5000));
		for (int i = 0; i < 4; i++)
			(void)tn_send(n, t, DATA, 0);
		if (policy == TR_OVERFLOW_DROP_OLDEST) {
			/* the ask was the oldest: evicted, and answered */
			TT_ASSERT(ev_wait_tag(1, TR_TAG_REPLY_ERR, 1, 5000));
			ev e;
			TT_ASSERT(ev_find(1, TR_TAG_REPLY_ERR, &e));
			TT_EQ(e.err, TR_EDROPPED);
		} else {
			/* mailbox full now: a second ask is refused synchronously */
			TT_OK(tn_send(n, a, KICK, 0));
			TT_ASSERT(ev_wait_tag(1, ASKED, 2, 5000));
			int want = policy == TR_OVERFLOW_REJECT ? TR_EREJECTED : TR_EDROPPED;
			int seen = 0;
			uv_mutex_lock(&evlog.mu);
			for (int i = 0; i < atomic_load(&evlog.n); i++)
				if (evlog.evs[i].tag == ASKED && evlog.evs[i].err == want)
					seen = 1;
			uv_mutex_unlock(&evlog.mu);
			TT_ASSERT(seen);
		}
		atomic_store(&gate, 1);
		/* The stop answers the first ask (queued, never replied). */
		TT_EQ(tn_stop(n), 0);
	}
}

TT_LIST = {
	TT_ENTRY(policy_reject_two_threads),
	TT_ENTRY(policy_drop_newest_two_threads),
	TT_ENTRY(policy_drop_oldest_two_threads),
	TT_ENTRY(policy_block_two_threads),
	TT_ENTRY(block_wakes_sender_once),
	TT_ENTRY(system_messages_jump_queue_never_dropped),
	TT_ENTRY(watermarks_raise_and_clear_pressure),
	TT_ENTRY(asks_refused_or_evicted_get_answers),
	TT_END,
};

TT_MAIN()
