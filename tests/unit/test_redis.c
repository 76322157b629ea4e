/*
 * test_redis.c -- the Redis client actor (db/redis.h) against a real
 * redis-server, started by scripts/redis on a free loopback port in a
 * temporary directory and stopped by its PID at exit (atexit too).
 *
 * A probe actor asks the client the way any actor would and records each
 * answer (error code, body). Checked: strings with EX and TTL, binary
 * values with NUL bytes (bin) and UTF-8 ones (str), integer arguments,
 * integers, arrays with nil, server errors (TR_EFAILED with the server's
 * text), bad requests (TR_EINVAL), SELECT of a database (and a refused
 * one), scripts by SHA-1 with the NOSCRIPT path after SCRIPT FLUSH,
 * per-command timeouts (then a reconnect), a refused connect (TR_EIO at
 * once, no hang: the libuv adapter's bug), a server that accepts and
 * never answers (connect timeout), a server killed with commands in
 * flight and started again on the same port, the max_pending bound, and
 * stopping (the actor alone, and the whole node) with commands in flight.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <msgpack.h>
#include <troupe/troupe.h>

#include "core/alloc.h"
#include "db/redis.h"
#include "msg/msg_int.h"
#include "pipe/mp.h"
#include "tt.h"
#include "tnode.h"

/* ---- the server ---------------------------------------------------------------- */

static char srv_dir[64];
static int srv_port;
static int srv_pid;

/* Runs scripts/redis VERB DIR; reads REDIS_PORT / REDIS_PID. 0 on success. */
static int srv_run(const char *verb)
{
	char cmd[512], line[128];
	snprintf(cmd, sizeof(cmd), "'%s/scripts/redis' %s '%s'", TR_SOURCE_ROOT, verb, srv_dir);
	FILE *f = popen(cmd, "r");
	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL) {
		if (strncmp(line, "REDIS_PORT=", 11) == 0)
			srv_port = atoi(line + 11);
		else if (strncmp(line, "REDIS_PID=", 10) == 0)
			srv_pid = atoi(line + 10);
	}
	return pclose(f) == 0 ? 0 : -1;
}

static void srv_stop(void)
{
	if (srv_dir[0] != '\0')
		(void)srv_run("stop");
	srv_dir[0] = '\0';
	srv_port = 0;
	srv_pid = 0;
}

/* The shared server, started on first use. 0 on success. */
static int srv_need(void)
{
	if (srv_port > 0)
		return 0;
	snprintf(srv_dir, sizeof(srv_dir), "/tmp/troupe-redis-XXXXXX");
	if (mkdtemp(srv_dir) == NULL) {
		srv_dir[0] = '\0';
		return -1;
	}
	static int registered;
	if (!registered) {
		char pid[24];
		/* Stopped at exit; and by scripts/redis' watcher should we
		 * crash (a sanitizer's halt_on_error skips atexit). */
		snprintf(pid, sizeof(pid), "%d", (int)getpid());
		setenv("REDIS_OWNER_PID", pid, 1);
		atexit(srv_stop);
		registered = 1;
	}
	if (srv_run("start") != 0 || srv_port <= 0 || srv_pid <= 0) {
		fprintf(stderr, "  cannot start redis-server with scripts/redis (is it installed?)\n");
		srv_stop();
		return -1;
	}
	return 0;
}

/* A loopback port nobody listens on (bound, then closed). */
static int dead_port(void)
{
	struct sockaddr_in a = {0};
	socklen_t al = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &al) != 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	close(fd);
	return ntohs(a.sin_port);
}

/* A listening socket that never accepts nor answers: connects succeed
 * (the kernel's backlog), commands never get a reply. */
static int mute_listener(int *port)
{
	struct sockaddr_in a = {0};
	socklen_t al = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, 64) != 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &al) != 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	*port = ntohs(a.sin_port);
	return fd;
}

/* ---- the node, the client, the asking probe -------------------------------------- */

enum { KICK = 1 };
#define MAXR 64

static tr_node *node;
static tr_redis *cli;
static tr_ref redis_ref, probe_ref;

static uv_mutex_t mu;
static int mu_inited;
static tr_buf req;         /* the asks' body (len 0: none), under mu */
static uint32_t req_tag;
static tr_buf next_req;    /* the next kick's body and tag, built by the test thread */
static uint32_t next_tag;
static struct {
	uint64_t corr;
	int done;
	int32_t err;  /* 0, or the error reply's code */
	tr_buf body;
} res[MAXR];
static int nres, ndone;

static int probe_msg(tr_ctx *ctx, probe *p, tr_msg *m)
{
	(void)p;
	uv_mutex_lock(&mu);
	if (m->flags & TR_MSGF_REPLY) {
		for (int i = 0; i < nres; i++) {
			if (res[i].corr == m->corr && !res[i].done) {
				res[i].done = 1;
				res[i].err = (m->flags & TR_MSGF_ERROR) ? m->err : 0;
				res[i].body.len = 0;
				if (m->body != NULL)
					tr__buf_append(&res[i].body, m->body->data, m->body->len);
				ndone++;
				break;
			}
		}
	} else if (m->tag == KICK) {
		/* arg asks at once, all with the same body. */
		for (uint64_t k = 0; k < m->arg && nres < MAXR; k++) {
			tr_msg *q = tr_msg_new();
			uint64_t corr = 0;
			q->tag = req_tag;
			if (req.len > 0)
				q->body = tr_body_new(req.data, req.len);
			int i = nres++;
			res[i].done = 0;
			res[i].corr = 0;
			int rc = tr_ask(ctx, redis_ref, q, 10000, &corr);
			if (rc != TR_OK) {
				res[i].done = 1;
				res[i].err = rc;
				res[i].body.len = 0;
				ndone++;
			} else {
				res[i].corr = corr;
			}
		}
	}
	uv_mutex_unlock(&mu);
	return TR_OK;
}

