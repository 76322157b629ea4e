/*
 * http/auth.c -- API keys and token buckets. See auth.h.
 */
#include <math.h>
#include <string.h>
#include <uv.h>

#include <mbedtls/sha256.h>
#include <mbedtls/version.h>

#include <troupe/err.h>

#include "core/alloc.h"
#include "http/auth.h"

typedef struct bucket {
	uv_mutex_t mu;
	double tokens;    /* guarded by mu */
	uint64_t last_ns; /* guarded by mu: when tokens was computed */
} bucket;

typedef struct tenant {
	char *name;
	double rate;      /* tokens per second; 0 = unlimited */
	double burst;
	bucket b;
} tenant;

typedef struct key_ent {
	unsigned char hash[32];
	int tenant;
} key_ent;

struct tr_auth {
	tenant *t;
	size_t nt;
	key_ent *keys;
	size_t nkeys;
};

void tr_sha256(const void *p, size_t n, unsigned char out[32])
{
#if MBEDTLS_VERSION_MAJOR >= 3
	mbedtls_sha256(p, n, out, 0);
#else
	mbedtls_sha256_ret(p, n, out, 0);
#endif
}

void tr_auth_free(tr_auth *a)
{
	if (a == NULL)
		return;
	for (size_t i = 0; i < a->nt; i++) {
		tr__free(a->t[i].name);
		uv_mutex_destroy(&a->t[i].b.mu);
	}
	tr__free(a->t);
	tr__free(a->keys);
	tr__free(a);
}

int tr_auth_new(const tr_config *cfg, const tr_auth *prev, tr_auth **out)
{
	tr_auth *a = tr__calloc(1, sizeof(*a));
	size_t nkeys = 0;

	if (a == NULL)
		return TR_ENOMEM;
	for (size_t i = 0; i < cfg->ntenants; i++)
		nkeys += cfg->tenants[i].nkeys;
	a->t = tr__calloc(cfg->ntenants + 1, sizeof(*a->t));
	a->keys = tr__calloc(nkeys + 1, sizeof(*a->keys));
	if (a->t == NULL || a->keys == NULL)
		goto oom;
	for (size_t i = 0; i < cfg->ntenants; i++) {
		const tr_tenant_spec *ts = &cfg->tenants[i];
		tenant *t = &a->t[i];
		t->name = tr__strndup(ts->name, strlen(ts->name));
		if (t->name == NULL || uv_mutex_init(&t->b.mu) != 0) {
			tr__free(t->name);
			goto oom;
		}
		a->nt++;
		t->rate = ts->rate;
		t->burst = ts->burst ? (double)ts->burst : fmax(1.0, ceil(ts->rate));
		t->b.tokens = t->burst;
		t->b.last_ns = 0; /* 0: set on first take */
		int p = prev ? tr_auth_lookup(prev, t->name, strlen(t->name)) : -1;
		if (p >= 0) {
			bucket *pb = &prev->t[p].b;
			uv_mutex_lock(&pb->mu);
			t->b.tokens = fmin(pb->tokens, t->burst);
			t->b.last_ns = pb->last_ns;
			uv_mutex_unlock(&pb->mu);
		}
		for (size_t k = 0; k < ts->nkeys; k++) {
			memcpy(a->keys[a->nkeys].hash, ts->keys[k], 32);
			a->keys[a->nkeys].tenant = (int)i;
			a->nkeys++;
		}
	}
	*out = a;
	return TR_OK;
oom:
	tr_auth_free(a);
	return TR_ENOMEM;
}

size_t tr_auth_ntenants(const tr_auth *a)
{
	return a ? a->nt : 0;
}

int tr_auth_find(const tr_auth *a, const char *key, size_t len)
{
	unsigned char h[32];
	/* found: the matching tenant + 1, or 0; computed with masks only. */
	unsigned found = 0;

	if (a == NULL)
		return -1;
	tr_sha256(key, len, h);
	for (size_t i = 0; i < a->nkeys; i++) {
		unsigned diff = 0;
		for (int b = 0; b < 32; b++)
			diff |= (unsigned)(h[b] ^ a->keys[i].hash[b]);
		/* diff in [0, 255]: (diff - 1) >> 8 is all ones iff diff == 0. */
		unsigned eq = (unsigned)(((diff - 1u) >> 8) & 1u);
		unsigned mask = 0u - (eq & (found == 0));
		found |= mask & (unsigned)(a->keys[i].tenant + 1);
	}
	return (int)found - 1;
}

int tr_auth_lookup(const tr_auth *a, const char *name, size_t len)
{
	for (size_t i = 0; a != NULL && i < a->nt; i++)
		if (strlen(a->t[i].name) == len && memcmp(a->t[i].name, name, len) == 0)
			return (int)i;
	return -1;
}

const char *tr_auth_tenant(const tr_auth *a, int t)
{
	return a != NULL && t >= 0 && (size_t)t < a->nt ? a->t[t].name : NULL;
}

void tr_auth_rate(const tr_auth *a, int t, double *rate, double *burst)
{
	*rate = *burst = 0;
	if (a != NULL && t >= 0 && (size_t)t < a->nt) {
		*rate = a->t[t].rate;
		*burst = a->t[t].burst;
	}
}

int tr_auth_take(tr_auth *a, int t, uint64_t now_ns, uint64_t *retry_after_ms)
{
	if (a == NULL || t < 0 || (size_t)t >= a->nt || a->t[t].rate <= 0)
		return 1;
	tenant *tn = &a->t[t];
	int ok;
	uv_mutex_lock(&tn->b.mu);
	if (tn->b.last_ns != 0 && now_ns > tn->b.last_ns)
		tn->b.tokens = fmin(tn->burst,
		                    tn->b.tokens + (double)(now_ns - tn->b.last_ns) * 1e-9 * tn->rate);
	if (now_ns > tn->b.last_ns)
		tn->b.last_ns = now_ns;
	ok = tn->b.tokens >= 1.0;
	if (ok)
		tn->b.tokens -= 1.0;
	else if (retry_after_ms != NULL)
		*retry_after_ms = (uint64_t)ceil((1.0 - tn->b.tokens) / tn->rate * 1000.0);
	uv_mutex_unlock(&tn->b.mu);
	return ok;
}
