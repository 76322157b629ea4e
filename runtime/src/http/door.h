/*
 * http/door.h -- the node's HTTP front door: HTTP/1.1 with keep-alive on
 * the scheduler's own libuv loops.
 *
 * One door actor per worker, pinned to it (sched.h, tr__spawn_pinned),
 * each with its own SO_REUSEPORT listening socket on the same address:
 * the kernel spreads connections over the workers, and a connection
 * lives on one loop for good. Requests are parsed with http_parser
 * (Debian's libhttp-parser), bodies with jansson. A pipeline call is an
 * ask to the engine "pipeline:<name>" (pipe/engine.h) made from the
 * door's I/O callbacks; the answer comes back to the door actor, on the
 * same thread, which writes the response. See the README, "HTTP API",
 * for endpoints, status codes and limits.
 *
 * One connection serves one request at a time; pipelined requests wait in
 * its buffer (bounded) until the one before has been answered, so answers
 * go out in order.
 *
 * Threads: tr_door_start / set_config / drain / free are for the control
 * thread (main); the rest runs on the workers.
 */
#ifndef TR_HTTP_DOOR_H
#define TR_HTTP_DOOR_H

#include <stddef.h>
#include <stdint.h>

#include <troupe/node.h>

#include "pipe/spec.h"

typedef struct tr_door tr_door;

typedef struct tr_door_opts {
	const char *listen;          /* "host:port", "[v6]:port" */
	uint64_t max_body;           /* bytes; 0 = 1 MiB */
	uint32_t max_header;         /* request line + headers, bytes; 0 = 16 KiB */
	uint32_t max_connections;    /* 0 = 10000 */
	uint64_t header_timeout_ms;  /* a whole request must arrive within; 0 = 10 s */
	uint64_t idle_timeout_ms;    /* keep-alive idle; 0 = 60 s */
	uint64_t run_timeout_ms;     /* backstop on a pipeline ask; 0 = 300 s */
} tr_door_opts;

/* Binds and starts the doors on a started node. TR_OK, or an error with
 * a message in err ("cannot listen on 127.0.0.1:8080: address already in
 * use"). */
int tr_door_start(tr_node *node, const tr_door_opts *o, tr_door **out, char *err, size_t errlen);
/* Publishes a (re)loaded configuration: tenants and keys, pipeline graphs,
 * what /ready expects (the actors of generation `gen`). The door copies
 * what it needs; cfg may be freed afterwards. TR_OK or TR_ENOMEM (the
 * previous configuration stays). */
int tr_door_set_config(tr_door *d, const tr_config *cfg, unsigned gen);
/* The node's backends, for /ready (postgres down: not ready; redis down:
 * ready but "degraded") and /metrics. Either may be NULL. They must
 * outlive the door. Call before the first request (right after start). */
struct tr_pg;
struct tr_redis;
void tr_door_set_backends(tr_door *d, const struct tr_pg *pg, const struct tr_redis *redis);
/* The node's cluster membership, for GET /v1/cluster and /metrics (NULL:
 * not clustered). Call before the first request; it must outlive the door. */
struct tr_cluster;
void tr_door_set_cluster(tr_door *d, const struct tr_cluster *c);
/* Graceful stop, step 1: close the listeners, close idle connections,
 * answer what is in flight with "Connection: close". Asynchronous. */
void tr_door_drain(tr_door *d);
/* Pipeline calls dispatched and not yet answered, all workers. */
uint64_t tr_door_inflight(const tr_door *d);
/* Graceful stop, step 2: true once every door has run its drain and
 * every connection is closed: each request that reached the node (read,
 * dispatched, or waiting unread on a connection at the drain) has been
 * answered. Poll it after tr_door_drain, under the grace period. */
int tr_door_drained(const tr_door *d);
/* The port served (the kernel's choice when started on port 0). */
int tr_door_port(const tr_door *d);
/* Open connections, all workers. */
uint32_t tr_door_connections(const tr_door *d);
/*
 * Extensions from layers above the runtime (the built-in actors): more
 * /metrics text (appended after the door's own), and the body of GET
 * /v1/events (recent step events; 404 when unset). Each is called on a
 * worker, between turns; it appends to out and returns TR_OK or an error.
 * Set before tr_door_start; the functions must outlive the door.
 */
typedef int (*tr_door_metrics_fn)(tr_node *node, tr_buf *out);
typedef int (*tr_door_events_fn)(tr_node *node, size_t max, tr_buf *out);
void tr_door_extend(tr_door_metrics_fn metrics, tr_door_events_fn events);

/* Frees the door; the node must have stopped (its doors terminated). */
void tr_door_free(tr_door *d);

#endif
