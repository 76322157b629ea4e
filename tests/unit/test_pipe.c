/*
 * test_pipe.c -- the pipeline engine on a real node, with real C step
 * actors: linear steps, retries with backoff, retry_on, deadlines clipping
 * timeouts, fallback, route, parallel joins, taps that drop without
 * slowing runs, max_inflight refusals, block-policy backpressure with
 * every run answered, and placed actors (least in flight, node_down).
 *
 * Configs are built in C here so the engine is tested on its own; the Lua
 * loader has its own tests (test_lua) and the two meet in the node tests.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>
#include <troupe/troupe.h>

#include "msg/msg_int.h"
#include "lua/tlua.h" /* TR_TAG_STEP */
#include "pipe/engine.h"
#include "pipe/mp.h"
#include "tt.h"
#include "tnode.h"

/* ---- step actors ---------------------------------------------------- */

/* Replies with the message plus {<its name>: attempt}. */
static int echo_receive(tr_ctx *ctx, void *st, tr_msg *m)
{
	const char *name = *(const char **)st;
	tr_buf add, out;
	msgpack_packer pk;
	tr_msg *rep;
	if (!(m->flags & TR_MSGF_ASK) || m->tag != TR_TAG_STEP)
		return TR_OK;
	tr_buf_init(&add);
	tr_buf_init(&out);
	tr__mp_packer(&pk, &add);
	msgpack_pack_map(&pk, 1);
	tr__mp_pack_cstr(&pk, name);
	msgpack_pack_uint32(&pk, m->attempt);
	if (tr__mp_map_merge(m->body->data, m->body->len, add.data, add.len, &out) != TR_OK)
		return TR_ENOMEM;
	rep = tr_msg_new();
	rep->body = tr_body_new(out.data, out.len);
	tr_buf_free(&add);
	tr_buf_free(&out);
	return tr_reply(ctx, m, rep);
}

static int named_init(tr_ctx *ctx, void *st, const void *arg)
{
	*(const char **)st = arg;
	return TR_OK;
}

static const tr_actor_ops echo_ops = {.name = "echo", .size = 64, .init = named_init,
                                      .receive = echo_receive};

/* Fails (error reply) while flaky_fails > 0, then echoes. */
static atomic_int flaky_fails;
static int flaky_receive(tr_ctx *ctx, void *st, tr_msg *m)
{
	if ((m->flags & TR_MSGF_ASK) && atomic_fetch_sub(&flaky_fails, 1) > 0)
		return tr_reply_error(ctx, m, TR_EFAILED);
	return echo_receive(ctx, st, m);
}
static const tr_actor_ops flaky_ops = {.name = "flaky", .size = 64, .init = named_init,
                                       .receive = flaky_receive};

/* Crashes on every step request. */
static atomic_int crashes;
static int crash_receive(tr_ctx *ctx, void *st, tr_msg *m)
{
	if (m->flags & TR_MSGF_ASK) {
		atomic_fetch_add(&crashes, 1);
		return TR_EFAILED;
	}
	return TR_OK;
}
static const tr_actor_ops crash_ops = {.name = "crash", .size = 64, .init = named_init,
                                       .receive = crash_receive};

/* Answers each request after slow_ms, holding it meanwhile. */
static atomic_int slow_ms;
typedef struct slow_st {
	const char *name;
	tr_msg *held[1024]; /* more than any test has in flight: EBUSY would be a test bug */
	uint64_t ids[1024];
} slow_st;
static int slow_receive(tr_ctx *ctx, void *st, tr_msg *m)
{
	slow_st *s = st;
	if ((m->flags & TR_MSGF_ASK) && m->tag == TR_TAG_STEP) {
		for (int i = 0; i < 1024; i++) {
			if (s->held[i] == NULL) {
				s->held[i] = tr_take(ctx);
				return tr_timer_after(ctx, 7, (uint64_t)atomic_load(&slow_ms), &s->ids[i]);
			}
		}
		return tr_reply_error(ctx, m, TR_EBUSY);
	}
	if (m->flags & TR_MSGF_TIMER) {
		for (int i = 0; i < 1024; i++) {
			if (s->held[i] != NULL && s->ids[i] == m->corr) {
				tr_msg *req = s->held[i];
				s->held[i] = NULL;
				int rc = echo_receive(ctx, s, req);
				tr_msg_free(req);
				return rc;
			}
		}
	}
	return TR_OK;
}
static void slow_terminate(tr_ctx *ctx, void *st, int reason)
{
	slow_st *s = st;
	for (int i = 0; i < 1024; i++)
		tr_msg_free(s->held[i]);
}
static const tr_actor_ops slow_ops = {.name = "slow", .size = sizeof(slow_st),
                                      .init = named_init, .receive = slow_receive,
                                      .terminate = slow_terminate};

/* Answers every step with TR_ENODEDOWN, as the cluster does for asks
 * pending on a node that went down. */
static int down_receive(tr_ctx *ctx, void *st, tr_msg *m)
{
	return (m->flags & TR_MSGF_ASK) ? tr_reply_error(ctx, m, TR_ENODEDOWN) : TR_OK;
}
static const tr_actor_ops down_ops = {.name = "down", .size = 64, .init = named_init,
                                      .receive = down_receive};

/* Counts what it receives. */
static atomic_int tap_events;
static int tap_receive(tr_ctx *ctx, void *st, tr_msg *m)
{
	if (m->tag == TR_TAG_STEP)
		atomic_fetch_add(&tap_events, 1);
	return TR_OK;
}
static const tr_actor_ops tap_ops = {.name = "tap", .size = 64, .init = named_init,
                                     .receive = tap_receive};

/* ---- the client: asks the engine, logs answers ---------------------- */

enum { KICK = 1 };

static tr_ref engine_ref;
static unsigned char run_input[256];
static size_t run_input_len;
static uv_mutex_t last_mu;
static tr_buf last_body; /* body of the latest answer */

static int client_msg(tr_ctx *ctx, probe *p, tr_msg *m)
{
	if (m->tag == KICK) {
		for (uint64_t i = 0; i < m->arg; i++) {
			tr_msg *q = tr_msg_new();
			q->tag = TR_TAG_RUN;
			q->body = tr_body_new(run_input, run_input_len);
			int rc = tr_ask(ctx, engine_ref, q, 0, NULL);
			if (rc != TR_OK)
				return rc;
		}
	} else if ((m->flags & TR_MSGF_REPLY) && m->body != NULL) {
		uv_mutex_lock(&last_mu);
		last_body.len = 0;
		tr__buf_append(&last_body, m->body->data, m->body->len);
		uv_mutex_unlock(&last_mu);
	}
	return TR_OK;
}

