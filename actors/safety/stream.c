/*
 * actors/safety/stream.c -- the chunked redactor. See stream.h.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "actors/safety/stream.h"
#include "msg/msg_int.h"

#define CTX_KEEP 64    /* emitted bytes kept for look-behind */
#define HOLD_MAX 1024  /* held bytes without whitespace before a forced cut
                        * (more with a window over FORCE_KEEP) */
#define FORCE_KEEP (TR_SAFETY_EMAIL_MAX + 64) /* what a forced cut still holds */

static inline int is_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

void tr_safety_stream_init(tr_safety_stream *s, const tr_safety_rules *r)
{
	memset(s, 0, sizeof(*s));
	s->rules = r;
	tr_safety_scan_init(&s->scan);
	tr_buf_init(&s->buf);
	s->hold = r->window > TR_SAFETY_REACH ? r->window : TR_SAFETY_REACH;
	if (r->maxword + 2 > s->hold)
		s->hold = r->maxword + 2;
}

void tr_safety_stream_fini(tr_safety_stream *s)
{
	tr_safety_scan_free(&s->scan);
	tr_buf_free(&s->buf);
}

static int block(tr_safety_stream *s, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static int block(tr_safety_stream *s, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->why, sizeof(s->why), fmt, ap);
	va_end(ap);
	s->state = TR_SAFETY_STREAM_BLOCKED;
	s->buf.len = 0; /* what was held back is never shown */
	s->ctx = 0;
	return TR_EINVAL;
}

static int fail(tr_safety_stream *s)
{
	s->state = TR_SAFETY_STREAM_FAILED;
	return TR_ENOMEM;
}

/* Where this step may cut: everything before it is final. 0 when nothing
 * may be emitted yet (the cut is always past the context). */
static size_t cut_at(const tr_safety_stream *s, const unsigned char *b, size_t len)
{
	size_t h = s->ctx, c;
	const tr_safety_scan *sc = &s->scan;

	if (len - h <= s->hold)
		return 0;
	c = len - s->hold;
	while (c > h && !is_space(b[c - 1]))
		c--;
	if (c == h) {
		/* No whitespace: wait for HOLD_MAX bytes, then cut anyway, still
		 * holding an email's length (or the window, if larger). */
		size_t keep = s->hold > FORCE_KEEP ? s->hold : FORCE_KEEP;
		if (len - h <= keep + (HOLD_MAX - FORCE_KEEP))
			return 0;
		c = len - keep;
		for (int k = 0; k < 3 && c > h && (b[c] & 0xC0) == 0x80; k++)
			c--;
	}
	for (size_t i = 0; i < sc->n; i++) {
		if (sc->m[i].start < c && sc->m[i].end > c) {
			c = sc->m[i].start;
			break;
		}
	}
	return c > h ? c : 0;
}

/* Scans what is held, then emits [ctx, cut). final: the text ends here. */
static int step(tr_safety_stream *s, tr_buf *out, int final)
{
	const tr_safety_rules *r = s->rules;
	const unsigned char *b = s->buf.data;
	size_t len = s->buf.len, h = s->ctx, cut, at, keep;
	tr_safety_scan *sc = &s->scan;

	if (len == 0)
		return TR_OK;
	if (r->on_blocklist == TR_SAFETY_BLOCK && r->nwords > 0) {
		size_t hit;
		if (tr_safety_blocklist(r, (const char *)b, len, !final, &hit, 1, NULL) > 0)
			return block(s, "blocklist: %s", r->words[hit].text);
	}
	sc->n = 0;
	if ((r->pii != 0 || r->npats > 0) && tr_safety_pii(r, sc, (const char *)b, len) != TR_OK)
		return fail(s);
	cut = final ? len : cut_at(s, b, len);
	if (cut <= h)
		return TR_OK;
	if (r->on_pii == TR_SAFETY_BLOCK) {
		for (size_t i = 0; i < sc->n; i++)
			if (sc->m[i].end > h && sc->m[i].end <= cut)
				return block(s, "pii: %s", tr_safety_kind_name(r, sc->m[i].kind));
	}
	at = h;
	for (size_t i = 0; i < sc->n; i++) {
		const tr_safety_match *m = &sc->m[i];
		size_t ll, from;
		const char *l;
		/* Matches wholly in the context were settled by an earlier step;
		 * one reaching past the cut waits for the next. One that starts
		 * in the context (its left edge read differently now) is redacted
		 * from the context's end: erring towards hiding. */
		if (m->end <= h || m->end > cut)
			continue;
		s->found[m->kind]++;
		if (r->on_pii != TR_SAFETY_REDACT)
			continue;
		from = m->start > h ? m->start : h;
		l = tr_safety_label(r, m->kind, &ll);
		if (tr__buf_append(out, b + at, from - at) != TR_OK || tr__buf_append(out, l, ll) != TR_OK)
			return fail(s);
		at = m->end;
	}
	if (tr__buf_append(out, b + at, cut - at) != TR_OK)
		return fail(s);
	keep = cut < CTX_KEEP ? cut : CTX_KEEP;
	memmove(s->buf.data, b + cut - keep, len - cut + keep);
	s->buf.len = len - cut + keep;
	s->ctx = keep;
	return TR_OK;
}

static int state_rc(const tr_safety_stream *s)
{
	switch (s->state) {
	case TR_SAFETY_STREAM_OPEN: return TR_OK;
	case TR_SAFETY_STREAM_BLOCKED: return TR_EINVAL;
	default: return TR_ESTATE;
	}
}

int tr_safety_stream_feed(tr_safety_stream *s, const char *p, size_t n, tr_buf *out)
{
	const tr_safety_rules *r = s->rules;

	if (s->state != TR_SAFETY_STREAM_OPEN)
		return state_rc(s);
	s->total += n;
	if (r->max_output > 0 && s->total > r->max_output)
		return block(s, "length: more than max_output %llu bytes",
		             (unsigned long long)r->max_output);
	if (n > 0 && tr__buf_append(&s->buf, p, n) != TR_OK)
		return fail(s);
	return step(s, out, 0);
}

int tr_safety_stream_flush(tr_safety_stream *s, tr_buf *out)
{
	int rc;
	if (s->state != TR_SAFETY_STREAM_OPEN)
		return state_rc(s);
	rc = step(s, out, 1);
	if (rc == TR_OK) {
		s->state = TR_SAFETY_STREAM_DONE;
		s->buf.len = 0;
		s->ctx = 0;
	}
	return rc;
}
