/*
 * sched/node.c -- node lifecycle, the actor table (type-stable chunks and
 * freelists), ref resolution, node statistics, the cycle clock.
 */
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sched/sched.h"

/* Per-worker freelists hold at most this many structs; the rest goes to
 * the node's list, so a worker that only reaps and one that only spawns
 * (the spawn benchmark at 2 threads) share instead of growing apart. */
#define FREE_LOCAL_MAX 2048
#define FREE_MOVE 512

/* A turn at least this long (CPU) makes an actor worth migrating: about
 * one cross-core wake-up on the 2-vCPU machines (see sched.h). */
#define MIGRATE_MIN_US 20
/* A batch of turns that ran this long gives libuv a poll (worker.c). */
#define POLL_BUDGET_US 2000

/* ------------------------------------------------------------------ */
/* clock                                                                */

static double ns_per_cycle = 1.0;

void tr__clock_calibrate(void)
{
#if defined(__x86_64__) || defined(__i386__)
	uint64_t t0 = tr_now_ns(), c0 = tr__cycles();
	struct timespec d = {0, 2000000}; /* 2 ms is enough for 0.1% */
	nanosleep(&d, NULL);
	uint64_t t1 = tr_now_ns(), c1 = tr__cycles();
	if (c1 > c0 && t1 > t0)
		ns_per_cycle = (double)(t1 - t0) / (double)(c1 - c0);
#endif
}

uint64_t tr__cycles_to_ns(uint64_t cycles)
{
	return (uint64_t)((double)cycles * ns_per_cycle);
}

uint64_t tr__ns_to_cycles(uint64_t ns)
{
	return (uint64_t)((double)ns / ns_per_cycle);
}

/* ------------------------------------------------------------------ */
/* actor table                                                          */

tr_actor *tr__actor_at(tr_node *n, uint32_t idx)
{
	uint32_t c = idx >> TR_CHUNK_SHIFT;
	/* acquire: pairs with the release store that published the chunk, so
	 * its initialised structs (locks, generations) are visible. */
	if (c >= atomic_load_explicit(&n->nchunks, memory_order_acquire))
		return NULL;
	tr_actor *chunk = atomic_load_explicit(&n->chunks[c], memory_order_acquire);
	return chunk ? &chunk[idx & (TR_CHUNK_SIZE - 1)] : NULL;
}

void tr__node_set_remote(tr_node *n, const tr__remote_ops *ops, void *ud)
{
	n->remote_ud = ud;
	atomic_store_explicit(&n->remote, ops, memory_order_release);
}

tr_actor *tr__actor_lock_ref(tr_node *n, tr_ref ref)
{
	if (ref.node != n->id || ref.gen == 0)
		return NULL;
	tr_actor *a = tr__actor_at(n, ref.idx);
	if (a == NULL)
		return NULL;
	tr__spin_lock(&a->lock);
	if (a->gen != ref.gen || (a->life != ACTOR_ALIVE && a->life != ACTOR_INIT)) {
		tr__spin_unlock(&a->lock);
		return NULL;
	}
	return a;
}

/* Adds one chunk; called with chunk_mu held. Its structs go to the
 * global freelist. */
static int grow(tr_node *n)
{
	unsigned c = atomic_load_explicit(&n->nchunks, memory_order_relaxed);
	if (c >= TR_MAX_CHUNKS)
		return TR_ELIMIT;
	tr_actor *chunk = tr__calloc(TR_CHUNK_SIZE, sizeof(tr_actor));
	if (chunk == NULL)
		return TR_ENOMEM;
	for (unsigned i = 0; i < TR_CHUNK_SIZE; i++) {
		tr_actor *a = &chunk[i];
		a->idx = (c << TR_CHUNK_SHIFT) | i;
		a->gen = 0; /* bumped to 1 at first use: gen 0 is never live */
		a->rq_next = (i + 1 < TR_CHUNK_SIZE) ? &chunk[i + 1] : n->gfree;
	}
	/* Slot 0 of chunk 0 is never handed out, so no live ref is all-zero
	 * in its index either; it costs one struct. */
	n->gfree = (c == 0) ? &chunk[1] : &chunk[0];
	n->gfree_len += (c == 0) ? TR_CHUNK_SIZE - 1 : TR_CHUNK_SIZE;
	atomic_store_explicit(&n->chunks[c], chunk, memory_order_release);
	atomic_store_explicit(&n->nchunks, c + 1, memory_order_release);
	return TR_OK;
}

/* Raises n->slots_hw to cover a. Relaxed: the value only bounds a scan;
 * a walker that must see this actor learnt of it through a message or a
 * join, whose release/acquire pair orders this store before its load, and
 * the slot's own contents are ordered by its spin lock. */
