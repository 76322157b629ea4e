/*
 * actors/kit.c -- settings, messages and answers for the built-in kinds.
 * See kit.h.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "actors/kit.h"
#include "core/alloc.h"
#include "lua/lua_int.h"
#include "lua/tlua.h"
#include "msg/msg_int.h"
#include "pipe/mp.h"

/* ---- settings --------------------------------------------------------- */

int tr_kcfg_fail(tr_kcfg *c, const char *fmt, ...)
{
	va_list ap;
	if (!c->failed && c->err != NULL && c->errlen > 0) {
		int n = snprintf(c->err, c->errlen, "%s: ", c->who);
		va_start(ap, fmt);
		if (n >= 0 && (size_t)n < c->errlen)
			vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
		va_end(ap);
	}
	c->failed = 1;
	return TR_EINVAL;
}

int tr_kcfg_open(tr_kcfg *c, const tr_actor_spec *a, char *err, size_t errlen)
{
	size_t off = 0;
	memset(c, 0, sizeof(*c));
	msgpack_unpacked_init(&c->u);
	snprintf(c->who, sizeof(c->who), "actor '%s'", a->name ? a->name : "?");
	c->err = err;
	c->errlen = errlen;
	if (err != NULL && errlen > 0)
		err[0] = '\0';
	if (a->config == NULL || a->config_len == 0)
		return TR_OK;
	if (tr_mp_check(a->config, a->config_len, TR_MP_MAX_DEPTH) != TR_OK ||
	    msgpack_unpack_next(&c->u, (const char *)a->config, a->config_len, &off) !=
	        MSGPACK_UNPACK_SUCCESS ||
	    c->u.data.type != MSGPACK_OBJECT_MAP)
		return tr_kcfg_fail(c, "settings are not a table");
	c->map = &c->u.data.via.map;
	return TR_OK;
}

void tr_kcfg_close(tr_kcfg *c)
{
	msgpack_unpacked_destroy(&c->u);
}

static int key_is(const msgpack_object *k, const char *s)
{
	size_t n = strlen(s);
	return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
	       memcmp(k->via.str.ptr, s, n) == 0;
}

const msgpack_object *tr_kobj_get(const msgpack_object *map, const char *key)
{
	if (map == NULL || map->type != MSGPACK_OBJECT_MAP)
		return NULL;
	for (uint32_t i = 0; i < map->via.map.size; i++)
		if (key_is(&map->via.map.ptr[i].key, key))
			return &map->via.map.ptr[i].val;
	return NULL;
}

int tr_kobj_is(const msgpack_object *o, const char *s)
{
	return o != NULL && key_is(o, s);
}

const msgpack_object *tr_kcfg_get(const tr_kcfg *c, const char *key)
{
	return c->map ? tr_kobj_get(&c->u.data, key) : NULL;
}

int tr_kcfg_keys(tr_kcfg *c, const char *const *known)
{
	if (c->map == NULL)
		return TR_OK;
	for (uint32_t i = 0; i < c->map->size; i++) {
		const msgpack_object *k = &c->map->ptr[i].key;
		int ok = 0;
		const char *best = NULL;
		size_t bestd = 3;
		if (k->type != MSGPACK_OBJECT_STR)
			return tr_kcfg_fail(c, "settings must have string keys");
		char kb[64];
		snprintf(kb, sizeof(kb), "%.*s", (int)(k->via.str.size < 63 ? k->via.str.size : 63),
		         k->via.str.ptr);
		for (const char *const *p = known; *p != NULL && !ok; p++) {
			ok = key_is(k, *p);
			/* the loader's own distance, so both say "did you mean" alike */
			size_t d = k->via.str.size < 63 ? tr__lua_editdist(kb, *p, 2) : 99;
			if (d < bestd) {
				bestd = d;
				best = *p;
			}
		}
		if (ok)
			continue;
		char list[400];
		size_t off = 0;
		list[0] = '\0';
		for (const char *const *p = known; *p != NULL; p++) {
			int w = snprintf(list + off, sizeof(list) - off, "%s%s", off ? ", " : "", *p);
			if (w < 0 || (size_t)w >= sizeof(list) - off)
				break;
			off += (size_t)w;
		}
		if (best != NULL)
			return tr_kcfg_fail(c, "unknown setting '%.*s' (did you mean '%s'?)",
			                    (int)k->via.str.size, k->via.str.ptr, best);
		return tr_kcfg_fail(c, "unknown setting '%.*s' (this kind takes %s)",
		                    (int)k->via.str.size, k->via.str.ptr, list);
	}
	return TR_OK;
}

