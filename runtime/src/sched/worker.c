/*
 * sched/worker.c -- one worker thread: its loop, run queue and inbox.
 *
 * The loop alternates between running actor turns from the local run
 * queue and letting libuv process I/O and timers. With work queued it
 * polls libuv without blocking every TURN_BUDGET turns, or sooner once
 * the batch has run POLL_BUDGET_US (a chain of long turns -- an actor
 * that computes, replying to one that asks again -- would otherwise keep
 * a client's bytes, its disconnect or a due timer waiting for the whole
 * chain); with none it sleeps in epoll until its inbox, a timer or an
 * I/O handle wakes it. The sleep is skipped when other workers have
 * already posted work, but not the poll: a worker that is always handed
 * its next turn before it sleeps (two runs whose long steps alternate
 * with another worker's short ones) would otherwise never poll, and a
 * new connection on its listener waited for the whole chain. So libuv
 * polls at least once every POLL_BUDGET_US whatever the queues hold
 * (polled_cyc).
 *
 * Waking. Another thread that makes an actor runnable here appends it to
 * the inbox under in_lock. It calls uv_async_send only when the inbox went
 * from empty to non-empty AND this worker is asleep (or about to be):
 * a busy worker drains its inbox between turns anyway, so the eventfd
 * write (a syscall on both sides) is skipped. The sleep flag and the inbox
 * form a Dekker pair; see sleep_then_run() and post().
 */
#include <string.h>

#include "sched/sched.h"

_Thread_local tr__worker *tr__tls_worker;

/* Turns between two non-blocking polls of libuv (timers, I/O). */
#define TURN_BUDGET 128
/* Restart stopping actors this often while the node shuts down. */
#define STOP_RETRY_MS 100

static atomic_bool *sleep_flag(tr__worker *w)
{
	return &w->in_sleep;
}

/* Appends under in_lock and wakes the worker if needed. `is_ctl`
 * selects the control list. */
static void post(tr__worker *w, tr_actor *a, tr__ctl *c)
{
	tr__spin_lock(&w->in_lock);
	int was_empty = w->in_head == NULL && w->ctl_head == NULL;
	if (a != NULL) {
		a->rq_next = NULL;
		if (w->in_tail)
			w->in_tail->rq_next = a;
		else
			w->in_head = a;
		w->in_tail = a;
	} else {
		c->next = NULL;
		if (w->ctl_tail)
			w->ctl_tail->next = c;
		else
			w->ctl_head = c;
		w->ctl_tail = c;
	}
	/* seq_cst store, then (below) seq_cst load of in_sleep: one half of
	 * the Dekker pair with sleep_then_run(). */
	if (was_empty)
		atomic_store_explicit(&w->in_pending, true, memory_order_seq_cst);
	tr__spin_unlock(&w->in_lock);
	if (!was_empty)
		return; /* whoever made it non-empty did the waking */
	/* The worker stores in_sleep, then loads in_pending; we store
	 * in_pending, then load in_sleep; all four are seq_cst, so in their
	 * single total order at least one side sees the other's store: a
	 * worker never sleeps on a non-empty inbox unwoken. */
	if (atomic_load_explicit(sleep_flag(w), memory_order_seq_cst)) {
		atomic_fetch_add_explicit(&w->node->n_wakeups, 1, memory_order_relaxed);
		uv_async_send(&w->async);
	}
}

void tr__post_ctl(tr__worker *w, tr__ctl *c)
{
	post(w, NULL, c);
}

static inline void rq_push(tr__worker *w, tr_actor *a)
{
	a->rq_next = NULL;
	if (w->rq_tail)
		w->rq_tail->rq_next = a;
	else
		w->rq_head = a;
	w->rq_tail = a;
	w->rq_len++;
}

static inline tr_actor *rq_pop(tr__worker *w)
{
	tr_actor *a = w->rq_head;
	if (a != NULL) {
		w->rq_head = a->rq_next;
		if (w->rq_head == NULL)
			w->rq_tail = NULL;
		w->rq_len--;
	}
	return a;
}

