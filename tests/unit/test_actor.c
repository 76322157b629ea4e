/*
 * test_actor.c -- actors: spawn, refs and generations, the registry,
 * ask/reply (timeouts, late replies, crashes), timers, links, monitors.
 */
#include "tt.h"
#include "tnode.h"

enum { KICK = 1, PING, PONG, TICK, LATE, CRASH, ASKED };

static tr_ref lookup(tr_ctx *ctx, const char *name)
{
	tr_ref r = TR_REF_NONE;
	(void)tr_whereis(tr_ctx_node(ctx), name, &r);
	return r;
}

/* ---- spawn, send, stale refs, registry ------------------------------ */

TT_TEST(spawn_send_receive)
{
	tr_node *n = tn_start(2);
	TT_ASSERT(n != NULL);
	probe_cfg c = {.id = 1};
	tr_ref r;
	TT_OK(tn_spawn(n, &c, "p", &r));
	TT_ASSERT(!tr_ref_is_none(r));
	for (int i = 0; i < 100; i++)
		TT_OK(tn_send(n, r, PING, (uint64_t)i));
	TT_ASSERT(ev_wait_tag(1, PING, 100, 5000));
	/* FIFO from one sender */
	uv_mutex_lock(&evlog.mu);
	for (int i = 0; i < 100; i++)
		TT_EQ(evlog.evs[i].arg, i);
	uv_mutex_unlock(&evlog.mu);
	tr_actor_stats st;
	TT_OK(tr_actor_stats_get(n, r, &st));
	TT_EQ(st.received, 100);
	TT_EQ(st.processed, 100);
	TT_STREQ(st.name, "p");
	TT_EQ(tn_stop(n), 0);
	TT_EQ(atomic_load(&probe_terminated), 1);
	TT_EQ(atomic_load(&probe_last_reason), TR_ESHUTDOWN);
}

static int stop_on_msg(tr_ctx *ctx, probe *p, tr_msg *m)
{
	(void)p;
	if (m->tag == KICK)
		tr_stop(ctx, TR_OK);
	return TR_OK;
}

struct deadwait {
	tr_node *n;
	tr_ref r;
};

static int is_dead(void *ud)
{
	struct deadwait *d = ud;
	tr_actor_stats st;
	return tr_actor_stats_get(d->n, d->r, &st) == TR_ENOACTOR;
}

TT_TEST(stale_refs_and_names)
{
	tr_node *n = tn_start(1);
	probe_cfg c = {.id = 1, .on_msg = stop_on_msg};
	tr_ref r1, r2, w;
	TT_OK(tn_spawn(n, &c, "svc", &r1));
	TT_RC(tn_spawn(n, &c, "svc", &r2), TR_EEXIST);
	TT_OK(tr_whereis(n, "svc", &w));
	TT_ASSERT(tr_ref_eq(w, r1));
	TT_OK(tn_send(n, r1, KICK, 0));
	struct deadwait d = {n, r1};
	TT_ASSERT(tn_wait(is_dead, &d, 5000));
	/* The name went with the actor; sends to the old ref fail. */
	TT_RC(tr_whereis(n, "svc", &w), TR_ENOTFOUND);
	TT_RC(tn_send(n, r1, PING, 0), TR_ENOACTOR);
	/* A new actor may reuse the slot, never the generation. */
	int reused = 0;
	for (int i = 0; i < 64; i++) {
		probe_cfg c2 = {.id = 2};
		TT_OK(tn_spawn(n, &c2, NULL, &r2));
		if (r2.idx == r1.idx) {
			reused = 1;
			TT_NE(r2.gen, r1.gen);
		}
	}
	TT_ASSERT(reused);
	TT_RC(tn_send(n, r1, PING, 0), TR_ENOACTOR);
	tr_node_stats ns;
	tr_node_stats_get(n, &ns);
	TT_LE(2, ns.dead_letters);
	TT_OK(tn_spawn(n, &c, "svc", &r2)); /* the name is free again */

	/* Aliases move atomically between live actors; the actor keeps its
	 * own name. */
	tr_ref r3;
	probe_cfg c3 = {.id = 3};
	TT_OK(tn_spawn(n, &c3, "svc2", &r3));
	TT_OK(tr_register_alias(n, "public", r2));
	TT_OK(tr_whereis(n, "public", &w));
	TT_ASSERT(tr_ref_eq(w, r2));
	TT_RC(tr_register(n, "public", r3), TR_EEXIST);
	TT_OK(tr_register_alias(n, "public", r3));
	TT_OK(tr_whereis(n, "public", &w));
	TT_ASSERT(tr_ref_eq(w, r3));
	TT_OK(tr_whereis(n, "svc2", &w));
	TT_ASSERT(tr_ref_eq(w, r3));
	tr_actor_stats st;
	TT_OK(tr_actor_stats_get(n, r3, &st));
	TT_ASSERT(strcmp(st.name, "svc2") == 0);
	TT_RC(tr_register_alias(n, "", r3), TR_EINVAL);
	TT_EQ(tn_stop(n), 0);
}

