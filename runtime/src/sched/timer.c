/*
 * sched/timer.c -- actor timers and ask timeouts, delivered as messages.
 *
 * A timer belongs to the worker that created it (its owner) and lives on
 * that worker's loop. The actor may migrate meanwhile, so firing only ever
 * sends a message by ref; it never touches the actor.
 *
 * Buckets. Timers do not get a uv_timer_t each: the timers of one worker
 * due in the same loop millisecond share a bucket, one uv timer plus an
 * intrusive list. The common timer is an ask timeout, started by tr_ask
 * and cancelled by the reply microseconds later; with a handle each, every
 * ask paid a calloc, an insert and a removal in libuv's timer heap, a
 * uv_close and a free (a third of a pipeline step, bench/pipeline). Now a
 * timer is a list append and unlink on a pooled struct, and the heap sees
 * one insert and one removal per bucket, that is per millisecond of due
 * times in use. Due times are computed from the loop clock in ms exactly
 * as libuv does for a timer of its own, so timers fire when they did.
 *
 * An emptied bucket is stopped and recycled at once, except the worker's
 * newest bucket: asks made in the same millisecond with the same timeout
 * land in it, so it stays armed until a newer bucket replaces it or it
 * fires empty (at most one needless wake-up after a burst).
 *
 * Lifetime: two references. One belongs to the actor's map (the holder),
 * one to the loop while the timer is armed (`armed`; dropped by disarm()
 * or by a one-shot's firing). The holder's goes in tr__timer_cancel.
 * Cancelling from another thread than the owner's posts a control message
 * (with its own reference) to the owner, since buckets are owner-only.
 * Hence the last reference is dropped on the owner's thread, where the
 * struct goes back to the owner's pool.
 */
#include "sched/sched.h"

/* Recycled structs kept per worker; beyond this they are freed. */
#define TIMER_POOL_MAX 1024
#define BUCKET_POOL_MAX 64
/* Latest due time (loop ms); map keys are due + 1, never 0. */
#define DUE_MAX (UINT64_MAX - 1)

struct tr__timer {
	/* --- owner only --- */
	tr__timer *prev, *next; /* in its bucket */
	tr__tbucket *b;         /* the bucket it waits in, or NULL */
	bool armed;             /* holds the loop's reference */
	uint64_t due;           /* loop ms, while in a bucket */
	uint64_t period;        /* TIMER_EVERY: ms between ticks, >= 1 */
	tr__timer *next_free;   /* owner's pool */
	/* --- set at start, read-only after --- */
	tr__ctl ctl;            /* for cross-thread cancel; used at most once */
	tr__worker *w;          /* owner */
	tr_ref target;
	uint64_t id;            /* timer id, or the ask's corr */
	uint32_t tag;
	int kind;
	/* --- shared --- */
	atomic_uint refs;
	atomic_bool cancelled;
	atomic_bool ctl_posted;
	atomic_bool queued;       /* periodic: a tick waits in the mailbox */
	atomic_ullong missed;     /* periodic: ticks folded into the queued one */
};

struct tr__tbucket {
	uv_timer_t h;
	tr__worker *w;
	uint64_t due;           /* loop ms */
	tr__timer *head, *tail;
	tr__tbucket *next_free;
};

/* ------------------------------------------------------------------ */
/* buckets (owner thread only)                                         */

static void bucket_fire(uv_timer_t *h);

static void bucket_close_cb(uv_handle_t *h)
{
	tr__free(h->data);
}

/* Takes an empty bucket out of service: stopped, unmapped, pooled (its
 * handle stays initialised for reuse) or closed. */
static void bucket_retire(tr__worker *w, tr__tbucket *b)
{
	uv_timer_stop(&b->h);
	tr__map_del(&w->tbuckets, b->due + 1, TR_REF_NONE, NULL);
	if (w->tb_newest == b)
		w->tb_newest = NULL;
	if (w->tb_free_len < BUCKET_POOL_MAX) {
		b->next_free = w->tb_free;
		w->tb_free = b;
		w->tb_free_len++;
	} else {
		uv_close((uv_handle_t *)&b->h, bucket_close_cb);
	}
}

/* The armed bucket for `due` (`ms` from the loop's now), made if needed;
 * NULL without memory. */
