/*
 * http/door.c -- listeners, connections, request parsing, pipeline calls
 * and responses. See door.h for the design; api.c has the read-only
 * endpoints.
 *
 * A connection's life: READ (bytes of a request arriving; the header
 * timer runs from its first byte) -> a complete request is either
 * answered at once (GET endpoints, errors) or DISPATCHED to a pipeline
 * (no timer: the run has its own deadline) -> the answer is written ->
 * IDLE (the keep-alive timer runs) -> READ ... Closing is one path
 * (conn_close): stop both handles, free in the second close callback
 * (libuv runs close callbacks in no promised order: count them).
 *
 * While a run is in flight the connection keeps reading, so that a
 * client that goes away is seen at once (its run is cancelled); bytes of
 * a pipelined next request are kept, bounded, and parsed after the
 * answer.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <http_parser.h>
#include <msgpack.h>

#include "db/redis.h"
#include "http/door_int.h"
#include "http/json.h"
#include "lua/tlua.h"
#include "msg/msg_int.h"
#include "pipe/engine.h"
#include "pipe/mp.h"

#define DOOR_TAG_DRAIN 0x300u

enum { ST_IDLE, ST_READ, ST_DISPATCHED, ST_LINGER, ST_CLOSING };
enum { MODE_JSON, MODE_NDJSON, MODE_SSE };

typedef struct dstate dstate;

typedef struct conn {
	uv_tcp_t tcp;
	uv_timer_t timer;
	dstate *ds;            /* NULL once the door is gone (terminate) */
	struct conn *prev, *next;
	int closes;            /* close callbacks still to come */
	int writes;            /* writes in flight */
	uint8_t st;
	uint8_t close_after;   /* close once the writes are done */
	uint8_t drain_close;   /* draining: close once written, unless a request came */
	uint8_t linger;        /* ...after a lingering close (see conn_done) */
	uint8_t paused;        /* parser paused at a request boundary */
	uint8_t mode;          /* of the run in flight */
	uint8_t streaming;     /* stream headers sent */
	http_parser parser;
	/* the request being parsed */
	size_t hbytes;         /* request line + headers so far */
	int err_status;        /* set by a callback that stops the parser */
	const char *err_code;
	tr_buf url;
	tr_buf body;
	tr_buf hname, hval;    /* the header pair being read */
	uint8_t in_value;
	uint8_t expect_continue;
	uint8_t accept;        /* MODE_* from Accept */
	char auth[160];        /* bearer token or X-API-Key (truncated: then invalid) */
	size_t auth_len;
	uint8_t auth_bad;      /* key longer than auth[] */
	char traceparent[64];
	/* pipelined bytes that arrived while a request was in flight */
	tr_buf pending;
	/* the run in flight */
	uint64_t corr;
	tr_ref engine;
	uint64_t t0_ns;
	uint64_t trace_hi, trace_lo;
	char pipeline[64];
	int route;
	int tenant;            /* auth table index, or -1 */
	char tenant_name[64];
	uint64_t rcorr;        /* the shared rate check in flight (ST_DISPATCHED, corr 0) */
} conn;

struct dstate {
	tr_door *d;
	unsigned idx;
	tr_ctx io;              /* ctx for the libuv callbacks (sched.h) */
	uv_tcp_t *listener;     /* heap: freed in its close callback */
	conn *conns;            /* all open connections */
	tr__map runs;           /* corr -> conn*: runs in flight */
	tr__map rates;          /* corr -> conn*: shared rate checks in flight (Redis) */
	uint8_t draining;
};

/* A fuzzing door (tr__door_fuzz_new): the one worker's state, on a loop
 * of its own that only ever runs close callbacks, and the run asked by
 * the request being fed, answered by tr__door_fuzz_request. */
struct door_fuzz {
	uv_loop_t loop;
	dstate ds;
	tr_buf *out;      /* the current request's sink (borrowed) */
	tr_msg *run;      /* owned: the run asked, not yet answered */
	uint64_t corr;    /* the last corr handed out */
};

/* Stands in for tr_ask to the engine: keeps m (taken) for the answer. */
static int fuzz_ask(struct door_fuzz *f, tr_msg *m, uint64_t *corr)
{
	tr_msg_free(f->run); /* none: each run is answered before the next */
	f->run = m;
	*corr = ++f->corr;
	return TR_OK;
}

const char *const tr__door_route_names[R__N] = {
	"/", "/health", "/ready", "/metrics", "/v1/actors", "/v1/pipelines",
	"/v1/pipelines/{name}", "/v1/traces", "/v1/events", "/v1/cluster", "other"};
const int tr__door_statuses[DOOR_NSTATUS] = {200, 400, 401, 403, 404, 405, 408, 411, 413,
                                             415, 422, 429, 431, 500, 502, 503, 504, 505};

int tr__door_status_index(int status)
{
	for (int i = 0; i < DOOR_NSTATUS; i++)
		if (tr__door_statuses[i] == status)
			return i;
	return 13; /* 500 */
}

static const char *reason(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 200: return "OK";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 411: return "Length Required";
	case 413: return "Content Too Large";
	case 415: return "Unsupported Media Type";
	case 422: return "Unprocessable Content";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 505: return "HTTP Version Not Supported";
	default: return "Internal Server Error";
	}
}

static void count(dstate *ds, int route, int status)
{
	_Atomic uint64_t *c = &ds->d->counts[ds->idx][route][tr__door_status_index(status)];
	/* single writer (this door): load + store, no RMW needed */
	atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + 1,
	                      memory_order_relaxed);
}

/* ---- responses -------------------------------------------------------- */

void tr__door_error(door_resp *r, int status, const char *code, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	tr__door_json(r, status, json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg));
}

static int dump_cb(const char *buf, size_t n, void *ud)
{
	return tr__buf_append(ud, buf, n) == TR_OK ? 0 : -1;
}

void tr__door_json(door_resp *r, int status, json_t *j)
{
	r->status = status;
	r->ctype = "application/json";
	r->body.len = 0;
	if (j == NULL) {
		r->status = 500;
		tr__buf_append(&r->body, "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}", 56);
		return;
	}
	/* One pass, straight into the buffer. */
	json_dump_callback(j, dump_cb, &r->body, JSON_COMPACT | JSON_REAL_PRECISION(9));
	tr__buf_append(&r->body, "\n", 1);
	json_decref(j);
}

typedef struct wreq {
	uv_write_t req;
	conn *c;
	tr_buf buf;  /* owned: freed when the write is done */
	char head[]; /* what is left of the answer's head: out before buf */
} wreq;

static void conn_close(conn *c);

static void linger_timer_cb(uv_timer_t *t)
{
	conn_close(t->data);
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
	conn *c = req->data;
	tr__free(req);
	/* ECANCELED: conn_close ran meanwhile (c lives until its close
	 * callbacks, which come after this one). */
	if (status < 0 && c->st != ST_CLOSING)
		conn_close(c);
}

/*
 * The connection is done (answered, closing). After an error sent while
 * the client may still be sending (a body too large, bad framing), a
 * plain close would make the kernel answer the unread bytes with a reset,
 * which can destroy our response before the client reads it. So linger:
 * shut down our side, discard what still comes, close at the client's
 * EOF or after 2 s.
 */
static void conn_done(conn *c)
{
	uv_shutdown_t *req;
	if (!c->linger || c->st == ST_CLOSING || c->st == ST_LINGER) {
		if (c->st != ST_LINGER)
			conn_close(c);
		return;
	}
	c->st = ST_LINGER;
	req = tr__malloc(sizeof(*req));
	if (req == NULL || uv_shutdown(req, (uv_stream_t *)&c->tcp, shutdown_cb) != 0) {
		tr__free(req);
		conn_close(c);
		return;
	}
	req->data = c;
	uv_timer_start(&c->timer, linger_timer_cb, 2000, 0);
}

static int has_unread(conn *c);

static void write_cb(uv_write_t *req, int status)
{
	wreq *w = (wreq *)req;
	conn *c = w->c;
	tr_buf_free(&w->buf);
	tr__free(w);
	c->writes--;
	if (status < 0 && c->st != ST_CLOSING) {
		c->close_after = 1;
		c->linger = 0; /* nothing more will reach the client anyway */
	}
	if (c->close_after && c->writes == 0)
		conn_done(c);
	else if (c->drain_close && c->writes == 0 && c->st == ST_IDLE && !has_unread(c))
		conn_close(c);
}

/* Writes head[0..hlen) (copied; hlen may be 0) and then buf (taken; it
 * is reset to empty), in one writev: an answer's head and its body go out
 * together, the body not copied behind the head. What the socket takes at
 * once is written now (uv_try_write); only the rest waits in a queued
 * write. The common small answer thus needs no write request, and libuv
 * no epoll_ctl to re-arm the socket after each answer (2 % of a no-op
 * pipeline's CPU). */
static void conn_write_head(conn *c, const char *head, size_t hlen, tr_buf *buf)
{
	wreq *w;
	uv_buf_t b[2];
	unsigned nb = 0;
	size_t done = 0, total = hlen + buf->len;
	if (c->st == ST_CLOSING || total == 0) {
		tr_buf_free(buf);
		tr_buf_init(buf);
		return;
	}
	if (c->ds != NULL && c->ds->d->fuzz != NULL) {
		/* fuzzing: no socket; what would be written goes to the sink */
		tr__buf_append(c->ds->d->fuzz->out, head, hlen);
		tr__buf_append(c->ds->d->fuzz->out, buf->data, buf->len);
		tr_buf_free(buf);
		tr_buf_init(buf);
		return;
	}
	if (hlen > 0)
		b[nb++] = uv_buf_init((char *)head, (unsigned)hlen);
	if (buf->len > 0)
		b[nb++] = uv_buf_init((char *)buf->data, (unsigned)buf->len);
	/* UV_EAGAIN also when earlier writes are still queued: order holds. */
	int n = uv_try_write((uv_stream_t *)&c->tcp, b, nb);
	if (n < 0 && n != UV_EAGAIN) {
		/* The client is gone or broken: as a failed queued write, the
		 * connection closes once nothing is queued (finish, write_cb). */
		tr_buf_free(buf);
		tr_buf_init(buf);
		c->close_after = 1;
		c->linger = 0;
		return;
	}
	if (n > 0)
		done = (size_t)n;
	if (done == total) {
		tr_buf_free(buf);
		tr_buf_init(buf);
		return;
	}
	/* The rest: the head's unwritten bytes copied, the body's kept. */
	size_t hrest = done < hlen ? hlen - done : 0;
	size_t boff = done > hlen ? done - hlen : 0;
	w = tr__malloc(sizeof(*w) + hrest);
	if (w == NULL) {
		tr_buf_free(buf);
		tr_buf_init(buf);
		conn_close(c);
		return;
	}
	w->c = c;
	w->buf = *buf;
	tr_buf_init(buf);
	nb = 0;
	if (hrest > 0) {
		memcpy(w->head, head + (hlen - hrest), hrest);
		b[nb++] = uv_buf_init(w->head, (unsigned)hrest);
	}
	if (w->buf.len > boff)
		b[nb++] = uv_buf_init((char *)w->buf.data + boff, (unsigned)(w->buf.len - boff));
	if (uv_write(&w->req, (uv_stream_t *)&c->tcp, b, nb, write_cb) != 0) {
		tr_buf_free(&w->buf);
		tr__free(w);
		conn_close(c);
		return;
	}
	c->writes++;
}

