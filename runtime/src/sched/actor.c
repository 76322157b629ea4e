/*
 * sched/actor.c -- actor lifecycle and the API actors call: spawn, turns
 * and dispatch, termination, send/ask/reply, links, monitors, stop.
 *
 * Answers to asks. Every ask an actor receives is recorded in its `owed`
 * map until tr_reply() answers it; when the actor stops, whatever it still
 * owes gets an error reply (TR_ECRASHED after a crash), and so do asks
 * still queued in its mailbox. Together with the ask timer on the asking
 * side, an asker always gets exactly one answer: the first of reply,
 * error reply or timeout; anything later is dropped as a late reply.
 */
#include <string.h>

#include "core/chaos.h"
#include "sched/sched.h"

static tr__actor_own *own_of(tr_actor *a)
{
	if (a->own == NULL)
		a->own = tr__calloc(1, sizeof(*a->own));
	return a->own;
}

static void begin_stop(tr_actor *a, int reason)
{
	if (!a->stopping) {
		a->stopping = 1;
		a->stop_reason = reason;
	}
}

/* The error an asker gets for what `a` still owes when it stops. */
static int owed_err(int reason)
{
	return (reason == TR_OK || reason == TR_ESHUTDOWN) ? TR_ESHUTDOWN : TR_ECRASHED;
}

static void wake_all_workers(tr_node *n);

/* ------------------------------------------------------------------ */
/* termination                                                          */

static void notify_refs(tr_node *n, tr_ref self, tr__refvec *v, uint32_t tag, int reason)
{
	for (uint32_t i = 0; i < v->len; i++) {
		uint64_t corr = (tag == TR_TAG_DOWN) ? v->ids[i] : 0;
		(void)tr__send_sys(n, self, v->v[i], tag, reason, corr, 0, 0);
	}
}

static void drain_list(tr_node *n, tr_ref self, tr_msg *m, int err)
{
	while (m != NULL) {
		tr_msg *next = m->next;
		atomic_fetch_add_explicit(&n->n_dead_letters, 1, memory_order_relaxed);
		if ((m->flags & TR_MSGF_ASK) && !(m->flags & TR_MSGF_REPLY))
			tr__reply_err_to(n, self, m->from, m->corr, err);
		tr_msg_free(m);
		m = next;
	}
}

/*
 * Ends the actor: terminate() (unless init failed), cancels its timers,
 * answers what it owes, closes the mailbox (bumping the generation makes
 * every ref to it stale at once), drains it, notifies links and monitors,
 * and recycles the struct. `a` must not be touched by the caller after.
 */
static void terminate(tr__worker *w, tr_actor *a, int init_failed)
{
	tr_node *n = w->node;
	int reason = a->stop_reason;
	tr_ref self = tr__ref_of(n, a);

	if (!init_failed && a->ops->terminate != NULL) {
		tr_ctx ctx = {w, a, NULL, 0, 0, 0};
		a->ops->terminate(&ctx, a->state, reason);
	}
	if (a->own != NULL) {
		tr__actor_own *o = a->own;
		for (uint32_t i = 0; i < o->timers.cap; i++)
			if (o->timers.ents[i].key != 0)
				tr__timer_cancel(w, o->timers.ents[i].ptr);
		for (uint32_t i = 0; i < o->asks.cap; i++)
			if (o->asks.ents[i].key != 0 && o->asks.ents[i].ptr != NULL)
				tr__timer_cancel(w, o->asks.ents[i].ptr);
		for (uint32_t i = 0; i < o->owed.cap; i++)
			if (o->owed.ents[i].key != 0)
				tr__reply_err_to(n, self, o->owed.ents[i].ref, o->owed.ents[i].key,
				                 owed_err(reason));
		tr__map_free(&o->timers);
		tr__map_free(&o->asks);
		tr__map_free(&o->owed);
		tr__free(o);
		a->own = NULL;
	}

	tr__spin_lock(&a->lock);
	a->life = ACTOR_FREE;
	a->gen++;
	if (a->gen == 0)
		a->gen = 1; /* wrapped: gen 0 means "no actor" */
	tr_msg *sh = a->shead, *uh = a->uhead;
	a->shead = a->stail = a->uhead = a->utail = NULL;
	tr__actor_ext *x = a->ext;
	a->ext = NULL;
	a->depth = 0;
	a->sched = 0;
	tr__spin_unlock(&a->lock);

	int err = (reason == TR_OK || reason == TR_ESHUTDOWN) ? TR_ENOACTOR : TR_ECRASHED;
	drain_list(n, self, a->pshead, err);
	drain_list(n, self, a->phead, err);
	drain_list(n, self, sh, err);
	drain_list(n, self, uh, err);
	a->pshead = a->pstail = a->phead = a->ptail = NULL;

	if (x != NULL) {
		if (!init_failed)
			notify_refs(n, self, &x->links, TR_TAG_EXIT, reason);
		notify_refs(n, self, &x->monitors, TR_TAG_DOWN, reason);
		/* Blocked senders must not wait forever: wake them, their retry
		 * gets TR_ENOACTOR. */
		notify_refs(n, self, &x->waiters, TR_TAG_WRITABLE, 0);
		if (x->name[0] != '\0')
			tr__names_drop(n, x->name, self);
		tr__refvec_free(&x->links);
		tr__refvec_free(&x->monitors);
		tr__refvec_free(&x->waiters);
		tr__refvec_free(&x->watchers);
		tr__free(x);
	}
	if (a->state != NULL && a->state != (void *)a->inline_state)
		tr__free(a->state);
	a->state = NULL;
	a->ops = NULL;
	tr__actor_release(n, w, a);
	/* seq_cst with the stopping flag: the last actor out wakes every
	 * worker so each can see alive == 0 and leave its loop. */
	if (atomic_fetch_sub(&n->alive, 1) == 1 && atomic_load(&n->stopping))
		wake_all_workers(n);
}

