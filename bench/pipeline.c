/*
 * bench/pipeline.c -- overhead of the pipeline engine.
 *
 *   pipeline STEPS RUNS [--threads T] [--inflight K] [--lua]
 *
 * A pipeline of STEPS calls to no-op C actors (each replies with an empty
 * body, which keeps the message); a driver keeps K runs in flight (default
 * 256) until RUNS are answered. Prints
 *   peer=troupe bench=pipeline_<STEPS>step threads=T rate=<runs/s> unit=runs/s seconds=S
 * and, run once with STEPS=0 first, the cost the engine adds per step:
 *   peer=troupe bench=pipeline_step_cost threads=T rate=<us> unit=us/step seconds=S
 * computed as (1/rate(STEPS) - 1/rate(0)) / STEPS.
 *
 * With --lua, the same pipeline runs a third time with Lua actors as the
 * steps (bench/pipeline_noop.lua, loaded with tr_config_load: a receive
 * that returns nil, so the same empty reply), and the cost per Lua step,
 * on the same STEPS=0 baseline, follows for comparison:
 *   peer=troupe bench=pipeline_lua_step_cost threads=T rate=<us> unit=us/step seconds=S
 * (seconds: the baseline's and the Lua run's wall time).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include <troupe/troupe.h>

#include "lua/tlua.h"
#include "pipe/engine.h"

#ifndef BENCH_DIR
#define BENCH_DIR "bench"
#endif

enum { GO = 1 };

static uv_sem_t finished;
static tr_ref engine_ref;
static uint64_t want, inflight_max;
static const unsigned char input[] = {0x81, 0xa4, 't', 'e', 'x', 't', 0xa2, 'h', 'i'};

static int noop_receive(tr_ctx *ctx, void *st, tr_msg *m)
{
	(void)st;
	if (!(m->flags & TR_MSGF_ASK))
		return TR_OK;
	tr_msg *rep = tr_msg_new();
	if (rep == NULL)
		return TR_ENOMEM;
	return tr_reply(ctx, m, rep);
}

static const tr_actor_ops noop_ops = {.name = "noop", .size = 0, .receive = noop_receive};

typedef struct driver {
	uint64_t sent, done, failed;
} driver;

/* What the step actors run: the C no-op, or a Lua actor (arg). */
typedef struct step_impl {
	const tr_actor_ops *ops;
	const void *arg;
} step_impl;

/* What the driver spawns at init: as a supervisor would, so children
 * start on its worker and the scheduler moves what is worth moving. */
typedef struct setup {
	const tr_pipe_arg *pa;
	char (*names)[16];
	unsigned steps;
	step_impl impl;
} setup;

static int driver_init(tr_ctx *ctx, void *st, const void *arg)
{
	const setup *su = arg;
	(void)st;
	for (unsigned i = 0; i < su->steps; i++) {
		tr_spawn_opts so = {0};
		so.name = su->names[i];
		int rc = tr_spawn(ctx, su->impl.ops, su->impl.arg, &so, NULL);
		if (rc != TR_OK)
			return rc;
	}
	tr_spawn_opts so = {0};
	so.name = "pipeline:bench";
	return tr_spawn(ctx, &tr_pipe_ops, su->pa, &so, &engine_ref);
}

static int send_run(tr_ctx *ctx, driver *d)
{
	tr_msg *m = tr_msg_new();
	if (m == NULL)
		return TR_ENOMEM;
	m->tag = TR_TAG_RUN;
	m->body = tr_body_new(input, sizeof(input));
	d->sent++;
	return tr_ask(ctx, engine_ref, m, 0, NULL);
}

static int driver_receive(tr_ctx *ctx, void *st, tr_msg *m)
{
	driver *d = st;
	if (m->tag == GO) {
		while (d->sent < want && d->sent < inflight_max)
			if (send_run(ctx, d) != TR_OK)
				return TR_EFAILED;
		return TR_OK;
	}
	if (!(m->flags & TR_MSGF_REPLY))
		return TR_OK;
	d->done++;
	d->failed += (m->flags & TR_MSGF_ERROR) != 0;
	if (d->done == want) {
		if (d->failed)
			fprintf(stderr, "pipeline: %llu runs failed\n", (unsigned long long)d->failed);
		uv_sem_post(&finished);
		return TR_OK;
	}
	if (d->sent < want)
		return send_run(ctx, d);
	return TR_OK;
}

static const tr_actor_ops driver_ops = {.name = "driver", .size = sizeof(driver),
                                        .init = driver_init, .receive = driver_receive};

/* Runs RUNS runs through a pipeline of `steps` no-op steps (actors run
 * `impl`): runs/s. */
