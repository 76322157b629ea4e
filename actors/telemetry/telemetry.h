/*
 * actors/telemetry/telemetry.h -- the telemetry kind: the actor a
 * pipeline names as its `tap` (pipe/engine.c sends it one plain message
 * per step event, fire and forget), recording each event to its sinks,
 * plus what other code reads from it: the in-memory ring of the last
 * events (for the status page) and its counters (for /metrics).
 *
 * Events. Every plain message with a msgpack map body is an event; the
 * engine's taps carry {event = "start"|"end"|"retry"|"timeout"|"error",
 * pipeline, step, attempt, step_us, run_us, trace, error?}. An event is
 * recorded as one JSON object: {"ts_us": <wall clock, µs>, "tenant": ...
 * (when the message has one and the body no tenant field), then the
 * body's fields in order, written as the HTTP door writes answers
 * (http/json.h: bad UTF-8 becomes U+FFFD, bin base64 unless it is text,
 * NaN and ext types null, keys that are not strings or integers left
 * out)}. An ask (the actor used as a pipeline step) is
 * answered at once with an empty reply, which keeps the message as it is,
 * and recorded as {"ts_us", "event": "pass", "bytes", "trace"} -- the
 * message itself is not logged. A body larger than max_line bytes is
 * recorded as {"ts_us", "event": "oversize", "bytes"}.
 *
 * Sinks (settings; see tel_settings in telemetry.c for the exact rules):
 *   sink      "ring" | "file" | "stdout" | "postgres" | "redis", or a list
 *             of them. Default: "file" when `file` is set, plus "ring"
 *             when `ring` is set; "ring" when neither is.
 *   file      path of the JSON-lines file (sink "file" only)
 *   max_bytes size at which the file rotates: path -> path.1 -> ... ->
 *             path.<keep>, the oldest dropped (bytes or "64MiB"; default
 *             64 MiB, at least 1 KiB). Files are cut at line boundaries.
 *   keep      rotated files kept (0..100, default 3; 0: truncate instead)
 *   ring      events the ring keeps (1..1000000, default 1000)
 *   flush_ms  how often buffered lines are written (1..60000, default 100)
 *   buffer    lines buffered before a write even before flush_ms (bytes or
 *             "64KiB"; default 64 KiB, 4 KiB..64 MiB)
 *   max_line  largest body recorded whole (default 16 KiB, 256 B..1 MiB)
 *   The database sinks (telemetry.c's header has the details):
 *   backlog   events each database sink buffers while its server is slow
 *             or down (1..1000000, default 10000); past it new events are
 *             dropped and counted
 *   db_batch  events per write: rows of one INSERT, XADDs of one pipelined
 *             round (1..1000, default 200); a full batch is written at
 *             once, a partial one after flush_ms
 *   db_timeout_ms  postgres: how long a write may wait for a connection;
 *             redis: for its reply; then it is retried (10..600000,
 *             default 5000)
 *   redis_key stream key (default the redis { prefix } + "events", i.e.
 *             "troupe:events")
 *   redis_maxlen  XADD ... MAXLEN ~ n (0..1e10, default 100000; 0: no trim)
 *
 * It never slows a run: the engine's sends never wait for it (a full
 * mailbox drops the event; the mailbox policy is the user's, and the
 * runtime counts drops), the actor only formats and buffers, and file and
 * stdout writes happen on writer threads (writer.h). When a writer falls
 * behind by more than 16 buffers, whole batches are dropped and counted
 * (lines_dropped) rather than queued without bound. Every actor that
 * names one file (instances, or two generations during a hot reload)
 * shares that file's writer, so one thread rotates it; stdout has one
 * writer for all.
 *
 * Threads: the functions below may be called from any thread while the
 * node runs. Each actor registers itself at init and leaves at
 * terminate; a restarted actor starts its ring and counters afresh.
 */
#ifndef TR_ACTORS_TELEMETRY_H
#define TR_ACTORS_TELEMETRY_H

#include <stddef.h>
#include <stdint.h>

#include <troupe/msg.h>
#include <troupe/node.h>

#include "actors/kinds.h"

TR_DECLARE_KIND(telemetry);

