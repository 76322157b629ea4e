/*
 * pipe/mp.c -- msgpack map helpers for the pipeline engine. See mp.h.
 */
#include <string.h>

#include "msg/msg_int.h"
#include "pipe/mp.h"

static uint64_t be(const unsigned char *p, unsigned n)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

/* Header size, payload bytes and child objects of the object at p. */
static void head(const unsigned char *p, size_t *hdr, uint64_t *skip, uint64_t *kids)
{
	unsigned char c = p[0];
	*hdr = 1, *skip = 0, *kids = 0;
	if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3)
		return;
	if (c <= 0x8f) {
		*kids = 2u * (c & 0x0fu);
		return;
	}
	if (c <= 0x9f) {
		*kids = c & 0x0fu;
		return;
	}
	if (c <= 0xbf) {
		*skip = c & 0x1fu;
		return;
	}
	switch (c) {
	case 0xc4: case 0xd9: *hdr = 2; *skip = p[1]; break;
	case 0xc5: case 0xda: *hdr = 3; *skip = be(p + 1, 2); break;
	case 0xc6: case 0xdb: *hdr = 5; *skip = be(p + 1, 4); break;
	case 0xc7: *hdr = 2; *skip = 1 + (uint64_t)p[1]; break;
	case 0xc8: *hdr = 3; *skip = 1 + be(p + 1, 2); break;
	case 0xc9: *hdr = 5; *skip = 1 + be(p + 1, 4); break;
	case 0xca: *skip = 4; break;
	case 0xcb: *skip = 8; break;
	case 0xcc: case 0xd0: *skip = 1; break;
	case 0xcd: case 0xd1: *skip = 2; break;
	case 0xce: case 0xd2: *skip = 4; break;
	case 0xcf: case 0xd3: *skip = 8; break;
	case 0xd4: *skip = 2; break;
	case 0xd5: *skip = 3; break;
	case 0xd6: *skip = 5; break;
	case 0xd7: *skip = 9; break;
	case 0xd8: *skip = 17; break;
	case 0xdc: *hdr = 3; *kids = be(p + 1, 2); break;
	case 0xdd: *hdr = 5; *kids = be(p + 1, 4); break;
	case 0xde: *hdr = 3; *kids = 2 * be(p + 1, 2); break;
	case 0xdf: *hdr = 5; *kids = 2 * be(p + 1, 4); break;
	default: break;
	}
}

size_t tr__mp_size_walk(const unsigned char *p)
{
	size_t pos = 0;
	uint64_t owed = 1; /* objects still to skip; validated input bounds it */
	while (owed > 0) {
		/* What messages are made of first (keys and short strings,
		 * small ints, nil and booleans, small maps and arrays): this
		 * walk skips every value a lookup passes, the passages among
		 * them, and was the engine's hottest code. */
		unsigned char c = p[pos];
		if ((c & 0xe0) == 0xa0) {
			pos += 1 + (c & 0x1fu);
			owed--;
			continue;
		}
		if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
			pos++;
			owed--;
			continue;
		}
		if ((c & 0xe0) == 0x80) { /* fixmap 0x8_, fixarray 0x9_ */
			owed += (c & 0x10 ? 1u : 2u) * (c & 0x0fu);
			pos++;
			owed--;
			continue;
		}
		size_t hdr;
		uint64_t skip, kids;
		head(p + pos, &hdr, &skip, &kids);
		pos += hdr + (size_t)skip;
		owed += kids;
		owed--;
	}
	return pos;
}

/* Map header: entry count and header size, or -1 if not a map. */
static int map_head(const unsigned char *p, size_t len, uint32_t *n, size_t *hdr)
{
	if (len == 0)
		return -1;
	if (p[0] >= 0x80 && p[0] <= 0x8f) {
		*n = p[0] & 0x0fu, *hdr = 1;
	} else if (p[0] == 0xde && len >= 3) {
		*n = (uint32_t)be(p + 1, 2), *hdr = 3;
	} else if (p[0] == 0xdf && len >= 5) {
		*n = (uint32_t)be(p + 1, 4), *hdr = 5;
	} else {
		return -1;
	}
	return 0;
}

int tr__mp_map_len(const unsigned char *p, size_t len, uint32_t *n)
{
	size_t hdr;
	return map_head(p, len, n, &hdr) == 0 ? TR_OK : TR_EINVAL;
}

int tr__mp_map_head(const unsigned char *p, size_t len, uint32_t *n, size_t *hdr)
{
	return map_head(p, len, n, hdr) == 0 ? TR_OK : TR_EINVAL;
}

int tr__mp_array_head(const unsigned char *p, size_t len, uint32_t *n, size_t *hdr)
{
	if (len == 0)
		return TR_EINVAL;
	if (p[0] >= 0x90 && p[0] <= 0x9f)
		*n = p[0] & 0x0fu, *hdr = 1;
	else if (p[0] == 0xdc && len >= 3)
		*n = (uint32_t)be(p + 1, 2), *hdr = 3;
	else if (p[0] == 0xdd && len >= 5)
		*n = (uint32_t)be(p + 1, 4), *hdr = 5;
	else
		return TR_EINVAL;
	return TR_OK;
}

