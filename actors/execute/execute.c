/*
 * actors/execute/execute.c -- the execute kind (execute.h): a step names a
 * tool, its args are checked against the tool's declaration, and the
 * tool's Lua handler runs in the actor's own sandboxed lua_State -- or,
 * for a SQL tool (sql = "..."), its one parameterized query runs on the
 * node's PostgreSQL pool (db/pg.h, found by name at each call).
 *
 * SQL tools. The args are checked exactly as a handler's are; then the
 * tool's `params` order gives the query's parameters ($1, $2, ...: an
 * absent optional arg is NULL). The query text is the tool's own and the
 * values only ever travel as parameters (PQsendQueryParams, one
 * statement), so no arg can become SQL. The result is
 *     {rows = [{column = value, ...}, ...], count = n}
 * rows in the server's order, values typed by column (db/pg.h: bool,
 * integer, float, nil, else text); a column name seen before in the same
 * row gets "_2", "_3", ... appended. count is the number of rows; for a
 * statement that returns none (INSERT, UPDATE, DELETE without RETURNING)
 * it is the number of rows it changed. The call's timeout is the tool's
 * `timeout`, else the run's time left (msg->deadline), at most
 * EXEC_SQL_TIMEOUT_MS; the pool's statement_timeout also applies.
 * Errors answer the step, naming the tool:
 *     TR_EINVAL    bad args (as for handlers), or the server refused a
 *                  value (SQLSTATE class 22, e.g. "invalid input syntax
 *                  for type integer"): the caller's input is at fault;
 *     TR_EFAILED   the tool's SQL itself is wrong (class 42: syntax, an
 *                  unknown table or column), the server is down, or any
 *                  other server error;
 *     TR_ETIMEDOUT no answer within the timeout, or statement_timeout;
 *     TR_EREJECTED the pool's queue is full (class "overload").
 *
 * Design notes:
 *  - Handlers are Lua functions of the pipeline files, found by number as
 *    a Lua actor finds its receive (tlua.h): each instance reruns the
 *    files in a fresh sandbox (tr_lua_state_new) at init and owns that
 *    state. Tools of one file therefore share its locals within one
 *    instance (a `booked` table seen by two tools), not across instances
 *    or restarts. An actor with no tool to run makes no state at all.
 *  - Bad input is never a crash: a missing tool, bad args, a Lua error in
 *    the handler or a result that cannot be encoded all answer the step
 *    with an error whose message names the tool (tr_step_fail). The state
 *    stays usable after any error (tr_lua_call's contract).
 *  - The per-tool budget (execute.h, "Timeouts") is set in the sandbox's
 *    per-call budget before each call: tr_lua_call takes no budget of its
 *    own, and one state per tool would split the file's locals.
 *  - Per message the only allocations are msgpack's unpack zone and the
 *    Lua call's own; the args and result buffers are the actor's, reused.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/execute/execute.h"
#include "actors/kit.h"
#include "core/alloc.h"
#include "db/pg.h"
#include "lua/lua_int.h"
#include "lua/tlua.h"
#include "msg/msg_int.h"
#include "pipe/mp.h"

typedef struct ex_tool {
	const tr_tool_spec *spec; /* in the actor's config */
	uint64_t steps;           /* instruction budget per call; 0 = the default */
} ex_tool;

/* A SQL tool call waiting for the pool: we own req (tr_take). */
typedef struct ex_wait {
	uint64_t corr;
	tr_msg *req;
	const tr_tool_spec *tool;
	uint64_t ms; /* the ask's timeout */
} ex_wait;

/* The ask's timeout of a SQL tool when neither the tool nor the run sets
 * one, and its upper bound. */
#define EXEC_SQL_TIMEOUT_MS 30000u

typedef struct exec_st {
	const tr_actor_spec *spec;
	ex_wait *waits;        /* SQL calls in flight, oldest first */
	uint32_t nwaits, capwaits;
	lua_State *L;          /* owned; NULL when there is no tool */
	ex_tool *tools;        /* owned: the tools this actor may run */
	size_t ntools;
	uint64_t default_steps;
	tr_buf args;           /* scratch: the checked args, a msgpack map */
	tr_buf out;            /* scratch: the handler's result */
	char list[480];        /* "a, b, c": the tools, for messages */
} exec_st;

/* ---- settings ------------------------------------------------------------ */

static void join_names(char *buf, size_t len, const ex_tool *t, size_t n)
{
	size_t off = 0;
	buf[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		int w = snprintf(buf + off, len - off, "%s%s", i ? ", " : "", t[i].spec->name);
		if (w < 0 || (size_t)w >= len - off) {
			if (len > 8)
				memcpy(buf + len - 5, ", ...", 5);
			buf[len - 1] = '\0';
			return;
		}
		off += (size_t)w;
	}
}

static uint64_t budget_of(const tr_tool_spec *t)
{
	return t->timeout_us ? t->timeout_us * EXEC_STEPS_PER_US : 0;
}

/* The closest declared tool name to s (distance 2 at most), or NULL. */
static const char *near_tool(const tr_config *c, const char *s)
{
	const char *best = NULL;
	unsigned bd = 3;
	for (size_t i = 0; i < c->ntools; i++) {
		unsigned d = tr__lua_editdist(s, c->tools[i].name, 2);
		if (d < bd) {
			bd = d;
			best = c->tools[i].name;
		}
	}
	return best;
}