/* msgpack {"text": "hi", "intent": <intent>} */
static void set_input(const char *intent)
{
	tr_buf b;
	msgpack_packer pk;
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	msgpack_pack_map(&pk, intent ? 2 : 1);
	tr__mp_pack_cstr(&pk, "text");
	tr__mp_pack_cstr(&pk, "hi");
	if (intent) {
		tr__mp_pack_cstr(&pk, "intent");
		tr__mp_pack_cstr(&pk, intent);
	}
	memcpy(run_input, b.data, b.len);
	run_input_len = b.len;
	tr_buf_free(&b);
}

/* Whether the last answer has key `k` (and, if v != NULL, str value v). */
static int last_has(const char *k, const char *v)
{
	const unsigned char *p;
	size_t n, sn;
	const char *s;
	int ok;
	uv_mutex_lock(&last_mu);
	ok = tr__mp_map_get(last_body.data, last_body.len, k, &p, &n) == TR_OK;
	if (ok && v != NULL)
		ok = tr__mp_str(p, n, &s, &sn) == TR_OK && sn == strlen(v) && !memcmp(s, v, sn);
	uv_mutex_unlock(&last_mu);
	return ok;
}

static uint64_t last_uint(const char *k)
{
	const unsigned char *p;
	size_t n;
	uint64_t v = UINT64_MAX;
	uv_mutex_lock(&last_mu);
	if (tr__mp_map_get(last_body.data, last_body.len, k, &p, &n) == TR_OK) {
		if (p[0] <= 0x7f)
			v = p[0];
		else if (p[0] == 0xcc)
			v = p[1];
		else if (p[0] == 0xcd)
			v = ((uint64_t)p[1] << 8) | p[2];
	}
	uv_mutex_unlock(&last_mu);
	return v;
}

/* ---- configs built in C ---------------------------------------------- */

static tr_config cfg;
static tr_actor_spec actors[16];
static tr_pipeline_spec pspec;

static tr_step call(const char *actor, uint64_t timeout_ms, uint32_t retries)
{
	tr_step s;
	memset(&s, 0, sizeof(s));
	s.kind = TR_STEP_CALL;
	s.when_fn = -1;
	s.u.call.actor = (char *)actor;
	s.u.call.timeout_us = timeout_ms * 1000;
	s.u.call.retries = retries;
	s.u.call.retry_on = TR_RETRY_DEFAULT | TR_RETRY_ERROR;
	s.u.call.backoff = (tr_backoff){1000, 20000, true};
	return s;
}

static tr_step_list list(tr_step *v, size_t n)
{
	return (tr_step_list){v, n};
}

typedef struct spawn_def {
	const char *name;
	const tr_actor_ops *ops;
	uint32_t mailbox;
	uint8_t overflow;
} spawn_def;

/* The node start() made last and stop() has not stopped: a test that
 * fails returns at its first failed assertion, before its stop(); the
 * next start() stops that node first, before it rewrites the statics
 * (cfg, pspec, the client's probe_cfg) the node's threads still read, so
 * that one failure stays one (under TSan it became a race report in
 * every test after it). */
static tr_node *live_node;

static int stop(tr_node *n)
{
	if (n == live_node)
		live_node = NULL;
	return tn_stop(n);
}

/* Starts a node with the actors, an engine for pspec, and a client. */
static tr_node *start(const spawn_def *defs, size_t n, tr_ref *client)
{
	static probe_cfg ccfg;
	if (live_node != NULL) {
		fprintf(stderr, "  (stopping the node a failed test left running)\n");
		(void)stop(live_node);
	}
	tr_node *node = tn_start(2);
	live_node = node;
	tr_pipe_arg pa = {&cfg, &pspec, NULL, NULL, NULL, 0};
	tr_spawn_opts so;
	memset(&cfg, 0, sizeof(cfg));
	cfg.actors = actors;
	cfg.nactors = n;
	cfg.pipelines = &pspec;
	cfg.npipelines = 1;
	for (size_t i = 0; i < n; i++) {
		memset(&actors[i], 0, sizeof(actors[i]));
		actors[i].name = (char *)defs[i].name;
		actors[i].instances = 1;
		actors[i].receive_fn = -1;
		memset(&so, 0, sizeof(so));
		so.name = defs[i].name;
		so.mbox.mailbox = defs[i].mailbox;
		so.mbox.overflow = defs[i].overflow;
		if (tr_node_spawn(node, defs[i].ops, defs[i].name, &so, NULL) != TR_OK)
			return NULL;
	}
	if (pspec.max_inflight == 0)
		pspec.max_inflight = 1000;
	memset(&so, 0, sizeof(so));
	so.name = "pipeline:test";
	if (tr_node_spawn(node, &tr_pipe_ops, &pa, &so, &engine_ref) != TR_OK)
		return NULL;
	ccfg = (probe_cfg){.id = 1, .on_msg = client_msg};
	if (tn_spawn(node, &ccfg, NULL, client) != TR_OK)
		return NULL;
	uv_mutex_lock(&last_mu);
	last_body.len = 0;
	uv_mutex_unlock(&last_mu);
	return node;
}

/* Declares actor `name` placed on nodes labelled `label`, with `inst`
 * instances (spawned by start() as "<name>#<i>"), and gives the node the
 * labels `here` (NULL: none). Call after start() and before the first
 * run: the engine reads the config at its first step. */
static void place(const char *name, uint32_t inst, const char *label, const char *here)
{
	static char *labels[1];
	tr_actor_spec *a = (tr_actor_spec *)tr_config_actor(&cfg, name);
	if (a == NULL)
		a = &actors[cfg.nactors++];
	memset(a, 0, sizeof(*a));
	a->name = (char *)name;
	a->instances = inst;
	a->receive_fn = -1;
	a->on_label = (char *)label;
	labels[0] = (char *)here;
	cfg.node.labels = here ? labels : NULL;
	cfg.node.nlabels = here ? 1 : 0;
}

/* Step asks received by actor `name` of node n. */
static uint64_t received(tr_node *n, const char *name)
{
	tr_ref r;
	tr_actor_stats st;
	if (tr_whereis(n, name, &r) != TR_OK || tr_actor_stats_get(n, r, &st) != TR_OK)
		return 0;
	return st.received;
}

static void reset(void)
{
	static int once;
	if (!once) {
		uv_mutex_init(&last_mu);
		tr_buf_init(&last_body);
		once = 1;
	}
	memset(&pspec, 0, sizeof(pspec));
	pspec.name = "test";
	pspec.deadline_us = 5000000;
	set_input(NULL);
	atomic_store(&tap_events, 0);
	atomic_store(&crashes, 0);
}

/* Answers logged by the client: replies (ok) and error replies. */
static int answers(void)
{
	return ev_count(1, TR_TAG_RUN) + ev_count(1, TR_TAG_REPLY_ERR);
}

static int ok_answers(void)
{
	int n = 0;
	uv_mutex_lock(&evlog.mu);
	for (int i = 0; i < atomic_load(&evlog.n); i++)
		n += evlog.evs[i].who == 1 && evlog.evs[i].tag == TR_TAG_RUN &&
		     !(evlog.evs[i].flags & TR_MSGF_ERROR);
	uv_mutex_unlock(&evlog.mu);
	return n;
}