static tr__tbucket *bucket_for(tr__worker *w, uint64_t due, uint64_t ms)
{
	tr__tbucket *b = w->tb_newest;
	if (b != NULL && b->due == due)
		return b;
	tr__map_ent *e = tr__map_get(&w->tbuckets, due + 1, TR_REF_NONE);
	if (e != NULL)
		return e->ptr;
	if ((b = w->tb_free) != NULL) {
		w->tb_free = b->next_free;
		w->tb_free_len--;
	} else {
		if ((b = tr__malloc(sizeof(*b))) == NULL)
			return NULL;
		uv_timer_init(&w->loop, &b->h);
		b->h.data = b;
		b->w = w;
	}
	b->due = due;
	b->head = b->tail = NULL;
	if (tr__map_put(&w->tbuckets, due + 1, TR_REF_NONE, b) != TR_OK) {
		b->next_free = w->tb_free;
		w->tb_free = b;
		w->tb_free_len++;
		return NULL;
	}
	uv_timer_start(&b->h, bucket_fire, ms, 0);
	/* The previous newest stayed armed only in case more timers came
	 * for its millisecond; if it is empty, that chance has passed. */
	tr__tbucket *old = w->tb_newest;
	w->tb_newest = b;
	if (old != NULL && old->head == NULL)
		bucket_retire(w, old);
	return b;
}

/* Links `t` into the bucket due `ms` from the loop's cached now. */
static int link_in(tr__worker *w, tr__timer *t, uint64_t ms)
{
	uint64_t now = uv_now(&w->loop);
	/* uv_now is whole milliseconds, rounded down: a timer due at now + ms
	 * could fire up to 1 ms before ms have passed. One more makes "after
	 * ms" a promise (late by less than 1 ms, never early). */
	uint64_t wait = ms > 0 ? ms + 1 : 0;
	uint64_t due = wait < DUE_MAX - now ? now + wait : DUE_MAX;
	tr__tbucket *b = bucket_for(w, due, wait);
	if (b == NULL)
		return TR_ENOMEM;
	t->b = b;
	t->due = due;
	t->next = NULL;
	t->prev = b->tail;
	if (b->tail)
		b->tail->next = t;
	else
		b->head = t;
	b->tail = t;
	w->ntimers++;
	return TR_OK;
}

static void unlink_out(tr__worker *w, tr__timer *t)
{
	tr__tbucket *b = t->b;
	if (t->prev)
		t->prev->next = t->next;
	else
		b->head = t->next;
	if (t->next)
		t->next->prev = t->prev;
	else
		b->tail = t->prev;
	t->prev = t->next = NULL;
	t->b = NULL;
	w->ntimers--;
	if (b->head == NULL && b != w->tb_newest)
		bucket_retire(w, b);
}

/* ------------------------------------------------------------------ */
/* timers                                                              */

static void unref(tr__timer *t)
{
	/* acq_rel: release so our uses happen-before the reuse, acquire (for
	 * the last holder) so the others' uses do too. */
	if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1)
		return;
	tr__worker *w = t->w;
	/* The owner's thread, always (see the header); the check keeps a
	 * future caller that breaks the rule from corrupting the pool. */
	if (tr__tls_worker == w && w->timer_pool_len < TIMER_POOL_MAX) {
		t->next_free = w->timer_pool;
		w->timer_pool = t;
		w->timer_pool_len++;
		return;
	}
	tr__free(t);
}

/* Owner thread only: leaves its bucket and drops the loop's reference. */
static void disarm(tr__worker *w, tr__timer *t)
{
	if (!t->armed)
		return;
	if (t->b != NULL)
		unlink_out(w, t);
	t->armed = false;
	unref(t);
}

/* `t`, just taken out of its bucket, is due. */
static void expire(tr__worker *w, tr__timer *t)
{
	tr_node *n = w->node;
	int rc;
	/* acquire: pairs with the release store in tr__timer_cancel. */
	if (atomic_load_explicit(&t->cancelled, memory_order_acquire)) {
		disarm(w, t);
		return;
	}
	switch (t->kind) {
	case TIMER_ASK:
		(void)tr__send_sys(n, t->target, t->target, TR_TAG_REPLY_ERR, TR_ETIMEDOUT, t->id, 0,
		                   TR_MSGF_REPLY | TR_MSGF_ERROR);
		disarm(w, t);
		break;
	case TIMER_ONCE:
		(void)tr__send_sys(n, t->target, t->target, t->tag, 0, t->id, 0, TR_MSGF_TIMER);
		disarm(w, t);
		break;
	default: { /* TIMER_EVERY */
		/* Periods that passed while the loop was busy (a long turn on
		 * this worker) fell due too: they count as coalesced ticks. */
		uint64_t now = uv_now(&w->loop);
		uint64_t skipped = now > t->due ? (now - t->due) / t->period : 0;
		/* At most one tick queued; the rest are counted into it. The
		 * exchange is acq_rel against tr__timer_delivered's release. */
		if (atomic_exchange_explicit(&t->queued, true, memory_order_acq_rel)) {
			atomic_fetch_add_explicit(&t->missed, 1 + skipped, memory_order_relaxed);
		} else {
			rc = tr__send_sys(n, t->target, t->target, t->tag, 0, t->id,
			                  atomic_exchange_explicit(&t->missed, 0, memory_order_relaxed) +
			                      skipped,
			                  TR_MSGF_TIMER);
			if (rc == TR_ENOACTOR) {
				disarm(w, t); /* its actor is gone; it will never cancel */
				break;
			}
		}
		/* Next tick one period from the loop's now, as libuv repeats.
		 * Without memory for a new bucket the ticks stop (rare: the
		 * pools usually have one). */
		if (link_in(w, t, t->period) != TR_OK)
			disarm(w, t);
		break;
	}
	}
}