static double measure(unsigned threads, unsigned steps, uint64_t runs, step_impl impl,
                      double *secs)
{
	static char names[64][16];
	tr_step *sv = calloc(steps ? steps : 1, sizeof(*sv));
	tr_actor_spec *as = calloc(steps ? steps : 1, sizeof(*as));
	tr_config cfg;
	tr_pipeline_spec ps;
	tr_node_opts o = {0};
	tr_node *node;
	tr_ref drv;

	memset(&cfg, 0, sizeof(cfg));
	memset(&ps, 0, sizeof(ps));
	o.threads = threads;
	if (tr_node_new(&o, &node) != TR_OK || tr_node_start(node) != TR_OK)
		exit(1);
	for (unsigned i = 0; i < steps; i++) {
		snprintf(names[i], sizeof(names[i]), "noop%u", i);
		as[i].name = names[i];
		as[i].instances = 1;
		as[i].receive_fn = -1;
		sv[i].kind = TR_STEP_CALL;
		sv[i].when_fn = -1;
		sv[i].u.call.actor = names[i];
		sv[i].u.call.timeout_us = 1000000;
		sv[i].u.call.retry_on = TR_RETRY_DEFAULT;
	}
	cfg.actors = as;
	cfg.nactors = steps;
	cfg.pipelines = &ps;
	cfg.npipelines = 1;
	ps.name = "bench";
	ps.deadline_us = 60000000;
	ps.max_inflight = (uint32_t)inflight_max;
	ps.steps = (tr_step_list){sv, steps};
	tr_pipe_arg pa = {&cfg, &ps, NULL, NULL, NULL, 0};
	setup su = {&pa, names, steps, impl};
	if (tr_node_spawn(node, &driver_ops, &su, NULL, &drv) != TR_OK)
		exit(1);
	want = runs;
	uint64_t t0 = tr_now_ns();
	tr_msg *m = tr_msg_new();
	m->tag = GO;
	if (tr_node_send(node, drv, m) != TR_OK)
		exit(1);
	uv_sem_wait(&finished);
	*secs = (double)(tr_now_ns() - t0) / 1e9;
	if (getenv("PIPE_DEBUG") != NULL) {
		tr_node_stats st;
		tr_node_stats_get(node, &st);
		fprintf(stderr, "# steps=%u migrations=%llu wakeups=%llu\n", steps,
		        (unsigned long long)st.migrations, (unsigned long long)st.wakeups);
	}
	tr_node_shutdown(node, 0);
	tr_node_wait(node);
	tr_node_free(node);
	free(sv);
	free(as);
	return (double)runs / *secs;
}

/* The Lua no-op step: bench/pipeline_noop.lua's actor "noop". Exits on
 * a bad file (a bench has nobody to report to). */
static step_impl lua_impl(tr_config **cfg, tr_lua_actor_arg *la)
{
	static const char *files[] = {BENCH_DIR "/pipeline_noop.lua"};
	tr_diag d;
	tr_diag_init(&d);
	if (tr_config_load(files, 1, cfg, &d) != TR_OK) {
		for (size_t i = 0; i < d.n; i++)
			fprintf(stderr, "pipeline: %s\n", d.msgs[i]);
		exit(1);
	}
	tr_diag_free(&d);
	la->config = *cfg;
	la->spec = tr_config_actor(*cfg, "noop");
	if (la->spec == NULL || la->spec->receive_fn < 0) {
		fprintf(stderr, "pipeline: %s: no actor \"noop\" with a receive\n", files[0]);
		exit(1);
	}
	return (step_impl){&tr_lua_actor_ops, la};
}

int main(int argc, char **argv)
{
	unsigned threads = 1, steps = 5;
	uint64_t runs = 200000;
	int npos = 0, lua = 0;
	inflight_max = 256;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
			threads = (unsigned)atoi(argv[++i]);
		else if (strcmp(argv[i], "--inflight") == 0 && i + 1 < argc)
			inflight_max = strtoull(argv[++i], NULL, 10);
		else if (strcmp(argv[i], "--lua") == 0)
			lua = 1;
		else if (npos == 0 && ++npos)
			steps = (unsigned)atoi(argv[i]);
		else if (npos == 1 && ++npos)
			runs = strtoull(argv[i], NULL, 10);
		else {
			fprintf(stderr,
			        "usage: pipeline STEPS RUNS [--threads T] [--inflight K] [--lua]\n");
			return 2;
		}
	}
	if (steps > 64 || runs == 0 || inflight_max == 0 || (lua && steps == 0)) {
		fprintf(stderr, "pipeline: STEPS 0..64 (1..64 with --lua), RUNS and K > 0\n");
		return 2;
	}
	uv_sem_init(&finished, 0);
	step_impl c_impl = {&noop_ops, NULL};
	double s0, sn;
	double r0 = measure(threads, 0, runs, c_impl, &s0);
	double rn = measure(threads, steps, runs, c_impl, &sn);
	printf("peer=troupe bench=pipeline_%ustep threads=%u rate=%.1f unit=runs/s seconds=%.3f\n",
	       steps, threads, rn, sn);
	if (steps > 0)
		printf("peer=troupe bench=pipeline_step_cost threads=%u rate=%.3f unit=us/step "
		       "seconds=%.3f\n",
		       threads, (1e6 / rn - 1e6 / r0) / steps, s0 + sn);
	if (lua) {
		tr_config *lcfg;
		tr_lua_actor_arg la;
		double sl, rl = measure(threads, steps, runs, lua_impl(&lcfg, &la), &sl);
		printf("peer=troupe bench=pipeline_lua_step_cost threads=%u rate=%.3f unit=us/step "
		       "seconds=%.3f\n",
		       threads, (1e6 / rl - 1e6 / r0) / steps, s0 + sl);
		tr_config_free(lcfg);
	}
	uv_sem_destroy(&finished);
	return 0;
}
