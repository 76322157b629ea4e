/*
 * lua/conv.c -- msgpack <-> Lua values, for message bodies and for the
 * config maps of kind actors.
 *
 * Decoding treats its input as hostile: tr_mp_check() validates it first
 * (msgpack-c's unpacker trusts wire counts: a 5-byte map32 header would
 * make it allocate 64 MiB), then a small reader walks the validated bytes
 * and builds tables directly, so nothing is allocated for the input
 * except the Lua values themselves (charged to the state's memory cap).
 *
 * Encoding uses msgpack-c's packer writing into a tr_buf. It reads the
 * table raw (no metamethods run) and allocates nothing in Lua, so it
 * raises no Lua error and may run outside a pcall.
 *
 * Mapping: nil, booleans, integers (int64; a uint64 above INT64_MAX
 * becomes a float), floats, str and bin (both become Lua strings, so bin
 * comes back as str), arrays (sequences 1..n), maps (tables). A table
 * whose keys are exactly 1..n (n >= 1) encodes as an array; any other
 * table, the empty one included, as a map.
 */
#include <math.h>
#include <string.h>

#include <lauxlib.h>
#include <msgpack.h>

#include "lua/lua_int.h"
#include "msg/msg_int.h"
#include "pipe/mp.h"

/* ------------------------------------------------------------------ */
/* decoding                                                             */

typedef struct rd {
	const unsigned char *p;
	size_t len;
	size_t pos;
} rd;

static uint64_t be(const unsigned char *p, unsigned n)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

/* Called only on input tr_mp_check() accepted: every count and length is
 * within the buffer. Bounds are still checked so that a bug here raises
 * instead of reading past the end. */
static void push_obj(lua_State *L, rd *r)
{
	unsigned char c;
	uint64_t n = 0;
	unsigned w;

	if (r->pos >= r->len)
		luaL_error(L, "msgpack: truncated");
	c = r->p[r->pos++];
#define NEED(k)                                                              \
	do {                                                                    \
		if (r->len - r->pos < (size_t)(k))                                  \
			luaL_error(L, "msgpack: truncated");                            \
	} while (0)
	if (c <= 0x7f) {
		lua_pushinteger(L, c);
		return;
	}
	if (c >= 0xe0) {
		lua_pushinteger(L, (int8_t)c);
		return;
	}
	if ((c & 0xe0) == 0xa0) {
		n = c & 0x1f;
		goto str;
	}
	if ((c & 0xf0) == 0x90) {
		n = c & 0x0f;
		goto arr;
	}
	if ((c & 0xf0) == 0x80) {
		n = c & 0x0f;
		goto map;
	}
	switch (c) {
	case 0xc0: lua_pushnil(L); return;
	case 0xc2: lua_pushboolean(L, 0); return;
	case 0xc3: lua_pushboolean(L, 1); return;
	case 0xcc: case 0xcd: case 0xce: case 0xcf: {
		uint64_t u;
		w = 1u << (c - 0xcc);
		NEED(w);
		u = be(r->p + r->pos, w);
		r->pos += w;
		if (u > (uint64_t)LUA_MAXINTEGER)
			lua_pushnumber(L, (lua_Number)u);
		else
			lua_pushinteger(L, (lua_Integer)u);
		return;
	}
	case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
		uint64_t u;
		w = 1u << (c - 0xd0);
		NEED(w);
		u = be(r->p + r->pos, w);
		r->pos += w;
		if (w < 8 && (u >> (8 * w - 1)) != 0)
			u |= ~(uint64_t)0 << (8 * w); /* sign-extend */
		lua_pushinteger(L, (lua_Integer)(int64_t)u);
		return;
	}
	case 0xca: {
		uint32_t u;
		float f;
		NEED(4);
		u = (uint32_t)be(r->p + r->pos, 4);
		r->pos += 4;
		memcpy(&f, &u, 4);
		lua_pushnumber(L, (lua_Number)f);
		return;
	}
	case 0xcb: {
		uint64_t u;
		double d;
		NEED(8);
		u = be(r->p + r->pos, 8);
		r->pos += 8;
		memcpy(&d, &u, 8);
		lua_pushnumber(L, (lua_Number)d);
		return;
	}
	case 0xd9: case 0xc4: NEED(1); n = be(r->p + r->pos, 1); r->pos += 1; goto str;
	case 0xda: case 0xc5: NEED(2); n = be(r->p + r->pos, 2); r->pos += 2; goto str;
	case 0xdb: case 0xc6: NEED(4); n = be(r->p + r->pos, 4); r->pos += 4; goto str;
	case 0xdc: NEED(2); n = be(r->p + r->pos, 2); r->pos += 2; goto arr;
	case 0xdd: NEED(4); n = be(r->p + r->pos, 4); r->pos += 4; goto arr;
	case 0xde: NEED(2); n = be(r->p + r->pos, 2); r->pos += 2; goto map;
	case 0xdf: NEED(4); n = be(r->p + r->pos, 4); r->pos += 4; goto map;
	default:
		/* ext types have no Lua meaning here */
		luaL_error(L, "msgpack: unsupported type 0x%x", (unsigned)c);
		return;
	}
