/*
 * core/alloc.c -- see alloc.h.
 */
#include "core/alloc.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* 0 = disarmed. Relaxed: failure injection is a test-only knob whose
 * exact interleaving with other threads does not matter. */
static atomic_long fail_after;

static int should_fail(void)
{
	if (atomic_load_explicit(&fail_after, memory_order_relaxed) == 0)
		return 0;
	return atomic_fetch_sub_explicit(&fail_after, 1, memory_order_relaxed) == 1;
}

void tr__alloc_fail_after(long n)
{
	atomic_store_explicit(&fail_after, n, memory_order_relaxed);
}

void *tr__malloc(size_t n)
{
	return should_fail() ? NULL : malloc(n);
}

void *tr__calloc(size_t count, size_t n)
{
	return should_fail() ? NULL : calloc(count, n);
}

void *tr__calloc_aligned(size_t count, size_t n, size_t align)
{
	size_t total;
	void *p;
	if (align < sizeof(void *))
		align = sizeof(void *);
	if (count != 0 && n > SIZE_MAX / count)
		return NULL;
	total = count * n;
	if (total > SIZE_MAX - align)
		return NULL;
	/* aligned_alloc wants a multiple of the alignment */
	total = total == 0 ? align : (total + align - 1) / align * align;
	if (should_fail() || (p = aligned_alloc(align, total)) == NULL)
		return NULL;
	memset(p, 0, total);
	return p;
}

void *tr__realloc(void *p, size_t n)
{
	return should_fail() ? NULL : realloc(p, n);
}

void tr__free(void *p)
{
	free(p);
}

char *tr__strndup(const char *s, size_t n)
{
	char *d = tr__malloc(n + 1);
	if (d == NULL)
		return NULL;
	memcpy(d, s, n);
	d[n] = '\0';
	return d;
}
