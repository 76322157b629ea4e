/*
 * test_msg.c -- envelopes, bodies, the msgpack codec, the validator and
 * the tenant table. Decoding is fed truncated, trailing, hostile and
 * randomly mutated input: every case must end in TR_OK or TR_EPROTO
 * (ASan/UBSan turn any overread into a failure).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>
#include <troupe/troupe.h>

#include "core/alloc.h"
#include "msg/msg_int.h"
#include "tt.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull; /* fixed seed: reproducible */

static uint64_t xrand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static int quick(void)
{
	return getenv("TROUPE_TEST_QUICK") != NULL;
}

/* A body holding {"q": "hello", "n": [1, -2, 3.5, nil, true]}, packed
 * with msgpack-c so the bytes are independent of our own code. */
static tr_body *sample_body(void)
{
	msgpack_sbuffer sb;
	msgpack_packer pk;
	tr_body *b;

	msgpack_sbuffer_init(&sb);
	msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 2);
	msgpack_pack_str(&pk, 1);
	msgpack_pack_str_body(&pk, "q", 1);
	msgpack_pack_str(&pk, 5);
	msgpack_pack_str_body(&pk, "hello", 5);
	msgpack_pack_str(&pk, 1);
	msgpack_pack_str_body(&pk, "n", 1);
	msgpack_pack_array(&pk, 5);
	msgpack_pack_int(&pk, 1);
	msgpack_pack_int(&pk, -2);
	msgpack_pack_double(&pk, 3.5);
	msgpack_pack_nil(&pk);
	msgpack_pack_true(&pk);
	b = tr_body_new(sb.data, sb.size);
	msgpack_sbuffer_destroy(&sb);
	return b;
}

static tr_msg *full_msg(void)
{
	tr_msg *m = tr_msg_new();
	uint32_t t;

	if (m == NULL || tr_tenant_intern("acme-corp", 9, &t) != TR_OK)
		abort();
	m->from = (tr_ref){7, 12345, 3};
	m->to = (tr_ref){UINT32_MAX, 0, UINT32_MAX};
	m->tag = 42;
	m->flags = TR_MSGF_ASK;
	m->attempt = 2;
	m->corr = 0x0123456789abcdefull;
	m->deadline = 1795000000000000ull;
	m->trace_hi = UINT64_MAX;
	m->trace_lo = 1;
	m->tenant = t;
	m->err = TR_ETIMEDOUT;
	m->arg = 1ull << 40;
	m->body = sample_body();
	return m;
}

static int same(const tr_msg *a, const tr_msg *b)
{
	if (a->id != b->id || !tr_ref_eq(a->from, b->from) ||
	    !tr_ref_eq(a->to, b->to) || a->tag != b->tag || a->flags != b->flags ||
	    a->attempt != b->attempt || a->corr != b->corr ||
	    a->deadline != b->deadline || a->trace_hi != b->trace_hi ||
	    a->trace_lo != b->trace_lo || a->tenant != b->tenant ||
	    a->err != b->err || a->arg != b->arg)
		return 0;
	if ((a->body == NULL) != (b->body == NULL))
		return 0;
	if (a->body != NULL && (a->body->len != b->body->len ||
	                        memcmp(a->body->data, b->body->data, a->body->len)))
		return 0;
	return 1;
}

/* Encodes m, decodes it again: TR_OK and *d equal to m, or an error. */
static int roundtrip(const tr_msg *m, tr_msg **d)
{
	tr_buf b;
	int rc;

	tr_buf_init(&b);
	rc = tr_msg_encode(m, &b);
	if (rc == TR_OK)
		rc = tr_msg_decode(b.data, b.len, d);
	tr_buf_free(&b);
	if (rc == TR_OK && !same(m, *d)) {
		tr_msg_free(*d);
		*d = NULL;
		rc = TR_EFAILED;
	}
	return rc;
}