static tr_actor *note_slot(tr_node *n, tr_actor *a)
{
	uint32_t want = a->idx + 1, cur = atomic_load_explicit(&n->slots_hw, memory_order_relaxed);
	while (cur < want && !atomic_compare_exchange_weak_explicit(&n->slots_hw, &cur, want,
	                                                          memory_order_relaxed,
	                                                          memory_order_relaxed))
		;
	return a;
}

tr_actor *tr__actor_alloc(tr_node *n, tr__worker *w)
{
	tr_actor *a;
	if (w != NULL && w->free_actors != NULL) {
		a = w->free_actors;
		w->free_actors = a->rq_next;
		w->free_len--;
		return note_slot(n, a);
	}
	uv_mutex_lock(&n->chunk_mu);
	if (n->gfree == NULL && grow(n) != TR_OK) {
		uv_mutex_unlock(&n->chunk_mu);
		return NULL;
	}
	a = n->gfree;
	n->gfree = a->rq_next;
	n->gfree_len--;
	/* Take a batch for the local list, so the mutex is paid once per
	 * FREE_MOVE spawns. */
	for (unsigned i = 0; w != NULL && i < FREE_MOVE && n->gfree != NULL; i++) {
		tr_actor *b = n->gfree;
		n->gfree = b->rq_next;
		n->gfree_len--;
		b->rq_next = w->free_actors;
		w->free_actors = b;
		w->free_len++;
	}
	uv_mutex_unlock(&n->chunk_mu);
	return note_slot(n, a);
}

void tr__actor_release(tr_node *n, tr__worker *w, tr_actor *a)
{
	if (w != NULL && w->free_len < FREE_LOCAL_MAX) {
		a->rq_next = w->free_actors;
		w->free_actors = a;
		w->free_len++;
		return;
	}
	uv_mutex_lock(&n->chunk_mu);
	a->rq_next = n->gfree;
	n->gfree = a;
	n->gfree_len++;
	for (unsigned i = 0; w != NULL && i < FREE_MOVE && w->free_actors != NULL; i++) {
		tr_actor *b = w->free_actors;
		w->free_actors = b->rq_next;
		w->free_len--;
		b->rq_next = n->gfree;
		n->gfree = b;
		n->gfree_len++;
	}
	uv_mutex_unlock(&n->chunk_mu);
}

/* ------------------------------------------------------------------ */
/* lifecycle                                                            */

int tr_node_new(const tr_node_opts *opts, tr_node **out)
{
	tr_node_opts o = {0};
	if (opts != NULL)
		o = *opts;
	if (o.threads == 0) {
		long c = sysconf(_SC_NPROCESSORS_ONLN);
		o.threads = c > 0 ? (unsigned)c : 1;
	}
	if (o.threads > TR_MAX_WORKERS)
		return TR_EINVAL;
	tr_node *n = tr__calloc_aligned(1, sizeof(*n), _Alignof(tr_node));
	if (n == NULL)
		return TR_ENOMEM;
	n->id = o.node_id ? o.node_id : 1;
	n->nworkers = o.threads;
	n->migrate = o.migrate == 2 ? 0 : 1;
	n->spin_us = o.spin_us;
	n->workers = tr__calloc_aligned(o.threads, sizeof(tr__worker), _Alignof(tr__worker));
	if (n->workers == NULL) {
		tr__free(n);
		return TR_ENOMEM;
	}
	uv_mutex_init(&n->chunk_mu);
	uv_mutex_init(&n->tree_mu);
	uv_mutex_init(&n->wait_mu);
	uv_cond_init(&n->wait_cv);
	uv_rwlock_init(&n->names_mu);
	unsigned i;
	for (i = 0; i < o.threads; i++) {
		tr__worker *w = &n->workers[i];
		w->node = n;
		w->idx = i;
		if (uv_loop_init(&w->loop) != 0)
			goto fail;
		if (uv_async_init(&w->loop, &w->async, NULL) != 0) {
			uv_loop_close(&w->loop);
			goto fail;
		}
		w->async.data = w;
	}
	tr__clock_calibrate();
	n->migrate_min_cyc = tr__ns_to_cycles(MIGRATE_MIN_US * 1000u);
	n->poll_cyc = tr__ns_to_cycles(POLL_BUDGET_US * 1000u);
	*out = n;
	return TR_OK;

fail:
	/* Workers before i are fully made; tr_node_free closes exactly those. */
	n->nworkers = i;
	tr_node_free(n);
	return TR_ENOMEM;
}

