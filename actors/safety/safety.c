/*
 * actors/safety/safety.c -- the `safety` kind: checks a step's input
 * (`text`) and output (`answer`, when present) and adds
 *
 *   safety = { verdict = "allow" | "redact" | "block",
 *              reasons = { { check = ..., field = ..., detail = ... }, ... } }
 *
 * Checks, per field: length (max_input for text, max_output for answer;
 * an over-long field is not scanned further), blocklist, prompt injection
 * (text only: it is about what the user asks, not what the model says),
 * and PII (detect.h). Each check that fires adds one reason and asks for
 * its action (on_pii, on_blocklist, on_injection; length always blocks);
 * the verdict is the strongest action asked for.
 *
 * redact: each PII match in text and answer is replaced in place by its
 * label ("[EMAIL]"), also when the verdict is block (so the message that
 * goes on holds no PII either way). Reasons never quote the matched text.
 *
 * block: the step still answers OK, with answer = the refusal setting and
 * blocked = true, so that an HTTP caller gets a 200 carrying an explicit
 * verdict it can show, instead of an error it has to interpret; and the
 * run's telemetry records why. Steps after a blocking safety step still
 * run (guard them with `when = function(msg) return not msg.blocked end`).
 * block_as_error = true makes a block a step error instead (TR_EINVAL,
 * "blocked: ..." with the reasons), which ends the run unless a fallback
 * takes it.
 *
 * Per message the actor allocates only what the kit does (the parsed
 * message and the reply); its scratch (match lists, the redacted text)
 * is kept in its state and reused.
 */
#include <stdio.h>
#include <string.h>

#include "actors/kinds.h"
#include "actors/kit.h"
#include "actors/safety/detect.h"
#include "lua/tlua.h" /* TR_TAG_STEP */
#include "pipe/engine.h" /* TR_TAG_STREAM_* */
#include "sched/sched.h" /* tr__map */
#include "actors/safety/stream.h"
#include "pipe/mp.h"

#define NFIELDS 2
#define REASONS_MAX (NFIELDS * (TR_SAFETY_CUSTOM + TR_SAFETY_PATTERNS_MAX + 3))
#define BLOCK_HITS_MAX 8
#define SCRATCH_KEEP (64 * 1024) /* bytes of scratch kept between messages */

static const char *const field_names[NFIELDS] = {"text", "answer"};
static const char *const verdict_names[] = {"allow", "redact", "block"};

typedef struct reason {
	const char *check; /* "pii", "blocklist", "injection", "length" */
	const char *field;
	uint8_t action;    /* what it asked for */
	char detail[120];
} reason;

typedef struct safety_st {
	tr_safety_rules r;
	tr_safety_scan sc[NFIELDS];
	tr_buf red;
	reason rs[REASONS_MAX];
	size_t nrs;
	/* Streamed answers being filtered for pipeline engines (engine.h,
	 * "Streamed text"): (stream id, engine) -> tr_safety_stream *. */
	tr__map streams;
	size_t nstreams;
	tr_buf sout;       /* scratch: the safe text of one chunk */
} safety_st;

/* Open streams per actor at most: past it a new one is refused (blocked,
 * so its run ends with an explicit error, not a silent pass). */
#define STREAMS_MAX 4096

/* One field of the message being checked. */
typedef struct field {
	const char *s;
	size_t n;
	int present;
	int redact; /* sc[f] holds matches to replace */
} field;

static reason *add_reason(safety_st *st, const char *check, int f, uint8_t action)
{
	reason *r;
	if (st->nrs == REASONS_MAX)
		return NULL; /* cannot happen: the array fits every check of every field */
	r = &st->rs[st->nrs++];
	r->check = check;
	r->field = field_names[f];
	r->action = action;
	r->detail[0] = '\0';
	return r;
}

/* Runs every check on field f; returns the strongest action asked for, or
 * -1 on allocation failure. */