TT_TEST(init_failure)
{
	tr_node *n = tn_start(1);
	probe_cfg c = {.id = 1, .init_rc = TR_EINVAL};
	tr_ref r;
	TT_RC(tn_spawn(n, &c, "bad", &r), TR_EINVAL);
	TT_RC(tr_whereis(n, "bad", &r), TR_ENOTFOUND);
	tr_node_stats ns;
	tr_node_stats_get(n, &ns);
	TT_EQ(ns.actors, 0);
	TT_EQ(atomic_load(&probe_terminated), 0); /* terminate() is not run */
	TT_EQ(tn_stop(n), 0);
}

/* ---- ask / reply ----------------------------------------------------- */

/* "asker": on KICK asks "server" with timeout arg ms. */
static int asker_msg(tr_ctx *ctx, probe *p, tr_msg *m)
{
	if (m->tag == KICK) {
		tr_msg *q = tr_msg_new();
		q->tag = PING;
		q->arg = 7;
		uint64_t corr;
		int rc = tr_ask(ctx, lookup(ctx, "server"), q, m->arg, &corr);
		p->n = corr;
		tr_msg *r = tr_msg_new();
		r->tag = ASKED;
		r->err = rc;
		ev_push(p->cfg->id, r, 0);
		tr_msg_free(r);
	}
	return TR_OK;
}

/* "server" modes via ud: 0 reply at once, 1 reply after 100 ms (late),
 * 2 crash on the ask, 3 keep the ask and crash on a later CRASH. */
static int server_msg(tr_ctx *ctx, probe *p, tr_msg *m)
{
	intptr_t mode = (intptr_t)p->ud;
	if (m->tag == PING && (m->flags & TR_MSGF_ASK)) {
		if (mode == 0) {
			tr_msg *r = tr_msg_new();
			r->tag = PONG;
			r->arg = m->arg * 2;
			return tr_reply(ctx, m, r);
		}
		if (mode == 2)
			return TR_EFAILED;
		if (mode == 3)
			return TR_OK; /* owes the answer, and will crash before giving it */
		/* mode 1: keep it, answer after 100 ms */
		p->k = (uint64_t)(uintptr_t)tr_take(ctx);
		return tr_timer_after(ctx, LATE, 100, NULL);
	}
	if (m->tag == LATE && (m->flags & TR_MSGF_TIMER)) {
		tr_msg *req = (tr_msg *)(uintptr_t)p->k;
		tr_msg *r = tr_msg_new();
		r->tag = PONG;
		int rc = tr_reply(ctx, req, r);
		tr_msg_free(req);
		p->k = 0;
		return rc;
	}
	if (m->tag == CRASH)
		return TR_EFAILED;
	return TR_OK;
}

TT_TEST(ask_reply)
{
	tr_node *n = tn_start(2);
	probe_cfg sc = {.id = 2, .on_msg = server_msg, .ud = (void *)0};
	probe_cfg ac = {.id = 1, .on_msg = asker_msg};
	tr_ref s, a;
	TT_OK(tn_spawn(n, &sc, "server", &s));
	TT_OK(tn_spawn(n, &ac, "asker", &a));
	TT_OK(tn_send(n, a, KICK, 1000));
	TT_ASSERT(ev_wait_tag(1, PONG, 1, 5000));
	ev e;
	TT_ASSERT(ev_find(1, PONG, &e));
	TT_EQ(e.arg, 14);
	TT_ASSERT(e.flags & TR_MSGF_REPLY);
	TT_ASSERT(!(e.flags & TR_MSGF_ERROR));
	TT_ASSERT(tr_ref_eq(e.from, s));
	ev k;
	TT_ASSERT(ev_find(1, ASKED, &k));
	TT_EQ(k.err, TR_OK);
	TT_EQ(tn_stop(n), 0);
}