TT_TEST(roundtrip_all_fields)
{
	tr_msg *m = full_msg(), *d = NULL;

	TT_OK(roundtrip(m, &d));
	TT_ASSERT(d->body != m->body); /* decode copies: input may be freed */
	TT_ASSERT(strcmp(tr_tenant_name(d->tenant), "acme-corp") == 0);
	tr_msg_free(d);
	tr_msg_free(m);
}

TT_TEST(roundtrip_extremes)
{
	tr_msg *m = tr_msg_new(), *d = NULL;

	/* All zero: nil tenant, nil body. */
	TT_OK(roundtrip(m, &d));
	TT_ASSERT(d->body == NULL && d->tenant == 0);
	tr_msg_free(d);

	/* Maximal values; an empty body survives as an empty body. */
	m->id = m->corr = m->deadline = m->arg = UINT64_MAX;
	m->trace_hi = m->trace_lo = UINT64_MAX;
	m->from = m->to = (tr_ref){UINT32_MAX, UINT32_MAX, UINT32_MAX};
	m->tag = UINT32_MAX;
	m->flags = TR_MSGF__WIRE;
	m->attempt = UINT16_MAX;
	m->err = INT32_MIN;
	m->body = tr_body_new("", 0);
	TT_OK(roundtrip(m, &d));
	TT_EQ(d->body->len, 0);
	tr_msg_free(d);
	tr_msg_free(m);
}

/* The encoding is plain msgpack: msgpack-c's own unpacker reads it. */
TT_TEST(encoding_is_standard_msgpack)
{
	tr_msg *m = full_msg();
	msgpack_unpacked up;
	size_t off = 0;
	tr_buf b;

	tr_buf_init(&b);
	TT_OK(tr_msg_encode(m, &b));
	msgpack_unpacked_init(&up);
	TT_EQ(msgpack_unpack_next(&up, (const char *)b.data, b.len, &off),
	      MSGPACK_UNPACK_SUCCESS);
	TT_EQ(off, b.len);
	TT_EQ(up.data.type, MSGPACK_OBJECT_ARRAY);
	TT_EQ(up.data.via.array.size, 15);
	TT_EQ(up.data.via.array.ptr[0].via.u64, 1);         /* version */
	TT_EQ(up.data.via.array.ptr[4].via.u64, 42);        /* tag */
	TT_EQ(up.data.via.array.ptr[11].type, MSGPACK_OBJECT_STR);
	TT_EQ(up.data.via.array.ptr[12].via.i64, TR_ETIMEDOUT);
	TT_EQ(up.data.via.array.ptr[14].type, MSGPACK_OBJECT_BIN);
	msgpack_unpacked_destroy(&up);
	tr_msg_free(m);
	tr_buf_free(&b);
}

TT_TEST(encode_rejects_bad_envelopes)
{
	tr_msg *m = tr_msg_new();
	tr_buf b;
	unsigned char bad[] = {0x92, 0x01}; /* array of 2 with one element */

	tr_buf_init(&b);
	m->body = tr_body_new(bad, sizeof(bad));
	TT_RC(tr_msg_encode(m, &b), TR_EPROTO);
	tr_body_unref(m->body);
	m->body = NULL;
	m->tenant = TR_TENANT_MAX + 1; /* never interned */
	TT_RC(tr_msg_encode(m, &b), TR_EINVAL);
	m->tenant = 0;
	m->flags = 1u << 15; /* not a wire flag */
	TT_RC(tr_msg_encode(m, &b), TR_EINVAL);
	m->flags = 0;
	m->err = 5;
	TT_RC(tr_msg_encode(m, &b), TR_EINVAL);
	TT_EQ(b.len, 0);
	tr_msg_free(m);
	tr_buf_free(&b);
}