const char *tr_kobj_type(const msgpack_object *o)
{
	switch (o->type) {
	case MSGPACK_OBJECT_BOOLEAN: return "boolean";
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "integer";
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64: return "number";
	case MSGPACK_OBJECT_STR: return "string";
	case MSGPACK_OBJECT_ARRAY: return "list";
	case MSGPACK_OBJECT_MAP: return "table";
	case MSGPACK_OBJECT_BIN: return "binary data";
	default: return "nil";
	}
}

char *tr_kcfg_str(tr_kcfg *c, const char *key, const char *dflt)
{
	const msgpack_object *o = tr_kcfg_get(c, key);
	if (o == NULL)
		return dflt ? tr__strndup(dflt, strlen(dflt)) : NULL;
	if (o->type != MSGPACK_OBJECT_STR) {
		tr_kcfg_fail(c, "%s: expected a string, got %s", key, tr_kobj_type(o));
		return dflt ? tr__strndup(dflt, strlen(dflt)) : NULL;
	}
	return tr__strndup(o->via.str.ptr, o->via.str.size);
}

static int as_num(const msgpack_object *o, double *v)
{
	switch (o->type) {
	case MSGPACK_OBJECT_POSITIVE_INTEGER: *v = (double)o->via.u64; return 1;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: *v = (double)o->via.i64; return 1;
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64: *v = o->via.f64; return 1;
	default: return 0;
	}
}

double tr_kcfg_num(tr_kcfg *c, const char *key, double dflt, double min, double max)
{
	const msgpack_object *o = tr_kcfg_get(c, key);
	double v;
	if (o == NULL)
		return dflt;
	if (!as_num(o, &v) || !isfinite(v)) {
		tr_kcfg_fail(c, "%s: expected a number, got %s", key, tr_kobj_type(o));
		return dflt;
	}
	if (v < min || v > max) {
		tr_kcfg_fail(c, "%s: must be between %g and %g, got %g", key, min, max, v);
		return dflt;
	}
	return v;
}

int64_t tr_kcfg_int(tr_kcfg *c, const char *key, int64_t dflt, int64_t min, int64_t max)
{
	const msgpack_object *o = tr_kcfg_get(c, key);
	double v;
	if (o == NULL)
		return dflt;
	if (!as_num(o, &v) || v != floor(v)) {
		tr_kcfg_fail(c, "%s: expected an integer, got %s", key, tr_kobj_type(o));
		return dflt;
	}
	if (v < (double)min || v > (double)max) {
		tr_kcfg_fail(c, "%s: must be between %lld and %lld, got %g", key, (long long)min,
		             (long long)max, v);
		return dflt;
	}
	return (int64_t)v;
}

int tr_kcfg_bool(tr_kcfg *c, const char *key, int dflt)
{
	const msgpack_object *o = tr_kcfg_get(c, key);
	if (o == NULL)
		return dflt;
	if (o->type != MSGPACK_OBJECT_BOOLEAN) {
		tr_kcfg_fail(c, "%s: expected true or false, got %s", key, tr_kobj_type(o));
		return dflt;
	}
	return o->via.boolean;
}

void tr_kstrv_free(char **v, size_t n)
{
	for (size_t i = 0; v != NULL && i < n; i++)
		tr__free(v[i]);
	tr__free(v);
}

