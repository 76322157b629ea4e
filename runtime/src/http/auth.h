/*
 * http/auth.h -- API keys and per-tenant rate limits of the HTTP door.
 *
 * Keys. A tenant's config holds SHA-256 hashes of its API keys, never the
 * keys. A presented key is hashed and compared with every stored hash, in
 * time that depends only on the number of stored keys (no early exit, no
 * data-dependent branch), so timing tells nothing about how close a guess
 * was.
 *
 * Rates. One token bucket per tenant (rate tokens/s, `burst` deep),
 * shared by all the door's workers under a per-bucket mutex (held for a
 * few arithmetic operations). A reload builds a new table and carries
 * each tenant's bucket level over by name, so a reload neither refills a
 * bucket nor empties it.
 *
 * Thread safety: a table is immutable once built except for its buckets;
 * any thread may call tr_auth_find and tr_auth_take.
 */
#ifndef TR_HTTP_AUTH_H
#define TR_HTTP_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "pipe/spec.h"

typedef struct tr_auth tr_auth;

/* Builds the table for cfg's tenants (cfg is not kept); prev, if not
 * NULL, hands over bucket levels. TR_OK or TR_ENOMEM. */
int tr_auth_new(const tr_config *cfg, const tr_auth *prev, tr_auth **out);
void tr_auth_free(tr_auth *a);

/* Number of tenants (0: the door is open, no key needed). */
size_t tr_auth_ntenants(const tr_auth *a);
/* Index of the tenant one of whose keys is key[0..len), or -1. */
int tr_auth_find(const tr_auth *a, const char *key, size_t len);
/* Index of the tenant named `name`, or -1. */
int tr_auth_lookup(const tr_auth *a, const char *name, size_t len);
const char *tr_auth_tenant(const tr_auth *a, int t);

/* Takes one token of tenant t at time now_ns (monotonic): 1 if taken, 0
 * if the tenant is over its rate, then *retry_after_ms is when the next
 * token comes. Unlimited tenants always get 1. */
int tr_auth_take(tr_auth *a, int t, uint64_t now_ns, uint64_t *retry_after_ms);

/* Tenant t's rate (tokens/s, 0 = unlimited) and burst. */
void tr_auth_rate(const tr_auth *a, int t, double *rate, double *burst);

/* SHA-256 of p[0..n) (exposed for tests and `troupe keyhash`). */
void tr_sha256(const void *p, size_t n, unsigned char out[32]);

#endif