static int wait_answers(int n)
{
	for (int i = 0; i < 1000 && answers() < n; i++)
		tn_sleep_ms(10);
	return answers();
}

/* ---- tests ------------------------------------------------------------ */

TT_TEST(linear_steps)
{
	reset();
	tr_step steps[] = {call("a", 1000, 0), call("b", 1000, 0)};
	pspec.steps = list(steps, 2);
	spawn_def d[] = {{"a", &echo_ops, 0, 0}, {"b", &echo_ops, 0, 0}};
	tr_ref c;
	tr_node *n = start(d, 2, &c);
	TT_ASSERT(n != NULL);
	TT_OK(tn_send(n, c, KICK, 100));
	TT_EQ(wait_answers(100), 100);
	TT_EQ(ok_answers(), 100);
	TT_ASSERT(last_has("text", "hi") && last_has("a", NULL) && last_has("b", NULL));
	tr_pipe_stats ps;
	TT_OK(tr_pipe_stats_get(n, "test", &ps));
	TT_EQ(ps.runs, 100);
	TT_EQ(ps.ok, 100);
	TT_EQ(ps.step_calls, 200);
	TT_EQ(ps.inflight, 0);
	TT_EQ(stop(n), 0);
}

TT_TEST(retries_then_success)
{
	reset();
	tr_step steps[] = {call("f", 1000, 2)};
	pspec.steps = list(steps, 1);
	atomic_store(&flaky_fails, 2);
	spawn_def d[] = {{"f", &flaky_ops, 0, 0}};
	tr_ref c;
	tr_node *n = start(d, 1, &c);
	TT_OK(tn_send(n, c, KICK, 1));
	TT_EQ(wait_answers(1), 1);
	TT_EQ(ok_answers(), 1);
	TT_EQ(last_uint("f"), 2); /* the step saw attempt 2 (0-based) */
	tr_pipe_stats ps;
	TT_OK(tr_pipe_stats_get(n, "test", &ps));
	TT_EQ(ps.retries, 2);
	TT_EQ(ps.step_calls, 3);
	TT_EQ(stop(n), 0);
}

TT_TEST(retries_exhausted_structured_error)
{
	reset();
	tr_step steps[] = {call("f", 1000, 2)};
	pspec.steps = list(steps, 1);
	atomic_store(&flaky_fails, 100);
	spawn_def d[] = {{"f", &flaky_ops, 0, 0}};
	tr_ref c;
	tr_node *n = start(d, 1, &c);
	TT_OK(tn_send(n, c, KICK, 1));
	TT_EQ(wait_answers(1), 1);
	TT_EQ(ok_answers(), 0);
	TT_ASSERT(last_has("code", "error") && last_has("step", "f") && last_has("message", NULL));
	TT_EQ(last_uint("attempts"), 3);
	TT_EQ(stop(n), 0);
}

TT_TEST(retry_on_excludes_class)
{
	reset();
	tr_step steps[] = {call("f", 1000, 5)};
	steps[0].u.call.retry_on = TR_RETRY_TIMEOUT; /* errors are not retried */
	pspec.steps = list(steps, 1);
	atomic_store(&flaky_fails, 100);
	spawn_def d[] = {{"f", &flaky_ops, 0, 0}};
	tr_ref c;
	tr_node *n = start(d, 1, &c);
	TT_OK(tn_send(n, c, KICK, 1));
	TT_EQ(wait_answers(1), 1);
	TT_EQ(last_uint("attempts"), 1);
	TT_EQ(stop(n), 0);
}

TT_TEST(backoff_exponential_without_jitter)
{
	reset();
	tr_step steps[] = {call("f", 1000, 3)};
	/* jitter = false: the plain exponential, capped: 40, 80, 100 ms. */
	steps[0].u.call.backoff = (tr_backoff){40000, 100000, false};
	pspec.steps = list(steps, 1);
	atomic_store(&flaky_fails, 3);
	spawn_def d[] = {{"f", &flaky_ops, 0, 0}};
	tr_ref c;
	tr_node *n = start(d, 1, &c);
	uint64_t t0 = tr_now_ns();
	TT_OK(tn_send(n, c, KICK, 1));
	TT_EQ(wait_answers(1), 1);
	uint64_t ms = (tr_now_ns() - t0) / 1000000u;
	TT_EQ(ok_answers(), 1);
	TT_EQ(last_uint("f"), 3);
	TT_LE(220, ms);
	TT_EQ(stop(n), 0);
}

TT_TEST(full_jitter_spreads_retries)
{
	/* With jitter a sleep is uniform in [0, min(max, base * 2^k)]; without
	 * it, exactly that bound. 20 runs each fail once, then retry after a
	 * 300 ms backoff: with full jitter the first retry lands long before
	 * 300 ms (all 20 sleeping >= 250 ms has probability (1/6)^20), and
	 * none sleeps longer than 300 ms. */
	reset();
	tr_step steps[] = {call("f", 1000, 1)};
	steps[0].u.call.backoff = (tr_backoff){300000, 300000, true};
	pspec.steps = list(steps, 1);
	atomic_store(&flaky_fails, 20);
	spawn_def d[] = {{"f", &flaky_ops, 0, 0}};
	tr_ref c;
	tr_node *n = start(d, 1, &c);
	uint64_t t0 = tr_now_ns();
	TT_OK(tn_send(n, c, KICK, 20));
	/* At least one: with 20 retries spread over 300 ms, two often land
	 * within one 10 ms poll of wait_answers. */
	TT_ASSERT(wait_answers(1) >= 1);
	uint64_t first_ms = (tr_now_ns() - t0) / 1000000u;
	TT_EQ(wait_answers(20), 20);
	uint64_t all_ms = (tr_now_ns() - t0) / 1000000u;
	tr_pipe_stats ps;
	TT_OK(tr_pipe_stats_get(n, "test", &ps));
	TT_EQ(ps.retries, 20);
	TT_EQ(ok_answers(), 20);
	TT_LE(first_ms, 250);
	TT_LE(all_ms, 3000); /* 300 ms + a loaded CI machine's slack */
	TT_EQ(stop(n), 0);
}

TT_TEST(no_retry_when_backoff_passes_deadline)
{
	reset();
	tr_step steps[] = {call("f", 1000, 3)};
	steps[0].u.call.backoff = (tr_backoff){500000, 500000, false};
	pspec.steps = list(steps, 1);
	pspec.deadline_us = 200000; /* the 500 ms backoff cannot fit */
	atomic_store(&flaky_fails, 5);
	spawn_def d[] = {{"f", &flaky_ops, 0, 0}};
	tr_ref c;
	tr_node *n = start(d, 1, &c);
	TT_OK(tn_send(n, c, KICK, 1));
	TT_EQ(wait_answers(1), 1);
	TT_EQ(ok_answers(), 0);
	/* The run fails at once with the step's real error, not a later
	 * deadline: one attempt, no retry started. */
	TT_ASSERT(last_has("code", "error") && last_has("step", "f"));
	TT_EQ(last_uint("attempts"), 1);
	tr_pipe_stats ps;
	TT_OK(tr_pipe_stats_get(n, "test", &ps));
	TT_EQ(ps.retries, 0);
	TT_EQ(stop(n), 0);
}