/*
 * Reads a's settings (check and init share this): *tools (owned by the
 * caller, may be NULL when n = 0) are the tools the actor may run.
 */
static int settings(const tr_actor_spec *a, char *err, size_t errlen, ex_tool **tools,
                    size_t *n)
{
	static const char *const known[] = {"tools", NULL};
	const tr_config *c = a->cfg;
	char **names = NULL;
	size_t nn = 0;
	ex_tool *t = NULL;
	tr_kcfg k;
	int rc;

	*tools = NULL;
	*n = 0;
	rc = tr_kcfg_open(&k, a, err, errlen);
	if (rc == TR_OK)
		rc = tr_kcfg_keys(&k, known);
	if (rc == TR_OK)
		rc = tr_kcfg_strv(&k, "tools", &names, &nn);
	if (rc != TR_OK)
		goto out;
	if (c == NULL) {
		rc = tr_kcfg_fail(&k, "execute needs the config its tools are declared in (a spec "
		                      "loaded from a file)");
		goto out;
	}
	if (tr_kcfg_get(&k, "tools") != NULL && nn == 0) {
		rc = tr_kcfg_fail(&k, "tools: the list is empty (leave tools out to allow every "
		                      "declared tool)");
		goto out;
	}
	t = tr__calloc((nn ? nn : c->ntools) + 1, sizeof(*t));
	if (t == NULL) {
		rc = tr_kcfg_fail(&k, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < nn; i++) {
		const tr_tool_spec *ts = tr_config_tool(c, names[i]);
		const char *sg;
		if (ts == NULL) {
			if (c->ntools == 0)
				rc = tr_kcfg_fail(&k, "tools: unknown tool '%s' (no tool is declared: "
				                      "tool \"name\" { ... })", names[i]);
			else if ((sg = near_tool(c, names[i])) != NULL)
				rc = tr_kcfg_fail(&k, "tools: unknown tool '%s' (did you mean '%s'?)",
				                  names[i], sg);
			else
				rc = tr_kcfg_fail(&k, "tools: unknown tool '%s' (not a declared tool)",
				                  names[i]);
			goto out;
		}
		for (size_t j = 0; j < i; j++) {
			if (strcmp(names[j], names[i]) == 0) {
				rc = tr_kcfg_fail(&k, "tools: '%s' is listed twice", names[i]);
				goto out;
			}
		}
		t[i] = (ex_tool){ts, budget_of(ts)};
	}
	*n = nn;
	if (nn == 0) {
		for (size_t i = 0; i < c->ntools; i++)
			t[i] = (ex_tool){&c->tools[i], budget_of(&c->tools[i])};
		*n = c->ntools;
	}
	*tools = t;
	t = NULL;
out:
	tr__free(t);
	tr_kstrv_free(names, nn);
	tr_kcfg_close(&k);
	if (rc != TR_OK)
		*n = 0;
	return rc;
}

int tr_execute_check(const tr_actor_spec *a, char *err, size_t errlen)
{
	ex_tool *t;
	size_t n;
	int rc = settings(a, err, errlen, &t, &n);
	tr__free(t);
	return rc;
}

/* ---- the actor ------------------------------------------------------------- */

static int exec_init(tr_ctx *ctx, void *state, const void *arg)
{
	const tr_actor_spec *a = arg;
	exec_st *st = state;
	char err[512];
	int rc;

	(void)ctx;
	if (a == NULL)
		return TR_EINVAL;
	st->spec = a;
	tr_buf_init(&st->args);
	tr_buf_init(&st->out);
	rc = settings(a, err, sizeof(err), &st->tools, &st->ntools);
	/* a Lua state only for handlers: SQL tools need none */
	int handlers = 0;
	for (size_t i = 0; rc == TR_OK && i < st->ntools; i++)
		handlers += st->tools[i].spec->sql == NULL;
	if (rc == TR_OK && handlers > 0)
		rc = tr_lua_state_new(a->cfg, NULL, &st->L, err, sizeof(err));
	if (rc != TR_OK) {
		/* init has no other way to say why; check caught the usual causes */
		if (strncmp(err, "actor '", 7) == 0)
			fprintf(stderr, "troupe: %s\n", err);
		else
			fprintf(stderr, "troupe: actor '%s': %s\n", a->name ? a->name : "?", err);
		tr__free(st->tools);
		st->tools = NULL;
		return rc == TR_ENOMEM ? TR_ENOMEM : TR_EINVAL;
	}
	if (st->L != NULL)
		st->default_steps = tr__lua_sb(st->L)->call_steps;
	join_names(st->list, sizeof(st->list), st->tools, st->ntools);
	return TR_OK;
}

static void exec_terminate(tr_ctx *ctx, void *state, int reason)
{
	exec_st *st = state;
	(void)reason;
	/* every step we took is answered, even now */
	for (uint32_t i = 0; i < st->nwaits; i++) {
		(void)tr_step_fail(ctx, st->waits[i].req, TR_ESHUTDOWN,
		                   "tool '%s': stopped while its query ran", st->waits[i].tool->name);
		tr_msg_free(st->waits[i].req);
	}
	tr__free(st->waits);
	st->waits = NULL;
	st->nwaits = st->capwaits = 0;
	tr_lua_state_free(st->L);
	st->L = NULL;
	tr__free(st->tools);
	st->tools = NULL;
	tr_buf_free(&st->args);
	tr_buf_free(&st->out);
}

/* s[0..n) for a message: quoted, at most 40 bytes shown, bytes that are
 * not printable ASCII as \xNN (names and values come from requests). */
static const char *quote(char *buf, size_t len, const char *s, size_t n)
{
	size_t o = 0;
	buf[o++] = '"';
	for (size_t i = 0; i < n && o + 8 < len; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (i == 40) {
			o += (size_t)snprintf(buf + o, len - o, "...");
			break;
		}
		if (ch == '"' || ch == '\\')
			o += (size_t)snprintf(buf + o, len - o, "\\%c", ch);
		else if (ch < 0x20 || ch >= 0x7f)
			o += (size_t)snprintf(buf + o, len - o, "\\x%02x", ch);
		else
			buf[o++] = (char)ch;
	}
	buf[o++] = '"';
	buf[o] = '\0';
	return buf;
}

/* Like quote but without the quotes, for names inside '...'. */
static const char *safe_name(char *buf, size_t len, const char *s, size_t n)
{
	size_t l;
	quote(buf, len, s, n);
	l = strlen(buf);
	memmove(buf, buf + 1, l - 2);
	buf[l - 2] = '\0';
	return buf;
}

static const char *type_word(uint8_t t)
{
	switch (t) {
	case TR_ARG_STRING: return "string";
	case TR_ARG_INT: return "int";
	case TR_ARG_NUMBER: return "number";
	case TR_ARG_BOOL: return "bool";
	default: return "table";
	}
}

/* "string \"x\"", "int 12", "number 1.5", "bool true", "table", "binary". */
static const char *describe(char *buf, size_t len, const msgpack_object *o)
{
	char q[80];
	switch (o->type) {
	case MSGPACK_OBJECT_STR:
		snprintf(buf, len, "string %s", quote(q, sizeof(q), o->via.str.ptr, o->via.str.size));
		break;
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		snprintf(buf, len, "int %llu", (unsigned long long)o->via.u64);
		break;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
		snprintf(buf, len, "int %lld", (long long)o->via.i64);
		break;
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		snprintf(buf, len, "number %.14g", o->via.f64);
		break;
	case MSGPACK_OBJECT_BOOLEAN:
		snprintf(buf, len, "bool %s", o->via.boolean ? "true" : "false");
		break;
	case MSGPACK_OBJECT_MAP:
	case MSGPACK_OBJECT_ARRAY:
		snprintf(buf, len, "table");
		break;
	case MSGPACK_OBJECT_BIN:
		snprintf(buf, len, "binary");
		break;
	default:
		snprintf(buf, len, "%s", o->type == MSGPACK_OBJECT_NIL ? "nil" : "an extension value");
		break;
	}
	return buf;
}

/* The string s[0..n) as a whole decimal integer ("12", "-3"). */
static int parse_int(const char *s, size_t n, int64_t *v)
{
	char b[32];
	char *end;
	size_t i = 0;
	if (n == 0 || n >= sizeof(b))
		return 0;
	if (s[0] == '-' || s[0] == '+')
		i = 1;
	if (i == n)
		return 0;
	for (; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return 0;
	memcpy(b, s, n);
	b[n] = '\0';
	errno = 0;
	long long x = strtoll(b, &end, 10);
	if (errno != 0 || *end != '\0')
		return 0;
	*v = (int64_t)x;
	return 1;
}

/* The string s[0..n) as a finite decimal number ("1.5", "2e3", "-.5"). */
static int parse_num(const char *s, size_t n, double *v)
{
	char b[64];
	char *end;
	if (n == 0 || n >= sizeof(b))
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || s[i] == '.' || s[i] == '-' || s[i] == '+' ||
		      s[i] == 'e' || s[i] == 'E'))
			return 0; /* no spaces, hex, inf or nan */
	memcpy(b, s, n);
	b[n] = '\0';
	errno = 0;
	double x = strtod(b, &end);
	if (errno != 0 || *end != '\0' || !isfinite(x))
		return 0;
	*v = x;
	return 1;
}