static const probe_cfg probe_c = {.id = 1, .on_msg = probe_msg};

static void forget(void)
{
	uv_mutex_lock(&mu);
	nres = ndone = 0;
	uv_mutex_unlock(&mu);
}

static void stop(void)
{
	if (node != NULL)
		tn_stop(node);
	node = NULL;
	tr_redis_free(cli);
	cli = NULL;
}

static const tr_redis_stats *st(void)
{
	return tr_redis_stats_of(cli);
}

#define ST(f) ((long long)atomic_load(&st()->f))

/* A node with the probe, then the client (opts o, host 127.0.0.1). */
static int start(tr_redis_opts o)
{
	char err[256];
	if (!mu_inited) {
		uv_mutex_init(&mu);
		mu_inited = 1;
		tr_buf_init(&req);
		tr_buf_init(&next_req);
		for (int i = 0; i < MAXR; i++)
			tr_buf_init(&res[i].body);
	}
	stop(); /* a failed test may have left one */
	forget();
	node = tn_start(2);
	if (node == NULL)
		return TR_EFAILED;
	tr_spawn_opts po = {0};
	int rc = tr_node_spawn(node, &probe_ops, &probe_c, &po, &probe_ref);
	if (rc != TR_OK)
		return rc;
	o.host = "127.0.0.1";
	rc = tr_redis_start(node, 1, &o, &cli, err, sizeof(err));
	if (rc != TR_OK) {
		fprintf(stderr, "  tr_redis_start: %s\n", err);
		return rc;
	}
	return tr_whereis(node, TR_REDIS_NAME, &redis_ref);
}

static int up_is_(void *ud)
{
	return atomic_load(&st()->up) == *(int *)ud;
}

static int wait_up(int want, unsigned ms)
{
	return tn_wait(up_is_, &want, ms);
}

static int pending_is_(void *ud)
{
	return (int)atomic_load(&st()->pending) == *(int *)ud;
}

struct stat_ge_ {
	const atomic_uint_fast64_t *v;
	uint64_t n;
};

static int stat_ge_(void *ud)
{
	struct stat_ge_ *w = ud;
	return atomic_load(w->v) >= w->n;
}

/* Waits until a counter reaches n (it may lag the answers a little). */
static int wait_stat(const atomic_uint_fast64_t *v, uint64_t n, unsigned ms)
{
	struct stat_ge_ w = {v, n};
	return tn_wait(stat_ge_, &w, ms);
}

static int ndone_ge_(void *ud)
{
	uv_mutex_lock(&mu);
	int ok = ndone >= *(int *)ud;
	uv_mutex_unlock(&mu);
	return ok;
}

static int nres_ge_(void *ud)
{
	uv_mutex_lock(&mu);
	int ok = nres >= *(int *)ud;
	uv_mutex_unlock(&mu);
	return ok;
}

/* Asks n times with next_req/next_tag; waits until they are sent, then
 * (ms > 0) for all answers. */
static int kick(int n, unsigned ms)
{
	uv_mutex_lock(&mu);
	req.len = 0;
	tr__buf_append(&req, next_req.data, next_req.len);
	req_tag = next_tag;
	int want = ndone + n, sent = nres + n;
	uv_mutex_unlock(&mu);
	if (tn_send(node, probe_ref, KICK, (uint64_t)n) != TR_OK || !tn_wait(nres_ge_, &sent, 5000))
		return 0;
	return ms == 0 || tn_wait(ndone_ge_, &want, ms);
}

static int wait_done(int n, unsigned ms)
{
	return tn_wait(ndone_ge_, &n, ms);
}

/* ---- building requests --------------------------------------------------------- */

typedef struct arg {
	int kind; /* 's' str, 'b' bin, 'i' integer, 'f' float, 'a' array */
	const char *p;
	size_t n;
	int64_t i;
} arg;

#define S(x) ((arg){'s', (x), sizeof(x) - 1, 0})
#define B(x) ((arg){'b', (x), sizeof(x) - 1, 0})
#define I(x) ((arg){'i', NULL, 0, (x)})

static void pack_arg(msgpack_packer *pk, arg a)
{
	switch (a.kind) {
	case 's':
		msgpack_pack_str(pk, a.n);
		msgpack_pack_str_body(pk, a.p, a.n);
		break;
	case 'b':
		msgpack_pack_bin(pk, a.n);
		msgpack_pack_bin_body(pk, a.p, a.n);
		break;
	case 'i':
		msgpack_pack_int64(pk, a.i);
		break;
	case 'f':
		msgpack_pack_double(pk, 1.5);
		break;
	default:
		msgpack_pack_array(pk, 0);
	}
}

static void pack_args(msgpack_packer *pk, const arg *a, int n)
{
	msgpack_pack_array(pk, (size_t)n);
	for (int i = 0; i < n; i++)
		pack_arg(pk, a[i]);
}

/* req = {argv = [a...]} */
static void set_cmd(const arg *a, int n)
{
	msgpack_packer pk;
	next_req.len = 0;
	tr__mp_packer(&pk, &next_req);
	msgpack_pack_map(&pk, 1);
	tr__mp_pack_cstr(&pk, "argv");
	pack_args(&pk, a, n);
	next_tag = TR_TAG_REDIS_CMD;
}

/* req = {script = src, keys = [...], args = [...]} */
static void set_script(const char *src, const arg *keys, int nk, const arg *args, int na)
{
	msgpack_packer pk;
	next_req.len = 0;
	tr__mp_packer(&pk, &next_req);
	msgpack_pack_map(&pk, 3);
	tr__mp_pack_cstr(&pk, "script");
	tr__mp_pack_cstr(&pk, src);
	tr__mp_pack_cstr(&pk, "keys");
	pack_args(&pk, keys, nk);
	tr__mp_pack_cstr(&pk, "args");
	pack_args(&pk, args, na);
	next_tag = TR_TAG_REDIS_SCRIPT;
}