str:
	NEED(n);
	lua_pushlstring(L, (const char *)r->p + r->pos, (size_t)n);
	r->pos += (size_t)n;
	return;
arr:
	luaL_checkstack(L, 3, "msgpack nesting");
	/* n <= remaining bytes (tr_mp_check), so the preallocation is bounded
	 * by the input size. */
	lua_createtable(L, n < (1u << 24) ? (int)n : 0, 0);
	for (uint64_t i = 1; i <= n; i++) {
		push_obj(L, r);
		lua_rawseti(L, -2, (lua_Integer)i);
	}
	return;
map:
	luaL_checkstack(L, 4, "msgpack nesting");
	lua_createtable(L, 0, n < (1u << 24) ? (int)n : 0);
	for (uint64_t i = 0; i < n; i++) {
		push_obj(L, r);
		if (lua_isnil(L, -1) || lua_istable(L, -1) ||
		    (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1) &&
		     isnan(lua_tonumber(L, -1))))
			luaL_error(L, "msgpack: map key of type %s", luaL_typename(L, -1));
		push_obj(L, r);
		lua_rawset(L, -3);
	}
#undef NEED
}

void tr__lua_push_checked(lua_State *L, const unsigned char *p, size_t n)
{
	rd r = {p, n, 0};
	push_obj(L, &r);
	if (r.pos != n)
		luaL_error(L, "msgpack: trailing bytes");
}

typedef struct push_args {
	const unsigned char *p;
	size_t n;
} push_args;

static int push_k(lua_State *L)
{
	push_args *a = lua_touserdata(L, 1);
	lua_pop(L, 1);
	tr__lua_push_checked(L, a->p, a->n);
	return 1;
}

int tr_lua_push_msgpack(lua_State *L, const unsigned char *p, size_t n)
{
	push_args a = {p, n};
	int st;

	if (n == 0 || tr_mp_check(p, n, TR_MP_MAX_DEPTH) != TR_OK)
		return TR_EPROTO;
	if (!lua_checkstack(L, 2))
		return TR_ENOMEM;
	lua_pushcfunction(L, push_k);
	lua_pushlightuserdata(L, &a);
	st = lua_pcall(L, 1, 1, 0);
	if (st == LUA_OK)
		return TR_OK;
	lua_pop(L, 1);
	return st == LUA_ERRMEM ? TR_ENOMEM : TR_EPROTO;
}

/* ------------------------------------------------------------------ */
/* the read-only view of a message, for predicates                     */

/*
 * A `when` predicate usually reads one or two fields of a message that
 * may carry kilobytes of passages; converting it all into tables cost the
 * default assistant about 14 % of its CPU. The view is one empty table per
 * state, reused for every call, whose __index finds a field in the
 * msgpack bytes and converts that value only. Writes land in the table
 * itself (so `msg.x = 1; return msg.x` still works inside the call) and
 * are wiped when the call ends. pairs() and # convert the whole message,
 * which is what they need anyway. Between calls the bytes pointer is NULL
 * and any read raises, so a predicate that keeps `msg` in a global cannot
 * read freed memory later. The metatable is hidden (__metatable = false)
 * so a script cannot unhook it for the calls after its own.
 */
typedef struct view {
	const unsigned char *p; /* the checked map being read; NULL between calls.
	                           Borrowed from the caller for one call. */
	size_t n;
} view;

static const char key_view;

static view *view_of(lua_State *L)
{
	view *v = lua_touserdata(L, lua_upvalueindex(1));
	if (v->p == NULL)
		luaL_error(L, "the message of a 'when' predicate can only be read during its call");
	return v;
}