static int check_field(safety_st *st, int f, field *fd)
{
	const tr_safety_rules *r = &st->r;
	uint64_t limit = f == 0 ? r->max_input : r->max_output;
	int verdict = TR_SAFETY_ALLOW;
	reason *rs;

	if (limit > 0 && fd->n > limit) {
		if ((rs = add_reason(st, "length", f, TR_SAFETY_BLOCK)) != NULL)
			snprintf(rs->detail, sizeof(rs->detail), "%zu bytes, more than %s %llu", fd->n,
			         f == 0 ? "max_input" : "max_output", (unsigned long long)limit);
		return TR_SAFETY_BLOCK;
	}
	if (r->nwords > 0) {
		size_t hits[BLOCK_HITS_MAX], nh;
		nh = tr_safety_blocklist(r, fd->s, fd->n, 0, hits, BLOCK_HITS_MAX, NULL);
		if (nh > 0 && (rs = add_reason(st, "blocklist", f, r->on_blocklist)) != NULL) {
			size_t off = 0;
			for (size_t i = 0; i < nh && off < sizeof(rs->detail); i++) {
				int w = snprintf(rs->detail + off, sizeof(rs->detail) - off, "%s%s",
				                 i ? ", " : "", r->words[hits[i]].text);
				off += w > 0 ? (size_t)w : 0;
			}
			if (r->on_blocklist > verdict)
				verdict = r->on_blocklist;
		}
	}
	if (f == 0) {
		double score;
		char why[96];
		if (tr_safety_injection(&st->sc[f], fd->s, fd->n, &score, why, sizeof(why)) != TR_OK)
			return -1;
		if (score >= r->inj_threshold - 1e-9 &&
		    (rs = add_reason(st, "injection", f, r->on_injection)) != NULL) {
			snprintf(rs->detail, sizeof(rs->detail), "score %.2f >= %.2f: %s", score,
			         r->inj_threshold, why);
			if (r->on_injection > verdict)
				verdict = r->on_injection;
		}
	}
	if (r->pii != 0 || r->npats > 0) {
		tr_safety_scan *sc = &st->sc[f];
		uint32_t count[TR_SAFETY_CUSTOM + TR_SAFETY_PATTERNS_MAX];
		unsigned nk = TR_SAFETY_CUSTOM + (unsigned)r->npats;
		if (tr_safety_pii(r, sc, fd->s, fd->n) != TR_OK)
			return -1;
		if (sc->n == 0)
			return verdict;
		memset(count, 0, sizeof(count));
		for (size_t i = 0; i < sc->n; i++)
			count[sc->m[i].kind]++;
		for (unsigned k = 0; k < nk; k++) {
			if (count[k] == 0 || (rs = add_reason(st, "pii", f, r->on_pii)) == NULL)
				continue;
			snprintf(rs->detail, sizeof(rs->detail), "%s, %u match%s",
			         tr_safety_kind_name(r, k), count[k], count[k] == 1 ? "" : "es");
		}
		fd->redact = r->on_pii == TR_SAFETY_REDACT;
		if (r->on_pii > verdict)
			verdict = r->on_pii;
	}
	return verdict;
}

/* "blocked: blocklist in text (password); length in answer (...)". */
static int fail_blocked(tr_ctx *ctx, const tr_msg *m, const safety_st *st)
{
	char msg[480];
	size_t off = 0;
	int w = snprintf(msg, sizeof(msg), "blocked:");
	off = (size_t)w;
	for (size_t i = 0; i < st->nrs && off < sizeof(msg); i++) {
		const reason *r = &st->rs[i];
		if (r->action != TR_SAFETY_BLOCK)
			continue;
		w = snprintf(msg + off, sizeof(msg) - off, "%s %s in %s (%s)", off > 8 ? ";" : "",
		             r->check, r->field, r->detail);
		off += w > 0 ? (size_t)w : 0;
	}
	return tr_step_fail(ctx, m, TR_EINVAL, "%s", msg);
}

static int pack_reasons(msgpack_packer *pk, const safety_st *st, int verdict)
{
	int bad = msgpack_pack_map(pk, 2);
	bad |= tr__mp_pack_cstr(pk, "verdict");
	bad |= tr__mp_pack_cstr(pk, verdict_names[verdict]);
	bad |= tr__mp_pack_cstr(pk, "reasons");
	bad |= msgpack_pack_array(pk, st->nrs);
	for (size_t i = 0; i < st->nrs; i++) {
		bad |= msgpack_pack_map(pk, 3);
		bad |= tr__mp_pack_cstr(pk, "check");
		bad |= tr__mp_pack_cstr(pk, st->rs[i].check);
		bad |= tr__mp_pack_cstr(pk, "field");
		bad |= tr__mp_pack_cstr(pk, st->rs[i].field);
		bad |= tr__mp_pack_cstr(pk, "detail");
		bad |= tr__mp_pack_cstr(pk, st->rs[i].detail);
	}
	return bad ? TR_ENOMEM : TR_OK;
}

