/*
 * http/api.c -- the door's read-only endpoints (/health, /ready,
 * /metrics, /v1/actors, /v1/pipelines, /v1/traces, the status page) and
 * the configuration snapshots they read.
 *
 * Everything here runs on a door's worker, between turns, and only reads
 * shared state: actor stats (tr_node_walk / tr_node_foreach), engine
 * counters (relaxed atomics), a referenced door_conf.
 */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "cluster/cluster.h"
#include "core/alloc.h"
#include "core/chaos.h"
#include "db/pg.h"
#include "db/redis.h"
#include "http/door_int.h"
#include "http/json.h"
#include "msg/msg_int.h"
#include "pipe/engine.h"

/* ---- extensions (door.h) ----------------------------------------------- */

/* Set once by main before any door starts, read by the doors after:
 * thread start orders the writes before the reads. */
static tr_door_metrics_fn ext_metrics;
static tr_door_events_fn ext_events;

void tr_door_extend(tr_door_metrics_fn metrics, tr_door_events_fn events)
{
	ext_metrics = metrics;
	ext_events = events;
}

void tr__api_events(tr_door *d, door_resp *r)
{
	if (ext_events == NULL) {
		tr__door_error(r, 404, "not_found", "no event source in this node");
		return;
	}
	r->status = 200;
	r->ctype = "application/json";
	r->body.len = 0;
	tr__buf_append(&r->body, "{\"events\":", 10);
	size_t mark = r->body.len;
	if (ext_events(d->node, 200, &r->body) != TR_OK) {
		r->body.len = mark;
		tr__buf_append(&r->body, "[]", 2);
	}
	tr__buf_append(&r->body, "}\n", 2);
}

/* ---- configuration snapshots ------------------------------------------ */

static void free_strv(char **v, size_t n)
{
	for (size_t i = 0; v != NULL && i < n; i++)
		tr__free(v[i]);
	tr__free(v);
}

