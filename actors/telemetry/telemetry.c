/*
 * actors/telemetry/telemetry.c -- the telemetry kind (telemetry.h).
 *
 * Design notes:
 *  - The hot path is one tap event: validate the body (allocation-free),
 *    read event/pipeline/step from the raw msgpack, then under the
 *    actor's own mutex bump counters and put the body in the ring -- a
 *    reference to the message's body, not a copy, so the ring costs no
 *    formatting. JSON is made only for the file/stdout sinks (into a
 *    reused batch buffer) and when someone reads the ring.
 *  - The mutex is there for the readers (status page, /metrics) on other
 *    threads; the actor is its only writer, so it is never contended in
 *    practice.
 *  - Every actor instance registers a tel_shared in a process-wide list
 *    (keyed by node and actor name) at init and removes it at terminate.
 *    Readers hold the list's lock while they look inside, so an entry is
 *    never freed under them. Lock order: the list, then one actor's.
 */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "actors/kit.h"
#include "actors/telemetry/telemetry.h"
#include "actors/telemetry/writer.h"
#include "core/alloc.h"
#include "http/json.h"
#include "lua/lua_int.h"
#include "lua/tlua.h"
#include "msg/msg_int.h"
#include "pipe/mp.h"

const char *const tr_telemetry_type_names[TR_TEL_NTYPES] = {"start",   "end",   "retry",
                                                            "timeout", "error", "other"};

/* Timer tag of the batch flush (a user tag: below TR_TAG_SYS_BASE). */
#define TEL_TAG_FLUSH 0x7e1e0001u
/* Buffers the writer may be behind before batches are dropped. */
#define TEL_PENDING_BUFFERS 16
#define TEL_PATH_MAX 4000

enum { SINK_RING = 1, SINK_FILE = 2, SINK_STDOUT = 4 };

/* ---- settings ------------------------------------------------------------ */

typedef struct tel_cfg {
	unsigned sinks;     /* SINK_* */
	char *file;         /* owned */
	uint64_t max_bytes;
	unsigned keep;
	uint32_t ring;
	uint32_t flush_ms;
	uint64_t buffer;
	uint64_t max_line;
} tel_cfg;


#define SIZE_HINT "a number of bytes, or \"512B\", \"64KiB\", \"1MiB\", \"1GiB\""

/* "64KiB" & co. into bytes (saturating); 0 on success. */
static int parse_size(const char *s, size_t n, uint64_t *out)
{
	static const struct {
		const char *u;
		unsigned shift;
	} units[] = {{"B", 0}, {"KiB", 10}, {"MiB", 20}, {"GiB", 30}};
	uint64_t v = 0;
	size_t i = 0;

	while (i < n && s[i] >= '0' && s[i] <= '9') {
		unsigned d = (unsigned)(s[i++] - '0');
		v = v > (UINT64_MAX - d) / 10 ? UINT64_MAX : v * 10 + d;
	}
	if (i == 0)
		return -1;
	for (size_t u = 0; u < sizeof(units) / sizeof(units[0]); u++) {
		if (n - i == strlen(units[u].u) && memcmp(s + i, units[u].u, n - i) == 0) {
			*out = v > (UINT64_MAX >> units[u].shift) ? UINT64_MAX : v << units[u].shift;
			return 0;
		}
	}
	return -1;
}

static uint64_t kcfg_size(tr_kcfg *k, const char *key, uint64_t dflt, uint64_t min,
                          uint64_t max, const char *lo, const char *hi)
{
	const msgpack_object *o = tr_kcfg_get(k, key);
	uint64_t v;

	if (o == NULL)
		return dflt;
	if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
		v = o->via.u64;
	} else if (o->type == MSGPACK_OBJECT_FLOAT64 && o->via.f64 >= 0 &&
	           o->via.f64 == floor(o->via.f64) && o->via.f64 < 1e19) {
		v = (uint64_t)o->via.f64;
	} else if (o->type == MSGPACK_OBJECT_STR) {
		if (parse_size(o->via.str.ptr, o->via.str.size, &v) != 0) {
			tr_kcfg_fail(k, "%s: bad size '%.*s' (%s)", key, (int)o->via.str.size,
			             o->via.str.ptr, SIZE_HINT);
			return dflt;
		}
	} else {
		tr_kcfg_fail(k, "%s: expected a size (%s), got %s", key, SIZE_HINT, tr_kobj_type(o));
		return dflt;
	}
	if (v < min || v > max) {
		tr_kcfg_fail(k, "%s: must be between %s and %s", key, lo, hi);
		return dflt;
	}
	return v;
}

static void cfg_free(tel_cfg *c)
{
	tr__free(c->file);
	c->file = NULL;
}

static const char *const sink_names[] = {"ring", "file", "stdout"};
static const unsigned sink_bits[] = {SINK_RING, SINK_FILE, SINK_STDOUT};