/* Packs value o as an arg of type t: 1; 0 when o is not one (the caller
 * reports it; nothing was written); -1 when a write failed (ENOMEM). */
#define W(x) ((x) == 0 ? 1 : -1)
static int pack_arg(msgpack_packer *pk, uint8_t t, const msgpack_object *o)
{
	int64_t i;
	double d;

	switch (t) {
	case TR_ARG_STRING:
		return o->type == MSGPACK_OBJECT_STR ? W(msgpack_pack_object(pk, *o)) : 0;
	case TR_ARG_INT:
		if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
			return W(msgpack_pack_int64(pk, o->via.i64));
		if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
			return o->via.u64 <= (uint64_t)INT64_MAX ? W(msgpack_pack_uint64(pk, o->via.u64)) : 0;
		if (o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64) {
			d = o->via.f64;
			if (!isfinite(d) || d != floor(d) || fabs(d) >= 9.2e18)
				return 0;
			return W(msgpack_pack_int64(pk, (int64_t)d));
		}
		if (o->type == MSGPACK_OBJECT_STR && parse_int(o->via.str.ptr, o->via.str.size, &i))
			return W(msgpack_pack_int64(pk, i));
		return 0;
	case TR_ARG_NUMBER:
		if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ||
		    o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
			return W(msgpack_pack_object(pk, *o));
		if (o->type == MSGPACK_OBJECT_FLOAT32 || o->type == MSGPACK_OBJECT_FLOAT64)
			return isfinite(o->via.f64) ? W(msgpack_pack_double(pk, o->via.f64)) : 0;
		if (o->type == MSGPACK_OBJECT_STR) {
			if (parse_int(o->via.str.ptr, o->via.str.size, &i))
				return W(msgpack_pack_int64(pk, i));
			if (parse_num(o->via.str.ptr, o->via.str.size, &d))
				return W(msgpack_pack_double(pk, d));
		}
		return 0;
	case TR_ARG_BOOL:
		if (o->type == MSGPACK_OBJECT_BOOLEAN)
			return W(msgpack_pack_object(pk, *o));
		if (tr_kobj_is(o, "true"))
			return W(msgpack_pack_true(pk));
		if (tr_kobj_is(o, "false"))
			return W(msgpack_pack_false(pk));
		return 0;
	default: /* TR_ARG_TABLE */
		if (o->type != MSGPACK_OBJECT_MAP && o->type != MSGPACK_OBJECT_ARRAY)
			return 0;
		return W(msgpack_pack_object(pk, *o));
	}
}
#undef W