static int view_index(lua_State *L)
{
	view *v = view_of(L);
	rd r = {v->p, v->n, 0};
	uint64_t n;
	unsigned char c = v->p[0];
	size_t klen = 0;
	const char *key = lua_type(L, 2) == LUA_TSTRING ? lua_tolstring(L, 2, &klen) : NULL;

	if (c >= 0x80 && c <= 0x8f)
		n = c & 0x0f, r.pos = 1;
	else if (c == 0xde)
		n = be(v->p + 1, 2), r.pos = 3;
	else
		n = be(v->p + 1, 4), r.pos = 5;
	for (uint64_t i = 0; i < n; i++) {
		unsigned char k = v->p[r.pos];
		size_t kl = 0, kh = 0;
		int match;
		if (k >= 0xa0 && k <= 0xbf)
			kl = k & 0x1f, kh = 1;
		else if (k == 0xd9)
			kl = v->p[r.pos + 1], kh = 2;
		else if (k == 0xda)
			kl = (size_t)be(v->p + r.pos + 1, 2), kh = 3;
		else if (k == 0xdb)
			kl = (size_t)be(v->p + r.pos + 1, 4), kh = 5;
		if (kh > 0) { /* a str key: compared in place */
			match = key != NULL && kl == klen && memcmp(v->p + r.pos + kh, key, kl) == 0;
			r.pos += kh + kl;
		} else { /* other keys (integers): as Lua values */
			push_obj(L, &r);
			match = lua_rawequal(L, -1, 2);
			lua_pop(L, 1);
		}
		if (match) {
			push_obj(L, &r);
			return 1;
		}
		r.pos += tr__mp_size(v->p + r.pos);
	}
	lua_pushnil(L);
	return 1;
}

/* pairs(msg) and #msg: on a full copy, with the call's own writes. */
static void view_full(lua_State *L, view *v)
{
	tr__lua_push_checked(L, v->p, v->n);
	lua_pushnil(L);
	while (lua_next(L, 1)) {
		lua_pushvalue(L, -2);
		lua_insert(L, -2);
		lua_rawset(L, -4);
	}
}

static int view_next(lua_State *L)
{
	lua_settop(L, 2);
	if (lua_next(L, 1))
		return 2;
	lua_pushnil(L);
	return 1;
}

static int view_pairs(lua_State *L)
{
	view *v = view_of(L);
	lua_pushcfunction(L, view_next);
	view_full(L, v);
	lua_pushnil(L);
	return 3;
}

static int view_len(lua_State *L)
{
	view *v = view_of(L);
	view_full(L, v);
	lua_pushinteger(L, (lua_Integer)lua_rawlen(L, -1));
	return 1;
}

void tr__lua_view_push(lua_State *L, const unsigned char *p, size_t n)
{
	view *v;
	if (lua_rawgetp(L, LUA_REGISTRYINDEX, &key_view) != LUA_TTABLE) {
		lua_pop(L, 1);
		lua_createtable(L, 0, 0);           /* the view */
		lua_createtable(L, 0, 4);           /* its metatable */
		v = lua_newuserdatauv(L, sizeof(*v), 0);
		v->p = NULL;
		v->n = 0;
		lua_pushvalue(L, -1);
		lua_pushcclosure(L, view_index, 1);
		lua_setfield(L, -3, "__index");
		lua_pushvalue(L, -1);
		lua_pushcclosure(L, view_pairs, 1);
		lua_setfield(L, -3, "__pairs");
		lua_pushcclosure(L, view_len, 1);
		lua_setfield(L, -2, "__len");
		lua_pushboolean(L, 0);
		lua_setfield(L, -2, "__metatable");
		lua_setmetatable(L, -2);
		lua_pushvalue(L, -1);
		lua_rawsetp(L, LUA_REGISTRYINDEX, &key_view);
	}
	lua_getmetatable(L, -1);
	lua_getfield(L, -1, "__index");
	lua_getupvalue(L, -1, 1);
	v = lua_touserdata(L, -1);
	lua_pop(L, 3);
	v->p = p;
	v->n = n;
}

void tr__lua_view_close(lua_State *L)
{
	if (lua_rawgetp(L, LUA_REGISTRYINDEX, &key_view) != LUA_TTABLE) {
		lua_pop(L, 1);
		return;
	}
	int t = lua_gettop(L);
	lua_getmetatable(L, t);
	lua_getfield(L, -1, "__index");
	lua_getupvalue(L, -1, 1);
	view *v = lua_touserdata(L, -1);
	v->p = NULL;
	v->n = 0;
	lua_settop(L, t);
	/* The call's writes: wiped, so the next call sees only its message. */
	lua_pushnil(L);
	while (lua_next(L, t)) {
		lua_pop(L, 1);
		lua_pushvalue(L, -1);
		lua_pushnil(L);
		lua_rawset(L, t);
	}
	lua_pop(L, 1);
}

/* ------------------------------------------------------------------ */
/* encoding                                                             */

static int buf_write(void *data, const char *p, size_t n)
{
	return tr__buf_append(data, p, n) == TR_OK ? 0 : -1;
}

