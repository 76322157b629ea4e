/*
 * pipe/mp.h -- the few msgpack operations the pipeline engine needs on
 * message bodies (maps): read a field, merge two maps, build small maps.
 *
 * Every function that reads takes bytes that tr_mp_check() accepted
 * (the engine checks each body once when it enters a run or comes back
 * from a step), so lengths inside are known to be in range.
 */
#ifndef TR_PIPE_MP_H
#define TR_PIPE_MP_H

#include <stddef.h>

#include <msgpack.h>

#include <troupe/msg.h>

/* Size of the one object at p (validated input). Inline for the
 * objects that are one byte or a short string (half of all: the keys),
 * else a walk (tr__mp_size_walk). */
size_t tr__mp_size_walk(const unsigned char *p);

static inline size_t tr__mp_size(const unsigned char *p)
{
	unsigned char c = p[0];
	if ((c & 0xe0) == 0xa0)
		return 1 + (c & 0x1fu);
	if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3)
		return 1;
	return tr__mp_size_walk(p);
}

/* Number of entries if p is a map (*n), else TR_EINVAL. */
int tr__mp_map_len(const unsigned char *p, size_t len, uint32_t *n);

/* Container headers: entry count and header size (the first entry is at
 * p + *hdr). TR_OK, or TR_EINVAL when p is not that container. */
int tr__mp_map_head(const unsigned char *p, size_t len, uint32_t *n, size_t *hdr);
int tr__mp_array_head(const unsigned char *p, size_t len, uint32_t *n, size_t *hdr);
/* A non-negative integer (positive fixint, uint8..64): TR_OK or TR_EINVAL. */
int tr__mp_uint(const unsigned char *p, size_t len, uint64_t *v);

/* Looks up string key `key` in the map p: TR_OK with the value's bytes,
 * TR_ENOTFOUND, or TR_EINVAL if p is not a map. */
int tr__mp_map_get(const unsigned char *p, size_t len, const char *key,
                   const unsigned char **v, size_t *vlen);

/* If the object at v is a str, its bytes: TR_OK; else TR_EINVAL. */
int tr__mp_str(const unsigned char *v, size_t vlen, const char **s, size_t *n);

/* Appends to `out` the map a with the entries of b added (b's value wins
 * for a key in both). Both must be maps. */
int tr__mp_map_merge(const unsigned char *a, size_t alen, const unsigned char *b,
                     size_t blen, tr_buf *out);
/* The same with b given as its bn entries e[0..elen) without the map
 * header (a tr_kout's pairs, as packed). */
int tr__mp_map_merge_entries(const unsigned char *a, size_t alen, const unsigned char *e,
                             size_t elen, uint32_t bn, tr_buf *out);

/* Appends to `out` the map p with only the entries whose key is one of
 * keys[0..nkeys) (str keys; the order of p). TR_OK, TR_EINVAL if p is not
 * a map, TR_ENOMEM. */
int tr__mp_map_pick(const unsigned char *p, size_t len, char *const *keys, size_t nkeys,
                    tr_buf *out);

/* A msgpack-c packer that appends to a tr_buf (write errors: ENOMEM). */
void tr__mp_packer(msgpack_packer *pk, tr_buf *out);
int tr__mp_pack_cstr(msgpack_packer *pk, const char *s);

#endif