TT_TEST(ask_timeout_then_late_reply_dropped)
{
	tr_node *n = tn_start(2);
	probe_cfg sc = {.id = 2, .on_msg = server_msg, .ud = (void *)1};
	probe_cfg ac = {.id = 1, .on_msg = asker_msg};
	tr_ref s, a;
	TT_OK(tn_spawn(n, &sc, "server", &s));
	TT_OK(tn_spawn(n, &ac, "asker", &a));
	TT_OK(tn_send(n, a, KICK, 20)); /* 20 ms timeout, reply comes at 100 ms */
	TT_ASSERT(ev_wait_tag(1, TR_TAG_REPLY_ERR, 1, 5000));
	ev e;
	TT_ASSERT(ev_find(1, TR_TAG_REPLY_ERR, &e));
	TT_EQ(e.err, TR_ETIMEDOUT);
	TT_ASSERT(e.flags & TR_MSGF_ERROR);
	/* The late reply arrives and is dropped, not delivered. */
	tn_sleep_ms(250);
	TT_EQ(ev_count(1, PONG), 0);
	TT_EQ(ev_count(1, TR_TAG_REPLY_ERR), 1);
	tr_node_stats ns;
	tr_node_stats_get(n, &ns);
	TT_EQ(ns.late_replies, 1);
	TT_EQ(tn_stop(n), 0);
}

TT_TEST(ask_to_crashing_actor_errors_at_once)
{
	for (intptr_t mode = 2; mode <= 3; mode++) {
		tr_node *n = tn_start(2);
		probe_cfg sc = {.id = 2, .on_msg = server_msg, .ud = (void *)mode};
		probe_cfg ac = {.id = 1, .on_msg = asker_msg};
		tr_ref s, a;
		TT_OK(tn_spawn(n, &sc, "server", &s));
		TT_OK(tn_spawn(n, &ac, "asker", &a));
		uint64_t t0 = tr_now_ns();
		TT_OK(tn_send(n, a, KICK, 10000)); /* 10 s timeout: must not be what answers */
		if (mode == 3) {
			TT_ASSERT(ev_wait_tag(2, PING, 1, 5000));
			TT_OK(tn_send(n, s, CRASH, 0));
		}
		TT_ASSERT(ev_wait_tag(1, TR_TAG_REPLY_ERR, 1, 5000));
		TT_LE(tr_now_ns() - t0, 2000000000ull);
		ev e;
		TT_ASSERT(ev_find(1, TR_TAG_REPLY_ERR, &e));
		TT_EQ(e.err, TR_ECRASHED);
		TT_EQ(atomic_load(&probe_last_reason), TR_EFAILED);
		TT_EQ(tn_stop(n), 0);
	}
}

TT_TEST(ask_dead_ref_refused_synchronously)
{
	tr_node *n = tn_start(1);
	probe_cfg ac = {.id = 1, .on_msg = asker_msg};
	tr_ref a;
	TT_OK(tn_spawn(n, &ac, "asker", &a)); /* no "server" registered */
	TT_OK(tn_send(n, a, KICK, 1000));
	TT_ASSERT(ev_wait_tag(1, ASKED, 1, 5000));
	ev k;
	TT_ASSERT(ev_find(1, ASKED, &k));
	TT_EQ(k.err, TR_ENOACTOR);
	tn_sleep_ms(50);
	TT_EQ(ev_count(1, TR_TAG_REPLY_ERR), 0); /* no answer message follows */
	TT_EQ(tn_stop(n), 0);
}

/* ---- timers ---------------------------------------------------------- */

static int timer_msg(tr_ctx *ctx, probe *p, tr_msg *m)
{
	if (m->tag == KICK && m->arg == 1)
		return tr_timer_after(ctx, TICK, 10, NULL);
	if (m->tag == KICK && m->arg == 2)
		return tr_timer_every(ctx, TICK, 5, &p->k);
	if (m->tag == KICK && m->arg == 3)
		return tr_timer_cancel(ctx, p->k);
	return TR_OK;
}

TT_TEST(timers_once_every_cancel)
{
	tr_node *n = tn_start(2);
	probe_cfg c = {.id = 1, .on_msg = timer_msg};
	tr_ref r;
	TT_OK(tn_spawn(n, &c, NULL, &r));
	TT_OK(tn_send(n, r, KICK, 1));
	TT_ASSERT(ev_wait_tag(1, TICK, 1, 5000));
	tn_sleep_ms(60);
	TT_EQ(ev_count(1, TICK), 1); /* once means once */
	ev e;
	TT_ASSERT(ev_find(1, TICK, &e));
	TT_ASSERT(e.flags & TR_MSGF_TIMER);

	TT_OK(tn_send(n, r, KICK, 2));
	TT_ASSERT(ev_wait_tag(1, TICK, 6, 5000));
	TT_OK(tn_send(n, r, KICK, 3));
	TT_ASSERT(ev_wait_tag(1, KICK, 3, 5000));
	tn_sleep_ms(20);
	int after = ev_count(1, TICK);
	tn_sleep_ms(60);
	TT_EQ(ev_count(1, TICK), after); /* nothing after cancel */
	TT_EQ(tn_stop(n), 0);
}

