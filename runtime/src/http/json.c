/*
 * http/json.c -- JSON <-> msgpack. See json.h.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <msgpack.h>

#include "core/alloc.h"
#include "http/json.h"
#include "pipe/mp.h"

static int to_mp(const json_t *j, msgpack_packer *pk, unsigned depth)
{
	if (depth > TR_MP_MAX_DEPTH)
		return TR_EPROTO;
	switch (json_typeof(j)) {
	case JSON_OBJECT: {
		const char *k;
		json_t *v;
		if (msgpack_pack_map(pk, (uint32_t)json_object_size(j)) != 0)
			return TR_ENOMEM;
		json_object_foreach((json_t *)j, k, v) {
			int rc;
			if (tr__mp_pack_cstr(pk, k) != 0)
				return TR_ENOMEM;
			if ((rc = to_mp(v, pk, depth + 1)) != TR_OK)
				return rc;
		}
		return TR_OK;
	}
	case JSON_ARRAY: {
		size_t i;
		json_t *v;
		if (msgpack_pack_array(pk, (uint32_t)json_array_size(j)) != 0)
			return TR_ENOMEM;
		json_array_foreach(j, i, v) {
			int rc = to_mp(v, pk, depth + 1);
			if (rc != TR_OK)
				return rc;
		}
		return TR_OK;
	}
	case JSON_STRING:
		if (msgpack_pack_str(pk, json_string_length(j)) != 0 ||
		    msgpack_pack_str_body(pk, json_string_value(j), json_string_length(j)) != 0)
			return TR_ENOMEM;
		return TR_OK;
	case JSON_INTEGER:
		return msgpack_pack_int64(pk, (int64_t)json_integer_value(j)) == 0 ? TR_OK : TR_ENOMEM;
	case JSON_REAL:
		return msgpack_pack_double(pk, json_real_value(j)) == 0 ? TR_OK : TR_ENOMEM;
	case JSON_TRUE:
		return msgpack_pack_true(pk) == 0 ? TR_OK : TR_ENOMEM;
	case JSON_FALSE:
		return msgpack_pack_false(pk) == 0 ? TR_OK : TR_ENOMEM;
	case JSON_NULL:
	default:
		return msgpack_pack_nil(pk) == 0 ? TR_OK : TR_ENOMEM;
	}
}

int tr__json_to_mp(const json_t *j, tr_buf *out)
{
	msgpack_packer pk;
	size_t mark = out->len;
	tr__mp_packer(&pk, out);
	int rc = to_mp(j, &pk, 1);
	if (rc != TR_OK)
		out->len = mark;
	return rc;
}

static json_t *bytes_to_json(const char *p, size_t n)
{
	json_t *s = json_stringn(p, n); /* NULL when not valid UTF-8 */
	if (s != NULL || n == 0)
		return s ? s : json_string("");
	static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t olen = 4 * ((n + 2) / 3);
	char *o = tr__malloc(olen);
	if (o == NULL)
		return NULL;
	size_t k = 0;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)(unsigned char)p[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)(unsigned char)p[i + 1] << 8;
		if (i + 2 < n)
			v |= (unsigned char)p[i + 2];
		o[k++] = b64[(v >> 18) & 63];
		o[k++] = b64[(v >> 12) & 63];
		o[k++] = i + 1 < n ? b64[(v >> 6) & 63] : '=';
		o[k++] = i + 2 < n ? b64[v & 63] : '=';
	}
	s = json_stringn(o, olen);
	tr__free(o);
	return s;
}

static json_t *obj_to_json(const msgpack_object *o)
{
	switch (o->type) {
	case MSGPACK_OBJECT_NIL:
		return json_null();
	case MSGPACK_OBJECT_BOOLEAN:
		return json_boolean(o->via.boolean);
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		if (o->via.u64 > (uint64_t)INT64_MAX)
			return json_real((double)o->via.u64);
		return json_integer((json_int_t)o->via.u64);
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		return json_integer((json_int_t)o->via.i64);
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		return isfinite(o->via.f64) ? json_real(o->via.f64) : json_null();
	case MSGPACK_OBJECT_STR:
		return bytes_to_json(o->via.str.ptr, o->via.str.size);
	case MSGPACK_OBJECT_BIN:
		return bytes_to_json(o->via.bin.ptr, o->via.bin.size);
	case MSGPACK_OBJECT_ARRAY: {
		json_t *a = json_array();
		for (uint32_t i = 0; a != NULL && i < o->via.array.size; i++) {
			json_t *v = obj_to_json(&o->via.array.ptr[i]);
			if (v == NULL || json_array_append_new(a, v) != 0) {
				json_decref(a);
				return NULL;
			}
		}
		return a;
	}
	case MSGPACK_OBJECT_MAP: {
		json_t *m = json_object();
		for (uint32_t i = 0; m != NULL && i < o->via.map.size; i++) {
			const msgpack_object *k = &o->via.map.ptr[i].key;
			char kb[32];
			const char *ks;
			size_t kn;
			if (k->type == MSGPACK_OBJECT_STR) {
				ks = k->via.str.ptr;
				kn = k->via.str.size;
			} else if (k->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
				kn = (size_t)snprintf(kb, sizeof(kb), "%llu", (unsigned long long)k->via.u64);
				ks = kb;
			} else if (k->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
				kn = (size_t)snprintf(kb, sizeof(kb), "%lld", (long long)k->via.i64);
				ks = kb;
			} else {
				continue; /* no JSON spelling: left out */
			}
			json_t *v = obj_to_json(&o->via.map.ptr[i].val);
			if (v == NULL || json_object_setn_new(m, ks, kn, v) != 0) {
				/* setn_new frees v on failure (invalid UTF-8 key too) */
				json_decref(m);
				return NULL;
			}
		}
		return m;
	}
	default:
		return json_null();
	}
}

json_t *tr__mp_to_json(const unsigned char *p, size_t n)
{
	msgpack_unpacked u;
	size_t off = 0;
	json_t *j = NULL;

	/* msgpack-c trusts the counts in its input: check first. */
	if (tr_mp_check(p, n, TR_MP_MAX_DEPTH) != TR_OK)
		return NULL;
	msgpack_unpacked_init(&u);
	if (msgpack_unpack_next(&u, (const char *)p, n, &off) == MSGPACK_UNPACK_SUCCESS)
		j = obj_to_json(&u.data);
	msgpack_unpacked_destroy(&u);
	return j;
}