/* ---- reading answers --------------------------------------------------------------- */

/* The last answer of one ask, decoded. */
static struct {
	int32_t err;
	msgpack_unpacked u;
	int have_u;
	const msgpack_object *reply; /* {reply = ...}; NULL when absent */
	char message[600];           /* {message = ...} of an error reply */
	uint64_t ms;
} R;

static const msgpack_object *obj_get(const msgpack_object *map, const char *k)
{
	if (map == NULL || map->type != MSGPACK_OBJECT_MAP)
		return NULL;
	for (uint32_t i = 0; i < map->via.map.size; i++) {
		const msgpack_object *key = &map->via.map.ptr[i].key;
		if (key->type == MSGPACK_OBJECT_STR && key->via.str.size == strlen(k) &&
		    memcmp(key->via.str.ptr, k, key->via.str.size) == 0)
			return &map->via.map.ptr[i].val;
	}
	return NULL;
}

/* Decodes answer i into R. 0 on success. */
static int decode(int i)
{
	static tr_buf copy;
	size_t off = 0;
	if (R.have_u)
		msgpack_unpacked_destroy(&R.u);
	R.have_u = 0;
	R.reply = NULL;
	R.message[0] = '\0';
	uv_mutex_lock(&mu);
	if (!res[i].done) {
		uv_mutex_unlock(&mu);
		return -1;
	}
	R.err = res[i].err;
	copy.len = 0;
	tr__buf_append(&copy, res[i].body.data, res[i].body.len);
	uv_mutex_unlock(&mu);
	if (copy.len == 0)
		return R.err != 0 ? 0 : -1;
	msgpack_unpacked_init(&R.u);
	R.have_u = 1;
	if (msgpack_unpack_next(&R.u, (const char *)copy.data, copy.len, &off) !=
	        MSGPACK_UNPACK_SUCCESS ||
	    off != copy.len || R.u.data.type != MSGPACK_OBJECT_MAP)
		return -1;
	R.reply = obj_get(&R.u.data, "reply");
	const msgpack_object *m = obj_get(&R.u.data, "message");
	if (m != NULL && m->type == MSGPACK_OBJECT_STR) {
		size_t n = m->via.str.size < sizeof(R.message) - 1 ? m->via.str.size
		                                                 : sizeof(R.message) - 1;
		memcpy(R.message, m->via.str.ptr, n);
		R.message[n] = '\0';
	}
	return 0;
}

/* One ask with the current req; its answer in R. 0 on success. */
static int call(void)
{
	uv_mutex_lock(&mu);
	if (ndone == nres)
		nres = ndone = 0; /* nothing outstanding: reuse the slots */
	int i = nres;
	uv_mutex_unlock(&mu);
	uint64_t t0 = tr_now_ns();
	if (!kick(1, 8000))
		return -1;
	R.ms = (tr_now_ns() - t0) / 1000000u;
	return decode(i);
}

static int call_cmd(const arg *a, int n)
{
	set_cmd(a, n);
	return call();
}

#define CMD(...)                                                                  \
	call_cmd((const arg[]){__VA_ARGS__}, (int)(sizeof((arg[]){__VA_ARGS__}) / sizeof(arg)))

