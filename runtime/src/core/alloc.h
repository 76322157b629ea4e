/*
 * core/alloc.h -- the runtime's one allocator.
 *
 * Every runtime allocation goes through tr__malloc & co. so that tests can
 * inject failures (tr__alloc_fail_after) and so that an allocator swap is
 * one file. Failure injection costs one relaxed load on the fast path.
 */
#ifndef TR_CORE_ALLOC_H
#define TR_CORE_ALLOC_H

#include <stddef.h>

void *tr__malloc(size_t n);
void *tr__calloc(size_t count, size_t n);
void *tr__realloc(void *p, size_t n);
/* Zeroed room for count objects aligned to `align` (a power of two, e.g.
 * _Alignof of a struct with cache-line members: malloc only promises 16
 * bytes, and using a 64-aligned struct at a 16-aligned address is UB, as
 * UBSan reports). Freed with tr__free. */
void *tr__calloc_aligned(size_t count, size_t n, size_t align);
void tr__free(void *p);
char *tr__strndup(const char *s, size_t n);

/* Tests: make the n-th allocation from now fail (n >= 1); 0 disarms. */
void tr__alloc_fail_after(long n);

#endif
