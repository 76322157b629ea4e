/*
 * msg/codec.c -- envelopes to msgpack and back.
 *
 * Wire format (version 1): one msgpack array of 15 elements, in order:
 *
 *   0 version   uint, = 1
 *   1 id        uint64
 *   2 from      [node, idx, gen] of uint32
 *   3 to        [node, idx, gen] of uint32
 *   4 tag       uint32
 *   5 flags     uint16, TR_MSGF__WIRE bits only
 *   6 attempt   uint16
 *   7 corr      uint64
 *   8 deadline  uint64, µs since the Unix epoch, 0 = none
 *   9 trace_hi  uint64
 *  10 trace_lo  uint64
 *  11 tenant    str (the name: ids are per node) | nil
 *  12 err       int32 <= 0 (a tr_err code)
 *  13 arg       uint64
 *  14 body      bin holding one msgpack object (or empty) | nil
 *
 * The body travels as bin rather than inline so that a receiver can copy
 * it out as one range without re-encoding; it is validated separately.
 * Encoding uses msgpack-c's packer. Decoding does not use msgpack-c's
 * unpacker (it trusts wire counts and allocates a zone per object): the
 * input is first validated by tr_mp_check(), after which a small reader
 * can walk it without bounds surprises and without allocating.
 */
#include <string.h>

#include <msgpack.h>

#include "core/alloc.h"
#include "msg/msg_int.h"

#define WIRE_VERSION 1
#define WIRE_FIELDS 15

/* msgpack-c write callback: appends to the tr_buf; -1 stops the packer. */
static int buf_write(void *data, const char *p, size_t n)
{
	return tr__buf_append(data, p, n) == TR_OK ? 0 : -1;
}

static int pack_ref(msgpack_packer *pk, tr_ref r)
{
	return msgpack_pack_array(pk, 3) || msgpack_pack_uint32(pk, r.node) ||
	       msgpack_pack_uint32(pk, r.idx) || msgpack_pack_uint32(pk, r.gen);
}

int tr_msg_encode(const tr_msg *m, tr_buf *out)
{
	msgpack_packer pk;
	size_t start = out->len;
	const char *tenant = NULL;
	int rc = TR_OK;

	if (m->tenant != 0 && (tenant = tr_tenant_name(m->tenant)) == NULL)
		return TR_EINVAL;
	if ((m->flags & ~TR_MSGF__WIRE) != 0 || m->err > 0)
		return TR_EINVAL;
	if (m->body != NULL) {
		if (m->body->len > TR_MSG_MAX_WIRE)
			return TR_ETOOBIG;
		if (m->body->len > 0 &&
		    tr_body_check(m->body) != TR_OK)
			return TR_EPROTO;
	}
	/* One reservation up front: the header is < 160 bytes. */
	if (tr__buf_reserve(out, 160 + (m->body ? m->body->len : 0)) != TR_OK)
		return TR_ENOMEM;

	msgpack_packer_init(&pk, out, buf_write);
	if (msgpack_pack_array(&pk, WIRE_FIELDS) ||
	    msgpack_pack_uint32(&pk, WIRE_VERSION) ||
	    msgpack_pack_uint64(&pk, m->id) || pack_ref(&pk, m->from) ||
	    pack_ref(&pk, m->to) || msgpack_pack_uint32(&pk, m->tag) ||
	    msgpack_pack_uint16(&pk, m->flags) ||
	    msgpack_pack_uint16(&pk, m->attempt) ||
	    msgpack_pack_uint64(&pk, m->corr) ||
	    msgpack_pack_uint64(&pk, m->deadline) ||
	    msgpack_pack_uint64(&pk, m->trace_hi) ||
	    msgpack_pack_uint64(&pk, m->trace_lo))
		goto nomem;
	if (tenant != NULL) {
		size_t n = strlen(tenant);
		if (msgpack_pack_str(&pk, n) || msgpack_pack_str_body(&pk, tenant, n))
			goto nomem;
	} else if (msgpack_pack_nil(&pk)) {
		goto nomem;
	}
	if (msgpack_pack_int32(&pk, m->err) || msgpack_pack_uint64(&pk, m->arg))
		goto nomem;
	if (m->body != NULL) {
		if (msgpack_pack_bin(&pk, m->body->len) ||
		    msgpack_pack_bin_body(&pk, m->body->data, m->body->len))
			goto nomem;
	} else if (msgpack_pack_nil(&pk)) {
		goto nomem;
	}
	if (out->len - start > TR_MSG_MAX_WIRE)
		rc = TR_ETOOBIG;
	if (rc != TR_OK)
		out->len = start;
	return rc;
nomem:
	out->len = start;
	return TR_ENOMEM;
}

