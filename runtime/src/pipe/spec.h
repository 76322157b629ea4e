/*
 * pipe/spec.h -- the configuration model: what a set of Lua pipeline files
 * declares, after loading and validation, as plain C data.
 *
 * The Lua loader (lua/dsl.c, tr_config_load) builds a tr_config; `troupe check` prints
 * its diagnostics; the node spawns actors, supervisors and pipeline
 * engines from it; a reload builds a new one and swaps it in.
 *
 * Ownership: a tr_config owns everything reachable from it (every string,
 * array and nested step list) and is freed with tr_config_free(). It is
 * immutable once loaded and may be read from any thread.
 *
 * Durations are microseconds (uint64_t); 0 means "not set" where a field
 * says so. Every declaration remembers where it came from (file, line)
 * so that every later error can name it.
 */
#ifndef TR_PIPE_SPEC_H
#define TR_PIPE_SPEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tr_srcpos {
	const char *file; /* points into tr_config.files */
	int line;
} tr_srcpos;

/* Error classes a step may retry on (retry_on = { ... }). */
enum {
	TR_RETRY_TIMEOUT = 1 << 0,  /* "timeout": no answer within the step timeout */
	TR_RETRY_ERROR = 1 << 1,    /* "error": the actor answered with an error */
	TR_RETRY_OVERLOAD = 1 << 2, /* "overload" (alias "rejected"): mailbox full/refused */
	TR_RETRY_CRASHED = 1 << 3,  /* "crashed": the actor crashed on the request */
	TR_RETRY_DEFAULT = TR_RETRY_TIMEOUT | TR_RETRY_OVERLOAD | TR_RETRY_CRASHED
};

/* Step events a pipeline's tap receives (tap_events = { ... }). */
enum {
	TR_TAP_START = 1 << 0,   /* "start": an attempt begins */
	TR_TAP_END = 1 << 1,     /* "end": a step answered */
	TR_TAP_RETRY = 1 << 2,   /* "retry": an attempt failed, another follows */
	TR_TAP_TIMEOUT = 1 << 3, /* "timeout": the step failed by timing out */
	TR_TAP_ERROR = 1 << 4,   /* "error": the step failed otherwise */
	TR_TAP_ALL = 0x1f
};

typedef enum tr_step_kind {
	TR_STEP_CALL = 1, /* step "actor" { ... } */
	TR_STEP_ROUTE,    /* route "field" { value = {...}, default = {...} } */
	TR_STEP_PARALLEL  /* parallel { {...}, {...}, join = ... } */
} tr_step_kind;

/* Deepest nesting of step lists: the pipeline's own list is level 1, and
 * each route branch (or default) and each parallel branch is one level
 * below the list that holds it. The loader rejects anything deeper, so a
 * loaded config never needs more than this many frames in the engine
 * (which sizes its per-run stack of step lists by it). */
#define TR_STEP_NEST_MAX 32

typedef struct tr_step tr_step;

typedef struct tr_step_list {
	tr_step *v; /* owned array */
	size_t n;
} tr_step_list;

typedef struct tr_backoff {
	uint64_t base_us; /* default 10 ms */
	uint64_t max_us;  /* default 1 s */
	bool jitter;      /* full jitter: sleep = random(0, min(max, base * 2^k)); default true */
} tr_backoff;

enum { TR_CACHE_MEMORY = 0, TR_CACHE_REDIS = 1 };

typedef struct tr_cache_spec {
	bool on;
	uint64_t ttl_us;    /* required when on */
	char **keys;        /* message fields that make the key (tenant is always added) */
	size_t nkeys;
	uint32_t capacity;  /* entries (LRU); default 10000 */
	uint8_t store;      /* TR_CACHE_MEMORY, or TR_CACHE_REDIS (shared, LRU in front) */
} tr_cache_spec;

typedef struct tr_route_branch {
	char *value;        /* field value that selects this branch */
	tr_step_list steps;
	tr_srcpos pos;
} tr_route_branch;

typedef enum tr_join {
	TR_JOIN_ALL = 0,
	TR_JOIN_FIRST,
	TR_JOIN_N           /* join = n: the first n branches to succeed */
} tr_join;

struct tr_step {
	tr_step_kind kind;
	tr_srcpos pos;
	/* `when = function(msg) ... end`: the step runs only when it returns
	 * a true value. Index into the file's function table (see
	 * tr_config.nfns), or -1 when absent. */
	int when_fn;
	union {
		struct { /* TR_STEP_CALL */
			char *actor;          /* a declared actor name */
			uint64_t timeout_us;  /* required > 0 (default 1 s when absent) */
			uint64_t first_byte_timeout_us; /* 0 = none (streaming: later issue) */
			uint32_t retries;     /* extra attempts after the first; default 0 */
			uint32_t retry_on;    /* TR_RETRY_* mask; default TR_RETRY_DEFAULT */
			tr_backoff backoff;
			char *fallback;       /* actor tried after the last failure; NULL = none */
			tr_cache_spec cache;
			bool coalesce;        /* share one execution among identical concurrent inputs */
		} call;
		struct { /* TR_STEP_ROUTE */
			char *field;          /* message field to branch on */
			tr_route_branch *branches; /* owned array */
			size_t nbranches;
			tr_step_list dflt;    /* `default = {...}`: required */
		} route;
		struct { /* TR_STEP_PARALLEL */
			tr_step_list *branches; /* owned array of lists */
			size_t nbranches;
			tr_join join;
			uint32_t join_n;      /* for TR_JOIN_N: 1..nbranches */
		} par;
	} u;
};

