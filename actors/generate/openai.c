/*
 * actors/generate/openai.c -- the openai backend's HTTP client: POST
 * /chat/completions to an OpenAI-compatible server (llama.cpp server,
 * vLLM, Ollama, OpenAI), streamed as server-sent events or not, with
 * libcurl's multi interface driven by a libuv loop. See generate.h for
 * the contract (messages to the owner, error classes).
 *
 * Design notes.
 *
 * Why a thread. libuv handles belong to one loop. A kind actor is
 * spawned by its supervisor on some worker and may migrate to another
 * between turns, so it cannot own uv_poll_t handles on a worker's loop
 * (the runtime's pinned spawn, tr__spawn_pinned, is for actors whose
 * spawn call one writes, like the HTTP door's; a supervisor's child has
 * none). So each generate instance with backend "openai" starts one
 * client: a small thread with its own uv_loop_t and one CURLM. The actor
 * hands requests over through a mutex-protected queue and a uv_async_t
 * (one wake-up per empty -> non-empty transition); the thread posts the
 * results back as messages (tr_node_send), which the actor turns into
 * deltas and the step's reply. Nothing else is shared: a request belongs
 * to the actor until submitted, then to the thread.
 *
 * Why per instance, not one per process: the client lives exactly as
 * long as its actor (started by init, stopped and joined by terminate),
 * so no message is ever sent for an actor, or to a node, that is gone,
 * and there is no global state to count references to. The cost is one
 * thread, asleep in epoll when idle, and one connection pool per
 * instance: with instances = n, up to n connections to the same server
 * even when one would do.
 *
 * Keep-alive. The CURLM's connection cache keeps finished connections
 * open (up to max_conns), and the next request to the same host reuses
 * one; two requests in a row go over one TCP connection.
 *
 * Timeouts. connect_timeout and timeout are curl's (CONNECTTIMEOUT_MS,
 * TIMEOUT_MS; the total is clipped to the step's deadline by the actor).
 * first_byte_timeout is ours: a uv timer per request, started when the
 * request is added and stopped by the first byte of the response body.
 * The body, not the headers: a streaming server sends its headers at
 * once and the first token only after the prompt is processed, and that
 * wait is what the setting bounds.
 *
 * Streams. With stream = true the request asks for SSE with usage in the
 * last chunk (stream_options.include_usage). Each event's data is one
 * JSON chunk; the content of choices[0].delta is appended to the answer,
 * and what a write callback brought is posted as one delta (so a burst of
 * tokens is one message, not one per token). "data: [DONE]" ends the
 * stream; a stream that ends without it (and without a finish_reason) was
 * cut, and is an error. A server that answers a stream request with plain
 * JSON is understood too (no deltas then; the actor sends the whole
 * answer as one).
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>
#include <uv.h>

#include "actors/generate/generate.h"
#include "actors/generate/window.h"
#include "actors/kit.h"
#include "core/alloc.h"
#include "msg/msg_int.h"
#include "pipe/mp.h"

#define RAW_MAX (4u << 20)      /* a plain JSON response, at most */
#define ERR_BODY_MAX 4096       /* of an error response's body, kept */
#define SSE_LINE_MAX (1u << 20) /* one SSE line (one event's JSON), at most */
#define TEXT_MAX (4u << 20)     /* an answer, at most */
#define SERVER_MSG_MAX 200      /* of the server's error message, in ours */

typedef struct sock_w sock_w;
typedef struct xfer xfer;

/* A socket curl asked us to watch. */
struct sock_w {
	uv_poll_t poll;
	curl_socket_t fd;
	tr_oai *c;
	sock_w *prev, *next;
};

/* One request, from tr_oai_submit to its DONE. */
struct xfer {
	xfer *prev, *next;  /* the inbox, then the live list */
	tr_oai *c;
	uint64_t id;
	CURL *easy;
	char *body;         /* the request (owned) */
	size_t blen;
	uint32_t total_ms;
	uint8_t stream, by_deadline;
	uint8_t timer_on;   /* fb is initialised (closed before free) */
	uint8_t got_body, fb_fired, sse, event_stream_ct;
	uint8_t has_event, done_seen, finish_seen;
	tr_msg *done;       /* the DONE message, allocated at submit */
	uv_timer_t fb;      /* first_byte_timeout */
	long status;
	tr_buf raw;         /* a plain response (or an error's body) */
	tr_buf line;        /* an SSE line not yet ended */
	tr_buf event;       /* the data of the SSE event being read */
	tr_buf text;        /* the answer so far */
	tr_buf chunk;       /* answer bytes not yet posted as a delta */
	int64_t ptok, ctok; /* usage from the server; -1: not reported */
	char finish[32];
	int fail;           /* set by a callback that aborts the transfer */
	char failmsg[256];
	char retry_after[48];
	char errbuf[CURL_ERROR_SIZE];
};