/* Queues buf (taken; it is reset to empty) for writing. */
static void conn_write(conn *c, tr_buf *buf)
{
	conn_write_head(c, NULL, 0, buf);
}

static int keep_alive(conn *c)
{
	return !c->close_after && c->ds != NULL && !c->ds->draining &&
	       http_should_keep_alive(&c->parser);
}

void tr__door_printf(tr_buf *b, const char *fmt, ...)
{
	char tmp[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n > 0)
		tr__buf_append(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

static void idle_timer_cb(uv_timer_t *t);
static void resume(conn *c);

/* The last bytes of an answer (`out`, taken): count it, write them, then
 * close (ka 0) or wait idle for the next request. */
static void finish(conn *c, const char *head, size_t hlen, tr_buf *out, int status, int ka)
{
	if (c->ds != NULL)
		count(c->ds, c->route, status);
	conn_write_head(c, head, hlen, out);
	if (!ka || c->close_after) { /* close_after: also a write that failed */
		c->close_after = 1;
		if (c->writes == 0)
			conn_done(c);
		return;
	}
	c->st = ST_IDLE;
	uv_timer_start(&c->timer, idle_timer_cb, c->ds->d->o.idle_timeout_ms, 0);
	resume(c);
}

/* Appends s[0..n) to h (room: HEAD_MAX, at is kept below it). */
#define HEAD_MAX 512
static size_t hcat(char *h, size_t at, const char *s, size_t n)
{
	if (n > HEAD_MAX - at)
		n = HEAD_MAX - at; /* cannot happen: the lines are bounded (below) */
	memcpy(h + at, s, n);
	return at + n;
}

static size_t hcat_u64(char *h, size_t at, uint64_t v)
{
	char d[20];
	size_t k = sizeof(d);
	do
		d[--k] = (char)('0' + v % 10u);
	while ((v /= 10u) != 0);
	return hcat(h, at, d + k, sizeof(d) - k);
}

/* Writes a whole response and moves the connection on (idle or closed). */
static void send_resp(conn *c, door_resp *r)
{
	/* The head by hand (printf was 1.5 % of a small answer): at most
	 * 9 + 3 + 1 + 31 (reason) + 32 + 64 (ctype) + 18 + 20 + 2 + 128
	 * (extra) + 19 + 2 = 329 bytes, within HEAD_MAX. */
	char head[HEAD_MAX];
	const char *rs = reason(r->status), *ct = r->ctype ? r->ctype : "application/json";
	size_t h = 0;
	int ka = keep_alive(c) && r->status < 500 && r->status != 408 && r->status != 413 &&
	         r->status != 431 && r->status != 400;
	/* 503 from overload keeps the connection: the client may retry on it. */
	if (r->status == 503 || r->status == 502 || r->status == 504)
		ka = keep_alive(c);
	h = hcat(head, h, "HTTP/1.1 ", 9);
	h = hcat_u64(head, h, (uint64_t)(r->status >= 100 && r->status <= 999 ? r->status : 500));
	h = hcat(head, h, " ", 1);
	h = hcat(head, h, rs, strlen(rs));
	h = hcat(head, h, "\r\nServer: troupe\r\nContent-Type: ", 32);
	h = hcat(head, h, ct, strnlen(ct, 64));
	h = hcat(head, h, "\r\nContent-Length: ", 18);
	h = hcat_u64(head, h, r->body.len);
	h = hcat(head, h, "\r\n", 2);
	h = hcat(head, h, r->extra, strnlen(r->extra, sizeof(r->extra)));
	if (!ka)
		h = hcat(head, h, "Connection: close\r\n", 19);
	h = hcat(head, h, "\r\n", 2);
	if (r->head) {
		tr_buf none;
		tr_buf_init(&none);
		finish(c, head, h, &none, r->status, ka);
		return;
	}
	finish(c, head, h, &r->body, r->status, ka); /* takes the body: r->body is empty after */
}

/* An error that ends the connection (the request could not be read). */
static void fail_conn(conn *c, int status, const char *code, const char *msg)
{
	door_resp r;
	memset(&r, 0, sizeof(r));
	tr_buf_init(&r.body);
	tr__door_error(&r, status, code, "%s", msg);
	c->close_after = 1;
	/* Unread request bytes may follow: linger (a slow client, 408, has
	 * none worth waiting for). */
	c->linger = status != 408;
	send_resp(c, &r);
	tr_buf_free(&r.body);
}

/* ---- connection lifecycle ------------------------------------------ */

static void reset_request(conn *c)
{
	c->hbytes = 0;
	c->err_status = 0;
	c->err_code = NULL;
	c->url.len = 0;
	c->body.len = 0;
	c->hname.len = 0;
	c->hval.len = 0;
	c->in_value = 0;
	c->expect_continue = 0;
	c->accept = MODE_JSON;
	c->auth_len = 0;
	c->auth_bad = 0;
	c->traceparent[0] = '\0';
	c->route = R_OTHER;
	c->tenant = -1;
	c->tenant_name[0] = '\0';
}

static void close_cb(uv_handle_t *h)
{
	conn *c = h->data;
	if (--c->closes > 0)
		return;
	tr_buf_free(&c->url);
	tr_buf_free(&c->body);
	tr_buf_free(&c->hname);
	tr_buf_free(&c->hval);
	tr_buf_free(&c->pending);
	tr__free(c);
}

static void send_cancel(conn *c)
{
	if (c->ds == NULL || c->corr == 0)
		return;
	tr__map_del(&c->ds->runs, c->corr, TR_REF_NONE, NULL);
	tr_msg *m = tr_msg_new();
	if (m != NULL) {
		m->tag = TR_TAG_RUN_CANCEL;
		m->corr = c->corr;
		tr_send(&c->ds->io, c->engine, m);
	}
	atomic_fetch_sub_explicit(&c->ds->d->inflight, 1, memory_order_relaxed);
	c->corr = 0;
}

static void conn_close(conn *c)
{
	if (c->st == ST_CLOSING)
		return;
	if (c->st == ST_DISPATCHED)
		send_cancel(c);
	if (c->rcorr != 0 && c->ds != NULL) {
		/* its verdict will find nobody */
		tr__map_del(&c->ds->rates, c->rcorr, TR_REF_NONE, NULL);
		c->rcorr = 0;
	}
	c->st = ST_CLOSING;
	if (c->ds != NULL) {
		if (c->prev)
			c->prev->next = c->next;
		else
			c->ds->conns = c->next;
		if (c->next)
			c->next->prev = c->prev;
		atomic_fetch_sub_explicit(&c->ds->d->conns, 1, memory_order_relaxed);
	}
	c->closes = 2;
	uv_timer_stop(&c->timer);
	uv_close((uv_handle_t *)&c->timer, close_cb);
	uv_close((uv_handle_t *)&c->tcp, close_cb);
}

static void idle_timer_cb(uv_timer_t *t)
{
	conn_close(t->data);
}

static void header_timer_cb(uv_timer_t *t)
{
	conn *c = t->data;
	if (c->st == ST_READ && c->hbytes + c->body.len > 0) {
		fail_conn(c, 408, "timeout", "the request did not arrive in time");
		return;
	}
	conn_close(c);
}

/* ---- parsing ---------------------------------------------------------- */

static int lower_eq(const tr_buf *b, const char *s)
{
	size_t n = strlen(s);
	if (b->len != n)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char ch = (char)b->data[i];
		if (ch >= 'A' && ch <= 'Z')
			ch = (char)(ch - 'A' + 'a');
		if (ch != s[i])
			return 0;
	}
	return 1;
}

static int has_token(const tr_buf *v, const char *tok)
{
	size_t n = strlen(tok);
	for (size_t i = 0; i + n <= v->len; i++)
		if (strncasecmp((const char *)v->data + i, tok, n) == 0)
			return 1;
	return 0;
}

/* A complete header pair: keep what the door needs. */
static void header_done(conn *c)
{
	tr_buf *v = &c->hval;
	if (c->hname.len == 0)
		return;
	if (lower_eq(&c->hname, "accept")) {
		if (has_token(v, "application/x-ndjson"))
			c->accept = MODE_NDJSON;
		else if (has_token(v, "text/event-stream"))
			c->accept = MODE_SSE;
	} else if (lower_eq(&c->hname, "authorization") || lower_eq(&c->hname, "x-api-key")) {
		/* an empty value leaves data NULL, which memcpy must not get */
		const char *p = v->len > 0 ? (const char *)v->data : "";
		size_t n = v->len;
		if (lower_eq(&c->hname, "authorization")) {
			if (n >= 7 && strncasecmp(p, "Bearer ", 7) == 0) {
				p += 7;
				n -= 7;
			} else {
				c->auth_bad = 1; /* another scheme: not ours */
			}
		}
		while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
			n--;
		if (n >= sizeof(c->auth))
			c->auth_bad = 1;
		else {
			memcpy(c->auth, p, n);
			c->auth_len = n;
		}
	} else if (lower_eq(&c->hname, "expect")) {
		c->expect_continue = has_token(v, "100-continue");
	} else if (lower_eq(&c->hname, "traceparent") && v->len < sizeof(c->traceparent)) {
		if (v->len > 0) /* empty: data may be NULL (above) */
			memcpy(c->traceparent, v->data, v->len);
		c->traceparent[v->len] = '\0';
	}
	c->hname.len = 0;
	c->hval.len = 0;
}

static conn *pconn(http_parser *p)
{
	return p->data;
}

static int add_header_bytes(conn *c, size_t n)
{
	c->hbytes += n;
	if (c->hbytes > c->ds->d->o.max_header) {
		c->err_status = 431;
		c->err_code = "headers_too_large";
		return -1;
	}
	return 0;
}

static int on_message_begin(http_parser *p)
{
	conn *c = pconn(p);
	reset_request(c);
	c->st = ST_READ;
	uv_timer_start(&c->timer, header_timer_cb, c->ds->d->o.header_timeout_ms, 0);
	return 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
	conn *c = pconn(p);
	if (add_header_bytes(c, n) != 0)
		return -1;
	return tr__buf_append(&c->url, at, n) == TR_OK ? 0 : -1;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
	conn *c = pconn(p);
	if (add_header_bytes(c, n) != 0)
		return -1;
	if (c->in_value) {
		header_done(c);
		c->in_value = 0;
	}
	return tr__buf_append(&c->hname, at, n) == TR_OK ? 0 : -1;
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
	conn *c = pconn(p);
	if (add_header_bytes(c, n) != 0)
		return -1;
	c->in_value = 1;
	return tr__buf_append(&c->hval, at, n) == TR_OK ? 0 : -1;
}

static int on_headers_complete(http_parser *p)
{
	conn *c = pconn(p);
	header_done(c);
	c->in_value = 0;
	if (p->http_major != 1) {
		c->err_status = 505;
		c->err_code = "http_version";
		return -1;
	}
	if ((p->flags & F_CONTENTLENGTH) && p->content_length > c->ds->d->o.max_body) {
		c->err_status = 413;
		c->err_code = "body_too_large";
		return -1;
	}
	if (c->expect_continue && p->http_minor >= 1) {
		tr_buf b;
		tr_buf_init(&b);
		tr__buf_append(&b, "HTTP/1.1 100 Continue\r\n\r\n", 25);
		conn_write(c, &b);
	}
	return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
	conn *c = pconn(p);
	if (c->body.len + n > c->ds->d->o.max_body) {
		c->err_status = 413;
		c->err_code = "body_too_large";
		return -1;
	}
	return tr__buf_append(&c->body, at, n) == TR_OK ? 0 : -1;
}

static void handle_request(conn *c);

static int on_message_complete(http_parser *p)
{
	conn *c = pconn(p);
	uv_timer_stop(&c->timer);
	/* Stop at the request boundary: the next pipelined request is parsed
	 * only once this one has been answered. */
	http_parser_pause(p, 1);
	c->paused = 1;
	return 0;
}

static const http_parser_settings settings = {
	.on_message_begin = on_message_begin,
	.on_url = on_url,
	.on_header_field = on_header_field,
	.on_header_value = on_header_value,
	.on_headers_complete = on_headers_complete,
	.on_body = on_body,
	.on_message_complete = on_message_complete,
};

/* Feeds data to the parser; handles each complete request in turn. The
 * bytes not consumed (after a request that is now in flight) are kept in
 * c->pending. */
static void feed(conn *c, const char *data, size_t len)
{
	while (len > 0 && c->st != ST_CLOSING && c->st != ST_DISPATCHED) {
		size_t used = http_parser_execute(&c->parser, &settings, data, len);
		enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
		if (c->paused) {
			c->paused = 0;
			http_parser_pause(&c->parser, 0);
			data += used;
			len -= used;
			handle_request(c);
			continue;
		}
		if (e != HPE_OK) {
			if (c->err_status != 0) {
				const char *msg = c->err_status == 431 ? "request line and headers are too large"
				                : c->err_status == 413 ? "request body is too large"
				                : c->err_status == 505 ? "only HTTP/1.x is served"
				                : "cannot read the request";
				fail_conn(c, c->err_status, c->err_code, msg);
			} else {
				char msg[160];
				snprintf(msg, sizeof(msg), "malformed HTTP: %s", http_errno_description(e));
				fail_conn(c, 400, "bad_request", msg);
			}
			return;
		}
		data += used;
		len -= used;
	}
	if (len > 0 && c->st == ST_DISPATCHED) {
		/* Pipelined bytes while a run is in flight: keep a bounded
		 * amount (one request's worth); past it, a client that does not
		 * wait for answers is cut off. */
		tr_door *d = c->ds->d;
		if (c->pending.len + len > d->o.max_header + d->o.max_body) {
			c->close_after = 1; /* answer this one, then close */
			return;
		}
		tr__buf_append(&c->pending, data, len);
	}
}

/* After an answer: parse what was pipelined meanwhile. */
static void resume(conn *c)
{
	if (c->pending.len == 0 || c->st != ST_IDLE)
		return;
	tr_buf p = c->pending;
	tr_buf_init(&c->pending);
	feed(c, (const char *)p.data, p.len);
	tr_buf_free(&p);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)suggested;
	(void)h;
	/* A per-worker scratch buffer would save the malloc; reads are
	 * handed to the parser synchronously and copied where kept. */
	static _Thread_local char scratch[64 * 1024];
	buf->base = scratch;
	buf->len = sizeof(scratch);
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	conn *c = s->data;
	if (n < 0) {
		/* EOF or error: a run in flight is cancelled (conn_close). */
		conn_close(c);
		return;
	}
	if (n == 0 || c->st == ST_LINGER)
		return; /* lingering: discard */
	if (c->st == ST_IDLE)
		uv_timer_stop(&c->timer);
	feed(c, buf->base, (size_t)n);
}