static int key_eq(const msgpack_object *k, const char *s)
{
	return tr_kobj_is(k, s);
}

/* The non-nil value of arg `name` in map m, or NULL. Sets *twice when
 * the map has the key more than once (hostile msgpack can). */
static const msgpack_object *arg_value(const msgpack_object *m, const char *name, int *twice)
{
	const msgpack_object *v = NULL;
	*twice = 0;
	for (uint32_t i = 0; i < m->via.map.size; i++) {
		if (!key_eq(&m->via.map.ptr[i].key, name))
			continue;
		if (v != NULL)
			*twice = 1;
		v = &m->via.map.ptr[i].val;
	}
	return v != NULL && v->type != MSGPACK_OBJECT_NIL ? v : NULL;
}

/* Checks `args` (a map, or NULL) against tool t and packs the converted
 * args into st->args. TR_OK, or TR_EINVAL with the message in err. Keys
 * that t does not declare are an error unless the args came from slots
 * (then they, and slots.tool, are skipped). */
static int check_args(exec_st *st, const tr_tool_spec *t, const msgpack_object *args,
                      int from_slots, char *err, size_t errlen)
{
	msgpack_packer pk;
	uint32_t npresent = 0;
	char d[120], q[96];

	st->args.len = 0;
	tr__mp_packer(&pk, &st->args);
	for (uint32_t i = 0; args != NULL && i < args->via.map.size; i++) {
		const msgpack_object *k = &args->via.map.ptr[i].key;
		size_t j;
		if (k->type != MSGPACK_OBJECT_STR) {
			if (from_slots)
				continue;
			snprintf(err, errlen, "tool '%s': args: keys must be arg names (strings), got %s",
			         t->name, describe(d, sizeof(d), k));
			return TR_EINVAL;
		}
		for (j = 0; j < t->nargs; j++)
			if (key_eq(k, t->args[j].name))
				break;
		if (j < t->nargs || from_slots)
			continue;
		/* an unknown arg: the closest declared one, if near */
		char kn[64];
		const char *best = NULL;
		unsigned bd = 3;
		safe_name(q, sizeof(q), k->via.str.ptr, k->via.str.size);
		if (k->via.str.size < sizeof(kn)) {
			memcpy(kn, k->via.str.ptr, k->via.str.size);
			kn[k->via.str.size] = '\0';
			for (j = 0; j < t->nargs; j++) {
				unsigned e = tr__lua_editdist(kn, t->args[j].name, 2);
				if (e < bd) {
					bd = e;
					best = t->args[j].name;
				}
			}
		}
		if (best != NULL) {
			snprintf(err, errlen, "tool '%s': unknown arg '%s' (did you mean '%s'?)", t->name,
			         q, best);
		} else if (t->nargs == 0) {
			snprintf(err, errlen, "tool '%s': unknown arg '%s' (the tool takes no args)",
			         t->name, q);
		} else {
			size_t off = (size_t)snprintf(err, errlen, "tool '%s': unknown arg '%s' (args: ",
			                              t->name, q);
			for (j = 0; j < t->nargs && off < errlen; j++)
				off += (size_t)snprintf(err + off, errlen - off, "%s%s", j ? ", " : "",
				                        t->args[j].name);
			if (off < errlen)
				snprintf(err + off, errlen - off, ")");
		}
		return TR_EINVAL;
	}
	/* declared args in name order: required ones present, types right */
	for (size_t j = 0; j < t->nargs; j++) {
		int twice = 0;
		const msgpack_object *v = args ? arg_value(args, t->args[j].name, &twice) : NULL;
		if (twice) {
			snprintf(err, errlen, "tool '%s': arg '%s' is given twice", t->name,
			         t->args[j].name);
			return TR_EINVAL;
		}
		if (v == NULL && !t->args[j].optional) {
			snprintf(err, errlen, "tool '%s': missing required arg '%s' (%s)", t->name,
			         t->args[j].name, type_word(t->args[j].type));
			return TR_EINVAL;
		}
		npresent += v != NULL;
	}
	if (msgpack_pack_map(&pk, npresent) != 0)
		goto nomem;
	for (size_t j = 0; j < t->nargs; j++) {
		int twice;
		const msgpack_object *v = args ? arg_value(args, t->args[j].name, &twice) : NULL;
		int r;
		if (v == NULL)
			continue;
		if (tr__mp_pack_cstr(&pk, t->args[j].name) != 0)
			goto nomem;
		r = pack_arg(&pk, t->args[j].type, v);
		if (r < 0)
			goto nomem;
		if (r == 0) {
			snprintf(err, errlen, "tool '%s': arg '%s': expected %s, got %s", t->name,
			         t->args[j].name, type_word(t->args[j].type), describe(d, sizeof(d), v));
			return TR_EINVAL;
		}
	}
	return TR_OK;
nomem:
	snprintf(err, errlen, "tool '%s': out of memory packing its args", t->name);
	return TR_ENOMEM;
}