struct tr_oai {
	uv_loop_t loop;
	uv_async_t wake;
	uv_timer_t tick;    /* curl's timeout */
	uv_thread_t th;
	CURLM *multi;
	uv_mutex_t mu;
	/* Protected by mu (the actor's side writes them): */
	xfer *inbox, *inbox_tail;
	int stopping;
	/* The loop thread's own: */
	xfer *live;
	sock_w *socks;
	int closing;        /* in shutdown: curl_multi_cleanup is running */
	/* Read-only after start: */
	tr_node *node;
	tr_ref owner;
	char *url;
	struct curl_slist *hdrs[2]; /* [stream] */
	uint32_t connect_ms, first_byte_ms;
};

static uv_once_t curl_once = UV_ONCE_INIT;
static int curl_ok;

static void curl_init_once(void)
{
	curl_ok = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
}

/* ---- messages to the owner ----------------------------------------------- */

static tr_msg *new_msg(uint32_t tag, uint64_t id)
{
	tr_msg *m = tr_msg_new();
	if (m == NULL)
		return NULL;
	m->tag = tag;
	m->flags = TR_MSGF_SYSTEM; /* never dropped; in order with each other */
	m->arg = id;
	return m;
}

/* Posts x's new content as a delta, best effort (the DONE has it all). */
static void post_delta(xfer *x)
{
	tr_buf b;
	msgpack_packer pk;
	if (x->chunk.len == 0)
		return;
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	tr_msg *m = NULL;
	if (msgpack_pack_map(&pk, 1) == 0 && tr__mp_pack_cstr(&pk, "text") == 0 &&
	    tr_kpack_str(&pk, (const char *)x->chunk.data, x->chunk.len) == TR_OK &&
	    (m = new_msg(TR_GEN_TAG_OAI_DELTA, x->id)) != NULL &&
	    (m->body = tr_body_new(b.data, b.len)) != NULL) {
		(void)tr_node_send(x->c->node, x->c->owner, m);
		m = NULL;
	}
	tr_msg_free(m);
	tr_buf_free(&b);
	x->chunk.len = 0;
}

/* ---- parsing ----------------------------------------------------------- */