/* One sink name in o (a string), or-ed into *sinks. */
static int one_sink(tr_kcfg *k, const msgpack_object *o, unsigned *sinks)
{
	char name[32];
	const char *best = NULL;
	unsigned bd = 3;

	if (o->type != MSGPACK_OBJECT_STR)
		return tr_kcfg_fail(k, "sink: expected \"ring\", \"file\" or \"stdout\" (or a list "
		                       "of them), got %s", tr_kobj_type(o));
	for (size_t i = 0; i < 3; i++) {
		if (tr_kobj_is(o, sink_names[i])) {
			if (*sinks & sink_bits[i])
				return tr_kcfg_fail(k, "sink: \"%s\" is listed twice", sink_names[i]);
			*sinks |= sink_bits[i];
			return TR_OK;
		}
	}
	if (o->via.str.size < sizeof(name)) {
		memcpy(name, o->via.str.ptr, o->via.str.size);
		name[o->via.str.size] = '\0';
		for (size_t i = 0; i < 3; i++) {
			unsigned d = tr__lua_editdist(name, sink_names[i], 2);
			if (d < bd) {
				bd = d;
				best = sink_names[i];
			}
		}
	}
	if (best != NULL)
		return tr_kcfg_fail(k, "sink: unknown sink '%.*s' (did you mean '%s'?)",
		                    (int)o->via.str.size, o->via.str.ptr, best);
	return tr_kcfg_fail(k, "sink: unknown sink '%.*s' (sinks: ring, file, stdout)",
	                    o->via.str.size > 40 ? 40 : (int)o->via.str.size, o->via.str.ptr);
}

/* Reads a's settings into c (check and init share this). */
static int tel_settings(const tr_actor_spec *a, tel_cfg *c, char *err, size_t errlen)
{
	static const char *const known[] = {"sink", "file",     "max_bytes", "keep", "ring",
	                                    "flush_ms", "buffer", "max_line", NULL};
	const msgpack_object *so;
	tr_kcfg k;
	int rc;

	memset(c, 0, sizeof(*c));
	rc = tr_kcfg_open(&k, a, err, errlen);
	if (rc == TR_OK)
		rc = tr_kcfg_keys(&k, known);
	if (rc != TR_OK)
		goto out;
	so = tr_kcfg_get(&k, "sink");
	if (so == NULL) {
		if (tr_kcfg_get(&k, "file") != NULL)
			c->sinks |= SINK_FILE;
		if (tr_kcfg_get(&k, "ring") != NULL || c->sinks == 0)
			c->sinks |= SINK_RING;
	} else if (so->type == MSGPACK_OBJECT_ARRAY) {
		if (so->via.array.size == 0) {
			rc = tr_kcfg_fail(&k, "sink: the list is empty (sinks: ring, file, stdout)");
			goto out;
		}
		for (uint32_t i = 0; i < so->via.array.size && rc == TR_OK; i++)
			rc = one_sink(&k, &so->via.array.ptr[i], &c->sinks);
	} else {
		rc = one_sink(&k, so, &c->sinks);
	}
	if (rc != TR_OK)
		goto out;

	c->file = tr_kcfg_str(&k, "file", NULL);
	c->max_bytes = kcfg_size(&k, "max_bytes", 64u << 20, 1024, (uint64_t)1 << 40, "1KiB",
	                         "1024GiB");
	c->keep = (unsigned)tr_kcfg_int(&k, "keep", 3, 0, 100);
	c->ring = (uint32_t)tr_kcfg_int(&k, "ring", 1000, 1, 1000000);
	c->flush_ms = (uint32_t)tr_kcfg_int(&k, "flush_ms", 100, 1, 60000);
	c->buffer = kcfg_size(&k, "buffer", 64u << 10, 4u << 10, 64u << 20, "4KiB", "64MiB");
	c->max_line = kcfg_size(&k, "max_line", 16u << 10, 256, 1u << 20, "256B", "1MiB");
	if (k.failed) {
		rc = TR_EINVAL;
		goto out;
	}
	if ((c->sinks & SINK_FILE) && c->file == NULL)
		rc = tr_kcfg_fail(&k, "sink \"file\" needs file = \"path\"");
	else if (c->file != NULL && !(c->sinks & SINK_FILE))
		rc = tr_kcfg_fail(&k, "file: set, but sink has no \"file\" (add it to sink)");
	else if (c->file != NULL && (c->file[0] == '\0' || strlen(c->file) > TEL_PATH_MAX))
		rc = tr_kcfg_fail(&k, "file: expected a path of 1 to %d bytes", TEL_PATH_MAX);
	else if (!(c->sinks & SINK_FILE) && tr_kcfg_get(&k, "max_bytes") != NULL)
		rc = tr_kcfg_fail(&k, "max_bytes: only with sink \"file\"");
	else if (!(c->sinks & SINK_FILE) && tr_kcfg_get(&k, "keep") != NULL)
		rc = tr_kcfg_fail(&k, "keep: only with sink \"file\"");
	else if (!(c->sinks & SINK_RING) && tr_kcfg_get(&k, "ring") != NULL)
		rc = tr_kcfg_fail(&k, "ring: set, but sink has no \"ring\" (add it to sink)");
out:
	tr_kcfg_close(&k);
	if (rc != TR_OK)
		cfg_free(c);
	return rc;
}

int tr_telemetry_check(const tr_actor_spec *a, char *err, size_t errlen)
{
	tel_cfg c;
	int rc = tel_settings(a, &c, err, errlen);
	if (rc == TR_OK)
		cfg_free(&c);
	return rc;
}

/* ---- JSON ------------------------------------------------------------------ */

/* Values are written by the HTTP door's msgpack -> JSON (http/json.h), so
 * an event reads the same in a log line, the ring and an answer. */

static uint64_t be(const unsigned char *p, unsigned n)
{
	uint64_t v = 0;
	for (unsigned i = 0; i < n; i++)
		v = (v << 8) | p[i];
	return v;
}

static int put(tr_buf *o, const void *p, size_t n)
{
	return tr__buf_append(o, p, n);
}