/* n if the table at idx has exactly the keys 1..n, else 0. */
static size_t seq_len(lua_State *L, int idx)
{
	size_t n = lua_rawlen(L, idx), count = 0;

	if (n == 0)
		return 0;
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		lua_pop(L, 1);
		if (!lua_isinteger(L, -1)) {
			lua_pop(L, 1);
			return 0;
		}
		lua_Integer k = lua_tointeger(L, -1);
		if (k < 1 || (size_t)k > n) {
			lua_pop(L, 1);
			return 0;
		}
		count++;
	}
	return count == n ? n : 0;
}

static int pack_value(lua_State *L, msgpack_packer *pk, int idx, int depth);

static int pack_key(lua_State *L, msgpack_packer *pk, int idx)
{
	switch (lua_type(L, idx)) {
	case LUA_TSTRING: {
		size_t len;
		const char *s = lua_tolstring(L, idx, &len);
		return msgpack_pack_str(pk, len) || msgpack_pack_str_body(pk, s, len)
		               ? TR_ENOMEM
		               : TR_OK;
	}
	case LUA_TNUMBER: {
		lua_Integer i;
		if (lua_isinteger(L, idx)) {
			i = lua_tointeger(L, idx);
		} else {
			lua_Number d = lua_tonumber(L, idx);
			if (!(d >= -9.2233720368547758e18 && d < 9.2233720368547758e18) ||
			    d != floor(d))
				return TR_EPROTO; /* NaN, huge or fractional keys */
			i = (lua_Integer)d;
		}
		return msgpack_pack_int64(pk, i) ? TR_ENOMEM : TR_OK;
	}
	default:
		return TR_EPROTO;
	}
}

static int pack_table(lua_State *L, msgpack_packer *pk, int idx, int depth)
{
	size_t n;
	int rc;

	if (depth >= TR_MP_MAX_DEPTH) /* also ends cycles */
		return TR_EPROTO;
	if (!lua_checkstack(L, 4))
		return TR_ENOMEM;
	n = seq_len(L, idx);
	if (n > 0) {
		if (n > UINT32_MAX || msgpack_pack_array(pk, n))
			return n > UINT32_MAX ? TR_ETOOBIG : TR_ENOMEM;
		for (size_t i = 1; i <= n; i++) {
			lua_rawgeti(L, idx, (lua_Integer)i);
			rc = pack_value(L, pk, lua_gettop(L), depth + 1);
			lua_pop(L, 1);
			if (rc != TR_OK)
				return rc;
		}
		return TR_OK;
	}
	n = 0;
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		lua_pop(L, 1);
		n++;
	}
	if (n > UINT32_MAX)
		return TR_ETOOBIG;
	if (msgpack_pack_map(pk, n))
		return TR_ENOMEM;
	lua_pushnil(L);
	while (lua_next(L, idx)) {
		int top = lua_gettop(L);
		rc = pack_key(L, pk, top - 1);
		if (rc == TR_OK)
			rc = pack_value(L, pk, top, depth + 1);
		lua_pop(L, 1);
		if (rc != TR_OK) {
			lua_pop(L, 1);
			return rc;
		}
	}
	return TR_OK;
}

static int pack_value(lua_State *L, msgpack_packer *pk, int idx, int depth)
{
	switch (lua_type(L, idx)) {
	case LUA_TNIL:
		return msgpack_pack_nil(pk) ? TR_ENOMEM : TR_OK;
	case LUA_TBOOLEAN:
		return (lua_toboolean(L, idx) ? msgpack_pack_true(pk) : msgpack_pack_false(pk))
		               ? TR_ENOMEM
		               : TR_OK;
	case LUA_TNUMBER:
		if (lua_isinteger(L, idx))
			return msgpack_pack_int64(pk, lua_tointeger(L, idx)) ? TR_ENOMEM : TR_OK;
		return msgpack_pack_double(pk, lua_tonumber(L, idx)) ? TR_ENOMEM : TR_OK;
	case LUA_TSTRING: {
		size_t len;
		const char *s = lua_tolstring(L, idx, &len);
		if (len > UINT32_MAX)
			return TR_ETOOBIG;
		return msgpack_pack_str(pk, len) || msgpack_pack_str_body(pk, s, len) ? TR_ENOMEM
		                                                                      : TR_OK;
	}
	case LUA_TTABLE:
		return pack_table(L, pk, idx, depth);
	default: /* functions, userdata, threads */
		return TR_EPROTO;
	}
}

int tr_lua_to_msgpack(lua_State *L, int idx, tr_buf *out)
{
	msgpack_packer pk;
	size_t start = out->len;
	int rc;

	idx = lua_absindex(L, idx);
	msgpack_packer_init(&pk, out, buf_write);
	rc = pack_value(L, &pk, idx, 0);
	if (rc == TR_OK && out->len - start > TR_MSG_MAX_WIRE)
		rc = TR_ETOOBIG;
	if (rc != TR_OK)
		out->len = start;
	return rc;
}
