/*
 * msg/body.c -- refcounted message bodies and the byte buffer.
 *
 * Memory orders of the body refcount (the usual shared_ptr argument):
 *  - tr_body_ref() may be relaxed: the caller already holds a reference,
 *    so the body cannot be freed concurrently and no data is published by
 *    the increment itself (the body is immutable once shared, and the
 *    pointer reaches other threads through the mailbox, whose own
 *    synchronisation orders the body's bytes).
 *  - tr_body_unref() is acq_rel: the release half orders this thread's
 *    last reads of the body before the decrement; the acquire half, on the
 *    thread that takes the count to zero, makes every other thread's reads
 *    happen-before the free. (A relaxed decrement plus an acquire fence
 *    would do too, but GCC's TSan does not model fences.)
 */
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "msg/msg_int.h"

tr_body *tr_body_alloc(size_t len)
{
	tr_body *b;

	if (len > UINT32_MAX)
		return NULL;
	b = tr__malloc(sizeof(*b) + len);
	if (b == NULL)
		return NULL;
	atomic_init(&b->refs, 1);
	atomic_init(&b->checked, 0);
	b->len = (uint32_t)len;
	return b;
}

tr_body *tr_body_new(const void *data, size_t len)
{
	tr_body *b = tr_body_alloc(len);

	if (b != NULL && len > 0)
		memcpy(b->data, data, len);
	return b;
}

int tr_body_check(tr_body *b)
{
	int rc;
	if (b == NULL)
		return TR_EINVAL;
	/* Relaxed both ways: the flag says something about bytes that never
	 * change after sharing, and whoever reads it already sees those bytes
	 * (the mailbox hand-off that gave it the body ordered them). A race
	 * between two checkers only makes both check. */
	if (atomic_load_explicit(&b->checked, memory_order_relaxed))
		return TR_OK;
	rc = tr_mp_check(b->data, b->len, TR_MP_MAX_DEPTH);
	if (rc == TR_OK)
		atomic_store_explicit(&b->checked, 1, memory_order_relaxed);
	return rc;
}

tr_body *tr_body_ref(tr_body *b)
{
	atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
	return b;
}

int tr__body_buf_init(tr_buf *b, size_t hint)
{
	tr_buf_init(b);
	if (tr__buf_reserve(b, TR_BODY_HDR + hint) != TR_OK)
		return TR_ENOMEM;
	b->len = TR_BODY_HDR;
	return TR_OK;
}

tr_body *tr__body_from_buf(tr_buf *b)
{
	/* b->data is tr__malloc'd (aligned for any type) and freed as a body
	 * with tr__free: the same allocator. */
	tr_body *body = (tr_body *)b->data;
	if (body == NULL || b->len < TR_BODY_HDR || b->len - TR_BODY_HDR > UINT32_MAX) {
		tr_buf_free(b);
		return NULL;
	}
	atomic_init(&body->refs, 1);
	atomic_init(&body->checked, 0);
	body->len = (uint32_t)(b->len - TR_BODY_HDR);
	tr_buf_init(b);
	return body;
}

void tr_body_unref(tr_body *b)
{
	if (b == NULL)
		return;
	if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1)
		tr__free(b);
}

void tr_buf_init(tr_buf *b)
{
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
}

void tr_buf_free(tr_buf *b)
{
	tr__free(b->data);
	tr_buf_init(b);
}

int tr__buf_grow(tr_buf *b, size_t n)
{
	size_t want, cap;
	unsigned char *p;

	if (n > SIZE_MAX - b->len)
		return TR_ENOMEM;
	want = b->len + n;
	if (want <= b->cap)
		return TR_OK;
	cap = b->cap ? b->cap : 64;
	while (cap < want)
		cap = cap > SIZE_MAX / 2 ? want : cap * 2;
	p = tr__realloc(b->data, cap);
	if (p == NULL)
		return TR_ENOMEM;
	b->data = p;
	b->cap = cap;
	return TR_OK;
}