void tr__door_conf_put(door_conf *c)
{
	/* acq_rel: the last owner must see every reader's last use before it
	 * frees (release by each dropper, acquire by the one that frees). */
	if (c == NULL || atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
		return;
	tr_auth_free(c->auth);
	json_decref(c->pipelines);
	free_strv(c->expect, c->nexpect);
	free_strv(c->pipes, c->npipes);
	free_strv(c->pipe_names, c->npipes);
	tr__free(c);
}

static char *strf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *strf(const char *fmt, ...)
{
	char tmp[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(tmp))
		return NULL;
	return tr__strndup(tmp, (size_t)n);
}

static json_t *graph_list(const tr_step_list *l);

static json_t *graph_step(const tr_step *s)
{
	json_t *j = NULL;
	switch (s->kind) {
	case TR_STEP_CALL:
		j = json_pack("{s:s,s:s,s:f,s:i,s:b,s:b}", "type", "step", "actor", s->u.call.actor,
		              "timeout_ms", (double)s->u.call.timeout_us / 1000.0, "retries",
		              (int)s->u.call.retries, "coalesce", s->u.call.coalesce, "cache",
		              s->u.call.cache.on);
		if (j && s->u.call.fallback)
			json_object_set_new(j, "fallback", json_string(s->u.call.fallback));
		break;
	case TR_STEP_ROUTE: {
		json_t *br = json_object();
		for (size_t i = 0; br && i < s->u.route.nbranches; i++)
			json_object_set_new(br, s->u.route.branches[i].value,
			                    graph_list(&s->u.route.branches[i].steps));
		j = json_pack("{s:s,s:s,s:o,s:o}", "type", "route", "field", s->u.route.field,
		              "branches", br ? br : json_object(), "default", graph_list(&s->u.route.dflt));
		break;
	}
	case TR_STEP_PARALLEL: {
		json_t *br = json_array();
		for (size_t i = 0; br && i < s->u.par.nbranches; i++)
			json_array_append_new(br, graph_list(&s->u.par.branches[i]));
		j = json_pack("{s:s,s:o}", "type", "parallel", "branches", br ? br : json_array());
		if (j) {
			if (s->u.par.join == TR_JOIN_ALL)
				json_object_set_new(j, "join", json_string("all"));
			else if (s->u.par.join == TR_JOIN_FIRST)
				json_object_set_new(j, "join", json_string("first"));
			else
				json_object_set_new(j, "join", json_integer(s->u.par.join_n));
		}
		break;
	}
	}
	if (j && s->when_fn >= 0)
		json_object_set_new(j, "when", json_true());
	return j ? j : json_null();
}

static json_t *graph_list(const tr_step_list *l)
{
	json_t *a = json_array();
	for (size_t i = 0; a && i < l->n; i++)
		json_array_append_new(a, graph_step(&l->v[i]));
	return a ? a : json_array();
}

int tr__door_conf_new(const tr_config *cfg, unsigned gen, const door_conf *prev, door_conf **out)
{
	door_conf *c = tr__calloc(1, sizeof(*c));
	size_t n = 0;

	if (c == NULL)
		return TR_ENOMEM;
	atomic_init(&c->refs, 1);
	c->gen = gen;
	snprintf(c->rprefix, sizeof(c->rprefix), "%s", cfg->redis.prefix ? cfg->redis.prefix : "troupe:");
	if (tr_auth_new(cfg, prev ? prev->auth : NULL, &c->auth) != TR_OK)
		goto oom;
	for (size_t i = 0; i < cfg->nactors; i++)
		n += cfg->actors[i].instances > 1 ? cfg->actors[i].instances : 1;
	n += cfg->npipelines;
	c->expect = tr__calloc(n + 1, sizeof(char *));
	c->pipes = tr__calloc(cfg->npipelines + 1, sizeof(char *));
	c->pipe_names = tr__calloc(cfg->npipelines + 1, sizeof(char *));
	c->pipelines = json_array();
	if (c->expect == NULL || c->pipes == NULL || c->pipe_names == NULL || c->pipelines == NULL)
		goto oom;
	for (size_t i = 0; i < cfg->nactors; i++) {
		const tr_actor_spec *a = &cfg->actors[i];
		uint32_t inst = a->instances > 1 ? a->instances : 1;
		if (!tr_actor_runs_here(cfg, a))
			continue; /* placed on other nodes: not ours to run */
		for (uint32_t k = 0; k < inst; k++) {
			char *s = inst == 1 ? strf("%s@%u", a->name, gen) : strf("%s#%u@%u", a->name, k, gen);
			if (s == NULL)
				goto oom;
			c->expect[c->nexpect++] = s;
		}
	}
	for (size_t i = 0; i < cfg->npipelines; i++) {
		const tr_pipeline_spec *p = &cfg->pipelines[i];
		char *e = strf("pipeline:%s@%u", p->name, gen);
		if (e == NULL)
			goto oom;
		c->expect[c->nexpect++] = e;
		c->pipes[i] = strf("%s@%u", p->name, gen);
		c->pipe_names[i] = strf("%s", p->name);
		c->npipes = i + 1;
		if (c->pipes[i] == NULL || c->pipe_names[i] == NULL)
			goto oom;
		json_t *g = json_pack("{s:s,s:f,s:i,s:s?,s:o}", "name", p->name, "deadline_ms",
		                      (double)p->deadline_us / 1000.0, "max_inflight",
		                      (int)p->max_inflight, "tap", p->tap, "steps", graph_list(&p->steps));
		if (g == NULL || json_array_append_new(c->pipelines, g) != 0)
			goto oom;
	}
	*out = c;
	return TR_OK;
oom:
	tr__door_conf_put(c);
	return TR_ENOMEM;
}

/* ---- /health, /ready -------------------------------------------------- */

void tr__api_health(tr_door *d, door_resp *r)
{
	/* By hand: the hottest read-only endpoint (load balancers poll it). */
	uint64_t ms = (tr_now_ns() - d->started_ns) / 1000000u;
	r->status = 200;
	r->ctype = "application/json";
	r->body.len = 0;
	tr__door_printf(&r->body, "{\"status\":\"ok\",\"uptime_s\":%llu.%03llu}\n",
	                (unsigned long long)(ms / 1000u), (unsigned long long)(ms % 1000u));
}

void tr__api_ready(tr_door *d, door_resp *r)
{
	door_conf *c = tr__door_conf_get(d);
	json_t *reasons = json_array();
	tr_actor_stats st;
	tr_ref ref;

	if (atomic_load(&d->draining))
		json_array_append_new(reasons, json_string("the node is shutting down"));
	for (size_t i = 0; c != NULL && i < c->nexpect; i++) {
		/* Alive means registered and answering stats: a child between
		 * its crash and its restart is neither. */
		if (tr_whereis(d->node, c->expect[i], &ref) != TR_OK ||
		    tr_actor_stats_get(d->node, ref, &st) != TR_OK) {
			char msg[160];
			snprintf(msg, sizeof(msg), "actor '%s' is not running", c->expect[i]);
			json_array_append_new(reasons, json_string(msg));
		}
	}
	json_t *degraded = json_array();
	char why[256], msg[400];
	if (d->pg != NULL && !atomic_load_explicit(&tr_pg_stats_of(d->pg)->up, memory_order_relaxed)) {
		/* Steps that need the database cannot work: not ready. */
		tr_pg_last_error(d->pg, why, sizeof(why));
		snprintf(msg, sizeof(msg), "postgres is unreachable%s%s", why[0] ? ": " : "", why);
		json_array_append_new(reasons, json_string(msg));
	}
	if (d->redis != NULL &&
	    !atomic_load_explicit(&tr_redis_stats_of(d->redis)->up, memory_order_relaxed)) {
		/* Everything Redis does has an in-process fallback: still ready. */
		tr_redis_last_error(d->redis, why, sizeof(why));
		snprintf(msg, sizeof(msg), "redis is unreachable%s%s%s: caches, rate limits and "
		         "coalescing are in-process until it is back", why[0] ? " (" : "", why,
		         why[0] ? ")" : "");
		json_array_append_new(degraded, json_string(msg));
	}
	int ok = json_array_size(reasons) == 0;
	tr__door_json(r, ok ? 200 : 503,
	              json_pack("{s:b,s:i,s:o,s:o}", "ready", ok, "generation", c ? (int)c->gen : 0,
	                        "reasons", reasons, "degraded", degraded));
	tr__door_conf_put(c);
}

/* ---- /v1/actors ----------------------------------------------------- */

typedef struct walk_st {
	json_t *stack[64]; /* children arrays by depth */
	json_t *last;      /* the node just added */
	unsigned depth;
	json_t *seen;      /* names in the tree (object used as a set) */
	json_t *others;    /* named actors outside the tree (the doors) */
} walk_st;

static json_t *actor_json(const tr_actor_stats *s, int sup)
{
	char ref[48];
	snprintf(ref, sizeof(ref), "%u.%u.%u", s->ref.node, s->ref.idx, s->ref.gen);
	return json_pack("{s:s,s:s,s:s,s:b,s:I,s:I,s:I,s:I,s:i,s:i,s:i,s:i,s:f}", "name", s->name,
	                 "behaviour", s->behaviour ? s->behaviour : "", "ref", ref, "supervisor", sup,
	                 "received", (json_int_t)s->received, "processed", (json_int_t)s->processed,
	                 "dropped", (json_int_t)s->dropped, "rejected", (json_int_t)s->rejected,
	                 "depth", (int)s->depth, "max_depth", (int)s->max_depth, "capacity",
	                 (int)s->capacity, "restarts", (int)s->restarts, "receive_ms",
	                 (double)s->receive_ns / 1e6);
}

static int walk_cb(void *ud, unsigned depth, const tr_actor_stats *st, int is_sup)
{
	walk_st *w = ud;
	if (depth + 1 >= sizeof(w->stack) / sizeof(w->stack[0]))
		return 0;
	if (depth > w->depth && w->last != NULL) {
		/* first child of the last node */
		json_t *kids = json_array();
		json_object_set_new(w->last, "children", kids);
		w->stack[depth] = kids;
	}
	w->depth = depth;
	json_t *a = actor_json(st, is_sup);
	if (a == NULL)
		return 1;
	json_array_append_new(w->stack[depth], a);
	w->last = a;
	if (st->name[0])
		json_object_set_new(w->seen, st->name, json_true());
	return 0;
}

static int other_cb(void *ud, unsigned depth, const tr_actor_stats *st, int is_sup)
{
	walk_st *w = ud;
	(void)depth;
	if (st->name[0] && json_object_get(w->seen, st->name) == NULL) {
		json_t *a = actor_json(st, is_sup);
		if (a != NULL)
			json_array_append_new(w->others, a);
	}
	return 0;
}

void tr__api_actors(tr_door *d, door_resp *r)
{
	walk_st w;
	memset(&w, 0, sizeof(w));
	w.stack[0] = json_array();
	w.seen = json_object();
	w.others = json_array();
	tr_node_walk(d->node, walk_cb, &w);
	/* Named actors outside the supervision tree: the HTTP doors (their
	 * life is the node's), anything spawned by name from C. */
	tr_node_foreach(d->node, other_cb, &w);
	json_decref(w.seen);
	tr_node_stats ns;
	tr_node_stats_get(d->node, &ns);
	tr__door_json(r, 200, json_pack("{s:o,s:o,s:I,s:I}", "tree", w.stack[0], "others",
	                                w.others, "actors", (json_int_t)ns.actors, "dead_letters",
	                                (json_int_t)ns.dead_letters));
}

/* ---- /v1/pipelines, /v1/traces ----------------------------------------- */

void tr__api_pipelines(tr_door *d, door_resp *r)
{
	door_conf *c = tr__door_conf_get(d);
	json_t *out = json_array();
	for (size_t i = 0; c != NULL && i < c->npipes; i++) {
		json_t *g = json_deep_copy(json_array_get(c->pipelines, i));
		tr_pipe_stats ps;
		if (g == NULL)
			continue;
		if (tr_pipe_stats_get(d->node, c->pipes[i], &ps) == TR_OK)
			json_object_set_new(
				g, "stats",
				json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "runs", (json_int_t)ps.runs, "ok",
				          (json_int_t)ps.ok, "failed", (json_int_t)ps.failed, "refused",
				          (json_int_t)ps.refused, "inflight", (json_int_t)ps.inflight, "retries",
				          (json_int_t)ps.retries, "cache_hits", (json_int_t)ps.cache_hits));
		tr_pipe_step_stats ss[64];
		size_t n = 0;
		if (tr_pipe_step_stats_get(d->node, c->pipes[i], ss, 64, &n) == TR_OK) {
			json_t *a = json_array();
			for (size_t k = 0; k < n && k < 64; k++)
				json_array_append_new(
					a, json_pack("{s:s,s:I,s:I,s:f}", "step", ss[k].step, "calls",
					             (json_int_t)ss[k].calls, "failed", (json_int_t)ss[k].failed,
					             "mean_ms",
					             ss[k].calls ? (double)ss[k].sum_us / 1000.0 / (double)ss[k].calls
					                         : 0.0));
			json_object_set_new(g, "step_stats", a);
		}
		json_array_append_new(out, g);
	}
	tr__door_json(r, 200, json_pack("{s:i,s:o}", "generation", c ? (int)c->gen : 0,
	                                "pipelines", out));
	tr__door_conf_put(c);
}