static const char *type_name(const msgpack_object *o)
{
	switch (o->type) {
	case MSGPACK_OBJECT_BOOLEAN: return "a boolean";
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
	case MSGPACK_OBJECT_NEGATIVE_INTEGER:
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64: return "a number";
	case MSGPACK_OBJECT_ARRAY: return "a list";
	case MSGPACK_OBJECT_MAP: return "a table";
	case MSGPACK_OBJECT_BIN: return "binary data";
	default: return "an extension value";
	}
}

static int safety_step(tr_ctx *ctx, safety_st *st, const tr_msg *m, tr_kmsg *k)
{
	const tr_safety_rules *r = &st->r;
	field fd[NFIELDS];
	int verdict = TR_SAFETY_ALLOW;
	tr_kout o;
	int rc = TR_OK;

	memset(fd, 0, sizeof(fd));
	for (int f = 0; f < NFIELDS; f++) {
		int got = tr_kmsg_str(k, field_names[f], &fd[f].s, &fd[f].n);
		if (got == TR_EINVAL)
			return tr_step_fail(ctx, m, TR_EINVAL, "safety: '%s' must be a string, got %s",
			                    field_names[f], type_name(tr_kmsg_get(k, field_names[f])));
		fd[f].present = got == TR_OK;
	}
	if (!fd[0].present && !fd[1].present)
		return tr_step_fail(ctx, m, TR_EINVAL,
		                    "safety: nothing to check (the message has no 'text' or 'answer')");
	st->nrs = 0;
	for (int f = 0; f < NFIELDS; f++) {
		int v;
		if (!fd[f].present)
			continue;
		v = check_field(st, f, &fd[f]);
		if (v < 0)
			return tr_reply_error(ctx, m, TR_ENOMEM);
		if (v > verdict)
			verdict = v;
	}
	if (verdict == TR_SAFETY_BLOCK && r->block_as_error)
		return fail_blocked(ctx, m, st);

	tr_kout_init(&o);
	for (int f = 0; f < NFIELDS && rc == TR_OK; f++) {
		if (!fd[f].redact || (f == 1 && verdict == TR_SAFETY_BLOCK))
			continue;
		st->red.len = 0;
		rc = tr_safety_redact(r, fd[f].s, fd[f].n, st->sc[f].m, st->sc[f].n, &st->red);
		if (rc == TR_OK)
			rc = tr_kpack_str(tr_kout_key(&o, field_names[f]), (const char *)st->red.data,
			                  st->red.len);
	}
	if (rc == TR_OK && verdict == TR_SAFETY_BLOCK) {
		rc = tr_kpack_str(tr_kout_key(&o, "answer"), r->refusal, r->refusal_len);
		if (rc == TR_OK && msgpack_pack_true(tr_kout_key(&o, "blocked")) != 0)
			rc = TR_ENOMEM;
	}
	if (rc == TR_OK)
		rc = pack_reasons(tr_kout_key(&o, "safety"), st, verdict);
	if (rc != TR_OK) {
		tr_kout_free(&o);
		return tr_reply_error(ctx, m, TR_ENOMEM);
	}
	rc = tr_kout_reply(ctx, m, &o);
	/* A huge text should not pin its scratch in an idle actor (the
	 * texts point into the message, so only after the reply). */
	if (st->red.cap > SCRATCH_KEEP)
		tr_buf_free(&st->red);
	for (int f = 0; f < NFIELDS; f++)
		tr_safety_scan_trim(&st->sc[f], SCRATCH_KEEP);
	return rc;
}

/* Answers a stream chunk: {text} or {blocked = why}; arg 1 = the last. */
static void stream_out(tr_ctx *ctx, const tr_msg *req, const tr_buf *text, const char *blocked,
                       int last)
{
	tr_buf b;
	msgpack_packer pk;
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	msgpack_pack_map(&pk, 1);
	if (blocked != NULL) {
		tr__mp_pack_cstr(&pk, "blocked");
		tr__mp_pack_cstr(&pk, blocked);
	} else {
		tr__mp_pack_cstr(&pk, "text");
		tr_kpack_str(&pk, text ? (const char *)text->data : "", text ? text->len : 0);
	}
	tr_msg *o = tr_msg_new();
	if (o != NULL && (o->body = tr_body_new(b.data, b.len)) != NULL) {
		o->tag = TR_TAG_STREAM_OUT;
		o->flags = TR_MSGF_SYSTEM; /* before the engine's later step replies */
		o->corr = req->corr;
		o->arg = last || blocked ? 1 : 0;
		(void)tr_send(ctx, req->from, o);
	} else {
		tr_msg_free(o);
	}
	tr_buf_free(&b);
}

