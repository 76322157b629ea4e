/*
 * msg/msg_int.h -- internals of the message module shared by its files
 * (and by white-box tests).
 */
#ifndef TR_MSG_MSG_INT_H
#define TR_MSG_MSG_INT_H

#include <stddef.h>
#include <string.h>

#include <troupe/msg.h>

/* The slow path of tr__buf_reserve: grows b's storage (amortised
 * doubling from 64 bytes) to hold n more bytes. TR_OK or TR_ENOMEM (b
 * unchanged). */
int tr__buf_grow(tr_buf *b, size_t n);

/* Makes room for `n` more bytes in `b`. TR_OK or TR_ENOMEM (b unchanged).
 * Inline, as tr__buf_append: the encoders and the HTTP answers call them
 * a dozen times per message, mostly for a few bytes that fit (a call
 * each was 3-4 % of a no-op pipeline's CPU). len <= cap always. */
static inline int tr__buf_reserve(tr_buf *b, size_t n)
{
	return n <= b->cap - b->len ? TR_OK : tr__buf_grow(b, n);
}

/* Appends n bytes. TR_OK or TR_ENOMEM (b unchanged). */
static inline int tr__buf_append(tr_buf *b, const void *p, size_t n)
{
	if (n > b->cap - b->len) {
		int rc = tr__buf_grow(b, n);
		if (rc != TR_OK)
			return rc;
	}
	if (n > 0)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	return TR_OK;
}

/* For a body its maker packed itself with msgpack-c (valid by
 * construction, as tr_mp_check would find): tr_body_check then need not
 * walk it. Only before the body is shared. */
static inline void tr__body_mark_checked(tr_body *b)
{
	atomic_store_explicit(&b->checked, 1, memory_order_relaxed);
}

/* A body built in place: tr__body_buf_init leaves room for the body's
 * header at the front of b (its bytes start at TR_BODY_HDR), and
 * tr__body_from_buf turns b's storage into the body (one reference) and
 * leaves b empty: no copy of what was written. NULL on OOM or past
 * UINT32_MAX (b then freed). */
#define TR_BODY_HDR offsetof(tr_body, data)
int tr__body_buf_init(tr_buf *b, size_t hint);
tr_body *tr__body_from_buf(tr_buf *b);

/* Number of interned tenants, for tests and stats. */
unsigned tr__tenant_count(void);

#endif
