/*
 * db/redis.c -- the node's Redis client actor (contract: db/redis.h).
 *
 * One pinned actor owns one hiredis 0.14 async context on its worker's
 * loop (through the corrected adapter, db/hiredis_uv.h), two uv timers
 * and the list of commands in flight. Asks are answered from hiredis'
 * reply callbacks, which run in that loop's poll callbacks, through a
 * copy of the ctx init got (tr__io_ctx).
 *
 * Design notes.
 *
 *  - Commands in flight form one FIFO list (`head`..`tail`), in the order
 *    they were written to the connection; each has exactly one hiredis
 *    callback outstanding, whose privdata is the command. A command
 *    leaves the list in that callback, whatever the reply (NULL included),
 *    so the list is always exactly what hiredis still owes us.
 *  - Every ask gets exactly one answer, always from its hiredis callback:
 *    a command past its deadline is only marked `timed_out`; freeing the
 *    context right after hands it back (with NULL) and it is answered
 *    TR_ETIMEDOUT then.
 *  - hiredis 0.14 cannot time out or cancel anything. One timer (`cmd`)
 *    is armed for the earliest deadline in flight. Deadlines are the
 *    ask's arrival + timeout, so new commands never come due before the
 *    armed one: the timer is re-armed lazily, when it fires and finds
 *    nothing expired, at most once per timeout period. When something has
 *    expired, the whole context is freed: it gets TR_ETIMEDOUT, every
 *    other command in flight TR_EIO (it may or may not have run), and we
 *    reconnect.
 *  - The second timer (`conn`) is the connect timeout while connecting
 *    and the reconnect backoff while down: exponential, base 100 ms, max
 *    5 s, full jitter (uniform in [0, min(max, base * 2^k)]).
 *  - Context lifetime (hiredis 0.14). hiredis frees the context by itself
 *    after a failed connect (onConnect(REDIS_ERR) first) and after a lost
 *    connection (pending callbacks with NULL, then onDisconnect, which it
 *    calls only for a connection that had succeeded). We free it
 *    ourselves on a timeout, a connect timeout, a failed SELECT and at
 *    terminate. Whoever frees it, `rs->ac` is cleared first, and the
 *    connect/disconnect callbacks ignore a context that is not `rs->ac`:
 *    that is how they tell "hiredis drops it" from "we dropped it".
 *    redisAsyncFree runs the pending callbacks at once, except inside a
 *    reply callback, where hiredis defers it until the callback returns.
 *    It is never called from onConnect/onDisconnect (hiredis still uses
 *    the context after those return).
 *  - Commands are sent only while up. While connecting or down, asks get
 *    TR_EIO at once (callers fall back, they never wait on a reconnect).
 *  - terminate frees the context (pending asks: TR_ESHUTDOWN) and closes
 *    the two timers; their block is freed by whichever close callback
 *    runs last (libuv runs them in any order: counted). The adapter's
 *    uv_poll is closed by hiredis' cleanup hook and frees itself. The
 *    worker keeps its loop running until every close callback has run.
 */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <mbedtls/sha1.h>
#include <mbedtls/version.h>
#include <msgpack.h>

#include "db/hiredis_uv.h"
#include "core/util.h"
#include "db/redis.h"
#include "msg/msg_int.h"
#include "pipe/mp.h"
#include "sched/sched.h"

#define BACKOFF_BASE_MS 100u
#define BACKOFF_MAX_MS 5000u
#define SCRIPT_BUCKETS 64u
#define SCRIPT_CACHE_MAX 1024u /* distinct scripts remembered; more are hashed per call */
#define SCRIPT_TEXT_MAX 65536u /* longer sources are hashed per call, not kept */
#define ERRMSG_MAX 4096u       /* longest server error text passed on */
#define OUT_KEEP (1u << 20)    /* reply scratch kept between replies */
#define ARGS_MAX (1u << 20)    /* arguments of one command */
#define ARGS_KEEP 4096u        /* argument scratch kept between commands */

struct tr_redis {
	tr_redis_stats st;
	char host[64];
	int port, db;
	uint64_t timeout_ms, connect_timeout_ms;
	uint32_t max_pending;
	uv_mutex_t mu; /* guards last_error (read from any thread) */
	char last_error[256];
};

enum { CONN_DOWN, CONN_CONNECTING, CONN_UP };

/* What a command's outstanding hiredis callback is for. */
enum {
	PH_CMD,     /* the caller's command */
	PH_EVALSHA, /* a script's first EVALSHA */
	PH_LOAD,    /* SCRIPT LOAD after NOSCRIPT */
	PH_RETRY    /* the EVALSHA after the load: its answer is final */
};

typedef struct rreq {
	struct rreq *prev, *next;
	tr_msg *req;       /* the ask (taken); its body holds the arguments */
	uint64_t deadline; /* loop time, ms */
	uint8_t phase;
	uint8_t timed_out; /* past its deadline: answer TR_ETIMEDOUT */
	char sha[41];      /* scripts: SHA-1 of the source, hex */
} rreq;

typedef struct script_ent {
	struct script_ent *next;
	uint64_t hash;
	size_t len;
	char sha[41];
	char text[];
} script_ent;

/* The two timers share one block, freed by the last close callback. */
typedef struct rtimers {
	uv_timer_t cmd;  /* earliest deadline in flight */
	uv_timer_t conn; /* connect timeout, or reconnect backoff */
	int closes;
} rtimers;