int tr_kcfg_strv(tr_kcfg *c, const char *key, char ***out, size_t *n)
{
	const msgpack_object *o = tr_kcfg_get(c, key);
	*out = NULL;
	*n = 0;
	if (o == NULL)
		return TR_OK;
	if (o->type != MSGPACK_OBJECT_ARRAY)
		return tr_kcfg_fail(c, "%s: expected a list of strings, got %s", key, tr_kobj_type(o));
	char **v = tr__calloc(o->via.array.size + 1, sizeof(char *));
	if (v == NULL)
		return tr_kcfg_fail(c, "out of memory");
	for (uint32_t i = 0; i < o->via.array.size; i++) {
		const msgpack_object *e = &o->via.array.ptr[i];
		if (e->type != MSGPACK_OBJECT_STR) {
			tr_kstrv_free(v, i);
			return tr_kcfg_fail(c, "%s: element %u: expected a string, got %s", key, i + 1,
			                    tr_kobj_type(e));
		}
		v[i] = tr__strndup(e->via.str.ptr, e->via.str.size);
		if (v[i] == NULL) {
			tr_kstrv_free(v, i);
			return tr_kcfg_fail(c, "out of memory");
		}
	}
	*out = v;
	*n = o->via.array.size;
	return TR_OK;
}

/* ---- messages ----------------------------------------------------------- */

/*
 * The zones messages are unpacked into, kept per thread and cleared for
 * the next message: msgpack_unpack_next makes and frees an 8 KiB zone
 * per call, malloc's slow path (not its per-thread cache) on every step
 * of every run. A few per thread, as opens nest only a little; freed
 * when the thread ends (the key's destructor).
 */
#define KZONES 4
#define KZONE_KEEP (64u * 1024u)
typedef struct kzones {
	msgpack_zone *z[KZONES];
	unsigned n;
} kzones;

static pthread_key_t kz_key;
static pthread_once_t kz_once = PTHREAD_ONCE_INIT;

static void kz_free(void *p)
{
	kzones *c = p;
	for (unsigned i = 0; i < c->n; i++)
		msgpack_zone_free(c->z[i]);
	tr__free(c);
}

static void kz_init(void)
{
	(void)pthread_key_create(&kz_key, kz_free);
}

static msgpack_zone *kz_get(void)
{
	(void)pthread_once(&kz_once, kz_init);
	kzones *c = pthread_getspecific(kz_key);
	if (c != NULL && c->n > 0)
		return c->z[--c->n];
	return msgpack_zone_new(MSGPACK_ZONE_CHUNK_SIZE);
}

static void kz_put(msgpack_zone *z)
{
	kzones *c = pthread_getspecific(kz_key);
	if (c == NULL && (c = tr__calloc(1, sizeof(*c))) != NULL &&
	    pthread_setspecific(kz_key, c) != 0) {
		tr__free(c);
		c = NULL;
	}
	if (c != NULL && c->n < KZONES) {
		/* clear keeps the zone's newest chunk: one grown by a huge
		 * message is not kept. */
		msgpack_zone_clear(z);
		if (z->chunk_list.free <= KZONE_KEEP) {
			c->z[c->n++] = z;
			return;
		}
	}
	msgpack_zone_free(z);
}

int tr_kmsg_open(tr_kmsg *k, const tr_msg *m)
{
	size_t off = 0;
	memset(k, 0, sizeof(*k));
	msgpack_unpacked_init(&k->u);
	k->map = &k->empty;
	if (m->body == NULL || m->body->len == 0)
		return TR_OK;
	/* The engine checked the body (tr_mp_check) before it asked us; an
	 * actor asked directly by someone else gets the same check here. */
	if (tr_body_check(m->body) != TR_OK)
		return TR_EPROTO;
	if ((k->u.zone = kz_get()) == NULL)
		return TR_ENOMEM;
	/* msgpack_unpack (msgpack-c calls it obsolete, but it is the one
	 * call that unpacks into a zone of ours) on a checked body. */
	if (msgpack_unpack((const char *)m->body->data, m->body->len, &off, k->u.zone, &k->u.data) !=
	        MSGPACK_UNPACK_SUCCESS ||
	    k->u.data.type != MSGPACK_OBJECT_MAP)
		return TR_EPROTO;
	k->map = &k->u.data.via.map;
	return TR_OK;
}