int tr_node_start(tr_node *n)
{
	if (n->started)
		return TR_ESTATE;
	n->started = true;
	atomic_store(&n->running_workers, n->nworkers);
	for (unsigned i = 0; i < n->nworkers; i++) {
		if (uv_thread_create(&n->workers[i].thread, tr__worker_main, &n->workers[i]) != 0) {
			/* Threads already started stop through the normal path. */
			atomic_fetch_sub(&n->running_workers, n->nworkers - i);
			n->nworkers = i;
			tr_node_shutdown(n, TR_ENOMEM);
			return TR_ENOMEM;
		}
	}
	return TR_OK;
}

static void wake_fn(tr__worker *w, tr__ctl *c)
{
	(void)w;
	tr__free(c);
}

void tr_node_shutdown(tr_node *n, int code)
{
	int expected = 0;
	/* seq_cst: the stopping flag and exit code are read by workers that
	 * then stop every actor; nothing here is hot. */
	if (!atomic_compare_exchange_strong(&n->stopping, &expected, 1))
		return;
	n->exit_code = code;
	/* Wake every worker so it notices. */
	for (unsigned i = 0; i < n->nworkers; i++) {
		tr__ctl *c = tr__calloc(1, sizeof(*c));
		if (c == NULL) {
			uv_async_send(&n->workers[i].async);
			continue;
		}
		c->fn = wake_fn;
		tr__post_ctl(&n->workers[i], c);
	}
}

void tr__node_worker_done(tr_node *n)
{
	uv_mutex_lock(&n->wait_mu);
	atomic_fetch_sub(&n->running_workers, 1);
	uv_cond_broadcast(&n->wait_cv);
	uv_mutex_unlock(&n->wait_mu);
}

int tr_node_wait(tr_node *n)
{
	if (!n->started || n->joined)
		return n->exit_code;
	for (unsigned i = 0; i < n->nworkers; i++)
		uv_thread_join(&n->workers[i].thread);
	n->joined = true;
	return n->exit_code;
}

void tr_node_free(tr_node *n)
{
	if (n == NULL)
		return;
	if (n->started && !n->joined) {
		tr_node_shutdown(n, 0);
		tr_node_wait(n);
	}
	if (!n->started) {
		for (unsigned i = 0; i < n->nworkers; i++) {
			uv_close((uv_handle_t *)&n->workers[i].async, NULL);
			uv_run(&n->workers[i].loop, UV_RUN_DEFAULT);
			uv_loop_close(&n->workers[i].loop);
		}
	}
	/* A worker may leave its loop between the last actor's death
	 * (alive reaches 0) and that actor's wake-up post to it (actor.c,
	 * terminate): run what is left in the inboxes, or it leaks. */
	for (unsigned i = 0; n->started && i < n->nworkers; i++) {
		tr__worker *w = &n->workers[i];
		tr__ctl *c = w->ctl_head;
		w->ctl_head = w->ctl_tail = NULL;
		while (c != NULL) {
			tr__ctl *next = c->next;
			c->fn(w, c); /* takes ownership of c */
			c = next;
		}
	}
	unsigned nc = atomic_load(&n->nchunks);
	for (unsigned c = 0; c < nc; c++)
		tr__free(atomic_load(&n->chunks[c]));
	tr__names_free(n);
	tr__sup_walk_free(n);
	uv_mutex_destroy(&n->chunk_mu);
	uv_mutex_destroy(&n->tree_mu);
	uv_mutex_destroy(&n->wait_mu);
	uv_cond_destroy(&n->wait_cv);
	uv_rwlock_destroy(&n->names_mu);
	tr__free(n->workers);
	tr__free(n);
}

unsigned tr_node_threads(const tr_node *n)
{
	return n->nworkers;
}

uint32_t tr_node_id(const tr_node *n)
{
	return n->id;
}

void tr_node_stats_get(tr_node *n, tr_node_stats *s)
{
	long long alive = atomic_load_explicit(&n->alive, memory_order_relaxed);
	s->actors = alive > 0 ? (uint64_t)alive : 0;
	s->spawned = atomic_load_explicit(&n->n_spawned, memory_order_relaxed);
	s->dead_letters = atomic_load_explicit(&n->n_dead_letters, memory_order_relaxed);
	s->late_replies = atomic_load_explicit(&n->n_late_replies, memory_order_relaxed);
	s->migrations = atomic_load_explicit(&n->n_migrations, memory_order_relaxed);
	s->wakeups = atomic_load_explicit(&n->n_wakeups, memory_order_relaxed);
}

/* ------------------------------------------------------------------ */
/* stats of one actor                                                   */