typedef struct rstate {
	tr_redis *r;
	tr_ctx io;             /* for replies from uv/hiredis callbacks */
	uv_loop_t *loop;
	rtimers *tm;
	redisAsyncContext *ac; /* the live context, NULL when none */
	int conn;              /* CONN_* */
	int stopping;          /* terminate is running: answers are TR_ESHUTDOWN */
	const char *drop_msg;  /* why we are freeing the context (NULL: hiredis' error) */
	unsigned attempt;      /* failed connects in a row: the backoff exponent */
	uint64_t rng;
	rreq *head, *tail;
	uint32_t npending;
	uint64_t timer_due;    /* when `cmd` fires (loop ms); 0: not armed */
	script_ent *scripts[SCRIPT_BUCKETS];
	uint32_t nscripts;
	/* Scratch for one command's arguments. */
	const char **argv;
	size_t *argvlen;
	char (*nums)[24];
	uint32_t argcap;
	tr_buf out;            /* reply bodies are packed here */
} rstate;

#define ST_ADD(r, f, v) atomic_fetch_add_explicit(&(r)->st.f, (v), memory_order_relaxed)
#define ST_INC(r, f) ST_ADD(r, f, 1)

static void set_error(tr_redis *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void set_error(tr_redis *r, const char *fmt, ...)
{
	char buf[sizeof(r->last_error)];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	uv_mutex_lock(&r->mu);
	memcpy(r->last_error, buf, sizeof(buf));
	uv_mutex_unlock(&r->mu);
}

static uint64_t xrand(rstate *rs)
{
	return tr__xorshift(&rs->rng);
}

/* ---- answers ------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 if invalid
 * (overlong forms, surrogates and code points past U+10FFFF included). */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	unsigned c = s[0];
	size_t k;
	unsigned cp, min;
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		k = 2, cp = c & 0x1f, min = 0x80;
	else if (c >= 0xe0 && c <= 0xef)
		k = 3, cp = c & 0x0f, min = 0x800;
	else if (c >= 0xf0 && c <= 0xf4)
		k = 4, cp = c & 0x07, min = 0x10000;
	else
		return 0;
	if (n < k)
		return 0;
	for (size_t i = 1; i < k; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return k;
}

static int utf8_ok(const char *p, size_t n)
{
	const unsigned char *s = (const unsigned char *)p;
	for (size_t i = 0; i < n;) {
		size_t k = utf8_seq(s + i, n - i);
		if (k == 0)
			return 0;
		i += k;
	}
	return 1;
}

static int pack_text(msgpack_packer *pk, const char *s, size_t n)
{
	if (utf8_ok(s, n))
		return msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, s, n);
	return msgpack_pack_bin(pk, n) || msgpack_pack_bin_body(pk, s, n);
}

/* Packs a reply value. Errors nested in an array become their text. */
static int pack_reply(msgpack_packer *pk, const redisReply *r, unsigned depth)
{
	switch (r->type) {
	case REDIS_REPLY_STRING:
	case REDIS_REPLY_STATUS:
	case REDIS_REPLY_ERROR:
		return pack_text(pk, r->str, r->len);
	case REDIS_REPLY_INTEGER:
		return msgpack_pack_int64(pk, (int64_t)r->integer);
	case REDIS_REPLY_ARRAY:
		/* hiredis' reader nests 7 deep at most; the bound is for
		 * tr_body_check's sake should that ever change. */
		if (depth >= TR_MP_MAX_DEPTH - 2 || msgpack_pack_array(pk, r->elements))
			return -1;
		for (size_t i = 0; i < r->elements; i++)
			if (pack_reply(pk, r->element[i], depth + 1))
				return -1;
		return 0;
	case REDIS_REPLY_NIL:
	default:
		return msgpack_pack_nil(pk);
	}
}

/* Error reply {message = msg[0..n)} to `req`, not counted. */
static void answer_err_(tr_ctx *ctx, rstate *rs, const tr_msg *req, int err, const char *msg,
                        size_t n)
{
	msgpack_packer pk;
	tr_msg *rep;

	if (n > ERRMSG_MAX)
		n = ERRMSG_MAX;
	rs->out.len = 0;
	tr__mp_packer(&pk, &rs->out);
	rep = tr_msg_new();
	if (rep == NULL || msgpack_pack_map(&pk, 1) || tr__mp_pack_cstr(&pk, "message") ||
	    pack_text(&pk, msg, n) ||
	    (rep->body = tr_body_new(rs->out.data, rs->out.len)) == NULL) {
		tr_msg_free(rep);
		tr_reply_error(ctx, req, err);
		return;
	}
	rep->tag = req->tag;
	rep->flags = TR_MSGF_ERROR;
	rep->err = err;
	tr_reply(ctx, req, rep);
}

/* The same, counted in the stats by its code. */
static void answer_err(tr_ctx *ctx, rstate *rs, const tr_msg *req, int err, const char *msg,
                       size_t n)
{
	tr_redis *r = rs->r;
	switch (err) {
	case TR_ETIMEDOUT:
		ST_INC(r, timeouts);
		break;
	case TR_EREJECTED:
		ST_INC(r, rejected);
		break;
	case TR_ESHUTDOWN:
		break;
	default:
		ST_INC(r, errors);
	}
	answer_err_(ctx, rs, req, err, msg, n);
}