static int puts_(tr_buf *o, const char *s)
{
	return tr__buf_append(o, s, strlen(s));
}

/* A map key at p as a JSON key with its colon: strings as they are,
 * integers in decimal; 0 (nothing written) for other keys, which are left
 * out with their values, as the door does. -1 on ENOMEM. */
static int json_key(tr_buf *o, const unsigned char *p, size_t n)
{
	const char *s;
	size_t sn;
	unsigned char c = p[0];
	char b[32];

	if (tr__mp_str(p, n, &s, &sn) == TR_OK)
		return tr__json_str(s, sn, o) == TR_OK && put(o, ":", 1) == TR_OK ? 1 : -1;
	if (c <= 0x7f)
		snprintf(b, sizeof(b), "%u", c);
	else if (c >= 0xe0)
		snprintf(b, sizeof(b), "%d", (int)(signed char)c);
	else if (c >= 0xcc && c <= 0xcf)
		snprintf(b, sizeof(b), "%llu", (unsigned long long)be(p + 1, 1u << (c - 0xcc)));
	else if (c >= 0xd0 && c <= 0xd3) {
		unsigned w = 1u << (c - 0xd0);
		uint64_t v = be(p + 1, w), sign = 1ull << (8 * w - 1);
		/* sign-extend the w-byte two's complement value */
		snprintf(b, sizeof(b), "%lld", (long long)(w == 8 ? (int64_t)v : (int64_t)((v ^ sign) - sign)));
	} else
		return 0;
	return tr__json_str(b, strlen(b), o) == TR_OK && put(o, ":", 1) == TR_OK ? 1 : -1;
}

/* ---- what one actor shares with readers -------------------------------------- */

enum { EV_BODY, EV_PASS, EV_OVERSIZE };

typedef struct tel_ent {
	uint64_t ts_us;
	tr_body *body;      /* a reference (EV_BODY); else NULL */
	uint64_t trace_hi, trace_lo;
	uint32_t tenant;
	uint32_t bytes;     /* body size */
	uint8_t kind;
} tel_ent;

typedef struct tel_step {
	char *pipeline, *step; /* owned */
	uint64_t hash;
	uint64_t n[TR_TEL_NTYPES];
	uint64_t time_us;      /* step_us of its end events */
} tel_step;

#define STEP_IDX_CAP (2 * TR_TEL_STEPS_MAX) /* power of two */

typedef struct tel_shared {
	struct tel_shared *next; /* the registry's list (its lock) */
	tr_node *node;
	char name[64];
	tel_writer *fw, *ow;     /* file and stdout writers (shared, writer.h); NULL
	                          * without that sink; set before registering */
	uv_mutex_t mu;
	/* Guarded by mu. */
	tel_ent *ring;           /* NULL without the ring sink */
	uint32_t cap, head, len; /* head: the next slot written */
	tr_telemetry_stats st;
	tel_step *steps;
	uint32_t nsteps, capsteps;
	uint32_t *idx;           /* step index + 1 per slot; 0 = empty */
} tel_shared;

static uv_once_t reg_once = UV_ONCE_INIT;
static uv_mutex_t reg_mu;
static tel_shared *reg_head;

static void reg_init(void)
{
	if (uv_mutex_init(&reg_mu) != 0)
		abort(); /* at start-up, before any actor: nothing to fall back to */
}

static int matches(const tel_shared *s, tr_node *node, const char *name)
{
	return s->node == node && (name == NULL || strcmp(s->name, name) == 0);
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 0x100000001b3ull;
	return h;
}

static uint64_t pair_hash(const char *pl, size_t pn, const char *st, size_t sn)
{
	uint64_t h = fnv(0xcbf29ce484222325ull, pl, pn);
	h = fnv(h ^ 0xff, st, sn);
	return h ? h : 1;
}

/* The step entry for (pl, st), made if new; NULL past TR_TEL_STEPS_MAX or
 * on OOM. Called with sh->mu held. */
static tel_step *step_get(tel_shared *sh, const char *pl, size_t pn, const char *st, size_t sn,
                          int make)
{
	uint64_t h = pair_hash(pl, pn, st, sn);
	uint32_t slot;

	if (sh->idx == NULL) {
		if (!make || (sh->idx = tr__calloc(STEP_IDX_CAP, sizeof(uint32_t))) == NULL)
			return NULL;
	}
	for (slot = (uint32_t)h & (STEP_IDX_CAP - 1);; slot = (slot + 1) & (STEP_IDX_CAP - 1)) {
		uint32_t i = sh->idx[slot];
		if (i == 0)
			break;
		tel_step *e = &sh->steps[i - 1];
		if (e->hash == h && strlen(e->pipeline) == pn && memcmp(e->pipeline, pl, pn) == 0 &&
		    strlen(e->step) == sn && memcmp(e->step, st, sn) == 0)
			return e;
	}
	if (!make || sh->nsteps == TR_TEL_STEPS_MAX)
		return NULL;
	if (sh->nsteps == sh->capsteps) {
		uint32_t nc = sh->capsteps ? sh->capsteps * 2 : 16;
		tel_step *ns = tr__realloc(sh->steps, nc * sizeof(*ns));
		if (ns == NULL)
			return NULL;
		sh->steps = ns;
		sh->capsteps = nc;
	}
	tel_step *e = &sh->steps[sh->nsteps];
	memset(e, 0, sizeof(*e));
	e->pipeline = tr__strndup(pl, pn);
	e->step = tr__strndup(st, sn);
	if (e->pipeline == NULL || e->step == NULL) {
		tr__free(e->pipeline);
		tr__free(e->step);
		return NULL;
	}
	e->hash = h;
	sh->idx[slot] = ++sh->nsteps;
	return e;
}

