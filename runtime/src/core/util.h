/*
 * core/util.h -- two small things several I/O actors (db/pg.c,
 * db/redis.c, cluster/cluster.c) need alike.
 */
#ifndef TR_CORE_UTIL_H
#define TR_CORE_UTIL_H

#include <stdint.h>

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