/* Fan-out shares one body; the last unref frees it (ASan checks). */
TT_TEST(body_refcount_fanout)
{
	tr_msg *m = full_msg(), *c[16];
	tr_body *body = m->body;

	for (int i = 0; i < 16; i++) {
		c[i] = tr_msg_clone(m);
		TT_ASSERT(c[i] != NULL && c[i]->body == body);
		TT_NE(c[i]->id, m->id);
	}
	TT_EQ(atomic_load(&body->refs), 17);
	tr_msg_free(m);
	for (int i = 0; i < 15; i++)
		tr_msg_free(c[i]);
	TT_EQ(atomic_load(&body->refs), 1);
	tr_msg_free(c[15]);
}

static void *unref_many(void *arg)
{
	tr_body **bs = arg;
	for (int i = 0; i < 1000; i++)
		tr_body_unref(bs[i]);
	return NULL;
}

/* Two threads drop references to the same bodies concurrently (TSan). */
/* tr_body_check: tr_mp_check once per body, the verdict kept. */
TT_TEST(body_check_once)
{
	tr_body *ok = tr_body_new("\x81\xa1k\x01", 4);
	tr_body *bad = tr_body_new("\x82\xa1k\x01", 4); /* 2 entries, 1 present */
	TT_ASSERT(ok != NULL && bad != NULL);
	TT_EQ(atomic_load(&ok->checked), 0);
	TT_OK(tr_body_check(ok));
	TT_EQ(atomic_load(&ok->checked), 1);
	TT_OK(tr_body_check(ok));
	TT_RC(tr_body_check(bad), TR_EPROTO);
	TT_RC(tr_body_check(bad), TR_EPROTO); /* a refusal is not remembered as a pass */
	TT_EQ(atomic_load(&bad->checked), 0);
	TT_RC(tr_body_check(NULL), TR_EINVAL);
	/* bodies decoded from the wire arrive checked */
	tr_msg *m = tr_msg_new();
	m->body = tr_body_ref(ok);
	tr_buf w;
	tr_buf_init(&w);
	TT_OK(tr_msg_encode(m, &w));
	tr_msg *d = NULL;
	TT_OK(tr_msg_decode(w.data, w.len, &d));
	TT_EQ(atomic_load(&d->body->checked), 1);
	tr_msg_free(d);
	tr_msg_free(m);
	tr_buf_free(&w);
	tr_body_unref(ok);
	tr_body_unref(bad);
}

TT_TEST(body_refcount_threads)
{
	static tr_body *bs[1000];
	pthread_t t;

	for (int i = 0; i < 1000; i++) {
		bs[i] = tr_body_new("\x93\x01\x02\x03", 4);
		TT_ASSERT(bs[i] != NULL);
		tr_body_ref(bs[i]);
	}
	TT_EQ(pthread_create(&t, NULL, unref_many, bs), 0);
	unref_many(bs);
	pthread_join(t, NULL);
}

TT_TEST(truncated_and_trailing)
{
	tr_msg *m = full_msg(), *d;
	tr_buf b;

	tr_buf_init(&b);
	TT_OK(tr_msg_encode(m, &b));
	for (size_t n = 0; n < b.len; n++) {
		d = (tr_msg *)1;
		TT_RC(tr_msg_decode(b.data, n, &d), TR_EPROTO);
		TT_ASSERT(d == NULL);
	}
	TT_OK(tr__buf_append(&b, "\xc0", 1));
	TT_RC(tr_msg_decode(b.data, b.len, &d), TR_EPROTO);
	tr_msg_free(m);
	tr_buf_free(&b);
}

/* Counts that claim far more than the bytes present are refused before
 * anything is allocated: with every allocation made to fail, the answer
 * is still EPROTO, not ENOMEM. */