static void answer_errf(tr_ctx *ctx, rstate *rs, const tr_msg *req, int err, const char *fmt,
                        ...) __attribute__((format(printf, 5, 6)));

static void answer_errf(tr_ctx *ctx, rstate *rs, const tr_msg *req, int err, const char *fmt,
                        ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	answer_err(ctx, rs, req, err, buf, strlen(buf));
}

/* Reply {reply = value} to `req`. */
static void answer_ok(tr_ctx *ctx, rstate *rs, const tr_msg *req, const redisReply *v)
{
	msgpack_packer pk;
	tr_msg *rep;

	rs->out.len = 0;
	tr__mp_packer(&pk, &rs->out);
	if (msgpack_pack_map(&pk, 1) || tr__mp_pack_cstr(&pk, "reply") || pack_reply(&pk, v, 1)) {
		answer_errf(ctx, rs, req, TR_ENOMEM, "out of memory packing the reply");
		return;
	}
	rep = tr_msg_new();
	if (rep == NULL || (rep->body = tr_body_new(rs->out.data, rs->out.len)) == NULL) {
		tr_msg_free(rep);
		tr_reply_error(ctx, req, TR_ENOMEM);
		return;
	}
	rep->tag = req->tag;
	tr_reply(ctx, req, rep);
	if (rs->out.cap > OUT_KEEP) {
		tr_buf_free(&rs->out);
		tr_buf_init(&rs->out);
	}
}

/* ---- the list of commands in flight ------------------------------------------ */

static void list_add(rstate *rs, rreq *c)
{
	c->next = NULL;
	c->prev = rs->tail;
	if (rs->tail != NULL)
		rs->tail->next = c;
	else
		rs->head = c;
	rs->tail = c;
	rs->npending++;
	atomic_store_explicit(&rs->r->st.pending, rs->npending, memory_order_relaxed);
}

static void list_del(rstate *rs, rreq *c)
{
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		rs->head = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	else
		rs->tail = c->prev;
	c->prev = c->next = NULL;
	rs->npending--;
	atomic_store_explicit(&rs->r->st.pending, rs->npending, memory_order_relaxed);
}

static void cmd_free(rreq *c)
{
	tr_msg_free(c->req);
	tr__free(c);
}

static void cmd_timer_cb(uv_timer_t *t);

/* Makes the `cmd` timer fire no later than `due` (loop ms). */
static void arm_cmd_timer(rstate *rs, uint64_t due)
{
	uint64_t now = uv_now(rs->loop);
	if (rs->timer_due != 0 && rs->timer_due <= due)
		return;
	rs->timer_due = due;
	uv_timer_start(&rs->tm->cmd, cmd_timer_cb, due > now ? due - now : 0, 0);
}

/* ---- requests -------------------------------------------------------------- */

static uint64_t be_n(const unsigned char *p, int n)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

/* The decimal text of the msgpack integer at p into num; its length, or
 * 0 when p is no integer. */
static size_t int_text(const unsigned char *p, char num[24])
{
	unsigned c = p[0];
	int64_t v;
	if (c <= 0x7f)
		v = c;
	else if (c >= 0xe0)
		v = (int8_t)c;
	else if (c >= 0xcc && c <= 0xce) /* uint8/16/32 */
		v = (int64_t)be_n(p + 1, 1 << (c - 0xcc));
	else if (c == 0xcf) /* uint64: may not fit an int64 */
		return (size_t)snprintf(num, 24, "%llu", (unsigned long long)be_n(p + 1, 8));
	else if (c == 0xd0)
		v = (int8_t)p[1];
	else if (c == 0xd1)
		v = (int16_t)be_n(p + 1, 2);
	else if (c == 0xd2)
		v = (int32_t)be_n(p + 1, 4);
	else if (c == 0xd3)
		v = (int64_t)be_n(p + 1, 8);
	else
		return 0;
	return (size_t)snprintf(num, 24, "%lld", (long long)v);
}

/*
 * One command argument at p (one checked msgpack object): a str or bin
 * (its bytes, in place), or an integer (its decimal text, written to
 * num). TR_OK or TR_EINVAL.
 */
static int arg_of(const unsigned char *p, const char **s, size_t *n, char num[24])
{
	unsigned c = p[0];
	size_t hdr, len;
	if (c >= 0xa0 && c <= 0xbf)
		hdr = 1, len = c & 0x1f;
	else if (c == 0xd9 || c == 0xc4) /* str8, bin8 */
		hdr = 2, len = p[1];
	else if (c == 0xda || c == 0xc5) /* str16, bin16 */
		hdr = 3, len = (size_t)be_n(p + 1, 2);
	else if (c == 0xdb || c == 0xc6) /* str32, bin32 */
		hdr = 5, len = (size_t)be_n(p + 1, 4);
	else if ((len = int_text(p, num)) > 0) {
		*s = num;
		*n = len;
		return TR_OK;
	} else
		return TR_EINVAL;
	*s = (const char *)p + hdr;
	*n = len;
	return TR_OK;
}

/* Frees a scratch grown big by one huge command. */
static void scratch_trim(rstate *rs)
{
	if (rs->argcap <= ARGS_KEEP)
		return;
	tr__free(rs->argv);
	tr__free(rs->argvlen);
	tr__free(rs->nums);
	rs->argv = NULL;
	rs->argvlen = NULL;
	rs->nums = NULL;
	rs->argcap = 0;
}