static void stream_drop(safety_st *st, const tr_msg *m, tr_safety_stream *ss)
{
	void *p;
	tr__map_del(&st->streams, m->corr, m->from, &p);
	tr_safety_stream_fini(ss);
	tr__free(ss);
	st->nstreams--;
}

/* A chunk of a streamed answer (engine.h): feed it to the stream's
 * redactor, answer what is safe to show; the last one flushes. */
static int stream_chunk(tr_ctx *ctx, safety_st *st, tr_msg *m)
{
	tr__map_ent *ent = tr__map_get(&st->streams, m->corr, m->from);
	tr_safety_stream *ss = ent ? ent->ptr : NULL;
	const char *txt = "";
	size_t n = 0;
	tr_kmsg k;
	int last = m->arg == 1;

	if (ss == NULL) {
		if (m->corr == 0 || st->nstreams >= STREAMS_MAX) {
			stream_out(ctx, m, NULL, "too many streams being filtered", 1);
			return TR_OK;
		}
		ss = tr__malloc(sizeof(*ss));
		if (ss == NULL || tr__map_put(&st->streams, m->corr, m->from, ss) != TR_OK) {
			tr__free(ss);
			stream_out(ctx, m, NULL, "out of memory", 1);
			return TR_OK;
		}
		tr_safety_stream_init(ss, &st->r);
		st->nstreams++;
	}
	if (tr_kmsg_open(&k, m) == TR_OK && tr_kmsg_str(&k, "text", &txt, &n) != TR_OK)
		txt = "", n = 0;
	st->sout.len = 0;
	int rc = tr_safety_stream_feed(ss, txt, n, &st->sout);
	tr_kmsg_close(&k);
	if (rc == TR_OK && last)
		rc = tr_safety_stream_flush(ss, &st->sout);
	if (rc != TR_OK)
		stream_out(ctx, m, NULL, rc == TR_EINVAL && ss->why[0] ? ss->why : "cannot check the stream", 1);
	else if (st->sout.len > 0 || last)
		stream_out(ctx, m, &st->sout, NULL, last);
	if (rc != TR_OK || last)
		stream_drop(st, m, ss);
	return TR_OK;
}

static int safety_receive(tr_ctx *ctx, void *state, tr_msg *m)
{
	safety_st *st = state;
	tr_kmsg k;
	int rc;

	if (m->tag == TR_TAG_STREAM_CHUNK && !(m->flags & TR_MSGF_ASK))
		return stream_chunk(ctx, st, m);
	if (!(m->flags & TR_MSGF_ASK))
		return TR_OK;
	if (m->tag != TR_TAG_STEP) /* answered, so that the asker does not wait */
		return tr_step_fail(ctx, m, TR_EINVAL, "safety: unexpected request (tag %u)", m->tag);
	if (tr_kmsg_open(&k, m) != TR_OK) {
		tr_kmsg_close(&k);
		return tr_step_fail(ctx, m, TR_EINVAL, "safety: the message is not a map");
	}
	rc = safety_step(ctx, st, m, &k);
	tr_kmsg_close(&k);
	return rc;
}

static void safety_free(safety_st *st)
{
	for (uint32_t i = 0; i < st->streams.cap; i++) {
		if (st->streams.ents[i].key != 0) {
			tr_safety_stream_fini(st->streams.ents[i].ptr);
			tr__free(st->streams.ents[i].ptr);
		}
	}
	tr__map_free(&st->streams);
	tr_buf_free(&st->sout);
	tr_safety_rules_free(&st->r);
	for (int f = 0; f < NFIELDS; f++)
		tr_safety_scan_free(&st->sc[f]);
	tr_buf_free(&st->red);
}

static int safety_init(tr_ctx *ctx, void *state, const void *arg)
{
	safety_st *st = state;
	int rc;

	for (int f = 0; f < NFIELDS; f++)
		tr_safety_scan_init(&st->sc[f]);
	tr_buf_init(&st->red);
	tr_buf_init(&st->sout);
	rc = tr_safety_rules_load(&st->r, arg, NULL, 0);
	if (rc != TR_OK)
		safety_free(st);
	return rc;
}

static void safety_terminate(tr_ctx *ctx, void *state, int reason)
{
	safety_free(state);
}

int tr_safety_check(const tr_actor_spec *a, char *err, size_t errlen)
{
	tr_safety_rules r;
	int rc = tr_safety_rules_load(&r, a, err, errlen);
	tr_safety_rules_free(&r);
	return rc;
}

const tr_actor_ops tr_safety_ops = {
	.name = "safety",
	.size = sizeof(safety_st),
	.init = safety_init,
	.receive = safety_receive,
	.terminate = safety_terminate,
};