static void wake_fn(tr__worker *w, tr__ctl *c)
{
	(void)w;
	tr__free(c);
}

static void wake_all_workers(tr_node *n)
{
	for (unsigned i = 0; i < n->nworkers; i++) {
		tr__ctl *c = tr__calloc(1, sizeof(*c));
		if (c == NULL)
			continue; /* the stop-retry timer still polls worker 0 */
		c->fn = wake_fn;
		tr__post_ctl(&n->workers[i], c);
	}
}

/* ------------------------------------------------------------------ */
/* turns                                                                */

static void dispatch(tr_ctx *ctx, tr_actor *a, tr_msg *m)
{
	tr_node *n = ctx->w->node;
	uint16_t f = m->flags;
	int rc;

	ctx->cur = m;
	ctx->taken = 0;
	ctx->replied = 0;
	if (__builtin_expect(m->to.node != n->id, 0)) {
		/* Carried for another node's actor: only the cluster actor's
		 * mailbox holds these (tr__enqueue_at). Its asks, replies,
		 * STOPs and EXITs belong to that actor, not to the carrier. */
		rc = a->ops->receive(ctx, a->state, m);
		if (rc != TR_OK)
			begin_stop(a, rc);
		goto done;
	}
	if (f & TR_MSGF_SYSTEM) {
		if (m->tag == TR_TAG_STOP) {
			begin_stop(a, m->err);
			goto done;
		}
		if (m->tag == TR_TAG_EXIT) {
			tr__spin_lock(&a->lock);
			if (a->ext != NULL)
				tr__refvec_del(&a->ext->links, m->from, 0, 0);
			tr__spin_unlock(&a->lock);
			if (m->err == TR_EKILLED || (!a->trap_exit && m->err != TR_OK)) {
				begin_stop(a, m->err);
				goto done;
			}
			if (!a->trap_exit)
				goto done; /* a linked actor stopped normally */
		}
		if (f & TR_MSGF_TIMER) {
			tr__map_ent *e = a->own ? tr__map_get(&a->own->timers, m->corr, TR_REF_NONE)
			                        : NULL;
			if (e == NULL)
				goto done; /* cancelled after it was queued */
			tr__timer *t = e->ptr;
			if (tr__timer_kind(t) == TIMER_ONCE) {
				tr__map_del(&a->own->timers, m->corr, TR_REF_NONE, NULL);
				tr__timer_cancel(ctx->w, t); /* spent: drop our reference */
			} else {
				tr__timer_delivered(t);
			}
		}
	}
	if (f & TR_MSGF_REPLY) {
		void *t = NULL;
		if (a->own == NULL || !tr__map_del(&a->own->asks, m->corr, TR_REF_NONE, &t)) {
			atomic_fetch_add_explicit(&n->n_late_replies, 1, memory_order_relaxed);
			goto done;
		}
		if (t != NULL)
			tr__timer_cancel(ctx->w, t);
	} else if (f & TR_MSGF_ASK) {
		tr__actor_own *o = own_of(a);
		if (o == NULL || tr__map_put(&o->owed, m->corr, m->from, NULL) != TR_OK) {
			tr__reply_err_to(n, tr__ref_of(n, a), m->from, m->corr, TR_ENOMEM);
			goto done;
		}
	}
	/* The fault injector (tests only): off, this is one load and a
	 * branch predicted not taken. A crash here is what a crash in
	 * receive() is: the ask just recorded as owed gets TR_ECRASHED. */
	if (tr__chaos_active() && !(f & (TR_MSGF_SYSTEM | TR_MSGF_REPLY))) {
		int c = tr__chaos_receive(ctx->w->idx, a->chaos, m->tag);
		if (c == TR__CHAOS_SWALLOW)
			goto done;
		if (c == TR__CHAOS_CRASH) {
			begin_stop(a, TR_ECRASHED);
			goto done;
		}
	}
	rc = a->ops->receive(ctx, a->state, m);
	if (rc != TR_OK)
		begin_stop(a, rc);
done:
	ctx->cur = NULL;
	if (!ctx->taken)
		tr_msg_free(m);
}