typedef struct tr_pipeline_spec {
	char *name;
	tr_srcpos pos;
	uint64_t deadline_us;   /* overall; default 30 s */
	uint32_t max_inflight;  /* runs at once; default 1000 */
	char *tap;              /* actor that receives step events; NULL = none */
	uint32_t tap_events;    /* TR_TAP_* mask of the events sent to tap; 0 = all */
	/* Fields of the final message a run answers with (output = { ... });
	 * NULL = the whole message. Owned. */
	char **output;
	size_t noutput;
	char *stream;           /* actor that filters streamed text (deltas); NULL = none */
	tr_step_list steps;
} tr_pipeline_spec;

struct tr_config;

/* Overflow policy names map to tr_overflow (troupe/actor.h). */
typedef struct tr_actor_spec {
	char *name;
	tr_srcpos pos;
	char *kind;             /* built-in kind (tr_kind_find); NULL for a Lua actor */
	int receive_fn;         /* Lua actor: index of its receive function, else -1 */
	uint32_t mailbox;       /* 0 = default */
	uint8_t overflow;       /* tr_overflow; default block */
	uint32_t instances;     /* >= 1; default 1 */
	uint32_t batch;         /* 0 = default */
	/* on = { label = "gpu" } and/or { node = "n2" }: placement. The actor
	 * runs only on nodes that carry the label and have the name (each one
	 * given must match), `instances` of it on each such node; steps find
	 * the instances of other nodes through the cluster. NULL, NULL = not
	 * placed: it runs on every node. Owned. */
	char *on_label;
	char *on_node;
	/* Remaining keys of the actor table, for the kind to read (model,
	 * dsn, ...), as one msgpack map; NULL when none. Owned. */
	unsigned char *config;
	size_t config_len;
	/* The config that holds this spec (set by the loader), so that a
	 * kind may read other declarations: execute finds its tools there.
	 * NULL for a spec built by hand. Borrowed. */
	const struct tr_config *cfg;
} tr_actor_spec;

typedef struct tr_supervisor_spec {
	char *name;
	tr_srcpos pos;
	uint8_t strategy;       /* tr_sup_strategy */
	uint32_t max_restarts;  /* default 3; 0 = never restart (give up and escalate) */
	uint64_t within_us;     /* default 5 s; the loader keeps it in 1 ms .. 24 h */
	char **children;        /* actor or supervisor names, in start order */
	size_t nchildren;
} tr_supervisor_spec;

typedef struct tr_node_spec {
	char *name;             /* default "troupe" */
	char *http;             /* "host:port"; NULL = no HTTP door */
	uint32_t threads;       /* 0 = number of CPUs */
	tr_srcpos pos;
	/* HTTP door limits (http/door.h); 0 = the default. */
	uint64_t max_body;          /* request body bytes; default 1 MiB */
	uint32_t max_header;        /* request line + header bytes; default 16 KiB */
	uint32_t max_connections;   /* open connections; default 10000 */
	uint64_t header_timeout_us; /* to receive one whole request; default 10 s */
	uint64_t idle_timeout_us;   /* keep-alive idle; default 60 s */
	uint64_t grace_us;          /* SIGTERM: time in-flight runs get; default 10 s */
	/* node { env = "..." }: "production", "staging", "dev" or "test" (a
	 * static string, not owned); NULL = not set. A production node
	 * refuses `troupe run --chaos` (core/chaos.h). */
	const char *env;
	/* node { labels = {...} }: for placement (owned; NULL = none) */
	char **labels;
	size_t nlabels;
	/* node { cluster = { ... } } (cluster/cluster.h); listen NULL = no cluster */
	struct {
		char *listen;           /* "tcp://host:port" */
		char **seeds;           /* owned */
		size_t nseeds;
		char *secret_file;      /* file holding the cluster secret */
		char *data_listen;      /* envelopes from other nodes; NULL = listen's host, any port */
		uint64_t heartbeat_us, suspect_after_us, down_after_us; /* 0 = defaults */
		/* cluster = { tls = { ... } }: PEM files (cluster/tls.h); all owned,
		 * cert_file NULL = plain tcp */
		struct {
			char *cert_file, *key_file, *ca_file;
			char *server_name; /* optional */
		} tls;
	} cluster;
} tr_node_spec;