static const ex_tool *find_tool(const exec_st *st, const char *s, size_t n)
{
	for (size_t i = 0; i < st->ntools; i++) {
		const char *name = st->tools[i].spec->name;
		if (strlen(name) == n && memcmp(name, s, n) == 0)
			return &st->tools[i];
	}
	return NULL;
}

/* "500ms", "1.5s", "250us" */
static const char *fmt_us(char *buf, size_t len, uint64_t us)
{
	if (us >= 1000000 && us % 100000 == 0)
		snprintf(buf, len, "%gs", (double)us / 1e6);
	else if (us >= 1000 && us % 100 == 0)
		snprintf(buf, len, "%gms", (double)us / 1e3);
	else
		snprintf(buf, len, "%lluus", (unsigned long long)us);
	return buf;
}

/* The message for an unknown or unavailable tool name s[0..n). */
static void unknown_tool(const exec_st *st, const char *s, size_t n, char *err, size_t errlen)
{
	const tr_config *c = st->spec->cfg;
	char q[96], kn[64];
	const char *best = NULL;
	unsigned bd = 3;

	safe_name(q, sizeof(q), s, n);
	if (n < sizeof(kn)) {
		memcpy(kn, s, n);
		kn[n] = '\0';
		if (c != NULL && tr_config_tool(c, kn) != NULL) {
			snprintf(err, errlen, "tool '%s' is not allowed here: actor '%s' runs %s (its "
			         "tools setting)", q, st->spec->name, st->list);
			return;
		}
		for (size_t i = 0; i < st->ntools; i++) {
			unsigned e = tr__lua_editdist(kn, st->tools[i].spec->name, 2);
			if (e < bd) {
				bd = e;
				best = st->tools[i].spec->name;
			}
		}
	}
	if (st->ntools == 0)
		snprintf(err, errlen, "unknown tool '%s' (no tool is declared: tool \"name\" { args = "
		         "{ ... }, handler = function(args, ctx) ... end })", q);
	else if (best != NULL)
		snprintf(err, errlen, "unknown tool '%s' (did you mean '%s'? tools: %s)", q, best,
		         st->list);
	else
		snprintf(err, errlen, "unknown tool '%s' (tools: %s)", q, st->list);
}

/* ---- SQL tools --------------------------------------------------------------- */

/* The ask's timeout in ms for tool t on step m: the tool's timeout, else
 * the run's time left, at most EXEC_SQL_TIMEOUT_MS; 0 when the run's
 * deadline has passed. */
static uint64_t sql_timeout_ms(const tr_tool_spec *t, const tr_msg *m)
{
	uint64_t ms = EXEC_SQL_TIMEOUT_MS, now;
	if (t->timeout_us > 0 && (t->timeout_us + 999) / 1000 < ms)
		ms = (t->timeout_us + 999) / 1000;
	if (m->deadline != 0) {
		now = tr_wall_us();
		if (m->deadline <= now)
			return 0;
		if ((m->deadline - now + 999) / 1000 < ms)
			ms = (m->deadline - now + 999) / 1000;
	}
	return ms;
}

/* Packs the pool request {sql, params} for tool t from the checked args
 * in st->args; 0, or -1 on ENOMEM. */
static int sql_request(exec_st *st, const tr_tool_spec *t, tr_buf *out)
{
	msgpack_unpacked u;
	msgpack_packer pk;
	size_t off = 0;
	int bad;

	msgpack_unpacked_init(&u);
	if (msgpack_unpack_next(&u, (const char *)st->args.data, st->args.len, &off) !=
	        MSGPACK_UNPACK_SUCCESS ||
	    u.data.type != MSGPACK_OBJECT_MAP) {
		msgpack_unpacked_destroy(&u);
		return -1; /* we packed it: only OOM gets here */
	}
	tr__mp_packer(&pk, out);
	bad = msgpack_pack_map(&pk, 2) != 0 || tr__mp_pack_cstr(&pk, "sql") != 0 ||
	      tr__mp_pack_cstr(&pk, t->sql) != 0 || tr__mp_pack_cstr(&pk, "params") != 0 ||
	      msgpack_pack_array(&pk, t->nparams) != 0;
	for (size_t i = 0; i < t->nparams && !bad; i++) {
		const msgpack_object *v = tr_kobj_get(&u.data, t->params[i]);
		bad = (v != NULL ? msgpack_pack_object(&pk, *v) : msgpack_pack_nil(&pk)) != 0;
	}
	msgpack_unpacked_destroy(&u);
	return bad ? -1 : 0;
}