static int scratch_reserve(rstate *rs, size_t n)
{
	if (n <= rs->argcap)
		return TR_OK;
	size_t cap = rs->argcap ? rs->argcap : 16;
	while (cap < n)
		cap *= 2;
	const char **a = tr__realloc(rs->argv, cap * sizeof(*a));
	if (a == NULL)
		return TR_ENOMEM;
	rs->argv = a;
	size_t *l = tr__realloc(rs->argvlen, cap * sizeof(*l));
	if (l == NULL)
		return TR_ENOMEM;
	rs->argvlen = l;
	char(*nu)[24] = tr__realloc(rs->nums, cap * sizeof(*nu));
	if (nu == NULL)
		return TR_ENOMEM;
	rs->nums = nu;
	rs->argcap = (uint32_t)cap;
	return TR_OK;
}

/* Appends the elements of the array at v (checked) to the scratch from
 * index *argc. `what` names it in errors. */
static int add_args(rstate *rs, const unsigned char *v, size_t vn, uint32_t *argc,
                    const char *what, char *err, size_t errlen)
{
	uint32_t n;
	size_t hdr, pos;
	if (tr__mp_array_head(v, vn, &n, &hdr) != TR_OK) {
		snprintf(err, errlen, "%s must be an array", what);
		return TR_EINVAL;
	}
	if ((size_t)*argc + n > ARGS_MAX) {
		snprintf(err, errlen, "more than %u arguments", ARGS_MAX);
		return TR_EINVAL;
	}
	if (scratch_reserve(rs, (size_t)*argc + n) != TR_OK) {
		snprintf(err, errlen, "out of memory");
		return TR_ENOMEM;
	}
	pos = hdr;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t k = *argc + i;
		if (arg_of(v + pos, &rs->argv[k], &rs->argvlen[k], rs->nums[k]) != TR_OK) {
			snprintf(err, errlen, "%s[%u] must be a str, bin or integer", what, i + 1);
			return TR_EINVAL;
		}
		pos += tr__mp_size(v + pos);
	}
	*argc += n;
	return TR_OK;
}

static int ieq(const char *s, size_t n, const char *lit)
{
	return strlen(lit) == n && strncasecmp(s, lit, n) == 0;
}

/* Commands that would change what the shared connection is for everyone
 * on it: a mode that breaks reply matching (pub/sub, MONITOR, CLIENT
 * REPLY), a transaction other callers' commands would land in, another
 * protocol or database. */
static const char *forbidden(rstate *rs, uint32_t argc)
{
	static const char *const deny[] = {
	    "subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe",
	    "monitor",   "multi",      "exec",       "discard",     "watch",        "unwatch",
	    "hello",     "reset",      "select",     "quit"};
	for (size_t i = 0; i < sizeof(deny) / sizeof(deny[0]); i++)
		if (ieq(rs->argv[0], rs->argvlen[0], deny[i]))
			return deny[i];
	if (ieq(rs->argv[0], rs->argvlen[0], "client") && argc > 1 &&
	    ieq(rs->argv[1], rs->argvlen[1], "reply"))
		return "client reply";
	return NULL;
}

/* The script source of a checked SCRIPT body. */
static int script_of(const tr_body *b, const char **s, size_t *n)
{
	const unsigned char *v;
	size_t vn;
	if (tr__mp_map_get(b->data, b->len, "script", &v, &vn) != TR_OK ||
	    (v[0] != 0xd9 && v[0] != 0xda && v[0] != 0xdb && !(v[0] >= 0xa0 && v[0] <= 0xbf)))
		return TR_EINVAL;
	char dummy[24];
	return arg_of(v, s, n, dummy);
}

/*
 * Fills the scratch with the arguments of command c in its phase:
 * the caller's argv (PH_CMD), EVALSHA sha numkeys keys... args...
 * (PH_EVALSHA, PH_RETRY) or SCRIPT LOAD source (PH_LOAD). The body is
 * checked. TR_OK, TR_EINVAL (message in err), TR_ENOMEM.
 */
static int build(rstate *rs, rreq *c, uint32_t *argcp, char *err, size_t errlen)
{
	const tr_body *b = c->req->body;
	const unsigned char *v;
	size_t vn;
	uint32_t argc = 0;
	int rc;

	if (scratch_reserve(rs, 3) != TR_OK) {
		snprintf(err, errlen, "out of memory");
		return TR_ENOMEM;
	}
	if (c->phase == PH_CMD) {
		rc = tr__mp_map_get(b->data, b->len, "argv", &v, &vn);
		if (rc != TR_OK) {
			snprintf(err, errlen, rc == TR_EINVAL ? "the body must be a map" : "argv is missing");
			return TR_EINVAL;
		}
		if ((rc = add_args(rs, v, vn, &argc, "argv", err, errlen)) != TR_OK)
			return rc;
		if (argc == 0) {
			snprintf(err, errlen, "argv is empty");
			return TR_EINVAL;
		}
		*argcp = argc;
		return TR_OK;
	}
	if (c->phase == PH_LOAD) {
		rs->argv[0] = "SCRIPT", rs->argvlen[0] = 6;
		rs->argv[1] = "LOAD", rs->argvlen[1] = 4;
		if (script_of(b, &rs->argv[2], &rs->argvlen[2]) != TR_OK)
			return TR_EINVAL; /* checked when the ask came */
		*argcp = 3;
		return TR_OK;
	}
	rs->argv[0] = "EVALSHA", rs->argvlen[0] = 7;
	rs->argv[1] = c->sha, rs->argvlen[1] = 40;
	argc = 3; /* [2] = numkeys, below */
	uint32_t nkeys;
	rc = tr__mp_map_get(b->data, b->len, "keys", &v, &vn);
	if (rc == TR_OK && (rc = add_args(rs, v, vn, &argc, "keys", err, errlen)) != TR_OK)
		return rc;
	nkeys = argc - 3;
	rc = tr__mp_map_get(b->data, b->len, "args", &v, &vn);
	if (rc == TR_OK && (rc = add_args(rs, v, vn, &argc, "args", err, errlen)) != TR_OK)
		return rc;
	rs->argvlen[2] = (size_t)snprintf(rs->nums[2], sizeof(rs->nums[2]), "%u", nkeys);
	rs->argv[2] = rs->nums[2];
	*argcp = argc;
	return TR_OK;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *priv);