static inline tr_msg *pop(tr_msg **head, tr_msg **tail)
{
	tr_msg *m = *head;
	*head = m->next;
	if (*head == NULL)
		*tail = NULL;
	return m;
}

static inline void list_splice(tr_msg **h, tr_msg **t, tr_msg *oh, tr_msg *ot)
{
	if (oh == NULL)
		return;
	if (*t)
		(*t)->next = oh;
	else
		*h = oh;
	*t = ot;
}

void tr__run_turn(tr__worker *w, tr_actor *a)
{
	tr_node *n = w->node;
	tr_ctx ctx = {w, a, NULL, 0, 0, 0};
	uint32_t done_user = 0, k = 0;

	if (a->phead == NULL && a->pshead == NULL) {
		tr__spin_lock(&a->lock);
		list_splice(&a->pshead, &a->pstail, a->shead, a->stail);
		list_splice(&a->phead, &a->ptail, a->uhead, a->utail);
		a->shead = a->stail = a->uhead = a->utail = NULL;
		tr__spin_unlock(&a->lock);
	}

	uint64_t c0 = tr__cycles(), mbox = 0;
	while (k < a->batch && !a->stopping) {
		tr_msg *m;
		if (a->pshead != NULL) {
			m = pop(&a->pshead, &a->pstail);
		} else if (a->phead != NULL) {
			m = pop(&a->phead, &a->ptail);
			done_user++;
		} else {
			break;
		}
		if (c0 > m->enq_ns)
			mbox += c0 - m->enq_ns;
		dispatch(&ctx, a, m);
		k++;
	}
	uint64_t c1 = tr__cycles();
	uint32_t turn = (c1 - c0) > UINT32_MAX ? UINT32_MAX : (uint32_t)(c1 - c0);
	a->last_turn_cyc = turn < a->prev_turn_cyc ? turn : a->prev_turn_cyc;
	a->prev_turn_cyc = turn;
	a->last_turn_sends = ctx.sends;
	/* Owner-only counters; relaxed load+store (no RMW) is enough since
	 * one thread at a time writes them. */
	atomic_store_explicit(&a->processed,
	                      atomic_load_explicit(&a->processed, memory_order_relaxed) + k,
	                      memory_order_relaxed);
	atomic_store_explicit(&a->mailbox_cyc,
	                      atomic_load_explicit(&a->mailbox_cyc, memory_order_relaxed) + mbox,
	                      memory_order_relaxed);
	atomic_store_explicit(&a->receive_cyc,
	                      atomic_load_explicit(&a->receive_cyc, memory_order_relaxed) + (c1 - c0),
	                      memory_order_relaxed);

	if (a->stopping) {
		terminate(w, a, 0);
		return;
	}

	tr_ref notify_buf[8];
	tr_ref *notify = notify_buf;
	uint32_t nwaiters = 0, nwatch = 0;
	tr__spin_lock(&a->lock);
	a->depth -= done_user;
	if (a->depth <= a->lowat && a->ext != NULL &&
	    (a->ext->waiters.len > 0 || (a->pressure && a->ext->watchers.len > 0))) {
		/* Copy out who to tell; send after unlocking (one lock at a time). */
		tr__actor_ext *x = a->ext;
		uint32_t total = x->waiters.len + (a->pressure ? x->watchers.len : 0);
		if (total > 8)
			notify = tr__malloc(total * sizeof(tr_ref));
		if (notify != NULL) {
			nwaiters = x->waiters.len;
			if (nwaiters > 0)
				memcpy(notify, x->waiters.v, nwaiters * sizeof(tr_ref));
			x->waiters.len = 0;
			if (a->pressure && x->watchers.len > 0) {
				nwatch = x->watchers.len;
				memcpy(notify + nwaiters, x->watchers.v, nwatch * sizeof(tr_ref));
			}
		} else {
			notify = notify_buf; /* OOM: waiters stay registered, retried next turn */
		}
	}
	if (a->pressure && a->depth <= a->lowat)
		a->pressure = 0;
	list_splice(&a->pshead, &a->pstail, a->shead, a->stail);
	list_splice(&a->phead, &a->ptail, a->uhead, a->utail);
	a->shead = a->stail = a->uhead = a->utail = NULL;
	int more = a->phead != NULL || a->pshead != NULL;
	if (!more)
		a->sched = 0; /* from here on, `a` belongs to the next sender */
	tr_ref self = tr__ref_of(n, a);
	tr__spin_unlock(&a->lock);

	for (uint32_t i = 0; i < nwaiters; i++)
		(void)tr__send_sys(n, self, notify[i], TR_TAG_WRITABLE, 0, 0, 0, 0);
	for (uint32_t i = 0; i < nwatch; i++)
		(void)tr__send_sys(n, self, notify[nwaiters + i], TR_TAG_PRESSURE, 0, 0, 0, 0);
	if (notify != notify_buf)
		tr__free(notify);
	if (more)
		tr__requeue(w, a);
}

