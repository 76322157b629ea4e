/*
 * db/pg.c -- the node's PostgreSQL pool actor (contract: db/pg.h).
 *
 * One pinned actor owns every connection. It runs on its worker's loop:
 * requests arrive in receive(), and everything else happens in the uv
 * callbacks of its handles (libuv runs those between the actor's turns,
 * never during one), which answer through the io ctx kept from init.
 *
 * Design notes.
 *  - Handles. A connection has a uv_poll_t (bound to the fd number libpq
 *    gives; rebound when libpq swaps sockets while connecting) and a
 *    uv_timer_t (connect timeout, pre-ping timeout, or the watchdog of a
 *    running query). The pool has a backoff timer and a deadline timer.
 *    Each handle is its own allocation and its close callback frees only
 *    that handle, so close order does not matter and nothing a close
 *    callback touches dies with the actor (whose state is freed right
 *    after terminate(), before the loop runs those callbacks).
 *  - Polling. The poll handle is stopped before every PQconnectPoll step
 *    and before PQfinish (the fd number may be reused at once), and
 *    started again only when the wanted mask changes (uv_poll_start
 *    costs an epoll_ctl DEL + ADD). A negative status (libuv's POLLERR,
 *    which stops the handle) is handed to libpq as the events we waited
 *    for: libpq reads SO_ERROR itself.
 *  - Waiters. A request that finds no idle connection waits in one FIFO
 *    list. It is admitted when the waiters beyond the connections being
 *    opened (or about to be) number fewer than `queue`. pump() is the
 *    one place that matches idle connections with waiters and opens
 *    connections; every event ends with it.
 *  - Reachability. `live` connections are established ones. With none
 *    live and the backoff running, a request fails at once (TR_EIO): the
 *    server was just found unreachable. The pool always keeps one
 *    connection open or opening (the one opened at start), so it finds
 *    out by itself when the server is back.
 */
#include <arpa/inet.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <msgpack.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/util.h"
#include "db/pg.h"
#include "msg/msg_int.h"
#include "pipe/mp.h"
#include "sched/sched.h"

/* Type OIDs (catalog/pg_type_d.h is a server header, not in libpq-dev). */
#define OID_BOOL 16
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_FLOAT4 700
#define OID_FLOAT8 701
#define OID_NUMERIC 1700

#define BACKOFF_BASE_MS 100
#define BACKOFF_MAX_MS 5000

/* Upper bounds of the wait histogram buckets, µs (the last is +Inf). */
static const uint64_t wait_bounds_us[11] = {100,   500,   1000,   2000,   5000,   10000,
                                            25000, 50000, 100000, 250000, 1000000};

struct tr_pg {
	tr_pg_stats st;
	/* set by tr_pg_start, read-only after */
	uint32_t pool, queue;
	uint64_t connect_timeout_ms, max_lifetime_ns, idle_timeout_ns, statement_timeout_ms;
	bool pgbouncer;
	PQconninfoOption *parsed; /* owns the strings kw/val point to (libpq's malloc) */
	const char **kw, **val;   /* NULL-terminated, for PQconnectStartParams */
	char *options;            /* our `options` value (statement_timeout) */
	tr_ref ref;
	/* written by the worker, read by anyone */
	uv_mutex_t mu;
	char last_err[256];
};

/* A circular doubly linked list node; a list is a sentinel node. */
typedef struct lnode {
	struct lnode *prev, *next;
} lnode;

static void l_init(lnode *l)
{
	l->prev = l->next = l;
}

static int l_empty(const lnode *l)
{
	return l->next == l;
}

static void l_push_back(lnode *l, lnode *n)
{
	n->prev = l->prev;
	n->next = l;
	l->prev->next = n;
	l->prev = n;
}

static void l_push_front(lnode *l, lnode *n)
{
	n->next = l->next;
	n->prev = l;
	l->next->prev = n;
	l->next = n;
}

static void l_del(lnode *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	n->prev = n->next = n;
}

#define L_ENTRY(p, type, field) ((type *)(void *)((char *)(p)-offsetof(type, field)))

/* A request: the ask (owned), then in the same block the value pointers,
 * the SQL and the parameter texts. */
typedef struct preq {
	lnode wl;             /* in the wait list */
	tr_msg *m;            /* the ask, tr_take()n */
	const char *sql;      /* NUL-terminated */
	const char **vals;    /* nparams values (NULL = SQL NULL) */
	int nparams;
	uint64_t t0_ns;       /* when it arrived */
} preq;

enum { C_CONNECTING = 1, C_IDLE, C_PING, C_BUSY };

typedef struct pconn {
	lnode all;            /* every connection */
	lnode il;             /* in the idle list while C_IDLE */
	struct pstate *ps;
	PGconn *pg;
	uv_poll_t *poll;      /* NULL until the first socket */
	uv_timer_t *tmr;
	int fd;               /* the fd `poll` is bound to */
	int events;           /* mask poll is started with; 0 = stopped */
	int st;
	uint64_t born_ns, idle_ns;
	preq *r;              /* C_PING, C_BUSY: the request */
	PGresult *res;        /* C_PING, C_BUSY: the result kept so far */
} pconn;

typedef struct pstate {
	tr_pg *h;
	tr_ctx io;
	uv_loop_t *loop;
	lnode conns, idle, waiters;
	uint32_t nconns, nconnecting, nlive, nidle, nwait;
	uv_timer_t *backoff_t, *deadline_t;
	int backoff;          /* the backoff timer runs: no connects meanwhile */
	unsigned attempt;     /* failed connects in a row */
	uint64_t deadline_due_us; /* what deadline_t is armed for; 0 = not */
	uint64_t rng;
	int stopping;
	int pumping, repump;  /* pump() is running; run it once more */
	tr_ctx *cur;          /* the real ctx during receive(), else NULL */
} pstate;

/* ---- small helpers ------------------------------------------------------ */