/* ---- the pipeline call ------------------------------------------------ */

static void hex128(uint64_t hi, uint64_t lo, char out[33])
{
	/* By hand: snprintf was 1 % of a no-op pipeline's answer. */
	static const char hex[] = "0123456789abcdef";
	for (int i = 0; i < 16; i++) {
		out[15 - i] = hex[(hi >> (4 * i)) & 15u];
		out[31 - i] = hex[(lo >> (4 * i)) & 15u];
	}
	out[32] = '\0';
}

static int parse_hex(const char *s, size_t n, uint64_t *v)
{
	*v = 0;
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];
		unsigned d = ch >= '0' && ch <= '9' ? (unsigned)(ch - '0')
		           : ch >= 'a' && ch <= 'f' ? (unsigned)(ch - 'a' + 10) : 99;
		if (d > 15)
			return -1;
		*v = (*v << 4) | d;
	}
	return 0;
}

static uint64_t rnd64(void)
{
	static _Thread_local uint64_t s;
	if (s == 0)
		s = tr_now_ns() ^ ((uint64_t)(uintptr_t)&s << 17) ^ 0x9e3779b97f4a7c15ull;
	/* xorshift64*: trace ids need spread, not secrecy */
	s ^= s >> 12;
	s ^= s << 25;
	s ^= s >> 27;
	return s * 2685821657736338717ull;
}

/* The trace id: the W3C traceparent's if valid, else a fresh one. */
static void trace_id(conn *c)
{
	const char *t = c->traceparent;
	if (strlen(t) >= 55 && t[0] == '0' && t[1] == '0' && t[2] == '-' && t[35] == '-' &&
	    parse_hex(t + 3, 16, &c->trace_hi) == 0 && parse_hex(t + 19, 16, &c->trace_lo) == 0 &&
	    (c->trace_hi | c->trace_lo) != 0)
		return;
	c->trace_hi = rnd64();
	c->trace_lo = rnd64();
}

/* Validates the request body and builds the run's message map. */
static int build_input(conn *c, door_conf *cf, door_resp *r, tr_buf *mp)
{
	json_error_t jerr;
	json_t *root, *input, *v;
	const char *k;

	if (c->body.len == 0) {
		tr__door_error(r, 400, "bad_request", "the body must be a JSON object with an \"input\" object");
		return -1;
	}
	root = json_loadb((const char *)c->body.data, c->body.len, JSON_REJECT_DUPLICATES, &jerr);
	if (root == NULL) {
		tr__door_error(r, 400, "invalid_json", "malformed JSON at line %d, column %d: %s",
		               jerr.line, jerr.column, jerr.text);
		return -1;
	}
	if (!json_is_object(root)) {
		json_decref(root);
		tr__door_error(r, 400, "bad_request", "the body must be a JSON object");
		return -1;
	}
	json_object_foreach(root, k, v) {
		if (strcmp(k, "input") != 0 && strcmp(k, "session") != 0 && strcmp(k, "tenant") != 0) {
			tr__door_error(r, 400, "bad_request",
			               "unknown key '%s' (the body takes input, session, tenant)", k);
			json_decref(root);
			return -1;
		}
	}
	input = json_object_get(root, "input");
	if (!json_is_object(input)) {
		tr__door_error(r, 400, "bad_request", "\"input\" must be a JSON object");
		json_decref(root);
		return -1;
	}
	json_t *session = json_object_get(root, "session");
	json_t *tenant = json_object_get(root, "tenant");
	if ((session && !json_is_string(session)) || (tenant && !json_is_string(tenant))) {
		tr__door_error(r, 400, "bad_request", "\"session\" and \"tenant\" must be strings");
		json_decref(root);
		return -1;
	}
	if (tenant != NULL) {
		const char *tn = json_string_value(tenant);
		size_t tl = json_string_length(tenant);
		if (c->tenant >= 0) {
			/* An API key names its tenant: the body may repeat it,
			 * never pick another one. */
			if (strcmp(tn, c->tenant_name) != 0) {
				tr__door_error(r, 403, "forbidden",
				               "this API key belongs to tenant '%s', not '%s'",
				               c->tenant_name, tn);
				json_decref(root);
				return -1;
			}
		} else if (tl == 0 || tl >= sizeof(c->tenant_name)) {
			tr__door_error(r, 400, "bad_request", "\"tenant\" must be 1 to 63 bytes");
			json_decref(root);
			return -1;
		} else {
			memcpy(c->tenant_name, tn, tl + 1);
		}
	}
	(void)cf;
	/* The message: the input, with the door's facts on top (they win:
	 * a client must not pose as another tenant to the steps). The body's
	 * tree is ours and dropped below: edited in place, no copy. */
	if (c->tenant_name[0])
		json_object_set_new(input, "tenant", json_string(c->tenant_name));
	if (session)
		json_object_set(input, "session", session);
	int rc = tr__json_to_mp(input, mp);
	json_decref(root);
	if (rc == TR_EPROTO) {
		tr__door_error(r, 400, "bad_request", "\"input\" is nested too deep (at most %d levels)",
		               TR_MP_MAX_DEPTH - 1);
		return -1;
	}
	if (rc != TR_OK) {
		tr__door_error(r, 500, "internal", "out of memory");
		return -1;
	}
	if (mp->len > TR_MSG_MAX_WIRE / 2) {
		tr__door_error(r, 413, "body_too_large", "\"input\" is too large");
		return -1;
	}
	return 0;
}