/* ------------------------------------------------------------------ */
/* spawning                                                             */

static void merge_opts(tr_actor_opts *o, const tr_actor_opts *over)
{
	if (over->mailbox)
		o->mailbox = over->mailbox;
	if (over->hiwat)
		o->hiwat = over->hiwat;
	if (over->lowat)
		o->lowat = over->lowat;
	if (over->batch)
		o->batch = over->batch;
	if (over->overflow)
		o->overflow = over->overflow;
	if (over->trap_exit)
		o->trap_exit = over->trap_exit;
}

int tr__spawn_on(tr_node *n, tr__worker *w, const tr_actor_ops *ops, const void *arg,
                 const tr_spawn_opts *opts, tr_ref link_to, tr_ref *out)
{
	if (ops == NULL || ops->receive == NULL)
		return TR_EINVAL;
	if (atomic_load_explicit(&n->stopping, memory_order_relaxed))
		return TR_ESHUTDOWN;
	tr_actor_opts o = ops->options;
	if (opts != NULL)
		merge_opts(&o, &opts->mbox);
	if (o.mailbox == 0)
		o.mailbox = TR_MAILBOX_DEFAULT;
	if (o.hiwat == 0 || o.hiwat > o.mailbox)
		o.hiwat = o.mailbox - o.mailbox / 4;
	if (o.lowat == 0 || o.lowat >= o.hiwat)
		o.lowat = o.mailbox / 2 < o.hiwat ? o.mailbox / 2 : o.hiwat - 1;
	if (o.batch == 0)
		o.batch = TR_BATCH_DEFAULT;
	if (o.overflow > TR_OVERFLOW_REJECT)
		return TR_EINVAL;

	tr_actor *a = tr__actor_alloc(n, w);
	if (a == NULL)
		return TR_ENOMEM;
	void *st = a->inline_state;
	if (ops->size > sizeof(a->inline_state)) {
		st = tr__calloc(1, ops->size);
		if (st == NULL) {
			tr__actor_release(n, w, a);
			return TR_ENOMEM;
		}
	} else {
		memset(a->inline_state, 0, sizeof(a->inline_state));
	}
	unsigned home = w != NULL ? w->idx
	                          : atomic_fetch_add_explicit(&n->rr, 1, memory_order_relaxed) %
	                                n->nworkers;

	/* Owner fields first: nobody can run the actor before `sched` drops. */
	a->ops = ops;
	a->state = st;
	a->own = NULL;
	a->batch = o.batch;
	a->restarts = 0;
	a->trap_exit = o.trap_exit;
	a->pinned = opts != NULL && opts->pinned;
	a->chaos = tr__chaos_active() && tr__chaos_marked(ops);
	a->stopping = 0;
	a->stop_reason = 0;
	a->last_turn_cyc = 0;
	a->prev_turn_cyc = 0;
	a->last_turn_sends = 0;
	a->phead = a->ptail = a->pshead = a->pstail = NULL;
	atomic_store_explicit(&a->processed, 0, memory_order_relaxed);
	atomic_store_explicit(&a->mailbox_cyc, 0, memory_order_relaxed);
	atomic_store_explicit(&a->receive_cyc, 0, memory_order_relaxed);

	tr__spin_lock(&a->lock);
	if (a->gen == 0)
		a->gen = 1;
	a->life = ACTOR_INIT;
	a->stop_sent = 0;
	/* sched = 1 during init: messages sent to the newborn (even by its
	 * own init) queue up without scheduling it before init is done. */
	a->sched = 1;
	a->pressure = 0;
	a->overflow = o.overflow;
	a->depth = 0;
	a->cap = o.mailbox;
	a->hiwat = o.hiwat;
	a->lowat = o.lowat;
	a->max_depth = 0;
	a->uhead = a->utail = a->shead = a->stail = NULL;
	a->ext = NULL;
	a->received = a->dropped = a->rejected = 0;
	atomic_store_explicit(&a->home, home, memory_order_relaxed);
	tr__spin_unlock(&a->lock);
	atomic_fetch_add(&n->alive, 1);
	atomic_fetch_add_explicit(&n->n_spawned, 1, memory_order_relaxed);

	tr_ref self = tr__ref_of(n, a);
	int rc = TR_OK;
	if (opts != NULL && opts->name != NULL)
		rc = tr_register(n, opts->name, self);
	if (rc == TR_OK && !tr_ref_is_none(link_to)) {
		/* Both halves of the link; the spawner is alive (it is calling). */
		tr__spin_lock(&a->lock);
		tr__actor_ext *x = tr__ext(a);
		rc = x ? tr__refvec_add(&x->links, link_to, 0) : TR_ENOMEM;
		tr__spin_unlock(&a->lock);
		tr_actor *p = rc == TR_OK ? tr__actor_lock_ref(n, link_to) : NULL;
		if (p != NULL) {
			tr__actor_ext *px = tr__ext(p);
			rc = px ? tr__refvec_add(&px->links, self, 0) : TR_ENOMEM;
			tr__spin_unlock(&p->lock);
		}
	}
	if (rc == TR_OK && ops->init != NULL) {
		tr_ctx ctx = {w, a, NULL, 0, 0, 0};
		rc = ops->init(&ctx, st, arg);
	}
	/* init may tr_stop(): with TR_OK the actor starts and stops right
	 * away (it did its work); with an error reason the spawn fails. */
	if (rc == TR_OK && a->stopping && a->stop_reason != TR_OK)
		rc = a->stop_reason;
	if (rc != TR_OK) {
		a->stop_reason = rc;
		if (w != NULL) {
			terminate(w, a, 1);
		} else {
			/* Only tr_node_spawn runs init off a worker, and it posts to
			 * one; this path is not reached. */
			return TR_ESTATE;
		}
		return rc;
	}

	tr__spin_lock(&a->lock);
	a->life = ACTOR_ALIVE;
	int more = a->uhead != NULL || a->shead != NULL || a->stopping;
	if (!more)
		a->sched = 0;
	tr__spin_unlock(&a->lock);
	if (more)
		tr__make_runnable(n, a, home);
	if (out != NULL)
		*out = self;
	return TR_OK;
}