/* Sends tool t's query for step m (args checked, in st->args). TR_OK
 * once it is on its way (we then own m) or once m is answered. */
static int sql_call(tr_ctx *ctx, exec_st *st, const tr_tool_spec *t, tr_msg *m)
{
	uint64_t ms = sql_timeout_ms(t, m), corr;
	tr_ref pool;
	tr_buf b;
	int rc;

	if (ms == 0)
		return tr_step_fail(ctx, m, TR_ETIMEDOUT, "tool '%s': timed out: the run's deadline "
		                    "passed before its query", t->name);
	if (tr_whereis(tr_ctx_node(ctx), TR_PG_NAME, &pool) != TR_OK)
		return tr_step_fail(ctx, m, TR_EFAILED, "tool '%s': the node runs no PostgreSQL pool "
		                    "(declare postgres { conninfo = \"...\" })", t->name);
	if (st->nwaits == st->capwaits) {
		uint32_t nc = st->capwaits ? st->capwaits * 2 : 16;
		ex_wait *nw = tr__realloc(st->waits, nc * sizeof(*nw));
		if (nw == NULL)
			return tr_step_fail(ctx, m, TR_ENOMEM, "tool '%s': out of memory", t->name);
		st->waits = nw;
		st->capwaits = nc;
	}
	tr_buf_init(&b);
	tr_msg *ask = sql_request(st, t, &b) == 0 ? tr_msg_new() : NULL;
	if (ask != NULL && (ask->body = tr_body_new(b.data, b.len)) == NULL) {
		tr_msg_free(ask);
		ask = NULL;
	}
	tr_buf_free(&b);
	if (ask == NULL)
		return tr_step_fail(ctx, m, TR_ENOMEM, "tool '%s': out of memory", t->name);
	ask->tag = TR_TAG_PG_QUERY;
	ask->deadline = m->deadline;
	ask->trace_hi = m->trace_hi;
	ask->trace_lo = m->trace_lo;
	ask->tenant = m->tenant;
	rc = tr_ask(ctx, pool, ask, ms, &corr);
	if (rc != TR_OK)
		return tr_step_fail(ctx, m, rc == TR_EFULL || rc == TR_EDROPPED ? TR_EREJECTED
		                            : rc == TR_EREJECTED                  ? TR_EREJECTED
		                                                                  : TR_EFAILED,
		                    "tool '%s': postgres: %s", t->name, tr_strerror(rc));
	st->waits[st->nwaits++] = (ex_wait){corr, tr_take(ctx), t, ms};
	return TR_OK;
}

static const char *obj_str(const msgpack_object *o, size_t *n)
{
	if (o == NULL || o->type != MSGPACK_OBJECT_STR) {
		*n = 0;
		return "";
	}
	*n = o->via.str.size;
	return o->via.str.ptr;
}

/* Packs {rows = [{col = v}], count} from the pool's {columns, rows,
 * affected} map `r`; 0, or -1 on ENOMEM. */
