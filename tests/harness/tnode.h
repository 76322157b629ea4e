/*
 * tnode.h -- helpers for tests that run a real node: an event log that
 * actors append to (any thread) and the test thread waits on, and a
 * scriptable "probe" actor whose receive() calls a per-test function.
 *
 * Header-only; include after tt.h in one .c per binary.
 */
#ifndef TNODE_H
#define TNODE_H

#include <stdatomic.h>
#include <time.h>
#include <uv.h>

#include <troupe/troupe.h>

#define EV_MAX 65536

typedef struct ev {
	int who;       /* probe id that saw it */
	uint32_t tag;
	uint16_t flags;
	int32_t err;
	uint64_t corr;
	uint64_t arg;
	tr_ref from;
	unsigned worker;
} ev;

static struct {
	uv_mutex_t mu;
	ev evs[EV_MAX];
	atomic_int n;
	int inited;
} evlog;

static inline void ev_reset(void)
{
	if (!evlog.inited) {
		uv_mutex_init(&evlog.mu);
		evlog.inited = 1;
	}
	uv_mutex_lock(&evlog.mu);
	atomic_store(&evlog.n, 0);
	uv_mutex_unlock(&evlog.mu);
}

static inline void ev_push(int who, const tr_msg *m, unsigned worker)
{
	uv_mutex_lock(&evlog.mu);
	int i = atomic_load(&evlog.n);
	if (i < EV_MAX) {
		evlog.evs[i] = (ev){who, m->tag, m->flags, m->err, m->corr, m->arg, m->from, worker};
		atomic_store(&evlog.n, i + 1);
	}
	uv_mutex_unlock(&evlog.mu);
}

static inline void tn_sleep_ms(unsigned ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

/* Waits until fn(ud) is true or `ms` pass; returns the final fn(ud). */
static inline int tn_wait(int (*fn)(void *), void *ud, unsigned ms)
{
	uint64_t until = tr_now_ns() + (uint64_t)ms * 1000000u;
	while (!fn(ud)) {
		if (tr_now_ns() > until)
			return fn(ud);
		tn_sleep_ms(1);
	}
	return 1;
}

static inline int ev_count_ge_(void *ud)
{
	return atomic_load(&evlog.n) >= *(int *)ud;
}

/* Waits until at least `n` events are logged. */
static inline int ev_wait(int n, unsigned ms)
{
	return tn_wait(ev_count_ge_, &n, ms);
}

/* Number of logged events matching who (-1 any) and tag. */
static inline int ev_count(int who, uint32_t tag)
{
	int c = 0;
	uv_mutex_lock(&evlog.mu);
	for (int i = 0; i < atomic_load(&evlog.n); i++)
		if ((who < 0 || evlog.evs[i].who == who) && evlog.evs[i].tag == tag)
			c++;
	uv_mutex_unlock(&evlog.mu);
	return c;
}

/* Copy of the first event matching who/tag; returns 0 if none. */
static inline int ev_find(int who, uint32_t tag, ev *out)
{
	int found = 0;
	uv_mutex_lock(&evlog.mu);
	for (int i = 0; i < atomic_load(&evlog.n) && !found; i++) {
		if ((who < 0 || evlog.evs[i].who == who) && evlog.evs[i].tag == tag) {
			*out = evlog.evs[i];
			found = 1;
		}
	}
	uv_mutex_unlock(&evlog.mu);
	return found;
}

struct ev_wait_tag_ {
	int who, n;
	uint32_t tag;
};

static inline int ev_tag_ge_(void *ud)
{
	struct ev_wait_tag_ *w = ud;
	return ev_count(w->who, w->tag) >= w->n;
}

/* Waits until `n` events with who/tag are logged. */
static inline int ev_wait_tag(int who, uint32_t tag, int n, unsigned ms)
{
	struct ev_wait_tag_ w = {who, n, tag};
	return tn_wait(ev_tag_ge_, &w, ms);
}

/* ------------------------------------------------------------------ */
/* the probe actor                                                      */

typedef struct probe probe;
typedef int (*probe_fn)(tr_ctx *ctx, probe *p, tr_msg *m);

/* Spawn argument of a probe; must outlive the actor. */
typedef struct probe_cfg {
	int id;            /* logged as `who` */
	probe_fn on_msg;   /* NULL: just log */
	probe_fn on_init;  /* called with m == NULL */
	int init_rc;       /* returned by init when on_init is NULL */
	int trap_exit;
	void *ud;
} probe_cfg;

struct probe {
	const probe_cfg *cfg;
	tr_ref peer;
	uint64_t n;
	uint64_t k;
	void *ud;
};

static atomic_int probe_terminated;
static atomic_int probe_last_reason;

static inline int probe_init(tr_ctx *ctx, void *st, const void *arg)
{
	probe *p = st;
	p->cfg = arg;
	p->ud = p->cfg->ud;
	if (p->cfg->trap_exit)
		tr_trap_exit(ctx, 1);
	if (p->cfg->on_init)
		return p->cfg->on_init(ctx, p, NULL);
	return p->cfg->init_rc;
}

static inline int probe_receive(tr_ctx *ctx, void *st, tr_msg *m)
{
	probe *p = st;
	ev_push(p->cfg->id, m, tr_ctx_worker(ctx));
	if (p->cfg->on_msg)
		return p->cfg->on_msg(ctx, p, m);
	return TR_OK;
}

static inline void probe_terminate(tr_ctx *ctx, void *st, int reason)
{
	(void)ctx;
	(void)st;
	atomic_store(&probe_last_reason, reason);
	atomic_fetch_add(&probe_terminated, 1);
}

static const tr_actor_ops probe_ops = {
	.name = "probe",
	.size = sizeof(probe),
	.init = probe_init,
	.receive = probe_receive,
	.terminate = probe_terminate,
};

static inline tr_node *tn_start(unsigned threads)
{
	tr_node_opts o = {0};
	o.threads = threads;
	tr_node *n = NULL;
	if (tr_node_new(&o, &n) != TR_OK || tr_node_start(n) != TR_OK)
		return NULL;
	ev_reset();
	atomic_store(&probe_terminated, 0);
	return n;
}

static inline int tn_stop(tr_node *n)
{
	tr_node_shutdown(n, 0);
	int rc = tr_node_wait(n);
	tr_node_free(n);
	return rc;
}

static inline int tn_spawn(tr_node *n, const probe_cfg *cfg, const char *name, tr_ref *out)
{
	tr_spawn_opts o = {0};
	o.name = name;
	return tr_node_spawn(n, &probe_ops, cfg, &o, out);
}

static inline int tn_send(tr_node *n, tr_ref to, uint32_t tag, uint64_t arg)
{
	tr_msg *m = tr_msg_new();
	if (m == NULL)
		return TR_ENOMEM;
	m->tag = tag;
	m->arg = arg;
	return tr_node_send(n, to, m);
}

/* Loop counts shrink under sanitizers (scripts/test sets this). */
static inline int tn_quick(void)
{
	const char *q = getenv("TROUPE_TEST_QUICK");
	return q != NULL && q[0] == '1';
}

#endif