int tr_spawn(tr_ctx *ctx, const tr_actor_ops *ops, const void *arg, const tr_spawn_opts *opts,
             tr_ref *out)
{
	tr_ref link_to = TR_REF_NONE;
	if (opts != NULL && opts->link)
		link_to = tr__ref_of(ctx->w->node, ctx->a);
	return tr__spawn_on(ctx->w->node, ctx->w, ops, arg, opts, link_to, out);
}

/* Spawn requests from threads that are not workers. */
typedef struct spawn_req {
	tr__ctl ctl;
	tr_node *n;
	const tr_actor_ops *ops;
	const void *arg;
	const tr_spawn_opts *opts;
	tr_ref ref;
	int rc;
	int done;
	uv_mutex_t mu;
	uv_cond_t cv;
} spawn_req;

static void spawn_fn(tr__worker *w, tr__ctl *c)
{
	spawn_req *r = (spawn_req *)c;
	int rc = tr__spawn_on(r->n, w, r->ops, r->arg, r->opts, TR_REF_NONE, &r->ref);
	uv_mutex_lock(&r->mu);
	r->rc = rc;
	r->done = 1;
	uv_cond_signal(&r->cv);
	uv_mutex_unlock(&r->mu);
}

/* Spawns on worker `wi` from another thread: posts the request to that
 * worker and waits for its init. */
static int spawn_remote(tr_node *n, unsigned wi, const tr_actor_ops *ops, const void *arg,
                        const tr_spawn_opts *opts, tr_ref *out)
{
	spawn_req r;
	memset(&r, 0, sizeof(r));
	r.ctl.fn = spawn_fn;
	r.n = n;
	r.ops = ops;
	r.arg = arg;
	r.opts = opts;
	uv_mutex_init(&r.mu);
	uv_cond_init(&r.cv);
	tr__post_ctl(&n->workers[wi], &r.ctl);
	uv_mutex_lock(&r.mu);
	while (!r.done)
		uv_cond_wait(&r.cv, &r.mu);
	uv_mutex_unlock(&r.mu);
	uv_mutex_destroy(&r.mu);
	uv_cond_destroy(&r.cv);
	if (r.rc == TR_OK && out != NULL)
		*out = r.ref;
	return r.rc;
}

