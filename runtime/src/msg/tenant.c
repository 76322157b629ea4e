/*
 * msg/tenant.c -- the node-wide tenant table.
 *
 * Tenants are interned once and never removed, so envelopes carry a
 * 4-byte id and a lookup never has to worry about a name going away.
 * The table is fixed-size (TR_TENANT_MAX) and static: a flood of made-up
 * tenant names from the wire fills it and then fails with TR_ELIMIT; it
 * cannot grow memory without bound.
 *
 * Reads are lock-free; inserts take a mutex. Memory orders:
 *  - An insert writes the name into names[id] first, then publishes the
 *    id with a release store (into its hash slot, and into `count`).
 *  - Readers load slots and `count` with acquire, so a reader that sees an
 *    id also sees the complete name behind it.
 *  - Slots go from 0 to an id exactly once, so a reader that sees 0 and
 *    then takes the mutex re-probes and cannot insert a duplicate.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "msg/msg_int.h"

#define SLOTS 8192 /* power of two, >= 2 * TR_TENANT_MAX: probes stay short */

static char names[TR_TENANT_MAX + 1][TR_TENANT_NAME_MAX + 1]; /* [0] unused */
static atomic_ushort slots[SLOTS];                            /* 0 = empty */
static atomic_uint count;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static uint32_t hash(const char *s, size_t n)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)s[i]) * 16777619u;
	return h;
}

static int valid(const char *s, size_t n)
{
	if (s == NULL || n == 0 || n > TR_TENANT_NAME_MAX)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c == 0x7f)
			return 0;
	}
	return 1;
}

/* Probes for `s`; returns its id, or 0 with *slot = the empty slot where it
 * would go. */
static uint32_t probe(const char *s, size_t n, uint32_t *slot)
{
	uint32_t i = hash(s, n) & (SLOTS - 1);
	for (;;) {
		uint32_t id = atomic_load_explicit(&slots[i], memory_order_acquire);
		if (id == 0) {
			*slot = i;
			return 0;
		}
		if (strncmp(names[id], s, n) == 0 && names[id][n] == '\0')
			return id;
		i = (i + 1) & (SLOTS - 1);
	}
}

int tr_tenant_intern(const char *name, size_t len, uint32_t *id)
{
	uint32_t slot, got;
	int rc = TR_OK;

	if (!valid(name, len)) /* NUL is a control char: names are C strings */
		return TR_EINVAL;
	got = probe(name, len, &slot);
	if (got != 0) {
		*id = got;
		return TR_OK;
	}
	pthread_mutex_lock(&lock);
	got = probe(name, len, &slot);
	if (got == 0) {
		unsigned n = atomic_load_explicit(&count, memory_order_relaxed);
		if (n >= TR_TENANT_MAX) {
			rc = TR_ELIMIT;
		} else {
			got = n + 1;
			memcpy(names[got], name, len);
			names[got][len] = '\0';
			atomic_store_explicit(&slots[slot], (unsigned short)got,
			                      memory_order_release);
			atomic_store_explicit(&count, got, memory_order_release);
		}
	}
	pthread_mutex_unlock(&lock);
	if (rc == TR_OK)
		*id = got;
	return rc;
}

const char *tr_tenant_name(uint32_t id)
{
	if (id == 0 || id > atomic_load_explicit(&count, memory_order_acquire))
		return NULL;
	return names[id];
}

unsigned tr__tenant_count(void)
{
	return atomic_load_explicit(&count, memory_order_acquire);
}