static void shared_free(tel_shared *sh)
{
	if (sh == NULL)
		return;
	for (uint32_t i = 0; sh->ring != NULL && i < sh->cap; i++)
		tr_body_unref(sh->ring[i].body);
	tr__free(sh->ring);
	for (uint32_t i = 0; i < sh->nsteps; i++) {
		tr__free(sh->steps[i].pipeline);
		tr__free(sh->steps[i].step);
	}
	tr__free(sh->steps);
	tr__free(sh->idx);
	uv_mutex_destroy(&sh->mu);
	tr__free(sh);
}

/* ---- the actor ------------------------------------------------------------------ */

typedef struct tel_st {
	const tr_actor_spec *spec;
	tel_cfg cfg;
	tel_shared *sh;      /* owned; registered */
	tr_buf batch;        /* JSON lines not yet handed to the writer */
	uint64_t batch_lines;
	int timer_armed;
} tel_st;

static int tel_init(tr_ctx *ctx, void *state, const void *arg)
{
	const tr_actor_spec *a = arg;
	tel_st *st = state;
	tel_shared *sh = NULL;
	char err[512];
	int rc;

	if (a == NULL)
		return TR_EINVAL;
	st->spec = a;
	tr_buf_init(&st->batch);
	rc = tel_settings(a, &st->cfg, err, sizeof(err));
	if (rc != TR_OK)
		goto fail;
	uv_once(&reg_once, reg_init);
	sh = tr__calloc(1, sizeof(*sh));
	if (sh == NULL || uv_mutex_init(&sh->mu) != 0) {
		tr__free(sh);
		sh = NULL;
		rc = TR_ENOMEM;
		snprintf(err, sizeof(err), "out of memory");
		goto fail;
	}
	sh->node = tr_ctx_node(ctx);
	snprintf(sh->name, sizeof(sh->name), "%s", a->name ? a->name : "");
	if (st->cfg.sinks & SINK_RING) {
		sh->ring = tr__calloc(st->cfg.ring, sizeof(tel_ent));
		sh->cap = st->cfg.ring;
		if (sh->ring == NULL) {
			rc = TR_ENOMEM;
			snprintf(err, sizeof(err), "out of memory for a ring of %u events", st->cfg.ring);
			goto fail;
		}
	}
	if (st->cfg.sinks & SINK_FILE) {
		tel_writer_opts wo = {st->cfg.file, st->cfg.max_bytes, st->cfg.keep,
		                      (size_t)st->cfg.buffer * TEL_PENDING_BUFFERS};
		rc = tel_writer_open(&wo, &sh->fw, err, sizeof(err));
		if (rc != TR_OK)
			goto fail;
	}
	if (st->cfg.sinks & SINK_STDOUT) {
		tel_writer_opts wo = {NULL, 0, 0, (size_t)st->cfg.buffer * TEL_PENDING_BUFFERS};
		rc = tel_writer_open(&wo, &sh->ow, err, sizeof(err));
		if (rc != TR_OK)
			goto fail;
	}
	uv_mutex_lock(&reg_mu);
	sh->next = reg_head;
	reg_head = sh;
	uv_mutex_unlock(&reg_mu);
	st->sh = sh;
	return TR_OK;
fail:
	/* init has no other way to say why; check caught the usual causes */
	if (strncmp(err, "actor '", 7) == 0)
		fprintf(stderr, "troupe: %s\n", err);
	else
		fprintf(stderr, "troupe: actor '%s': %s\n", a->name ? a->name : "?", err);
	if (sh != NULL) {
		tel_writer_close(sh->fw);
		tel_writer_close(sh->ow);
	}
	shared_free(sh);
	cfg_free(&st->cfg);
	tr_buf_free(&st->batch);
	return rc;
}

static void flush(tel_st *st)
{
	uint64_t dropped = 0;
	if (st->batch.len == 0)
		return;
	if (st->sh->fw != NULL)
		dropped += tel_writer_push(st->sh->fw, st->batch.data, st->batch.len, st->batch_lines);
	if (st->sh->ow != NULL)
		dropped += tel_writer_push(st->sh->ow, st->batch.data, st->batch.len, st->batch_lines);
	st->batch.len = 0;
	st->batch_lines = 0;
	if (dropped > 0) {
		uv_mutex_lock(&st->sh->mu);
		st->sh->st.lines_dropped += dropped;
		uv_mutex_unlock(&st->sh->mu);
	}
}

static void tel_terminate(tr_ctx *ctx, void *state, int reason)
{
	tel_st *st = state;
	(void)ctx;
	(void)reason;
	if (st->sh == NULL)
		return;
	uv_mutex_lock(&reg_mu);
	for (tel_shared **p = &reg_head; *p != NULL; p = &(*p)->next) {
		if (*p == st->sh) {
			*p = st->sh->next;
			break;
		}
	}
	uv_mutex_unlock(&reg_mu);
	flush(st);
	tel_writer_close(st->sh->fw); /* the last user writes what is queued */
	tel_writer_close(st->sh->ow);
	st->sh->fw = st->sh->ow = NULL;
	shared_free(st->sh);
	st->sh = NULL;
	cfg_free(&st->cfg);
	tr_buf_free(&st->batch);
}