static void add(atomic_uint_fast64_t *c, uint64_t n)
{
	atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static void publish(pstate *ps)
{
	tr_pg_stats *s = &ps->h->st;
	atomic_store_explicit(&s->open, ps->nlive, memory_order_relaxed);
	atomic_store_explicit(&s->idle, ps->nidle, memory_order_relaxed);
	atomic_store_explicit(&s->busy, ps->nlive - ps->nidle, memory_order_relaxed);
	atomic_store_explicit(&s->queued, ps->nwait, memory_order_relaxed);
}

static void set_up(pstate *ps, int up)
{
	atomic_store_explicit(&ps->h->st.up, up, memory_order_relaxed);
}

/* libpq's messages end with a newline and may hold several lines (a
 * tab-indented hint): kept as one line. */
static void set_last_error(pstate *ps, const char *msg)
{
	tr_pg *h = ps->h;
	size_t k = 0;
	int sp = 0;
	uv_mutex_lock(&h->mu);
	for (const char *p = msg; *p && k + 1 < sizeof(h->last_err); p++) {
		if (*p == '\n' || *p == '\t' || *p == '\r' || *p == ' ') {
			sp = k > 0;
			continue;
		}
		if (sp && k + 2 < sizeof(h->last_err))
			h->last_err[k++] = ' ';
		sp = 0;
		h->last_err[k++] = *p;
	}
	h->last_err[k] = '\0';
	uv_mutex_unlock(&h->mu);
}

/* The ctx to answer with: receive()'s own, or the io ctx in callbacks. */
static tr_ctx *cx(pstate *ps)
{
	return ps->cur != NULL ? ps->cur : &ps->io;
}

static uint64_t rnd(pstate *ps)
{
	return tr__xorshift(&ps->rng);
}


/* ---- replies ------------------------------------------------------------ */

static void req_free(preq *r)
{
	tr_msg_free(r->m);
	tr__free(r);
}

/* An error reply {message, sqlstate?} to the ask m (not consumed). */
static void reply_fail_msg(pstate *ps, const tr_msg *m, int err, const char *sqlstate,
                           const char *fmt, ...)
{
	char text[512];
	va_list ap;
	tr_buf b;
	msgpack_packer pk;
	int bad = 0;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	size_t n = strlen(text);
	while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == ' '))
		text[--n] = '\0';
	add(&ps->h->st.errors, 1);
	if (err == TR_ETIMEDOUT)
		add(&ps->h->st.timeouts, 1);
	else if (err == TR_EREJECTED)
		add(&ps->h->st.rejected, 1);
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	bad |= msgpack_pack_map(&pk, sqlstate != NULL ? 2 : 1);
	bad |= tr__mp_pack_cstr(&pk, "message");
	bad |= tr__mp_pack_cstr(&pk, text);
	if (sqlstate != NULL) {
		bad |= tr__mp_pack_cstr(&pk, "sqlstate");
		bad |= tr__mp_pack_cstr(&pk, sqlstate);
	}
	tr_msg *rep = bad ? NULL : tr_msg_new();
	if (rep != NULL && (rep->body = tr_body_new(b.data, b.len)) == NULL) {
		tr_msg_free(rep);
		rep = NULL;
	}
	tr_buf_free(&b);
	if (rep == NULL) {
		(void)tr_reply_error(cx(ps), m, err);
		return;
	}
	rep->flags = TR_MSGF_ERROR;
	rep->err = err;
	(void)tr_reply(cx(ps), m, rep);
}

/* Answers a request with an error and frees it. */
static void req_fail(pstate *ps, preq *r, int err, const char *sqlstate, const char *text)
{
	reply_fail_msg(ps, r->m, err, sqlstate, "%s", text);
	req_free(r);
}

static int pack_value(msgpack_packer *pk, const PGresult *res, int row, int col)
{
	if (PQgetisnull(res, row, col))
		return msgpack_pack_nil(pk);
	const char *v = PQgetvalue(res, row, col);
	char *end;
	switch (PQftype(res, col)) {
	case OID_BOOL:
		return v[0] == 't' ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
	case OID_INT2:
	case OID_INT4:
	case OID_INT8: {
		long long x = strtoll(v, &end, 10);
		if (end != v && *end == '\0')
			return msgpack_pack_int64(pk, x);
		break;
	}
	case OID_FLOAT4:
	case OID_FLOAT8:
	case OID_NUMERIC: {
		/* NaN, Infinity and -Infinity are what the server prints. */
		double x = strtod(v, &end);
		if (end != v && *end == '\0')
			return msgpack_pack_double(pk, x);
		break;
	}
	default:
		break;
	}
	return tr__mp_pack_cstr(pk, v);
}

/* {columns, rows, affected} of a successful result. */
static int pack_result(const PGresult *res, tr_buf *b)
{
	msgpack_packer pk;
	int bad = 0;
	int ncols = res ? PQnfields(res) : 0, nrows = res ? PQntuples(res) : 0;
	const char *aff = res ? PQcmdTuples((PGresult *)res) : "";

	tr__mp_packer(&pk, b);
	bad |= msgpack_pack_map(&pk, 3);
	bad |= tr__mp_pack_cstr(&pk, "columns");
	bad |= msgpack_pack_array(&pk, (size_t)ncols);
	for (int c = 0; c < ncols && !bad; c++)
		bad |= tr__mp_pack_cstr(&pk, PQfname(res, c));
	bad |= tr__mp_pack_cstr(&pk, "rows");
	bad |= msgpack_pack_array(&pk, (size_t)nrows);
	for (int r = 0; r < nrows && !bad; r++) {
		bad |= msgpack_pack_array(&pk, (size_t)ncols);
		for (int c = 0; c < ncols && !bad; c++)
			bad |= pack_value(&pk, res, r, c);
	}
	bad |= tr__mp_pack_cstr(&pk, "affected");
	bad |= msgpack_pack_uint64(&pk, aff[0] ? strtoull(aff, NULL, 10) : 0);
	return bad ? TR_ENOMEM : TR_OK;
}

static void reply_result(pstate *ps, preq *r, const PGresult *res)
{
	tr_buf b;
	tr_buf_init(&b);
	tr_msg *rep = NULL;
	if (pack_result(res, &b) == TR_OK && (rep = tr_msg_new()) != NULL &&
	    (rep->body = tr_body_new(b.data, b.len)) == NULL) {
		tr_msg_free(rep);
		rep = NULL;
	}
	tr_buf_free(&b);
	if (rep == NULL)
		req_fail(ps, r, TR_EFAILED, NULL, "out of memory building the reply");
	else {
		(void)tr_reply(cx(ps), r->m, rep);
		req_free(r);
	}
}

/* The tr_err of a failed statement. */
static int map_sqlstate(const char *s)
{
	if (s == NULL || strlen(s) != 5)
		return TR_EFAILED;
	if (strcmp(s, "57014") == 0)
		return TR_ETIMEDOUT;
	/* 08P01 from a running session is a bad bind: a parameter count that
	 * does not match the statement's. */
	if (strncmp(s, "22", 2) == 0 || strncmp(s, "42", 2) == 0 || strcmp(s, "08P01") == 0)
		return TR_EINVAL;
	/* The session is gone: connection exceptions, operator intervention
	 * (shutdown, terminated backend). */
	if (strncmp(s, "08", 2) == 0 || strncmp(s, "57P", 3) == 0)
		return TR_EIO;
	return TR_EFAILED;
}

static void reply_pg_error(pstate *ps, preq *r, const PGresult *res, int conn_bad)
{
	const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	int err = conn_bad ? TR_EIO : map_sqlstate(st);
	if (msg == NULL)
		msg = PQresultErrorMessage(res);
	if (msg == NULL || msg[0] == '\0')
		msg = PQresStatus(PQresultStatus(res));
	req_fail(ps, r, err, st, msg);
}

/* ---- the wait list and its deadlines ------------------------------------ */