void tr__api_traces(tr_door *d, door_resp *r)
{
	tr_buf *o = &r->body;
	r->status = 200;
	r->ctype = "application/json";
	o->len = 0;
	tr__buf_append(o, "{\"traces\":[", 11);
	uv_mutex_lock(&d->ring_mu);
	unsigned n = d->ring_next < DOOR_TRACES ? d->ring_next : DOOR_TRACES;
	for (unsigned k = 0; k < n; k++) {
		/* newest first */
		const door_trace *t = &d->ring[(d->ring_next - 1 - k) % DOOR_TRACES];
		tr__door_printf(o, "%s{\"trace_id\":\"%016llx%016llx\",\"pipeline\":", k ? "," : "",
		                (unsigned long long)t->trace_hi, (unsigned long long)t->trace_lo);
		tr__json_str(t->pipeline, strlen(t->pipeline), o);
		tr__door_printf(o, ",\"ok\":%s,\"code\":", t->code[0] ? "false" : "true");
		if (t->code[0])
			tr__json_str(t->code, strlen(t->code), o);
		else
			tr__buf_append(o, "null", 4);
		tr__door_printf(o, ",\"ms\":%llu.%03llu,\"ts_us\":%llu,\"steps\":",
		                (unsigned long long)(t->us / 1000u), (unsigned long long)(t->us % 1000u),
		                (unsigned long long)t->ts_us);
		tr__door_steps_json(t->answer ? t->answer->data : NULL, t->answer ? t->answer->len : 0, o);
		tr__buf_append(o, "}", 1);
	}
	uv_mutex_unlock(&d->ring_mu);
	tr__buf_append(o, "]}\n", 3);
}

