/*
 * http/json.h -- JSON (jansson) <-> msgpack, for the HTTP door: request
 * bodies become message maps, answers become JSON.
 *
 * JSON -> msgpack: objects become maps, arrays arrays, integers ints,
 * reals float64, true/false/null the same. Depth is bounded by
 * TR_MP_MAX_DEPTH (deeper: TR_EPROTO).
 * msgpack -> JSON (tr__mp_json, text written straight from the bytes): the
 * inverse; a str that is not valid UTF-8 gets U+FFFD for each bad byte,
 * bin becomes a string when it is valid UTF-8 and base64 otherwise,
 * integer map keys become their decimal text (other non-string keys are
 * left out), uint64 past INT64_MAX a real, NaN/Inf and ext types null.
 */
#ifndef TR_HTTP_JSON_H
#define TR_HTTP_JSON_H

#include <jansson.h>

#include <troupe/msg.h>

/* Appends j as msgpack to out. TR_OK, TR_EPROTO (too deep), TR_ENOMEM. */
int tr__json_to_mp(const json_t *j, tr_buf *out);

/* Appends the JSON text of the one msgpack object in p[0..n) (checked
 * with tr_mp_check first: TR_EPROTO if malformed), the same mapping as
 * tr__mp_to_json but straight from the bytes, with no tree; strings that
 * are not valid UTF-8 get U+FFFD for each bad byte. out is unchanged on
 * error. */
int tr__mp_json(const unsigned char *p, size_t n, tr_buf *out);
/* tr__mp_json for an object inside bytes already checked (the engine's
 * answer, checked once): no check, so no length either. */
int tr__mp_json_checked(const unsigned char *p, tr_buf *out);
/* Appends v in decimal. */
int tr__fmt_u64(tr_buf *out, uint64_t v);
/* Appends s[0..n) as a JSON string literal. */
int tr__json_str(const char *s, size_t n, tr_buf *out);

#endif