static void dispatch_run(conn *c);

/* 429 with Retry-After for a tenant over its rate. */
static void rate_limited(conn *c, door_resp *r, uint64_t wait_ms)
{
	tr__door_error(r, 429, "rate_limited", "tenant '%s' is over its rate", c->tenant_name);
	snprintf(r->extra, sizeof(r->extra), "Retry-After: %llu\r\n",
	         (unsigned long long)((wait_ms + 999) / 1000 ? (wait_ms + 999) / 1000 : 1));
}

/*
 * Rate limits shared by the nodes of one Redis (redis { } declared): the
 * tenant's token bucket lives in Redis, as a hash {tokens, ts} updated by
 * one script (EVALSHA through the redis actor) on the server's clock, so
 * that every node takes from the same bucket whatever its own clock says.
 * While Redis is down (or slow: past the client's timeout) each node
 * falls back to its in-process bucket, which then allows the whole rate
 * per node; /ready says "degraded" meanwhile.
 */
static const char rate_script[] =
	"local rate = tonumber(ARGV[1]) local burst = tonumber(ARGV[2]) "
	"local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000) "
	"local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts') "
	"local tokens = tonumber(b[1]) or burst local ts = tonumber(b[2]) or now "
	"if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate / 1000) else now = ts end "
	"local ok, wait = 0, 0 "
	"if tokens >= 1 then tokens = tokens - 1 ok = 1 "
	"else wait = math.ceil((1 - tokens) * 1000 / rate) end "
	"redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now) "
	"redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000) "
	"return {ok, wait}";

/* Asks Redis for c's token when it should: 1 if c now waits for the
 * verdict, 0 to use the in-process bucket. */
static int shared_rate(conn *c, const door_conf *cf)
{
	dstate *ds = c->ds;
	tr_door *d = ds->d;
	double rate, burst;
	tr_ref to;
	uint64_t corr;
	if (d->redis == NULL ||
	    !atomic_load_explicit(&tr_redis_stats_of(d->redis)->up, memory_order_relaxed))
		return 0;
	tr_auth_rate(cf->auth, c->tenant, &rate, &burst);
	if (rate <= 0 || tr_whereis(d->node, TR_REDIS_NAME, &to) != TR_OK)
		return 0;
	char key[160], rs[32], bs[32];
	snprintf(key, sizeof(key), "%srate:%s", cf->rprefix, c->tenant_name);
	snprintf(rs, sizeof(rs), "%.17g", rate);
	snprintf(bs, sizeof(bs), "%.17g", burst);
	tr_buf b;
	msgpack_packer pk;
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	int bad = msgpack_pack_map(&pk, 3) || tr__mp_pack_cstr(&pk, "script") ||
	          tr__mp_pack_cstr(&pk, rate_script) || tr__mp_pack_cstr(&pk, "keys") ||
	          msgpack_pack_array(&pk, 1) || tr__mp_pack_cstr(&pk, key) ||
	          tr__mp_pack_cstr(&pk, "args") || msgpack_pack_array(&pk, 2) ||
	          tr__mp_pack_cstr(&pk, rs) || tr__mp_pack_cstr(&pk, bs);
	tr_msg *m = bad ? NULL : tr_msg_new();
	if (m == NULL || (m->body = tr_body_new(b.data, b.len)) == NULL) {
		tr_msg_free(m);
		tr_buf_free(&b);
		return 0;
	}
	tr_buf_free(&b);
	m->tag = TR_TAG_REDIS_SCRIPT;
	/* The client's own timeout bounds the wait; 1 s is only a backstop. */
	if (tr_ask(&ds->io, to, m, 1000, &corr) != TR_OK)
		return 0;
	if (tr__map_put(&ds->rates, corr, TR_REF_NONE, c) != TR_OK)
		return 0; /* its verdict finds nobody; the local bucket decides */
	c->rcorr = corr;
	c->st = ST_DISPATCHED; /* pipelined bytes wait, as for a run (corr 0: nothing to cancel) */
	return 1;
}

/* Redis's verdict on c's token: {1, 0} go, {0, wait_ms} 429; an error
 * (down, timeout) falls back to the in-process bucket. */
static void on_rate(dstate *ds, conn *c, tr_msg *m)
{
	const unsigned char *v;
	size_t vl, hdr;
	uint32_t n;
	uint64_t ok = 0, wait = 0;
	int decided = 0;
	c->rcorr = 0;
	c->st = ST_READ;
	if (!(m->flags & TR_MSGF_ERROR) && m->body != NULL && tr_body_check(m->body) == TR_OK &&
	    tr__mp_map_get(m->body->data, m->body->len, "reply", &v, &vl) == TR_OK &&
	    tr__mp_array_head(v, vl, &n, &hdr) == TR_OK && n == 2) {
		const unsigned char *a = v + hdr, *b2 = a + tr__mp_size(a);
		decided = tr__mp_uint(a, tr__mp_size(a), &ok) == TR_OK &&
		          tr__mp_uint(b2, tr__mp_size(b2), &wait) == TR_OK;
	}
	if (!decided) {
		door_conf *cf = tr__door_conf_get(ds->d);
		int t = tr_auth_lookup(cf->auth, c->tenant_name, strlen(c->tenant_name));
		ok = tr_auth_take(cf->auth, t, tr_now_ns(), &wait);
		tr__door_conf_put(cf);
	}
	if (ok) {
		dispatch_run(c);
		return;
	}
	door_resp r;
	memset(&r, 0, sizeof(r));
	tr_buf_init(&r.body);
	rate_limited(c, &r, wait);
	send_resp(c, &r);
	tr_buf_free(&r.body);
}

static void dispatch(conn *c, const char *name, size_t nlen)
{
	tr_door *d = c->ds->d;
	door_resp r;
	door_conf *cf = tr__door_conf_get(d);

	memset(&r, 0, sizeof(r));
	tr_buf_init(&r.body);
	c->route = R_RUN;
	if (nlen == 0 || nlen >= sizeof(c->pipeline)) {
		tr__door_error(&r, 404, "not_found", "no pipeline named '%.*s'", (int)nlen, name);
		goto answer;
	}
	memcpy(c->pipeline, name, nlen);
	c->pipeline[nlen] = '\0';

	/* Auth, then rate: an unknown key is told 401 before anything else. */
	if (cf != NULL && tr_auth_ntenants(cf->auth) > 0) {
		if (c->auth_len == 0 && !c->auth_bad) {
			tr__door_error(&r, 401, "unauthorized",
			               "an API key is required (Authorization: Bearer KEY or X-API-Key)");
			snprintf(r.extra, sizeof(r.extra), "WWW-Authenticate: Bearer\r\n");
			goto answer;
		}
		c->tenant = c->auth_bad ? -1 : tr_auth_find(cf->auth, c->auth, c->auth_len);
		if (c->tenant < 0) {
			tr__door_error(&r, 401, "unauthorized", "invalid API key");
			snprintf(r.extra, sizeof(r.extra), "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n");
			goto answer;
		}
		snprintf(c->tenant_name, sizeof(c->tenant_name), "%s", tr_auth_tenant(cf->auth, c->tenant));
		if (shared_rate(c, cf)) {
			/* the verdict comes from Redis (on_rate), then dispatch_run */
			tr__door_conf_put(cf);
			tr_buf_free(&r.body);
			return;
		}
		uint64_t wait_ms = 0;
		if (!tr_auth_take(cf->auth, c->tenant, tr_now_ns(), &wait_ms)) {
			rate_limited(c, &r, wait_ms);
			goto answer;
		}
	}
	tr__door_conf_put(cf);
	tr_buf_free(&r.body);
	dispatch_run(c);
	return;
answer:
	tr__door_conf_put(cf);
	send_resp(c, &r);
	tr_buf_free(&r.body);
}

/* The run of a request that passed auth and rate: find the pipeline,
 * build the message, ask the engine. */
static void dispatch_run(conn *c)
{
	dstate *ds = c->ds;
	tr_door *d = ds->d;
	door_resp r;
	tr_buf mp;
	char reg[96];
	door_conf *cf = tr__door_conf_get(d);

	memset(&r, 0, sizeof(r));
	tr_buf_init(&r.body);
	tr_buf_init(&mp);
	snprintf(reg, sizeof(reg), "pipeline:%s", c->pipeline);
	if (tr_whereis(d->node, reg, &c->engine) != TR_OK) {
		tr__door_error(&r, 404, "not_found", "no pipeline named '%s'", c->pipeline);
		goto answer;
	}
	if (build_input(c, cf, &r, &mp) != 0)
		goto answer;

	tr_msg *m = tr_msg_new();
	if (m == NULL) {
		tr__door_error(&r, 500, "internal", "out of memory");
		goto answer;
	}
	trace_id(c);
	m->tag = TR_TAG_RUN;
	m->arg = TR_RUN_TRACE | (c->accept != MODE_JSON ? TR_RUN_EVENTS : 0);
	m->trace_hi = c->trace_hi;
	m->trace_lo = c->trace_lo;
	if (c->tenant_name[0]) {
		uint32_t tid;
		if (tr_tenant_intern(c->tenant_name, strlen(c->tenant_name), &tid) == TR_OK)
			m->tenant = tid;
	}
	m->body = tr_body_new(mp.data, mp.len);
	if (m->body == NULL) {
		tr_msg_free(m);
		tr__door_error(&r, 500, "internal", "out of memory");
		goto answer;
	}
	int rc = d->fuzz != NULL ? fuzz_ask(d->fuzz, m, &c->corr)
	                         : tr_ask(&ds->io, c->engine, m, d->o.run_timeout_ms, &c->corr);
	if (rc != TR_OK) {
		/* Refused at the engine's mailbox: that is overload too. */
		tr__door_error(&r, 503, "overload", "pipeline '%s' cannot take more runs now (%s)",
		               c->pipeline, tr_strerror(rc));
		snprintf(r.extra, sizeof(r.extra), "Retry-After: 1\r\n");
		goto answer;
	}
	if (tr__map_put(&ds->runs, c->corr, TR_REF_NONE, c) != TR_OK) {
		/* We would never find its answer: cancel it (it still answers,
		 * to no one) and say so. */
		tr_msg *x = tr_msg_new();
		if (x != NULL) {
			x->tag = TR_TAG_RUN_CANCEL;
			x->corr = c->corr;
			tr_send(&ds->io, c->engine, x);
		}
		c->corr = 0;
		tr__door_error(&r, 500, "internal", "out of memory");
		goto answer;
	}
	atomic_fetch_add_explicit(&d->inflight, 1, memory_order_relaxed);
	c->mode = c->accept;
	c->streaming = 0;
	c->t0_ns = tr_now_ns();
	c->st = ST_DISPATCHED;
	tr__door_conf_put(cf);
	tr_buf_free(&mp);
	tr_buf_free(&r.body);
	return;
answer:
	tr__door_conf_put(cf);
	tr_buf_free(&mp);
	send_resp(c, &r);
	tr_buf_free(&r.body);
}