static int is_map(const unsigned char *p)
{
	return (p[0] & 0xf0) == 0x80 || p[0] == 0xde || p[0] == 0xdf;
}

/* The string field k of map p, or NULL. */
static const char *field_str(const unsigned char *p, size_t n, const char *k, size_t *len)
{
	const unsigned char *v;
	size_t vn;
	const char *s;
	if (tr__mp_map_get(p, n, k, &v, &vn) != TR_OK || tr__mp_str(v, vn, &s, len) != TR_OK)
		return NULL;
	return s;
}

static uint64_t field_uint(const unsigned char *p, size_t n, const char *k)
{
	const unsigned char *v;
	size_t vn;
	if (tr__mp_map_get(p, n, k, &v, &vn) != TR_OK)
		return 0;
	if (v[0] <= 0x7f)
		return v[0];
	if (v[0] >= 0xcc && v[0] <= 0xcf)
		return be(v + 1, 1u << (v[0] - 0xcc));
	return 0;
}

/* Whether s[0..n) may be a pipeline or step name in a counter (and a
 * metric label): 1..63 bytes of printable ASCII, as declared names are. */
static int label_ok(const char *s, size_t n)
{
	if (s == NULL || n == 0 || n > 63)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (s[i] < 0x20 || s[i] > 0x7e)
			return 0;
	return 1;
}

static int type_of(const char *s, size_t n)
{
	for (int t = 0; s != NULL && t < TR_TEL_OTHER; t++)
		if (strlen(tr_telemetry_type_names[t]) == n &&
		    memcmp(tr_telemetry_type_names[t], s, n) == 0)
			return t;
	return TR_TEL_OTHER;
}

static void trace_hex(char *b, uint64_t hi, uint64_t lo)
{
	snprintf(b, 33, "%016llx%016llx", (unsigned long long)hi, (unsigned long long)lo);
}

/* One event as a JSON object (no newline) appended to o. */
static int event_json(tr_buf *o, const tel_ent *e, const unsigned char *p, size_t n)
{
	char b[96];
	const char *tn = e->tenant ? tr_tenant_name(e->tenant) : NULL;
	const unsigned char *v;
	size_t vn;

	snprintf(b, sizeof(b), "{\"ts_us\":%llu", (unsigned long long)e->ts_us);
	if (puts_(o, b) != TR_OK)
		return TR_ENOMEM;
	if (tn != NULL && (e->kind != EV_BODY || tr__mp_map_get(p, n, "tenant", &v, &vn) != TR_OK)) {
		if (puts_(o, ",\"tenant\":") != TR_OK || tr__json_str(tn, strlen(tn), o) != TR_OK)
			return TR_ENOMEM;
	}
	if (e->kind == EV_PASS || e->kind == EV_OVERSIZE) {
		char tr[33];
		trace_hex(tr, e->trace_hi, e->trace_lo);
		snprintf(b, sizeof(b), ",\"event\":\"%s\",\"bytes\":%u,\"trace\":\"%s\"}",
		         e->kind == EV_PASS ? "pass" : "oversize", e->bytes, tr);
		return puts_(o, b);
	}
	/* the body's fields, ts_us (ours) left out */
	uint32_t cnt;
	size_t pos;
	if (p[0] >= 0x80 && p[0] <= 0x8f) {
		cnt = p[0] & 0x0f;
		pos = 1;
	} else if (p[0] == 0xde) {
		cnt = (uint32_t)be(p + 1, 2);
		pos = 3;
	} else {
		cnt = (uint32_t)be(p + 1, 4);
		pos = 5;
	}
	for (uint32_t i = 0; i < cnt; i++) {
		size_t ks = tr__mp_size(p + pos), vs = tr__mp_size(p + pos + ks), mark = o->len;
		const char *s;
		size_t sn;
		int k;
		if (!(tr__mp_str(p + pos, ks, &s, &sn) == TR_OK && sn == 5 && memcmp(s, "ts_us", 5) == 0)) {
			if (put(o, ",", 1) != TR_OK || (k = json_key(o, p + pos, ks)) < 0 ||
			    (k == 1 && tr__mp_json_checked(p + pos + ks, o) != TR_OK))
				return TR_ENOMEM;
			if (k == 0)
				o->len = mark;
		}
		pos += ks + vs;
	}
	return put(o, "}", 1);
}

