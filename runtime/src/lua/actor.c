/*
 * lua/actor.c -- the Lua actor behaviour (tr_lua_actor_ops): an actor whose
 * receive is a Lua function from the pipeline files.
 *
 * Each instance owns a sandboxed lua_State (tr_lua_state_new reruns the
 * files and finds the function by number). The state is only touched from
 * this actor's callbacks, which never run concurrently: no locks.
 *
 * A Lua error crashes the actor (TR_EFAILED) and the supervisor restarts
 * it with a fresh state, which also discards anything a failed call left
 * behind; the pending ask is answered first with TR_ECRASHED and the Lua
 * error as the reply's {message = "..."}, which the engine puts in the
 * run's error (without it the caller would only see "crashed"). A body
 * that is not a msgpack map is the sender's fault, not the actor's: the
 * ask gets TR_EPROTO and the actor lives on.
 */
#include <string.h>

#include <msgpack.h>

#include "lua/tlua.h"
#include "pipe/mp.h"

typedef struct lactor {
	lua_State *L;               /* owned */
	const tr_actor_spec *spec;  /* borrowed: the config outlives the actor */
} lactor;

static int lactor_init(tr_ctx *ctx, void *state, const void *arg)
{
	const tr_lua_actor_arg *a = arg;
	lactor *la = state;
	char err[256];

	(void)ctx;
	if (a == NULL || a->config == NULL || a->spec == NULL || a->spec->receive_fn < 0)
		return TR_EINVAL;
	la->spec = a->spec;
	return tr_lua_state_new(a->config, NULL, &la->L, err, sizeof(err));
}

/* The error reply of an ask whose call raised: TR_ECRASHED with the Lua
 * error text. Best effort: without memory the runtime's own crash answer
 * (no text) follows. */
static void crash_reply(tr_ctx *ctx, const tr_msg *m, const char *err)
{
	tr_buf b;
	msgpack_packer pk;
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	tr_msg *rep = NULL;
	if (msgpack_pack_map(&pk, 1) == 0 && tr__mp_pack_cstr(&pk, "message") == TR_OK &&
	    tr__mp_pack_cstr(&pk, err) == TR_OK && (rep = tr_msg_new()) != NULL &&
	    (rep->body = tr_body_new(b.data, b.len)) != NULL) {
		rep->tag = TR_TAG_REPLY_ERR;
		rep->flags = TR_MSGF_ERROR;
		rep->err = TR_ECRASHED;
		(void)tr_reply(ctx, m, rep); /* consumes rep */
		rep = NULL;
	}
	tr_msg_free(rep);
	tr_buf_free(&b);
}

static int lactor_receive(tr_ctx *ctx, void *state, tr_msg *m)
{
	lactor *la = state;
	tr_lua_ctx lc = {la->spec->name, m->attempt, tr_tenant_name(m->tenant)};
	tr_buf out;
	tr_msg *rep;
	char err[256];
	int rc;

	/* System messages (timers, exits, writable) and stray replies carry
	 * nothing for receive(). */
	if (m->tag >= TR_TAG_SYS_BASE || (m->flags & TR_MSGF_REPLY))
		return TR_OK;
	tr_buf_init(&out);
	rc = tr_lua_call(la->L, la->spec->receive_fn, m->body ? m->body->data : NULL,
	                 m->body ? m->body->len : 0, &lc, &out, NULL, err, sizeof(err));
	if (rc == TR_EPROTO) {
		tr_buf_free(&out);
		if (m->flags & TR_MSGF_ASK)
			(void)tr_reply_error(ctx, m, TR_EPROTO);
		return TR_OK;
	}
	if (rc != TR_OK) {
		tr_buf_free(&out);
		if (m->flags & TR_MSGF_ASK)
			crash_reply(ctx, m, err);
		return rc == TR_ENOMEM ? TR_ENOMEM : TR_EFAILED;
	}
	if (m->flags & TR_MSGF_ASK) {
		rep = tr_msg_new();
		if (rep == NULL) {
			tr_buf_free(&out);
			return TR_ENOMEM;
		}
		rep->tag = m->tag;
		if (out.len > 0 && (rep->body = tr_body_new(out.data, out.len)) == NULL) {
			tr_msg_free(rep);
			tr_buf_free(&out);
			return TR_ENOMEM;
		}
		(void)tr_reply(ctx, m, rep); /* consumes rep; a gone asker is not our error */
	}
	tr_buf_free(&out);
	return TR_OK;
}

static void lactor_terminate(tr_ctx *ctx, void *state, int reason)
{
	lactor *la = state;
	(void)ctx;
	(void)reason;
	tr_lua_state_free(la->L);
	la->L = NULL;
}

const tr_actor_ops tr_lua_actor_ops = {
	.name = "lua",
	.size = sizeof(lactor),
	.init = lactor_init,
	.receive = lactor_receive,
	.terminate = lactor_terminate,
};