/* ---- routing ---------------------------------------------------------- */

static void handle_request(conn *c)
{
	door_resp r;
	const char *u = (const char *)c->url.data;
	size_t ulen = c->url.len, plen = 0;
	int method = c->parser.method;
	typedef void (*get_fn)(tr_door *, door_resp *);
	static const struct {
		const char *path;
		int route;
		get_fn fn;
	} gets[] = {
		{"/", R_ROOT, tr__api_status_page},       {"/health", R_HEALTH, tr__api_health},
		{"/ready", R_READY, tr__api_ready},       {"/metrics", R_METRICS, tr__api_metrics},
		{"/v1/actors", R_ACTORS, tr__api_actors}, {"/v1/pipelines", R_PIPELINES, tr__api_pipelines},
		{"/v1/traces", R_TRACES, tr__api_traces},  {"/v1/events", R_EVENTS, tr__api_events},
		{"/v1/cluster", R_CLUSTER, tr__api_cluster},
	};

	while (plen < ulen && u[plen] != '?' && u[plen] != '#')
		plen++;
	memset(&r, 0, sizeof(r));
	tr_buf_init(&r.body);
	c->route = R_OTHER;
	for (size_t i = 0; i < sizeof(gets) / sizeof(gets[0]); i++) {
		if (strlen(gets[i].path) == plen && memcmp(gets[i].path, u, plen) == 0) {
			c->route = gets[i].route;
			if (method != HTTP_GET && method != HTTP_HEAD) {
				tr__door_error(&r, 405, "method_not_allowed", "%s takes GET, not %s",
				               gets[i].path, http_method_str((enum http_method)method));
				snprintf(r.extra, sizeof(r.extra), "Allow: GET, HEAD\r\n");
			} else {
				gets[i].fn(c->ds->d, &r);
				r.head = method == HTTP_HEAD; /* same headers, no body */
			}
			send_resp(c, &r);
			tr_buf_free(&r.body);
			return;
		}
	}
	static const char pre[] = "/v1/pipelines/";
	if (plen > sizeof(pre) - 1 && memcmp(u, pre, sizeof(pre) - 1) == 0) {
		const char *name = u + sizeof(pre) - 1;
		size_t nlen = plen - (sizeof(pre) - 1);
		c->route = R_RUN;
		if (method != HTTP_POST) {
			tr__door_error(&r, 405, "method_not_allowed", "pipelines are run with POST, not %s",
			               http_method_str((enum http_method)method));
			snprintf(r.extra, sizeof(r.extra), "Allow: POST\r\n");
			send_resp(c, &r);
			tr_buf_free(&r.body);
			return;
		}
		if (memchr(name, '/', nlen) != NULL) {
			tr__door_error(&r, 404, "not_found", "no route for %.*s", (int)plen, u);
			send_resp(c, &r);
			tr_buf_free(&r.body);
			return;
		}
		tr_buf_free(&r.body);
		dispatch(c, name, nlen);
		return;
	}
	tr__door_error(&r, 404, "not_found", "no route for %.*s", (int)(plen > 200 ? 200 : plen), u);
	send_resp(c, &r);
	tr_buf_free(&r.body);
}

/* ---- answers from the engine ------------------------------------------ */

static const char *err_code_of(int err)
{
	switch (err) {
	case TR_ETIMEDOUT: return "timeout";
	case TR_ECRASHED: return "crashed";
	case TR_ENODEDOWN: return "node_down";
	case TR_EFULL:
	case TR_EREJECTED:
	case TR_EDROPPED: return "overload";
	default: return "error";
	}
}

static int status_of(const char *code)
{
	if (strcmp(code, "overload") == 0)
		return 503;
	if (strcmp(code, "timeout") == 0 || strcmp(code, "deadline") == 0)
		return 504;
	if (strcmp(code, "invalid") == 0)
		return 422;
	return 502;
}

/* Appends us (µs) as milliseconds with three decimals, from integers. */
static void put_ms(tr_buf *out, uint64_t us)
{
	char frac[4] = {'.', (char)('0' + us / 100 % 10), (char)('0' + us / 10 % 10),
	                (char)('0' + us % 10)};
	tr__fmt_u64(out, us / 1000u);
	tr__buf_append(out, frac, 4);
}

/* The unsigned integer at p (validated msgpack), or 0. */
static uint64_t mp_uint(const unsigned char *p, size_t n)
{
	uint64_t v;
	return tr__mp_uint(p, n, &v) == TR_OK ? v : 0;
}

/* Writes the map at p as a JSON object with its "us" entry as "ms"
 * (integer µs to fixed-point ms); `lead` opens the object (may hold
 * fields of our own, e.g. {"type":"done",). */
static void map_json_ms(const unsigned char *p, size_t n, tr_buf *out)
{
	uint32_t cnt;
	size_t hdr;
	int first = 1;
	if (tr__mp_map_head(p, n, &cnt, &hdr) != TR_OK) {
		tr__buf_append(out, "{}", 2);
		return;
	}
	const unsigned char *q = p + hdr;
	tr__buf_append(out, "{", 1);
	for (uint32_t i = 0; i < cnt; i++) {
		size_t ks = tr__mp_size(q);
		const unsigned char *v = q + ks;
		size_t vs = tr__mp_size(v);
		const char *k;
		size_t kn;
		if (tr__mp_str(q, ks, &k, &kn) == TR_OK) {
			if (!first)
				tr__buf_append(out, ",", 1);
			first = 0;
			if (kn == 2 && memcmp(k, "us", 2) == 0) {
				tr__buf_append(out, "\"ms\":", 5);
				put_ms(out, mp_uint(v, vs));
			} else {
				tr__json_str(k, kn, out);
				tr__buf_append(out, ":", 1);
				tr__mp_json_checked(v, out);
			}
		}
		q = v + vs;
	}
	tr__buf_append(out, "}", 1);
}

/* The client's "steps" array from an engine answer map (body, checked):
 * each entry {step, actor, ms, attempts, cached}, and node (the node id
 * of the instance that answered) for a placed actor's step. */
void tr__door_steps_json(const unsigned char *body, size_t n, tr_buf *out)
{
	/* The keys read from each entry (the engine writes them in this order,
	 * but any order is read) and the JSON written for them, in ours. It is
	 * on every answer: one pass over each entry, key lengths known, and
	 * the common values (str, bool, positive int) written directly; at 5
	 * steps the general path was 10 % of a no-op pipeline's CPU. */
	static const struct {
		const char *key, *head;
		unsigned char klen, hlen;
	} f[6] = {{"step", "{\"step\":", 4, 8},         {"actor", ",\"actor\":", 5, 9},
	          {"us", ",\"ms\":", 2, 6},              {"attempts", ",\"attempts\":", 8, 12},
	          {"cached", ",\"cached\":", 6, 10},     {"node", ",\"node\":", 4, 8}};
	const unsigned char *s;
	size_t sl, hdr;
	uint32_t cnt;

	tr__buf_append(out, "[", 1);
	if (body == NULL || tr__mp_map_get(body, n, "steps", &s, &sl) != TR_OK ||
	    tr__mp_array_head(s, sl, &cnt, &hdr) != TR_OK) {
		tr__buf_append(out, "]", 1);
		return;
	}
	(void)tr__buf_reserve(out, 1 + (size_t)cnt * 96); /* best effort */
	const unsigned char *e = s + hdr;
	for (uint32_t i = 0; i < cnt; i++) {
		const unsigned char *val[6] = {NULL, NULL, NULL, NULL, NULL, NULL};
		uint32_t kn = 0;
		size_t kh = 0, pos;
		/* The array's bytes left bound the entry (checked body): its
		 * size comes from the walk below, not a walk of its own. */
		if (tr__mp_map_head(e, sl - (size_t)(e - s), &kn, &kh) == TR_OK) {
			pos = kh;
			for (uint32_t k = 0; k < kn; k++) {
				const unsigned char *kp = e + pos;
				size_t ks = tr__mp_size(kp);
				const char *kstr = NULL;
				size_t klen = 0;
				if (*kp >= 0xa0 && *kp <= 0xbf) /* fixstr: every key we know */
					kstr = (const char *)kp + 1, klen = *kp & 0x1fu;
				else if (tr__mp_str(kp, ks, &kstr, &klen) != TR_OK)
					kstr = NULL;
				for (int j = 0; kstr != NULL && j < 6; j++)
					if (f[j].klen == klen && f[j].key[0] == kstr[0] &&
					    memcmp(f[j].key, kstr, klen) == 0) {
						val[j] = kp + ks;
						break;
					}
				pos += ks;
				pos += tr__mp_size(e + pos);
			}
		} else {
			pos = tr__mp_size(e);
		}
		if (i > 0)
			tr__buf_append(out, ",", 1);
		for (int j = 0; j < 6; j++) {
			const unsigned char *v = val[j];
			if (j == 5 && v == NULL)
				break; /* not a placed actor's step */
			tr__buf_append(out, f[j].head, f[j].hlen);
			if (j == 2)
				put_ms(out, v != NULL ? mp_uint(v, tr__mp_size(v)) : 0);
			else if (v == NULL)
				tr__buf_append(out, "null", 4);
			else if (*v >= 0xa0 && *v <= 0xbf)
				tr__json_str((const char *)v + 1, *v & 0x1fu, out);
			else if (*v == 0xc2 || *v == 0xc3)
				tr__buf_append(out, *v == 0xc3 ? "true" : "false", *v == 0xc3 ? 4 : 5);
			else if (*v <= 0x7f)
				tr__fmt_u64(out, *v);
			else if (tr__mp_json_checked(v, out) != TR_OK)
				tr__buf_append(out, "null", 4);
		}
		tr__buf_append(out, "}", 1);
		e += pos;
	}
	tr__buf_append(out, "]", 1);
}

