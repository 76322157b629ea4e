/*
 * http/json.c -- JSON <-> msgpack. See json.h.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "core/alloc.h"
#include "http/json.h"
#include "msg/msg_int.h"
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

/* ---- msgpack -> JSON text, straight from the bytes ------------------------ */

/* The answer path of the door writes JSON from the engine's msgpack with
 * no intermediate tree: building jansson values and dumping them was half
 * of the node's CPU per request (bench/http profile). */

static uint64_t be_n(const unsigned char *p, unsigned n)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	size_t k;
	uint32_t cp;
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		k = 2, cp = c & 0x1f;
	else if (c >= 0xe0 && c <= 0xef)
		k = 3, cp = c & 0x0f;
	else if (c >= 0xf0 && c <= 0xf4)
		k = 4, cp = c & 0x07;
	else
		return 0;
	if (k > n)
		return 0;
	for (size_t i = 1; i < k; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	/* overlong forms, surrogates, past U+10FFFF */
	if ((k == 3 && cp < 0x800) || (k == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return k;
}

/* Whether c goes into a JSON string as it is: printable ASCII but for
 * the quote and the backslash. */
static inline int plain(unsigned char c)
{
	return c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
}

int tr__json_str(const char *str, size_t n, tr_buf *out)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *s = (const unsigned char *)str;
	size_t i = 0, run = 0;
	int rc = tr__buf_reserve(out, n + 2);
	if (rc != TR_OK)
		return rc;
	rc |= tr__buf_append(out, "\"", 1);
	while (i < n) {
		/* Most text is printable ASCII: skip it in a tight loop. */
		while (i < n && plain(s[i]))
			i++, run++;
		if (i == n)
			break;
		unsigned char c = s[i];
		const char *esc = NULL;
		char u[6];
		size_t k = 1;
		if (c == '"')
			esc = "\\\"";
		else if (c == '\\')
			esc = "\\\\";
		else if (c == '\n')
			esc = "\\n";
		else if (c == '\r')
			esc = "\\r";
		else if (c == '\t')
			esc = "\\t";
		else if (c < 0x20) {
			u[0] = '\\', u[1] = 'u', u[2] = '0', u[3] = '0', u[4] = hex[c >> 4],
			u[5] = hex[c & 15];
		} else if (c >= 0x80 && (k = utf8_len(s + i, n - i)) == 0) {
			esc = "\xef\xbf\xbd"; /* an invalid byte becomes U+FFFD */
			k = 1;
		}
		if (esc == NULL && c >= 0x20) {
			i += k;
			run += k;
			continue;
		}
		rc |= tr__buf_append(out, s + i - run, run);
		run = 0;
		if (esc != NULL)
			rc |= tr__buf_append(out, esc, strlen(esc));
		else
			rc |= tr__buf_append(out, u, 6);
		i += k;
	}
	rc |= tr__buf_append(out, s + i - run, run);
	rc |= tr__buf_append(out, "\"", 1);
	return rc ? TR_ENOMEM : TR_OK;
}

static int put(tr_buf *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int put(tr_buf *out, const char *fmt, ...)
{
	char tmp[64];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	return n > 0 ? tr__buf_append(out, tmp, (size_t)n) : TR_OK;
}

static int bin_b64(const unsigned char *p, size_t n, tr_buf *out)
{
	static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	int rc = tr__buf_append(out, "\"", 1);
	for (size_t i = 0; i < n && rc == TR_OK; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16;
		char q[4];
		if (i + 1 < n)
			v |= (uint32_t)p[i + 1] << 8;
		if (i + 2 < n)
			v |= p[i + 2];
		q[0] = b64[(v >> 18) & 63];
		q[1] = b64[(v >> 12) & 63];
		q[2] = i + 1 < n ? b64[(v >> 6) & 63] : '=';
		q[3] = i + 2 < n ? b64[v & 63] : '=';
		rc = tr__buf_append(out, q, 4);
	}
	return rc | tr__buf_append(out, "\"", 1);
}

static int valid_utf8(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n;) {
		size_t k = utf8_len(p + i, n - i);
		if (k == 0)
			return 0;
		i += k;
	}
	return 1;
}

static int put_double(tr_buf *out, double d)
{
	if (!isfinite(d))
		return tr__buf_append(out, "null", 4);
	if (d == floor(d) && fabs(d) < 1e15)
		return put(out, "%.1f", d);
	/* The shortest of %.15g..%.17g that reads back as d: 1.59, not
	 * 1.5900000000000001. */
	char tmp[40];
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(tmp, sizeof(tmp), "%.*g", prec, d);
		if (prec == 17 || strtod(tmp, NULL) == d)
			break;
	}
	return tr__buf_append(out, tmp, strlen(tmp));
}

/* Writes the object at *pp and advances *pp past it. `as_key`: a map key
 * (JSON wants a string: integers become their decimal text). Returns
 * TR_OK, TR_ENOMEM, or TR_ENOTFOUND for a key with no JSON spelling (the
 * caller drops that entry). */