/* A slow actor with a fast periodic timer: ticks coalesce, not pile up. */
static int slow_ticker(tr_ctx *ctx, probe *p, tr_msg *m)
{
	if (m->tag == KICK)
		return tr_timer_every(ctx, TICK, 1, &p->k);
	if (m->tag == TICK) {
		tn_sleep_ms(20);
		p->n += m->arg;
	}
	return TR_OK;
}

TT_TEST(periodic_timer_coalesces)
{
	tr_node *n = tn_start(2);
	probe_cfg c = {.id = 1, .on_msg = slow_ticker};
	tr_ref r;
	TT_OK(tn_spawn(n, &c, NULL, &r));
	TT_OK(tn_send(n, r, KICK, 0));
	TT_ASSERT(ev_wait_tag(1, TICK, 5, 5000));
	tr_actor_stats st;
	TT_OK(tr_actor_stats_get(n, r, &st));
	TT_LE(st.depth, 1); /* never more than one tick queued */
	ev e;
	int missed_seen = 0;
	uv_mutex_lock(&evlog.mu);
	for (int i = 0; i < atomic_load(&evlog.n); i++)
		if (evlog.evs[i].tag == TICK && evlog.evs[i].arg > 0)
			missed_seen = 1;
	uv_mutex_unlock(&evlog.mu);
	(void)e;
	TT_ASSERT(missed_seen);
	TT_EQ(tn_stop(n), 0);
}

/* ---- links and monitors -------------------------------------------- */

static int linker_msg(tr_ctx *ctx, probe *p, tr_msg *m)
{
	(void)p;
	if (m->tag == KICK)
		return tr_link(ctx, lookup(ctx, "b"));
	if (m->tag == PING) {
		uint64_t id;
		int rc = tr_monitor(ctx, lookup(ctx, "b"), &id);
		p->k = id;
		return rc;
	}
	return TR_OK;
}

static int crasher_msg(tr_ctx *ctx, probe *p, tr_msg *m)
{
	(void)p;
	if (m->tag == CRASH)
		return (int)m->arg; /* crash with that reason (or stop normally) */
	if (m->tag == KICK)
		tr_stop(ctx, TR_OK);
	return TR_OK;
}

TT_TEST(link_propagates_crash)
{
	tr_node *n = tn_start(2);
	probe_cfg ac = {.id = 1, .on_msg = linker_msg};
	probe_cfg bc = {.id = 2, .on_msg = crasher_msg};
	tr_ref a, b;
	TT_OK(tn_spawn(n, &bc, "b", &b));
	TT_OK(tn_spawn(n, &ac, "a", &a));
	TT_OK(tn_send(n, a, KICK, 0));
	TT_ASSERT(ev_wait_tag(1, KICK, 1, 5000));
	TT_OK(tn_send(n, b, CRASH, (uint64_t)(int64_t)TR_EFAILED));
	struct deadwait d = {n, a};
	TT_ASSERT(tn_wait(is_dead, &d, 5000)); /* a died with b */
	TT_EQ(atomic_load(&probe_last_reason), TR_EFAILED);
	TT_EQ(tn_stop(n), 0);
}