/* ---- /metrics (Prometheus text format 0.0.4) --------------------------- */

/* A label value with \, " and newline escaped (into a static-size buf). */
static const char *esc(const char *s, char *buf, size_t n)
{
	size_t k = 0;
	for (; *s && k + 2 < n; s++) {
		if (*s == '\\' || *s == '"') {
			buf[k++] = '\\';
			buf[k++] = *s;
		} else if (*s == '\n') {
			buf[k++] = '\\';
			buf[k++] = 'n';
		} else {
			buf[k++] = *s;
		}
	}
	buf[k] = '\0';
	return buf;
}

typedef struct metrics_st {
	tr_buf *b;
	int field;
} metrics_st;

static const struct {
	const char *name, *type, *help;
} actor_metrics[] = {
	{"troupe_actor_mailbox_depth", "gauge", "Messages queued in the actor's mailbox."},
	{"troupe_actor_received_total", "counter", "Messages accepted into the mailbox."},
	{"troupe_actor_processed_total", "counter", "Messages processed."},
	{"troupe_actor_dropped_total", "counter", "Messages dropped by the overflow policy."},
	{"troupe_actor_rejected_total", "counter", "Messages refused (reject/block policy)."},
	{"troupe_actor_restarts_total", "counter", "Restarts by its supervisor."},
};

static int metric_actor(void *ud, unsigned depth, const tr_actor_stats *s, int is_sup)
{
	metrics_st *m = ud;
	char n[160];
	(void)depth;
	(void)is_sup;
	if (s->name[0] == '\0')
		return 0; /* anonymous actors (clients, probes): no stable label */
	uint64_t v[] = {s->depth, s->received, s->processed, s->dropped, s->rejected, s->restarts};
	tr__door_printf(m->b, "%s{actor=\"%s\"} %llu\n", actor_metrics[m->field].name, esc(s->name, n, sizeof(n)),
	    (unsigned long long)v[m->field]);
	return 0;
}

/* A counter of a stats struct of relaxed atomics: its metric, its help
 * and where it is in the struct. */