int tr_node_spawn(tr_node *n, const tr_actor_ops *ops, const void *arg, const tr_spawn_opts *opts,
                  tr_ref *out)
{
	tr__worker *self = tr__tls_worker;
	if (self != NULL && self->node == n)
		return tr__spawn_on(n, self, ops, arg, opts, TR_REF_NONE, out);
	if (!n->started)
		return TR_ESTATE;
	if (atomic_load(&n->stopping))
		return TR_ESHUTDOWN;
	unsigned wi = atomic_fetch_add_explicit(&n->rr, 1, memory_order_relaxed) % n->nworkers;
	return spawn_remote(n, wi, ops, arg, opts, out);
}

int tr__spawn_pinned(tr_node *n, unsigned wi, const tr_actor_ops *ops, const void *arg,
                     const tr_spawn_opts *opts, tr_ref *out)
{
	tr_spawn_opts o;
	if (opts != NULL)
		o = *opts;
	else
		memset(&o, 0, sizeof(o));
	o.pinned = 1;
	if (!n->started)
		return TR_ESTATE;
	if (wi >= n->nworkers)
		return TR_EINVAL;
	if (atomic_load(&n->stopping))
		return TR_ESHUTDOWN;
	tr__worker *self = tr__tls_worker;
	if (self == &n->workers[wi])
		return tr__spawn_on(n, self, ops, arg, &o, TR_REF_NONE, out);
	/* Another worker would block on the wait below while the target may
	 * be blocked on it: only the worker itself or a non-worker thread. */
	if (self != NULL)
		return TR_ESTATE;
	return spawn_remote(n, wi, ops, arg, &o, out);
}

void tr__stop_all(tr_node *n, tr__worker *w)
{
	(void)w;
	unsigned nc = atomic_load_explicit(&n->nchunks, memory_order_acquire);
	/* Newest first: children tend to sit at higher slots than parents. */
	for (unsigned c = nc; c-- > 0;) {
		for (unsigned i = TR_CHUNK_SIZE; i-- > 0;) {
			tr_actor *a = tr__actor_at(n, (c << TR_CHUNK_SHIFT) | i);
			/* One STOP per actor life: the retry timer calls this
			 * again for actors spawned after the first scan, and
			 * re-sending to the rest would pile up never-dropped
			 * system messages faster than a big node can stop. */
			tr__spin_lock(&a->lock);
			int live = (a->life == ACTOR_ALIVE || a->life == ACTOR_INIT) && !a->stop_sent;
			if (live)
				a->stop_sent = 1;
			tr_ref r = tr__ref_of(n, a);
			tr__spin_unlock(&a->lock);
			if (live)
				(void)tr__send_sys(n, TR_REF_NONE, r, TR_TAG_STOP, TR_ESHUTDOWN, 0, 0, 0);
		}
	}
}

/* ------------------------------------------------------------------ */
/* the API actors call                                                  */

tr_ref tr_self(const tr_ctx *ctx)
{
	return tr__ref_of(ctx->w->node, ctx->a);
}

tr_node *tr_ctx_node(const tr_ctx *ctx)
{
	return ctx->w->node;
}

unsigned tr_ctx_worker(const tr_ctx *ctx)
{
	return ctx->w->idx;
}

void tr_stop(tr_ctx *ctx, int reason)
{
	begin_stop(ctx->a, reason);
}

tr_msg *tr_take(tr_ctx *ctx)
{
	if (ctx->cur == NULL)
		return NULL;
	ctx->taken = 1;
	return ctx->cur;
}

void tr_trap_exit(tr_ctx *ctx, int on)
{
	ctx->a->trap_exit = on ? 1 : 0;
}

int tr_send(tr_ctx *ctx, tr_ref to, tr_msg *m)
{
	tr_ref self = tr__ref_of(ctx->w->node, ctx->a);
	m->from = self;
	if (to.idx != self.idx)
		ctx->sends++;
	return tr__deliver(ctx->w->node, to, m, self);
}