TT_TEST(hostile_counts)
{
	static const unsigned char cases[][8] = {
		{0xdf, 0xff, 0xff, 0xff, 0xff},       /* map32 of 4G pairs */
		{0xdd, 0xff, 0xff, 0xff, 0xff},       /* array32 of 4G */
		{0xdb, 0xff, 0xff, 0xff, 0xff, 0x61}, /* str32 of 4 GiB */
		{0xc6, 0x7f, 0xff, 0xff, 0xff},       /* bin32 */
		{0xc9, 0xff, 0xff, 0xff, 0xff, 0x01}, /* ext32 */
		{0x9f, 0x01},                         /* fixarray of 15, 1 given */
		{0xc1},                               /* never used */
	};
	static const size_t lens[] = {5, 5, 6, 5, 6, 2, 1};
	tr_msg *d;

	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		tr__alloc_fail_after(1);
		TT_RC(tr_msg_decode(cases[i], lens[i], &d), TR_EPROTO);
		TT_RC(tr_mp_check(cases[i], lens[i], 64), TR_EPROTO);
		tr__alloc_fail_after(0);
	}

	/* A valid envelope header whose body bin claims 4 GiB. */
	tr_msg *m = tr_msg_new();
	tr_buf b;
	tr_buf_init(&b);
	m->body = tr_body_new("\xc0", 1);
	TT_OK(tr_msg_encode(m, &b));
	TT_EQ(b.data[b.len - 3], 0xc4); /* bin8, len 1, nil */
	b.data[b.len - 3] = 0xc6;
	b.data[b.len - 2] = 0xff;
	TT_RC(tr_msg_decode(b.data, b.len, &d), TR_EPROTO);
	tr_msg_free(m);
	tr_buf_free(&b);
}

static size_t nest(unsigned char *p, unsigned depth)
{
	for (unsigned i = 0; i < depth; i++)
		p[i] = 0x91; /* fixarray of 1 */
	p[depth] = 0xc0;
	return depth + 1;
}

TT_TEST(depth_limit)
{
	unsigned char deep[400];
	tr_msg *m = tr_msg_new(), *d = NULL;
	tr_buf b;
	size_t n;

	n = nest(deep, TR_MP_MAX_DEPTH);
	TT_OK(tr_mp_check(deep, n, TR_MP_MAX_DEPTH));
	n = nest(deep, TR_MP_MAX_DEPTH + 1);
	TT_RC(tr_mp_check(deep, n, TR_MP_MAX_DEPTH), TR_EPROTO);
	n = nest(deep, 150);
	TT_OK(tr_mp_check(deep, n, 150));
	TT_RC(tr_mp_check(deep, n, 149), TR_EPROTO);
	n = nest(deep, 300); /* past the validator's hard cap of 256 */
	TT_RC(tr_mp_check(deep, n, 1000), TR_EPROTO);

	/* Through the codec: a body at the limit passes, one deeper fails. */
	tr_buf_init(&b);
	m->body = tr_body_new(deep, nest(deep, TR_MP_MAX_DEPTH));
	TT_OK(tr_msg_encode(m, &b));
	TT_OK(tr_msg_decode(b.data, b.len, &d));
	tr_msg_free(d);
	tr_body_unref(m->body);
	m->body = tr_body_new(deep, nest(deep, TR_MP_MAX_DEPTH + 1));
	TT_RC(tr_msg_encode(m, &b), TR_EPROTO);
	tr_msg_free(m);
	tr_buf_free(&b);
}

TT_TEST(mp_check_types)
{
	static const struct {
		const char *hex;
		int ok;
	} cases[] = {
		{"00", 1}, {"7f", 1}, {"e0", 1}, {"c0", 1}, {"c2", 1}, {"c3", 1},
		{"cc01", 1}, {"cd0102", 1}, {"ce01020304", 1},
		{"cf0102030405060708", 1}, {"d3ffffffffffffffff", 1},
		{"ca00000000", 1}, {"cb0000000000000000", 1}, {"cb00", 0},
		{"a3616263", 1}, {"a361", 0}, {"d90161", 1}, {"da000161", 1},
		{"c40100", 1}, {"c501", 0}, {"d40100", 1}, {"d8" "01" "00000000000000000000000000000000", 1},
		{"c7010100", 1}, {"c70101", 0}, {"80", 1}, {"90", 1},
		{"810102", 1}, {"8101", 0}, {"dc000101", 1}, {"de0001a16101", 1},
		{"c1", 0}, {"0000", 0}, {"", 0},
	};
	unsigned char buf[64];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t n = strlen(cases[i].hex) / 2;
		for (size_t j = 0; j < n; j++)
			sscanf(cases[i].hex + 2 * j, "%2hhx", &buf[j]);
		int rc = tr_mp_check(buf, n, 8);
		if ((rc == TR_OK) != cases[i].ok)
			TT_FAIL_("case %s: got %s", cases[i].hex, tr_err_name(rc));
	}
}