/* Event types counted apart (the `event` field of an engine tap). */
enum {
	TR_TEL_START,
	TR_TEL_END,
	TR_TEL_RETRY,
	TR_TEL_TIMEOUT,
	TR_TEL_ERROR,
	TR_TEL_OTHER, /* any other value, or no `event` field */
	TR_TEL_NTYPES
};

/* The database sinks, for tr_telemetry_stats' sink_* arrays. */
enum { TR_TEL_SINK_PG, TR_TEL_SINK_REDIS, TR_TEL_NSINKS };
/* Their names, for labels: "postgres", "redis". */
extern const char *const tr_telemetry_sink_names[TR_TEL_NSINKS];

/* The names of the types above, for labels: "start", ..., "other". */
extern const char *const tr_telemetry_type_names[TR_TEL_NTYPES];

typedef struct tr_telemetry_stats {
	uint32_t actors;         /* telemetry actors summed here */
	uint64_t events;         /* events recorded (taps and other plain messages) */
	uint64_t by_type[TR_TEL_NTYPES];
	uint64_t passed;         /* asks answered as a pass-through step */
	uint64_t invalid;        /* messages without a msgpack map body: not recorded */
	uint64_t oversize;       /* bodies past max_line, recorded as a summary */
	uint64_t ring_len;       /* events in the ring now */
	uint64_t lines_dropped;  /* lines lost because the writer was behind */
	uint64_t bytes_written;  /* to the file and/or stdout */
	uint64_t write_errors;
	uint64_t rotations;
	uint64_t step_pairs;     /* distinct (pipeline, step) pairs counted */
	uint64_t step_overflow;  /* events with a step not counted apart: pairs past
	                          * TR_TEL_STEPS_MAX, or names that are not 1..63
	                          * bytes of printable ASCII */
	/* The database sinks, by TR_TEL_SINK_*. */
	uint64_t sink_written[TR_TEL_NSINKS]; /* events the server stored */
	uint64_t sink_dropped[TR_TEL_NSINKS]; /* lost: the backlog was full */
	uint64_t sink_failed[TR_TEL_NSINKS];  /* refused by the server for good, and dropped */
	uint64_t sink_errors[TR_TEL_NSINKS];  /* writes that failed and were retried
	                                       * (server down, slow, overloaded) */
	uint64_t sink_queued[TR_TEL_NSINKS];  /* events buffered now (a gauge) */
} tr_telemetry_stats;

/* Distinct (pipeline, step) pairs one actor counts; later ones are only
 * counted in step_overflow. */
#define TR_TEL_STEPS_MAX 4096

/* Sums the counters of the telemetry actors named `name` on `node` (NULL:
 * all of them). TR_OK, or TR_ENOTFOUND when there is none. */
int tr_telemetry_stats_get(tr_node *node, const char *name, tr_telemetry_stats *out);

/*
 * Appends to `out` a JSON array of the ring's events, oldest first: the
 * last `max` of them (0: all) across the telemetry actors named `name`
 * (NULL: all of them) on `node`, merged by ts_us. Each element is the
 * object a JSON line holds (see above). TR_OK (an empty array when none
 * has a ring), TR_ENOTFOUND when there is no such actor, TR_ENOMEM.
 * Cost: the copies are taken under each actor's lock (pointer copies);
 * the JSON is made after it is released.
 */
int tr_telemetry_ring_json(tr_node *node, const char *name, size_t max, tr_buf *out);

/*
 * Appends the counters of every telemetry actor on `node` in the
 * Prometheus text format (the hook /metrics can call), summed per actor
 * name:
 *   troupe_telemetry_events_total{actor,event}
 *   troupe_telemetry_step_events_total{actor,pipeline,step,event}
 *   troupe_telemetry_step_seconds_total{actor,pipeline,step}  (step_us of end events)
 *   troupe_telemetry_{passed,invalid,oversize,lines_dropped,write_errors,
 *                     rotations}_total{actor}, troupe_telemetry_written_bytes_total{actor}
 *   and, for actors with a database sink (sink = "postgres" | "redis"):
 *   troupe_telemetry_sink_{written,dropped,failed,errors}_total{actor,sink},
 *   troupe_telemetry_sink_queued{actor,sink} (a gauge)
 * Nothing is appended when the node has no telemetry actor. TR_OK or
 * TR_ENOMEM.
 */
int tr_telemetry_metrics(tr_node *node, tr_buf *out);

#endif