/* Writes command c (built in the scratch) to the connection and puts it
 * in flight. TR_OK or TR_EIO (hiredis refused: disconnecting). */
static int send_cmd(rstate *rs, rreq *c, uint32_t argc)
{
	if (rs->ac == NULL ||
	    redisAsyncCommandArgv(rs->ac, on_reply, c, (int)argc, rs->argv, rs->argvlen) != REDIS_OK)
		return TR_EIO;
	list_add(rs, c);
	arm_cmd_timer(rs, c->deadline);
	return TR_OK;
}

/* Re-sends c in its (new) phase from a reply callback; answers it on
 * failure. */
static void resend(rstate *rs, rreq *c)
{
	char err[160];
	uint32_t argc;
	int rc = build(rs, c, &argc, err, sizeof(err));
	if (rc == TR_OK)
		rc = send_cmd(rs, c, argc);
	scratch_trim(rs);
	if (rc == TR_OK)
		return;
	if (rc == TR_EIO)
		answer_errf(&rs->io, rs, c->req, TR_EIO, "connection to %s:%d lost", rs->r->host,
		            rs->r->port);
	else
		answer_errf(&rs->io, rs, c->req, rc, "%s", err);
	cmd_free(c);
}

/* ---- the script cache ------------------------------------------------------- */

static uint64_t fnv1a(const char *s, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

static void sha1_hex(const char *s, size_t n, char out[41])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char d[20];
#if MBEDTLS_VERSION_MAJOR >= 3
	mbedtls_sha1((const unsigned char *)s, n, d);
#else
	mbedtls_sha1_ret((const unsigned char *)s, n, d);
#endif
	for (int i = 0; i < 20; i++) {
		out[2 * i] = hex[d[i] >> 4];
		out[2 * i + 1] = hex[d[i] & 15];
	}
	out[40] = '\0';
}

/* The SHA-1 of a script, from the cache (filled on a miss while it has
 * room). */
static void script_sha(rstate *rs, const char *s, size_t n, char out[41])
{
	uint64_t h = fnv1a(s, n);
	script_ent **b = &rs->scripts[h % SCRIPT_BUCKETS];
	for (script_ent *e = *b; e != NULL; e = e->next) {
		if (e->hash == h && e->len == n && memcmp(e->text, s, n) == 0) {
			memcpy(out, e->sha, 41);
			return;
		}
	}
	sha1_hex(s, n, out);
	if (rs->nscripts >= SCRIPT_CACHE_MAX || n > SCRIPT_TEXT_MAX)
		return;
	script_ent *e = tr__malloc(sizeof(*e) + n);
	if (e == NULL)
		return;
	e->hash = h;
	e->len = n;
	memcpy(e->sha, out, 41);
	memcpy(e->text, s, n);
	e->next = *b;
	*b = e;
	rs->nscripts++;
}

/* ---- the connection --------------------------------------------------------- */

static void conn_start(rstate *rs);
static void conn_failed(rstate *rs);

static void conn_timer_cb(uv_timer_t *t)
{
	rstate *rs = t->data;
	if (rs->conn == CONN_DOWN) {
		conn_start(rs);
	} else if (rs->conn == CONN_CONNECTING) {
		redisAsyncContext *ac = rs->ac;
		set_error(rs->r, "connect to %s:%d: timed out", rs->r->host, rs->r->port);
		rs->ac = NULL;
		/* No command of ours is in flight while connecting (SELECT's
		 * callback ignores NULL); a free calls no onConnect, and its
		 * onDisconnect (TCP up, SELECT unanswered) is ignored. */
		redisAsyncFree(ac);
		conn_failed(rs);
	}
}

/* Waits out the backoff, then connects again. */
static void schedule_reconnect(rstate *rs)
{
	uint64_t cap = BACKOFF_BASE_MS;
	unsigned k = rs->attempt < 16 ? rs->attempt : 16;
	cap <<= k;
	if (cap > BACKOFF_MAX_MS)
		cap = BACKOFF_MAX_MS;
	rs->conn = CONN_DOWN;
	rs->attempt++;
	uv_timer_start(&rs->tm->conn, conn_timer_cb, xrand(rs) % (cap + 1), 0);
}

static void conn_failed(rstate *rs)
{
	ST_INC(rs->r, connect_failures);
	schedule_reconnect(rs);
}