TT_TEST(first_byte_timeout_cuts_a_silent_step)
{
	reset();
	tr_step steps[] = {call("s", 5000, 1)};
	/* The actor answers after 1 s with no output before: the attempt
	 * times out after first_byte_timeout (100 ms), not its 5 s timeout,
	 * and the retry does the same. */
	steps[0].u.call.first_byte_timeout_us = 100000;
	steps[0].u.call.backoff = (tr_backoff){1000, 1000, false};
	pspec.steps = list(steps, 1);
	atomic_store(&slow_ms, 1000);
	spawn_def d[] = {{"s", &slow_ops, 0, 0}};
	tr_ref c;
	tr_node *n = start(d, 1, &c);
	uint64_t t0 = tr_now_ns();
	TT_OK(tn_send(n, c, KICK, 1));
	TT_EQ(wait_answers(1), 1);
	uint64_t ms = (tr_now_ns() - t0) / 1000000u;
	TT_EQ(ok_answers(), 0);
	TT_ASSERT(last_has("code", "timeout"));
	TT_EQ(last_uint("attempts"), 2);
	TT_LE(200, ms);
	TT_LE(ms, 900); /* well before the actor's 1 s answer */
	tr_pipe_stats ps;
	TT_OK(tr_pipe_stats_get(n, "test", &ps));
	TT_EQ(ps.timeouts, 2);
	TT_EQ(stop(n), 0);
}

TT_TEST(timeout_clipped_by_deadline)
{
	reset();
	tr_step steps[] = {call("s", 10000, 3)};
	pspec.steps = list(steps, 1);
	pspec.deadline_us = 100000; /* 100 ms, the step would wait 10 s */
	atomic_store(&slow_ms, 2000);
	spawn_def d[] = {{"s", &slow_ops, 0, 0}};
	tr_ref c;
	tr_node *n = start(d, 1, &c);
	uint64_t t0 = tr_now_ns();
	TT_OK(tn_send(n, c, KICK, 1));
	TT_EQ(wait_answers(1), 1);
	uint64_t ms = (tr_now_ns() - t0) / 1000000u;
	TT_EQ(ok_answers(), 0);
	TT_ASSERT(last_has("code", "timeout") || last_has("code", "deadline"));
	/* No retry started past the deadline: one attempt, answered near
	 * 100 ms (generous bound: a loaded CI machine). */
	TT_EQ(last_uint("attempts"), 1);
	TT_LE(ms, 1500);
	TT_EQ(stop(n), 0);
}

TT_TEST(fallback_after_crashes)
{
	reset();
	tr_step steps[] = {call("g", 1000, 1)};
	steps[0].u.call.fallback = "backup";
	pspec.steps = list(steps, 1);
	spawn_def d[] = {{"g", &crash_ops, 0, 0}, {"backup", &echo_ops, 0, 0}};
	tr_ref c;
	tr_node *n = start(d, 2, &c);
	TT_OK(tn_send(n, c, KICK, 1));
	TT_EQ(wait_answers(1), 1);
	TT_EQ(ok_answers(), 1);
	TT_ASSERT(last_has("backup", NULL));
	/* The backup saw attempt 2: two crashes (1 + 1 retry) before it. The
	 * crashed actor is not supervised here, so its second try finds no
	 * actor: also class "crashed". */
	TT_EQ(last_uint("backup"), 2);
	tr_pipe_stats ps;
	TT_OK(tr_pipe_stats_get(n, "test", &ps));
	TT_EQ(ps.fallbacks, 1);
	TT_EQ(stop(n), 0);
}

/* output = { ... }: a run answers with those fields of its message only. */
TT_TEST(output_projection)
{
	reset();
	tr_step steps[] = {call("a", 1000, 0), call("b", 1000, 0)};
	char *keep[] = {"b", "text", "absent"};
	pspec.steps = list(steps, 2);
	pspec.output = keep;
	pspec.noutput = 3;
	spawn_def d[] = {{"a", &echo_ops, 0, 0}, {"b", &echo_ops, 0, 0}};
	tr_ref c;
	tr_node *n = start(d, 2, &c);
	TT_OK(tn_send(n, c, KICK, 1));
	TT_EQ(wait_answers(1), 1);
	TT_EQ(ok_answers(), 1);
	TT_ASSERT(last_has("text", "hi") && last_has("b", NULL));
	TT_ASSERT(!last_has("a", NULL) && !last_has("absent", NULL));
	TT_EQ(stop(n), 0);
}

TT_TEST(route_on_field)
{
	reset();
	tr_step act[] = {call("exec", 1000, 0)};
	tr_step dflt[] = {call("rag", 1000, 0), call("gen", 1000, 0)};
	tr_route_branch br = {"action", list(act, 1), {0, 0}};
	tr_step steps[2];
	memset(steps, 0, sizeof(steps));
	steps[0].kind = TR_STEP_ROUTE;
	steps[0].when_fn = -1;
	steps[0].u.route.field = "intent";
	steps[0].u.route.branches = &br;
	steps[0].u.route.nbranches = 1;
	steps[0].u.route.dflt = list(dflt, 2);
	steps[1] = call("safety", 1000, 0);
	pspec.steps = list(steps, 2);
	spawn_def d[] = {{"exec", &echo_ops, 0, 0}, {"rag", &echo_ops, 0, 0},
	                 {"gen", &echo_ops, 0, 0}, {"safety", &echo_ops, 0, 0}};
	tr_ref c;
	tr_node *n = start(d, 4, &c);
	set_input("action");
	TT_OK(tn_send(n, c, KICK, 1));
	TT_EQ(wait_answers(1), 1);
	TT_ASSERT(last_has("exec", NULL) && !last_has("rag", NULL) && last_has("safety", NULL));
	set_input("question");
	TT_OK(tn_send(n, c, KICK, 1));
	TT_EQ(wait_answers(2), 2);
	TT_ASSERT(!last_has("exec", NULL) && last_has("rag", NULL) && last_has("gen", NULL));
	set_input(NULL); /* field missing: default */
	TT_OK(tn_send(n, c, KICK, 1));
	TT_EQ(wait_answers(3), 3);
	TT_ASSERT(last_has("rag", NULL) && last_has("safety", NULL));
	TT_EQ(ok_answers(), 3);
	TT_EQ(stop(n), 0);
}

static void par_steps(tr_step *steps, tr_step_list *branches, tr_join join, uint32_t n)
{
	memset(steps, 0, sizeof(*steps));
	steps->kind = TR_STEP_PARALLEL;
	steps->when_fn = -1;
	steps->u.par.branches = branches;
	steps->u.par.nbranches = 3;
	steps->u.par.join = join;
	steps->u.par.join_n = n;
}