typedef struct counter_def {
	const char *name, *help;
	size_t off;
} counter_def;

static void put_counters(tr_buf *b, const void *stats, const counter_def *cs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		tr__door_printf(b, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", cs[i].name, cs[i].help,
		                cs[i].name, cs[i].name,
		                (unsigned long long)atomic_load_explicit(
		                    (const atomic_uint_fast64_t *)((const char *)stats + cs[i].off),
		                    memory_order_relaxed));
}

/* GET /v1/cluster: the membership view, this node first. */
static const char *const member_states[] = {"?", "alive", "suspect", "down", "left"};

void tr__api_cluster(tr_door *d, door_resp *r)
{
	tr_cluster_member *v = NULL;
	size_t n = 0;
	json_t *ms = json_array();
	if (d->cluster != NULL && (v = tr__calloc(TR_CLUSTER_MEMBERS_MAX, sizeof(*v))) != NULL)
		n = tr_cluster_view(d->cluster, v, TR_CLUSTER_MEMBERS_MAX);
	for (size_t i = 0; i < n; i++) {
		json_t *labels = json_array();
		for (uint32_t k = 0; k < v[i].nlabels; k++)
			json_array_append_new(labels, json_string(v[i].labels[k]));
		int st = v[i].state >= 1 && v[i].state <= 4 ? v[i].state : 0;
		json_array_append_new(ms, json_pack("{s:s,s:I,s:s,s:s,s:o,s:s,s:I,s:I,s:f,s:b}",
		                                    "name", v[i].name, "node_id", (json_int_t)v[i].node_id,
		                                    "addr", v[i].addr, "data", v[i].data, "labels", labels,
		                                    "state",
		                                    member_states[st], "incarnation",
		                                    (json_int_t)v[i].incarnation, "since_us",
		                                    (json_int_t)v[i].since_us, "rtt_ms",
		                                    (double)v[i].rtt_us / 1000.0, "self", v[i].self));
	}
	tr__free(v);
	tr__door_json(r, 200, json_pack("{s:b,s:o}", "clustered", d->cluster != NULL, "members", ms));
}

static void cluster_metrics(tr_door *d, tr_buf *b)
{
	tr_cluster_member *v;
	size_t n, by[5] = {0, 0, 0, 0, 0};
	if (d->cluster == NULL || (v = tr__calloc(TR_CLUSTER_MEMBERS_MAX, sizeof(*v))) == NULL)
		return;
	n = tr_cluster_view(d->cluster, v, TR_CLUSTER_MEMBERS_MAX);
	for (size_t i = 0; i < n; i++)
		by[v[i].state >= 1 && v[i].state <= 4 ? v[i].state : 0]++;
	tr__free(v);
	tr__door_printf(b, "# HELP troupe_cluster_members Cluster members, this node included, by state.\n"
	                   "# TYPE troupe_cluster_members gauge\n");
	for (int k = 1; k <= 4; k++)
		tr__door_printf(b, "troupe_cluster_members{state=\"%s\"} %zu\n", member_states[k], by[k]);
	const tr_cluster_stats *s = tr_cluster_stats_of(d->cluster);
	static const counter_def cs[] = {
#define C(f, h) {"troupe_cluster_" #f "_total", h, offsetof(tr_cluster_stats, f)}
		C(frames_in, "Cluster frames received."), C(frames_out, "Cluster frames sent."),
		C(bytes_in, "Cluster bytes received."), C(bytes_out, "Cluster bytes sent."),
		C(bad_frames, "Frames dropped: malformed, wrong version, unknown type or oversized."),
		C(refused, "Links refused at the handshake (wrong secret, version, duplicate name)."),
		C(links_up, "Links authenticated."), C(links_down, "Links closed."),
		C(suspected, "Members suspected."), C(declared_down, "Members declared down."),
		C(rejoined, "Members that came back."),
		C(msgs_out, "Envelopes carried to actors on other nodes."),
		C(msgs_in, "Envelopes from other nodes delivered here (or refused here)."),
		C(batches_out, "Batches (nng messages) of envelopes sent."),
		C(batches_in, "Batches of envelopes received."),
		C(remote_refused, "Messages for other nodes refused: the link's queue or ask window full (overload)."),
		C(remote_failed, "Asks and sends that failed with node_down."),
		C(remote_undelivered, "Envelopes from other nodes whose target was gone or full."),
		C(bad_batches, "Batches dropped: malformed, wrong token or unknown sender."),
#undef C
	};
	put_counters(b, s, cs, sizeof(cs) / sizeof(cs[0]));
}