/* One chunk of a streamed answer: the JSON text ev (NDJSON line or SSE
 * record), after the headers if they are not out yet. */
static void stream_write(conn *c, const tr_buf *ev)
{
	tr_buf b;
	tr_buf_init(&b);
	if (!c->streaming) {
		tr__door_printf(&b,
		           "HTTP/1.1 200 OK\r\nServer: troupe\r\nContent-Type: %s\r\n"
		           "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nX-Trace-Id: %016llx%016llx\r\n%s\r\n",
		           c->mode == MODE_SSE ? "text/event-stream" : "application/x-ndjson",
		           (unsigned long long)c->trace_hi, (unsigned long long)c->trace_lo,
		           keep_alive(c) ? "" : "Connection: close\r\n");
		c->streaming = 1;
	}
	/* One chunk per event: "data: {...}\n\n" for SSE, "{...}\n" NDJSON */
	size_t framed = ev->len + (c->mode == MODE_SSE ? 8 : 1);
	tr__door_printf(&b, "%zx\r\n", framed);
	if (c->mode == MODE_SSE)
		tr__buf_append(&b, "data: ", 6);
	tr__buf_append(&b, ev->data, ev->len);
	tr__buf_append(&b, c->mode == MODE_SSE ? "\n\n" : "\n", c->mode == MODE_SSE ? 2 : 1);
	tr__buf_append(&b, "\r\n", 2);
	conn_write(c, &b);
}

static void on_event(dstate *ds, tr_msg *m)
{
	tr__map_ent *e = tr__map_get(&ds->runs, m->corr, TR_REF_NONE);
	tr_buf ev;
	if (e == NULL || m->body == NULL ||
	    tr_body_check(m->body) != TR_OK)
		return;
	tr_buf_init(&ev);
	map_json_ms(m->body->data, m->body->len, &ev);
	stream_write(e->ptr, &ev);
	tr_buf_free(&ev);
}

/* Keeps a finished run for /v1/traces: a few scalars and a reference to
 * the engine's answer (which holds the steps); JSON is made only when
 * someone asks. */
static void record_trace(dstate *ds, conn *c, const char *code, tr_body *answer, uint64_t us)
{
	door_trace t;
	memset(&t, 0, sizeof(t));
	t.trace_hi = c->trace_hi;
	t.trace_lo = c->trace_lo;
	t.us = us;
	t.ts_us = tr_wall_us();
	/* Zeroed above: copies of at most size - 1 bytes stay terminated. */
	memcpy(t.pipeline, c->pipeline, strnlen(c->pipeline, sizeof(t.pipeline) - 1));
	if (code != NULL)
		memcpy(t.code, code, strnlen(code, sizeof(t.code) - 1));
	t.answer = answer;
	tr__door_trace_add(ds->d, &t);
}

/* A string field of the checked map body, or NULL (then *n = 0). */
static const char *body_str(const unsigned char *body, size_t n, const char *key, size_t *len)
{
	const unsigned char *v;
	const char *s;
	size_t vl;
	*len = 0;
	if (body == NULL || tr__mp_map_get(body, n, key, &v, &vl) != TR_OK ||
	    tr__mp_str(v, vl, &s, len) != TR_OK)
		return NULL;
	return s;
}

static void on_answer(dstate *ds, tr_msg *m)
{
	void *p = NULL;
	if (!tr__map_del(&ds->runs, m->corr, TR_REF_NONE, &p))
		return; /* its client went away: the run was cancelled */
	conn *c = p;
	door_resp r;
	char tid[33];
	int is_err = (m->flags & TR_MSGF_ERROR) != 0;
	const unsigned char *body = NULL, *v;
	size_t blen = 0, vl;
	uint32_t cnt;
	uint64_t us = (tr_now_ns() - c->t0_ns) / 1000u;

	atomic_fetch_sub_explicit(&ds->d->inflight, 1, memory_order_relaxed);
	c->corr = 0;
	if (m->body != NULL && tr_body_check(m->body) == TR_OK &&
	    tr__mp_map_len(m->body->data, m->body->len, &cnt) == TR_OK) {
		body = m->body->data;
		blen = m->body->len;
	}
	hex128(c->trace_hi, c->trace_lo, tid);
	memset(&r, 0, sizeof(r));
	tr_buf_init(&r.body);
	r.ctype = "application/json";
	tr_buf *o = &r.body;
	/* About the JSON's size (msgpack grows by a half or so as JSON, plus
	 * the ms fields and the trace id): one allocation, not a chain. */
	(void)tr__buf_reserve(o, blen + blen / 2 + 192);
	int stream = c->mode != MODE_JSON;
	if (!is_err) {
		r.status = 200;
		tr__door_printf(o, "{%s\"output\":", stream ? "\"type\":\"done\"," : "");
		if (body == NULL || tr__mp_map_get(body, blen, "output", &v, &vl) != TR_OK ||
		    tr__mp_json_checked(v, o) != TR_OK)
			tr__buf_append(o, "null", 4);
		record_trace(ds, c, NULL, body ? tr_body_ref(m->body) : NULL, us);
	} else {
		size_t cl, ml, sl;
		const char *code = body_str(body, blen, "code", &cl);
		const char *msg = body_str(body, blen, "message", &ml);
		const char *step = body_str(body, blen, "step", &sl);
		char dflt[160];
		if (code == NULL) {
			code = err_code_of(m->err);
			cl = strlen(code);
		}
		if (msg == NULL) {
			snprintf(dflt, sizeof(dflt), "pipeline '%s' failed: %s", c->pipeline,
			         tr_strerror(m->err));
			msg = dflt;
			ml = strlen(dflt);
		}
		char cbuf[16];
		snprintf(cbuf, sizeof(cbuf), "%.*s", (int)cl, code);
		r.status = status_of(cbuf);
		tr__door_printf(o, "{%s\"error\":{\"code\":", stream ? "\"type\":\"error\"," : "");
		tr__json_str(code, cl, o);
		tr__buf_append(o, ",\"message\":", 11);
		tr__json_str(msg, ml, o);
		if (step != NULL) {
			tr__buf_append(o, ",\"step\":", 8);
			tr__json_str(step, sl, o);
		}
		if (body != NULL && tr__mp_map_get(body, blen, "attempts", &v, &vl) == TR_OK)
			tr__door_printf(o, ",\"attempts\":%llu", (unsigned long long)mp_uint(v, vl));
		tr__buf_append(o, "}", 1);
		if (r.status == 503) {
			uint64_t ra = body && tr__mp_map_get(body, blen, "retry_after_ms", &v, &vl) == TR_OK
			                  ? mp_uint(v, vl) : 0;
			snprintf(r.extra, sizeof(r.extra), "Retry-After: %llu\r\n",
			         (unsigned long long)(ra > 0 ? (ra + 999) / 1000 : 1));
		}
		record_trace(ds, c, cbuf, body ? tr_body_ref(m->body) : NULL, us);
	}
	tr__buf_append(o, ",\"trace_id\":\"", 13);
	tr__buf_append(o, tid, 32);
	tr__buf_append(o, "\",\"steps\":", 10);
	tr__door_steps_json(body, blen, o);
	tr__buf_append(o, "}", 1);
	if (stream && (c->streaming || !is_err)) {
		c->st = ST_IDLE; /* before the last chunk: keep_alive() reads it */
		stream_write(c, o);
		tr_buf_free(&r.body);
		tr_buf b;
		tr_buf_init(&b);
		tr__buf_append(&b, "0\r\n\r\n", 5); /* the last chunk */
		finish(c, NULL, 0, &b, 200, keep_alive(c));
		return;
	}
	tr__buf_append(o, "\n", 1);
	send_resp(c, &r);
	tr_buf_free(&r.body);
}

/* ---- accepting -------------------------------------------------------- */

/* A new connection of ds, idle, its handles on `loop` (not yet accepted). */
static conn *conn_new(dstate *ds, uv_loop_t *loop)
{
	conn *c = tr__calloc(1, sizeof(*c));
	if (c == NULL)
		return NULL;
	uv_tcp_init(loop, &c->tcp);
	uv_timer_init(loop, &c->timer);
	c->tcp.data = c;
	c->timer.data = c;
	c->ds = ds;
	tr_buf_init(&c->url);
	tr_buf_init(&c->body);
	tr_buf_init(&c->hname);
	tr_buf_init(&c->hval);
	tr_buf_init(&c->pending);
	http_parser_init(&c->parser, HTTP_REQUEST);
	c->parser.data = c;
	c->st = ST_IDLE;
	c->next = ds->conns;
	if (ds->conns)
		ds->conns->prev = c;
	ds->conns = c;
	atomic_fetch_add_explicit(&ds->d->conns, 1, memory_order_relaxed);
	return c;
}

/* A connection just accepted: wait for its first request. */
static void conn_start(conn *c)
{
	tr_door *d = c->ds->d;
	uv_tcp_nodelay(&c->tcp, 1);
	if (atomic_load_explicit(&d->conns, memory_order_relaxed) > d->o.max_connections) {
		fail_conn(c, 503, "too_many_connections", "the node has too many open connections");
		return;
	}
	uv_timer_start(&c->timer, idle_timer_cb, d->o.header_timeout_ms, 0);
	uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
}

static void on_connection(uv_stream_t *srv, int status)
{
	dstate *ds = srv->data;
	conn *c;
	if (status < 0)
		return;
	c = conn_new(ds, tr__ctx_loop(&ds->io));
	if (c == NULL)
		return; /* the kernel keeps it in the backlog; retried on the next */
	if (uv_accept(srv, (uv_stream_t *)&c->tcp) != 0) {
		conn_close(c);
		return;
	}
	conn_start(c);
}

/*
 * Draining: takes in the connections still in the listener's accept queue
 * (the kernel completed their handshake; closing the listener would reset
 * them, a request perhaps already sent). drain() then serves or closes
 * them like the others.
 */