static int xfail(xfer *x, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int xfail(xfer *x, int err, const char *fmt, ...)
{
	va_list ap;
	if (x->fail)
		return err;
	x->fail = err;
	va_start(ap, fmt);
	vsnprintf(x->failmsg, sizeof(x->failmsg), fmt, ap);
	va_end(ap);
	return err;
}

static int add_text(xfer *x, const char *s, size_t n)
{
	if (x->text.len + n > TEXT_MAX)
		return xfail(x, TR_EFAILED, "openai: the answer is longer than %u MiB", TEXT_MAX >> 20);
	if (tr__buf_append(&x->text, s, n) != TR_OK ||
	    (x->sse && tr__buf_append(&x->chunk, s, n) != TR_OK))
		return xfail(x, TR_ENOMEM, "out of memory");
	return TR_OK;
}

static void read_usage(xfer *x, json_t *root)
{
	json_t *u = json_object_get(root, "usage");
	json_t *p = json_object_get(u, "prompt_tokens");
	json_t *c = json_object_get(u, "completion_tokens");
	if (json_is_integer(p) && json_integer_value(p) >= 0)
		x->ptok = json_integer_value(p);
	if (json_is_integer(c) && json_integer_value(c) >= 0)
		x->ctok = json_integer_value(c);
}

static void read_finish(xfer *x, json_t *choice)
{
	json_t *f = json_object_get(choice, "finish_reason");
	if (json_is_string(f)) {
		x->finish_seen = 1;
		snprintf(x->finish, sizeof(x->finish), "%s", json_string_value(f));
	}
}

/* The server's own words about an error: error.message, error (a
 * string) or message; else NULL. */
static const char *error_text(json_t *root)
{
	json_t *e = json_object_get(root, "error");
	if (json_is_string(e))
		return json_string_value(e);
	if (json_is_string(json_object_get(e, "message")))
		return json_string_value(json_object_get(e, "message"));
	if (json_is_string(json_object_get(root, "message")))
		return json_string_value(json_object_get(root, "message"));
	return NULL;
}

/* One SSE event's data: a chunk of the completion, or [DONE]. */
static int sse_event(xfer *x, const char *d, size_t n)
{
	json_error_t je;
	if (n == 6 && memcmp(d, "[DONE]", 6) == 0) {
		x->done_seen = 1;
		return TR_OK;
	}
	if (x->done_seen)
		return TR_OK; /* nothing counts after [DONE] */
	json_t *root = json_loadb(d, n, 0, &je);
	if (root == NULL)
		return xfail(x, TR_EFAILED, "openai: bad stream event: %s", je.text);
	int rc = TR_OK;
	json_t *e = json_object_get(root, "error");
	const char *et = json_is_string(e) || json_is_object(e) ? error_text(root) : NULL;
	if (et != NULL) {
		/* vLLM and others report a failure mid-stream as an event. */
		rc = xfail(x, TR_EFAILED, "openai: the server failed mid-stream: %.*s",
		           SERVER_MSG_MAX, et);
		goto out;
	}
	json_t *ch = json_object_get(root, "choices");
	json_t *c0 = json_array_get(ch, 0);
	json_t *content = json_object_get(json_object_get(c0, "delta"), "content");
	if (json_is_string(content))
		rc = add_text(x, json_string_value(content), json_string_length(content));
	read_finish(x, c0);
	read_usage(x, root);
out:
	json_decref(root);
	return rc;
}

/* One SSE line (its end removed). */
static int sse_line(xfer *x, const char *s, size_t n)
{
	if (n > 0 && s[n - 1] == '\r')
		n--;
	if (n == 0) { /* a blank line ends the event */
		int rc = TR_OK;
		if (x->has_event)
			rc = sse_event(x, (const char *)x->event.data, x->event.len);
		x->event.len = 0;
		x->has_event = 0;
		return rc;
	}
	if (s[0] == ':')
		return TR_OK; /* a comment (keep-alive pings) */
	const char *colon = memchr(s, ':', n);
	size_t fn = colon ? (size_t)(colon - s) : n;
	if (fn != 4 || memcmp(s, "data", 4) != 0)
		return TR_OK; /* event:, id:, retry: mean nothing here */
	const char *v = colon ? colon + 1 : s + n;
	size_t vn = (size_t)(s + n - v);
	if (vn > 0 && v[0] == ' ')
		v++, vn--;
	if ((x->has_event && tr__buf_append(&x->event, "\n", 1) != TR_OK) ||
	    tr__buf_append(&x->event, v, vn) != TR_OK)
		return xfail(x, TR_ENOMEM, "out of memory");
	x->has_event = 1;
	return TR_OK;
}

static int sse_feed(xfer *x, const char *p, size_t n)
{
	while (n > 0) {
		const char *nl = memchr(p, '\n', n);
		size_t k = nl ? (size_t)(nl - p) : n;
		if (x->line.len + k > SSE_LINE_MAX)
			return xfail(x, TR_EFAILED, "openai: a stream line is longer than %u MiB",
			             SSE_LINE_MAX >> 20);
		if (nl == NULL) {
			if (tr__buf_append(&x->line, p, k) != TR_OK)
				return xfail(x, TR_ENOMEM, "out of memory");
			return TR_OK;
		}
		int rc;
		if (x->line.len > 0) {
			if (tr__buf_append(&x->line, p, k) != TR_OK)
				return xfail(x, TR_ENOMEM, "out of memory");
			rc = sse_line(x, (const char *)x->line.data, x->line.len);
			x->line.len = 0;
		} else {
			rc = sse_line(x, p, k);
		}
		if (rc != TR_OK)
			return rc;
		p += k + 1;
		n -= k + 1;
	}
	return TR_OK;
}

/* What is left when the stream ends: a last line and event without their
 * blank line (lenient: the data is all there). */
static int sse_end(xfer *x)
{
	int rc = TR_OK;
	if (x->line.len > 0) {
		rc = sse_line(x, (const char *)x->line.data, x->line.len);
		x->line.len = 0;
	}
	if (rc == TR_OK)
		rc = sse_line(x, "", 0);
	return rc;
}

/* A plain (non-stream) response. */
static int parse_plain(xfer *x)
{
	json_error_t je;
	const char *d = (const char *)x->raw.data;
	size_t n = x->raw.len;
	while (n > 0 && isspace((unsigned char)d[0]))
		d++, n--;
	if (n >= 5 && memcmp(d, "data:", 5) == 0) {
		/* SSE without its content type: read it as a stream. */
		int rc = sse_feed(x, d, n);
		if (rc == TR_OK)
			rc = sse_end(x);
		if (rc == TR_OK && !x->done_seen && !x->finish_seen)
			rc = xfail(x, TR_EFAILED, "openai: the stream ended before [DONE]");
		return rc;
	}
	json_t *root = json_loadb(d, n, 0, &je);
	if (root == NULL)
		return xfail(x, TR_EFAILED, "openai: the response is not JSON: %s", je.text);
	int rc = TR_OK;
	json_t *c0 = json_array_get(json_object_get(root, "choices"), 0);
	json_t *msg = json_object_get(c0, "message");
	json_t *content = json_object_get(msg, "content");
	if (json_is_string(content))
		rc = add_text(x, json_string_value(content), json_string_length(content));
	else if (!json_is_object(msg))
		rc = xfail(x, TR_EFAILED, "openai: the response has no choices[0].message");
	/* content null (a tool call, a refusal field): an empty answer. */
	read_finish(x, c0);
	read_usage(x, root);
	json_decref(root);
	return rc;
}

/* ---- curl callbacks ------------------------------------------------------ */

static size_t on_header(char *p, size_t size, size_t nitems, void *ud)
{
	xfer *x = ud;
	size_t n = size * nitems;
	if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) {
		x->retry_after[0] = '\0'; /* a new response (after a 100) */
		x->event_stream_ct = 0;
	} else if (n > 12 && strncasecmp(p, "retry-after:", 12) == 0) {
		const char *v = p + 12;
		size_t vn = n - 12;
		while (vn > 0 && (*v == ' ' || *v == '\t'))
			v++, vn--;
		while (vn > 0 && isspace((unsigned char)v[vn - 1]))
			vn--;
		if (vn >= sizeof(x->retry_after))
			vn = sizeof(x->retry_after) - 1;
		for (size_t i = 0; i < vn; i++) /* it goes into a message: printable only */
			x->retry_after[i] = (char)((unsigned char)v[i] >= 0x20 &&
			                                   (unsigned char)v[i] < 0x7f
			                               ? v[i]
			                               : '?');
		x->retry_after[vn] = '\0';
	} else if (n > 13 && strncasecmp(p, "content-type:", 13) == 0) {
		const char *v = p + 13;
		size_t vn = n - 13;
		while (vn > 0 && (*v == ' ' || *v == '\t'))
			v++, vn--;
		x->event_stream_ct = vn >= 17 && strncasecmp(v, "text/event-stream", 17) == 0;
	}
	return n;
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
	xfer *x = ud;
	size_t n = size * nmemb;
	if (!x->got_body) {
		x->got_body = 1;
		if (x->timer_on)
			uv_timer_stop(&x->fb);
		curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->status);
		x->sse = x->stream && x->status >= 200 && x->status < 300 && x->event_stream_ct;
	}
	if (x->status < 200 || x->status >= 300) {
		size_t room = ERR_BODY_MAX - x->raw.len;
		if (tr__buf_append(&x->raw, p, n < room ? n : room) != TR_OK) {
			xfail(x, TR_ENOMEM, "out of memory");
			return 0;
		}
		return n;
	}
	if (x->sse) {
		if (sse_feed(x, p, n) != TR_OK)
			return 0; /* aborts: CURLE_WRITE_ERROR, x->fail says why */
		post_delta(x);
		return n;
	}
	if (x->raw.len + n > RAW_MAX) {
		xfail(x, TR_EFAILED, "openai: the response is larger than %u MiB", RAW_MAX >> 20);
		return 0;
	}
	if (tr__buf_append(&x->raw, p, n) != TR_OK) {
		xfail(x, TR_ENOMEM, "out of memory");
		return 0;
	}
	return n;
}