static void deadline_cb(uv_timer_t *t);

static void arm_deadline(pstate *ps, uint64_t due_us)
{
	if (ps->deadline_t == NULL || (ps->deadline_due_us != 0 && ps->deadline_due_us <= due_us))
		return;
	uint64_t now = tr_wall_us();
	uint64_t ms = due_us > now ? (due_us - now + 999) / 1000 : 0;
	ps->deadline_due_us = due_us;
	uv_timer_start(ps->deadline_t, deadline_cb, ms, 0);
}

static void wait_push(pstate *ps, preq *r, int front)
{
	if (front)
		l_push_front(&ps->waiters, &r->wl);
	else
		l_push_back(&ps->waiters, &r->wl);
	ps->nwait++;
	if (r->m->deadline != 0)
		arm_deadline(ps, r->m->deadline);
}

static preq *wait_pop(pstate *ps)
{
	if (l_empty(&ps->waiters))
		return NULL;
	preq *r = L_ENTRY(ps->waiters.next, preq, wl);
	l_del(&r->wl);
	ps->nwait--;
	return r;
}

/* Every waiter gets err (with the pool's last error as message). */
static void fail_waiters(pstate *ps, int err, const char *why)
{
	preq *r;
	while ((r = wait_pop(ps)) != NULL)
		req_fail(ps, r, err, NULL, why);
}

static void pump(pstate *ps);

static void deadline_cb(uv_timer_t *t)
{
	pstate *ps = t->data;
	uint64_t now = tr_wall_us(), next = 0;
	ps->deadline_due_us = 0;
	for (lnode *n = ps->waiters.next, *nx; n != &ps->waiters; n = nx) {
		nx = n->next;
		preq *r = L_ENTRY(n, preq, wl);
		uint64_t d = r->m->deadline;
		if (d == 0)
			continue;
		if (d <= now) {
			l_del(&r->wl);
			ps->nwait--;
			reply_fail_msg(ps, r->m, TR_ETIMEDOUT, NULL,
			               "the deadline passed after %.1f ms waiting for a connection",
			               (double)(tr_now_ns() - r->t0_ns) / 1e6);
			req_free(r);
		} else if (next == 0 || d < next) {
			next = d;
		}
	}
	if (next != 0)
		arm_deadline(ps, next);
	publish(ps);
}

/* ---- connections: polling ------------------------------------------------ */

static void poll_cb(uv_poll_t *h, int status, int events);

/* Starts c's poll handle with `ev` unless it already runs with it. */
static void want(pconn *c, int ev)
{
	if (c->poll == NULL || c->events == ev)
		return;
	if (uv_poll_start(c->poll, ev, poll_cb) == 0)
		c->events = ev;
}

static void unpoll(pconn *c)
{
	if (c->poll != NULL && c->events != 0) {
		uv_poll_stop(c->poll);
		c->events = 0;
	}
}

/* Binds the poll handle to fd (a new handle when the fd number changed). */
static int bind_fd(pconn *c, int fd)
{
	if (c->poll != NULL && c->fd == fd)
		return TR_OK;
	if (c->poll != NULL) {
		unpoll(c);
		tr__close_handle((uv_handle_t *)c->poll);
		c->poll = NULL;
	}
	uv_poll_t *p = tr__malloc(sizeof(*p));
	if (p == NULL)
		return TR_ENOMEM;
	if (uv_poll_init(c->ps->loop, p, fd) != 0) {
		tr__free(p);
		return TR_EIO;
	}
	p->data = c;
	c->poll = p;
	c->fd = fd;
	c->events = 0;
	return TR_OK;
}

static void notice_cb(void *arg, const PGresult *res)
{
	/* Server NOTICEs would go to stderr otherwise; nobody asked for them. */
	(void)arg;
	(void)res;
}

/* ---- connections: lifecycle ---------------------------------------------- */

static void conn_timer_cb(uv_timer_t *t);

/* Unlinks and frees c, whatever its state; its request (if any) must have
 * been answered or moved already. */
static void conn_close(pstate *ps, pconn *c)
{
	l_del(&c->all);
	ps->nconns--;
	if (c->st == C_CONNECTING)
		ps->nconnecting--;
	else
		ps->nlive--;
	if (c->il.next != &c->il) { /* in the idle list */
		l_del(&c->il);
		ps->nidle--;
	}
	/* The poll handle goes first: uv_close stops it (epoll_ctl DEL) while
	 * the fd is still open, then PQfinish closes the fd. */
	if (c->poll != NULL) {
		unpoll(c);
		tr__close_handle((uv_handle_t *)c->poll);
	}
	tr__close_handle((uv_handle_t *)c->tmr);
	if (c->res != NULL)
		PQclear(c->res);
	if (c->pg != NULL)
		PQfinish(c->pg);
	tr__free(c);
	publish(ps);
}

/* ---- connections: opening ------------------------------------------------ */

static void backoff_cb(uv_timer_t *t)
{
	pstate *ps = t->data;
	ps->backoff = 0;
	pump(ps);
}

/* Exponential backoff with full jitter: the k-th failure in a row waits
 * uniformly in [0, min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2^k)]. */
static void start_backoff(pstate *ps)
{
	if (ps->backoff)
		return;
	unsigned sh = ps->attempt < 6 ? ps->attempt : 6;
	uint64_t cap = (uint64_t)BACKOFF_BASE_MS << sh;
	if (cap > BACKOFF_MAX_MS)
		cap = BACKOFF_MAX_MS;
	if (ps->attempt < 32)
		ps->attempt++;
	ps->backoff = 1;
	uv_timer_start(ps->backoff_t, backoff_cb, rnd(ps) % (cap + 1), 0);
}

static void stop_backoff(pstate *ps)
{
	ps->attempt = 0;
	if (ps->backoff) {
		uv_timer_stop(ps->backoff_t);
		ps->backoff = 0;
	}
}

/* The tail of a failed connect (c already closed): back off, and when no
 * connection is left to serve them, fail the waiters. */
static void open_failed(pstate *ps, const char *why)
{
	char msg[320];
	set_last_error(ps, why);
	add(&ps->h->st.connect_failures, 1);
	start_backoff(ps);
	if (ps->nlive == 0) {
		set_up(ps, 0);
		if (ps->nconnecting == 0 && ps->nwait > 0) {
			tr_pg_last_error(ps->h, msg, sizeof(msg));
			char text[400];
			snprintf(text, sizeof(text), "the server cannot be reached: %s", msg);
			fail_waiters(ps, TR_EIO, text);
		}
	}
	publish(ps);
}

static void connect_failed(pstate *ps, pconn *c, const char *why)
{
	char msg[320];
	/* why may live in c->pg, which conn_close frees. */
	snprintf(msg, sizeof(msg), "%s", why != NULL && why[0] ? why : "connect failed");
	conn_close(ps, c);
	open_failed(ps, msg);
}