static void snapshot(tr_node *n, tr_actor *a, tr_actor_stats *s)
{
	/* Called with a->lock held. */
	memset(s, 0, sizeof(*s));
	s->ref = tr__ref_of(n, a);
	s->behaviour = a->ops ? a->ops->name : "";
	if (a->ext != NULL)
		memcpy(s->name, a->ext->name, sizeof(s->name));
	s->received = a->received;
	s->dropped = a->dropped;
	s->rejected = a->rejected;
	s->depth = a->depth;
	s->max_depth = a->max_depth;
	s->capacity = a->cap;
	s->pressure = a->pressure;
	s->overflow = a->overflow;
	s->restarts = a->restarts;
	s->processed = atomic_load_explicit(&a->processed, memory_order_relaxed);
	s->mailbox_ns = tr__cycles_to_ns(atomic_load_explicit(&a->mailbox_cyc, memory_order_relaxed));
	s->receive_ns = tr__cycles_to_ns(atomic_load_explicit(&a->receive_cyc, memory_order_relaxed));
}

int tr_actor_stats_get(tr_node *n, tr_ref ref, tr_actor_stats *out)
{
	tr_actor *a = tr__actor_lock_ref(n, ref);
	if (a == NULL)
		return TR_ENOACTOR;
	snapshot(n, a, out);
	tr__spin_unlock(&a->lock);
	return TR_OK;
}

int tr_node_foreach(tr_node *n, tr_walk_fn fn, void *ud)
{
	uint32_t hw = atomic_load_explicit(&n->slots_hw, memory_order_relaxed);
	for (uint32_t idx = 1; idx < hw; idx++) { /* slot 0 is never used */
		tr_actor *a = tr__actor_at(n, idx);
		tr_actor_stats st;
		if (a == NULL)
			break;
		tr__spin_lock(&a->lock);
		int live = a->life == ACTOR_ALIVE;
		if (live)
			snapshot(n, a, &st);
		tr__spin_unlock(&a->lock);
		if (live && fn(ud, 0, &st, a->ops == &tr_sup_ops) != 0)
			return 1;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* owner-only hash map                                                  */

static uint32_t slot_of(uint64_t key, uint32_t cap)
{
	key ^= key >> 33;
	key *= 0xff51afd7ed558ccdULL;
	key ^= key >> 33;
	return (uint32_t)key & (cap - 1);
}

tr__map_ent *tr__map_get(tr__map *m, uint64_t key, tr_ref ref)
{
	if (m->cap == 0)
		return NULL;
	for (uint32_t i = slot_of(key, m->cap);; i = (i + 1) & (m->cap - 1)) {
		tr__map_ent *e = &m->ents[i];
		if (e->key == 0)
			return NULL;
		if (e->key == key && tr_ref_eq(e->ref, ref))
			return e;
	}
}

static int map_grow(tr__map *m)
{
	uint32_t cap = m->cap ? m->cap * 2 : 8;
	tr__map_ent *ne = tr__calloc(cap, sizeof(*ne));
	if (ne == NULL)
		return TR_ENOMEM;
	for (uint32_t i = 0; i < m->cap; i++) {
		tr__map_ent *e = &m->ents[i];
		if (e->key == 0)
			continue;
		uint32_t j = slot_of(e->key, cap);
		while (ne[j].key != 0)
			j = (j + 1) & (cap - 1);
		ne[j] = *e;
	}
	tr__free(m->ents);
	m->ents = ne;
	m->cap = cap;
	return TR_OK;
}

int tr__map_put(tr__map *m, uint64_t key, tr_ref ref, void *ptr)
{
	if ((m->len + 1) * 2 > m->cap && map_grow(m) != TR_OK)
		return TR_ENOMEM;
	uint32_t i = slot_of(key, m->cap);
	while (m->ents[i].key != 0)
		i = (i + 1) & (m->cap - 1);
	m->ents[i] = (tr__map_ent){key, ref, ptr};
	m->len++;
	return TR_OK;
}

int tr__map_del(tr__map *m, uint64_t key, tr_ref ref, void **ptr)
{
	tr__map_ent *e = tr__map_get(m, key, ref);
	if (e == NULL)
		return 0;
	if (ptr != NULL)
		*ptr = e->ptr;
	/* Backward-shift deletion keeps probe chains intact without
	 * tombstones. */
	uint32_t i = (uint32_t)(e - m->ents), mask = m->cap - 1;
	for (uint32_t j = (i + 1) & mask; m->ents[j].key != 0; j = (j + 1) & mask) {
		uint32_t h = slot_of(m->ents[j].key, m->cap);
		/* Move j back to i if its home slot h is not in (i, j]. */
		if (((j - h) & mask) >= ((j - i) & mask)) {
			m->ents[i] = m->ents[j];
			i = j;
		}
	}
	m->ents[i].key = 0;
	m->len--;
	return 1;
}

void tr__map_free(tr__map *m)
{
	tr__free(m->ents);
	memset(m, 0, sizeof(*m));
}