int tr_send_u64(tr_ctx *ctx, tr_ref to, uint32_t tag, uint64_t arg)
{
	if (tag >= TR_TAG_SYS_BASE)
		return TR_EINVAL;
	tr_msg *m = tr_msg_new();
	if (m == NULL)
		return TR_ENOMEM;
	m->tag = tag;
	m->arg = arg;
	return tr_send(ctx, to, m);
}

int tr_send_body(tr_ctx *ctx, tr_ref to, uint32_t tag, tr_body *body)
{
	tr_msg *m = tr_msg_new();
	if (m == NULL) {
		tr_body_unref(body);
		return TR_ENOMEM;
	}
	m->tag = tag;
	m->body = body;
	return tr_send(ctx, to, m);
}

int tr_node_send(tr_node *n, tr_ref to, tr_msg *m)
{
	return tr__deliver(n, to, m, TR_REF_NONE);
}

int tr_ask(tr_ctx *ctx, tr_ref to, tr_msg *m, uint64_t timeout_ms, uint64_t *corr)
{
	tr_actor *a = ctx->a;
	tr__actor_own *o = own_of(a);
	if (o == NULL) {
		tr_msg_free(m);
		return TR_ENOMEM;
	}
	uint64_t c = ++o->corr_seq;
	tr__timer *t = NULL;
	if (timeout_ms > 0) {
		int rc = tr__timer_start(ctx->w, a, TIMER_ASK, TR_TAG_REPLY_ERR, timeout_ms, c, &t);
		if (rc != TR_OK) {
			tr_msg_free(m);
			return rc;
		}
	}
	if (tr__map_put(&o->asks, c, TR_REF_NONE, t) != TR_OK) {
		if (t != NULL)
			tr__timer_cancel(ctx->w, t);
		tr_msg_free(m);
		return TR_ENOMEM;
	}
	m->flags = (uint16_t)((m->flags | TR_MSGF_ASK) & ~(TR_MSGF_REPLY | TR_MSGF_SYSTEM));
	m->corr = c;
	int rc = tr_send(ctx, to, m);
	if (rc != TR_OK) {
		/* Refused synchronously: no answer message will follow. */
		tr__map_del(&o->asks, c, TR_REF_NONE, NULL);
		if (t != NULL)
			tr__timer_cancel(ctx->w, t);
		return rc;
	}
	if (corr != NULL)
		*corr = c;
	return TR_OK;
}

/* Bookkeeping of an answer (reply or error reply) to `req`. */
static void settle_owed(tr_ctx *ctx, const tr_msg *req)
{
	if (ctx->a->own != NULL)
		tr__map_del(&ctx->a->own->owed, req->corr, req->from, NULL);
	if (req == ctx->cur)
		ctx->replied = 1;
	/* An answer is a message to another actor, as a tr_send is: the
	 * migration cost rule (worker.c, worth_moving) must see it. Without
	 * it a pipeline engine, whose turns are mostly replies, looked like
	 * pure computation and was moved away from its step actors, so every
	 * step crossed cores (bench/pipeline at 2 threads). */
	if (req->from.idx != ctx->a->idx)
		ctx->sends++;
}

int tr_reply(tr_ctx *ctx, const tr_msg *req, tr_msg *rep)
{
	if (!(req->flags & TR_MSGF_ASK) || (req->flags & TR_MSGF_REPLY)) {
		tr_msg_free(rep);
		return TR_EINVAL;
	}
	settle_owed(ctx, req);
	/* Replies are system messages: the asker's mailbox policy must not
	 * drop its answer. Their number is bounded by the asker's own asks. */
	rep->flags = (uint16_t)((rep->flags | TR_MSGF_REPLY | TR_MSGF_SYSTEM) & ~TR_MSGF_ASK);
	rep->corr = req->corr;
	rep->from = tr__ref_of(ctx->w->node, ctx->a);
	return tr__deliver(ctx->w->node, req->from, rep, TR_REF_NONE);
}

int tr_reply_error(tr_ctx *ctx, const tr_msg *req, int err)
{
	if (!(req->flags & TR_MSGF_ASK) || (req->flags & TR_MSGF_REPLY))
		return TR_EINVAL;
	settle_owed(ctx, req);
	return tr__send_sys(ctx->w->node, tr__ref_of(ctx->w->node, ctx->a), req->from,
	                    TR_TAG_REPLY_ERR, err, req->corr, 0, TR_MSGF_REPLY | TR_MSGF_ERROR);
}

/* ------------------------------------------------------------------ */
/* links, monitors, exit signals, pressure                              */