TT_TEST(oversize)
{
	tr_msg *m = tr_msg_new(), *d;
	unsigned char *big = calloc(1, TR_MSG_MAX_WIRE + 1);
	tr_buf b;

	TT_ASSERT(big != NULL);
	TT_RC(tr_msg_decode(big, TR_MSG_MAX_WIRE + 1, &d), TR_ETOOBIG);
	/* A body that alone fits, but not with the envelope around it. */
	big[0] = 0xc6; /* bin32 */
	uint32_t n = TR_MSG_MAX_WIRE - 5;
	big[1] = n >> 24, big[2] = n >> 16, big[3] = n >> 8, big[4] = n;
	m->body = tr_body_new(big, TR_MSG_MAX_WIRE);
	tr_buf_init(&b);
	TT_OK(tr__buf_append(&b, "x", 1));
	TT_RC(tr_msg_encode(m, &b), TR_ETOOBIG);
	TT_EQ(b.len, 1); /* unchanged */
	free(big);
	tr_msg_free(m);
	tr_buf_free(&b);
}

/* Mutation fuzz with a fixed seed: flip, overwrite, truncate, insert. */
TT_TEST(mutation_fuzz)
{
	tr_msg *seeds[3];
	tr_buf enc[3], mut, re;
	long iters = quick() ? 20000 : 200000, decoded = 0;

	seeds[0] = full_msg();
	seeds[1] = tr_msg_new();
	seeds[2] = full_msg();
	tr_body_unref(seeds[2]->body);
	seeds[2]->body = NULL;
	for (int i = 0; i < 3; i++) {
		tr_buf_init(&enc[i]);
		TT_OK(tr_msg_encode(seeds[i], &enc[i]));
	}
	tr_buf_init(&mut);
	tr_buf_init(&re);
	for (long it = 0; it < iters; it++) {
		tr_buf *src = &enc[xrand() % 3];
		tr_msg *d = NULL;
		mut.len = 0;
		TT_OK(tr__buf_append(&mut, src->data, src->len));
		int edits = 1 + (int)(xrand() % 4);
		for (int e = 0; e < edits && mut.len > 0; e++) {
			size_t at = xrand() % mut.len;
			switch (xrand() % 5) {
			case 0: mut.data[at] ^= (unsigned char)(1u << (xrand() % 8)); break;
			case 1: mut.data[at] = (unsigned char)xrand(); break;
			case 2: mut.len = at; break;
			case 3: /* interesting bytes: headers with big counts */
				mut.data[at] = (unsigned char[]){0xdd, 0xdf, 0xdb, 0xc6,
				                                 0xff, 0xc1, 0x9f}[xrand() % 7];
				break;
			default:
				TT_OK(tr__buf_append(&mut, "\xff", 1));
				memmove(mut.data + at + 1, mut.data + at, mut.len - at - 1);
				mut.data[at] = (unsigned char)xrand();
			}
		}
		int rc = tr_msg_decode(mut.data, mut.len, &d);
		if (rc == TR_OK) {
			/* Whatever decodes must re-encode and decode to the same. */
			tr_msg *d2 = NULL;
			decoded++;
			re.len = 0;
			TT_OK(tr_msg_encode(d, &re));
			TT_OK(tr_msg_decode(re.data, re.len, &d2));
			TT_ASSERT(same(d, d2));
			tr_msg_free(d2);
			tr_msg_free(d);
		} else if (rc != TR_EPROTO) {
			TT_FAIL_("iteration %ld: %s", it, tr_err_name(rc));
		}
	}
	fprintf(stderr, "  %ld mutations, %ld still decoded\n", iters, decoded);
	TT_ASSERT(decoded > 0); /* the fuzz also reaches the success path */
	for (int i = 0; i < 3; i++) {
		tr_buf_free(&enc[i]);
		tr_msg_free(seeds[i]);
	}
	tr_buf_free(&mut);
	tr_buf_free(&re);
}