static void accept_backlog(dstate *ds)
{
	uv_os_fd_t lfd;
	int fd;
	if (ds->listener == NULL || uv_fileno((const uv_handle_t *)ds->listener, &lfd) != 0)
		return;
	while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
		conn *c = conn_new(ds, tr__ctx_loop(&ds->io));
		if (c == NULL) {
			close(fd);
			return;
		}
		if (uv_tcp_open(&c->tcp, fd) != 0) {
			close(fd);
			conn_close(c);
			continue;
		}
		conn_start(c);
	}
}

static void listener_close_cb(uv_handle_t *h)
{
	tr__free(h);
}

static void stop_listening(dstate *ds)
{
	if (ds->listener != NULL) {
		uv_close((uv_handle_t *)ds->listener, listener_close_cb);
		ds->listener = NULL;
	}
}

/* ---- the door actor --------------------------------------------------- */

typedef struct door_arg {
	tr_door *d;
	unsigned idx;
	char *err;
	size_t errlen;
} door_arg;

static int door_init(tr_ctx *ctx, void *st, const void *argp)
{
	const door_arg *a = argp;
	dstate *ds = st;
	int fd, one = 1, rc;

	ds->d = a->d;
	ds->idx = a->idx;
	ds->io = tr__io_ctx(ctx);
	fd = socket(a->d->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto sys_err;
	/* One socket per worker on the same port: the kernel balances new
	 * connections over the workers' accept queues. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
	    bind(fd, (struct sockaddr *)&a->d->addr, a->d->addrlen) != 0)
		goto sys_err;
	/* Port 0: the first door's port, chosen by the kernel, becomes the
	 * address of every other door (they start after it). */
	if (a->idx == 0) {
		socklen_t len = a->d->addrlen;
		if (getsockname(fd, (struct sockaddr *)&a->d->addr, &len) != 0)
			goto sys_err;
	}
	ds->listener = tr__malloc(sizeof(*ds->listener));
	if (ds->listener == NULL) {
		close(fd);
		snprintf(a->err, a->errlen, "out of memory");
		return TR_ENOMEM;
	}
	uv_tcp_init(tr__ctx_loop(ctx), ds->listener);
	ds->listener->data = ds;
	if ((rc = uv_tcp_open(ds->listener, fd)) != 0 ||
	    (rc = uv_listen((uv_stream_t *)ds->listener, 1024, on_connection)) != 0) {
		snprintf(a->err, a->errlen, "cannot listen on %s: %s", a->d->o.listen, uv_strerror(rc));
		stop_listening(ds);
		return TR_EIO;
	}
	return TR_OK;
sys_err:
	snprintf(a->err, a->errlen, "cannot listen on %s: %s", a->d->o.listen, strerror(errno));
	if (fd >= 0)
		close(fd);
	return TR_EIO;
}

/*
 * Whether a request may already be waiting on an idle connection: bytes
 * in the socket that the loop has not read yet, or pipelined bytes kept
 * for after the last answer. A client that sent a request on a keep-alive
 * connection cannot know that the node has not read it; closing such a
 * connection would reset it, unanswered.
 */
static int has_unread(conn *c)
{
	uv_os_fd_t fd;
	int n = 0;
	if (c->pending.len > 0)
		return 1;
	if (uv_fileno((const uv_handle_t *)&c->tcp, &fd) != 0)
		return 0;
	return ioctl(fd, FIONREAD, &n) == 0 && n > 0;
}

/*
 * Stop accepting; close the idle connections, except those with a request
 * already on its way in (has_unread: it is read, run and answered, then
 * the connection closes: keep_alive() is off while draining). Busy ones
 * close after their answer; one still writing a keep-alive answer closes
 * when written, unless the client's next request has come meanwhile
 * (drain_close, in write_cb). A request sent after our close is the
 * client's race with our FIN, as with any keep-alive server.
 */
static void drain(dstate *ds)
{
	ds->draining = 1;
	accept_backlog(ds);
	stop_listening(ds);
	for (conn *c = ds->conns, *next; c != NULL; c = next) {
		next = c->next;
		if (c->st == ST_IDLE && c->writes == 0 && !has_unread(c))
			conn_close(c);
		else
			c->drain_close = c->st == ST_IDLE; /* an answer still being written */
	}
	/* release: pairs with the acquire in tr_door_drained. A door counted
	 * here has stopped its listener, so `conns` can only fall from now. */
	atomic_fetch_add_explicit(&ds->d->drained, 1, memory_order_release);
}

static int door_receive(tr_ctx *ctx, void *st, tr_msg *m)
{
	dstate *ds = st;
	(void)ctx;
	void *rc_ = NULL;
	if ((m->flags & TR_MSGF_REPLY) && tr__map_del(&ds->rates, m->corr, TR_REF_NONE, &rc_))
		on_rate(ds, rc_, m);
	else if (m->flags & TR_MSGF_REPLY)
		on_answer(ds, m);
	else if (m->tag == TR_TAG_RUN_EVENT)
		on_event(ds, m);
	else if (m->tag == DOOR_TAG_DRAIN)
		drain(ds);
	return TR_OK;
}

static void door_terminate(tr_ctx *ctx, void *st, int reason)
{
	dstate *ds = st;
	(void)ctx;
	(void)reason;
	stop_listening(ds);
	/* The node is stopping: close every connection; their memory goes in
	 * their close callbacks, which no longer touch this state. */
	while (ds->conns != NULL) {
		conn *c = ds->conns;
		if (c->st == ST_DISPATCHED) {
			atomic_fetch_sub_explicit(&ds->d->inflight, 1, memory_order_relaxed);
			c->corr = 0;
			c->st = ST_READ; /* no cancel: the engines are stopping too */
		}
		conn_close(c);
		c->ds = NULL;
	}
	tr__map_free(&ds->runs);
	tr__map_free(&ds->rates);
}

static const tr_actor_ops door_ops = {
	.name = "http",
	.size = sizeof(dstate),
	.init = door_init,
	.receive = door_receive,
	.terminate = door_terminate,
	/* Replies and events of every run in flight come here: room for them
	 * (replies are system messages and never dropped anyway). */
	.options = {.mailbox = 65536, .overflow = TR_OVERFLOW_DROP_NEWEST},
};

/* ---- control ---------------------------------------------------------- */

static int parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
	char host[128];
	const char *colon, *port;
	memset(ss, 0, sizeof(*ss));
	if (s == NULL)
		return -1;
	if (s[0] == '[') {
		const char *end = strchr(s, ']');
		if (end == NULL || end[1] != ':' || (size_t)(end - s - 1) >= sizeof(host))
			return -1;
		memcpy(host, s + 1, (size_t)(end - s - 1));
		host[end - s - 1] = '\0';
		port = end + 2;
	} else {
		colon = strrchr(s, ':');
		if (colon == NULL || (size_t)(colon - s) >= sizeof(host))
			return -1;
		memcpy(host, s, (size_t)(colon - s));
		host[colon - s] = '\0';
		port = colon + 1;
	}
	char *end;
	if (*port < '0' || *port > '9')
		return -1; /* no sign, no space */
	long p = strtol(port, &end, 10);
	if (*end != '\0' || p < 0 || p > 65535)
		return -1;
	if (host[0] == '\0')
		snprintf(host, sizeof(host), "0.0.0.0");
	if (uv_ip4_addr(host, (int)p, (struct sockaddr_in *)ss) == 0) {
		*len = sizeof(struct sockaddr_in);
		return 0;
	}
	if (uv_ip6_addr(host, (int)p, (struct sockaddr_in6 *)ss) == 0) {
		*len = sizeof(struct sockaddr_in6);
		return 0;
	}
	return -1;
}

/* A door of n workers with o's limits (zeros: the defaults), nothing
 * started; NULL on OOM. Freed by tr_door_free. */
static tr_door *door_new(tr_node *node, const tr_door_opts *o, unsigned n)
{
	tr_door *d = tr__calloc(1, sizeof(*d));
	if (d == NULL)
		return NULL;
	d->node = node;
	d->o = *o;
	if (d->o.max_body == 0)
		d->o.max_body = 1 << 20;
	if (d->o.max_header == 0)
		d->o.max_header = 16 << 10;
	if (d->o.max_connections == 0)
		d->o.max_connections = 10000;
	if (d->o.header_timeout_ms == 0)
		d->o.header_timeout_ms = 10000;
	if (d->o.idle_timeout_ms == 0)
		d->o.idle_timeout_ms = 60000;
	if (d->o.run_timeout_ms == 0)
		d->o.run_timeout_ms = 300000;
	d->started_ns = tr_now_ns();
	uv_mutex_init(&d->conf_mu);
	uv_mutex_init(&d->ring_mu);
	d->n = n;
	d->refs = tr__calloc(d->n, sizeof(*d->refs));
	d->counts = tr__calloc(d->n, sizeof(*d->counts));
	if (d->refs == NULL || d->counts == NULL) {
		tr_door_free(d);
		return NULL;
	}
	return d;
}

