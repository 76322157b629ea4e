/*
 * msg/msg_int.h -- internals of the message module shared by its files
 * (and by white-box tests).
 */
#ifndef TR_MSG_MSG_INT_H
#define TR_MSG_MSG_INT_H

#include <stddef.h>

#include <troupe/msg.h>

/* Makes room for `n` more bytes in `b` (amortised doubling). TR_OK or
 * TR_ENOMEM (b unchanged). */
int tr__buf_reserve(tr_buf *b, size_t n);
/* Appends n bytes. TR_OK or TR_ENOMEM (b unchanged). */
int tr__buf_append(tr_buf *b, const void *p, size_t n);

/* Number of interned tenants, for tests and stats. */
unsigned tr__tenant_count(void);

#endif
