/*
 * actors/intent/intent.c -- the `intent` kind: classifies the message's
 * `text` and adds `intent` (string), `confidence` (0..1) and `slots`
 * (a map of string to string; empty unless a pattern rule captured some).
 *
 * Each instance builds its own model at init from the actor's settings
 * (model.c); a model is a few KB to a few hundred KB of read-only tables
 * for example sets of hundreds to thousands of sentences, so instances
 * do not share one. A step costs one pass over the text; nothing here
 * allocates per message (the kit's reply does).
 */
#include <stdio.h>
#include <string.h>

#include "actors/intent/intent.h"
#include "actors/kinds.h"
#include "actors/kit.h"
#include "lua/tlua.h" /* TR_TAG_STEP */

typedef struct intent_st {
	tr_intent_model *m; /* owned */
} intent_st;

int tr_intent_check(const tr_actor_spec *a, char *err, size_t errlen)
{
	tr_intent_model *m;
	int rc = tr__intent_build(a, &m, err, errlen);
	tr__intent_free(m);
	return rc;
}

static int intent_init(tr_ctx *ctx, void *state, const void *arg)
{
	intent_st *s = state;
	char err[512];
	(void)ctx;
	/* `troupe check` and the loader ran the same build, so a failure
	 * here is out of memory or a spec that bypassed the loader. */
	return tr__intent_build(arg, &s->m, err, sizeof(err));
}

static void intent_terminate(tr_ctx *ctx, void *state, int reason)
{
	intent_st *s = state;
	(void)ctx;
	(void)reason;
	tr__intent_free(s->m);
	s->m = NULL;
}

static const char *type_name(const msgpack_object *t)
{
	switch (t->type) {
	case MSGPACK_OBJECT_MAP: return "a table";
	case MSGPACK_OBJECT_ARRAY: return "a list";
	case MSGPACK_OBJECT_BOOLEAN: return "a boolean";
	case MSGPACK_OBJECT_BIN: return "binary data";
	default: return "a number";
	}
}

static int intent_receive(tr_ctx *ctx, void *state, tr_msg *m)
{
	intent_st *s = state;
	tr_intent_result r;
	tr_kmsg k;
	tr_kout o;
	const char *text = NULL;
	size_t n = 0;
	int rc;

	if (!(m->flags & TR_MSGF_ASK))
		return TR_OK; /* nothing to answer */
	if (m->tag != TR_TAG_STEP) {
		tr_step_fail(ctx, m, TR_EINVAL, "intent: unexpected request (tag %u)", m->tag);
		return TR_OK;
	}
	if (tr_kmsg_open(&k, m) != TR_OK) {
		tr_kmsg_close(&k);
		tr_step_fail(ctx, m, TR_EINVAL, "intent: the message is not a map");
		return TR_OK;
	}
	rc = tr_kmsg_str(&k, "text", &text, &n);
	if (rc != TR_OK) {
		if (rc == TR_ENOTFOUND)
			tr_step_fail(ctx, m, TR_EINVAL, "intent: the message has no 'text'");
		else
			tr_step_fail(ctx, m, TR_EINVAL, "intent: 'text' must be a string, got %s",
			             type_name(tr_kmsg_get(&k, "text")));
		tr_kmsg_close(&k);
		return TR_OK;
	}
	tr__intent_classify(s->m, text, n, &r);

	tr_kout_init(&o);
	rc = tr_kpack_str(tr_kout_key(&o, "intent"), r.intent, strlen(r.intent));
	if (rc == TR_OK && msgpack_pack_double(tr_kout_key(&o, "confidence"), r.confidence) != 0)
		rc = TR_ENOMEM;
	if (rc == TR_OK && msgpack_pack_map(tr_kout_key(&o, "slots"), r.nslots) != 0)
		rc = TR_ENOMEM;
	for (unsigned i = 0; i < r.nslots && rc == TR_OK; i++) {
		rc = tr_kpack_str(&o.pk, r.slots[i].name, strlen(r.slots[i].name));
		if (rc == TR_OK)
			rc = tr_kpack_str(&o.pk, r.slots[i].value, r.slots[i].len);
	}
	tr_kmsg_close(&k); /* the fields are packed (copied) by now */
	if (rc != TR_OK) {
		tr_kout_free(&o);
		tr_step_fail(ctx, m, TR_ENOMEM, "intent: out of memory");
		return TR_OK;
	}
	/* An answer that cannot be delivered (the asker is gone, or memory
	 * ran out) is not this actor's fault: it stays up. */
	(void)tr_kout_reply(ctx, m, &o);
	return TR_OK;
}

const tr_actor_ops tr_intent_ops = {
	.name = "intent",
	.size = sizeof(intent_st),
	.init = intent_init,
	.receive = intent_receive,
	.terminate = intent_terminate,
};