TT_TEST(parallel_join_all_merges)
{
	reset();
	tr_step a[] = {call("a", 1000, 0)}, b[] = {call("b", 1000, 0), call("c", 1000, 0)},
	        e[] = {call("e", 1000, 0)};
	tr_step_list br[] = {list(a, 1), list(b, 2), list(e, 1)};
	tr_step steps[2];
	par_steps(&steps[0], br, TR_JOIN_ALL, 0);
	steps[1] = call("z", 1000, 0);
	pspec.steps = list(steps, 2);
	spawn_def d[] = {{"a", &echo_ops, 0, 0}, {"b", &echo_ops, 0, 0}, {"c", &echo_ops, 0, 0},
	                 {"e", &echo_ops, 0, 0}, {"z", &echo_ops, 0, 0}};
	tr_ref c;
	tr_node *n = start(d, 5, &c);
	TT_OK(tn_send(n, c, KICK, 20));
	TT_EQ(wait_answers(20), 20);
	TT_EQ(ok_answers(), 20);
	TT_ASSERT(last_has("a", NULL) && last_has("b", NULL) && last_has("c", NULL) &&
	          last_has("e", NULL) && last_has("z", NULL) && last_has("text", "hi"));
	TT_EQ(stop(n), 0);
}

TT_TEST(parallel_first_and_failures)
{
	reset();
	tr_step a[] = {call("s", 5000, 0)}, b[] = {call("b", 1000, 0)}, x[] = {call("x", 1000, 0)};
	tr_step_list br[] = {list(a, 1), list(b, 1), list(x, 1)};
	tr_step steps[1];
	par_steps(&steps[0], br, TR_JOIN_FIRST, 0);
	pspec.steps = list(steps, 1);
	atomic_store(&slow_ms, 3000);
	spawn_def d[] = {{"s", &slow_ops, 0, 0}, {"b", &echo_ops, 0, 0}, {"x", &crash_ops, 0, 0}};
	tr_ref c;
	tr_node *n = start(d, 3, &c);
	TT_OK(tn_send(n, c, KICK, 1));
	TT_EQ(wait_answers(1), 1);
	TT_EQ(ok_answers(), 1); /* b wins; the slow one is cut off */
	TT_ASSERT(last_has("b", NULL) && !last_has("s", NULL));
	/* join = all with a crashing branch fails the run, once. */
	steps[0].u.par.join = TR_JOIN_ALL;
	TT_OK(tn_send(n, c, KICK, 1));
	TT_EQ(wait_answers(2), 2);
	TT_EQ(ok_answers(), 1);
	TT_ASSERT(last_has("code", "crashed"));
	TT_EQ(stop(n), 0);
}

TT_TEST(tap_events_and_drops)
{
	reset();
	tr_step steps[] = {call("a", 1000, 0), call("b", 1000, 0)};
	pspec.steps = list(steps, 2);
	pspec.tap = "tap";
	spawn_def d[] = {{"a", &echo_ops, 0, 0}, {"b", &echo_ops, 0, 0},
	                 {"tap", &tap_ops, 0, 0}};
	tr_ref c;
	tr_node *n = start(d, 3, &c);
	TT_OK(tn_send(n, c, KICK, 10));
	TT_EQ(wait_answers(10), 10);
	for (int i = 0; i < 100 && atomic_load(&tap_events) < 40; i++)
		tn_sleep_ms(10);
	TT_EQ(atomic_load(&tap_events), 40); /* start + end per step per run */
	TT_EQ(stop(n), 0);

	/* tap_events = { "end" }: one event per step. */
	reset();
	pspec.steps = list(steps, 2);
	pspec.tap = "tap";
	pspec.tap_events = TR_TAP_END;
	n = start(d, 3, &c);
	TT_OK(tn_send(n, c, KICK, 10));
	TT_EQ(wait_answers(10), 10);
	for (int i = 0; i < 100 && atomic_load(&tap_events) < 20; i++)
		tn_sleep_ms(10);
	tn_sleep_ms(20);
	TT_EQ(atomic_load(&tap_events), 20);
	tr_pipe_stats ps0;
	TT_OK(tr_pipe_stats_get(n, "test", &ps0));
	TT_EQ(ps0.tap_sent, 20);
	TT_EQ(ps0.tap_dropped, 0);
	TT_EQ(stop(n), 0);

	/* A tiny tap that drops: runs are unaffected, drops are counted. */
	reset();
	pspec.steps = list(steps, 2);
	pspec.tap = "tap";
	spawn_def d2[] = {{"a", &echo_ops, 0, 0}, {"b", &echo_ops, 0, 0},
	                  {"tap", &tap_ops, 1, TR_OVERFLOW_DROP_NEWEST}};
	n = start(d2, 3, &c);
	TT_OK(tn_send(n, c, KICK, 200));
	TT_EQ(wait_answers(200), 200);
	TT_EQ(ok_answers(), 200);
	tr_pipe_stats ps;
	TT_OK(tr_pipe_stats_get(n, "test", &ps));
	TT_EQ(ps.tap_sent + ps.tap_dropped, 800);
	TT_ASSERT(ps.tap_dropped > 0);
	TT_EQ(stop(n), 0);

	/* A dead tap: same. */
	reset();
	pspec.steps = list(steps, 2);
	pspec.tap = "nobody";
	n = start(d, 2, &c);
	TT_OK(tn_send(n, c, KICK, 5));
	TT_EQ(wait_answers(5), 5);
	TT_EQ(ok_answers(), 5);
	TT_OK(tr_pipe_stats_get(n, "test", &ps));
	TT_EQ(ps.tap_dropped, 20);
	TT_EQ(stop(n), 0);
}

TT_TEST(max_inflight_refuses_with_hint)
{
	reset();
	tr_step steps[] = {call("s", 5000, 0)};
	pspec.steps = list(steps, 1);
	pspec.max_inflight = 2;
	atomic_store(&slow_ms, 300);
	spawn_def d[] = {{"s", &slow_ops, 0, 0}};
	tr_ref c;
	tr_node *n = start(d, 1, &c);
	TT_OK(tn_send(n, c, KICK, 5));
	TT_EQ(wait_answers(5), 5);
	TT_EQ(ok_answers(), 2);
	tr_pipe_stats ps;
	TT_OK(tr_pipe_stats_get(n, "test", &ps));
	TT_EQ(ps.refused, 3);
	TT_EQ(stop(n), 0);
	/* The refusal body: overload with a retry hint. */
	reset();
	pspec.steps = list(steps, 1);
	pspec.max_inflight = 1;
	n = start(d, 1, &c);
	TT_OK(tn_send(n, c, KICK, 2));
	TT_ASSERT(ev_wait_tag(1, TR_TAG_RUN, 1, 5000));
	TT_ASSERT(last_has("code", "overload") && last_has("retry_after_ms", NULL));
	TT_EQ(wait_answers(2), 2);
	TT_EQ(stop(n), 0);
}