void tr__make_runnable(tr_node *n, tr_actor *a, unsigned home)
{
	tr__worker *self = tr__tls_worker;
	if (self != NULL && self->node == n && self->idx == home) {
		rq_push(self, a);
		/* A callback inside sleep_then_run's uv_run (a timer due when
		 * it started: libuv runs those before it polls) made the actor
		 * runnable: without uv_stop, libuv would then block in epoll
		 * with the actor queued here until something else woke us. */
		if (atomic_load_explicit(&self->in_sleep, memory_order_relaxed))
			uv_stop(&self->loop);
		return;
	}
	post(&n->workers[home], a, NULL);
}

/* Re-queues an actor that still has work, on the worker running it. */
void tr__requeue(tr__worker *w, tr_actor *a)
{
	rq_push(w, a);
}

static int inbox_nonempty(tr__worker *w)
{
	return atomic_load_explicit(&w->in_pending, memory_order_seq_cst);
}

static void drain_inbox(tr__worker *w)
{
	/* Cheap check first: posts set in_pending under the lock. */
	if (!atomic_load_explicit(&w->in_pending, memory_order_acquire))
		return;
	tr__spin_lock(&w->in_lock);
	atomic_store_explicit(&w->in_pending, false, memory_order_relaxed);
	tr_actor *ah = w->in_head, *at = w->in_tail;
	tr__ctl *c = w->ctl_head;
	w->in_head = w->in_tail = NULL;
	w->ctl_head = w->ctl_tail = NULL;
	tr__spin_unlock(&w->in_lock);
	if (ah != NULL) {
		unsigned k = 0;
		for (tr_actor *a = ah; a; a = a->rq_next)
			k++;
		if (w->rq_tail)
			w->rq_tail->rq_next = ah;
		else
			w->rq_head = ah;
		w->rq_tail = at;
		w->rq_len += k;
	}
	while (c != NULL) {
		tr__ctl *next = c->next;
		c->fn(w, c); /* takes ownership of c */
		c = next;
	}
}

/* Computes more than it talks: its last turn was long, and long per
 * message it sent to others (self-sends excluded). */
static inline int worth_moving(const tr_node *n, const tr_actor *a)
{
	return !a->pinned && a->last_turn_cyc >= n->migrate_min_cyc &&
	       a->last_turn_cyc / (a->last_turn_sends + 1u) >= n->migrate_min_cyc / 4;
}

/*
 * Gives an idle worker the runnable actors that are worth moving: those
 * whose last turn took at least node->migrate_min_cyc (see sched.h). Only
 * queued, not-running actors move; their sched bit stays 1 throughout, so
 * no sender enqueues them concurrently, and their new home is published
 * to senders through the inbox lock and then the actor lock.
 */
static void maybe_migrate(tr__worker *w)
{
	tr_node *n = w->node;
	if (w->rq_len < 2)
		return;
	/* relaxed: the mask is a hint; a stale bit costs one needless look. */
	unsigned long long idle = atomic_load_explicit(&n->idle_mask, memory_order_relaxed);
	idle &= ~(1ULL << w->idx);
	if (idle == 0)
		return;
	/* Anything heavy enough queued? Look at a bounded prefix only. */
	unsigned heavy = 0, seen = 0;
	for (tr_actor *a = w->rq_head; a != NULL && seen < 64; a = a->rq_next, seen++)
		heavy += worth_moving(n, a);
	if (heavy == 0)
		return;
	unsigned v = (unsigned)__builtin_ctzll(idle);
	unsigned long long bit = 1ULL << v;
	/* Claim the idle worker so two donors do not both feed it. */
	if (!(atomic_fetch_and_explicit(&n->idle_mask, ~bit, memory_order_relaxed) & bit))
		return;
	/* Give half of the heavy ones (at least one), keep the rest in order. */
	unsigned give = heavy / 2 ? heavy / 2 : 1, given = 0;
	tr_actor *keep_h = NULL, *keep_t = NULL;
	unsigned kept = 0;
	tr_actor *a;
	while ((a = rq_pop(w)) != NULL) {
		if (given < give && worth_moving(n, a)) {
			atomic_store_explicit(&a->home, v, memory_order_relaxed);
			post(&n->workers[v], a, NULL);
			given++;
			continue;
		}
		a->rq_next = NULL;
		if (keep_t)
			keep_t->rq_next = a;
		else
			keep_h = a;
		keep_t = a;
		kept++;
	}
	w->rq_head = keep_h;
	w->rq_tail = keep_t;
	w->rq_len = kept;
	atomic_fetch_add_explicit(&n->n_migrations, given, memory_order_relaxed);
}