static void bucket_fire(uv_timer_t *h)
{
	tr__tbucket *b = h->data;
	tr__worker *w = b->w;
	tr__timer *t = b->head;

	/* Detach the list and retire the bucket first: expiring may link
	 * timers into other buckets, which may reuse this one. Nothing can
	 * join this due time any more; later starts get later ones. */
	b->head = b->tail = NULL;
	bucket_retire(w, b);
	while (t != NULL) {
		tr__timer *next = t->next;
		t->prev = t->next = NULL;
		t->b = NULL;
		w->ntimers--;
		expire(w, t);
		t = next;
	}
}

int tr__timer_start(tr__worker *w, tr_actor *a, int kind, uint32_t tag, uint64_t ms,
                    uint64_t corr, tr__timer **out)
{
	tr__timer *t = w->timer_pool;
	if (t != NULL) {
		w->timer_pool = t->next_free;
		w->timer_pool_len--;
	} else if ((t = tr__malloc(sizeof(*t))) == NULL) {
		return TR_ENOMEM;
	}
	t->prev = t->next = NULL;
	t->b = NULL;
	t->armed = true;
	t->period = ms ? ms : 1;
	t->next_free = NULL;
	t->ctl.next = NULL;
	t->w = w;
	t->target = tr__ref_of(w->node, a);
	t->id = corr;
	t->tag = tag;
	t->kind = kind;
	atomic_init(&t->refs, 2);
	atomic_init(&t->cancelled, false);
	atomic_init(&t->ctl_posted, false);
	atomic_init(&t->queued, false);
	atomic_init(&t->missed, 0);
	/* libuv counts from the loop's cached clock, which is stale after a
	 * run of actor turns: refresh it, or the timer fires early. */
	uv_update_time(&w->loop);
	if (link_in(w, t, ms) != TR_OK) {
		atomic_init(&t->refs, 1);
		unref(t); /* back to the pool */
		return TR_ENOMEM;
	}
	*out = t;
	return TR_OK;
}

static void cancel_fn(tr__worker *w, tr__ctl *c)
{
	tr__timer *t = (tr__timer *)((char *)c - offsetof(tr__timer, ctl));
	disarm(w, t);
	unref(t); /* the control message's reference */
}

void tr__timer_cancel(tr__worker *w, tr__timer *t)
{
	/* release: an expire() that sees the flag also sees everything before. */
	atomic_store_explicit(&t->cancelled, true, memory_order_release);
	if (t->w == w) {
		disarm(w, t);
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

void tr__timer_worker_fini(tr__worker *w)
{
	/* Armed buckets are empty by now (the worker leaves its loop with no
	 * timers); close them and the pooled ones, the close callback frees. */
	for (uint32_t i = 0; i < w->tbuckets.cap; i++)
		if (w->tbuckets.ents[i].key != 0)
			uv_close((uv_handle_t *)&((tr__tbucket *)w->tbuckets.ents[i].ptr)->h,
			         bucket_close_cb);
	tr__map_free(&w->tbuckets);
	w->tb_newest = NULL;
	while (w->tb_free != NULL) {
		tr__tbucket *b = w->tb_free;
		w->tb_free = b->next_free;
		uv_close((uv_handle_t *)&b->h, bucket_close_cb);
	}
	w->tb_free_len = 0;
	while (w->timer_pool != NULL) {
		tr__timer *t = w->timer_pool;
		w->timer_pool = t->next_free;
		tr__free(t);
	}
	w->timer_pool_len = 0;
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
