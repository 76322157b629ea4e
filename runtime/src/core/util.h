/*
 * core/util.h -- small things several modules need alike: a generator
 * for jitter, a hash of bytes for in-memory maps, closing handles.
 */
#ifndef TR_CORE_UTIL_H
#define TR_CORE_UTIL_H

#include <stdint.h>
#include <string.h>

#include <uv.h>

#include "core/alloc.h"

/* xorshift64*: a fast, non-cryptographic generator for jitter and for
 * picking peers; *state must start non-zero. */
static inline uint64_t tr__xorshift(uint64_t *state)
{
	uint64_t x = *state;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return x * 0x2545F4914F6CDD1DULL;
}

/* A hash of n bytes for in-memory maps whose keys are compared in full on
 * a hit (the engine's cache and coalescing keys, generate's passages):
 * eight bytes a round, each mixed by a multiply and a shift (as in
 * murmur3's finalizer); byte-at-a-time FNV-1a was 3 % of the default
 * assistant's CPU. Never leaves the node, so it may change. */
static inline uint64_t tr__hash_bytes(const void *p, size_t n)
{
	const unsigned char *b = p;
	uint64_t h = 0x9e3779b97f4a7c15ull ^ (uint64_t)n, w;
	for (; n >= 8; b += 8, n -= 8) {
		memcpy(&w, b, 8);
		h = (h ^ w) * 0xff51afd7ed558ccdull;
		h ^= h >> 32;
	}
	w = 0;
	if (n > 0)
		memcpy(&w, b, n);
	h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
	return h ^ (h >> 29);
}

static inline void tr__free_handle_cb(uv_handle_t *h)
{
	tr__free(h);
}

/* Closes a handle that is its own tr__malloc'd allocation (freed in its
 * close callback, whatever order libuv runs close callbacks in). NULL and
 * handles already closing are ignored. */
static inline void tr__close_handle(uv_handle_t *h)
{
	if (h != NULL && !uv_is_closing(h))
		uv_close(h, tr__free_handle_cb);
}

#endif