static int is_str(const msgpack_object *o, const char *s)
{
	return o != NULL && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
	       memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

static int is_int(const msgpack_object *o, int64_t v)
{
	if (o == NULL)
		return 0;
	if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
		return v >= 0 && o->via.u64 == (uint64_t)v;
	if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
		return o->via.i64 == v;
	return 0;
}

static const msgpack_object *elem(const msgpack_object *o, uint32_t i)
{
	if (o == NULL || o->type != MSGPACK_OBJECT_ARRAY || i >= o->via.array.size)
		return NULL;
	return &o->via.array.ptr[i];
}

static int arr_len(const msgpack_object *o)
{
	return o != NULL && o->type == MSGPACK_OBJECT_ARRAY ? (int)o->via.array.size : -1;
}

/* ---- tests ----------------------------------------------------------------------- */

TT_TEST(commands)
{
	TT_ASSERT(srv_need() == 0);
	TT_OK(start((tr_redis_opts){.port = srv_port}));
	TT_ASSERT(wait_up(1, 3000));

	TT_ASSERT(CMD(S("SET"), S("k1"), S("hello"), S("EX"), I(30)) == 0);
	TT_EQ(R.err, 0);
	TT_ASSERT(is_str(R.reply, "OK"));
	TT_ASSERT(CMD(S("GET"), S("k1")) == 0);
	TT_ASSERT(is_str(R.reply, "hello"));
	TT_ASSERT(CMD(S("TTL"), S("k1")) == 0);
	TT_ASSERT(R.reply != NULL && R.reply->type == MSGPACK_OBJECT_POSITIVE_INTEGER);
	TT_ASSERT(R.reply->via.u64 >= 1 && R.reply->via.u64 <= 30);

	/* Integers, and integer arguments (negative too). */
	TT_ASSERT(CMD(S("DEL"), S("cnt")) == 0);
	TT_ASSERT(CMD(S("INCR"), S("cnt")) == 0);
	TT_ASSERT(is_int(R.reply, 1));
	TT_ASSERT(CMD(S("INCRBY"), S("cnt"), I(-43)) == 0);
	TT_ASSERT(is_int(R.reply, -42));
	TT_ASSERT(CMD(S("INCRBY"), S("cnt"), I(100000000000LL)) == 0);
	TT_ASSERT(is_int(R.reply, 100000000000LL - 42));
	TT_ASSERT(CMD(S("SET"), S("cnt"), I(7)) == 0);

	/* Arrays with nil, and an empty array. */
	TT_ASSERT(CMD(S("MGET"), S("k1"), S("no-such-key"), S("cnt")) == 0);
	TT_EQ(arr_len(R.reply), 3);
	TT_ASSERT(is_str(elem(R.reply, 0), "hello"));
	TT_EQ(elem(R.reply, 1)->type, MSGPACK_OBJECT_NIL);
	TT_ASSERT(is_str(elem(R.reply, 2), "7"));
	TT_ASSERT(CMD(S("LRANGE"), S("no-such-list"), I(0), I(-1)) == 0);
	TT_EQ(arr_len(R.reply), 0);
	TT_ASSERT(CMD(S("GET"), S("no-such-key")) == 0);
	TT_EQ(R.reply->type, MSGPACK_OBJECT_NIL);

	/* Binary-safe: NUL and 0xff bytes go as bin and come back as bin;
	 * valid UTF-8 comes back as str. */
	static const char binv[] = "a\0b\xff\0\xc3";
	TT_ASSERT(CMD(S("SET"), B("bin\0key"), B(binv)) == 0);
	TT_ASSERT(is_str(R.reply, "OK"));
	TT_ASSERT(CMD(S("GET"), B("bin\0key")) == 0);
	TT_ASSERT(R.reply != NULL && R.reply->type == MSGPACK_OBJECT_BIN);
	TT_EQ(R.reply->via.bin.size, sizeof(binv) - 1);
	TT_ASSERT(memcmp(R.reply->via.bin.ptr, binv, sizeof(binv) - 1) == 0);
	TT_ASSERT(CMD(S("STRLEN"), B("bin\0key")) == 0);
	TT_ASSERT(is_int(R.reply, (int64_t)sizeof(binv) - 1));
	TT_ASSERT(CMD(S("SET"), S("utf"), B("caf\xc3\xa9")) == 0);
	TT_ASSERT(CMD(S("GET"), S("utf")) == 0);
	TT_ASSERT(is_str(R.reply, "caf\xc3\xa9"));
	TT_ASSERT(CMD(S("GET"), B("bin\0")) == 0); /* another key: the NUL counts */
	TT_EQ(R.reply->type, MSGPACK_OBJECT_NIL);

	/* A burst: many commands in flight at once, answered in order. */
	TT_ASSERT(CMD(S("DEL"), S("burst")) == 0);
	forget();
	set_cmd((const arg[]){S("INCR"), S("burst")}, 2);
	TT_ASSERT(kick(50, 5000));
	for (int i = 0; i < 50; i++) {
		TT_ASSERT(decode(i) == 0);
		TT_EQ(R.err, 0);
		TT_ASSERT(R.reply != NULL && R.reply->type == MSGPACK_OBJECT_POSITIVE_INTEGER);
	}
	TT_ASSERT(CMD(S("GET"), S("burst")) == 0);
	TT_ASSERT(is_str(R.reply, "50"));

	/* A server error: TR_EFAILED with its text. */
	long long errs = ST(errors);
	TT_ASSERT(CMD(S("INCR"), S("k1")) == 0);
	TT_RC(R.err, TR_EFAILED);
	TT_ASSERT(strstr(R.message, "not an integer") != NULL);
	TT_ASSERT(CMD(S("NO-SUCH-COMMAND")) == 0);
	TT_RC(R.err, TR_EFAILED);
	TT_ASSERT(strstr(R.message, "unknown command") != NULL);
	TT_EQ(ST(errors), errs + 2);

	/* The connection is still the first one, and fine. */
	TT_ASSERT(CMD(S("PING")) == 0);
	TT_ASSERT(is_str(R.reply, "PONG"));
	TT_EQ(ST(connects), 1);
	TT_EQ(ST(disconnects), 0);
	TT_EQ(ST(pending), 0);
	TT_ASSERT(ST(commands) >= 20);
	char le[256];
	tr_redis_last_error(cli, le, sizeof(le));
	TT_STREQ(le, "");
	stop();
}

TT_TEST(bad_requests)
{
	TT_ASSERT(srv_need() == 0);
	TT_OK(start((tr_redis_opts){.port = srv_port}));
	TT_ASSERT(wait_up(1, 3000));
	msgpack_packer pk;

	/* No body. */
	next_req.len = 0;
	next_tag = TR_TAG_REDIS_CMD;
	TT_ASSERT(call() == 0);
	TT_RC(R.err, TR_EINVAL);
	TT_ASSERT(R.message[0] != '\0');
	/* A body that is no map; a map without argv; argv not an array. */
	next_req.len = 0;
	tr__mp_packer(&pk, &next_req);
	msgpack_pack_int(&pk, 5);
	TT_ASSERT(call() == 0);
	TT_RC(R.err, TR_EINVAL);
	next_req.len = 0;
	msgpack_pack_map(&pk, 1);
	tr__mp_pack_cstr(&pk, "args");
	msgpack_pack_array(&pk, 0);
	TT_ASSERT(call() == 0);
	TT_RC(R.err, TR_EINVAL);
	TT_ASSERT(strstr(R.message, "argv") != NULL);
	next_req.len = 0;
	msgpack_pack_map(&pk, 1);
	tr__mp_pack_cstr(&pk, "argv");
	tr__mp_pack_cstr(&pk, "GET k");
	TT_ASSERT(call() == 0);
	TT_RC(R.err, TR_EINVAL);
	/* Not msgpack at all. */
	next_req.len = 0;
	tr__buf_append(&next_req, "\xc1\xc1", 2);
	TT_ASSERT(call() == 0);
	TT_RC(R.err, TR_EINVAL);

	/* Empty argv; arguments of other types. */
	set_cmd(NULL, 0);
	TT_ASSERT(call() == 0);
	TT_RC(R.err, TR_EINVAL);
	TT_ASSERT(CMD(S("SET"), S("k"), ((arg){'f', NULL, 0, 0})) == 0);
	TT_RC(R.err, TR_EINVAL);
	TT_ASSERT(strstr(R.message, "argv[3]") != NULL);
	TT_ASSERT(CMD(S("SET"), ((arg){'a', NULL, 0, 0}), S("v")) == 0);
	TT_RC(R.err, TR_EINVAL);

	/* Commands that would change the shared connection. */
	TT_ASSERT(CMD(S("subscribe"), S("ch")) == 0);
	TT_RC(R.err, TR_EINVAL);
	TT_ASSERT(CMD(S("MONITOR")) == 0);
	TT_RC(R.err, TR_EINVAL);
	TT_ASSERT(CMD(S("SELECT"), I(3)) == 0);
	TT_RC(R.err, TR_EINVAL);
	TT_ASSERT(CMD(S("CLIENT"), S("reply"), S("off")) == 0);
	TT_RC(R.err, TR_EINVAL);
	TT_ASSERT(CMD(S("HELLO"), I(3)) == 0);
	TT_RC(R.err, TR_EINVAL);
	TT_ASSERT(CMD(S("Multi")) == 0);
	TT_RC(R.err, TR_EINVAL);

	/* An unknown tag. */
	set_cmd((const arg[]){S("PING")}, 1);
	next_tag = TR_TAG_REDIS_CMD + 7;
	TT_ASSERT(call() == 0);
	TT_RC(R.err, TR_EINVAL);

	/* Scripts: no script, an empty one, keys that are no array. */
	next_req.len = 0;
	msgpack_pack_map(&pk, 1);
	tr__mp_pack_cstr(&pk, "keys");
	msgpack_pack_array(&pk, 0);
	next_tag = TR_TAG_REDIS_SCRIPT;
	TT_ASSERT(call() == 0);
	TT_RC(R.err, TR_EINVAL);
	set_script("", NULL, 0, NULL, 0);
	TT_ASSERT(call() == 0);
	TT_RC(R.err, TR_EINVAL);
	next_req.len = 0;
	msgpack_pack_map(&pk, 2);
	tr__mp_pack_cstr(&pk, "script");
	tr__mp_pack_cstr(&pk, "return 1");
	tr__mp_pack_cstr(&pk, "keys");
	tr__mp_pack_cstr(&pk, "k");
	TT_ASSERT(call() == 0);
	TT_RC(R.err, TR_EINVAL);
	TT_ASSERT(strstr(R.message, "keys") != NULL);
	set_script("return 1", (const arg[]){((arg){'f', NULL, 0, 0})}, 1, NULL, 0);
	TT_ASSERT(call() == 0);
	TT_RC(R.err, TR_EINVAL);

	/* None of that reached the server or hurt the connection. */
	TT_ASSERT(CMD(S("PING")) == 0);
	TT_ASSERT(is_str(R.reply, "PONG"));
	TT_EQ(ST(connects), 1);
	TT_EQ(ST(script_loads), 0);
	stop();
}

static const char *bucket_lua =
    "local cap = tonumber(ARGV[1])\n"
    "local v = redis.call('GET', KEYS[1])\n"
    "local tokens = cap\n"
    "if v then tokens = tonumber(v) end\n"
    "if tokens <= 0 then return {0, tokens} end\n"
    "redis.call('SET', KEYS[1], tokens - 1, 'EX', tonumber(ARGV[2]))\n"
    "return {1, tokens - 1}\n";

/* Takes one token from `bucket`; 0 with *ok, *left. */
static int take_token(int *ok, int *left)
{
	set_script(bucket_lua, (const arg[]){S("bucket")}, 1, (const arg[]){I(3), S("60")}, 2);
	if (call() != 0 || R.err != 0 || arr_len(R.reply) != 2)
		return -1;
	*ok = (int)elem(R.reply, 0)->via.i64;
	*left = (int)elem(R.reply, 1)->via.i64;
	return 0;
}

TT_TEST(scripts)
{
	int ok, left;
	TT_ASSERT(srv_need() == 0);
	TT_OK(start((tr_redis_opts){.port = srv_port}));
	TT_ASSERT(wait_up(1, 3000));
	TT_ASSERT(CMD(S("SCRIPT"), S("FLUSH")) == 0);
	TT_ASSERT(is_str(R.reply, "OK"));
	TT_ASSERT(CMD(S("DEL"), S("bucket")) == 0);

	/* First call: NOSCRIPT, SCRIPT LOAD, retry. Then by SHA-1 only. */
	TT_ASSERT(take_token(&ok, &left) == 0);
	TT_EQ(ok, 1);
	TT_EQ(left, 2);
	TT_EQ(ST(script_loads), 1);
	TT_ASSERT(take_token(&ok, &left) == 0);
	TT_EQ(left, 1);
	TT_ASSERT(take_token(&ok, &left) == 0);
	TT_EQ(left, 0);
	TT_ASSERT(take_token(&ok, &left) == 0);
	TT_EQ(ok, 0);
	TT_EQ(left, 0);
	TT_EQ(ST(script_loads), 1);

	/* A flushed server: loaded again, still right. */
	TT_ASSERT(CMD(S("SCRIPT"), S("FLUSH")) == 0);
	TT_ASSERT(is_str(R.reply, "OK"));
	TT_ASSERT(CMD(S("DEL"), S("bucket")) == 0);
	TT_ASSERT(take_token(&ok, &left) == 0);
	TT_EQ(ok, 1);
	TT_EQ(left, 2);
	TT_EQ(ST(script_loads), 2);
	TT_ASSERT(take_token(&ok, &left) == 0);
	TT_EQ(left, 1);
	TT_EQ(ST(script_loads), 2);

	/* Nested arrays, nil (Lua false), a status inside an array, binary
	 * and integer keys and arguments. */
	set_script("return {1, 'two', {3, false, {ARGV[1]}}, redis.status_reply('FINE'), KEYS[1], "
	           "#KEYS, #ARGV}",
	           (const arg[]){B("k\0b"), I(-5)}, 2, (const arg[]){B("\x01\x00\xfe")}, 1);
	TT_ASSERT(call() == 0);
	TT_EQ(R.err, 0);
	TT_EQ(arr_len(R.reply), 7);
	TT_ASSERT(is_int(elem(R.reply, 0), 1));
	TT_ASSERT(is_str(elem(R.reply, 1), "two"));
	const msgpack_object *in = elem(R.reply, 2);
	TT_EQ(arr_len(in), 3);
	TT_ASSERT(is_int(elem(in, 0), 3));
	TT_EQ(elem(in, 1)->type, MSGPACK_OBJECT_NIL);
	TT_EQ(arr_len(elem(in, 2)), 1);
	TT_EQ(elem(elem(in, 2), 0)->type, MSGPACK_OBJECT_BIN);
	TT_EQ(elem(elem(in, 2), 0)->via.bin.size, 3);
	TT_ASSERT(is_str(elem(R.reply, 3), "FINE"));
	TT_EQ(elem(R.reply, 4)->type, MSGPACK_OBJECT_STR); /* "k\0b" is valid UTF-8 */
	TT_EQ(elem(R.reply, 4)->via.str.size, 3);
	TT_ASSERT(is_int(elem(R.reply, 5), 2));
	TT_ASSERT(is_int(elem(R.reply, 6), 1));

	/* An error nested in an array is its text. */
	set_script("return {1, redis.error_reply('nested bad')}", NULL, 0, NULL, 0);
	TT_ASSERT(call() == 0);
	TT_EQ(R.err, 0);
	TT_EQ(arr_len(R.reply), 2);
	TT_EQ(elem(R.reply, 1)->type, MSGPACK_OBJECT_STR);
	TT_ASSERT(memmem(elem(R.reply, 1)->via.str.ptr, elem(R.reply, 1)->via.str.size, "nested bad",
	                 10) != NULL);

	/* Script errors: at run time, and one that does not compile (the
	 * SCRIPT LOAD's error is the answer). */
	long long loads = ST(script_loads);
	set_script("return redis.error_reply('BUCKET empty')", NULL, 0, NULL, 0);
	TT_ASSERT(call() == 0);
	TT_RC(R.err, TR_EFAILED);
	TT_ASSERT(strstr(R.message, "BUCKET empty") != NULL);
	set_script("return (", NULL, 0, NULL, 0);
	TT_ASSERT(call() == 0);
	TT_RC(R.err, TR_EFAILED);
	TT_ASSERT(strstr(R.message, "compil") != NULL);
	TT_EQ(ST(script_loads), loads + 2);
	TT_EQ(ST(pending), 0);
	stop();
}

TT_TEST(select_db)
{
	char line[64] = "", cmd[256];
	TT_ASSERT(srv_need() == 0);
	TT_OK(start((tr_redis_opts){.port = srv_port, .db = 2}));
	TT_ASSERT(wait_up(1, 3000));
	TT_ASSERT(CMD(S("SET"), S("dbkey"), S("in-two")) == 0);
	TT_ASSERT(is_str(R.reply, "OK"));
	/* Seen in database 2 by another client, not in 0. */
	snprintf(cmd, sizeof(cmd), "redis-cli -h 127.0.0.1 -p %d -n 2 get dbkey", srv_port);
	FILE *f = popen(cmd, "r");
	TT_ASSERT(f != NULL);
	if (fgets(line, sizeof(line), f) == NULL)
		line[0] = '\0';
	pclose(f);
	TT_ASSERT(strncmp(line, "in-two", 6) == 0);
	TT_ASSERT(CMD(S("EXISTS"), S("dbkey")) == 0);
	TT_ASSERT(is_int(R.reply, 1));
	stop();

	TT_OK(start((tr_redis_opts){.port = srv_port}));
	TT_ASSERT(wait_up(1, 3000));
	TT_ASSERT(CMD(S("EXISTS"), S("dbkey")) == 0);
	TT_ASSERT(is_int(R.reply, 0));
	stop();

	/* A database the server refuses: never up, retried, said why. */
	TT_OK(start((tr_redis_opts){.port = srv_port, .db = 100000}));
	uint64_t t0 = tr_now_ns();
	while (ST(connect_failures) < 2 && tr_now_ns() - t0 < 3000000000ull)
		tn_sleep_ms(5);
	TT_ASSERT(ST(connect_failures) >= 2);
	TT_EQ(ST(up), 0);
	TT_EQ(ST(connects), 0);
	char le[256];
	tr_redis_last_error(cli, le, sizeof(le));
	TT_ASSERT(strstr(le, "SELECT") != NULL);
	TT_ASSERT(CMD(S("PING")) == 0);
	TT_RC(R.err, TR_EIO);
	stop();
}

TT_TEST(timeout)
{
	TT_ASSERT(srv_need() == 0);
	TT_OK(start((tr_redis_opts){.port = srv_port, .timeout_us = 150000}));
	TT_ASSERT(wait_up(1, 3000));

	/* Blocked server-side for 2 s; the client gives up at 150 ms. */
	set_cmd((const arg[]){S("BLPOP"), S("never-filled"), I(2)}, 3);
	uint64_t t0 = tr_now_ns();
	TT_ASSERT(kick(2, 3000));
	uint64_t ms = (tr_now_ns() - t0) / 1000000u;
	TT_ASSERT(decode(0) == 0);
	TT_RC(R.err, TR_ETIMEDOUT);
	TT_ASSERT(strstr(R.message, "150 ms") != NULL);
	TT_ASSERT(decode(1) == 0);
	TT_ASSERT(R.err == TR_ETIMEDOUT || R.err == TR_EIO);
	TT_ASSERT(ms >= 140);
	TT_LE(ms, 1500);
	TT_ASSERT(ST(timeouts) >= 1);
	TT_EQ(ST(disconnects), 1);
	TT_EQ(ST(pending), 0);

	/* It reconnects by itself, and works. */
	TT_ASSERT(wait_up(1, 3000));
	TT_ASSERT(CMD(S("SET"), S("after-timeout"), S("yes")) == 0);
	TT_EQ(R.err, 0);
	TT_ASSERT(CMD(S("GET"), S("after-timeout")) == 0);
	TT_ASSERT(is_str(R.reply, "yes"));
	TT_EQ(ST(connects), 2);
	stop();
}

TT_TEST(refused)
{
	int port = dead_port();
	TT_ASSERT(port > 0);
	uint64_t t0 = tr_now_ns();
	TT_OK(start((tr_redis_opts){.port = port}));
	/* Reported at once, not after the connect timeout (1 s), and never a
	 * hang (the stock adapter's bug). */
	while (ST(connect_failures) < 1 && tr_now_ns() - t0 < 2000000000ull)
		tn_sleep_ms(1);
	TT_ASSERT(ST(connect_failures) >= 1);
	TT_LE((tr_now_ns() - t0) / 1000000u, 500);
	TT_EQ(ST(up), 0);

	/* Asks fail at once with TR_EIO while down. */
	TT_ASSERT(CMD(S("GET"), S("x")) == 0);
	TT_RC(R.err, TR_EIO);
	TT_LE(R.ms, 500);
	TT_ASSERT(strstr(R.message, "not connected") != NULL);
	TT_EQ(ST(unavailable), 1);
	char le[256];
	tr_redis_last_error(cli, le, sizeof(le));
	TT_ASSERT(strstr(le, "refused") != NULL);

	/* And it keeps trying, with backoff. */
	while (ST(connect_failures) < 3 && tr_now_ns() - t0 < 4000000000ull)
		tn_sleep_ms(5);
	TT_ASSERT(ST(connect_failures) >= 3);
	TT_EQ(ST(connects), 0);
	stop();
}

TT_TEST(connect_timeout)
{
	/* Connects (the backlog), but SELECT is never answered. */
	int port = 0;
	int fd = mute_listener(&port);
	TT_ASSERT(fd >= 0);
	uint64_t t0 = tr_now_ns();
	TT_OK(start((tr_redis_opts){.port = port, .db = 1, .connect_timeout_us = 150000}));
	while (ST(connect_failures) < 1 && tr_now_ns() - t0 < 3000000000ull)
		tn_sleep_ms(2);
	uint64_t ms = (tr_now_ns() - t0) / 1000000u;
	int failures = (int)ST(connect_failures);
	close(fd);
	TT_ASSERT(failures >= 1);
	TT_ASSERT(ms >= 140);
	TT_LE(ms, 1500);
	TT_EQ(ST(up), 0);
	char le[256];
	tr_redis_last_error(cli, le, sizeof(le));
	TT_ASSERT(strstr(le, "timed out") != NULL);
	TT_ASSERT(CMD(S("PING")) == 0);
	TT_RC(R.err, TR_EIO);
	stop();
}

TT_TEST(server_restart)
{
	TT_ASSERT(srv_need() == 0);
	TT_OK(start((tr_redis_opts){.port = srv_port, .timeout_us = 4000000}));
	TT_ASSERT(wait_up(1, 3000));

	/* Three commands blocked in the server when it dies. */
	set_cmd((const arg[]){S("BLPOP"), S("restart-list"), I(5)}, 3);
	TT_ASSERT(kick(3, 0));
	int three = 3;
	TT_ASSERT(tn_wait(pending_is_, &three, 2000));
	TT_ASSERT(srv_pid > 0 && kill(srv_pid, SIGKILL) == 0);
	uint64_t t0 = tr_now_ns();
	TT_ASSERT(wait_done(3, 2000));
	TT_LE((tr_now_ns() - t0) / 1000000u, 1000);
	for (int i = 0; i < 3; i++) {
		TT_ASSERT(decode(i) == 0);
		TT_ASSERT(R.err == TR_EIO || R.err == TR_ETIMEDOUT);
		TT_ASSERT(R.message[0] != '\0');
	}
	TT_ASSERT(wait_up(0, 1000));
	TT_EQ(ST(pending), 0);
	/* Often 1; 2 when a reconnect reached the dying server's listening
	 * socket (its backlog) before the kernel closed it. */
	TT_ASSERT(wait_stat(&st()->disconnects, 1, 1000));
	TT_ASSERT(CMD(S("PING")) == 0);
	TT_RC(R.err, TR_EIO);

	/* Started again on the same port: back by itself. */
	int port = srv_port;
	TT_ASSERT(srv_run("restart") == 0);
	TT_EQ(srv_port, port);
	TT_ASSERT(wait_up(1, 8000));
	TT_ASSERT(CMD(S("SET"), S("after-restart"), S("1")) == 0);
	TT_ASSERT(is_str(R.reply, "OK"));
	TT_ASSERT(CMD(S("GET"), S("after-restart")) == 0);
	TT_ASSERT(is_str(R.reply, "1"));
	TT_ASSERT(ST(connects) >= 2);
	stop();
}

TT_TEST(max_pending)
{
	TT_ASSERT(srv_need() == 0);
	TT_OK(start((tr_redis_opts){.port = srv_port, .timeout_us = 3000000, .max_pending = 3}));
	TT_ASSERT(wait_up(1, 3000));

	set_cmd((const arg[]){S("BLPOP"), S("pending-list"), S("0.4")}, 3);
	TT_ASSERT(kick(3, 0));
	int three = 3;
	TT_ASSERT(tn_wait(pending_is_, &three, 2000));
	TT_ASSERT(CMD(S("PING")) == 0);
	TT_RC(R.err, TR_EREJECTED);
	TT_ASSERT(strstr(R.message, "in flight") != NULL);
	TT_EQ(ST(rejected), 1);

	/* The three end normally (nil after 0.4 s), then there is room. */
	TT_ASSERT(wait_done(4, 3000));
	for (int i = 0; i < 3; i++) {
		TT_ASSERT(decode(i) == 0);
		TT_EQ(R.err, 0);
		TT_EQ(R.reply->type, MSGPACK_OBJECT_NIL);
	}
	TT_ASSERT(CMD(S("PING")) == 0);
	TT_ASSERT(is_str(R.reply, "PONG"));
	TT_EQ(ST(pending), 0);
	TT_EQ(ST(disconnects), 0);
	stop();
}

static int unregistered_(void *ud)
{
	tr_ref r;
	(void)ud;
	return tr_whereis(node, TR_REDIS_NAME, &r) != TR_OK;
}

TT_TEST(stop_in_flight)
{
	TT_ASSERT(srv_need() == 0);
	TT_OK(start((tr_redis_opts){.port = srv_port, .timeout_us = 5000000}));
	TT_ASSERT(wait_up(1, 3000));

	/* The actor alone stops: its pending asks get TR_ESHUTDOWN. */
	set_cmd((const arg[]){S("BLPOP"), S("stop-list"), I(3)}, 3);
	TT_ASSERT(kick(3, 0));
	int three = 3;
	TT_ASSERT(tn_wait(pending_is_, &three, 2000));
	tr_msg *m = tr_msg_new();
	TT_ASSERT(m != NULL);
	m->tag = TR_TAG_STOP;
	m->flags = TR_MSGF_SYSTEM;
	m->err = TR_ESHUTDOWN;
	TT_OK(tr_node_send(node, redis_ref, m));
	TT_ASSERT(wait_done(3, 2000));
	for (int i = 0; i < 3; i++) {
		TT_ASSERT(decode(i) == 0);
		TT_RC(R.err, TR_ESHUTDOWN);
		TT_ASSERT(strstr(R.message, "stopping") != NULL);
	}
	TT_EQ(ST(up), 0);
	TT_EQ(ST(pending), 0);
	TT_ASSERT(tn_wait(unregistered_, NULL, 2000)); /* the name goes after terminate */
	stop();

	/* The whole node stops with commands in flight: it ends promptly
	 * and frees everything (LSan checks the adapter and timers). */
	TT_OK(start((tr_redis_opts){.port = srv_port, .timeout_us = 5000000}));
	TT_ASSERT(wait_up(1, 3000));
	TT_ASSERT(kick(3, 0));
	TT_ASSERT(tn_wait(pending_is_, &three, 2000));
	uint64_t t0 = tr_now_ns();
	tn_stop(node);
	node = NULL;
	TT_LE((tr_now_ns() - t0) / 1000000u, 2000);
	TT_EQ(ST(up), 0);
	TT_EQ(ST(pending), 0);
	stop();
}

TT_TEST(bad_options)
{
	char err[256];
	tr_redis *r = NULL;
	node = tn_start(1);
	TT_ASSERT(node != NULL);
	TT_RC(tr_redis_start(node, 0, &(tr_redis_opts){.host = "localhost", .port = 6379}, &r, err,
	                     sizeof(err)),
	      TR_EINVAL);
	TT_ASSERT(strstr(err, "numeric") != NULL);
	TT_RC(tr_redis_start(node, 0, &(tr_redis_opts){.host = "127.0.0.1", .port = 0}, &r, err,
	                     sizeof(err)),
	      TR_EINVAL);
	TT_RC(tr_redis_start(node, 0, &(tr_redis_opts){.host = "127.0.0.1", .port = 70000}, &r,
	                     err, sizeof(err)),
	      TR_EINVAL);
	TT_RC(tr_redis_start(node, 0, &(tr_redis_opts){.host = "::1", .port = 1, .db = -1}, &r,
	                     err, sizeof(err)),
	      TR_EINVAL);
	TT_RC(tr_redis_start(node, 5, &(tr_redis_opts){.host = "::1", .port = 1}, &r, err,
	                     sizeof(err)),
	      TR_EINVAL);
	TT_ASSERT(r == NULL);
	/* A second client on one node: the name is taken. */
	TT_OK(tr_redis_start(node, 0, &(tr_redis_opts){.host = "::1", .port = dead_port()}, &r,
	                     err, sizeof(err)));
	tr_redis *r2 = NULL;
	TT_RC(tr_redis_start(node, 0, &(tr_redis_opts){.host = "::1", .port = 1}, &r2, err,
	                     sizeof(err)),
	      TR_EEXIST);
	TT_ASSERT(r2 == NULL);
	tn_stop(node);
	node = NULL;
	tr_redis_free(r);
}

static void cleanup(void)
{
	stop();
	if (R.have_u)
		msgpack_unpacked_destroy(&R.u);
	R.have_u = 0;
	if (mu_inited) {
		tr_buf_free(&req);
		tr_buf_free(&next_req);
		for (int i = 0; i < MAXR; i++)
			tr_buf_free(&res[i].body);
	}
	srv_stop();
}

TT_TEST(zz_cleanup)
{
	(void)tt_failed;
	cleanup();
}

TT_LIST = {
	TT_ENTRY(commands),
	TT_ENTRY(bad_requests),
	TT_ENTRY(scripts),
	TT_ENTRY(select_db),
	TT_ENTRY(timeout),
	TT_ENTRY(refused),
	TT_ENTRY(connect_timeout),
	TT_ENTRY(server_restart),
	TT_ENTRY(max_pending),
	TT_ENTRY(stop_in_flight),
	TT_ENTRY(bad_options),
	TT_ENTRY(zz_cleanup),
	TT_END,
};

TT_MAIN()