/* ---- finishing a request --------------------------------------------------- */

static void xfer_free(xfer *x)
{
	tr__free(x->body);
	tr_buf_free(&x->raw);
	tr_buf_free(&x->line);
	tr_buf_free(&x->event);
	tr_buf_free(&x->text);
	tr_buf_free(&x->chunk);
	tr_msg_free(x->done);
	tr__free(x);
}

static void on_fb_closed(uv_handle_t *h)
{
	xfer_free(h->data);
}

static void live_unlink(tr_oai *c, xfer *x)
{
	if (x->prev)
		x->prev->next = x->next;
	else
		c->live = x->next;
	if (x->next)
		x->next->prev = x->prev;
	x->prev = x->next = NULL;
}

/* Takes x out of curl and frees it (after its timer closes). */
static void xfer_end(tr_oai *c, xfer *x)
{
	live_unlink(c, x);
	if (x->easy != NULL) {
		curl_multi_remove_handle(c->multi, x->easy);
		curl_easy_cleanup(x->easy);
		x->easy = NULL;
	}
	if (x->timer_on)
		uv_close((uv_handle_t *)&x->fb, on_fb_closed);
	else
		xfer_free(x);
}

/* Seconds a Retry-After value asks for (delta-seconds or an HTTP date);
 * -1 if it says nothing usable. */
