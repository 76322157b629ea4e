/*
 * http/json.h -- JSON (jansson) <-> msgpack, for the HTTP door: request
 * bodies become message maps, answers become JSON.
 *
 * JSON -> msgpack: objects become maps, arrays arrays, integers ints,
 * reals float64, true/false/null the same. Depth is bounded by
 * TR_MP_MAX_DEPTH (deeper: TR_EPROTO).
 * msgpack -> JSON: the inverse; bin becomes a string when it is valid
 * UTF-8 and base64 otherwise (jansson refuses invalid UTF-8), integer map
 * keys become their decimal text, NaN/Inf become null, ext types null.
 */
#ifndef TR_HTTP_JSON_H
#define TR_HTTP_JSON_H

#include <jansson.h>

#include <troupe/msg.h>

/* Appends j as msgpack to out. TR_OK, TR_EPROTO (too deep), TR_ENOMEM. */
int tr__json_to_mp(const json_t *j, tr_buf *out);
/* A new JSON value for the one msgpack object in p[0..n), which must pass
 * tr_mp_check. NULL on malformed input or OOM. */
json_t *tr__mp_to_json(const unsigned char *p, size_t n);

#endif