/* Opens one more connection (C_CONNECTING). A failure is handled here
 * (backoff, waiters) and returned. */
static int conn_open(pstate *ps)
{
	tr_pg *h = ps->h;
	pconn *c = tr__calloc(1, sizeof(*c));
	if (c == NULL) {
		open_failed(ps, "out of memory");
		return TR_ENOMEM;
	}
	c->ps = ps;
	c->fd = -1;
	c->st = C_CONNECTING;
	l_init(&c->il);
	l_push_back(&ps->conns, &c->all);
	ps->nconns++;
	ps->nconnecting++;
	if ((c->tmr = tr__malloc(sizeof(*c->tmr))) == NULL) {
		connect_failed(ps, c, "out of memory");
		return TR_ENOMEM;
	}
	uv_timer_init(ps->loop, c->tmr);
	c->tmr->data = c;
	/* hostaddr= or a socket dir: no DNS lookup inside (tr_pg_start
	 * refuses host names). */
	c->pg = PQconnectStartParams(h->kw, h->val, 0);
	if (c->pg == NULL) {
		connect_failed(ps, c, "out of memory");
		return TR_ENOMEM;
	}
	if (PQstatus(c->pg) == CONNECTION_BAD) {
		connect_failed(ps, c, PQerrorMessage(c->pg));
		return TR_EIO;
	}
	PQsetNoticeReceiver(c->pg, notice_cb, NULL);
	int fd = PQsocket(c->pg);
	if (fd < 0 || bind_fd(c, fd) != TR_OK) {
		connect_failed(ps, c, "cannot watch the connection's socket");
		return TR_EIO;
	}
	/* "Before the first PQconnectPoll, behave as if it returned
	 * PGRES_POLLING_WRITING." libpq's connect_timeout does not apply to
	 * PQconnectPoll: this timer is the limit. */
	want(c, UV_WRITABLE);
	uv_timer_start(c->tmr, conn_timer_cb, h->connect_timeout_ms, 0);
	publish(ps);
	return TR_OK;
}

static void conn_idle(pstate *ps, pconn *c, int after_use);

static void connected(pstate *ps, pconn *c)
{
	uv_timer_stop(c->tmr);
	if (PQsetnonblocking(c->pg, 1) != 0) {
		connect_failed(ps, c, PQerrorMessage(c->pg));
		return;
	}
	int fd = PQsocket(c->pg);
	if (fd < 0 || bind_fd(c, fd) != TR_OK) {
		connect_failed(ps, c, "cannot watch the connection's socket");
		return;
	}
	ps->nconnecting--;
	ps->nlive++;
	c->born_ns = tr_now_ns();
	add(&ps->h->st.connects, 1);
	set_up(ps, 1);
	stop_backoff(ps);
	/* Readable for as long as it lives: notices and the server's goodbye
	 * arrive while idle too. */
	want(c, UV_READABLE);
	conn_idle(ps, c, 0);
}

static void connect_step(pstate *ps, pconn *c)
{
	/* Stopped before every step: libpq may close the socket inside (host
	 * list failover) and the next one can get the same number. */
	unpoll(c);
	PostgresPollingStatusType r = PQconnectPoll(c->pg);
	if (r == PGRES_POLLING_OK) {
		connected(ps, c);
		return;
	}
	if (r == PGRES_POLLING_FAILED) {
		connect_failed(ps, c, PQerrorMessage(c->pg));
		return;
	}
	int fd = PQsocket(c->pg);
	if (fd < 0 || bind_fd(c, fd) != TR_OK) {
		connect_failed(ps, c, "cannot watch the connection's socket");
		return;
	}
	want(c, r == PGRES_POLLING_READING ? UV_READABLE : UV_WRITABLE);
}

/* ---- connections: queries ------------------------------------------------ */

/* Sends what libpq holds: 0 done, 1 more to send (watch writable), -1
 * the connection broke. */