static long retry_after_s(const char *v)
{
	if (v[0] == '\0')
		return -1;
	if (isdigit((unsigned char)v[0])) {
		char *end;
		long s = strtol(v, &end, 10);
		return *end == '\0' && s >= 0 && s < 86400 * 7 ? s : -1;
	}
	time_t t = curl_getdate(v, NULL);
	if (t < 0)
		return -1;
	time_t now = time(NULL);
	return t <= now ? 0 : (long)(t - now < 86400 * 7 ? t - now : 86400 * 7);
}

/* The server's error message from an error response's body, cleaned for
 * ours: one line, valid UTF-8, at most SERVER_MSG_MAX bytes. */
static void server_message(xfer *x, char *out, size_t cap)
{
	json_t *root = json_loadb((const char *)x->raw.data, x->raw.len, 0, NULL);
	const char *s = root ? error_text(root) : NULL;
	size_t n;
	tr_buf b;
	if (s == NULL && root == NULL) {
		s = (const char *)x->raw.data;
		n = x->raw.len;
	} else {
		n = s ? strlen(s) : 0;
	}
	tr_buf_init(&b);
	n = tr_gwin_cut(s ? s : "", n, SERVER_MSG_MAX);
	out[0] = '\0';
	if (n > 0 && tr_gen_clean(&b, s, n, cap - 1, NULL) != (size_t)-1) {
		memcpy(out, b.data, b.len);
		out[b.len] = '\0';
	}
	tr_buf_free(&b);
	json_decref(root);
}

/* What an HTTP status means (generate.h): the error class. */
static int status_class(long st)
{
	if (st == 429 || st == 503)
		return TR_EREJECTED;
	if (st == 408 || st == 504)
		return TR_ETIMEDOUT;
	if (st >= 400 && st < 500)
		return TR_EINVAL;
	return TR_EFAILED;
}

/* Finishes x: its outcome as the DONE message, then frees it. */
static void complete(tr_oai *c, xfer *x, CURLcode rc)
{
	int err = TR_OK;
	char msg[512];
	long ra_ms = -1;
	msg[0] = '\0';
	if (x->easy != NULL)
		curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->status);

	if (x->fb_fired) {
		err = TR_ETIMEDOUT;
		snprintf(msg, sizeof(msg), "openai: no response within first_byte_timeout (%u ms)",
		         c->first_byte_ms);
	} else if (x->fail) {
		err = x->fail;
		snprintf(msg, sizeof(msg), "%s", x->failmsg);
	} else if (x->status >= 300 || (rc == CURLE_OK && x->status < 200)) {
		char sm[SERVER_MSG_MAX + 8];
		char ra[96] = "";
		long s = x->status;
		err = status_class(s);
		server_message(x, sm, sizeof(sm));
		if (s == 429 || s == 503) {
			long secs = retry_after_s(x->retry_after);
			if (secs >= 0) {
				ra_ms = secs * 1000;
				snprintf(ra, sizeof(ra), " (retry after %ld s)", secs);
			} else if (x->retry_after[0]) {
				snprintf(ra, sizeof(ra), " (Retry-After: %s)", x->retry_after);
			}
		}
		snprintf(msg, sizeof(msg), "openai: HTTP %ld%s%s%s", s, ra, sm[0] ? ": " : "", sm);
	} else if (rc == CURLE_OPERATION_TIMEDOUT) {
		curl_off_t conn = 0;
		err = TR_ETIMEDOUT;
		curl_easy_getinfo(x->easy, CURLINFO_CONNECT_TIME_T, &conn);
		if (conn == 0 && !x->got_body && c->connect_ms < x->total_ms)
			snprintf(msg, sizeof(msg), "openai: connect timed out (connect_timeout %u ms)",
			         c->connect_ms);
		else if (x->by_deadline)
			snprintf(msg, sizeof(msg),
			         "openai: no complete answer before the step's deadline (%u ms)",
			         x->total_ms);
		else
			snprintf(msg, sizeof(msg), "openai: no complete answer within timeout (%u ms)",
			         x->total_ms);
	} else if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
	           rc == CURLE_COULDNT_RESOLVE_PROXY) {
		err = TR_EFAILED;
		snprintf(msg, sizeof(msg), "openai: cannot connect: %s",
		         x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
	} else if (rc == CURLE_PARTIAL_FILE || rc == CURLE_RECV_ERROR || rc == CURLE_GOT_NOTHING ||
	           rc == CURLE_SEND_ERROR) {
		err = TR_EFAILED;
		snprintf(msg, sizeof(msg), "openai: the connection was cut: %s",
		         x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
	} else if (rc != CURLE_OK) {
		err = TR_EFAILED;
		snprintf(msg, sizeof(msg), "openai: %s", x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc));
	} else {
		int prc = x->sse ? sse_end(x) : parse_plain(x);
		if (prc == TR_OK && x->sse && !x->done_seen && !x->finish_seen)
			prc = xfail(x, TR_EFAILED, "openai: the stream ended before [DONE]");
		if (prc != TR_OK) {
			err = x->fail;
			snprintf(msg, sizeof(msg), "%s", x->failmsg);
		} else if (x->sse) {
			post_delta(x); /* what the last event brought */
		}
	}

	/* The DONE message: allocated at submit, only its body can fail. */
	tr_buf b;
	msgpack_packer pk;
	tr_msg *m = x->done;
	x->done = NULL;
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	int ok;
	if (err == TR_OK) {
		uint32_t n = 1 + (x->finish[0] != '\0') + (x->ptok >= 0) + (x->ctok >= 0);
		ok = msgpack_pack_map(&pk, n) == 0 && tr__mp_pack_cstr(&pk, "text") == 0 &&
		     tr_kpack_str(&pk, (const char *)x->text.data, x->text.len) == TR_OK;
		if (ok && x->finish[0])
			ok = tr__mp_pack_cstr(&pk, "finish") == 0 && tr__mp_pack_cstr(&pk, x->finish) == 0;
		if (ok && x->ptok >= 0)
			ok = tr__mp_pack_cstr(&pk, "prompt_tokens") == 0 &&
			     msgpack_pack_int64(&pk, x->ptok) == 0;
		if (ok && x->ctok >= 0)
			ok = tr__mp_pack_cstr(&pk, "completion_tokens") == 0 &&
			     msgpack_pack_int64(&pk, x->ctok) == 0;
	} else {
		ok = msgpack_pack_map(&pk, ra_ms >= 0 ? 2 : 1) == 0 &&
		     tr__mp_pack_cstr(&pk, "message") == 0 && tr__mp_pack_cstr(&pk, msg) == 0;
		if (ok && ra_ms >= 0)
			ok = tr__mp_pack_cstr(&pk, "retry_after_ms") == 0 &&
			     msgpack_pack_int64(&pk, ra_ms) == 0;
	}
	m->err = err;
	if (!ok || (m->body = tr_body_new(b.data, b.len)) == NULL)
		m->err = TR_ENOMEM;
	tr_buf_free(&b);
	(void)tr_node_send(c->node, c->owner, m);
	xfer_end(c, x);
}