static void conn_up(rstate *rs)
{
	uv_timer_stop(&rs->tm->conn);
	rs->conn = CONN_UP;
	rs->attempt = 0;
	ST_INC(rs->r, connects);
	atomic_store_explicit(&rs->r->st.up, 1, memory_order_relaxed);
}

/* The connection is gone (rs->ac already cleared): reconnect. */
static void conn_lost(rstate *rs)
{
	if (rs->conn == CONN_UP) {
		ST_INC(rs->r, disconnects);
		atomic_store_explicit(&rs->r->st.up, 0, memory_order_relaxed);
		uv_timer_stop(&rs->tm->conn);
		schedule_reconnect(rs);
	} else {
		uv_timer_stop(&rs->tm->conn);
		conn_failed(rs);
	}
}

/* Frees the context ourselves (not from a hiredis callback): what is in
 * flight gets TR_EIO (or TR_ESHUTDOWN when stopping) with `why`. */
static void teardown(rstate *rs, const char *why)
{
	redisAsyncContext *ac = rs->ac;
	if (ac == NULL)
		return;
	rs->ac = NULL;
	rs->drop_msg = why;
	redisAsyncFree(ac); /* runs every pending callback now, with NULL */
	rs->drop_msg = NULL;
}

static void on_connect(const redisAsyncContext *ac, int status)
{
	rstate *rs = ac->data;
	if (ac != rs->ac)
		return;
	if (status != REDIS_OK) {
		/* hiredis frees the context when this returns. */
		set_error(rs->r, "connect to %s:%d: %s", rs->r->host, rs->r->port,
		          ac->c.errstr[0] ? ac->c.errstr : "failed");
		rs->ac = NULL;
		uv_timer_stop(&rs->tm->conn);
		conn_failed(rs);
		return;
	}
	if (rs->r->db == 0)
		conn_up(rs);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
	rstate *rs = ac->data;
	if (ac != rs->ac)
		return; /* we freed it ourselves */
	/* hiredis frees the context when this returns; the commands in
	 * flight had their NULL callbacks already. */
	rs->ac = NULL;
	if (status == REDIS_OK)
		set_error(rs->r, "connection to %s:%d closed", rs->r->host, rs->r->port);
	else
		set_error(rs->r, "connection to %s:%d lost: %s", rs->r->host, rs->r->port,
		          ac->c.errstr[0] ? ac->c.errstr : "error");
	conn_lost(rs);
}

static void on_select(redisAsyncContext *ac, void *reply, void *priv)
{
	rstate *rs = ac->data;
	const redisReply *r = reply;
	(void)priv;
	if (r == NULL || ac != rs->ac)
		return;
	if (r->type == REDIS_REPLY_ERROR) {
		set_error(rs->r, "SELECT %d: %.*s", rs->r->db, (int)(r->len < 200 ? r->len : 200),
		          r->str);
		/* Inside a reply callback: hiredis frees it after we return
		 * (onDisconnect then sees a context that is not ours). */
		rs->ac = NULL;
		redisAsyncFree(ac);
		uv_timer_stop(&rs->tm->conn);
		conn_failed(rs);
		return;
	}
	conn_up(rs);
}

static void conn_start(rstate *rs)
{
	tr_redis *r = rs->r;
	redisAsyncContext *ac;

	if (rs->stopping)
		return;
	ac = redisAsyncConnect(r->host, r->port);
	if (ac == NULL) {
		set_error(r, "connect to %s:%d: out of memory", r->host, r->port);
		conn_failed(rs);
		return;
	}
	if (ac->err) {
		set_error(r, "connect to %s:%d: %s", r->host, r->port, ac->c.errstr);
		redisAsyncFree(ac);
		conn_failed(rs);
		return;
	}
	if (hiredis_uv_attach(ac, rs->loop) != REDIS_OK) {
		set_error(r, "connect to %s:%d: cannot watch the socket", r->host, r->port);
		redisAsyncFree(ac);
		conn_failed(rs);
		return;
	}
	ac->data = rs;
	rs->ac = ac;
	rs->conn = CONN_CONNECTING;
	/* After attaching: setting the connect callback arms the write
	 * watch that detects the connect's end. */
	redisAsyncSetConnectCallback(ac, on_connect);
	redisAsyncSetDisconnectCallback(ac, on_disconnect);
	/* Queued before the connect completes; we are up once it answers.
	 * If it cannot be queued, the connect timeout starts over. */
	if (r->db > 0)
		(void)redisAsyncCommand(ac, on_select, NULL, "SELECT %d", r->db);
	uv_timer_start(&rs->tm->conn, conn_timer_cb, r->connect_timeout_ms, 0);
}

/* ---- replies and timeouts ----------------------------------------------------- */