int tr__mp_uint(const unsigned char *p, size_t len, uint64_t *v)
{
	if (len == 0)
		return TR_EINVAL;
	if (p[0] <= 0x7f) {
		*v = p[0];
		return TR_OK;
	}
	if (p[0] < 0xcc || p[0] > 0xcf)
		return TR_EINVAL;
	unsigned w = 1u << (p[0] - 0xcc);
	if (len < 1 + (size_t)w)
		return TR_EINVAL;
	*v = be(p + 1, w);
	return TR_OK;
}

int tr__mp_str(const unsigned char *v, size_t vlen, const char **s, size_t *n)
{
	size_t hdr;
	uint64_t skip, kids;
	if (vlen == 0 || !((v[0] >= 0xa0 && v[0] <= 0xbf) || v[0] == 0xd9 || v[0] == 0xda ||
	                   v[0] == 0xdb))
		return TR_EINVAL;
	head(v, &hdr, &skip, &kids);
	*s = (const char *)v + hdr;
	*n = (size_t)skip;
	return TR_OK;
}

int tr__mp_map_get(const unsigned char *p, size_t len, const char *key,
                   const unsigned char **v, size_t *vlen)
{
	uint32_t n;
	size_t pos, klen = strlen(key);
	if (map_head(p, len, &n, &pos) != 0)
		return TR_EINVAL;
	for (uint32_t i = 0; i < n; i++) {
		size_t ks = tr__mp_size(p + pos);
		size_t vs = tr__mp_size(p + pos + ks);
		const char *s;
		size_t sn;
		if (tr__mp_str(p + pos, ks, &s, &sn) == TR_OK && sn == klen &&
		    memcmp(s, key, klen) == 0) {
			*v = p + pos + ks;
			*vlen = vs;
			return TR_OK;
		}
		pos += ks + vs;
	}
	return TR_ENOTFOUND;
}

/* Whether entry key k (one object) is a str equal to one of keys[]
 * (their lengths in klen[], or NULL: strlen). */
static int key_in(const unsigned char *k, char *const *keys, const size_t *klen, size_t nkeys)
{
	const char *s;
	size_t n;
	if (tr__mp_str(k, tr__mp_size(k), &s, &n) != TR_OK)
		return 0;
	for (size_t i = 0; i < nkeys; i++)
		if ((klen != NULL ? klen[i] : strlen(keys[i])) == n && memcmp(keys[i], s, n) == 0)
			return 1;
	return 0;
}

/* A pipeline's `output` keys and the entries they keep: up to these,
 * found in one pass (it is on every answer); more take two. */
#define PICK_KEYS 32
#define PICK_SPANS 32

int tr__mp_map_pick(const unsigned char *p, size_t len, char *const *keys, size_t nkeys,
                    tr_buf *out)
{
	uint32_t n, kept = 0;
	size_t hdr, pos;
	size_t klen[PICK_KEYS], span_at[PICK_SPANS], span_len[PICK_SPANS];
	const size_t *kl = NULL;
	msgpack_packer pk;
	if (map_head(p, len, &n, &hdr) != 0)
		return TR_EINVAL;
	if (nkeys <= PICK_KEYS) {
		for (size_t i = 0; i < nkeys; i++)
			klen[i] = strlen(keys[i]);
		kl = klen;
	}
	pos = hdr;
	for (uint32_t i = 0; i < n; i++) {
		size_t ks = tr__mp_size(p + pos), vs = tr__mp_size(p + pos + ks);
		if (key_in(p + pos, keys, kl, nkeys)) {
			if (kept < PICK_SPANS)
				span_at[kept] = pos, span_len[kept] = ks + vs;
			kept++;
		}
		pos += ks + vs;
	}
	tr__mp_packer(&pk, out);
	if (msgpack_pack_map(&pk, kept))
		return TR_ENOMEM;
	if (kept <= PICK_SPANS) {
		for (uint32_t i = 0; i < kept; i++)
			if (tr__buf_append(out, p + span_at[i], span_len[i]) != TR_OK)
				return TR_ENOMEM;
		return TR_OK;
	}
	pos = hdr;
	for (uint32_t i = 0; i < n; i++) {
		size_t ks = tr__mp_size(p + pos), vs = tr__mp_size(p + pos + ks);
		if (key_in(p + pos, keys, kl, nkeys) && tr__buf_append(out, p + pos, ks + vs) != TR_OK)
			return TR_ENOMEM;
		pos += ks + vs;
	}
	return TR_OK;
}

static int buf_write(void *data, const char *p, size_t n)
{
	return tr__buf_append(data, p, n) == TR_OK ? 0 : -1;
}