static int flush(pconn *c)
{
	int r = PQflush(c->pg);
	if (r >= 0)
		want(c, r == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
	return r;
}

/*
 * An established connection broke (or stopped answering). A request
 * being pre-pinged goes back to the front of the queue, for another
 * connection; one whose query ran gets TR_EIO (it may or may not have
 * run). Then c is closed.
 */
static void conn_broken(pstate *ps, pconn *c, const char *why)
{
	char msg[320];
	size_t n;
	snprintf(msg, sizeof(msg), "%s", why != NULL && why[0] ? why : "the connection broke");
	n = strlen(msg);
	while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
		msg[--n] = '\0';
	set_last_error(ps, msg);
	add(&ps->h->st.disconnects, 1);
	preq *r = c->r;
	c->r = NULL;
	if (r != NULL && c->st == C_PING) {
		wait_push(ps, r, 1);
	} else if (r != NULL) {
		const char *st = c->res ? PQresultErrorField(c->res, PG_DIAG_SQLSTATE) : NULL;
		const char *pm = c->res ? PQresultErrorField(c->res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
		reply_fail_msg(ps, r->m, TR_EIO, st,
		               "the connection broke while the query ran (it may or may not have run): %s",
		               pm != NULL ? pm : msg);
		req_free(r);
	}
	conn_close(ps, c);
	if (ps->nlive == 0)
		set_up(ps, 0);
	pump(ps);
}

static void record_wait(pstate *ps, uint64_t us)
{
	tr_pg_stats *s = &ps->h->st;
	unsigned i = 0;
	while (i < 11 && us > wait_bounds_us[i])
		i++;
	add(&s->wait_us_sum, us);
	add(&s->wait_count, 1);
	add(&s->wait_hist[i], 1);
}

/* Sends c->r's statement on c. Returns TR_OK, or an error after closing
 * c (the request requeued or answered). */
static int send_query(pstate *ps, pconn *c)
{
	preq *r = c->r;
	c->st = C_BUSY;
	/* Unnamed statement, text parameters, types inferred: a second
	 * statement in sql is refused by the server (42601). */
	if (!PQsendQueryParams(c->pg, r->sql, r->nparams, NULL, r->vals, NULL, NULL, 0)) {
		if (PQstatus(c->pg) == CONNECTION_BAD) {
			conn_broken(ps, c, PQerrorMessage(c->pg));
		} else {
			c->r = NULL;
			req_fail(ps, r, TR_EFAILED, NULL, PQerrorMessage(c->pg));
			conn_close(ps, c);
			pump(ps);
		}
		return TR_EIO;
	}
	add(&ps->h->st.queries, 1);
	record_wait(ps, (tr_now_ns() - r->t0_ns) / 1000u);
	if (flush(c) < 0) {
		conn_broken(ps, c, PQerrorMessage(c->pg));
		return TR_EIO;
	}
	/* A watchdog for a peer that went silent: the server itself ends the
	 * statement after statement_timeout. */
	uv_timer_start(c->tmr, conn_timer_cb,
	               ps->h->statement_timeout_ms + ps->h->connect_timeout_ms, 0);
	return TR_OK;
}

/* Gives the idle connection c to r: pre-pinged first when it has been idle
 * longer than idle_timeout. TR_OK, or an error after closing c. */
static int start_on(pstate *ps, pconn *c, preq *r)
{
	c->r = r;
	if (tr_now_ns() - c->idle_ns > ps->h->idle_timeout_ns) {
		c->st = C_PING;
		add(&ps->h->st.prepings, 1);
		if (!PQsendQuery(c->pg, "") || flush(c) < 0) {
			conn_broken(ps, c, PQerrorMessage(c->pg));
			return TR_EIO;
		}
		uv_timer_start(c->tmr, conn_timer_cb, ps->h->connect_timeout_ms, 0);
		return TR_OK;
	}
	return send_query(ps, c);
}

/* c is idle: new, or done with a statement without harm to the session.
 * After a statement, a connection older than max_lifetime is recycled.
 * Only then: checked at connect or when taken, a max_lifetime shorter
 * than a connect would close every connection before its first use, and
 * waiters would starve while the pool reconnects in a loop. */
static void conn_idle(pstate *ps, pconn *c, int after_use)
{
	uint64_t now = tr_now_ns();
	c->st = C_IDLE;
	c->idle_ns = now;
	if (after_use && now - c->born_ns >= ps->h->max_lifetime_ns) {
		add(&ps->h->st.recycled, 1);
		conn_close(ps, c);
	} else {
		l_push_front(&ps->idle, &c->il); /* LIFO: the warmest first */
		ps->nidle++;
	}
	pump(ps);
}

/* PQgetResult gave NULL: the statement (or the pre-ping) is over. */
static void query_done(pstate *ps, pconn *c)
{
	uv_timer_stop(c->tmr);
	PGresult *res = c->res;
	c->res = NULL;
	ExecStatusType s = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
	int ok = s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK || s == PGRES_EMPTY_QUERY;
	int bad = PQstatus(c->pg) == CONNECTION_BAD;

	if (c->st == C_PING) {
		if (!ok || bad) {
			char msg[320];
			snprintf(msg, sizeof(msg), "the pre-ping failed: %s",
			         res ? PQresultErrorMessage(res) : PQerrorMessage(c->pg));
			if (res)
				PQclear(res);
			conn_broken(ps, c, msg);
			return;
		}
		PQclear(res);
		(void)send_query(ps, c);
		return;
	}
	preq *r = c->r;
	c->r = NULL;
	int drop = bad;
	if (ok) {
		reply_result(ps, r, res);
	} else if (res != NULL) {
		drop |= map_sqlstate(PQresultErrorField(res, PG_DIAG_SQLSTATE)) == TR_EIO;
		reply_pg_error(ps, r, res, bad);
	} else {
		req_fail(ps, r, TR_EFAILED, NULL, "the server sent no result");
	}
	if (res)
		PQclear(res);
	if (drop) {
		/* The session is over (terminated backend, shutdown): do not wait
		 * for the EOF to find out. */
		add(&ps->h->st.disconnects, 1);
		conn_close(ps, c);
		if (ps->nlive == 0)
			set_up(ps, 0);
		pump(ps);
		return;
	}
	conn_idle(ps, c, 1);
}

/* One result of a running statement: the first error wins, else the last
 * result. */
static void keep_result(pconn *c, PGresult *res)
{
	if (c->res == NULL) {
		c->res = res;
	} else if (PQresultStatus(c->res) == PGRES_FATAL_ERROR) {
		PQclear(res);
	} else {
		PQclear(c->res);
		c->res = res;
	}
}

static void conn_io(pstate *ps, pconn *c, int events)
{
	if ((events & UV_WRITABLE) && c->st != C_IDLE && flush(c) < 0) {
		conn_broken(ps, c, PQerrorMessage(c->pg));
		return;
	}
	if (events & UV_READABLE) {
		if (!PQconsumeInput(c->pg)) {
			conn_broken(ps, c, PQerrorMessage(c->pg));
			return;
		}
		PGnotify *nt;
		while ((nt = PQnotifies(c->pg)) != NULL)
			PQfreemem(nt);
		/* Reading may have made room to send the rest. */
		if (c->st != C_IDLE && (c->events & UV_WRITABLE) && flush(c) < 0) {
			conn_broken(ps, c, PQerrorMessage(c->pg));
			return;
		}
	}
	if (c->st == C_IDLE) {
		if (PQstatus(c->pg) == CONNECTION_BAD)
			conn_broken(ps, c, PQerrorMessage(c->pg));
		return;
	}
	while (!PQisBusy(c->pg)) {
		PGresult *res = PQgetResult(c->pg);
		if (res == NULL) {
			query_done(ps, c);
			return;
		}
		ExecStatusType s = PQresultStatus(res);
		if (s == PGRES_COPY_IN || s == PGRES_COPY_OUT || s == PGRES_COPY_BOTH) {
			/* Leaving COPY means speaking it; the pool does not. Closing
			 * the session makes the server abort it. */
			PQclear(res);
			preq *r = c->r;
			c->r = NULL;
			if (r != NULL)
				req_fail(ps, r, TR_EINVAL, NULL,
				         "COPY FROM STDIN / TO STDOUT is not supported by the pool");
			conn_close(ps, c);
			pump(ps);
			return;
		}
		keep_result(c, res);
	}
}

static void poll_cb(uv_poll_t *h, int status, int events)
{
	pconn *c = h->data;
	pstate *ps = c->ps;
	if (status < 0) {
		/* POLLERR (UV_EBADF): libuv stopped the handle. libpq must still
		 * see the event, to read SO_ERROR and fail over or report. */
		events = c->events;
		c->events = 0;
	}
	if (c->st == C_CONNECTING)
		connect_step(ps, c);
	else
		conn_io(ps, c, events);
}

static void conn_timer_cb(uv_timer_t *t)
{
	pconn *c = t->data;
	pstate *ps = c->ps;
	char msg[160];
	switch (c->st) {
	case C_CONNECTING:
		snprintf(msg, sizeof(msg), "connect timed out after %llu ms",
		         (unsigned long long)ps->h->connect_timeout_ms);
		connect_failed(ps, c, msg);
		break;
	case C_PING:
		snprintf(msg, sizeof(msg), "no answer to the pre-ping within %llu ms",
		         (unsigned long long)ps->h->connect_timeout_ms);
		conn_broken(ps, c, msg);
		break;
	case C_BUSY:
		snprintf(msg, sizeof(msg), "no answer within statement_timeout + connect_timeout (%llu ms)",
		         (unsigned long long)(ps->h->statement_timeout_ms + ps->h->connect_timeout_ms));
		conn_broken(ps, c, msg);
		break;
	default:
		break;
	}
}

/* ---- the pool ------------------------------------------------------------ */

static void pump_once(pstate *ps)
{
	tr_pg *h = ps->h;
	/* Idle connections to waiters, oldest waiter first. */
	while (ps->nwait > 0 && ps->nidle > 0) {
		pconn *c = L_ENTRY(ps->idle.next, pconn, il);
		l_del(&c->il);
		ps->nidle--;
		(void)start_on(ps, c, wait_pop(ps));
	}
	/* More connections for the waiters left, while below `pool`. */
	uint32_t need = ps->nwait > ps->nconnecting ? ps->nwait - ps->nconnecting : 0;
	while (need > 0 && !ps->backoff && ps->nconns < h->pool) {
		if (conn_open(ps) != TR_OK)
			break;
		need--;
	}
	/* Always one open or opening: `up` must find out by itself. */
	if (ps->nconns == 0 && !ps->backoff)
		(void)conn_open(ps);
	if (ps->nwait > 0 && ps->nlive == 0 && ps->nconnecting == 0 && ps->backoff) {
		char msg[256], text[320];
		tr_pg_last_error(h, msg, sizeof(msg));
		snprintf(text, sizeof(text), "the server cannot be reached: %s", msg);
		fail_waiters(ps, TR_EIO, text);
	}
}

/* Matches idle connections with waiters and opens connections. Every
 * event ends here; re-entry (a connection that breaks while being handed
 * a request) only asks the outer call for one more round. */
static void pump(pstate *ps)
{
	if (ps->stopping)
		return;
	if (ps->pumping) {
		ps->repump = 1;
		return;
	}
	ps->pumping = 1;
	do {
		ps->repump = 0;
		pump_once(ps);
	} while (ps->repump);
	ps->pumping = 0;
	publish(ps);
}

/* ---- requests ------------------------------------------------------------ */

enum { P_NIL, P_BOOL, P_INT, P_UINT, P_F32, P_F64, P_STR, P_BAD };

typedef struct pval {
	int kind;
	int b;
	int64_t i;
	uint64_t u;
	double d;
	const char *s;
	size_t n;
	const char *what; /* P_BAD: what it is instead */
} pval;

static uint64_t be_read(const unsigned char *p, unsigned n)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

/* Reads one param (checked msgpack at p, len bytes left). */
static void read_param(const unsigned char *p, size_t len, pval *v)
{
	unsigned char c = p[0];
	memset(v, 0, sizeof(*v));
	v->kind = P_BAD;
	if (c <= 0x7f) {
		v->kind = P_INT, v->i = c;
	} else if (c >= 0xe0) {
		v->kind = P_INT, v->i = (int8_t)c;
	} else if (c == 0xc0) {
		v->kind = P_NIL;
	} else if (c == 0xc2 || c == 0xc3) {
		v->kind = P_BOOL, v->b = c == 0xc3;
	} else if (c >= 0xcc && c <= 0xcf) {
		v->kind = P_UINT, v->u = be_read(p + 1, 1u << (c - 0xcc));
	} else if (c >= 0xd0 && c <= 0xd3) {
		unsigned n = 1u << (c - 0xd0);
		uint64_t u = be_read(p + 1, n);
		v->kind = P_INT;
		switch (n) {
		case 1: v->i = (int8_t)u; break;
		case 2: v->i = (int16_t)u; break;
		case 4: v->i = (int32_t)u; break;
		default: v->i = (int64_t)u; break;
		}
	} else if (c == 0xca) {
		uint32_t u = (uint32_t)be_read(p + 1, 4);
		float f;
		memcpy(&f, &u, sizeof(f));
		v->kind = P_F32, v->d = f;
	} else if (c == 0xcb) {
		uint64_t u = be_read(p + 1, 8);
		memcpy(&v->d, &u, sizeof(v->d));
		v->kind = P_F64;
	} else if (tr__mp_str(p, len, &v->s, &v->n) == TR_OK) {
		v->kind = P_STR;
	} else if ((c >= 0x80 && c <= 0x8f) || c == 0xde || c == 0xdf) {
		v->what = "a map";
	} else if ((c >= 0x90 && c <= 0x9f) || c == 0xdc || c == 0xdd) {
		v->what = "an array";
	} else if (c >= 0xc4 && c <= 0xc6) {
		v->what = "binary";
	} else {
		v->what = "an extension value";
	}
}

/* Text of a number param; n bytes of room (>= 32). */
static void format_number(const pval *v, char *out, size_t n)
{
	switch (v->kind) {
	case P_INT: snprintf(out, n, "%lld", (long long)v->i); break;
	case P_UINT: snprintf(out, n, "%llu", (unsigned long long)v->u); break;
	default:
		if (isnan(v->d))
			snprintf(out, n, "NaN");
		else if (isinf(v->d))
			snprintf(out, n, v->d > 0 ? "Infinity" : "-Infinity");
		else /* shortest digits that read back the same value */
			snprintf(out, n, v->kind == P_F32 ? "%.9g" : "%.17g", v->d);
		break;
	}
}

#define NUM_ROOM 32

/*
 * Checks the body of a query ask and builds its request (one block: the
 * value pointers, the SQL and the parameter texts). TR_OK and *out
 * (r->m not set), TR_EINVAL with a message in why, or TR_ENOMEM.
 */
static int parse_req(tr_msg *m, preq **out, char *why, size_t wl)
{
	const unsigned char *data, *v, *pv = NULL;
	size_t len, vl, pvl = 0, sqln, hdr = 0, room;
	const char *sql;
	uint32_t np = 0, n;

	if (m->body == NULL || m->body->len == 0) {
		snprintf(why, wl, "the query has no body: want {sql = \"...\", params = [...]}");
		return TR_EINVAL;
	}
	if (tr_body_check(m->body) != TR_OK) {
		snprintf(why, wl, "the query body is not valid msgpack");
		return TR_EINVAL;
	}
	data = m->body->data;
	len = m->body->len;
	if (tr__mp_map_len(data, len, &n) != TR_OK) {
		snprintf(why, wl, "the query body must be a map {sql = \"...\", params = [...]}");
		return TR_EINVAL;
	}
	if (tr__mp_map_get(data, len, "sql", &v, &vl) != TR_OK) {
		snprintf(why, wl, "the query has no sql");
		return TR_EINVAL;
	}
	if (tr__mp_str(v, vl, &sql, &sqln) != TR_OK) {
		snprintf(why, wl, "sql must be a string");
		return TR_EINVAL;
	}
	if (sqln == 0) {
		snprintf(why, wl, "sql is empty");
		return TR_EINVAL;
	}
	if (memchr(sql, '\0', sqln) != NULL) {
		snprintf(why, wl, "sql contains a NUL byte");
		return TR_EINVAL;
	}
	room = sqln + 1;
	if (tr__mp_map_get(data, len, "params", &pv, &pvl) == TR_OK && pv[0] != 0xc0) {
		if (tr__mp_array_head(pv, pvl, &np, &hdr) != TR_OK) {
			snprintf(why, wl, "params must be an array");
			return TR_EINVAL;
		}
		if (np > TR_PG_MAX_PARAMS) {
			snprintf(why, wl, "too many params: %u (at most %d)", np, TR_PG_MAX_PARAMS);
			return TR_EINVAL;
		}
		const unsigned char *p = pv + hdr, *end = pv + pvl;
		for (uint32_t i = 0; i < np; i++) {
			pval x;
			read_param(p, (size_t)(end - p), &x);
			if (x.kind == P_BAD) {
				snprintf(why, wl,
				         "param $%u is %s: a param is nil, a bool, an integer, a float or a string",
				         i + 1, x.what);
				return TR_EINVAL;
			}
			if (x.kind == P_STR && memchr(x.s, '\0', x.n) != NULL) {
				snprintf(why, wl, "param $%u contains a NUL byte", i + 1);
				return TR_EINVAL;
			}
			room += x.kind == P_STR ? x.n + 1 : x.kind == P_NIL ? 0 : NUM_ROOM;
			p += tr__mp_size(p);
		}
	} else {
		pv = NULL;
	}
	preq *r = tr__malloc(sizeof(*r) + (size_t)np * sizeof(char *) + room);
	if (r == NULL) {
		snprintf(why, wl, "out of memory");
		return TR_ENOMEM;
	}
	memset(r, 0, sizeof(*r));
	l_init(&r->wl);
	r->vals = (const char **)(void *)(r + 1);
	char *txt = (char *)(r->vals + np);
	memcpy(txt, sql, sqln);
	txt[sqln] = '\0';
	r->sql = txt;
	txt += sqln + 1;
	r->nparams = (int)np;
	const unsigned char *p = pv ? pv + hdr : NULL, *end = pv ? pv + pvl : NULL;
	for (uint32_t i = 0; i < np; i++) {
		pval x;
		read_param(p, (size_t)(end - p), &x);
		p += tr__mp_size(p);
		switch (x.kind) {
		case P_NIL:
			r->vals[i] = NULL;
			break;
		case P_BOOL:
			r->vals[i] = x.b ? "true" : "false";
			break;
		case P_STR:
			memcpy(txt, x.s, x.n);
			txt[x.n] = '\0';
			r->vals[i] = txt;
			txt += x.n + 1;
			break;
		default:
			format_number(&x, txt, NUM_ROOM);
			r->vals[i] = txt;
			txt += NUM_ROOM;
			break;
		}
	}
	*out = r;
	return TR_OK;
}

static void on_query(tr_ctx *ctx, pstate *ps, tr_msg *m)
{
	tr_pg *h = ps->h;
	char why[320];
	preq *r = NULL;

	if (!(m->flags & TR_MSGF_ASK) || (m->flags & TR_MSGF_REPLY))
		return; /* nothing to answer */
	if (m->tag != TR_TAG_PG_QUERY) {
		reply_fail_msg(ps, m, TR_EINVAL, NULL, "unknown tag 0x%x: the pool answers 0x%x (query)",
		               m->tag, TR_TAG_PG_QUERY);
		return;
	}
	int rc = parse_req(m, &r, why, sizeof(why));
	if (rc != TR_OK) {
		reply_fail_msg(ps, m, rc == TR_ENOMEM ? TR_EFAILED : rc, NULL, "%s", why);
		return;
	}
	r->t0_ns = tr_now_ns();
	if (m->deadline != 0 && m->deadline <= tr_wall_us()) {
		reply_fail_msg(ps, m, TR_ETIMEDOUT, NULL, "the deadline had passed when the query arrived");
		tr__free(r);
		return;
	}
	if (ps->nidle == 0) {
		if (ps->nlive == 0 && ps->backoff) {
			tr_pg_last_error(h, why, sizeof(why));
			reply_fail_msg(ps, m, TR_EIO, NULL, "the server cannot be reached: %s", why);
			tr__free(r);
			return;
		}
		/* Requests beyond the connections being opened (or about to be)
		 * are the queue. */
		uint32_t slots = ps->nconnecting + (!ps->backoff && ps->nconns < h->pool ? 1u : 0u);
		if ((uint64_t)ps->nwait + 1 > (uint64_t)h->queue + slots) {
			reply_fail_msg(ps, m, TR_EREJECTED, NULL,
			               "%u queries already wait for a connection (queue = %u)",
			               ps->nwait - slots, h->queue);
			tr__free(r);
			return;
		}
	}
	r->m = tr_take(ctx);
	wait_push(ps, r, 0);
	pump(ps);
}

static int pool_receive(tr_ctx *ctx, void *st, tr_msg *m)
{
	pstate *ps = st;
	ps->cur = ctx;
	on_query(ctx, ps, m);
	ps->cur = NULL;
	return TR_OK;
}

static int pool_init(tr_ctx *ctx, void *st, const void *arg)
{
	pstate *ps = st;
	ps->h = (tr_pg *)arg;
	ps->io = tr__io_ctx(ctx);
	ps->loop = tr__ctx_loop(ctx);
	l_init(&ps->conns);
	l_init(&ps->idle);
	l_init(&ps->waiters);
	ps->rng = (tr_now_ns() ^ (uint64_t)(uintptr_t)ps) | 1u;
	ps->backoff_t = tr__malloc(sizeof(*ps->backoff_t));
	ps->deadline_t = tr__malloc(sizeof(*ps->deadline_t));
	if (ps->backoff_t == NULL || ps->deadline_t == NULL) {
		tr__free(ps->backoff_t);
		tr__free(ps->deadline_t);
		return TR_ENOMEM;
	}
	uv_timer_init(ps->loop, ps->backoff_t);
	uv_timer_init(ps->loop, ps->deadline_t);
	ps->backoff_t->data = ps;
	ps->deadline_t->data = ps;
	/* The first connection, in the background. */
	pump(ps);
	return TR_OK;
}

static void pool_terminate(tr_ctx *ctx, void *st, int reason)
{
	pstate *ps = st;
	(void)ctx;
	(void)reason;
	ps->stopping = 1;
	fail_waiters(ps, TR_ESHUTDOWN, "the pool is stopping");
	while (!l_empty(&ps->conns)) {
		pconn *c = L_ENTRY(ps->conns.next, pconn, all);
		if (c->r != NULL) {
			req_fail(ps, c->r, TR_ESHUTDOWN, NULL,
			         "the pool is stopping (the query may or may not have run)");
			c->r = NULL;
		}
		conn_close(ps, c);
	}
	tr__close_handle((uv_handle_t *)ps->backoff_t);
	tr__close_handle((uv_handle_t *)ps->deadline_t);
	ps->backoff_t = ps->deadline_t = NULL;
	set_up(ps, 0);
	publish(ps);
}

static const tr_actor_ops pool_ops = {
	.name = "postgres",
	.size = sizeof(pstate),
	.init = pool_init,
	.receive = pool_receive,
	.terminate = pool_terminate,
	/* Room for bursts; beyond it an asker hears TR_EREJECTED at once. */
	.options = {.mailbox = 16384, .overflow = TR_OVERFLOW_REJECT},
};

/* ---- control ------------------------------------------------------------- */

/* A host that libpq would resolve with a blocking getaddrinfo? */
static int host_needs_dns(const char *hosts)
{
	const char *p = hosts;
	while (*p) {
		const char *e = strchr(p, ',');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		char one[256];
		unsigned char a[16];
		if (n >= sizeof(one))
			return 1;
		memcpy(one, p, n);
		one[n] = '\0';
		if (n > 0 && one[0] != '/' && one[0] != '@' && strcmp(one, "localhost") != 0 &&
		    inet_pton(AF_INET, one, a) != 1 && inet_pton(AF_INET6, one, a) != 1)
			return 1;
		p += n;
		if (*p == ',')
			p++;
	}
	return 0;
}

static void pg_free(tr_pg *h)
{
	if (h == NULL)
		return;
	if (h->parsed != NULL)
		PQconninfoFree(h->parsed);
	tr__free(h->kw);
	tr__free(h->val);
	tr__free(h->options);
	uv_mutex_destroy(&h->mu);
	tr__free(h);
}

int tr_pg_start(tr_node *n, unsigned worker, const tr_pg_opts *o, tr_pg **out, char *err,
                size_t errlen)
{
	char dummy[8];
	if (err == NULL || errlen == 0)
		err = dummy, errlen = sizeof(dummy);
	err[0] = '\0';
	if (out != NULL)
		*out = NULL;
	if (n == NULL || o == NULL || out == NULL || o->conninfo == NULL) {
		snprintf(err, errlen, "postgres: no conninfo");
		return TR_EINVAL;
	}
	if (o->pool > 1000) {
		snprintf(err, errlen, "postgres: pool must be 1..1000, not %u", o->pool);
		return TR_EINVAL;
	}
	tr_pg *h = tr__calloc(1, sizeof(*h));
	if (h == NULL) {
		snprintf(err, errlen, "out of memory");
		return TR_ENOMEM;
	}
	if (uv_mutex_init(&h->mu) != 0) {
		tr__free(h);
		snprintf(err, errlen, "out of memory");
		return TR_ENOMEM;
	}
	h->pool = o->pool ? o->pool : 10;
	h->queue = o->queue ? o->queue : 1000;
	h->connect_timeout_ms = ((o->connect_timeout_us ? o->connect_timeout_us : 5000000u) + 999) / 1000;
	h->max_lifetime_ns = (o->max_lifetime_us ? o->max_lifetime_us : 3600000000u) * 1000u;
	h->idle_timeout_ns = (o->idle_timeout_us ? o->idle_timeout_us : 20000000u) * 1000u;
	h->statement_timeout_ms =
	    ((o->statement_timeout_us ? o->statement_timeout_us : 30000000u) + 999) / 1000;
	h->pgbouncer = o->pgbouncer;

	char *perr = NULL;
	h->parsed = PQconninfoParse(o->conninfo, &perr);
	if (h->parsed == NULL) {
		size_t k;
		snprintf(err, errlen, "postgres: bad conninfo: %s", perr ? perr : "out of memory");
		k = strlen(err);
		while (k > 0 && err[k - 1] == '\n')
			err[--k] = '\0';
		if (perr)
			PQfreemem(perr);
		pg_free(h);
		return perr ? TR_EINVAL : TR_ENOMEM;
	}
	size_t nopt = 0;
	const char *host = NULL, *hostaddr = NULL, *options = NULL;
	int has_app = 0;
	for (PQconninfoOption *p = h->parsed; p->keyword != NULL; p++) {
		if (p->val == NULL)
			continue;
		nopt++;
		if (strcmp(p->keyword, "host") == 0)
			host = p->val;
		else if (strcmp(p->keyword, "hostaddr") == 0)
			hostaddr = p->val;
		else if (strcmp(p->keyword, "options") == 0)
			options = p->val;
		else if (strcmp(p->keyword, "fallback_application_name") == 0)
			has_app = 1;
	}
	if ((hostaddr == NULL || hostaddr[0] == '\0') && host != NULL && host_needs_dns(host)) {
		snprintf(err, errlen,
		         "postgres: host=%s needs a DNS lookup, which would block the loop: give "
		         "hostaddr= (a numeric address) too, or a socket directory",
		         host);
		pg_free(h);
		return TR_EINVAL;
	}
	size_t olen = (options ? strlen(options) : 0) + 48;
	h->options = tr__malloc(olen);
	h->kw = tr__calloc(nopt + 3, sizeof(*h->kw));
	h->val = tr__calloc(nopt + 3, sizeof(*h->val));
	if (h->options == NULL || h->kw == NULL || h->val == NULL) {
		snprintf(err, errlen, "out of memory");
		pg_free(h);
		return TR_ENOMEM;
	}
	/* statement_timeout rides in the startup packet: no SET after
	 * connect, so a pooler never sees session state change. */
	snprintf(h->options, olen, "%s%s-c statement_timeout=%llu", options ? options : "",
	         options && options[0] ? " " : "", (unsigned long long)h->statement_timeout_ms);
	size_t k = 0;
	for (PQconninfoOption *p = h->parsed; p->keyword != NULL; p++) {
		if (p->val == NULL || strcmp(p->keyword, "options") == 0)
			continue;
		h->kw[k] = p->keyword;
		h->val[k++] = p->val;
	}
	h->kw[k] = "options";
	h->val[k++] = h->options;
	if (!has_app) {
		h->kw[k] = "fallback_application_name";
		h->val[k++] = "troupe";
	}
	h->kw[k] = NULL;
	h->val[k] = NULL;

	tr_spawn_opts so;
	memset(&so, 0, sizeof(so));
	so.name = TR_PG_NAME;
	int rc = tr__spawn_pinned(n, worker, &pool_ops, h, &so, &h->ref);
	if (rc != TR_OK) {
		if (rc == TR_EEXIST)
			snprintf(err, errlen, "postgres: a pool is registered as \"%s\" already", TR_PG_NAME);
		else
			snprintf(err, errlen, "postgres: cannot start the pool: %s", tr_strerror(rc));
		pg_free(h);
		return rc;
	}
	*out = h;
	return TR_OK;
}

const tr_pg_stats *tr_pg_stats_of(const tr_pg *p)
{
	return &p->st;
}

void tr_pg_last_error(const tr_pg *p, char *buf, size_t len)
{
	if (buf == NULL || len == 0)
		return;
	tr_pg *h = (tr_pg *)p; /* the mutex is not const */
	uv_mutex_lock(&h->mu);
	snprintf(buf, len, "%s", h->last_err);
	uv_mutex_unlock(&h->mu);
}

void tr_pg_free(tr_pg *p)
{
	pg_free(p);
}
