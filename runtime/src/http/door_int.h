/*
 * http/door_int.h -- what door.c (connections, requests, pipeline calls)
 * and api.c (the read-only endpoints, configuration snapshots) share.
 */
#ifndef TR_HTTP_DOOR_INT_H
#define TR_HTTP_DOOR_INT_H

#include <stdatomic.h>
#include <sys/socket.h>

#include <jansson.h>

#include "http/auth.h"
#include "http/door.h"
#include "sched/sched.h"

/* Routes, for the request counters (/metrics). */
enum {
	R_ROOT, R_HEALTH, R_READY, R_METRICS, R_ACTORS, R_PIPELINES, R_RUN, R_TRACES, R_EVENTS,
	R_CLUSTER, R_OTHER,
	R__N
};
extern const char *const tr__door_route_names[R__N];

/* The status codes the door sends; counters are kept per (route, code). */
#define DOOR_NSTATUS 18
extern const int tr__door_statuses[DOOR_NSTATUS];
int tr__door_status_index(int status);

#define DOOR_TRACES 50 /* completed runs kept for /v1/traces and the status page */

/*
 * A published configuration. Immutable once published, refcounted: a
 * request takes a reference (tr__door_conf_get) for as long as it reads
 * it, so a reload never frees one under a reader.
 */
typedef struct door_conf {
	atomic_uint refs;
	unsigned gen;
	tr_auth *auth;       /* owned */
	json_t *pipelines;   /* owned: array of pipeline graphs; only read */
	char **expect;       /* owned: registered names /ready wants alive */
	size_t nexpect;
	char **pipes;        /* owned: pipeline names with generation ("p@3"), for stats */
	char **pipe_names;   /* owned: the same without it */
	size_t npipes;
	char rprefix[64];    /* redis { prefix }: the shared rate buckets' keys */
} door_conf;

/* A finished run, for /v1/traces. */
typedef struct door_trace {
	uint64_t trace_hi, trace_lo;
	uint64_t us;              /* run time seen by the door */
	uint64_t ts_us;           /* when it ended (wall) */
	char pipeline[64];
	char code[16];            /* error code, "" when ok */
	tr_body *answer;          /* owned reference: the engine's answer (steps), or NULL */
} door_trace;

struct tr_door {
	tr_node *node;
	tr_door_opts o;
	unsigned n;               /* doors: one per worker */
	tr_ref *refs;             /* owned */
	struct sockaddr_storage addr;
	socklen_t addrlen;
	uv_mutex_t conf_mu;       /* guards `conf` (the pointer) */
	door_conf *conf;          /* NULL until the first set_config */
	/* Counters read by any thread. conns and inflight are changed by
	 * every worker: relaxed RMWs (they order nothing; the control thread
	 * polls them). */
	atomic_uint conns;
	atomic_ullong inflight;
	atomic_int draining;      /* set once by the control thread */
	atomic_uint drained;      /* doors that have run their drain */
	uv_mutex_t ring_mu;       /* guards ring, ring_next */
	door_trace ring[DOOR_TRACES]; /* oldest overwritten */
	unsigned ring_next;
	/* counts[door][route][status]: each door writes only its own row,
	 * with a relaxed load + store (single writer); readers sum rows. */
	_Atomic uint64_t (*counts)[R__N][DOOR_NSTATUS];
	uint64_t started_ns;
	/* The node's backends (NULL: not configured), for /ready and
	 * /metrics; set before serving, read-only after. Borrowed. */
	const struct tr_pg *pg;
	const struct tr_redis *redis;
	const struct tr_cluster *cluster; /* NULL: not clustered */
	struct door_fuzz *fuzz;   /* NULL but in a fuzzing door (tr__door_fuzz_new) */
};

door_conf *tr__door_conf_get(tr_door *d);
void tr__door_conf_put(door_conf *c);
/* Builds a snapshot of cfg for generation gen (prev: bucket hand-over). */
int tr__door_conf_new(const tr_config *cfg, unsigned gen, const door_conf *prev,
                      door_conf **out);

/* A response being built by a handler. */
typedef struct door_resp {
	int status;
	const char *ctype;        /* static */
	tr_buf body;
	char extra[128];          /* more header lines, each ending in \r\n */
	uint8_t head;             /* HEAD: headers only */
} door_resp;

/* Sets status and a JSON error body {"error": {"code", "message"}}. */
void tr__door_error(door_resp *r, int status, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* Appends printf output to b (at most 1 KiB a call). */
void tr__door_printf(tr_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Sets status and the JSON text of j (consumed). */
void tr__door_json(door_resp *r, int status, json_t *j);

/* api.c: the read-only endpoints. */
void tr__api_health(tr_door *d, door_resp *r);
void tr__api_ready(tr_door *d, door_resp *r);
void tr__api_metrics(tr_door *d, door_resp *r);
void tr__api_actors(tr_door *d, door_resp *r);
void tr__api_pipelines(tr_door *d, door_resp *r);
void tr__api_traces(tr_door *d, door_resp *r);
void tr__api_events(tr_door *d, door_resp *r);
void tr__api_cluster(tr_door *d, door_resp *r);
void tr__api_status_page(tr_door *d, door_resp *r);
/* Records one completed run for /v1/traces (takes t->answer's reference). */
void tr__door_trace_add(tr_door *d, const door_trace *t);
/* Appends the client's "steps" JSON array from an engine answer map. */
void tr__door_steps_json(const unsigned char *body, size_t n, tr_buf *out);

/*
 * Fuzzing (tests/fuzz/fuzz_http.c): a door with no listener and no actor,
 * whose connections have no socket. tr__door_fuzz_new makes one on a
 * started `node` (tr_whereis finds pipelines there, the read-only
 * endpoints read it) with the default limits; publish a configuration
 * with tr_door_set_config as for a real door. tr__door_fuzz_request runs
 * p[0..n) through what a connection runs on those bytes (read_cb: parser
 * callbacks, router, auth and rate, the body checks, the answer), as reads
 * of `seg` bytes (0: one read), then the client's EOF; the bytes the
 * connection would write are appended to `out`. A run that passes every
 * check is not asked of the engine "pipeline:<name>" (whereis must still
 * find it): it is answered at once as by a pipeline whose one step
 * echoes its input, every second run as overloaded (503), through the
 * real answer path (events and the final chunk when streaming). Calls
 * come from one thread; tr__door_fuzz_free frees the door.
 */
int tr__door_fuzz_new(tr_node *node, tr_door **out);
void tr__door_fuzz_request(tr_door *d, const void *p, size_t n, size_t seg, tr_buf *out);
void tr__door_fuzz_free(tr_door *d);

#endif