TT_TEST(link_trapped_and_normal_exit)
{
	tr_node *n = tn_start(2);
	probe_cfg ac = {.id = 1, .on_msg = linker_msg, .trap_exit = 1};
	probe_cfg bc = {.id = 2, .on_msg = crasher_msg};
	tr_ref a, b;
	TT_OK(tn_spawn(n, &bc, "b", &b));
	TT_OK(tn_spawn(n, &ac, "a", &a));
	TT_OK(tn_send(n, a, KICK, 0));
	TT_ASSERT(ev_wait_tag(1, KICK, 1, 5000));
	TT_OK(tn_send(n, b, CRASH, (uint64_t)(int64_t)TR_EFAILED));
	TT_ASSERT(ev_wait_tag(1, TR_TAG_EXIT, 1, 5000));
	ev e;
	TT_ASSERT(ev_find(1, TR_TAG_EXIT, &e));
	TT_EQ(e.err, TR_EFAILED);
	TT_ASSERT(tr_ref_eq(e.from, b));
	tr_actor_stats st;
	TT_OK(tr_actor_stats_get(n, a, &st)); /* a trapped it and lives */

	/* Untrapped link, normal exit: the survivor lives on. */
	probe_cfg cc = {.id = 3, .on_msg = linker_msg};
	tr_ref c, b2;
	TT_OK(tn_spawn(n, &bc, "b", &b2));
	TT_OK(tn_spawn(n, &cc, "c", &c));
	TT_OK(tn_send(n, c, KICK, 0));
	TT_ASSERT(ev_wait_tag(3, KICK, 1, 5000));
	TT_OK(tn_send(n, b2, KICK, 0)); /* normal stop */
	struct deadwait d = {n, b2};
	TT_ASSERT(tn_wait(is_dead, &d, 5000));
	tn_sleep_ms(30);
	TT_OK(tr_actor_stats_get(n, c, &st));
	TT_EQ(tn_stop(n), 0);
}

TT_TEST(monitor_down)
{
	tr_node *n = tn_start(2);
	probe_cfg ac = {.id = 1, .on_msg = linker_msg};
	probe_cfg bc = {.id = 2, .on_msg = crasher_msg};
	tr_ref a, b;
	TT_OK(tn_spawn(n, &bc, "b", &b));
	TT_OK(tn_spawn(n, &ac, "a", &a));
	TT_OK(tn_send(n, a, PING, 0)); /* monitor b */
	TT_ASSERT(ev_wait_tag(1, PING, 1, 5000));
	tn_sleep_ms(10);
	TT_OK(tn_send(n, b, CRASH, (uint64_t)(int64_t)TR_ETIMEDOUT));
	TT_ASSERT(ev_wait_tag(1, TR_TAG_DOWN, 1, 5000));
	ev e;
	TT_ASSERT(ev_find(1, TR_TAG_DOWN, &e));
	TT_EQ(e.err, TR_ETIMEDOUT);
	TT_EQ(e.corr, 1); /* the monitor id */
	TT_ASSERT(tr_ref_eq(e.from, b));
	tr_actor_stats st;
	TT_OK(tr_actor_stats_get(n, a, &st)); /* monitors do not kill */
	/* Monitoring a dead actor: DOWN at once with TR_ENOACTOR. */
	TT_OK(tn_send(n, a, PING, 0));
	TT_ASSERT(ev_wait_tag(1, TR_TAG_DOWN, 2, 5000));
	int noproc = 0;
	uv_mutex_lock(&evlog.mu);
	for (int i = 0; i < atomic_load(&evlog.n); i++)
		if (evlog.evs[i].tag == TR_TAG_DOWN && evlog.evs[i].err == TR_ENOACTOR)
			noproc = 1;
	uv_mutex_unlock(&evlog.mu);
	TT_ASSERT(noproc);
	TT_EQ(tn_stop(n), 0);
}

TT_TEST(exit_signal_kill)
{
	tr_node *n = tn_start(1);
	probe_cfg bc = {.id = 2, .trap_exit = 1};
	tr_ref b;
	TT_OK(tn_spawn(n, &bc, "b", &b));
	/* An EXIT from outside with TR_EKILLED cannot be trapped. */
	tr_msg *m = tr_msg_new();
	m->tag = TR_TAG_EXIT;
	m->flags = TR_MSGF_SYSTEM;
	m->err = TR_EKILLED;
	TT_OK(tr_node_send(n, b, m));
	struct deadwait d = {n, b};
	TT_ASSERT(tn_wait(is_dead, &d, 5000));
	TT_EQ(atomic_load(&probe_last_reason), TR_EKILLED);
	TT_EQ(tn_stop(n), 0);
}

TT_LIST = {
	TT_ENTRY(spawn_send_receive),
	TT_ENTRY(stale_refs_and_names),
	TT_ENTRY(init_failure),
	TT_ENTRY(ask_reply),
	TT_ENTRY(ask_timeout_then_late_reply_dropped),
	TT_ENTRY(ask_to_crashing_actor_errors_at_once),
	TT_ENTRY(ask_dead_ref_refused_synchronously),
	TT_ENTRY(timers_once_every_cancel),
	TT_ENTRY(periodic_timer_coalesces),
	TT_ENTRY(link_propagates_crash),
	TT_ENTRY(link_trapped_and_normal_exit),
	TT_ENTRY(monitor_down),
	TT_ENTRY(exit_signal_kill),
	TT_END,
};

TT_MAIN()