/* The fault injector's counters, when `troupe run --chaos` started it. */
static void chaos_metrics(tr_buf *b)
{
	const tr_chaos_stats *s = tr_chaos_stats_of();
	if (s == NULL)
		return;
	tr__door_printf(b, "# HELP troupe_chaos_active Whether the fault injector injects faults now.\n"
	                   "# TYPE troupe_chaos_active gauge\ntroupe_chaos_active %d\n",
	                tr_chaos_running());
	static const counter_def cs[] = {
#define C(f, h) {"troupe_chaos_" #f "_total", h, offsetof(tr_chaos_stats, f)}
		C(crashes, "Actors crashed on receive by the fault injector."),
		C(delays, "Step attempts the fault injector held before sending."),
		C(failures, "Step attempts the fault injector failed (TR_EIO)."),
		C(fills, "Mailboxes the fault injector filled to capacity."),
#undef C
	};
	put_counters(b, s, cs, sizeof(cs) / sizeof(cs[0]));
}

/* The node's PostgreSQL pool and Redis client, when configured. */
static void backend_metrics(tr_door *d, tr_buf *b)
{
#define LD(x) ((unsigned long long)atomic_load_explicit(&(x), memory_order_relaxed))
	if (d->pg != NULL) {
		const tr_pg_stats *s = tr_pg_stats_of(d->pg);
		static const double le[] = {0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01,
		                            0.025,  0.05,   0.1,   0.25,  1.0};
		unsigned long long cum = 0;
		tr__door_printf(b, "# HELP troupe_postgres_up Whether a pool connection works now.\n"
		                   "# TYPE troupe_postgres_up gauge\ntroupe_postgres_up %d\n",
		                atomic_load_explicit(&s->up, memory_order_relaxed) ? 1 : 0);
		tr__door_printf(b, "# HELP troupe_postgres_connections Pool connections, by state.\n"
		                   "# TYPE troupe_postgres_connections gauge\n"
		                   "troupe_postgres_connections{state=\"open\"} %llu\n"
		                   "troupe_postgres_connections{state=\"idle\"} %llu\n"
		                   "troupe_postgres_connections{state=\"busy\"} %llu\n",
		                LD(s->open), LD(s->idle), LD(s->busy));
		tr__door_printf(b, "# HELP troupe_postgres_queued Requests waiting for a connection.\n"
		                   "# TYPE troupe_postgres_queued gauge\ntroupe_postgres_queued %llu\n",
		                LD(s->queued));
		static const counter_def cs[] = {
#define C(f, h) {"troupe_postgres_" #f "_total", h, offsetof(tr_pg_stats, f)}
			C(queries, "Queries answered."), C(errors, "Queries answered with an error."),
			C(timeouts, "Queries that timed out (statement_timeout or deadline)."),
			C(rejected, "Requests refused: the wait queue was full."),
			C(connects, "Connections opened."), C(connect_failures, "Connection attempts that failed."),
			C(disconnects, "Connections lost or closed as dead."),
			C(prepings, "Health checks of idle connections before reuse."),
			C(recycled, "Connections closed after max_lifetime."),
#undef C
		};
		put_counters(b, s, cs, sizeof(cs) / sizeof(cs[0]));
		tr__door_printf(b, "# HELP troupe_postgres_wait_seconds Time from a request to its connection.\n"
		                   "# TYPE troupe_postgres_wait_seconds histogram\n");
		for (int i = 0; i < 12; i++) {
			cum += LD(s->wait_hist[i]);
			if (i < 11)
				tr__door_printf(b, "troupe_postgres_wait_seconds_bucket{le=\"%g\"} %llu\n", le[i], cum);
			else
				tr__door_printf(b, "troupe_postgres_wait_seconds_bucket{le=\"+Inf\"} %llu\n", cum);
		}
		tr__door_printf(b, "troupe_postgres_wait_seconds_sum %.6f\ntroupe_postgres_wait_seconds_count %llu\n",
		                (double)LD(s->wait_us_sum) / 1e6, cum);
	}
	if (d->redis != NULL) {
		const tr_redis_stats *s = tr_redis_stats_of(d->redis);
		tr__door_printf(b, "# HELP troupe_redis_up Whether the Redis connection is up.\n"
		                   "# TYPE troupe_redis_up gauge\ntroupe_redis_up %d\n",
		                atomic_load_explicit(&s->up, memory_order_relaxed) ? 1 : 0);
		tr__door_printf(b, "# HELP troupe_redis_pending Commands waiting for their reply.\n"
		                   "# TYPE troupe_redis_pending gauge\ntroupe_redis_pending %llu\n",
		                LD(s->pending));
		static const counter_def cs[] = {
#define C(f, h) {"troupe_redis_" #f "_total", h, offsetof(tr_redis_stats, f)}
			C(commands, "Commands answered."), C(errors, "Error replies from the server."),
			C(timeouts, "Commands that timed out."),
			C(rejected, "Commands refused: max_pending in flight."),
			C(unavailable, "Commands refused at once: not connected (the fallbacks answered)."),
			C(connects, "Connections made."), C(connect_failures, "Connection attempts that failed."),
			C(disconnects, "Connections lost."), C(script_loads, "SCRIPT LOADs (first use, NOSCRIPT)."),
#undef C
		};
		put_counters(b, s, cs, sizeof(cs) / sizeof(cs[0]));
	}
#undef LD
}