static void check_done(tr_oai *c)
{
	CURLMsg *cm;
	int left;
	while ((cm = curl_multi_info_read(c->multi, &left)) != NULL) {
		xfer *x = NULL;
		if (cm->msg != CURLMSG_DONE)
			continue;
		CURLcode rc = cm->data.result; /* cm dies with the handle's removal */
		curl_easy_getinfo(cm->easy_handle, CURLINFO_PRIVATE, (char **)&x);
		complete(c, x, rc);
	}
}

static void on_fb_timeout(uv_timer_t *t)
{
	xfer *x = t->data;
	x->fb_fired = 1;
	complete(x->c, x, CURLE_OK);
}

/* ---- curl on the loop ---------------------------------------------------- */

static void on_sock_closed(uv_handle_t *h)
{
	tr__free(h->data);
}

static void sock_close(tr_oai *c, sock_w *w)
{
	if (w->prev)
		w->prev->next = w->next;
	else
		c->socks = w->next;
	if (w->next)
		w->next->prev = w->prev;
	uv_close((uv_handle_t *)&w->poll, on_sock_closed);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
	sock_w *w = h->data;
	tr_oai *c = w->c;
	curl_socket_t fd = w->fd; /* w may be closed by the call below */
	int flags = 0, running;
	if (status < 0)
		flags = CURL_CSELECT_ERR;
	if (events & UV_READABLE)
		flags |= CURL_CSELECT_IN;
	if (events & UV_WRITABLE)
		flags |= CURL_CSELECT_OUT;
	curl_multi_socket_action(c->multi, fd, flags, &running);
	check_done(c);
}

static int on_socket(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
	tr_oai *c = userp;
	sock_w *w = socketp;
	(void)e;
	if (what == CURL_POLL_REMOVE) {
		if (w != NULL) {
			sock_close(c, w);
			if (!c->closing)
				curl_multi_assign(c->multi, s, NULL);
		}
		return 0;
	}
	if (w == NULL) {
		w = tr__calloc(1, sizeof(*w));
		if (w == NULL)
			return -1;
		if (uv_poll_init_socket(&c->loop, &w->poll, s) != 0) {
			tr__free(w);
			return -1;
		}
		w->poll.data = w;
		w->fd = s;
		w->c = c;
		w->next = c->socks;
		if (c->socks)
			c->socks->prev = w;
		c->socks = w;
		curl_multi_assign(c->multi, s, w);
	}
	int ev = ((what & CURL_POLL_IN) ? UV_READABLE : 0) | ((what & CURL_POLL_OUT) ? UV_WRITABLE : 0);
	uv_poll_start(&w->poll, ev, on_poll);
	return 0;
}

