/*
 * sched/mbox.c -- the sending half of mailboxes: enqueue with overflow
 * policies, watermarks, blocked-sender bookkeeping, dead letters.
 *
 * The receiving half (taking the shared lists, waking blocked senders when
 * the depth falls to the low watermark) is in actor.c, where turns run.
 *
 * Rule: never hold two actor locks at once. Anything that must be sent as a
 * consequence of an enqueue (error replies for evicted asks, pressure
 * notices) is collected under the lock and sent after it is released.
 */
#include <sched.h>
#include <string.h>

#include "sched/sched.h"

void tr__spin_lock_slow(tr__spin *l)
{
	for (unsigned spins = 0;; spins++) {
		/* Spin on a plain load so the cache line stays shared while the
		 * holder works; retry the exchange only when it looks free. */
		while (atomic_load_explicit(&l->v, memory_order_relaxed)) {
			if (spins++ < 128)
				tr__cpu_relax();
			else
				sched_yield(); /* the holder was probably preempted */
		}
		if (!atomic_exchange_explicit(&l->v, 1, memory_order_acquire))
			return;
	}
}

int tr__refvec_add(tr__refvec *v, tr_ref r, uint64_t id)
{
	if (v->len == v->cap) {
		uint32_t cap = v->cap ? v->cap * 2 : 4;
		tr_ref *nv = tr__realloc(v->v, cap * sizeof(*nv));
		if (nv == NULL)
			return TR_ENOMEM;
		v->v = nv;
		uint64_t *ni = tr__realloc(v->ids, cap * sizeof(*ni));
		if (ni == NULL)
			return TR_ENOMEM;
		v->ids = ni;
		v->cap = cap;
	}
	v->v[v->len] = r;
	v->ids[v->len] = id;
	v->len++;
	return TR_OK;
}

int tr__refvec_del(tr__refvec *v, tr_ref r, uint64_t id, int match_id)
{
	for (uint32_t i = 0; i < v->len; i++) {
		if (tr_ref_eq(v->v[i], r) && (!match_id || v->ids[i] == id)) {
			v->len--;
			v->v[i] = v->v[v->len];
			v->ids[i] = v->ids[v->len];
			return 1;
		}
	}
	return 0;
}

void tr__refvec_free(tr__refvec *v)
{
	tr__free(v->v);
	tr__free(v->ids);
	memset(v, 0, sizeof(*v));
}

tr__actor_ext *tr__ext(tr_actor *a)
{
	if (a->ext == NULL)
		a->ext = tr__calloc(1, sizeof(*a->ext));
	return a->ext;
}

static int refvec_has(const tr__refvec *v, tr_ref r)
{
	for (uint32_t i = 0; i < v->len; i++)
		if (tr_ref_eq(v->v[i], r))
			return 1;
	return 0;
}

static inline void append(tr_msg **head, tr_msg **tail, tr_msg *m)
{
	m->next = NULL;
	if (*tail)
		(*tail)->next = m;
	else
		*head = m;
	*tail = m;
}

/* Enqueue-time timestamp: the cycle counter, converted only when stats
 * are read. */
static inline void stamp(tr_msg *m)
{
	m->enq_ns = tr__cycles();
}

int tr__send_sys(tr_node *n, tr_ref from, tr_ref to, uint32_t tag, int err,
                 uint64_t corr, uint64_t arg, uint16_t extra_flags)
{
	tr_msg *m = tr_msg_new();
	if (m == NULL)
		return TR_ENOMEM;
	m->from = from;
	m->tag = tag;
	m->err = err;
	m->corr = corr;
	m->arg = arg;
	m->flags = TR_MSGF_SYSTEM | extra_flags;
	return tr__deliver(n, to, m, TR_REF_NONE);
}

void tr__reply_err_to(tr_node *n, tr_ref replier, tr_ref asker, uint64_t corr, int err)
{
	if (tr_ref_is_none(asker))
		return;
	/* If the asker is gone too, nobody waits: the dead letter is counted
	 * by tr__deliver. */
	(void)tr__send_sys(n, replier, asker, TR_TAG_REPLY_ERR, err, corr, 0,
	                   TR_MSGF_REPLY | TR_MSGF_ERROR);
}

/* A message that will never be received: count it, answer it if it is an
 * ask, free it. */
static void discard(tr_node *n, tr_ref owner, tr_msg *m, int err, int dead_letter)
{
	if (dead_letter)
		atomic_fetch_add_explicit(&n->n_dead_letters, 1, memory_order_relaxed);
	if (m->flags & TR_MSGF_ASK)
		tr__reply_err_to(n, owner, m->from, m->corr, err);
	tr_msg_free(m);
}