/* Records one event (ring, counters, a line for the writer). */
static void record(tr_ctx *ctx, tel_st *st, const tr_msg *m, uint8_t kind)
{
	tel_shared *sh = st->sh;
	tel_ent e = {0};
	const unsigned char *p = m->body ? m->body->data : NULL;
	size_t n = m->body ? m->body->len : 0;
	const char *pl = NULL, *sp = NULL, *ev = NULL;
	size_t pn = 0, sn = 0, en = 0;
	uint64_t step_us = 0;
	int type = TR_TEL_OTHER;

	e.ts_us = tr_wall_us();
	e.tenant = m->tenant;
	e.trace_hi = m->trace_hi;
	e.trace_lo = m->trace_lo;
	e.bytes = (uint32_t)n;
	e.kind = kind;
	if (kind == EV_BODY) {
		if (n == 0 || !is_map(p) || tr_mp_check(p, n, TR_MP_MAX_DEPTH) != TR_OK) {
			uv_mutex_lock(&sh->mu);
			sh->st.invalid++;
			uv_mutex_unlock(&sh->mu);
			return;
		}
		ev = field_str(p, n, "event", &en);
		pl = field_str(p, n, "pipeline", &pn);
		sp = field_str(p, n, "step", &sn);
		if (!label_ok(pl, pn) || !label_ok(sp, sn))
			pl = sp = NULL; /* counted in step_overflow below */
		type = type_of(ev, en);
		if (type == TR_TEL_END)
			step_us = field_uint(p, n, "step_us");
		if (n > st->cfg.max_line)
			e.kind = EV_OVERSIZE;
		else if (sh->ring != NULL)
			e.body = tr_body_ref(m->body);
	}

	uv_mutex_lock(&sh->mu);
	if (kind == EV_PASS) {
		sh->st.passed++;
	} else {
		sh->st.events++;
		sh->st.by_type[type]++;
		sh->st.oversize += e.kind == EV_OVERSIZE;
		if (pl != NULL && sp != NULL) {
			tel_step *s = step_get(sh, pl, pn, sp, sn, 1);
			if (s != NULL) {
				s->n[type]++;
				s->time_us += step_us;
			} else {
				sh->st.step_overflow++;
			}
		} else if (field_str(p, n, "step", &sn) != NULL) {
			sh->st.step_overflow++;
		}
	}
	if (sh->ring != NULL) {
		tel_ent *slot = &sh->ring[sh->head];
		tr_body_unref(slot->body);
		*slot = e;
		sh->head = sh->head + 1 == sh->cap ? 0 : sh->head + 1;
		if (sh->len < sh->cap)
			sh->len++;
	}
	uv_mutex_unlock(&sh->mu);

	if (sh->fw == NULL && sh->ow == NULL)
		return;
	size_t mark = st->batch.len;
	if (event_json(&st->batch, &e, p, n) != TR_OK || put(&st->batch, "\n", 1) != TR_OK) {
		st->batch.len = mark; /* out of memory: this line is lost */
		uv_mutex_lock(&sh->mu);
		sh->st.lines_dropped++;
		uv_mutex_unlock(&sh->mu);
		return;
	}
	st->batch_lines++;
	if (st->batch.len >= st->cfg.buffer) {
		flush(st);
	} else if (!st->timer_armed) {
		if (tr_timer_after(ctx, TEL_TAG_FLUSH, st->cfg.flush_ms, NULL) == TR_OK)
			st->timer_armed = 1;
		else
			flush(st);
	}
}

static int tel_receive(tr_ctx *ctx, void *state, tr_msg *m)
{
	tel_st *st = state;

	if (m->flags & TR_MSGF_TIMER) {
		if (m->tag == TEL_TAG_FLUSH) {
			st->timer_armed = 0;
			flush(st);
		}
		return TR_OK;
	}
	if (m->tag >= TR_TAG_SYS_BASE || (m->flags & TR_MSGF_REPLY))
		return TR_OK;
	if (m->flags & TR_MSGF_ASK) {
		/* a pipeline step: an empty reply keeps the message as it is */
		tr_msg *rep = tr_msg_new();
		if (rep != NULL) {
			rep->tag = m->tag;
			(void)tr_reply(ctx, m, rep); /* a gone asker is not our error */
		} else {
			(void)tr_reply_error(ctx, m, TR_ENOMEM);
		}
		record(ctx, st, m, EV_PASS);
		return TR_OK;
	}
	record(ctx, st, m, EV_BODY);
	return TR_OK;
}

const tr_actor_ops tr_telemetry_ops = {
	.name = "telemetry",
	.size = sizeof(tel_st),
	.init = tel_init,
	.receive = tel_receive,
	.terminate = tel_terminate,
};

/* ---- readers ---------------------------------------------------------------------- */

/* Writers already counted in one sum (actors may share one). */
typedef struct wseen {
	tel_writer *v[64];
	size_t n;
} wseen;

static void add_writer(tr_telemetry_stats *o, tel_writer *w, wseen *seen)
{
	tel_writer_stats ws;
	if (w == NULL)
		return;
	for (size_t i = 0; i < seen->n; i++)
		if (seen->v[i] == w)
			return;
	if (seen->n < sizeof(seen->v) / sizeof(seen->v[0]))
		seen->v[seen->n++] = w;
	tel_writer_stats_get(w, &ws);
	o->bytes_written += ws.bytes_written;
	o->write_errors += ws.write_errors;
	o->rotations += ws.rotations;
}

static void add_stats(tr_telemetry_stats *o, const tel_shared *s, wseen *seen)
{
	o->actors++;
	o->events += s->st.events;
	for (int t = 0; t < TR_TEL_NTYPES; t++)
		o->by_type[t] += s->st.by_type[t];
	o->passed += s->st.passed;
	o->invalid += s->st.invalid;
	o->oversize += s->st.oversize;
	o->ring_len += s->len;
	o->lines_dropped += s->st.lines_dropped;
	o->step_pairs += s->nsteps;
	o->step_overflow += s->st.step_overflow;
	add_writer(o, s->fw, seen);
	add_writer(o, s->ow, seen);
}

int tr_telemetry_stats_get(tr_node *node, const char *name, tr_telemetry_stats *out)
{
	wseen seen = {{0}, 0};
	memset(out, 0, sizeof(*out));
	uv_once(&reg_once, reg_init);
	uv_mutex_lock(&reg_mu);
	for (tel_shared *s = reg_head; s != NULL; s = s->next) {
		if (!matches(s, node, name))
			continue;
		uv_mutex_lock(&s->mu);
		add_stats(out, s, &seen);
		uv_mutex_unlock(&s->mu);
	}
	uv_mutex_unlock(&reg_mu);
	return out->actors ? TR_OK : TR_ENOTFOUND;
}