/* A slow actor with a 4-slot mailbox and overflow=block, flooded with
 * runs: runs park instead of queueing, memory stays bounded by
 * max_inflight, and every run is answered. */
TT_TEST(backpressure_block_every_run_answered)
{
	reset();
	tr_step steps[] = {call("s", 5000, 0)};
	pspec.steps = list(steps, 1);
	pspec.deadline_us = 30000000;
	pspec.max_inflight = 400;
	atomic_store(&slow_ms, 1);
	spawn_def d[] = {{"s", &slow_ops, 4, TR_OVERFLOW_BLOCK}};
	tr_ref c;
	tr_node *n = start(d, 1, &c);
	TT_OK(tn_send(n, c, KICK, 300));
	TT_EQ(wait_answers(300), 300);
	TT_EQ(ok_answers(), 300);
	tr_pipe_stats ps;
	TT_OK(tr_pipe_stats_get(n, "test", &ps));
	TT_ASSERT(ps.parked > 0);
	TT_EQ(ps.step_calls, 300);
	tr_actor_stats as;
	tr_ref s;
	TT_OK(tr_whereis(n, "s", &s));
	TT_OK(tr_actor_stats_get(n, s, &as));
	TT_LE(as.max_depth, 4 + 1);
	TT_EQ(stop(n), 0);
}

TT_TEST(bad_input_and_non_runs)
{
	reset();
	tr_step steps[] = {call("a", 1000, 0)};
	pspec.steps = list(steps, 1);
	spawn_def d[] = {{"a", &echo_ops, 0, 0}};
	tr_ref c;
	tr_node *n = start(d, 1, &c);
	run_input[0] = 0x93; /* an array, not a map */
	run_input[1] = 1, run_input[2] = 2, run_input[3] = 3;
	run_input_len = 4;
	TT_OK(tn_send(n, c, KICK, 1));
	TT_EQ(wait_answers(1), 1);
	TT_ASSERT(last_has("code", "invalid"));
	run_input[0] = 0xc1; /* not msgpack */
	run_input_len = 1;
	TT_OK(tn_send(n, c, KICK, 1));
	TT_EQ(wait_answers(2), 2);
	TT_EQ(ok_answers(), 0);
	TT_EQ(stop(n), 0);
}

/* A chain of `routes` routes, each holding the next in its default list
 * and the last holding a call: the call is routes + 1 levels deep. */
static void route_chain(tr_step *r, size_t routes, tr_step *leaf)
{
	memset(r, 0, routes * sizeof(*r));
	for (size_t i = 0; i < routes; i++) {
		r[i].kind = TR_STEP_ROUTE;
		r[i].when_fn = -1;
		r[i].u.route.field = "intent";
		r[i].u.route.dflt = i + 1 < routes ? list(&r[i + 1], 1) : list(leaf, 1);
	}
	pspec.steps = list(r, 1);
}

/* The engine runs whatever the loader accepts: steps exactly
 * TR_STEP_NEST_MAX levels deep run; one level more (which the loader
 * refuses) is an "invalid" answer, never a crash. */
TT_TEST(nesting_limit_matches_loader)
{
	static tr_step r[TR_STEP_NEST_MAX];
	tr_step leaf = call("a", 1000, 0);
	spawn_def d[] = {{"a", &echo_ops, 0, 0}};
	tr_ref c;

	reset();
	route_chain(r, TR_STEP_NEST_MAX - 1, &leaf);
	tr_node *n = start(d, 1, &c);
	TT_OK(tn_send(n, c, KICK, 1));
	TT_EQ(wait_answers(1), 1);
	TT_EQ(ok_answers(), 1);
	TT_ASSERT(last_has("a", NULL));
	TT_EQ(stop(n), 0);

	reset();
	route_chain(r, TR_STEP_NEST_MAX, &leaf);
	n = start(d, 1, &c);
	TT_OK(tn_send(n, c, KICK, 1));
	TT_EQ(wait_answers(1), 1);
	TT_EQ(ok_answers(), 0);
	TT_ASSERT(last_has("code", "invalid"));
	TT_EQ(stop(n), 0);
}

TT_TEST(cache_hits_and_ttl)
{
	reset();
	static char *keys[] = {"text"};
	tr_step steps[] = {call("a", 1000, 0)};
	steps[0].u.call.cache = (tr_cache_spec){true, 150000, keys, 1, 100, TR_CACHE_MEMORY};
	pspec.steps = list(steps, 1);
	spawn_def d[] = {{"a", &echo_ops, 0, 0}};
	tr_ref c;
	tr_node *n = start(d, 1, &c);
	tr_pipe_stats ps;
	TT_OK(tn_send(n, c, KICK, 1));
	TT_EQ(wait_answers(1), 1);
	TT_OK(tn_send(n, c, KICK, 10)); /* same text: all hits */
	TT_EQ(wait_answers(11), 11);
	TT_OK(tr_pipe_stats_get(n, "test", &ps));
	TT_EQ(ps.step_calls, 1);
	TT_EQ(ps.cache_hits, 10);
	TT_ASSERT(last_has("a", NULL)); /* the cached result */
	set_input("other"); /* different input, same key fields: still a hit */
	TT_OK(tn_send(n, c, KICK, 1));
	TT_EQ(wait_answers(12), 12);
	TT_OK(tr_pipe_stats_get(n, "test", &ps));
	TT_EQ(ps.cache_hits, 11);
	tn_sleep_ms(300); /* past the TTL */
	TT_OK(tn_send(n, c, KICK, 1));
	TT_EQ(wait_answers(13), 13);
	TT_OK(tr_pipe_stats_get(n, "test", &ps));
	TT_EQ(ps.step_calls, 2);
	TT_EQ(ok_answers(), 13);
	TT_EQ(stop(n), 0);
}

TT_TEST(coalesce_identical_calls)
{
	reset();
	tr_step steps[] = {call("s", 5000, 0)};
	steps[0].u.call.coalesce = true;
	pspec.steps = list(steps, 1);
	atomic_store(&slow_ms, 100);
	spawn_def d[] = {{"s", &slow_ops, 0, 0}};
	tr_ref c;
	tr_node *n = start(d, 1, &c);
	TT_OK(tn_send(n, c, KICK, 20));
	TT_EQ(wait_answers(20), 20);
	TT_EQ(ok_answers(), 20);
	TT_ASSERT(last_has("s", NULL));
	tr_pipe_stats ps;
	TT_OK(tr_pipe_stats_get(n, "test", &ps));
	TT_EQ(ps.step_calls, 1);
	TT_EQ(ps.coalesced, 19);
	TT_EQ(stop(n), 0);

	/* A failing leader fails its waiters with the same error, once. */
	reset();
	steps[0] = call("x", 1000, 0);
	steps[0].u.call.coalesce = true;
	pspec.steps = list(steps, 1);
	spawn_def d2[] = {{"x", &crash_ops, 0, 0}};
	n = start(d2, 1, &c);
	TT_OK(tn_send(n, c, KICK, 10));
	TT_EQ(wait_answers(10), 10);
	TT_EQ(ok_answers(), 0);
	TT_ASSERT(last_has("code", "crashed"));
	TT_EQ(atomic_load(&crashes), 1);
	TT_EQ(stop(n), 0);
}