/*
 * The reader. It only ever runs on input tr_mp_check() accepted, so every
 * length it reads is within the buffer; it still checks `pos` against
 * `len` so that a bug here is an EPROTO, not an overread.
 */
typedef struct rd {
	const unsigned char *p;
	size_t len;
	size_t pos;
} rd;

static uint64_t be(const unsigned char *p, unsigned n)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

static int need(rd *r, size_t n)
{
	return r->len - r->pos >= n;
}

/* An unsigned integer of any msgpack integer encoding, <= max. */
static int rd_uint(rd *r, uint64_t max, uint64_t *v)
{
	unsigned char c;
	unsigned n = 0;
	int sign = 0;

	if (!need(r, 1))
		return TR_EPROTO;
	c = r->p[r->pos];
	if (c <= 0x7f) {
		*v = c;
		r->pos++;
		return *v <= max ? TR_OK : TR_EPROTO;
	}
	switch (c) {
	case 0xcc: n = 1; break;
	case 0xcd: n = 2; break;
	case 0xce: n = 4; break;
	case 0xcf: n = 8; break;
	case 0xd0: n = 1; sign = 1; break;
	case 0xd1: n = 2; sign = 1; break;
	case 0xd2: n = 4; sign = 1; break;
	case 0xd3: n = 8; sign = 1; break;
	default: return TR_EPROTO;
	}
	if (!need(r, 1 + n))
		return TR_EPROTO;
	*v = be(r->p + r->pos + 1, n);
	if (sign && (*v >> (8 * n - 1)) != 0) /* a negative signed value */
		return TR_EPROTO;
	r->pos += 1 + n;
	return *v <= max ? TR_OK : TR_EPROTO;
}

/* A signed integer in [min, max]. */
static int rd_int(rd *r, int64_t min, int64_t max, int64_t *v)
{
	unsigned char c;
	unsigned n;
	uint64_t u;

	if (!need(r, 1))
		return TR_EPROTO;
	c = r->p[r->pos];
	if (c >= 0xe0) {
		*v = (int8_t)c;
		r->pos++;
	} else if (c >= 0xd0 && c <= 0xd3) {
		n = 1u << (c - 0xd0);
		if (!need(r, 1 + n))
			return TR_EPROTO;
		u = be(r->p + r->pos + 1, n);
		if (n < 8 && (u >> (8 * n - 1)) != 0)
			u |= ~(uint64_t)0 << (8 * n); /* sign-extend */
		*v = (int64_t)u;
		r->pos += 1 + n;
	} else {
		if (rd_uint(r, INT64_MAX, &u) != TR_OK)
			return TR_EPROTO;
		*v = (int64_t)u;
	}
	return *v >= min && *v <= max ? TR_OK : TR_EPROTO;
}

static int rd_nil(rd *r)
{
	if (need(r, 1) && r->p[r->pos] == 0xc0) {
		r->pos++;
		return 1;
	}
	return 0;
}

/* An array header with exactly `want` elements. */
static int rd_array(rd *r, uint32_t want)
{
	unsigned char c;
	uint64_t n;

	if (!need(r, 1))
		return TR_EPROTO;
	c = r->p[r->pos];
	if (c >= 0x90 && c <= 0x9f) {
		n = c & 0x0f;
		r->pos++;
	} else if (c == 0xdc && need(r, 3)) {
		n = be(r->p + r->pos + 1, 2);
		r->pos += 3;
	} else if (c == 0xdd && need(r, 5)) {
		n = be(r->p + r->pos + 1, 4);
		r->pos += 5;
	} else {
		return TR_EPROTO;
	}
	return n == want ? TR_OK : TR_EPROTO;
}