void tr__api_metrics(tr_door *d, door_resp *r)
{
	tr_buf *b = &r->body;
	door_conf *c = tr__door_conf_get(d);
	char l1[160], l2[160];
	tr_node_stats ns;

	r->status = 200;
	r->ctype = "text/plain; version=0.0.4; charset=utf-8";
	b->len = 0;

	tr__door_printf(b, "# HELP troupe_up Whether the node is serving.\n# TYPE troupe_up gauge\ntroupe_up 1\n");
	tr__door_printf(b, "# HELP troupe_config_generation Generation of the configuration being served.\n"
	       "# TYPE troupe_config_generation gauge\ntroupe_config_generation %u\n",
	    c ? c->gen : 0);
	tr_node_stats_get(d->node, &ns);
	tr__door_printf(b, "# HELP troupe_node_actors Actors alive.\n# TYPE troupe_node_actors gauge\n"
	       "troupe_node_actors %llu\n", (unsigned long long)ns.actors);
	tr__door_printf(b, "# HELP troupe_node_dead_letters_total Messages sent to dead actors.\n"
	       "# TYPE troupe_node_dead_letters_total counter\ntroupe_node_dead_letters_total %llu\n",
	    (unsigned long long)ns.dead_letters);

	for (int f = 0; f < (int)(sizeof(actor_metrics) / sizeof(actor_metrics[0])); f++) {
		metrics_st m = {b, f};
		tr__door_printf(b, "# HELP %s %s\n# TYPE %s %s\n", actor_metrics[f].name, actor_metrics[f].help,
		    actor_metrics[f].name, actor_metrics[f].type);
		tr_node_foreach(d->node, metric_actor, &m);
	}

	/* pipelines */
	static const struct {
		const char *name, *help;
		size_t off;
	} pm[] = {
		{"troupe_pipeline_retries_total", "Step retries.", offsetof(tr_pipe_stats, retries)},
		{"troupe_pipeline_timeouts_total", "Step attempts that timed out.",
		 offsetof(tr_pipe_stats, timeouts)},
		{"troupe_pipeline_fallbacks_total", "Fallback actors tried.",
		 offsetof(tr_pipe_stats, fallbacks)},
		{"troupe_pipeline_cache_hits_total", "Step results served from the cache.",
		 offsetof(tr_pipe_stats, cache_hits)},
		{"troupe_pipeline_cache_misses_total", "Cached steps that had to call.",
		 offsetof(tr_pipe_stats, cache_misses)},
		{"troupe_pipeline_coalesced_total", "Step calls that joined an identical one.",
		 offsetof(tr_pipe_stats, coalesced)},
		{"troupe_pipeline_parked_total", "Times a run waited for a full mailbox.",
		 offsetof(tr_pipe_stats, parked)},
		{"troupe_pipeline_tap_dropped_total", "Tap events lost to a full or dead tap.",
		 offsetof(tr_pipe_stats, tap_dropped)},
	};
	tr_pipe_stats *ps = tr__calloc(c ? c->npipes + 1 : 1, sizeof(*ps));
	int *have = tr__calloc(c ? c->npipes + 1 : 1, sizeof(int));
	for (size_t i = 0; ps && have && c && i < c->npipes; i++)
		have[i] = tr_pipe_stats_get(d->node, c->pipes[i], &ps[i]) == TR_OK;
	tr__door_printf(b, "# HELP troupe_pipeline_runs_total Runs answered, by outcome.\n"
	       "# TYPE troupe_pipeline_runs_total counter\n");
	for (size_t i = 0; ps && have && c && i < c->npipes; i++) {
		if (!have[i])
			continue;
		const char *p = esc(c->pipe_names[i], l1, sizeof(l1));
		tr__door_printf(b, "troupe_pipeline_runs_total{pipeline=\"%s\",outcome=\"ok\"} %llu\n", p,
		    (unsigned long long)ps[i].ok);
		tr__door_printf(b, "troupe_pipeline_runs_total{pipeline=\"%s\",outcome=\"error\"} %llu\n", p,
		    (unsigned long long)(ps[i].failed - ps[i].cancelled));
		tr__door_printf(b, "troupe_pipeline_runs_total{pipeline=\"%s\",outcome=\"cancelled\"} %llu\n", p,
		    (unsigned long long)ps[i].cancelled);
		tr__door_printf(b, "troupe_pipeline_runs_total{pipeline=\"%s\",outcome=\"refused\"} %llu\n", p,
		    (unsigned long long)ps[i].refused);
	}
	tr__door_printf(b, "# HELP troupe_pipeline_inflight Runs in flight.\n"
	       "# TYPE troupe_pipeline_inflight gauge\n");
	for (size_t i = 0; ps && have && c && i < c->npipes; i++)
		if (have[i])
			tr__door_printf(b, "troupe_pipeline_inflight{pipeline=\"%s\"} %llu\n",
			    esc(c->pipe_names[i], l1, sizeof(l1)), (unsigned long long)ps[i].inflight);
	for (size_t k = 0; k < sizeof(pm) / sizeof(pm[0]); k++) {
		tr__door_printf(b, "# HELP %s %s\n# TYPE %s counter\n", pm[k].name, pm[k].help, pm[k].name);
		for (size_t i = 0; ps && have && c && i < c->npipes; i++)
			if (have[i])
				tr__door_printf(b, "%s{pipeline=\"%s\"} %llu\n", pm[k].name,
				    esc(c->pipe_names[i], l1, sizeof(l1)),
				    (unsigned long long)*(const uint64_t *)((const char *)&ps[i] + pm[k].off));
	}
	tr__free(ps);
	tr__free(have);

	/* per-step latency histograms */
	tr__door_printf(b, "# HELP troupe_step_duration_seconds Time a step took (all attempts).\n"
	       "# TYPE troupe_step_duration_seconds histogram\n");
	tr_pipe_step_stats *ss = tr__calloc(64, sizeof(*ss));
	for (size_t i = 0; ss && c && i < c->npipes; i++) {
		size_t n = 0;
		if (tr_pipe_step_stats_get(d->node, c->pipes[i], ss, 64, &n) != TR_OK)
			continue;
		for (size_t k = 0; k < n && k < 64; k++) {
			const char *p = esc(c->pipe_names[i], l1, sizeof(l1));
			const char *s = esc(ss[k].step, l2, sizeof(l2));
			uint64_t cum = 0;
			for (int bk = 0; bk < TR_PIPE_NBUCKETS; bk++) {
				cum += ss[k].buckets[bk];
				if (bk < TR_PIPE_NBUCKETS - 1)
					tr__door_printf(b, "troupe_step_duration_seconds_bucket{pipeline=\"%s\",step=\"%s\",le=\"%g\"} %llu\n",
					    p, s, (double)TR_PIPE_BUCKETS_US[bk] / 1e6, (unsigned long long)cum);
				else
					tr__door_printf(b, "troupe_step_duration_seconds_bucket{pipeline=\"%s\",step=\"%s\",le=\"+Inf\"} %llu\n",
					    p, s, (unsigned long long)cum);
			}
			tr__door_printf(b, "troupe_step_duration_seconds_sum{pipeline=\"%s\",step=\"%s\"} %.6f\n", p, s,
			    (double)ss[k].sum_us / 1e6);
			tr__door_printf(b, "troupe_step_duration_seconds_count{pipeline=\"%s\",step=\"%s\"} %llu\n", p, s,
			    (unsigned long long)cum);
		}
	}
	tr__free(ss);

	/* HTTP */
	tr__door_printf(b, "# HELP troupe_http_requests_total HTTP requests answered, by route and status.\n"
	       "# TYPE troupe_http_requests_total counter\n");
	for (int rt = 0; rt < R__N; rt++) {
		for (int si = 0; si < DOOR_NSTATUS; si++) {
			uint64_t sum = 0;
			for (unsigned w = 0; w < d->n; w++)
				sum += atomic_load_explicit(&d->counts[w][rt][si], memory_order_relaxed);
			if (sum > 0)
				tr__door_printf(b, "troupe_http_requests_total{route=\"%s\",code=\"%d\"} %llu\n",
				    tr__door_route_names[rt], tr__door_statuses[si], (unsigned long long)sum);
		}
	}
	tr__door_printf(b, "# HELP troupe_http_connections Open HTTP connections.\n"
	       "# TYPE troupe_http_connections gauge\ntroupe_http_connections %u\n",
	    tr_door_connections(d));
	tr__door_printf(b, "# HELP troupe_http_inflight Pipeline calls in flight from HTTP.\n"
	       "# TYPE troupe_http_inflight gauge\ntroupe_http_inflight %llu\n",
	    (unsigned long long)tr_door_inflight(d));
	backend_metrics(d, b);
	cluster_metrics(d, b);
	chaos_metrics(b);
	if (ext_metrics != NULL)
		(void)ext_metrics(d->node, b);
	tr__door_conf_put(c);
}

/* ---- the status page -------------------------------------------------- */

extern const unsigned char tr__status_html[];
extern const size_t tr__status_html_len;

void tr__api_status_page(tr_door *d, door_resp *r)
{
	(void)d;
	r->status = 200;
	r->ctype = "text/html; charset=utf-8";
	r->body.len = 0;
	tr__buf_append(&r->body, tr__status_html, tr__status_html_len);
}