static void on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
	rstate *rs = ac->data;
	rreq *c = priv;
	const redisReply *r = reply;

	list_del(rs, c);
	if (r == NULL) {
		if (c->timed_out)
			answer_errf(&rs->io, rs, c->req, TR_ETIMEDOUT, "no reply from %s:%d within %llu ms",
			            rs->r->host, rs->r->port, (unsigned long long)rs->r->timeout_ms);
		else if (rs->stopping)
			answer_errf(&rs->io, rs, c->req, TR_ESHUTDOWN, "the Redis client is stopping");
		else if (rs->drop_msg != NULL)
			answer_errf(&rs->io, rs, c->req, TR_EIO, "%s", rs->drop_msg);
		else
			answer_errf(&rs->io, rs, c->req, TR_EIO, "connection to %s:%d lost: %s",
			            rs->r->host, rs->r->port,
			            ac->c.errstr[0] ? ac->c.errstr : "closed");
		cmd_free(c);
		return;
	}
	if (r->type == REDIS_REPLY_ERROR) {
		if (c->phase == PH_EVALSHA && r->len >= 8 && memcmp(r->str, "NOSCRIPT", 8) == 0) {
			/* A restarted or flushed server: load, then retry once. */
			c->phase = PH_LOAD;
			ST_INC(rs->r, script_loads);
			resend(rs, c);
			return;
		}
		answer_err(&rs->io, rs, c->req, TR_EFAILED, r->str, r->len);
		cmd_free(c);
		return;
	}
	if (c->phase == PH_LOAD) {
		c->phase = PH_RETRY;
		resend(rs, c);
		return;
	}
	answer_ok(&rs->io, rs, c->req, r);
	cmd_free(c);
}

static void cmd_timer_cb(uv_timer_t *t)
{
	rstate *rs = t->data;
	uint64_t now = uv_now(rs->loop), next = 0;
	int expired = 0;

	rs->timer_due = 0;
	for (rreq *c = rs->head; c != NULL; c = c->next) {
		if (c->deadline <= now) {
			c->timed_out = 1;
			expired = 1;
		} else if (next == 0 || c->deadline < next) {
			next = c->deadline;
		}
	}
	if (expired) {
		/* hiredis 0.14 cannot cancel one command: drop the connection.
		 * Down first (stats, reconnect timer), so that whoever gets an
		 * answer sees it; then the callbacks answer, with NULL. */
		set_error(rs->r, "a command to %s:%d timed out; reconnecting", rs->r->host,
		          rs->r->port);
		conn_lost(rs);
		teardown(rs, "connection reset: another command timed out");
		return;
	}
	if (next != 0)
		arm_cmd_timer(rs, next);
}

/* ---- the actor ------------------------------------------------------------------ */

static void timers_close_cb(uv_handle_t *h)
{
	rtimers *tm = h->data;
	if (--tm->closes == 0)
		tr__free(tm);
}

static int redis_init(tr_ctx *ctx, void *st, const void *arg)
{
	rstate *rs = st;
	rs->r = (tr_redis *)arg;
	rs->io = tr__io_ctx(ctx);
	rs->loop = tr__ctx_loop(ctx);
	rs->rng = tr_now_ns() ^ ((uint64_t)(uintptr_t)rs << 16) ^ 0x9e3779b97f4a7c15ULL;
	if (rs->rng == 0)
		rs->rng = 1;
	tr_buf_init(&rs->out);
	rs->tm = tr__calloc(1, sizeof(*rs->tm));
	if (rs->tm == NULL)
		return TR_ENOMEM;
	uv_timer_init(rs->loop, &rs->tm->cmd);
	uv_timer_init(rs->loop, &rs->tm->conn);
	rs->tm->cmd.data = rs;
	rs->tm->conn.data = rs;
	conn_start(rs);
	return TR_OK;
}

static void on_ask(tr_ctx *ctx, rstate *rs, tr_msg *m)
{
	tr_redis *r = rs->r;
	char err[160];
	uint32_t argc;
	const char *s;
	size_t sn;
	int rc;

	ST_INC(r, commands);
	if (m->tag != TR_TAG_REDIS_CMD && m->tag != TR_TAG_REDIS_SCRIPT) {
		answer_errf(ctx, rs, m, TR_EINVAL, "unknown request tag 0x%x", (unsigned)m->tag);
		return;
	}
	if (m->body == NULL || tr_body_check(m->body) != TR_OK) {
		answer_errf(ctx, rs, m, TR_EINVAL, "the body must be a msgpack map");
		return;
	}
	rreq *c = tr__calloc(1, sizeof(*c));
	if (c == NULL) {
		answer_errf(ctx, rs, m, TR_ENOMEM, "out of memory");
		return;
	}
	c->req = m; /* borrowed until tr_take below */
	if (m->tag == TR_TAG_REDIS_SCRIPT) {
		if (script_of(m->body, &s, &sn) != TR_OK || sn == 0) {
			tr__free(c);
			answer_errf(ctx, rs, m, TR_EINVAL, "script must be a non-empty str");
			return;
		}
		c->phase = PH_EVALSHA;
		script_sha(rs, s, sn, c->sha);
	}
	rc = build(rs, c, &argc, err, sizeof(err));
	if (rc == TR_OK && c->phase == PH_CMD && (s = forbidden(rs, argc)) != NULL) {
		snprintf(err, sizeof(err), "%s is not allowed on the shared connection", s);
		rc = TR_EINVAL;
	}
	if (rc == TR_OK && rs->conn == CONN_UP && rs->npending < r->max_pending) {
		c->deadline = uv_now(rs->loop) + r->timeout_ms;
		if ((rc = send_cmd(rs, c, argc)) == TR_OK) {
			scratch_trim(rs);
			tr_take(ctx);
			return;
		}
		snprintf(err, sizeof(err), "connection to %s:%d lost", r->host, r->port);
	}
	/* Refused: a bad request, not connected, too many in flight, or
	 * hiredis would not queue it. */
	scratch_trim(rs);
	tr__free(c);
	if (rc != TR_OK) {
		answer_errf(ctx, rs, m, rc, "%s", err);
	} else if (rs->conn != CONN_UP) {
		char le[sizeof(r->last_error)], msg[sizeof(le) + 96];
		ST_INC(r, unavailable); /* not in `errors` */
		tr_redis_last_error(r, le, sizeof(le));
		snprintf(msg, sizeof(msg), "not connected to %s:%d (%s)", r->host, r->port,
		         le[0] ? le : "connecting");
		answer_err_(ctx, rs, m, TR_EIO, msg, strlen(msg));
	} else {
		answer_errf(ctx, rs, m, TR_EREJECTED, "%u commands are in flight already",
		            (unsigned)rs->npending);
	}
}