/* tenant "acme" { keys = {...}, rate = "50/s", burst = 100 } */
typedef struct tr_tenant_spec {
	char *name;
	tr_srcpos pos;
	unsigned char (*keys)[32]; /* SHA-256 of each API key (owned); the keys
	                            * themselves are never in the config */
	size_t nkeys;
	double rate;            /* requests per second; 0 = unlimited */
	uint32_t burst;         /* bucket size; default max(1, ceil(rate)) */
} tr_tenant_spec;

/*
 * tool "book" { args = { date = "string", slot = "int", note = "string?" },
 *               handler = function(args, ctx) ... end, timeout = "500ms",
 *               description = "..." }
 * Run by the execute kind (actors/execute/). With `sql = "..."` instead
 * of a handler the tool is one parameterized query on the node's
 * postgres pool (its args fill $1, $2, ... in `params` order).
 */
typedef enum tr_arg_type {
	TR_ARG_STRING = 1,
	TR_ARG_INT,
	TR_ARG_NUMBER,
	TR_ARG_BOOL,
	TR_ARG_TABLE
} tr_arg_type;

typedef struct tr_tool_arg {
	char *name;
	uint8_t type;           /* tr_arg_type */
	bool optional;          /* declared with a trailing "?" */
} tr_tool_arg;

/* Most args one tool may declare. */
#define TR_TOOL_ARGS_MAX 64

typedef struct tr_tool_spec {
	char *name;
	tr_srcpos pos;
	tr_tool_arg *args;      /* owned array, sorted by name */
	size_t nargs;
	int handler_fn;         /* function number (tr_config.nfns); -1 = none */
	uint64_t timeout_us;    /* 0 = not set */
	char *description;      /* NULL = none */
	char *sql;              /* NULL = none: a handler tool */
	/* SQL tools: the args that fill $1, $2, ... in order (owned; names
	 * of args). Given as params = {...}; a tool with one arg may leave it
	 * out. */
	char **params;
	size_t nparams;
} tr_tool_spec;

/* postgres { conninfo = "...", pool = 10, ... }: the node's pool (db/pg.h). */
typedef struct tr_postgres_spec {
	bool on;                /* declared */
	tr_srcpos pos;
	char *conninfo;         /* libpq conninfo, or NULL with conninfo_env */
	char *conninfo_env;     /* environment variable holding it (read at start) */
	uint32_t pool;          /* 0 = 10 */
	uint32_t queue;         /* 0 = 1000 */
	uint64_t connect_timeout_us, max_lifetime_us, idle_timeout_us, statement_timeout_us;
	bool pgbouncer;
} tr_postgres_spec;

/* redis { url = "redis://127.0.0.1:6379/0", ... }: the node's client (db/redis.h). */
typedef struct tr_redis_spec {
	bool on;
	tr_srcpos pos;
	char *url;              /* or NULL with url_env */
	char *url_env;
	char *prefix;           /* namespace of every key troupe writes; default "troupe:" */
	uint64_t timeout_us, connect_timeout_us;
	uint32_t max_pending;
} tr_redis_spec;

typedef struct tr_config {
	char **files;           /* the files loaded, in order (owned) */
	size_t nfiles;
	tr_node_spec node;
	tr_actor_spec *actors;
	size_t nactors;
	tr_supervisor_spec *sups;
	size_t nsups;
	tr_pipeline_spec *pipelines;
	size_t npipelines;
	tr_tenant_spec *tenants;    /* none: the HTTP door needs no API key */
	size_t ntenants;
	tr_tool_spec *tools;        /* in declaration order; their own namespace */
	size_t ntools;
	tr_postgres_spec postgres;  /* .on = false: none */
	tr_redis_spec redis;
	/* Lua functions found in the files (receive, when, handler), numbered in the
	 * order the files create them. Running the same files in a fresh
	 * sandbox (tr_lua_state_new) recreates them with the same numbers:
	 * that is how an actor's own lua_State finds its function. */
	int nfns;
} tr_config;

void tr_config_free(tr_config *c);

/* "redis://<numeric ip>:<port>[/<db>]" (IPv6 in brackets): TR_OK with
 * host (NUL-terminated), port and db (0 when absent), else TR_EINVAL. */
int tr_redis_url_parse(const char *url, char *host, size_t hostlen, int *port, int *db);

/* Whether actor `a` is placed (declared with `on`). */
static inline bool tr_actor_placed(const tr_actor_spec *a)
{
	return a->on_label != NULL || a->on_node != NULL;
}

/* Whether the node `c` declares (c->node: its name and labels) runs actor
 * `a`: always for an actor that is not placed. */
bool tr_actor_runs_here(const tr_config *c, const tr_actor_spec *a);

/* Lookups by name; NULL when absent. */
const tr_actor_spec *tr_config_actor(const tr_config *c, const char *name);
const tr_supervisor_spec *tr_config_sup(const tr_config *c, const char *name);
const tr_pipeline_spec *tr_config_pipeline(const tr_config *c, const char *name);
const tr_tenant_spec *tr_config_tenant(const tr_config *c, const char *name);
const tr_tool_spec *tr_config_tool(const tr_config *c, const char *name);

#endif