int tr__deliver(tr_node *n, tr_ref to, tr_msg *m, tr_ref blocker)
{
	m->to = to;
	if (to.node != n->id && to.gen != 0) {
		/* Another node's actor: the cluster carries it (or nobody). */
		const tr__remote_ops *ro = tr__remote(n);
		if (ro == NULL) {
			atomic_fetch_add_explicit(&n->n_dead_letters, 1, memory_order_relaxed);
			tr_msg_free(m);
			return TR_ENOACTOR;
		}
		return ro->deliver(n->remote_ud, m, blocker);
	}
	return tr__enqueue_at(n, to, m, blocker);
}

int tr__enqueue_at(tr_node *n, tr_ref to, tr_msg *m, tr_ref blocker)
{
	tr_msg *evicted = NULL;
	tr_ref watchers_buf[4];
	tr_ref *watchers = NULL;
	uint32_t nwatch = 0;
	int rc = TR_OK;

	tr_actor *a = tr__actor_lock_ref(n, to);
	if (a == NULL) {
		/* An ask to a dead actor is refused synchronously (the caller
		 * gets TR_ENOACTOR and no answer message); other messages become
		 * dead letters. Runtime-made error replies to dead askers land
		 * here too and are just counted. */
		atomic_fetch_add_explicit(&n->n_dead_letters, 1, memory_order_relaxed);
		tr_msg_free(m);
		return TR_ENOACTOR;
	}
	stamp(m);
	if (m->flags & TR_MSGF_SYSTEM) {
		append(&a->shead, &a->stail, m);
	} else {
		if (a->depth >= a->cap) {
			switch (a->overflow) {
			case TR_OVERFLOW_DROP_OLDEST:
				/* The oldest message not yet taken by the running
				 * worker. If the worker already took them all, the
				 * newest is the only one we can drop. */
				if (a->uhead != NULL) {
					evicted = a->uhead;
					a->uhead = evicted->next;
					if (a->uhead == NULL)
						a->utail = NULL;
					a->depth--;
					a->dropped++;
					break;
				}
				/* fall through */
			case TR_OVERFLOW_DROP_NEWEST:
				a->dropped++;
				rc = TR_EDROPPED;
				break;
			case TR_OVERFLOW_REJECT:
				a->rejected++;
				rc = TR_EREJECTED;
				break;
			default: /* TR_OVERFLOW_BLOCK */
				a->rejected++;
				rc = TR_EFULL;
				if (!tr_ref_is_none(blocker)) {
					tr__actor_ext *x = tr__ext(a);
					/* One wake-up per blocked sender is enough. */
					if (x == NULL)
						rc = TR_ENOMEM;
					else if (!refvec_has(&x->waiters, blocker) &&
					         tr__refvec_add(&x->waiters, blocker, 0) != TR_OK)
						rc = TR_ENOMEM;
				}
				break;
			}
			if (rc != TR_OK) {
				tr__spin_unlock(&a->lock);
				/* Refused synchronously: the sender sees rc; no answer
				 * message follows, even for an ask. */
				tr_msg_free(m);
				return rc;
			}
		}
		append(&a->uhead, &a->utail, m);
		a->depth++;
		if (a->depth > a->max_depth)
			a->max_depth = a->depth;
		if (!a->pressure && a->depth >= a->hiwat) {
			a->pressure = 1;
			if (a->ext != NULL && a->ext->watchers.len > 0) {
				nwatch = a->ext->watchers.len;
				watchers = nwatch <= 4 ? watchers_buf
				                       : tr__malloc(nwatch * sizeof(tr_ref));
				if (watchers != NULL)
					memcpy(watchers, a->ext->watchers.v, nwatch * sizeof(tr_ref));
				else
					nwatch = 0;
			}
		}
	}
	a->received++;
	int wake = !a->sched;
	a->sched = 1;
	unsigned home = atomic_load_explicit(&a->home, memory_order_relaxed);
	tr__spin_unlock(&a->lock);

	/* We turned sched from 0 to 1: enqueuing the actor is our duty. */
	if (wake)
		tr__make_runnable(n, a, home);
	if (evicted != NULL)
		discard(n, to, evicted, TR_EDROPPED, 0);
	for (uint32_t i = 0; i < nwatch; i++)
		(void)tr__send_sys(n, to, watchers[i], TR_TAG_PRESSURE, 0, 0, 1, 0);
	if (watchers != watchers_buf)
		tr__free(watchers);
	return rc;
}

uint32_t tr__mbox_fill(tr_node *n, tr_ref to, uint32_t tag)
{
	uint32_t room = 0, added = 0;
	if (to.node != n->id)
		return 0;
	tr_actor *a = tr__actor_lock_ref(n, to);
	if (a == NULL)
		return 0;
	room = a->depth < a->cap ? a->cap - a->depth : 0;
	tr__spin_unlock(&a->lock);
	/* One enqueue per message, as senders do: the mailbox policy sees
	 * each of them; a refusal (the actor or others filled it first) ends
	 * the fill. */
	while (added < room) {
		tr_msg *m = tr_msg_new();
		if (m == NULL)
			break;
		m->tag = tag;
		if (tr__enqueue_at(n, to, m, TR_REF_NONE) != TR_OK)
			break;
		added++;
	}
	return added;
}