void tr_kmsg_close(tr_kmsg *k)
{
	if (k->u.zone != NULL)
		kz_put(k->u.zone);
	k->u.zone = NULL;
}

const msgpack_object *tr_kmsg_get(const tr_kmsg *k, const char *key)
{
	for (uint32_t i = 0; i < k->map->size; i++)
		if (key_is(&k->map->ptr[i].key, key))
			return &k->map->ptr[i].val;
	return NULL;
}

int tr_kmsg_str(const tr_kmsg *k, const char *key, const char **s, size_t *n)
{
	const msgpack_object *o = tr_kmsg_get(k, key);
	if (o == NULL || o->type == MSGPACK_OBJECT_NIL)
		return TR_ENOTFOUND;
	if (o->type != MSGPACK_OBJECT_STR)
		return TR_EINVAL;
	*s = o->via.str.ptr;
	*n = o->via.str.size;
	return TR_OK;
}

/* ---- answers ---------------------------------------------------------- */

void tr_kout_init(tr_kout *o)
{
	tr_buf_init(&o->pairs);
	tr__mp_packer(&o->pk, &o->pairs);
	o->n = 0;
	o->raw = 0;
}

void tr_kout_free(tr_kout *o)
{
	tr_buf_free(&o->pairs);
	o->n = 0;
}

msgpack_packer *tr_kout_key(tr_kout *o, const char *key)
{
	tr__mp_pack_cstr(&o->pk, key);
	o->n++;
	return &o->pk;
}

int tr_kpack_str(msgpack_packer *pk, const char *s, size_t n)
{
	return msgpack_pack_str(pk, n) == 0 && msgpack_pack_str_body(pk, s, n) == 0 ? TR_OK
	                                                                             : TR_ENOMEM;
}

int tr_kout_reply(tr_ctx *ctx, const tr_msg *req, tr_kout *o)
{
	static const unsigned char empty_map[] = {0x80};
	tr_buf out;
	int has = req->body != NULL && req->body->len > 0;
	const unsigned char *a = has ? req->body->data : empty_map;
	size_t alen = has ? req->body->len : 1;

	/* The merge is written where the reply's body will be (no copy): at
	 * most a's bytes, the pairs, and a map header grown by 4. */
	int rc = tr__body_buf_init(&out, alen + o->pairs.len + 4);
	if (rc == TR_OK)
		rc = tr__mp_map_merge_entries(a, alen, o->pairs.data, o->pairs.len, o->n, &out);
	/* A merge of a checked body and pairs msgpack-c packed is valid as
	 * made: mark it, so that the engine need not walk it again. */
	int trusted = !o->raw && (!has || atomic_load_explicit(&req->body->checked,
	                                                        memory_order_relaxed));
	tr_msg *rep = rc == TR_OK ? tr_msg_new() : NULL;
	if (rep != NULL && (rep->body = tr__body_from_buf(&out)) == NULL) {
		tr_msg_free(rep);
		rep = NULL;
	}
	if (rep != NULL && trusted)
		tr__body_mark_checked(rep->body);
	tr_buf_free(&out);
	tr_kout_free(o);
	if (rep == NULL)
		return tr_reply_error(ctx, req, TR_ENOMEM);
	return tr_reply(ctx, req, rep);
}

int tr_step_fail(tr_ctx *ctx, const tr_msg *req, int err, const char *fmt, ...)
{
	char msg[512];
	tr_buf b;
	msgpack_packer pk;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	msgpack_pack_map(&pk, 1);
	tr__mp_pack_cstr(&pk, "message");
	tr__mp_pack_cstr(&pk, msg);
	tr_msg *rep = tr_msg_new();
	if (rep == NULL) {
		tr_buf_free(&b);
		return tr_reply_error(ctx, req, err);
	}
	rep->flags = TR_MSGF_ERROR;
	rep->err = err;
	rep->body = tr_body_new(b.data, b.len);
	tr_buf_free(&b);
	return tr_reply(ctx, req, rep);
}

/* ---- regexes ------------------------------------------------------------ */