/* A str (is_bin 0) or bin (is_bin 1); *data points into the input. */
static int rd_bytes(rd *r, int is_bin, const unsigned char **data, size_t *n)
{
	unsigned char c;
	unsigned lb;

	if (!need(r, 1))
		return TR_EPROTO;
	c = r->p[r->pos];
	if (!is_bin && c >= 0xa0 && c <= 0xbf) {
		*n = c & 0x1f;
		lb = 0;
	} else if (c == (is_bin ? 0xc4 : 0xd9)) {
		lb = 1;
	} else if (c == (is_bin ? 0xc5 : 0xda)) {
		lb = 2;
	} else if (c == (is_bin ? 0xc6 : 0xdb)) {
		lb = 4;
	} else {
		return TR_EPROTO;
	}
	if (!need(r, 1 + lb))
		return TR_EPROTO;
	if (lb > 0)
		*n = (size_t)be(r->p + r->pos + 1, lb);
	r->pos += 1 + lb;
	if (!need(r, *n))
		return TR_EPROTO;
	*data = r->p + r->pos;
	r->pos += *n;
	return TR_OK;
}

static int rd_ref(rd *r, tr_ref *ref)
{
	uint64_t v[3];

	if (rd_array(r, 3) != TR_OK)
		return TR_EPROTO;
	for (int i = 0; i < 3; i++)
		if (rd_uint(r, UINT32_MAX, &v[i]) != TR_OK)
			return TR_EPROTO;
	ref->node = (uint32_t)v[0];
	ref->idx = (uint32_t)v[1];
	ref->gen = (uint32_t)v[2];
	return TR_OK;
}

int tr_msg_decode(const void *buf, size_t len, tr_msg **out)
{
	rd r = {buf, len, 0};
	tr_msg *m = NULL;
	uint64_t u;
	int64_t s;
	const unsigned char *bytes;
	size_t n;
	int rc;

	*out = NULL;
	if (len > TR_MSG_MAX_WIRE)
		return TR_ETOOBIG;
	/* Depth: the envelope is 2 deep; the body is checked on its own. */
	if (buf == NULL || tr_mp_check(buf, len, 2) != TR_OK)
		return TR_EPROTO;
	m = tr_msg_new();
	if (m == NULL)
		return TR_ENOMEM;
	rc = TR_EPROTO;
	if (rd_array(&r, WIRE_FIELDS) || rd_uint(&r, WIRE_VERSION, &u) ||
	    u != WIRE_VERSION)
		goto fail;
	if (rd_uint(&r, UINT64_MAX, &m->id) || rd_ref(&r, &m->from) ||
	    rd_ref(&r, &m->to))
		goto fail;
	if (rd_uint(&r, UINT32_MAX, &u))
		goto fail;
	m->tag = (uint32_t)u;
	if (rd_uint(&r, TR_MSGF__WIRE, &u) || (u & ~(uint64_t)TR_MSGF__WIRE))
		goto fail;
	m->flags = (uint16_t)u;
	if (rd_uint(&r, UINT16_MAX, &u))
		goto fail;
	m->attempt = (uint16_t)u;
	if (rd_uint(&r, UINT64_MAX, &m->corr) ||
	    rd_uint(&r, UINT64_MAX, &m->deadline) ||
	    rd_uint(&r, UINT64_MAX, &m->trace_hi) ||
	    rd_uint(&r, UINT64_MAX, &m->trace_lo))
		goto fail;
	if (!rd_nil(&r)) {
		if (rd_bytes(&r, 0, &bytes, &n))
			goto fail;
		/* EINVAL (bad name) and ELIMIT (table full) are both the
		 * sender's problem: the envelope is refused as malformed. */
		if (tr_tenant_intern((const char *)bytes, n, &m->tenant) != TR_OK)
			goto fail;
	}
	if (rd_int(&r, INT32_MIN, 0, &s))
		goto fail;
	m->err = (int32_t)s;
	if (rd_uint(&r, UINT64_MAX, &m->arg))
		goto fail;
	if (!rd_nil(&r)) {
		if (rd_bytes(&r, 1, &bytes, &n))
			goto fail;
		if (n > 0 && tr_mp_check(bytes, n, TR_MP_MAX_DEPTH) != TR_OK)
			goto fail;
		m->body = tr_body_new(bytes, n);
		if (m->body == NULL) {
			rc = TR_ENOMEM;
			goto fail;
		}
		if (n > 0) /* checked just above: later hops need not again */
			atomic_store_explicit(&m->body->checked, 1, memory_order_relaxed);
	}
	if (r.pos != len) /* unreachable after tr_mp_check; kept as a guard */
		goto fail;
	*out = m;
	return TR_OK;
fail:
	tr_msg_free(m);
	return rc;
}
