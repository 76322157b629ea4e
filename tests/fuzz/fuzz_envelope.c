/*
 * fuzz_envelope.c -- libFuzzer target: bytes -> tr_msg_decode (the
 * envelope decoder every message from another node goes through). When
 * it accepts, the message must encode again (the encoding is canonical,
 * so never larger), decode to the same fields and body, and encode to the
 * same bytes a second time. A difference aborts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <troupe/msg.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int same(const tr_msg *a, const tr_msg *b)
{
	size_t al = a->body ? a->body->len : 0, bl = b->body ? b->body->len : 0;
	return a->id == b->id && tr_ref_eq(a->from, b->from) && tr_ref_eq(a->to, b->to) &&
	       a->tag == b->tag && a->flags == b->flags && a->attempt == b->attempt &&
	       a->corr == b->corr && a->deadline == b->deadline && a->trace_hi == b->trace_hi &&
	       a->trace_lo == b->trace_lo && a->tenant == b->tenant && a->err == b->err &&
	       a->arg == b->arg && (a->body == NULL) == (b->body == NULL) && al == bl &&
	       (al == 0 || memcmp(a->body->data, b->body->data, al) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	tr_msg *m = NULL, *m2 = NULL;
	tr_buf b1, b2;
	int rc;

	if (tr_msg_decode(data, size, &m) != TR_OK)
		return 0;
	tr_buf_init(&b1);
	tr_buf_init(&b2);
	rc = tr_msg_encode(m, &b1);
	if (rc == TR_ENOMEM)
		goto done;
	if (rc != TR_OK || b1.len > size)
		abort(); /* a decoded envelope always encodes, canonically */
	rc = tr_msg_decode(b1.data, b1.len, &m2);
	if (rc == TR_ENOMEM)
		goto done;
	if (rc != TR_OK || !same(m, m2))
		abort(); /* the round trip changed it */
	rc = tr_msg_encode(m2, &b2);
	if (rc == TR_OK && (b2.len != b1.len || memcmp(b1.data, b2.data, b1.len) != 0))
		abort(); /* encoding is a function of the fields */
done:
	tr_buf_free(&b1);
	tr_buf_free(&b2);
	tr_msg_free(m);
	tr_msg_free(m2);
	return 0;
}