/* Saturating, so that hostile counts cannot wrap the estimate. */
static uint64_t cost_mul(uint64_t a, uint64_t b)
{
	return a != 0 && b > UINT64_MAX / a ? UINT64_MAX : a * b;
}

static uint64_t cost_add(uint64_t a, uint64_t b)
{
	return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

int tr_kregex_check(const char *ere, char *why, size_t whylen)
{
	/* Per open group: the cost of what it holds so far. `last` is the
	 * cost of the latest atom, not yet added (a quantifier multiplies
	 * it); `quant` whether the latest token was a quantifier. */
	uint64_t sum[33], last = 0;
	unsigned depth = 0;
	int quant = 0;
	size_t n = strlen(ere);

	if (n > TR_KRE_MAX_LEN) {
		snprintf(why, whylen, "longer than %d bytes", TR_KRE_MAX_LEN);
		return TR_EINVAL;
	}
	sum[0] = 0;
	for (size_t i = 0; i < n; i++) {
		char ch = ere[i];
		uint64_t factor = 0;
		if (ch == '*' || ch == '+' || ch == '?' || ch == '{') {
			unsigned long lo = 0, hi = 0;
			if (ch == '{') {
				char *end;
				lo = strtoul(ere + i + 1, &end, 10);
				hi = lo;
				if (*end == ',')
					hi = end[1] == '}' ? lo : strtoul(end + 1, &end, 10);
				else if (*end != '}')
					continue; /* not a count: regcomp judges it */
				if (lo > TR_KRE_MAX_COUNT || hi > TR_KRE_MAX_COUNT) {
					snprintf(why, whylen, "a repetition count above %d", TR_KRE_MAX_COUNT);
					return TR_EINVAL;
				}
				while (i < n && ere[i] != '}')
					i++;
			}
			if (quant) {
				snprintf(why, whylen, "a quantifier right after another one (near offset %zu)", i);
				return TR_EINVAL;
			}
			factor = ch == '*' || ch == '?' ? 1 : ch == '+' ? 2 : (hi > lo ? hi : lo) + 1;
			last = cost_mul(last, factor);
			quant = 1;
			continue;
		}
		quant = 0;
		if (ch == '(') {
			if (depth == 32) {
				snprintf(why, whylen, "groups nested deeper than 32");
				return TR_EINVAL;
			}
			sum[depth] = cost_add(sum[depth], last);
			last = 0;
			sum[++depth] = 0;
			continue;
		}
		if (ch == ')' && depth > 0) {
			uint64_t g = cost_add(sum[depth--], last);
			last = cost_add(g, 1);
			continue;
		}
		sum[depth] = cost_add(sum[depth], last);
		last = 1;
		if (ch == '\\' && i + 1 < n) {
			i++;
		} else if (ch == '[') {
			/* A bracket is one atom: skip to its closing ']' (a first ']'
			 * and [:class:] items are members). */
			size_t j = i + 1;
			if (j < n && ere[j] == '^')
				j++;
			if (j < n && ere[j] == ']')
				j++;
			while (j < n && ere[j] != ']') {
				if (ere[j] == '[' && j + 1 < n && strchr(":=.", ere[j + 1]) != NULL) {
					const char *e = strstr(ere + j + 2, ere[j + 1] == ':' ? ":]" : ere[j + 1] == '=' ? "=]" : ".]");
					j = e != NULL ? (size_t)(e - ere) + 2 : n;
					continue;
				}
				j++;
			}
			i = j < n ? j : n - 1;
		}
		if (sum[depth] > TR_KRE_MAX_COST)
			break;
	}
	while (depth > 0) /* unbalanced: regcomp says so; count what is open */
		last = cost_add(sum[depth--], last);
	uint64_t total = cost_add(sum[0], last);
	if (total > TR_KRE_MAX_COST) {
		snprintf(why, whylen, "it would compile too large (counted or stacked repetitions: "
		         "about %llu nodes, at most %d)", (unsigned long long)total, TR_KRE_MAX_COST);
		return TR_EINVAL;
	}
	return TR_OK;
}