static int redis_receive(tr_ctx *ctx, void *st, tr_msg *m)
{
	if ((m->flags & TR_MSGF_ASK) && !(m->flags & TR_MSGF_REPLY))
		on_ask(ctx, st, m);
	return TR_OK;
}

static void redis_terminate(tr_ctx *ctx, void *st, int reason)
{
	rstate *rs = st;
	(void)reason;
	rs->stopping = 1;
	rs->io = tr__io_ctx(ctx);
	atomic_store_explicit(&rs->r->st.up, 0, memory_order_relaxed);
	teardown(rs, NULL); /* every command in flight: TR_ESHUTDOWN */
	/* Nothing can be left (each leaves the list in its callback); be
	 * safe all the same. */
	while (rs->head != NULL) {
		rreq *c = rs->head;
		list_del(rs, c);
		answer_errf(ctx, rs, c->req, TR_ESHUTDOWN, "the Redis client is stopping");
		cmd_free(c);
	}
	rs->tm->cmd.data = rs->tm;
	rs->tm->conn.data = rs->tm;
	rs->tm->closes = 2;
	uv_close((uv_handle_t *)&rs->tm->cmd, timers_close_cb);
	uv_close((uv_handle_t *)&rs->tm->conn, timers_close_cb);
	rs->tm = NULL;
	for (unsigned i = 0; i < SCRIPT_BUCKETS; i++) {
		for (script_ent *e = rs->scripts[i], *next; e != NULL; e = next) {
			next = e->next;
			tr__free(e);
		}
		rs->scripts[i] = NULL;
	}
	tr__free(rs->argv);
	tr__free(rs->argvlen);
	tr__free(rs->nums);
	tr_buf_free(&rs->out);
}

static const tr_actor_ops redis_ops = {
	.name = "redis",
	.size = sizeof(rstate),
	.init = redis_init,
	.receive = redis_receive,
	.terminate = redis_terminate,
	/* Every caller's asks come here; refuse (TR_EREJECTED) rather than
	 * block when they outrun the server. */
	.options = {.mailbox = 16384, .overflow = TR_OVERFLOW_REJECT},
};

/* ---- control ------------------------------------------------------------------ */

int tr_redis_start(tr_node *n, unsigned worker, const tr_redis_opts *o, tr_redis **out,
                   char *err, size_t errlen)
{
	unsigned char addr[sizeof(struct in6_addr)];
	tr_redis *r;
	int rc;

	if (err != NULL && errlen > 0)
		err[0] = '\0';
	*out = NULL;
	if (o == NULL || o->host == NULL || strlen(o->host) >= sizeof(r->host) ||
	    (inet_pton(AF_INET, o->host, addr) != 1 && inet_pton(AF_INET6, o->host, addr) != 1)) {
		snprintf(err, errlen, "redis: host must be a numeric IPv4 or IPv6 address");
		return TR_EINVAL;
	}
	if (o->port < 1 || o->port > 65535) {
		snprintf(err, errlen, "redis: port must be 1..65535");
		return TR_EINVAL;
	}
	if (o->db < 0) {
		snprintf(err, errlen, "redis: db must be >= 0");
		return TR_EINVAL;
	}
	r = tr__calloc(1, sizeof(*r));
	if (r == NULL) {
		snprintf(err, errlen, "out of memory");
		return TR_ENOMEM;
	}
	snprintf(r->host, sizeof(r->host), "%s", o->host);
	r->port = o->port;
	r->db = o->db;
	r->timeout_ms = o->timeout_us ? (o->timeout_us + 999) / 1000 : 1000;
	r->connect_timeout_ms = o->connect_timeout_us ? (o->connect_timeout_us + 999) / 1000 : 1000;
	r->max_pending = o->max_pending ? o->max_pending : 10000;
	uv_mutex_init(&r->mu);

	tr_spawn_opts so;
	memset(&so, 0, sizeof(so));
	so.name = TR_REDIS_NAME;
	rc = tr__spawn_pinned(n, worker, &redis_ops, r, &so, NULL);
	if (rc != TR_OK) {
		snprintf(err, errlen, "cannot start the Redis client: %s", tr_strerror(rc));
		tr_redis_free(r);
		return rc;
	}
	*out = r;
	return TR_OK;
}

const tr_redis_stats *tr_redis_stats_of(const tr_redis *r)
{
	return &r->st;
}

void tr_redis_last_error(const tr_redis *r, char *buf, size_t len)
{
	if (len == 0)
		return;
	uv_mutex_lock((uv_mutex_t *)&r->mu);
	snprintf(buf, len, "%s", r->last_error);
	uv_mutex_unlock((uv_mutex_t *)&r->mu);
}

void tr_redis_free(tr_redis *r)
{
	if (r == NULL)
		return;
	uv_mutex_destroy(&r->mu);
	tr__free(r);
}
