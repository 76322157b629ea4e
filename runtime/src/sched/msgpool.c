/*
 * sched/msgpool.c -- message allocation.
 *
 * Worker threads keep a small freelist of envelopes: the common case (an
 * actor sends, another on the same worker receives and frees) never
 * reaches malloc. A message freed on another worker lands in that
 * worker's list; each list is capped so one-way traffic between two
 * workers cannot hoard memory. Other threads use malloc directly.
 */
#include <string.h>

#include "sched/sched.h"

#define POOL_MAX 4096

/* Message ids of non-worker threads: relaxed, uniqueness is all we need. */
static atomic_ullong ext_seq;

tr_msg *tr_msg_new(void)
{
	tr__worker *w = tr__tls_worker;
	tr_msg *m;
	if (w != NULL && w->pool != NULL) {
		m = w->pool;
		w->pool = m->next;
		w->pool_len--;
	} else {
		m = tr__malloc(sizeof(*m));
		if (m == NULL)
			return NULL;
	}
	memset(m, 0, sizeof(*m));
	if (w != NULL)
		m->id = ((uint64_t)(w->idx + 1) << 48) | ++w->msg_seq;
	else
		m->id = atomic_fetch_add_explicit(&ext_seq, 1, memory_order_relaxed) + 1;
	return m;
}

void tr_msg_free(tr_msg *m)
{
	if (m == NULL)
		return;
	tr_body_unref(m->body);
	tr__worker *w = tr__tls_worker;
	if (w != NULL && w->pool_len < POOL_MAX) {
		m->next = w->pool;
		w->pool = m;
		w->pool_len++;
		return;
	}
	tr__free(m);
}

tr_msg *tr_msg_clone(const tr_msg *m)
{
	tr_msg *c = tr_msg_new();
	if (c == NULL)
		return NULL;
	uint64_t id = c->id;
	*c = *m;
	c->id = id;
	c->next = NULL;
	if (c->body != NULL)
		tr_body_ref(c->body);
	return c;
}

void tr__msgpool_drain(tr__worker *w)
{
	while (w->pool != NULL) {
		tr_msg *m = w->pool;
		w->pool = m->next;
		tr__free(m);
	}
	w->pool_len = 0;
}