/* A placed actor's local instances: each attempt goes to the one with the
 * fewest asks in flight. p#0 holds its asks for a second, the others
 * answer at once: after the first wave p#0 always has more in flight, so
 * it gets at most one run of the 30 (round robin would give it ~8). */
TT_TEST(placed_least_in_flight)
{
	reset();
	tr_step steps[] = {call("p", 3000, 0)};
	pspec.steps = list(steps, 1);
	atomic_store(&slow_ms, 1000);
	spawn_def d[] = {{"p#0", &slow_ops, 0, 0}, {"p#1", &echo_ops, 0, 0},
	                 {"p#2", &echo_ops, 0, 0}, {"p#3", &echo_ops, 0, 0}};
	tr_ref c;
	tr_node *n = start(d, 4, &c);
	TT_ASSERT(n != NULL);
	place("p", 4, "gpu", "gpu");
	for (int w = 0; w < 10; w++) {
		TT_OK(tn_send(n, c, KICK, 3));
		for (int i = 0; i < 200 && answers() < 3 * (w + 1) - 1; i++)
			tn_sleep_ms(5); /* the wave's fast ones answered */
	}
	TT_EQ(wait_answers(30), 30);
	TT_EQ(ok_answers(), 30);
	uint64_t fast = received(n, "p#1") + received(n, "p#2") + received(n, "p#3");
	TT_LE(29, fast);
	TT_LE(1, received(n, "p#1")); /* ties are spread */
	TT_LE(1, received(n, "p#2"));
	TT_LE(1, received(n, "p#3"));
	TT_EQ(stop(n), 0);
}

/* TR_ENODEDOWN is the class "node_down", retried like "crashed", and the
 * retry goes to another instance than the one that just failed: with one
 * bad instance of two and one retry, every run succeeds. */
TT_TEST(placed_node_down_retries_elsewhere)
{
	reset();
	tr_step steps[] = {call("q", 1000, 1)};
	steps[0].u.call.retry_on = TR_RETRY_DEFAULT; /* "crashed" covers node_down */
	pspec.steps = list(steps, 1);
	spawn_def d[] = {{"q#0", &down_ops, 0, 0}, {"q#1", &echo_ops, 0, 0}};
	tr_ref c;
	tr_node *n = start(d, 2, &c);
	TT_ASSERT(n != NULL);
	place("q", 2, "gpu", "gpu");
	TT_OK(tn_send(n, c, KICK, 40));
	TT_EQ(wait_answers(40), 40);
	TT_EQ(ok_answers(), 40);
	TT_LE(1, received(n, "q#0"));
	tr_pipe_stats ps;
	TT_OK(tr_pipe_stats_get(n, "test", &ps));
	TT_EQ(ps.retries, received(n, "q#0"));
	TT_EQ(stop(n), 0);

	/* Without another instance: the answer's code says node_down. */
	reset();
	steps[0] = call("q", 1000, 0);
	pspec.steps = list(steps, 1);
	spawn_def d1[] = {{"q", &down_ops, 0, 0}};
	n = start(d1, 1, &c);
	TT_ASSERT(n != NULL);
	place("q", 1, "gpu", "gpu");
	TT_OK(tn_send(n, c, KICK, 1));
	TT_EQ(wait_answers(1), 1);
	TT_ASSERT(last_has("code", "node_down") && last_has("step", "q"));
	TT_EQ(stop(n), 0);
}

/* A placed actor this node does not run, and no cluster: no candidate
 * at all, a clear error (even with its instances registered here: the
 * node's labels say they are not its own). */
TT_TEST(placed_without_instance_fails_clearly)
{
	reset();
	tr_step steps[] = {call("g", 1000, 0)};
	pspec.steps = list(steps, 1);
	spawn_def d[] = {{"g", &echo_ops, 0, 0}};
	tr_ref c;
	tr_node *n = start(d, 1, &c);
	TT_ASSERT(n != NULL);
	place("g", 1, "gpu", "cpu");
	TT_OK(tn_send(n, c, KICK, 1));
	TT_EQ(wait_answers(1), 1);
	TT_EQ(ok_answers(), 0);
	TT_ASSERT(last_has("code", "crashed"));
	TT_ASSERT(last_has("message", "step 'g' failed after 1 attempt: no instance of 'g' is "
	                              "running (placed on label 'gpu')"));
	TT_EQ(received(n, "g"), 0);
	TT_EQ(stop(n), 0);
}

/* tr__mp_size (its inline path and its walk): the size of random
 * nested objects of every msgpack type and width, as msgpack-c packed
 * them and as its unpacker reads them. */
static uint64_t sz_rng = 0x853c49e6748fea9bull;
static unsigned sz_rnd(unsigned n)
{
	sz_rng ^= sz_rng << 13, sz_rng ^= sz_rng >> 7, sz_rng ^= sz_rng << 17;
	return (unsigned)(sz_rng % n);
}

static void pack_random(msgpack_packer *pk, int depth)
{
	static const char bytes[70000] = {0};
	unsigned kind = sz_rnd(depth > 3 ? 12 : 14);
	switch (kind) {
	case 0: msgpack_pack_nil(pk); break;
	case 1: sz_rnd(2) ? msgpack_pack_true(pk) : msgpack_pack_false(pk); break;
	case 2: msgpack_pack_uint64(pk, (uint64_t)sz_rnd(1000000) << sz_rnd(40)); break;
	case 3: msgpack_pack_int64(pk, -(int64_t)((uint64_t)sz_rnd(1000000) << sz_rnd(30))); break;
	case 4: msgpack_pack_float(pk, 1.5f); break;
	case 5: msgpack_pack_double(pk, 0.1 * sz_rnd(100)); break;
	case 6: case 7: {
		unsigned n = sz_rnd(3) == 0 ? sz_rnd(70000) : sz_rnd(40);
		msgpack_pack_str(pk, n);
		msgpack_pack_str_body(pk, bytes, n);
		break;
	}
	case 8: {
		unsigned n = sz_rnd(300);
		msgpack_pack_bin(pk, n);
		msgpack_pack_bin_body(pk, bytes, n);
		break;
	}
	case 9: {
		unsigned n = sz_rnd(2) ? 1u << sz_rnd(5) : sz_rnd(300);
		msgpack_pack_ext(pk, n, 7);
		msgpack_pack_ext_body(pk, bytes, n);
		break;
	}
	case 10: case 11: msgpack_pack_uint8(pk, (uint8_t)sz_rnd(256)); break;
	case 12: {
		unsigned n = sz_rnd(4) == 0 ? 16 + sz_rnd(30) : sz_rnd(8);
		msgpack_pack_array(pk, n);
		for (unsigned i = 0; i < n; i++)
			pack_random(pk, depth + 1);
		break;
	}
	default: {
		unsigned n = sz_rnd(4) == 0 ? 16 + sz_rnd(20) : sz_rnd(8);
		msgpack_pack_map(pk, n);
		for (unsigned i = 0; i < n; i++) {
			pack_random(pk, depth + 1);
			pack_random(pk, depth + 1);
		}
		break;
	}
	}
}

