/*
 * msg/mpcheck.c -- an allocation-free validator for untrusted msgpack.
 *
 * msgpack-c 4.0 trusts the element counts in its input (a 5-byte map32
 * header makes it allocate 64 MiB) and reports truncation as "continue"
 * and trailing bytes as success. Everything that comes off the wire is
 * therefore checked here first: one pass, no recursion, no allocation.
 *
 * The walk keeps, per nesting level, how many objects the enclosing
 * container still owes. Every element takes at least one byte, so a
 * container that claims more elements than there are bytes left is
 * rejected the moment its header is read: a hostile count costs nothing.
 */
#include <stdint.h>

#include <troupe/msg.h>

/* Hard cap on max_depth so the per-level stack can live on the C stack. */
#define MP_DEPTH_CAP 256

static uint64_t be(const unsigned char *p, unsigned n)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

int tr_mp_check(const void *buf, size_t len, unsigned max_depth)
{
	const unsigned char *p = buf;
	uint64_t owed[MP_DEPTH_CAP + 1]; /* objects still due at each level */
	unsigned level = 0;
	size_t pos = 0;

	if (p == NULL || len == 0)
		return TR_EPROTO;
	if (max_depth > MP_DEPTH_CAP)
		max_depth = MP_DEPTH_CAP;
	owed[0] = 1;

	for (;;) {
		uint64_t skip = 0;  /* payload bytes after the header */
		uint64_t elems = 0; /* child objects, for containers */
		int container = 0;
		unsigned hdr = 1;   /* header bytes, type byte included */
		unsigned char c;

		if (pos >= len)
			return TR_EPROTO;
		c = p[pos];
		if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
			/* fixint, negative fixint, nil, false, true */
		} else if (c <= 0x8f) {
			container = 1;
			elems = 2u * (uint64_t)(c & 0x0f);
		} else if (c <= 0x9f) {
			container = 1;
			elems = c & 0x0f;
		} else if (c <= 0xbf) {
			skip = c & 0x1f;
		} else {
			unsigned lenbytes = 0; /* size of a length or count field */
			switch (c) {
			case 0xc4: case 0xd9: lenbytes = 1; break;          /* bin8 str8 */
			case 0xc5: case 0xda: lenbytes = 2; break;          /* bin16 str16 */
			case 0xc6: case 0xdb: lenbytes = 4; break;          /* bin32 str32 */
			case 0xc7: lenbytes = 1; skip = 1; break;           /* ext8 (+type) */
			case 0xc8: lenbytes = 2; skip = 1; break;           /* ext16 */
			case 0xc9: lenbytes = 4; skip = 1; break;           /* ext32 */
			case 0xca: skip = 4; break;                         /* float32 */
			case 0xcb: skip = 8; break;                         /* float64 */
			case 0xcc: case 0xd0: skip = 1; break;              /* (u)int8 */
			case 0xcd: case 0xd1: skip = 2; break;
			case 0xce: case 0xd2: skip = 4; break;
			case 0xcf: case 0xd3: skip = 8; break;
			case 0xd4: skip = 2; break;                         /* fixext1 */
			case 0xd5: skip = 3; break;
			case 0xd6: skip = 5; break;
			case 0xd7: skip = 9; break;
			case 0xd8: skip = 17; break;
			case 0xdc: case 0xde: lenbytes = 2; container = 1; break;
			case 0xdd: case 0xdf: lenbytes = 4; container = 1; break;
			default: return TR_EPROTO; /* 0xc1: never used */
			}
			if (lenbytes > 0) {
				uint64_t n;
				if (len - pos - 1 < lenbytes)
					return TR_EPROTO;
				n = be(p + pos + 1, lenbytes);
				hdr += lenbytes;
				if (container)
					elems = (c == 0xde || c == 0xdf) ? 2 * n : n;
				else
					skip += n;
			}
		}
		if (len - pos < hdr || len - pos - hdr < skip)
			return TR_EPROTO;
		pos += hdr + (size_t)skip;
		owed[level]--;

		if (container) {
			if (level + 1 > max_depth)
				return TR_EPROTO;
			if (elems > len - pos) /* each element is >= 1 byte */
				return TR_EPROTO;
			if (elems > 0)
				owed[++level] = elems;
		}
		while (level > 0 && owed[level] == 0)
			level--;
		if (level == 0 && owed[0] == 0)
			return pos == len ? TR_OK : TR_EPROTO;
	}
}