static void on_tick(uv_timer_t *t)
{
	tr_oai *c = t->data;
	int running;
	curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	check_done(c);
}

static int on_timer(CURLM *m, long ms, void *userp)
{
	tr_oai *c = userp;
	(void)m;
	if (ms < 0)
		uv_timer_stop(&c->tick);
	else
		uv_timer_start(&c->tick, on_tick, (uint64_t)ms, 0);
	return 0;
}

/* ---- starting requests ----------------------------------------------------- */

/* Adds x to curl; on failure it completes at once with the error. */
static void begin(tr_oai *c, xfer *x)
{
	CURL *e = curl_easy_init();
	x->ptok = x->ctok = -1;
	x->c = c;
	x->next = c->live;
	if (c->live)
		c->live->prev = x;
	c->live = x;
	if (uv_timer_init(&c->loop, &x->fb) == 0) {
		x->fb.data = x;
		x->timer_on = 1;
	}
	x->easy = e;
	if (e == NULL || !x->timer_on) {
		xfail(x, TR_ENOMEM, "out of memory");
		complete(c, x, CURLE_OK);
		return;
	}
	curl_easy_setopt(e, CURLOPT_URL, c->url);
	curl_easy_setopt(e, CURLOPT_POST, 1L);
	curl_easy_setopt(e, CURLOPT_POSTFIELDS, x->body);
	curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->blen);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->hdrs[x->stream]);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
	curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)x);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L); /* threads: no SIGALRM for DNS */
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)c->connect_ms);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)x->total_ms);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(e, CURLOPT_USERAGENT, "troupe-generate/0.1");
	/* Only HTTP(S), and no redirects: a 3xx is an error to report. */
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
	curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
	if (curl_multi_add_handle(c->multi, e) != CURLM_OK) {
		xfail(x, TR_EFAILED, "openai: curl refused the request");
		complete(c, x, CURLE_OK);
		return;
	}
	if (c->first_byte_ms > 0 && c->first_byte_ms < x->total_ms)
		uv_timer_start(&x->fb, on_fb_timeout, c->first_byte_ms, 0);
}

/* Everything goes: requests without a message, curl, our handles. The
 * loop then has nothing left and uv_run returns. */
static void shutdown_loop(tr_oai *c)
{
	while (c->live != NULL)
		xfer_end(c, c->live);
	c->closing = 1;
	curl_multi_cleanup(c->multi);
	c->multi = NULL;
	while (c->socks != NULL)
		sock_close(c, c->socks);
	uv_close((uv_handle_t *)&c->wake, NULL);
	uv_close((uv_handle_t *)&c->tick, NULL);
}

static void on_wake(uv_async_t *a)
{
	tr_oai *c = a->data;
	uv_mutex_lock(&c->mu);
	xfer *x = c->inbox;
	int stopping = c->stopping;
	c->inbox = c->inbox_tail = NULL;
	uv_mutex_unlock(&c->mu);
	while (x != NULL) {
		xfer *nx = x->next;
		x->next = NULL;
		if (stopping)
			xfer_free(x);
		else
			begin(c, x);
		x = nx;
	}
	if (stopping)
		shutdown_loop(c);
}

static void run(void *arg)
{
	tr_oai *c = arg;
	uv_run(&c->loop, UV_RUN_DEFAULT);
}

/* ---- the actor's side ------------------------------------------------------ */

static void free_client(tr_oai *c)
{
	curl_slist_free_all(c->hdrs[0]);
	curl_slist_free_all(c->hdrs[1]);
	tr__free(c->url);
	tr__free(c);
}