TT_TEST(mp_size_every_type)
{
	for (int round = 0; round < 3000; round++) {
		tr_buf b;
		msgpack_packer pk;
		tr_buf_init(&b);
		tr__mp_packer(&pk, &b);
		pack_random(&pk, 0);
		TT_OK(tr_mp_check(b.data, b.len, TR_MP_MAX_DEPTH));
		TT_EQ(tr__mp_size(b.data), b.len);
		tr_buf_free(&b);
	}
}

/* tr__mp_map_merge: b's entries replace a's of the same key, the rest of
 * a kept in order, b's after it; every size of a and b, through the
 * one-pass path (at most 15 entries in all) and the two-pass one, with b
 * small (its keys indexed) and large (past 16 keys). */
static void pack_keys(tr_buf *b, unsigned n, unsigned first, unsigned step, unsigned base)
{
	msgpack_packer pk;
	char k[16];
	tr__mp_packer(&pk, b);
	msgpack_pack_map(&pk, n);
	for (unsigned i = 0; i < n; i++) {
		snprintf(k, sizeof(k), "k%u", first + i * step);
		tr__mp_pack_cstr(&pk, k);
		msgpack_pack_uint32(&pk, base + first + i * step);
	}
}

/* Whether b holds exactly one msgpack map of `want` entries (unpacked
 * into u). */
static int one_map_of(const tr_buf *b, msgpack_unpacked *u, unsigned want)
{
	size_t off = 0;
	return msgpack_unpack_next(u, (const char *)b->data, b->len, &off) ==
	           MSGPACK_UNPACK_SUCCESS &&
	       off == b->len && u->data.type == MSGPACK_OBJECT_MAP && u->data.via.map.size == want;
}

TT_TEST(map_merge_every_size)
{
	for (unsigned an = 0; an <= 20; an++) {
		for (unsigned bn = 0; bn <= 20; bn++) {
			tr_buf a, b, out;
			tr_buf_init(&a);
			tr_buf_init(&b);
			tr_buf_init(&out);
			pack_keys(&a, an, 0, 1, 0);        /* k0..k(an-1) = i */
			pack_keys(&b, bn, 1, 2, 1000);     /* k1, k3, ... = 1000 + i */
			TT_OK(tr__mp_map_merge(a.data, a.len, b.data, b.len, &out));
			/* Expected: a's even keys (and odd ones past b's), then b's. */
			unsigned want = bn;
			for (unsigned i = 0; i < an; i++)
				want += !(i % 2 == 1 && i < 2 * bn);
			msgpack_unpacked u;
			msgpack_unpacked_init(&u);
			TT_ASSERT(one_map_of(&out, &u, want));
			unsigned j = 0;
			for (unsigned i = 0; i < an; i++) {
				if (i % 2 == 1 && i < 2 * bn)
					continue;
				char k[16];
				snprintf(k, sizeof(k), "k%u", i);
				const msgpack_object_kv *kv = &u.data.via.map.ptr[j++];
				TT_EQ(kv->key.via.str.size, strlen(k));
				TT_ASSERT(memcmp(kv->key.via.str.ptr, k, strlen(k)) == 0);
				TT_EQ(kv->val.via.u64, i);
			}
			for (unsigned i = 0; i < bn; i++)
				TT_EQ(u.data.via.map.ptr[j++].val.via.u64, 1000 + 1 + 2 * i);
			msgpack_unpacked_destroy(&u);
			tr_buf_free(&a);
			tr_buf_free(&b);
			tr_buf_free(&out);
		}
	}
}

/* tr__mp_map_pick keeps the entries whose key is listed, in the map's
 * order, for every size: through its one-pass path (up to 32 kept) and
 * the two-pass one, and with more than 32 keys listed. */
TT_TEST(map_pick_every_size)
{
	static char names[40][8];
	char *keys[40];
	for (int i = 0; i < 40; i++) {
		snprintf(names[i], sizeof(names[i]), "k%d", 2 * i); /* the even keys */
		keys[i] = names[i];
	}
	for (unsigned an = 0; an <= 90; an += 3) {
		for (size_t nk = 0; nk <= 40; nk += 5) {
			tr_buf a, out;
			tr_buf_init(&a);
			tr_buf_init(&out);
			pack_keys(&a, an, 0, 1, 0);
			TT_OK(tr__mp_map_pick(a.data, a.len, keys, nk, &out));
			unsigned want = 0;
			for (unsigned i = 0; i < an; i++)
				want += i % 2 == 0 && i / 2 < nk;
			msgpack_unpacked u;
			msgpack_unpacked_init(&u);
			TT_ASSERT(one_map_of(&out, &u, want));
			for (unsigned j = 0; j < want; j++)
				TT_EQ(u.data.via.map.ptr[j].val.via.u64, 2 * j);
			msgpack_unpacked_destroy(&u);
			tr_buf_free(&a);
			tr_buf_free(&out);
		}
	}
}

TT_LIST = {
	TT_ENTRY(mp_size_every_type),
	TT_ENTRY(map_pick_every_size),
	TT_ENTRY(map_merge_every_size),
	TT_ENTRY(linear_steps),
	TT_ENTRY(retries_then_success),
	TT_ENTRY(retries_exhausted_structured_error),
	TT_ENTRY(retry_on_excludes_class),
	TT_ENTRY(backoff_exponential_without_jitter),
	TT_ENTRY(full_jitter_spreads_retries),
	TT_ENTRY(no_retry_when_backoff_passes_deadline),
	TT_ENTRY(first_byte_timeout_cuts_a_silent_step),
	TT_ENTRY(timeout_clipped_by_deadline),
	TT_ENTRY(fallback_after_crashes),
	TT_ENTRY(output_projection),
	TT_ENTRY(route_on_field),
	TT_ENTRY(parallel_join_all_merges),
	TT_ENTRY(parallel_first_and_failures),
	TT_ENTRY(tap_events_and_drops),
	TT_ENTRY(max_inflight_refuses_with_hint),
	TT_ENTRY(backpressure_block_every_run_answered),
	TT_ENTRY(bad_input_and_non_runs),
	TT_ENTRY(nesting_limit_matches_loader),
	TT_ENTRY(cache_hits_and_ttl),
	TT_ENTRY(coalesce_identical_calls),
	TT_ENTRY(placed_least_in_flight),
	TT_ENTRY(placed_node_down_retries_elsewhere),
	TT_ENTRY(placed_without_instance_fails_clearly),
	TT_END,
};

TT_MAIN()