static int pack_result(msgpack_packer *pk, const msgpack_object *r)
{
	const msgpack_object *cols = tr_kobj_get(r, "columns"), *rows = tr_kobj_get(r, "rows"),
	                     *aff = tr_kobj_get(r, "affected");
	uint32_t nc = cols != NULL && cols->type == MSGPACK_OBJECT_ARRAY ? cols->via.array.size : 0;
	uint32_t nr = rows != NULL && rows->type == MSGPACK_OBJECT_ARRAY ? rows->via.array.size : 0;
	uint32_t *dup = nc ? tr__calloc(nc, sizeof(*dup)) : NULL;
	uint64_t count = nr;
	int bad = nc > 0 && dup == NULL;

	/* dup[i]: how many columns before i have its name ("?column?" twice) */
	for (uint32_t i = 0; i < nc && !bad; i++) {
		size_t ni, nj;
		const char *si = obj_str(&cols->via.array.ptr[i], &ni);
		for (uint32_t j = 0; j < i; j++) {
			const char *sj = obj_str(&cols->via.array.ptr[j], &nj);
			dup[i] += ni == nj && memcmp(si, sj, ni) == 0;
		}
	}
	if (nc == 0 && aff != NULL && aff->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
		count = aff->via.u64; /* INSERT/UPDATE/DELETE without RETURNING */
	bad = bad || msgpack_pack_map(pk, 2) != 0 || tr__mp_pack_cstr(pk, "rows") != 0 ||
	      msgpack_pack_array(pk, nr) != 0;
	for (uint32_t i = 0; i < nr && !bad; i++) {
		const msgpack_object *row = &rows->via.array.ptr[i];
		uint32_t nv = row->type == MSGPACK_OBJECT_ARRAY ? row->via.array.size : 0;
		if (nv > nc)
			nv = nc;
		bad = msgpack_pack_map(pk, nv) != 0;
		for (uint32_t j = 0; j < nv && !bad; j++) {
			size_t n;
			const char *name = obj_str(&cols->via.array.ptr[j], &n);
			if (dup[j] == 0) {
				bad = tr_kpack_str(pk, name, n) != TR_OK;
			} else {
				char sfx[16];
				int sn = snprintf(sfx, sizeof(sfx), "_%u", dup[j] + 1);
				bad = msgpack_pack_str(pk, n + (size_t)sn) != 0 ||
				      msgpack_pack_str_body(pk, name, n) != 0 ||
				      msgpack_pack_str_body(pk, sfx, (size_t)sn) != 0;
			}
			bad = bad || msgpack_pack_object(pk, row->via.array.ptr[j]) != 0;
		}
	}
	bad = bad || tr__mp_pack_cstr(pk, "count") != 0 || msgpack_pack_uint64(pk, count) != 0;
	tr__free(dup);
	return bad ? -1 : 0;
}

/* The pool's answer rep to the SQL call w (its step is answered and freed). */
static void sql_answer(tr_ctx *ctx, const ex_wait *w, const tr_msg *rep)
{
	const tr_tool_spec *t = w->tool;
	tr_msg *req = w->req;
	char lim[32];
	tr_kmsg k;
	int opened = rep->body != NULL && rep->body->len > 0 && tr_kmsg_open(&k, rep) == TR_OK;

	if (rep->flags & TR_MSGF_ERROR) {
		size_t mn = 0, sn = 0;
		const char *msg = opened ? obj_str(tr_kmsg_get(&k, "message"), &mn) : "";
		const char *state = opened ? obj_str(tr_kmsg_get(&k, "sqlstate"), &sn) : "";
		int err = rep->err ? rep->err : TR_EFAILED;
		if (mn == 0) {
			msg = tr_strerror(err);
			mn = strlen(msg);
		}
		if (err == TR_ETIMEDOUT && !opened)
			(void)tr_step_fail(ctx, req, TR_ETIMEDOUT, "tool '%s': timed out: no answer from "
			                   "postgres within %s", t->name,
			                   fmt_us(lim, sizeof(lim), w->ms * 1000u));
		else if (err == TR_ETIMEDOUT)
			(void)tr_step_fail(ctx, req, TR_ETIMEDOUT, "tool '%s': timed out: %.*s", t->name,
			                   (int)mn, msg);
		else if (err == TR_EINVAL && sn == 5 && memcmp(state, "42", 2) == 0)
			/* the tool's SQL is wrong, whatever the args: not the caller's fault */
			(void)tr_step_fail(ctx, req, TR_EFAILED, "tool '%s': its SQL failed: %.*s",
			                   t->name, (int)mn, msg);
		else if (err == TR_EINVAL)
			(void)tr_step_fail(ctx, req, TR_EINVAL, "tool '%s': %.*s", t->name, (int)mn, msg);
		else
			(void)tr_step_fail(ctx, req,
			                   err == TR_EREJECTED || err == TR_EFULL || err == TR_EDROPPED
			                       ? TR_EREJECTED
			                       : err == TR_ENOMEM ? TR_ENOMEM : TR_EFAILED,
			                   "tool '%s': postgres: %.*s", t->name, (int)mn, msg);
	} else if (!opened) {
		(void)tr_step_fail(ctx, req, TR_EFAILED, "tool '%s': the pool's answer is not a map",
		                   t->name);
	} else {
		tr_kout o;
		tr_kout_init(&o);
		tr_kpack_str(tr_kout_key(&o, "tool"), t->name, strlen(t->name));
		if (pack_result(tr_kout_key(&o, "result"), &k.u.data) != 0) {
			tr_kout_free(&o);
			(void)tr_step_fail(ctx, req, TR_ENOMEM, "tool '%s': out of memory packing its "
			                   "result", t->name);
		} else {
			(void)tr_kout_reply(ctx, req, &o); /* a gone asker is not our error */
		}
	}
	if (rep->body != NULL && rep->body->len > 0)
		tr_kmsg_close(&k);
	tr_msg_free(req);
}

/* A reply: the answer to one of our SQL calls (others are ignored). */
static void on_reply(tr_ctx *ctx, exec_st *st, const tr_msg *m)
{
	for (uint32_t i = 0; i < st->nwaits; i++) {
		if (st->waits[i].corr != m->corr)
			continue;
		ex_wait w = st->waits[i];
		/* answers mostly come oldest first: mostly a move of nothing */
		memmove(&st->waits[i], &st->waits[i + 1], (st->nwaits - i - 1) * sizeof(w));
		st->nwaits--;
		sql_answer(ctx, &w, m);
		return;
	}
}

/* Runs the step; TR_OK once it is answered (or the asker is gone), or
 * once a SQL tool's query is on its way (then it is answered later). */
static int run_step(tr_ctx *ctx, exec_st *st, tr_msg *m, tr_kmsg *k)
{
	const msgpack_object *tool, *slots, *args;
	const ex_tool *et;
	const tr_tool_spec *t;
	tr_lua_ctx lc = {st->spec->name, m->attempt, tr_tenant_name(m->tenant)};
	char err[600], d[120], lim[32];
	int from_slots = 0, rc;
	uint64_t t0, took_us;

	slots = tr_kmsg_get(k, "slots");
	if (slots != NULL && slots->type != MSGPACK_OBJECT_MAP)
		slots = NULL; /* intent's business, not ours */
	tool = tr_kmsg_get(k, "tool");
	if (tool != NULL && tool->type == MSGPACK_OBJECT_NIL)
		tool = NULL;
	if (tool == NULL && slots != NULL) {
		tool = tr_kobj_get(slots, "tool");
		if (tool != NULL && tool->type == MSGPACK_OBJECT_NIL)
			tool = NULL;
	}
	if (tool == NULL)
		return tr_step_fail(ctx, m, TR_EINVAL, "no tool to run: the message has no 'tool' "
		                    "field (nor slots.tool); tools: %s",
		                    st->ntools ? st->list : "none declared");
	if (tool->type != MSGPACK_OBJECT_STR)
		return tr_step_fail(ctx, m, TR_EINVAL, "tool: expected a tool name (string), got %s",
		                    describe(d, sizeof(d), tool));
	et = find_tool(st, tool->via.str.ptr, tool->via.str.size);
	if (et == NULL) {
		unknown_tool(st, tool->via.str.ptr, tool->via.str.size, err, sizeof(err));
		return tr_step_fail(ctx, m, TR_EINVAL, "%s", err);
	}
	t = et->spec;

	args = tr_kmsg_get(k, "args");
	if (args != NULL && args->type == MSGPACK_OBJECT_NIL)
		args = NULL;
	if (args == NULL && slots != NULL) {
		args = slots;
		from_slots = 1;
	}
	if (args != NULL && args->type != MSGPACK_OBJECT_MAP)
		return tr_step_fail(ctx, m, TR_EINVAL, "tool '%s': args: expected a table of name = "
		                    "value, got %s", t->name, describe(d, sizeof(d), args));
	rc = check_args(st, t, args, from_slots, err, sizeof(err));
	if (rc != TR_OK)
		return tr_step_fail(ctx, m, rc, "%s", err);
	if (t->sql != NULL)
		return sql_call(ctx, st, t, m);
	if (st->L == NULL || t->handler_fn < 0)
		return tr_step_fail(ctx, m, TR_EFAILED, "tool '%s' has no handler", t->name);

	/* the tool's budget for this one call (execute.h, "Timeouts") */
	tr__lua_sb(st->L)->call_steps = et->steps ? et->steps : st->default_steps;
	st->out.len = 0;
	t0 = tr_now_ns();
	rc = tr_lua_call(st->L, t->handler_fn, st->args.data, st->args.len, &lc, &st->out, NULL,
	                 err, sizeof(err));
	took_us = (tr_now_ns() - t0) / 1000u;
	if (rc == TR_EFAILED && t->timeout_us && strstr(err, "instruction limit exceeded"))
		return tr_step_fail(ctx, m, TR_ETIMEDOUT, "tool '%s': timed out: its timeout (%s) "
		                    "allows %llu Lua instructions and the handler ran past them (%s)",
		                    t->name, fmt_us(lim, sizeof(lim), t->timeout_us),
		                    (unsigned long long)et->steps, err);
	if (rc == TR_EFAILED)
		return tr_step_fail(ctx, m, TR_EFAILED, "tool '%s': handler failed: %s", t->name, err);
	if (rc != TR_OK)
		return tr_step_fail(ctx, m, rc, "tool '%s': %s", t->name,
		                    err[0] ? err : tr_strerror(rc));
	if (t->timeout_us && took_us > t->timeout_us)
		return tr_step_fail(ctx, m, TR_ETIMEDOUT, "tool '%s': timed out: took %.1f ms, its "
		                    "timeout is %s (the result is dropped)", t->name,
		                    (double)took_us / 1e3, fmt_us(lim, sizeof(lim), t->timeout_us));

	tr_kout o;
	msgpack_packer *pk;
	tr_kout_init(&o);
	tr_kpack_str(tr_kout_key(&o, "tool"), t->name, strlen(t->name));
	pk = tr_kout_key(&o, "result");
	if (st->out.len == 0)
		msgpack_pack_nil(pk);
	else {
		o.raw = 1; /* converted by tr_lua_to_msgpack, not packed here */
		(void)tr__buf_append(&o.pairs, st->out.data, st->out.len);
	}
	/* a reply to a gone asker is not our error */
	(void)tr_kout_reply(ctx, m, &o);
	return TR_OK;
}

static int exec_receive(tr_ctx *ctx, void *state, tr_msg *m)
{
	exec_st *st = state;
	tr_kmsg k;

	if (m->flags & TR_MSGF_REPLY) {
		on_reply(ctx, st, m); /* the pool's answers (runtime-made ones included) */
		return TR_OK;
	}
	/* System messages and plain sends carry nothing to answer. */
	if (m->tag >= TR_TAG_SYS_BASE || (m->flags & TR_MSGF_REPLY) || !(m->flags & TR_MSGF_ASK))
		return TR_OK;
	if (tr_kmsg_open(&k, m) != TR_OK) {
		tr_kmsg_close(&k);
		(void)tr_step_fail(ctx, m, TR_EPROTO, "the message is not a msgpack map");
		return TR_OK;
	}
	(void)run_step(ctx, st, m, &k); /* answered, or the asker is gone */
	tr_kmsg_close(&k);
	return TR_OK;
}

const tr_actor_ops tr_execute_ops = {
	.name = "execute",
	.size = sizeof(exec_st),
	.init = exec_init,
	.receive = exec_receive,
	.terminate = exec_terminate,
};