int tr_oai_start(const tr_oai_cfg *cfg, tr_oai **out)
{
	tr_oai *c;
	char auth[600];
	int stage = 0;
	*out = NULL;
	uv_once(&curl_once, curl_init_once);
	if (!curl_ok)
		return TR_EFAILED;
	if ((c = tr__calloc(1, sizeof(*c))) == NULL)
		return TR_ENOMEM;
	c->node = cfg->node;
	c->owner = cfg->owner;
	c->connect_ms = cfg->connect_ms;
	c->first_byte_ms = cfg->first_byte_ms;
	if ((c->url = tr__strndup(cfg->url, strlen(cfg->url))) == NULL)
		goto nomem;
	for (int st = 0; st < 2; st++) {
		struct curl_slist *l = NULL, *t;
		static const char *const base[] = {"Content-Type: application/json",
		                                   "Expect:", /* no 100-continue round trip */
		                                   NULL};
		for (const char *const *h = base; *h != NULL; h++) {
			if ((t = curl_slist_append(l, *h)) == NULL)
				goto list_nomem;
			l = t;
		}
		t = curl_slist_append(l, st ? "Accept: text/event-stream" : "Accept: application/json");
		if (t == NULL)
			goto list_nomem;
		l = t;
		if (cfg->api_key != NULL && cfg->api_key[0] != '\0') {
			int w = snprintf(auth, sizeof(auth), "Authorization: Bearer %s", cfg->api_key);
			t = w > 0 && (size_t)w < sizeof(auth) ? curl_slist_append(l, auth) : NULL;
			memset(auth, 0, sizeof(auth)); /* the key stays in curl's list only */
			if (t == NULL)
				goto list_nomem;
			l = t;
		}
		c->hdrs[st] = l;
		continue;
	list_nomem:
		curl_slist_free_all(l);
		goto nomem;
	}
	if (uv_loop_init(&c->loop) != 0)
		goto fail;
	stage = 1;
	if (uv_mutex_init(&c->mu) != 0)
		goto fail;
	stage = 2;
	if (uv_async_init(&c->loop, &c->wake, on_wake) != 0)
		goto fail;
	c->wake.data = c;
	stage = 3;
	uv_timer_init(&c->loop, &c->tick); /* cannot fail */
	c->tick.data = c;
	if ((c->multi = curl_multi_init()) == NULL)
		goto fail;
	curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
	curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
	curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_timer);
	curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
	curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, (long)(cfg->max_conns ? cfg->max_conns : 16));
	/* The loop's handles were made on this thread; the new thread takes
	 * them over (uv_thread_create orders what came before). */
	if (uv_thread_create(&c->th, run, c) != 0)
		goto fail;
	*out = c;
	return TR_OK;

fail:
	if (c->multi != NULL)
		curl_multi_cleanup(c->multi);
	if (stage >= 3) {
		uv_close((uv_handle_t *)&c->wake, NULL);
		uv_close((uv_handle_t *)&c->tick, NULL);
		uv_run(&c->loop, UV_RUN_DEFAULT);
	}
	if (stage >= 2)
		uv_mutex_destroy(&c->mu);
	if (stage >= 1)
		uv_loop_close(&c->loop);
	free_client(c);
	return TR_EFAILED;
nomem:
	free_client(c);
	return TR_ENOMEM;
}

int tr_oai_submit(tr_oai *c, uint64_t id, char *body, size_t len, int stream, uint32_t total_ms,
                  int by_deadline)
{
	xfer *x = tr__calloc(1, sizeof(*x));
	if (x == NULL) {
		tr__free(body);
		return TR_ENOMEM;
	}
	x->id = id;
	x->body = body;
	x->blen = len;
	x->stream = stream != 0;
	x->by_deadline = by_deadline != 0;
	x->total_ms = total_ms > 0 ? total_ms : 1;
	tr_buf_init(&x->raw);
	tr_buf_init(&x->line);
	tr_buf_init(&x->event);
	tr_buf_init(&x->text);
	tr_buf_init(&x->chunk);
	if ((x->done = new_msg(TR_GEN_TAG_OAI_DONE, id)) == NULL) {
		xfer_free(x);
		return TR_ENOMEM;
	}
	uv_mutex_lock(&c->mu);
	if (c->stopping) {
		uv_mutex_unlock(&c->mu);
		xfer_free(x);
		return TR_ESHUTDOWN;
	}
	int was_empty = c->inbox == NULL;
	if (c->inbox_tail)
		c->inbox_tail->next = x;
	else
		c->inbox = x;
	c->inbox_tail = x;
	uv_mutex_unlock(&c->mu);
	/* One wake-up per empty -> non-empty: the loop takes the whole inbox. */
	if (was_empty)
		uv_async_send(&c->wake);
	return TR_OK;
}

void tr_oai_stop(tr_oai *c)
{
	if (c == NULL)
		return;
	uv_mutex_lock(&c->mu);
	c->stopping = 1;
	uv_mutex_unlock(&c->mu);
	uv_async_send(&c->wake);
	uv_thread_join(&c->th);
	/* Submissions after `stopping` are refused, and on_wake took the
	 * inbox with it set: nothing is left but the loop itself. */
	uv_loop_close(&c->loop);
	uv_mutex_destroy(&c->mu);
	free_client(c);
}
