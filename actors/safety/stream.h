/*
 * actors/safety/stream.h -- the safety checks on text that arrives in
 * chunks (a generated answer streamed to the HTTP caller): each chunk in,
 * the text that is safe to show so far out, with PII replaced by its label
 * exactly as the whole-message check would replace it.
 *
 * Design notes. The redactor holds back the end of what it has seen: at
 * least `window` bytes (the rules' stream_window, never less than
 * TR_SAFETY_REACH, nor less than the longest blocklist entry + 2), and
 * then back to the last whitespace, so that a match whose end has not
 * arrived yet is never cut: a built-in match other than an email is at
 * most TR_SAFETY_REACH bytes with what decides it, and an email has no
 * whitespace. Held text with no whitespace in 1 KiB is cut anyway, but
 * never within TR_SAFETY_EMAIL_MAX + 64 bytes of the end. A match that a
 * cut would split moves the cut to its start. The last 64 bytes emitted
 * stay as context, so that word boundaries at the start of the held text
 * read as they would in the whole text. Cuts fall between characters
 * (whitespace, a match start, or a forced cut moved back to a character
 * start), so no multibyte character is ever split; invalid UTF-8 passes
 * through as bytes.
 *
 * What cannot be promised: a custom pattern whose matches are longer than
 * the window and contain whitespace may be cut (set stream_window to its
 * longest match).
 *
 * Blocking: a blocklist hit (on_blocklist = "block"), PII with on_pii =
 * "block", or more than max_output bytes in all ends the stream: feed
 * returns TR_EINVAL, emits nothing more (what was held back is dropped),
 * and `why` says what happened. Every later call returns the same.
 *
 * Cost: each feed scans the held text again (at most about window + 1 KiB
 * + the chunk); memory is that much per stream, no allocation once warm.
 */
#ifndef TR_ACTORS_SAFETY_STREAM_H
#define TR_ACTORS_SAFETY_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include <troupe/msg.h>

#include "actors/safety/detect.h"

enum { TR_SAFETY_STREAM_OPEN = 0, TR_SAFETY_STREAM_BLOCKED, TR_SAFETY_STREAM_FAILED,
       TR_SAFETY_STREAM_DONE };

typedef struct tr_safety_stream {
	const tr_safety_rules *rules; /* borrowed: must outlive the stream */
	tr_safety_scan scan;
	tr_buf buf;        /* [0, ctx): emitted context; [ctx, len): held back */
	size_t ctx;
	size_t hold;       /* bytes always held back */
	uint64_t total;    /* bytes fed */
	int state;         /* TR_SAFETY_STREAM_* */
	/* Matches emitted so far, per kind (built-in, then patterns). */
	uint32_t found[TR_SAFETY_CUSTOM + TR_SAFETY_PATTERNS_MAX];
	char why[160];     /* when blocked: "blocklist: password" */
} tr_safety_stream;

/* Starts a stream checked against r. Cannot fail (buffers grow on the
 * first feed). */
void tr_safety_stream_init(tr_safety_stream *s, const tr_safety_rules *r);
void tr_safety_stream_fini(tr_safety_stream *s);

/*
 * Feeds chunk p[0..n) and appends to out whatever has become safe to
 * emit (possibly nothing). TR_OK; TR_EINVAL when the stream is blocked
 * (by this chunk or earlier; see why); TR_ENOMEM (the stream is then
 * failed, later calls give TR_ESTATE); TR_ESTATE after flush.
 */
int tr_safety_stream_feed(tr_safety_stream *s, const char *p, size_t n, tr_buf *out);

/* The end of the text: emits everything held back, redacted. The same
 * results as feed; the stream is done afterwards. */
int tr_safety_stream_flush(tr_safety_stream *s, tr_buf *out);

#endif