int tr_link(tr_ctx *ctx, tr_ref other)
{
	tr_node *n = ctx->w->node;
	tr_ref self = tr__ref_of(n, ctx->a);
	/* Links stay inside a node: across nodes, monitors (a lost node is
	 * a DOWN, not a cascade of kills on the survivors). */
	if (tr_ref_eq(other, self) || (other.node != n->id && other.gen != 0))
		return TR_EINVAL;
	tr_actor *b = tr__actor_lock_ref(n, other);
	if (b == NULL)
		return tr__send_sys(n, other, self, TR_TAG_EXIT, TR_ENOACTOR, 0, 0, 0) == TR_OK
		           ? TR_OK : TR_ENOMEM;
	tr__actor_ext *bx = tr__ext(b);
	int rc = bx ? tr__refvec_add(&bx->links, self, 0) : TR_ENOMEM;
	tr__spin_unlock(&b->lock);
	if (rc != TR_OK)
		return rc;
	tr__spin_lock(&ctx->a->lock);
	tr__actor_ext *ax = tr__ext(ctx->a);
	rc = ax ? tr__refvec_add(&ax->links, other, 0) : TR_ENOMEM;
	tr__spin_unlock(&ctx->a->lock);
	return rc;
}

int tr_unlink(tr_ctx *ctx, tr_ref other)
{
	tr_node *n = ctx->w->node;
	tr_ref self = tr__ref_of(n, ctx->a);
	tr_actor *b = tr__actor_lock_ref(n, other);
	if (b != NULL) {
		if (b->ext != NULL)
			tr__refvec_del(&b->ext->links, self, 0, 0);
		tr__spin_unlock(&b->lock);
	}
	tr__spin_lock(&ctx->a->lock);
	if (ctx->a->ext != NULL)
		tr__refvec_del(&ctx->a->ext->links, other, 0, 0);
	tr__spin_unlock(&ctx->a->lock);
	return TR_OK;
}

int tr_exit(tr_ctx *ctx, tr_ref to, int reason)
{
	return tr__send_sys(ctx->w->node, tr__ref_of(ctx->w->node, ctx->a), to, TR_TAG_EXIT,
	                    reason, 0, 0, 0);
}

int tr_monitor(tr_ctx *ctx, tr_ref target, uint64_t *mon_id)
{
	tr_node *n = ctx->w->node;
	tr__actor_own *o = own_of(ctx->a);
	if (o == NULL)
		return TR_ENOMEM;
	uint64_t id = ++o->mon_seq;
	tr_ref self = tr__ref_of(n, ctx->a);
	if (mon_id != NULL)
		*mon_id = id;
	const tr__remote_ops *ro = target.node != n->id && target.gen != 0 ? tr__remote(n) : NULL;
	if (ro != NULL)
		return ro->monitor(n->remote_ud, self, target, id, 1);
	tr_actor *b = tr__actor_lock_ref(n, target);
	if (b == NULL)
		return tr__send_sys(n, target, self, TR_TAG_DOWN, TR_ENOACTOR, id, 0, 0) == TR_OK
		           ? TR_OK : TR_ENOMEM;
	tr__actor_ext *x = tr__ext(b);
	int rc = x ? tr__refvec_add(&x->monitors, self, id) : TR_ENOMEM;
	tr__spin_unlock(&b->lock);
	return rc;
}

int tr_demonitor(tr_ctx *ctx, tr_ref target, uint64_t mon_id)
{
	tr_node *n = ctx->w->node;
	const tr__remote_ops *ro = target.node != n->id && target.gen != 0 ? tr__remote(n) : NULL;
	if (ro != NULL)
		return ro->monitor(n->remote_ud, tr__ref_of(n, ctx->a), target, mon_id, 0);
	tr_actor *b = tr__actor_lock_ref(n, target);
	if (b == NULL)
		return TR_ENOACTOR;
	int found = b->ext != NULL &&
	            tr__refvec_del(&b->ext->monitors, tr__ref_of(n, ctx->a), mon_id, 1);
	tr__spin_unlock(&b->lock);
	return found ? TR_OK : TR_ENOTFOUND;
}

int tr_pressure_watch(tr_ctx *ctx, tr_ref target)
{
	tr_node *n = ctx->w->node;
	tr_ref self = tr__ref_of(n, ctx->a);
	tr_actor *b = tr__actor_lock_ref(n, target);
	if (b == NULL)
		return TR_ENOACTOR;
	tr__actor_ext *x = tr__ext(b);
	int rc = x ? tr__refvec_add(&x->watchers, self, 0) : TR_ENOMEM;
	int now = b->pressure;
	tr__spin_unlock(&b->lock);
	if (rc == TR_OK && now)
		rc = tr__send_sys(n, target, self, TR_TAG_PRESSURE, 0, 0, 1, 0);
	return rc;
}