/* Every allocation in encode and decode, failed in turn: ENOMEM, nothing
 * leaked (ASan's leak check), and once there are enough, success. */
TT_TEST(alloc_failures)
{
	tr_msg *m = full_msg(), *d;
	tr_buf ok, b;
	int saw_enomem = 0;

	tr_buf_init(&ok);
	TT_OK(tr_msg_encode(m, &ok));
	for (long k = 1;; k++) {
		tr_buf_init(&b);
		tr__alloc_fail_after(k);
		int rc = tr_msg_encode(m, &b);
		tr__alloc_fail_after(0);
		tr_buf_free(&b);
		if (rc == TR_OK)
			break;
		TT_RC(rc, TR_ENOMEM);
		saw_enomem = 1;
	}
	for (long k = 1;; k++) {
		d = NULL;
		tr__alloc_fail_after(k);
		int rc = tr_msg_decode(ok.data, ok.len, &d);
		tr__alloc_fail_after(0);
		if (rc == TR_OK) {
			tr_msg_free(d);
			break;
		}
		TT_RC(rc, TR_ENOMEM);
		TT_ASSERT(d == NULL);
	}
	TT_ASSERT(saw_enomem);
	tr_msg_free(m);
	tr_buf_free(&ok);
}

TT_TEST(tenant_names)
{
	uint32_t a, b;
	char n64[65];

	TT_RC(tr_tenant_intern("", 0, &a), TR_EINVAL);
	memset(n64, 'x', 64);
	TT_RC(tr_tenant_intern(n64, 64, &a), TR_EINVAL);
	TT_OK(tr_tenant_intern(n64, 63, &a));
	TT_RC(tr_tenant_intern("a\nb", 3, &a), TR_EINVAL);
	TT_RC(tr_tenant_intern("a\0b", 3, &a), TR_EINVAL);
	TT_OK(tr_tenant_intern("tenant-α", strlen("tenant-α"), &a)); /* UTF-8 */
	TT_OK(tr_tenant_intern("tenant-α", strlen("tenant-α"), &b));
	TT_EQ(a, b);
	TT_OK(tr_tenant_intern("tenant-b", 8, &b));
	TT_NE(a, b);
	/* A prefix is a different name. */
	TT_OK(tr_tenant_intern("tenant", 6, &b));
	TT_NE(a, b);
	TT_ASSERT(strcmp(tr_tenant_name(b), "tenant") == 0);
	TT_ASSERT(tr_tenant_name(0) == NULL);
	TT_ASSERT(tr_tenant_name(TR_TENANT_MAX + 1) == NULL);
}

static void *intern_many(void *arg)
{
	uint32_t *ids = arg;
	int rev = ids[0] != 0; /* the second thread walks backwards */
	char name[32];
	for (int k = 0; k < 1000; k++) {
		int i = rev ? 999 - k : k;
		int n = snprintf(name, sizeof(name), "race-%d", i);
		if (tr_tenant_intern(name, (size_t)n, &ids[i]) != TR_OK)
			ids[i] = 0;
	}
	return NULL;
}

/* Two threads intern the same names in opposite orders: same ids. */
TT_TEST(tenant_threads)
{
	static uint32_t x[1000], y[1000];
	pthread_t t;

	y[0] = 1; /* marks the reverse walker; overwritten by its result */
	TT_EQ(pthread_create(&t, NULL, intern_many, y), 0);
	intern_many(x);
	pthread_join(t, NULL);
	for (int i = 0; i < 1000; i++) {
		TT_NE(x[i], 0);
		TT_EQ(x[i], y[i]);
	}
}