void tr__mp_packer(msgpack_packer *pk, tr_buf *out)
{
	msgpack_packer_init(pk, out, buf_write);
}

int tr__mp_pack_cstr(msgpack_packer *pk, const char *s)
{
	size_t n = strlen(s);
	return msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, s, n) ? TR_ENOMEM : TR_OK;
}

/* Whether key bytes k (one object) equal the key of one of the bn
 * entries at e. */
static int has_key(const unsigned char *e, uint32_t bn, const unsigned char *k, size_t kn)
{
	size_t pos = 0;
	for (uint32_t i = 0; i < bn; i++) {
		size_t ks = tr__mp_size(e + pos);
		if (ks == kn && memcmp(e + pos, k, kn) == 0)
			return 1;
		pos += ks;
		pos += tr__mp_size(e + pos);
	}
	return 0;
}

/* b's keys, sized once: b is a step's few new fields, looked up for
 * every entry of a (the whole message). */
#define MERGE_KEYS 16
typedef struct bkeys {
	const unsigned char *e; /* b's first entry */
	uint32_t bn;
	int indexed; /* bn <= MERGE_KEYS: k/n hold them */
	const unsigned char *k[MERGE_KEYS];
	size_t n[MERGE_KEYS];
} bkeys;

static void bkeys_init(bkeys *x, const unsigned char *e, uint32_t bn)
{
	x->e = e, x->bn = bn;
	x->indexed = bn <= MERGE_KEYS;
	if (!x->indexed)
		return;
	size_t pos = 0;
	for (uint32_t i = 0; i < bn; i++) {
		x->k[i] = e + pos;
		x->n[i] = tr__mp_size(e + pos);
		pos += x->n[i];
		pos += tr__mp_size(e + pos);
	}
}

static int bkeys_has(const bkeys *x, const unsigned char *k, size_t kn)
{
	if (!x->indexed)
		return has_key(x->e, x->bn, k, kn);
	for (uint32_t i = 0; i < x->bn; i++)
		if (x->n[i] == kn && memcmp(x->k[i], k, kn) == 0)
			return 1;
	return 0;
}

int tr__mp_map_merge_entries(const unsigned char *a, size_t alen, const unsigned char *e,
                             size_t elen, uint32_t bn, tr_buf *out)
{
	uint32_t an, keep = 0;
	size_t ahdr, pos;
	msgpack_packer pk;
	size_t start = out->len;
	bkeys bk;

	if (map_head(a, alen, &an, &ahdr) != 0)
		return TR_EINVAL;
	bkeys_init(&bk, e, bn);
	if ((uint64_t)an + bn <= 15) {
		/* The result is a fixmap whatever b overrides: one pass over a
		 * (whose values, the passages among them, are the long part),
		 * the header byte written last. */
		if (tr__buf_reserve(out, 1 + alen + elen) != TR_OK)
			return TR_ENOMEM;
		out->len++;
		pos = ahdr;
		for (uint32_t i = 0; i < an; i++) {
			size_t ks = tr__mp_size(a + pos), vs = tr__mp_size(a + pos + ks);
			if (!bkeys_has(&bk, a + pos, ks)) {
				(void)tr__buf_append(out, a + pos, ks + vs); /* reserved */
				keep++;
			}
			pos += ks + vs;
		}
		(void)tr__buf_append(out, e, elen);
		out->data[start] = (unsigned char)(0x80u | (keep + bn));
		return TR_OK;
	}
	/* Two passes over a: count the entries b does not override, then
	 * copy them. O(|a|*|b|) key compares: bodies have a few dozen keys. */
	pos = ahdr;
	for (uint32_t i = 0; i < an; i++) {
		size_t ks = tr__mp_size(a + pos);
		keep += !bkeys_has(&bk, a + pos, ks);
		pos += ks;
		pos += tr__mp_size(a + pos);
	}
	tr__mp_packer(&pk, out);
	if (msgpack_pack_map(&pk, keep + bn))
		goto nomem;
	pos = ahdr;
	for (uint32_t i = 0; i < an; i++) {
		size_t ks = tr__mp_size(a + pos), vs = tr__mp_size(a + pos + ks);
		if (!bkeys_has(&bk, a + pos, ks) &&
		    tr__buf_append(out, a + pos, ks + vs) != TR_OK)
			goto nomem;
		pos += ks + vs;
	}
	if (tr__buf_append(out, e, elen) != TR_OK)
		goto nomem;
	return TR_OK;
nomem:
	out->len = start;
	return TR_ENOMEM;
}

int tr__mp_map_merge(const unsigned char *a, size_t alen, const unsigned char *b,
                     size_t blen, tr_buf *out)
{
	uint32_t bn;
	size_t bhdr;
	if (map_head(b, blen, &bn, &bhdr) != 0)
		return TR_EINVAL;
	return tr__mp_map_merge_entries(a, alen, b + bhdr, blen - bhdr, bn, out);
}
