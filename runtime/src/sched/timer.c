/*
 * sched/timer.c -- actor timers and ask timeouts, delivered as messages.
 *
 * A timer is a uv_timer_t on the loop of the worker that created it (its
 * owner). The actor may migrate meanwhile, so firing only ever sends a
 * message by ref; it never touches the actor.
 *
 * Lifetime: two references. One belongs to the actor's map (the holder),
 * one to the loop while the timer is armed. The loop's reference goes in
 * the uv_close callback; the holder's in tr__timer_cancel. Cancelling from
 * another thread than the owner's posts a control message (with its own
 * reference) to the owner, since libuv handles are single-threaded.
 */
#include "sched/sched.h"

struct tr__timer {
	uv_timer_t h;
	tr__ctl ctl;       /* for cross-thread cancel; used at most once */
	tr__worker *w;     /* owner */
	tr_ref target;
	uint64_t id;       /* timer id, or the ask's corr */
	uint32_t tag;
	int kind;
	bool closing;      /* owner only */
	atomic_uint refs;
	atomic_bool cancelled;
	atomic_bool ctl_posted;
	atomic_bool queued;       /* periodic: a tick waits in the mailbox */
	atomic_ullong missed;     /* periodic: ticks folded into the queued one */
};

static void unref(tr__timer *t)
{
	/* acq_rel: release so our uses happen-before the free, acquire (for
	 * the last holder) so the others' uses do too. */
	if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) == 1)
		tr__free(t);
}

static void close_cb(uv_handle_t *h)
{
	tr__timer *t = h->data;
	t->w->ntimers--;
	unref(t);
}

/* Owner thread only. */
static void disarm(tr__timer *t)
{
	if (t->closing)
		return;
	t->closing = true;
	uv_timer_stop(&t->h);
	uv_close((uv_handle_t *)&t->h, close_cb);
}

static void fire(uv_timer_t *h)
{
	tr__timer *t = h->data;
	tr_node *n = t->w->node;
	/* acquire: pairs with the release store in tr__timer_cancel. */
	if (atomic_load_explicit(&t->cancelled, memory_order_acquire)) {
		disarm(t);
		return;
	}
	int rc;
	switch (t->kind) {
	case TIMER_ASK:
		rc = tr__send_sys(n, t->target, t->target, TR_TAG_REPLY_ERR, TR_ETIMEDOUT, t->id, 0,
		                  TR_MSGF_REPLY | TR_MSGF_ERROR);
		disarm(t);
		break;
	case TIMER_ONCE:
		rc = tr__send_sys(n, t->target, t->target, t->tag, 0, t->id, 0, TR_MSGF_TIMER);
		disarm(t);
		break;
	default: /* TIMER_EVERY */
		/* At most one tick queued; the rest are counted into it. The
		 * exchange is acq_rel against tr__timer_delivered's release. */
		if (atomic_exchange_explicit(&t->queued, true, memory_order_acq_rel)) {
			atomic_fetch_add_explicit(&t->missed, 1, memory_order_relaxed);
			return;
		}
		rc = tr__send_sys(n, t->target, t->target, t->tag, 0, t->id,
		                  atomic_exchange_explicit(&t->missed, 0, memory_order_relaxed),
		                  TR_MSGF_TIMER);
		if (rc == TR_ENOACTOR)
			disarm(t); /* its actor is gone; it will never cancel */
		break;
	}
	(void)rc;
}

int tr__timer_start(tr__worker *w, tr_actor *a, int kind, uint32_t tag, uint64_t ms,
                    uint64_t corr, tr__timer **out)
{
	tr__timer *t = tr__calloc(1, sizeof(*t));
	if (t == NULL)
		return TR_ENOMEM;
	t->w = w;
	t->target = tr__ref_of(w->node, a);
	t->tag = tag;
	t->kind = kind;
	t->id = corr;
	atomic_init(&t->refs, 2);
	uv_timer_init(&w->loop, &t->h);
	t->h.data = t;
	w->ntimers++;
	/* libuv counts from the loop's cached clock, which is stale after a
	 * run of actor turns: refresh it, or the timer fires early. */
	uv_update_time(&w->loop);
	uv_timer_start(&t->h, fire, ms, kind == TIMER_EVERY ? (ms ? ms : 1) : 0);
	*out = t;
	return TR_OK;
}

static void cancel_fn(tr__worker *w, tr__ctl *c)
{
	tr__timer *t = (tr__timer *)((char *)c - offsetof(tr__timer, ctl));
	(void)w;
	disarm(t);
	unref(t); /* the control message's reference */
}

void tr__timer_cancel(tr__worker *w, tr__timer *t)
{
	/* release: a fire() that sees the flag also sees everything before. */
	atomic_store_explicit(&t->cancelled, true, memory_order_release);
	if (t->w == w) {
		disarm(t);
	} else if (!atomic_exchange_explicit(&t->ctl_posted, true, memory_order_relaxed)) {
		atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
		t->ctl.fn = cancel_fn;
		tr__post_ctl(t->w, &t->ctl);
	}
	unref(t); /* the holder's reference */
}

void tr__timer_delivered(tr__timer *t)
{
	atomic_store_explicit(&t->queued, false, memory_order_release);
}

uint64_t tr__timer_id(const tr__timer *t)
{
	return t->id;
}

int tr__timer_kind(const tr__timer *t)
{
	return t->kind;
}

/* ------------------------------------------------------------------ */
/* the API                                                              */

static int start_user(tr_ctx *ctx, uint32_t tag, uint64_t ms, int kind, uint64_t *id)
{
	if (tag >= TR_TAG_SYS_BASE)
		return TR_EINVAL;
	tr_actor *a = ctx->a;
	if (a->own == NULL && (a->own = tr__calloc(1, sizeof(*a->own))) == NULL)
		return TR_ENOMEM;
	uint64_t tid = ++a->own->timer_seq;
	tr__timer *t;
	int rc = tr__timer_start(ctx->w, a, kind, tag, ms, tid, &t);
	if (rc != TR_OK)
		return rc;
	if (tr__map_put(&a->own->timers, tid, TR_REF_NONE, t) != TR_OK) {
		tr__timer_cancel(ctx->w, t);
		return TR_ENOMEM;
	}
	if (id != NULL)
		*id = tid;
	return TR_OK;
}

int tr_timer_after(tr_ctx *ctx, uint32_t tag, uint64_t ms, uint64_t *id)
{
	return start_user(ctx, tag, ms, TIMER_ONCE, id);
}

int tr_timer_every(tr_ctx *ctx, uint32_t tag, uint64_t ms, uint64_t *id)
{
	return start_user(ctx, tag, ms, TIMER_EVERY, id);
}

int tr_timer_cancel(tr_ctx *ctx, uint64_t id)
{
	void *t;
	if (ctx->a->own == NULL || !tr__map_del(&ctx->a->own->timers, id, TR_REF_NONE, &t))
		return TR_ENOTFOUND;
	tr__timer_cancel(ctx->w, t);
	return TR_OK;
}