typedef struct copy_ent {
	tel_ent e;
	uint64_t seq; /* ties in ts_us keep ring order */
} copy_ent;

static int cmp_ent(const void *a, const void *b)
{
	const copy_ent *x = a, *y = b;
	if (x->e.ts_us != y->e.ts_us)
		return x->e.ts_us < y->e.ts_us ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

int tr_telemetry_ring_json(tr_node *node, const char *name, size_t max, tr_buf *out)
{
	copy_ent *v = NULL;
	size_t cap = 0, n = 0, found = 0, from;
	int rc = TR_OK;

	uv_once(&reg_once, reg_init);
	uv_mutex_lock(&reg_mu);
	for (tel_shared *s = reg_head; s != NULL; s = s->next)
		if (matches(s, node, name)) {
			found++;
			cap += s->cap; /* >= its len while we hold reg_mu: the ring never grows */
		}
	if (cap > 0 && (v = tr__malloc(cap * sizeof(*v))) == NULL)
		rc = TR_ENOMEM;
	for (tel_shared *s = reg_head; s != NULL && rc == TR_OK; s = s->next) {
		if (!matches(s, node, name) || s->ring == NULL)
			continue;
		uv_mutex_lock(&s->mu);
		/* oldest first: the slot after the newest, len of them */
		uint32_t start = (s->head + s->cap - s->len) % s->cap;
		for (uint32_t i = 0; i < s->len && n < cap; i++) {
			tel_ent *e = &s->ring[(start + i) % s->cap];
			v[n].e = *e;
			v[n].seq = n;
			if (e->body != NULL)
				tr_body_ref(e->body);
			n++;
		}
		uv_mutex_unlock(&s->mu);
	}
	uv_mutex_unlock(&reg_mu);
	if (rc != TR_OK)
		return rc;
	if (found == 0) {
		tr__free(v);
		return TR_ENOTFOUND;
	}
	if (n > 1)
		qsort(v, n, sizeof(*v), cmp_ent);
	from = max > 0 && n > max ? n - max : 0;
	if (put(out, "[", 1) != TR_OK)
		rc = TR_ENOMEM;
	for (size_t i = from; i < n && rc == TR_OK; i++) {
		const tel_ent *e = &v[i].e;
		if ((i > from && put(out, ",", 1) != TR_OK) ||
		    event_json(out, e, e->body ? e->body->data : NULL, e->body ? e->body->len : 0) !=
		        TR_OK)
			rc = TR_ENOMEM;
	}
	if (rc == TR_OK && put(out, "]", 1) != TR_OK)
		rc = TR_ENOMEM;
	for (size_t i = 0; i < n; i++)
		tr_body_unref(v[i].e.body);
	tr__free(v);
	return rc;
}

/* A Prometheus label value: \ " and newline escaped. */
static int label(tr_buf *o, const char *s)
{
	for (; *s; s++) {
		const char *r = *s == '\\' ? "\\\\" : *s == '"' ? "\\\"" : *s == '\n' ? "\\n" : NULL;
		if ((r ? puts_(o, r) : put(o, s, 1)) != TR_OK)
			return TR_ENOMEM;
	}
	return TR_OK;
}

/* One sample; `micros`: v is in µs and is written in seconds. */
static int metric(tr_buf *o, const char *m, const char *actor, const char *pl, const char *st,
                  const char *ev, uint64_t v, int micros)
{
	char b[48];
	int bad = puts_(o, m) || puts_(o, "{actor=\"") || label(o, actor) || puts_(o, "\"");
	if (!bad && pl != NULL)
		bad = puts_(o, ",pipeline=\"") || label(o, pl) || puts_(o, "\",step=\"") ||
		      label(o, st) || puts_(o, "\"");
	if (!bad && ev != NULL)
		bad = puts_(o, ",event=\"") || puts_(o, ev) || puts_(o, "\"");
	if (micros)
		snprintf(b, sizeof(b), "} %llu.%06llu\n", (unsigned long long)(v / 1000000u),
		         (unsigned long long)(v % 1000000u));
	else
		snprintf(b, sizeof(b), "} %llu\n", (unsigned long long)v);
	return bad || puts_(o, b) ? TR_ENOMEM : TR_OK;
}

/* Whether s is the first registered actor of its name on its node. */
static int first_of_name(const tel_shared *s)
{
	for (const tel_shared *x = reg_head; x != s; x = x->next)
		if (x->node == s->node && strcmp(x->name, s->name) == 0)
			return 0;
	return 1;
}

static int same_group(const tel_shared *x, const tel_shared *first)
{
	return x->node == first->node && strcmp(x->name, first->name) == 0;
}

/* Is pair p of actor s counted by an earlier actor of its group? */
static int pair_seen_before(tel_shared *s, tel_shared *first, const tel_step *p)
{
	for (tel_shared *x = first; x != s; x = x->next)
		if (same_group(x, first) &&
		    step_get(x, p->pipeline, strlen(p->pipeline), p->step, strlen(p->step), 0))
			return 1;
	return 0;
}

/* The step lines of one family (ev: that event type; -1: step time) for
 * the group starting at `first`, summed over its actors. */
static int step_lines(tr_buf *o, tel_shared *first, const char *family, int ev)
{
	int rc = TR_OK;
	for (tel_shared *s = first; s != NULL && rc == TR_OK; s = s->next) {
		if (!same_group(s, first))
			continue;
		for (uint32_t i = 0; i < s->nsteps && rc == TR_OK; i++) {
			const tel_step *p = &s->steps[i];
			uint64_t v = 0;
			if (pair_seen_before(s, first, p))
				continue;
			for (tel_shared *x = s; x != NULL; x = x->next) {
				const tel_step *q;
				if (!same_group(x, first))
					continue;
				q = x == s ? p
				           : step_get(x, p->pipeline, strlen(p->pipeline), p->step,
				                      strlen(p->step), 0);
				if (q != NULL)
					v += ev >= 0 ? q->n[ev] : q->time_us;
			}
			if (ev >= 0)
				rc = metric(o, family, first->name, p->pipeline, p->step,
				            tr_telemetry_type_names[ev], v, 0);
			else
				rc = metric(o, family, first->name, p->pipeline, p->step, NULL, v, 1);
		}
	}
	return rc;
}

static int family_head(tr_buf *o, const char *name, const char *help)
{
	return puts_(o, "# HELP ") || puts_(o, name) || puts_(o, " ") || puts_(o, help) ||
	               puts_(o, "\n# TYPE ") || puts_(o, name) || puts_(o, " counter\n")
	           ? TR_ENOMEM
	           : TR_OK;
}

int tr_telemetry_metrics(tr_node *node, tr_buf *out)
{
	static const struct {
		const char *name, *help;
		size_t off;
	} simple[] = {
		{"troupe_telemetry_passed_total", "Asks answered as a pass-through step.",
		 offsetof(tr_telemetry_stats, passed)},
		{"troupe_telemetry_invalid_total", "Messages without a msgpack map body.",
		 offsetof(tr_telemetry_stats, invalid)},
		{"troupe_telemetry_oversize_total", "Events past max_line, recorded as a summary.",
		 offsetof(tr_telemetry_stats, oversize)},
		{"troupe_telemetry_lines_dropped_total", "Lines lost because the writer was behind.",
		 offsetof(tr_telemetry_stats, lines_dropped)},
		{"troupe_telemetry_written_bytes_total", "Bytes written to the file or stdout.",
		 offsetof(tr_telemetry_stats, bytes_written)},
		{"troupe_telemetry_write_errors_total", "Failed writes, renames and opens.",
		 offsetof(tr_telemetry_stats, write_errors)},
		{"troupe_telemetry_rotations_total", "File rotations.",
		 offsetof(tr_telemetry_stats, rotations)},
	};
	tel_shared *groups[64];
	tr_telemetry_stats sums[64];
	size_t ng = 0;
	int rc = TR_OK;

	uv_once(&reg_once, reg_init);
	uv_mutex_lock(&reg_mu);
	/* Every actor of the node locked for the scrape, in list order (only
	 * readers ever hold more than one, and always in this order), so the
	 * families agree with each other. */
	for (tel_shared *s = reg_head; s != NULL; s = s->next) {
		if (s->node != node)
			continue;
		uv_mutex_lock(&s->mu);
		if (first_of_name(s) && ng < sizeof(groups) / sizeof(groups[0])) {
			memset(&sums[ng], 0, sizeof(sums[ng]));
			groups[ng++] = s;
		}
	}
	for (size_t g = 0; g < ng; g++) {
		wseen seen = {{0}, 0};
		for (tel_shared *x = groups[g]; x != NULL; x = x->next)
			if (same_group(x, groups[g]))
				add_stats(&sums[g], x, &seen);
	}
	if (ng > 0)
		rc = family_head(out, "troupe_telemetry_events_total",
		                 "Events recorded by telemetry actors, by type.");
	for (size_t g = 0; g < ng && rc == TR_OK; g++)
		for (int t = 0; t < TR_TEL_NTYPES && rc == TR_OK; t++)
			rc = metric(out, "troupe_telemetry_events_total", groups[g]->name, NULL, NULL,
			            tr_telemetry_type_names[t], sums[g].by_type[t], 0);
	for (size_t i = 0; ng > 0 && i < sizeof(simple) / sizeof(simple[0]) && rc == TR_OK; i++) {
		rc = family_head(out, simple[i].name, simple[i].help);
		for (size_t g = 0; g < ng && rc == TR_OK; g++)
			rc = metric(out, simple[i].name, groups[g]->name, NULL, NULL, NULL,
			            *(const uint64_t *)((const char *)&sums[g] + simple[i].off), 0);
	}
	if (ng > 0 && rc == TR_OK)
		rc = family_head(out, "troupe_telemetry_step_events_total",
		                 "Step events by pipeline, step and type.");
	for (size_t g = 0; g < ng && rc == TR_OK; g++)
		for (int t = 0; t < TR_TEL_NTYPES && rc == TR_OK; t++)
			rc = step_lines(out, groups[g], "troupe_telemetry_step_events_total", t);
	if (ng > 0 && rc == TR_OK)
		rc = family_head(out, "troupe_telemetry_step_seconds_total",
		                 "Total step time (step_us) of the end events of each step.");
	for (size_t g = 0; g < ng && rc == TR_OK; g++)
		rc = step_lines(out, groups[g], "troupe_telemetry_step_seconds_total", -1);
	for (tel_shared *s = reg_head; s != NULL; s = s->next)
		if (s->node == node)
			uv_mutex_unlock(&s->mu);
	uv_mutex_unlock(&reg_mu);
	return rc;
}