int tr_door_start(tr_node *node, const tr_door_opts *o, tr_door **out, char *err, size_t errlen)
{
	tr_door *d = door_new(node, o, tr_node_threads(node));
	int rc = TR_ENOMEM;

	if (d == NULL) {
		snprintf(err, errlen, "out of memory");
		return TR_ENOMEM;
	}
	if (parse_addr(o->listen, &d->addr, &d->addrlen) != 0) {
		snprintf(err, errlen, "http: '%s' is not an address (want host:port or [v6]:port)",
		         o->listen ? o->listen : "");
		rc = TR_EINVAL;
		goto fail;
	}
	/* SO_REUSEPORT would let us share the port with another process of
	 * the same user, silently splitting its traffic: bind once without
	 * it first, so that a port in use (with or without reuseport) is an
	 * error. */
	int probe = socket(d->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int yes = 1;
	/* SO_REUSEADDR: connections of an earlier node still in TIME-WAIT
	 * must not block a restart (Linux still refuses a port someone
	 * listens on). */
	if (probe >= 0)
		(void)setsockopt(probe, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
	if (probe < 0 || bind(probe, (struct sockaddr *)&d->addr, d->addrlen) != 0) {
		snprintf(err, errlen, "cannot listen on %s: %s", o->listen, strerror(errno));
		if (probe >= 0)
			close(probe);
		rc = TR_EIO;
		goto fail;
	}
	close(probe);
	for (unsigned i = 0; i < d->n; i++) {
		char name[32];
		door_arg a = {d, i, err, errlen};
		tr_spawn_opts so;
		memset(&so, 0, sizeof(so));
		snprintf(name, sizeof(name), "http:%u", i);
		so.name = name;
		if (err != NULL && errlen > 0)
			err[0] = '\0';
		rc = tr__spawn_pinned(node, i, &door_ops, &a, &so, &d->refs[i]);
		if (rc != TR_OK) {
			if (err != NULL && errlen > 0 && err[0] == '\0')
				snprintf(err, errlen, "cannot start the HTTP door on %s: %s", o->listen,
				         tr_strerror(rc));
			goto fail;
		}
	}
	*out = d;
	return TR_OK;
fail:
	/* Doors already up stop with the node; the caller stops it. */
	*out = d; /* freed by tr_door_free after the node stopped */
	return rc;
}

int tr_door_set_config(tr_door *d, const tr_config *cfg, unsigned gen)
{
	door_conf *c, *old;
	uv_mutex_lock(&d->conf_mu);
	old = d->conf;
	if (old)
		atomic_fetch_add_explicit(&old->refs, 1, memory_order_relaxed);
	uv_mutex_unlock(&d->conf_mu);
	int rc = tr__door_conf_new(cfg, gen, old, &c);
	tr__door_conf_put(old);
	if (rc != TR_OK)
		return rc;
	uv_mutex_lock(&d->conf_mu);
	old = d->conf;
	d->conf = c;
	uv_mutex_unlock(&d->conf_mu);
	tr__door_conf_put(old);
	return TR_OK;
}

door_conf *tr__door_conf_get(tr_door *d)
{
	uv_mutex_lock(&d->conf_mu);
	door_conf *c = d->conf;
	/* relaxed: the mutex orders the publication and this increment */
	if (c)
		atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
	uv_mutex_unlock(&d->conf_mu);
	return c;
}

void tr_door_set_backends(tr_door *d, const struct tr_pg *pg, const struct tr_redis *redis)
{
	d->pg = pg;
	d->redis = redis;
}

void tr_door_set_cluster(tr_door *d, const struct tr_cluster *c)
{
	d->cluster = c;
}

void tr_door_drain(tr_door *d)
{
	atomic_store(&d->draining, 1);
	for (unsigned i = 0; i < d->n; i++) {
		tr_msg *m = tr_msg_new();
		if (m == NULL)
			continue;
		m->tag = DOOR_TAG_DRAIN;
		m->flags = TR_MSGF_SYSTEM;
		tr_node_send(d->node, d->refs[i], m);
	}
}


uint64_t tr_door_inflight(const tr_door *d)
{
	return atomic_load_explicit(&d->inflight, memory_order_relaxed);
}

int tr_door_drained(const tr_door *d)
{
	/* acquire: pairs with the release in drain() */
	return atomic_load_explicit(&d->drained, memory_order_acquire) >= d->n &&
	       atomic_load_explicit(&d->conns, memory_order_relaxed) == 0 &&
	       atomic_load_explicit(&d->inflight, memory_order_relaxed) == 0;
}

int tr_door_port(const tr_door *d)
{
	const struct sockaddr *sa = (const struct sockaddr *)&d->addr;
	return sa->sa_family == AF_INET6 ? ntohs(((const struct sockaddr_in6 *)sa)->sin6_port)
	                                 : ntohs(((const struct sockaddr_in *)sa)->sin_port);
}

uint32_t tr_door_connections(const tr_door *d)
{
	return atomic_load_explicit(&d->conns, memory_order_relaxed);
}

void tr__door_trace_add(tr_door *d, const door_trace *t)
{
	uv_mutex_lock(&d->ring_mu);
	door_trace *slot = &d->ring[d->ring_next++ % DOOR_TRACES];
	tr_body *old = slot->answer;
	*slot = *t; /* takes t's answer reference */
	uv_mutex_unlock(&d->ring_mu);
	tr_body_unref(old);
}

void tr_door_free(tr_door *d)
{
	if (d == NULL)
		return;
	tr__door_conf_put(d->conf);
	for (unsigned i = 0; i < DOOR_TRACES; i++)
		tr_body_unref(d->ring[i].answer);
	uv_mutex_destroy(&d->conf_mu);
	uv_mutex_destroy(&d->ring_mu);
	tr__free(d->refs);
	tr__free(d->counts);
	tr__free(d);
}

/* ---- fuzzing (tests/fuzz/fuzz_http.c) ---------------------------------- */

int tr__door_fuzz_new(tr_node *node, tr_door **out)
{
	tr_door_opts o;
	tr_door *d;
	struct door_fuzz *f;
	*out = NULL;
	memset(&o, 0, sizeof(o));
	d = door_new(node, &o, 1);
	f = tr__calloc(1, sizeof(*f));
	if (d == NULL || f == NULL || uv_loop_init(&f->loop) != 0) {
		tr__free(f);
		tr_door_free(d);
		return TR_ENOMEM;
	}
	f->ds.d = d;
	d->fuzz = f;
	*out = d;
	return TR_OK;
}

/* The engine's answer to the run f holds, as a pipeline whose one step
 * echoes its input would give it (TR_RUN_TRACE; every second run fails
 * as overloaded instead), after one step event if the client streams. */
static void fuzz_answer(struct door_fuzz *f, conn *c)
{
	tr_msg *run = f->run, *ev = tr_msg_new(), *a = tr_msg_new();
	tr_buf b;
	msgpack_packer pk;
	int fail = (run->corr = c->corr) % 2 == 0, bad;
	f->run = NULL;
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	if (ev != NULL && c->mode != MODE_JSON) {
		bad = msgpack_pack_map(&pk, 3) || tr__mp_pack_cstr(&pk, "type") ||
		      tr__mp_pack_cstr(&pk, "step") || tr__mp_pack_cstr(&pk, "step") ||
		      tr__mp_pack_cstr(&pk, "echo") || tr__mp_pack_cstr(&pk, "us") ||
		      msgpack_pack_uint64(&pk, 1234);
		ev->tag = TR_TAG_RUN_EVENT;
		ev->corr = c->corr;
		if (!bad && (ev->body = tr_body_new(b.data, b.len)) != NULL)
			on_event(&f->ds, ev);
	}
	b.len = 0;
	bad = msgpack_pack_map(&pk, fail ? 6 : 2);
	if (fail)
		bad = bad || tr__mp_pack_cstr(&pk, "code") || tr__mp_pack_cstr(&pk, "overload") ||
		      tr__mp_pack_cstr(&pk, "message") || tr__mp_pack_cstr(&pk, "busy") ||
		      tr__mp_pack_cstr(&pk, "step") || tr__mp_pack_cstr(&pk, "echo") ||
		      tr__mp_pack_cstr(&pk, "attempts") || msgpack_pack_uint64(&pk, 2) ||
		      tr__mp_pack_cstr(&pk, "retry_after_ms") || msgpack_pack_uint64(&pk, 1500);
	else
		bad = bad || tr__mp_pack_cstr(&pk, "output") ||
		      tr__buf_append(&b, run->body->data, run->body->len) != TR_OK;
	bad = bad || tr__mp_pack_cstr(&pk, "steps") || msgpack_pack_array(&pk, 1) ||
	      msgpack_pack_map(&pk, 5) || tr__mp_pack_cstr(&pk, "step") ||
	      tr__mp_pack_cstr(&pk, "echo") || tr__mp_pack_cstr(&pk, "actor") ||
	      tr__mp_pack_cstr(&pk, "echo#0") || tr__mp_pack_cstr(&pk, "us") ||
	      msgpack_pack_uint64(&pk, 1234567) || tr__mp_pack_cstr(&pk, "attempts") ||
	      msgpack_pack_uint64(&pk, 1) || tr__mp_pack_cstr(&pk, "cached") ||
	      msgpack_pack_false(&pk);
	if (a != NULL) {
		a->flags = TR_MSGF_REPLY | (fail ? TR_MSGF_ERROR : 0);
		a->err = fail ? TR_EFULL : TR_OK;
		a->corr = c->corr;
		a->trace_hi = run->trace_hi;
		a->trace_lo = run->trace_lo;
		if (!bad)
			a->body = tr_body_new(b.data, b.len);
		on_answer(&f->ds, a); /* answers c, also without a body */
	}
	tr_buf_free(&b);
	tr_msg_free(ev);
	tr_msg_free(a);
	tr_msg_free(run);
}

void tr__door_fuzz_request(tr_door *d, const void *p, size_t n, size_t seg, tr_buf *out)
{
	struct door_fuzz *f = d->fuzz;
	conn *c;
	/* Each input starts with no traces kept: an input then replays alone
	 * as it ran in the fuzzer, and /v1/traces shows only its own runs
	 * (with the ring full of earlier inputs' runs, rendering it was half
	 * the target's time). */
	uv_mutex_lock(&d->ring_mu);
	for (unsigned i = 0; i < DOOR_TRACES; i++) {
		tr_body_unref(d->ring[i].answer);
		d->ring[i].answer = NULL;
	}
	d->ring_next = 0;
	uv_mutex_unlock(&d->ring_mu);
	c = conn_new(&f->ds, &f->loop);
	if (c == NULL)
		return;
	f->out = out;
	if (seg == 0)
		seg = n;
	/* The reads, as read_cb gets them; each run dispatched is answered
	 * before the next read (a pipelined request behind it resumes). */
	for (size_t off = 0; off < n && c->st != ST_CLOSING; off += seg) {
		uv_buf_t b = uv_buf_init((char *)p + off, (unsigned)(n - off < seg ? n - off : seg));
		read_cb((uv_stream_t *)&c->tcp, (ssize_t)b.len, &b);
		while (c->st == ST_DISPATCHED && f->run != NULL)
			fuzz_answer(f, c);
		if (c->st == ST_DISPATCHED)
			abort(); /* a bug: without Redis nothing else is waited for */
	}
	read_cb((uv_stream_t *)&c->tcp, UV_EOF, NULL); /* the client's EOF: closes c */
	uv_run(&f->loop, UV_RUN_DEFAULT);                /* its close callbacks free it */
	f->out = NULL;
}

void tr__door_fuzz_free(tr_door *d)
{
	struct door_fuzz *f = d->fuzz;
	uv_run(&f->loop, UV_RUN_DEFAULT);
	uv_loop_close(&f->loop);
	tr__map_free(&f->ds.runs);
	tr__map_free(&f->ds.rates);
	tr_msg_free(f->run);
	tr__free(f);
	d->fuzz = NULL;
	tr_door_free(d);
}