/* Must run last: fills the process-wide table. */
TT_TEST(tenant_table_full)
{
	tr_msg *m = tr_msg_new(), *d = NULL;
	char name[32];
	uint32_t id;
	tr_buf b;
	int n;

	tr_buf_init(&b);
	m->tenant = 1;
	TT_OK(tr_msg_encode(m, &b)); /* a known tenant, encoded by name */
	while (tr__tenant_count() < TR_TENANT_MAX) {
		n = snprintf(name, sizeof(name), "fill-%u", tr__tenant_count());
		TT_OK(tr_tenant_intern(name, (size_t)n, &id));
	}
	TT_RC(tr_tenant_intern("one-too-many", 12, &id), TR_ELIMIT);
	/* Known names still resolve; an envelope naming a new tenant is refused. */
	TT_OK(tr_tenant_intern("acme-corp", 9, &id));
	TT_OK(tr_msg_decode(b.data, b.len, &d));
	tr_msg_free(d);
	uint32_t len = (uint32_t)strlen(tr_tenant_name(1));
	unsigned char *s = memmem(b.data, b.len, tr_tenant_name(1), len);
	TT_ASSERT(s != NULL);
	memset(s, 'Z', len); /* now a name nobody interned (the fuzz
	                       * above interns mutated names) */
	TT_RC(tr_msg_decode(b.data, b.len, &d), TR_EPROTO);
	tr_msg_free(m);
	tr_buf_free(&b);
}

/* A body written in place (tr__body_buf_init / tr__body_from_buf): the
 * bytes appended are the body's, at any size (the buffer grows and
 * moves), with one reference, unchecked; the buffer is left empty. */
TT_TEST(body_built_in_place)
{
	for (size_t n = 0; n < 5000; n = n * 3 + 1) {
		tr_buf b;
		TT_OK(tr__body_buf_init(&b, n / 2));
		for (size_t i = 0; i < n; i++) {
			unsigned char c = (unsigned char)(i * 7);
			TT_OK(tr__buf_append(&b, &c, 1));
		}
		tr_body *body = tr__body_from_buf(&b);
		TT_ASSERT(body != NULL);
		TT_ASSERT(b.data == NULL && b.len == 0 && b.cap == 0);
		TT_EQ(body->len, n);
		for (size_t i = 0; i < n; i++)
			TT_EQ(body->data[i], (unsigned char)(i * 7));
		TT_EQ(atomic_load(&body->refs), 1);
		TT_EQ(atomic_load(&body->checked), 0);
		tr_body_unref(tr_body_ref(body));
		tr_body_unref(body); /* freed: ASan would see a leak or a double free */
	}
	tr_buf e;
	tr_buf_init(&e);
	TT_ASSERT(tr__body_from_buf(&e) == NULL); /* not made by tr__body_buf_init */
}

TT_LIST = {
	TT_ENTRY(body_built_in_place),
	TT_ENTRY(roundtrip_all_fields),
	TT_ENTRY(roundtrip_extremes),
	TT_ENTRY(encoding_is_standard_msgpack),
	TT_ENTRY(encode_rejects_bad_envelopes),
	TT_ENTRY(body_refcount_fanout),
	TT_ENTRY(body_check_once),
	TT_ENTRY(body_refcount_threads),
	TT_ENTRY(truncated_and_trailing),
	TT_ENTRY(hostile_counts),
	TT_ENTRY(depth_limit),
	TT_ENTRY(mp_check_types),
	TT_ENTRY(oversize),
	TT_ENTRY(mutation_fuzz),
	TT_ENTRY(alloc_failures),
	TT_ENTRY(tenant_names),
	TT_ENTRY(tenant_threads),
	TT_ENTRY(tenant_table_full),
	TT_END,
};

TT_MAIN()