static int emit(const unsigned char **pp, tr_buf *out, int as_key)
{
	const unsigned char *p = *pp;
	unsigned char c = p[0];
	size_t len = 0, hdr = 1;
	int rc = TR_OK;

	if (c <= 0x7f || c >= 0xe0 || (c >= 0xcc && c <= 0xd3)) {
		/* integers */
		int neg = 0;
		uint64_t u = 0;
		int64_t s = 0;
		if (c <= 0x7f) {
			u = c;
		} else if (c >= 0xe0) {
			neg = 1;
			s = (int8_t)c;
		} else if (c <= 0xcf) {
			unsigned w = 1u << (c - 0xcc);
			u = be_n(p + 1, w);
			hdr += w;
		} else {
			unsigned w = 1u << (c - 0xd0);
			uint64_t raw = be_n(p + 1, w);
			hdr += w;
			neg = 1;
			s = w == 1 ? (int8_t)raw : w == 2 ? (int16_t)raw : w == 4 ? (int32_t)raw : (int64_t)raw;
		}
		*pp = p + hdr;
		if (as_key)
			rc = neg ? put(out, "\"%lld\"", (long long)s) : put(out, "\"%llu\"", (unsigned long long)u);
		else if (!neg && u > (uint64_t)INT64_MAX)
			rc = put_double(out, (double)u); /* past what JSON parsers read as integers */
		else
			rc = neg ? put(out, "%lld", (long long)s) : tr__fmt_u64(out, u);
		return rc;
	}
	if ((c >= 0xa0 && c <= 0xbf) || c == 0xd9 || c == 0xda || c == 0xdb) {
		if (c <= 0xbf)
			len = c & 0x1f;
		else
			hdr += c == 0xd9 ? 1u : c == 0xda ? 2u : 4u, len = be_n(p + 1, (unsigned)hdr - 1);
		*pp = p + hdr + len;
		return tr__json_str((const char *)p + hdr, len, out);
	}
	if (c == 0xc4 || c == 0xc5 || c == 0xc6) {
		hdr += c == 0xc4 ? 1u : c == 0xc5 ? 2u : 4u;
		len = be_n(p + 1, (unsigned)hdr - 1);
		*pp = p + hdr + len;
		if (as_key)
			return TR_ENOTFOUND;
		/* bin: text when it is UTF-8, else base64 */
		if (valid_utf8(p + hdr, len))
			return tr__json_str((const char *)p + hdr, len, out);
		return bin_b64(p + hdr, len, out);
	}
	if (as_key) {
		*pp = p + tr__mp_size(p);
		return TR_ENOTFOUND;
	}
	if (c == 0xc0 || c == 0xc2 || c == 0xc3) {
		*pp = p + 1;
		return c == 0xc0 ? tr__buf_append(out, "null", 4)
		     : c == 0xc2 ? tr__buf_append(out, "false", 5)
		                 : tr__buf_append(out, "true", 4);
	}
	if (c == 0xca || c == 0xcb) {
		double d;
		if (c == 0xca) {
			uint32_t b = (uint32_t)be_n(p + 1, 4);
			float f;
			memcpy(&f, &b, 4);
			d = f;
			*pp = p + 5;
		} else {
			uint64_t b = be_n(p + 1, 8);
			memcpy(&d, &b, 8);
			*pp = p + 9;
		}
		return put_double(out, d);
	}
	if ((c >= 0x90 && c <= 0x9f) || c == 0xdc || c == 0xdd) {
		uint64_t n = c <= 0x9f ? (uint64_t)(c & 0x0f) : be_n(p + 1, c == 0xdc ? 2 : 4);
		p += c <= 0x9f ? 1 : c == 0xdc ? 3 : 5;
		rc |= tr__buf_append(out, "[", 1);
		for (uint64_t i = 0; i < n; i++) {
			if (i > 0)
				rc |= tr__buf_append(out, ",", 1);
			rc |= emit(&p, out, 0);
		}
		*pp = p;
		return rc | tr__buf_append(out, "]", 1);
	}
	if ((c >= 0x80 && c <= 0x8f) || c == 0xde || c == 0xdf) {
		uint64_t n = c <= 0x8f ? (uint64_t)(c & 0x0f) : be_n(p + 1, c == 0xde ? 2 : 4);
		int first = 1;
		p += c <= 0x8f ? 1 : c == 0xde ? 3 : 5;
		rc |= tr__buf_append(out, "{", 1);
		for (uint64_t i = 0; i < n; i++) {
			size_t mark = out->len;
			if (!first)
				rc |= tr__buf_append(out, ",", 1);
			int k = emit(&p, out, 1);
			if (k == TR_ENOTFOUND) {
				out->len = mark;
				p += tr__mp_size(p); /* drop the value too */
				continue;
			}
			rc |= k | tr__buf_append(out, ":", 1) | emit(&p, out, 0);
			first = 0;
		}
		*pp = p;
		return rc | tr__buf_append(out, "}", 1);
	}
	/* ext types: no JSON spelling */
	*pp = p + tr__mp_size(p);
	return tr__buf_append(out, "null", 4);
}

int tr__mp_json_checked(const unsigned char *p, tr_buf *out)
{
	size_t mark = out->len;
	int rc = emit(&p, out, 0);
	if (rc != TR_OK)
		out->len = mark;
	return rc == TR_OK ? TR_OK : TR_ENOMEM;
}

int tr__fmt_u64(tr_buf *out, uint64_t v)
{
	char tmp[20];
	size_t i = sizeof(tmp);
	do {
		tmp[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v > 0);
	return tr__buf_append(out, tmp + i, sizeof(tmp) - i);
}

int tr__mp_json(const unsigned char *p, size_t n, tr_buf *out)
{
	size_t mark = out->len;
	if (n == 0 || tr_mp_check(p, n, TR_MP_MAX_DEPTH) != TR_OK)
		return TR_EPROTO;
	const unsigned char *q = p;
	int rc = emit(&q, out, 0);
	if (rc != TR_OK)
		out->len = mark;
	return rc == TR_OK ? TR_OK : TR_ENOMEM;
}