static void stop_retry_cb(uv_timer_t *t)
{
	tr__worker *w = t->data;
	if (atomic_load_explicit(&w->node->alive, memory_order_relaxed) > 0)
		tr__stop_all(w->node, w);
}

static void close_free_cb(uv_handle_t *h)
{
	tr__free(h);
}

static void walk_close(uv_handle_t *h, void *arg)
{
	(void)arg;
	if (!uv_is_closing(h))
		uv_close(h, NULL);
}

/* One libuv pass without blocking (timers, I/O, closes). */
static void poll_nowait(tr__worker *w)
{
	uv_run(&w->loop, UV_RUN_NOWAIT);
	w->polled_cyc = tr__cycles();
}

/* Work was posted before we slept: no sleep, but a poll if the last one
 * is older than the budget (see the top of the file). */
static void skip_sleep(tr__worker *w)
{
	if (tr__cycles() - w->polled_cyc > w->node->poll_cyc)
		poll_nowait(w);
}

/* Sleeps in libuv until something happens, unless the inbox has work. */
static void sleep_then_run(tr__worker *w)
{
	tr_node *n = w->node;
	unsigned long long bit = 1ULL << w->idx;
	if (n->spin_us > 0) {
		uint64_t until = tr_now_ns() + (uint64_t)n->spin_us * 1000u;
		do {
			for (int i = 0; i < 64; i++)
				tr__cpu_relax();
			if (inbox_nonempty(w)) {
				skip_sleep(w);
				return;
			}
		} while (tr_now_ns() < until);
	}
	if (n->migrate)
		atomic_fetch_or_explicit(&n->idle_mask, bit, memory_order_relaxed);
	atomic_store_explicit(sleep_flag(w), true, memory_order_seq_cst); /* Dekker, see post() */
	int slept = !inbox_nonempty(w);
	if (slept) {
		uv_run(&w->loop, UV_RUN_ONCE);
		w->polled_cyc = tr__cycles();
	}
	atomic_store_explicit(sleep_flag(w), false, memory_order_relaxed);
	if (n->migrate)
		atomic_fetch_and_explicit(&n->idle_mask, ~bit, memory_order_relaxed);
	if (!slept)
		skip_sleep(w);
}

void tr__worker_main(void *arg)
{
	tr__worker *w = arg;
	tr_node *n = w->node;
	uv_timer_t *stop_timer = NULL;
	tr__tls_worker = w;

	for (;;) {
		drain_inbox(w);
		if (!w->stopping_seen && atomic_load(&n->stopping)) {
			w->stopping_seen = true;
			if (w->idx == 0) {
				tr__stop_all(n, w);
				stop_timer = tr__malloc(sizeof(*stop_timer));
				if (stop_timer != NULL) {
					uv_timer_init(&w->loop, stop_timer);
					stop_timer->data = w;
					uv_timer_start(stop_timer, stop_retry_cb, STOP_RETRY_MS, STOP_RETRY_MS);
				}
			}
		}
		unsigned turns = 0;
		tr_actor *a;
		uint64_t batch0 = tr__cycles();
		while (turns < TURN_BUDGET && (a = rq_pop(w)) != NULL) {
			tr__run_turn(w, a);
			turns++;
			if (tr__cycles() - batch0 > n->poll_cyc)
				break;
			if (n->migrate && (turns & 15) == 0)
				maybe_migrate(w);
		}
		w->turns += turns;
		if (n->migrate)
			maybe_migrate(w);
		if (w->stopping_seen && w->rq_head == NULL &&
		    atomic_load(&n->alive) == 0 && w->ntimers == 0 && !inbox_nonempty(w))
			break;
		if (w->rq_head != NULL)
			poll_nowait(w);
		else
			sleep_then_run(w);
	}

	if (stop_timer != NULL)
		uv_close((uv_handle_t *)stop_timer, close_free_cb);
	tr__timer_worker_fini(w);
	uv_close((uv_handle_t *)&w->async, NULL);
	uv_walk(&w->loop, walk_close, NULL);
	while (uv_run(&w->loop, UV_RUN_DEFAULT) != 0)
		;
	uv_loop_close(&w->loop);
	tr__msgpool_drain(w);
	tr__tls_worker = NULL;
	tr__node_worker_done(n);
}
