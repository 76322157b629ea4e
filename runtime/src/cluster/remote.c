/*
 * cluster/remote.c -- the data plane: envelopes to and from actors on
 * other nodes (location transparency; contract: cluster/cluster.h).
 *
 * Design notes.
 *  - Why not the membership socket. It is nng pair1 in polyamorous mode,
 *    which drops a message when its pipe's queue (2 deep in nng 1.5.2) is
 *    full: fine for pings that repeat, not for asks. Envelopes go over
 *    push/pull instead: one pull socket per node listens on the data
 *    address it announces in HELLO; per peer one push socket dials it.
 *    A push send waits while the peer's queues and TCP window are full,
 *    which is the backpressure we want; order per link is kept.
 *  - Who may send. A batch names its sender's node id and carries a
 *    token, HMAC-SHA256(secret, "data", sender, its incarnation,
 *    receiver, its incarnation), truncated to 16 bytes: only a member
 *    that holds the secret and was accepted by the handshake can make
 *    it, and it is fixed for the two lives, so the two links a
 *    simultaneous dial makes cannot disagree about it. A batch from an
 *    unknown sender or with a wrong token is counted and dropped, and its
 *    pipe closed; one from a member we accepted but whose up frame has
 *    not come yet (it travels on the membership socket and can be
 *    overtaken) starts the link (early_peer). (On plain tcp an
 *    eavesdropper can copy a token, as it can read everything else: use
 *    TLS between untrusted networks.)
 *  - The path. tr__deliver hands a message for another node to our
 *    hook (any thread), which queues it in the cluster actor's own
 *    mailbox (tr__enqueue_at leaves m->to alone; the mailbox rejects when
 *    full, which the sender sees as TR_EREJECTED: overload). The actor
 *    encodes each into the peer's open batch; the first one of a turn
 *    also queues a FLUSH marker behind itself, so a batch is sealed and
 *    sent when the actor has taken everything queued before it: one nng
 *    message per burst, one per message when idle (no timer, no delay).
 *  - Bounds. Per peer at most SENDS_MAX batch sends outstanding; when
 *    READY_MAX sealed batches wait behind them, or ASK_WINDOW asks are
 *    in flight on the link, the hook refuses new user messages at once
 *    (TR_EREJECTED, counted remote_refused: overload, as from a full
 *    mailbox) until the queue is half empty. What was accepted is always
 *    carried: the cluster's mailbox bounds it. System messages (replies,
 *    DOWN) are never refused.
 *  - Receiving. A target whose mailbox is full (overflow block) pauses
 *    its link: the batch is held until the target says WRITABLE (or the
 *    next tick, for one that died), later batches of that peer wait
 *    behind it; with IN_STALL batches held we stop receiving, so TCP
 *    pushes back on the senders. Other policies answer as locally: asks
 *    get the error reply, sends are dropped and counted.
 *  - Failure. Asks carried to a peer are remembered (corr, asker) until
 *    their answer comes back; when the peer goes down or leaves, each one
 *    gets an error reply TR_ENODEDOWN at once, local monitors of its
 *    actors get DOWN (TR_ENODEDOWN), and its names disappear.
 *  - Monitors. A monitor of a remote actor is a MONITOR envelope to it;
 *    the cluster actor there monitors the actor itself (a proxy) and
 *    sends DOWN back as from the target.
 *
 * Wire (big endian): "TRB" 1 | sender node id u32 | token [16] |
 * count u32 | count x (len u32 | envelope, tr_msg_encode). Everything is
 * checked against the bytes present; tr_msg_decode checks each envelope.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <msgpack.h>
#include <nng/nng.h>
#include <nng/protocol/pipeline0/pull.h>
#include <nng/protocol/pipeline0/push.h>

#include "cluster/cluster_int.h"
#include "core/alloc.h"
#include "msg/msg_int.h"
#include "pipe/mp.h"

#define DATA_VERSION 1
#define DHDR 28                    /* batch header bytes */
#define BATCH_BYTES (256u * 1024u) /* a batch is sealed at this size */
#define SENDS_MAX 4                /* batch sends outstanding per peer */
#define READY_MAX 16               /* sealed batches queued per peer before the hook refuses */
#define ASK_WINDOW 8192            /* asks in flight per link */
#define ASK_TTL_S 600              /* an unanswered ask without deadline is forgotten after */
#define NAMES_EVERY_NS (5ull * 1000000000u) /* names sent again at least this often */
#define IN_CAP 256                 /* batches held per peer (a paused link) */
#define IN_STALL 64                /* held in all: stop receiving until half of it is delivered */

/* Cluster-private tags, carried as system messages. */
#define TAG_FLUSH (TR_TAG_SYS_BASE - 1u) /* user tag: queued behind the burst */
#define TAG_MONITOR (TR_TAG_SYS_BASE + 0x100u)
#define TAG_DEMONITOR (TR_TAG_SYS_BASE + 0x101u)
#define TAG_NAMES (TR_TAG_SYS_BASE + 0x102u)

/* A remote watcher of one of our actors. */
typedef struct proxy {
	tr_ref watcher; /* on another node */
	uint64_t id;    /* its monitor id */
	tr_ref target;  /* ours */
} proxy;

static void wr32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}

static uint32_t rd32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Refs travel in map values as one integer (idx << 32 | gen): the maps
 * are the scheduler's, whose value is a pointer (64-bit here). */
_Static_assert(sizeof(void *) == 8, "refs are packed into pointers");
static void *pack_ref(tr_ref r)
{
	return (void *)(uintptr_t)((uint64_t)r.idx << 32 | r.gen);
}

static tr_ref unpack_ref(uint32_t node, const void *p)
{
	uint64_t v = (uint64_t)(uintptr_t)p;
	return (tr_ref){node, (uint32_t)(v >> 32), (uint32_t)v};
}

/* ---- closing sockets ------------------------------------------------------------ */

/*
 * nng_close on a thread of its own. nng 1.5.2 sometimes never returns
 * from it (nng #1543: its reaper waits for a pipe whose task never ran;
 * cluster.c close_bounded has the story), here too: a push socket closed
 * on LEAVE or down, the pull socket at shutdown. The loop never waits
 * for one; shutdown waits for all of them at most CLOSE_WAIT_MS, and a
 * close that hangs leaves the handle allocated (tr_cluster_free). The
 * aios of the socket complete into the queue either way, where their
 * epoch makes them harmless.
 */
typedef struct closing {
	tr_cluster *c;
	nng_socket s;
} closing;

static void close_main(void *arg)
{
	closing *x = arg;
	tr_cluster *c = x->c;
	nng_close(x->s);
	tr__free(x);
	uv_mutex_lock(&c->lmu);
	c->dclosing--;
	uv_cond_broadcast(&c->lcv);
	uv_mutex_unlock(&c->lmu);
}

static void close_async(tr_cluster *c, nng_socket s)
{
	uv_thread_t t;
	closing *x = tr__malloc(sizeof(*x));
	if (x == NULL) {
		nng_close(s);
		return;
	}
	*x = (closing){c, s};
	uv_mutex_lock(&c->lmu);
	c->dclosing++;
	uv_mutex_unlock(&c->lmu);
	if (uv_thread_create(&t, close_main, x) != 0) {
		close_main(x);
		return;
	}
	pthread_detach(t); /* nobody joins it: it may never end */
}

/* ---- peers -------------------------------------------------------------- */

/* The peer we carry messages to now, or NULL; any thread. */
static peer *peer_up(tr_cluster *c, uint32_t node)
{
	for (unsigned i = 0; i < PEERS_MAX; i++) {
		peer *p = &c->peers[i];
		if (atomic_load_explicit(&p->node_id, memory_order_relaxed) == node)
			return atomic_load_explicit(&p->up, memory_order_acquire) ? p : NULL;
	}
	return NULL;
}

/* Loop only: the slot of `node`, made when `make`. */
static peer *peer_slot(tr_cluster *c, uint32_t node, int make)
{
	peer *fresh = NULL;
	for (unsigned i = 0; i < PEERS_MAX; i++) {
		peer *p = &c->peers[i];
		uint32_t id = atomic_load_explicit(&p->node_id, memory_order_relaxed);
		if (id == node)
			return p;
		if (id == 0 && fresh == NULL)
			fresh = p;
	}
	if (!make || fresh == NULL)
		return NULL;
	atomic_store_explicit(&fresh->node_id, node, memory_order_relaxed);
	return fresh;
}

static void names_clear(tr_cluster *c, peer *p)
{
	uv_rwlock_wrlock(&c->nmu);
	tr__free(p->names);
	p->names = NULL;
	p->nnames = 0;
	uv_rwlock_wrunlock(&c->nmu);
}

static void in_pop(cstate *cs, peer *p);

/* Stops carrying to p: what waits for it is answered with `err`. */
static void peer_reset(cstate *cs, peer *p, int err)
{
	tr_cluster *c = cs->c;
	tr_node *n = c->node;
	atomic_store_explicit(&p->up, 0, memory_order_release);
	if (p->push_open) {
		/* Aborts the sends outstanding; their completions find a new
		 * epoch and only free their message. */
		close_async(c, p->push);
		p->push_open = 0;
	}
	p->epoch++;
	p->sending = 0;
	while (p->rlen > 0) {
		nng_msg_free(p->ready[p->rhead]);
		p->rhead = (p->rhead + 1) % p->rcap;
		p->rlen--;
	}
	atomic_store_explicit(&p->full, 0, memory_order_relaxed);
	p->out.len = 0;
	p->out_n = 0;
	while (p->ilen > 0)
		in_pop(cs, p);
	for (uint32_t i = 0; i < p->asks.cap; i++) {
		tr__map_ent *e = &p->asks.ents[i];
		if (e->key == 0)
			continue;
		tr__reply_err_to(n, c->ref, e->ref, e->key, err);
		tr__cl_bump(&c->st.remote_failed);
	}
	tr__map_free(&p->asks);
	uint32_t node = atomic_load_explicit(&p->node_id, memory_order_relaxed);
	for (uint32_t i = 0; i < p->mons.cap; i++) {
		tr__map_ent *e = &p->mons.ents[i];
		if (e->key != 0)
			(void)tr__send_sys(n, unpack_ref(node, e->ptr), e->ref, TR_TAG_DOWN, err, e->key,
			                   0, 0);
	}
	tr__map_free(&p->mons);
	/* Its actors' watchers of ours are gone with it. */
	for (uint32_t i = 0; i < cs->proxies.cap; i++) {
		tr__map_ent *e = &cs->proxies.ents[i];
		proxy *x = e->ptr;
		if (e->key == 0 || x->watcher.node != node)
			continue;
		(void)tr_demonitor(&cs->ioctx, x->target, e->key);
		uint64_t key = e->key;
		tr_ref ref = e->ref;
		tr__map_del(&cs->proxies, key, ref, NULL);
		tr__free(x);
		i = (uint32_t)-1; /* the map moved entries: start over */
	}
	names_clear(c, p);
}

/* ---- sending ---------------------------------------------------------------- */

static slot *dslot_get(tr_cluster *c)
{
	slot *s = c->dsend_free;
	if (s != NULL) {
		c->dsend_free = s->free_next;
		return s;
	}
	s = tr__calloc(1, sizeof(*s));
	if (s == NULL)
		return NULL;
	if (nng_aio_alloc(&s->aio, tr__cl_aio_cb, s) != 0) {
		tr__free(s);
		return NULL;
	}
	s->c = c;
	s->q.kind = Q_DSEND;
	s->all_next = c->dsend_all;
	c->dsend_all = s;
	return s;
}

/* The hook's hint (see peer.full): on at the bounds, off at half. */
static void update_full(peer *p)
{
	int full = atomic_load_explicit(&p->full, memory_order_relaxed);
	if (!full && (p->rlen >= READY_MAX || p->asks.len >= ASK_WINDOW))
		atomic_store_explicit(&p->full, 1, memory_order_relaxed);
	else if (full && p->rlen <= READY_MAX / 2 && p->asks.len <= ASK_WINDOW / 2)
		atomic_store_explicit(&p->full, 0, memory_order_relaxed);
}

/* Room for one more sealed batch: the ring grows (what the mailbox
 * accepted is carried; the hook's refusal keeps this small). */
static int ready_room(peer *p)
{
	if (p->rlen < p->rcap)
		return TR_OK;
	unsigned cap = p->rcap ? p->rcap * 2 : READY_MAX * 2;
	nng_msg **v = tr__malloc(cap * sizeof(*v));
	if (v == NULL)
		return TR_ENOMEM;
	for (unsigned i = 0; i < p->rlen; i++)
		v[i] = p->ready[(p->rhead + i) % p->rcap];
	tr__free(p->ready);
	p->ready = v;
	p->rhead = 0;
	p->rcap = cap;
	return TR_OK;
}

/* Hands nm to the push socket now if it can take it without waiting:
 * 0, or nng's error (nm is still ours). nng_sendmsg's non-blocking send
 * completes inside the call (push's fast path hands nm to a ready pipe
 * or its queue, or fails at once), so no completion task and no loop
 * wake-up follow, as an aio callback would cost: on a link with one
 * message at a time (an ask, its reply) two thread hand-offs saved per
 * message. It allocates an aio per call; a reused callback-less aio with
 * a zero timeout would not: nng 1.5.2 panics (aio.c:331, a_cancel_fn)
 * when such an aio is used again after a send that failed (seen in
 * bench/nngfloor pinned to one CPU). */
static int try_send(peer *p, nng_msg *nm)
{
	return nng_sendmsg(p->push, nm, NNG_FLAG_NONBLOCK);
}

/* Starts sends of sealed batches while fewer than SENDS_MAX are out. An
 * idle link (no send outstanding, so nothing it could overtake) tries
 * the non-blocking send first. */
static void pump(tr_cluster *c, peer *p)
{
	while (p->push_open && p->sending == 0 && p->rlen > 0 &&
	       try_send(p, p->ready[p->rhead]) == 0) {
		p->rhead = (p->rhead + 1) % p->rcap;
		p->rlen--;
	}
	while (p->push_open && p->sending < SENDS_MAX && p->rlen > 0) {
		slot *s = dslot_get(c);
		if (s == NULL)
			return; /* retried on the next completion or flush */
		s->peer = (unsigned)(p - c->peers);
		s->epoch = p->epoch;
		nng_aio_set_msg(s->aio, p->ready[p->rhead]);
		p->rhead = (p->rhead + 1) % p->rcap;
		p->rlen--;
		p->sending++;
		nng_send_aio(p->push, s->aio);
	}
	update_full(p);
}

/* Seals the open batch into an nng message queued for sending. */
static void seal(tr_cluster *c, peer *p)
{
	nng_msg *nm;
	if (p->out_n == 0)
		return;
	if (ready_room(p) != TR_OK || nng_msg_alloc(&nm, p->out.len) != 0) {
		/* Out of memory: lost. Its asks fail when their answers never
		 * come (timeouts) or the peer goes down. */
		tr__cl_bump(&c->st.remote_refused);
	} else {
		wr32(p->out.data + 24, p->out_n);
		memcpy(nng_msg_body(nm), p->out.data, p->out.len);
		p->ready[(p->rhead + p->rlen) % p->rcap] = nm;
		p->rlen++;
		tr__cl_bump(&c->st.batches_out);
	}
	p->out.len = 0;
	p->out_n = 0;
}

static void flush_all(cstate *cs)
{
	tr_cluster *c = cs->c;
	for (unsigned i = 0; i < PEERS_MAX; i++) {
		peer *p = &c->peers[i];
		if (!atomic_load_explicit(&p->up, memory_order_relaxed))
			continue;
		seal(c, p);
		pump(c, p);
	}
}

static int batch_open(tr_cluster *c, peer *p)
{
	if (p->out.len > 0)
		return TR_OK;
	if (tr__buf_reserve(&p->out, DHDR) != TR_OK)
		return TR_ENOMEM;
	unsigned char *h = p->out.data;
	memcpy(h, "TRB", 3);
	h[3] = DATA_VERSION;
	wr32(h + 4, c->node_id);
	memcpy(h + 8, p->tok_out, TOKEN_LEN);
	wr32(h + 24, 0);
	p->out.len = DHDR;
	return TR_OK;
}

/* Appends one envelope to p's open batch (sealing a full one first).
 * TR_OK; TR_ETOOBIG, TR_EINVAL, TR_EPROTO from the encoder; TR_ENOMEM. */
static int append(tr_cluster *c, peer *p, const tr_msg *m)
{
	size_t est = 160u + (m->body != NULL ? m->body->len : 0u);
	if (est + DHDR + 4u > c->max_frame)
		return TR_ETOOBIG; /* no batch can carry it: the peer's frame cap */
	if (p->out.len + est + 4u > BATCH_BYTES)
		seal(c, p);
	int rc = batch_open(c, p);
	if (rc != TR_OK)
		return rc;
	size_t at = p->out.len;
	if ((rc = tr__buf_reserve(&p->out, 4u)) != TR_OK)
		return rc;
	p->out.len += 4;
	if ((rc = tr_msg_encode(m, &p->out)) != TR_OK) {
		p->out.len = at;
		if (p->out_n == 0)
			p->out.len = 0;
		return rc;
	}
	wr32(p->out.data + at, (uint32_t)(p->out.len - at - 4u));
	p->out_n++;
	return TR_OK;
}

static void *ask_expiry(const tr_msg *m)
{
	uint64_t now_s = tr_now_ns() / 1000000000u;
	uint64_t ttl = ASK_TTL_S;
	if (m->deadline != 0) {
		uint64_t wall = tr_wall_us();
		uint64_t left_s = m->deadline > wall ? (m->deadline - wall) / 1000000u : 0;
		if (left_s + 60u < ttl)
			ttl = left_s + 60u; /* the asker gave up by then */
	}
	return (void *)(uintptr_t)(now_s + ttl);
}

/* One message from our mailbox for another node. */
static void carry(cstate *cs, const tr_msg *m)
{
	tr_cluster *c = cs->c;
	tr_node *n = c->node;
	int is_ask = (m->flags & TR_MSGF_ASK) && !(m->flags & TR_MSGF_REPLY);
	peer *p = peer_up(c, m->to.node);
	int rc = TR_ENODEDOWN;
	if (p != NULL)
		rc = append(c, p, m);
	else
		tr__cl_bump(&c->st.remote_failed);
	if (rc != TR_OK) {
		if (is_ask)
			tr__reply_err_to(n, m->to, m->from, m->corr, rc);
		else if (m->tag == TAG_MONITOR)
			(void)tr__send_sys(n, m->to, m->from, TR_TAG_DOWN, rc, m->corr, 0, 0);
		return;
	}
	tr__cl_bump(&c->st.msgs_out);
	if (is_ask)
		(void)tr__map_put(&p->asks, m->corr, m->from, ask_expiry(m));
	else if (m->tag == TAG_MONITOR)
		(void)tr__map_put(&p->mons, m->corr, m->from, pack_ref(m->to));
	else if (m->tag == TAG_DEMONITOR)
		(void)tr__map_del(&p->mons, m->corr, m->from, NULL);
	if (p->out.len >= BATCH_BYTES) {
		seal(c, p);
		pump(c, p);
	} else if (is_ask) {
		update_full(p);
	}
}

/* Our names without a generation, to one peer (whole list: it is short
 * and changes rarely). */
typedef struct names_acc {
	msgpack_packer pk;
	uint32_t n;
	int bad;
} names_acc;

static void name_one(void *ud, const char *name, tr_ref ref)
{
	names_acc *a = ud;
	if (strchr(name, '@') != NULL)
		return;
	a->bad |= msgpack_pack_array(&a->pk, 3) || tr__mp_pack_cstr(&a->pk, name) != TR_OK ||
	          msgpack_pack_uint32(&a->pk, ref.idx) || msgpack_pack_uint32(&a->pk, ref.gen);
	a->n++;
}

static void send_names(cstate *cs)
{
	tr_cluster *c = cs->c;
	tr_buf items, b;
	names_acc a;
	msgpack_packer pk;
	tr_buf_init(&items);
	tr_buf_init(&b);
	tr__mp_packer(&a.pk, &items);
	a.n = 0;
	a.bad = 0;
	if (!atomic_load_explicit(&c->retired, memory_order_relaxed))
		tr__names_each(c->node, name_one, &a);
	else
		cs->retired_sent = 1; /* an empty list: others stop picking our actors */
	tr__mp_packer(&pk, &b);
	/* The header, then the items as they are (the packer's raw write). */
	a.bad |= msgpack_pack_array(&pk, a.n) ||
	         (items.len > 0 && pk.callback(pk.data, (const char *)items.data, items.len));
	tr_body *body = a.bad ? NULL : tr_body_new(b.data, b.len);
	tr_buf_free(&items);
	tr_buf_free(&b);
	if (body == NULL)
		return; /* sent again on the next change or tick */
	for (unsigned i = 0; i < PEERS_MAX; i++) {
		peer *p = &c->peers[i];
		if (!atomic_load_explicit(&p->up, memory_order_relaxed))
			continue;
		tr_msg *m = tr_msg_new();
		if (m == NULL)
			break;
		m->from = c->ref;
		m->to = (tr_ref){atomic_load_explicit(&p->node_id, memory_order_relaxed), 0, 1};
		m->tag = TAG_NAMES;
		m->flags = TR_MSGF_SYSTEM;
		m->body = tr_body_ref(body);
		(void)append(c, p, m);
		tr_msg_free(m);
	}
	tr_body_unref(body);
	flush_all(cs);
}

/* ---- receiving ----------------------------------------------------------- */

static int name_matches(const char *want, const char *have)
{
	size_t n = strlen(want);
	if (strncmp(want, have, n) != 0)
		return 0;
	if (have[n] == '\0')
		return 1;
	if (have[n] != '#' || have[n + 1] == '\0')
		return 0;
	for (const char *s = have + n + 1; *s; s++)
		if (*s < '0' || *s > '9')
			return 0;
	return 1;
}

static void on_names(tr_cluster *c, peer *p, const tr_msg *m)
{
	uint32_t node = atomic_load_explicit(&p->node_id, memory_order_relaxed);
	msgpack_unpacked u;
	if (m->body == NULL)
		return;
	msgpack_unpacked_init(&u);
	if (msgpack_unpack_next(&u, (const char *)m->body->data, m->body->len, NULL) !=
	        MSGPACK_UNPACK_SUCCESS ||
	    u.data.type != MSGPACK_OBJECT_ARRAY) {
		tr__cl_bump(&c->st.bad_batches);
		msgpack_unpacked_destroy(&u);
		return;
	}
	const msgpack_object_array *a = &u.data.via.array;
	pname *v = a->size > 0 ? tr__calloc(a->size, sizeof(*v)) : NULL;
	uint32_t k = 0;
	for (uint32_t i = 0; v != NULL && i < a->size; i++) {
		const msgpack_object *e = &a->ptr[i];
		if (e->type != MSGPACK_OBJECT_ARRAY || e->via.array.size != 3 ||
		    e->via.array.ptr[0].type != MSGPACK_OBJECT_STR ||
		    e->via.array.ptr[0].via.str.size == 0 ||
		    e->via.array.ptr[0].via.str.size >= sizeof(v[0].name) ||
		    e->via.array.ptr[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
		    e->via.array.ptr[2].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
		    e->via.array.ptr[1].via.u64 > UINT32_MAX || e->via.array.ptr[2].via.u64 == 0 ||
		    e->via.array.ptr[2].via.u64 > UINT32_MAX)
			continue;
		memcpy(v[k].name, e->via.array.ptr[0].via.str.ptr, e->via.array.ptr[0].via.str.size);
		v[k].ref = (tr_ref){node, (uint32_t)e->via.array.ptr[1].via.u64,
		                    (uint32_t)e->via.array.ptr[2].via.u64};
		k++;
	}
	msgpack_unpacked_destroy(&u);
	uv_rwlock_wrlock(&c->nmu);
	tr__free(p->names);
	p->names = v;
	p->nnames = k;
	uv_rwlock_wrunlock(&c->nmu);
}

/* A remote watcher starts (or stops) monitoring one of our actors. */
static void on_monitor(cstate *cs, const tr_msg *m)
{
	if (m->tag == TAG_MONITOR) {
		proxy *x = tr__malloc(sizeof(*x));
		uint64_t id;
		if (x == NULL) {
			(void)tr__send_sys(cs->c->node, m->to, m->from, TR_TAG_DOWN, TR_ENOMEM, m->corr,
			                   0, 0);
			return;
		}
		*x = (proxy){m->from, m->corr, m->to};
		/* A dead target gives DOWN at once, through on_proxy_down. */
		if (tr_monitor(&cs->ioctx, m->to, &id) != TR_OK ||
		    tr__map_put(&cs->proxies, id, m->to, x) != TR_OK) {
			tr__free(x);
			(void)tr__send_sys(cs->c->node, m->to, m->from, TR_TAG_DOWN, TR_ENOMEM, m->corr,
			                   0, 0);
		}
		return;
	}
	for (uint32_t i = 0; i < cs->proxies.cap; i++) {
		tr__map_ent *e = &cs->proxies.ents[i];
		proxy *x = e->ptr;
		if (e->key == 0 || !tr_ref_eq(x->watcher, m->from) || x->id != m->corr)
			continue;
		(void)tr_demonitor(&cs->ioctx, x->target, e->key);
		tr__map_del(&cs->proxies, e->key, e->ref, NULL);
		tr__free(x);
		return;
	}
}

/* DOWN of an actor we monitor for a remote watcher. */
static void on_proxy_down(cstate *cs, const tr_msg *m)
{
	void *ptr;
	if (!tr__map_del(&cs->proxies, m->corr, m->from, &ptr))
		return;
	proxy *x = ptr;
	(void)tr__send_sys(cs->c->node, x->target, x->watcher, TR_TAG_DOWN, m->err, x->id, 0, 0);
	tr__free(x);
}

/* One envelope of p's batch, for an actor of ours. TR_EFULL: the target's
 * mailbox is full (overflow block) and will tell us WRITABLE: the link
 * waits (m is freed; the envelope is decoded again then). */
static int deliver_in(cstate *cs, peer *p, tr_msg *m)
{
	tr_cluster *c = cs->c;
	uint32_t node = atomic_load_explicit(&p->node_id, memory_order_relaxed);
	if (m->to.node != c->node_id || (m->from.gen != 0 && m->from.node != node)) {
		tr__cl_bump(&c->st.bad_batches); /* not from it, or not for us */
		tr_msg_free(m);
		return TR_OK;
	}
	switch (m->tag) {
	case TAG_NAMES:
		on_names(c, p, m);
		tr_msg_free(m);
		tr__cl_bump(&c->st.msgs_in);
		return TR_OK;
	case TAG_MONITOR:
	case TAG_DEMONITOR:
		on_monitor(cs, m);
		tr_msg_free(m);
		tr__cl_bump(&c->st.msgs_in);
		return TR_OK;
	default:
		break;
	}
	uint16_t f = m->flags;
	tr_ref from = m->from, to = m->to;
	uint64_t corr = m->corr;
	if ((f & TR_MSGF_REPLY) && tr__map_del(&p->asks, corr, to, NULL))
		update_full(p);
	int rc = tr__deliver(c->node, to, m, c->ref);
	if (rc == TR_EFULL)
		return rc;
	tr__cl_bump(&c->st.msgs_in);
	if (rc != TR_OK) {
		tr__cl_bump(&c->st.remote_undelivered);
		/* Refused here is refused there: the asker gets what a local
		 * sender would have got (overload, no actor). */
		if ((f & TR_MSGF_ASK) && !(f & TR_MSGF_REPLY))
			tr__reply_err_to(c->node, to, from, corr, rc);
	}
	return TR_OK;
}

static void in_pop(cstate *cs, peer *p)
{
	nng_msg_free(p->in[p->ihead]);
	p->ihead = (p->ihead + 1) % IN_CAP;
	p->ilen--;
	cs->in_total--;
	if (p->ilen > 0) {
		p->in_off = DHDR;
		p->in_left = rd32((const unsigned char *)nng_msg_body(p->in[p->ihead]) + 24);
	}
}

/* Delivers p's held batches until one target is full (then we wait for
 * its WRITABLE, or the next tick) or none is left. The batches were
 * checked whole when they came (check_batch). */
static void in_run(cstate *cs, peer *p)
{
	while (p->ilen > 0) {
		const unsigned char *b = nng_msg_body(p->in[p->ihead]);
		while (p->in_left > 0) {
			tr_msg *m;
			uint32_t l = rd32(b + p->in_off);
			if (tr_msg_decode(b + p->in_off + 4, l, &m) != TR_OK) {
				tr__cl_bump(&cs->c->st.bad_batches); /* the rest of it is lost */
				break;
			}
			if (deliver_in(cs, p, m) == TR_EFULL)
				return;
			p->in_off += 4u + l;
			p->in_left--;
			if (!atomic_load_explicit(&p->up, memory_order_relaxed))
				return; /* reset meanwhile */
		}
		in_pop(cs, p);
	}
}

/* Every length inside the batch stays inside it, and they add up. */
static int check_batch(const unsigned char *b, size_t len)
{
	uint32_t count = rd32(b + 24);
	size_t off = DHDR;
	for (uint32_t i = 0; i < count; i++) {
		if (len - off < 4u || rd32(b + off) > len - off - 4u)
			return -1;
		off += 4u + rd32(b + off);
	}
	return off == len ? 0 : -1;
}

/* A batch from a member whose data link we have not started (or started
 * for its previous life): it may send as soon as it takes the up frame
 * we sent on the membership link, and that batch, on another socket,
 * can come before the up frame it sent us. Its token proves it accepted
 * this life of ours, so we start the link now instead of dropping the
 * batch. NULL when the token is not the one of a member we accepted. */
static peer *early_peer(cstate *cs, uint32_t node, const unsigned char *tok)
{
	tr_cluster *c = cs->c;
	unsigned char want[TOKEN_LEN];
	member *m = tr__cl_linked_member(cs, node);
	if (m == NULL ||
	    tr__cl_token(c, m->m.name, m->m.incarnation, c->name, c->incarnation, want) != TR_OK ||
	    !tr__cl_ct_equal(tok, want, TOKEN_LEN))
		return NULL;
	m->data_ready = 1;
	tr__cl_peer_up(cs, m);
	peer *p = peer_up(c, node);
	return p != NULL && tr__cl_ct_equal(tok, p->tok_in, TOKEN_LEN) ? p : NULL;
}

/* A batch off the wire (nm is ours to free). */
static void on_batch(cstate *cs, nng_msg *nm)
{
	tr_cluster *c = cs->c;
	const unsigned char *b = nng_msg_body(nm);
	size_t len = nng_msg_len(nm);
	peer *p = NULL;
	if (len >= DHDR && memcmp(b, "TRB", 3) == 0 && b[3] == DATA_VERSION) {
		uint32_t from = rd32(b + 4);
		p = peer_up(c, from);
		if (p == NULL || !tr__cl_ct_equal(b + 8, p->tok_in, TOKEN_LEN))
			p = early_peer(cs, from, b + 8);
	}
	if (p == NULL) {
		tr__cl_bump(&c->st.bad_batches);
		nng_pipe_close(nng_msg_get_pipe(nm)); /* not a member's: hang up */
		nng_msg_free(nm);
		return;
	}
	if (check_batch(b, len) != 0 || (p->in == NULL && (p->in = tr__calloc(IN_CAP, sizeof(*p->in))) == NULL) ||
	    p->ilen >= IN_CAP) {
		/* Malformed; or (no memory, or a peer that ignores the stall:
		 * IN_STALL keeps K_DRECV per peer well below IN_CAP) lost. */
		tr__cl_bump(&c->st.bad_batches);
		nng_msg_free(nm);
		return;
	}
	tr__cl_bump(&c->st.batches_in);
	p->in[(p->ihead + p->ilen) % IN_CAP] = nm;
	if (p->ilen++ == 0) {
		p->in_off = DHDR;
		p->in_left = rd32(b + 24);
	}
	cs->in_total++;
	if (p->ilen == 1)
		in_run(cs, p);
}

/* Runs every paused link again (a WRITABLE came, or a tick: a full
 * target that died never says WRITABLE). */
static void in_resume(cstate *cs)
{
	tr_cluster *c = cs->c;
	for (unsigned i = 0; i < PEERS_MAX && cs->in_total > 0; i++)
		if (c->peers[i].ilen > 0)
			in_run(cs, &c->peers[i]);
	/* Below half the stall mark: receive again. */
	while (cs->stalled != NULL && cs->in_total < IN_STALL / 2 && !cs->stopping) {
		slot *s = cs->stalled;
		cs->stalled = s->free_next;
		nng_recv_aio(c->dsock, s->aio);
	}
}

/* ---- the hooks (any thread) --------------------------------------------- */

static int r_deliver(void *ud, tr_msg *m, tr_ref blocker)
{
	tr_cluster *c = ud;
	peer *p = peer_up(c, m->to.node);
	if (p == NULL) {
		tr__cl_bump(&c->st.remote_failed);
		tr_msg_free(m);
		return TR_ENODEDOWN;
	}
	if (!(m->flags & TR_MSGF_SYSTEM) && atomic_load_explicit(&p->full, memory_order_relaxed)) {
		tr__cl_bump(&c->st.remote_refused);
		tr_msg_free(m);
		return TR_EREJECTED; /* the link is full: overload, as a full mailbox */
	}
	return tr__enqueue_at(c->node, c->ref, m, blocker);
}

static size_t r_lookup(void *ud, const char *name, tr_ref *out, size_t max)
{
	tr_cluster *c = ud;
	size_t k = 0;
	uv_rwlock_rdlock(&c->nmu);
	for (unsigned i = 0; i < PEERS_MAX && k < max; i++) {
		peer *p = &c->peers[i];
		if (!atomic_load_explicit(&p->up, memory_order_acquire))
			continue;
		for (uint32_t j = 0; j < p->nnames && k < max; j++)
			if (name_matches(name, p->names[j].name))
				out[k++] = p->names[j].ref;
	}
	uv_rwlock_rdunlock(&c->nmu);
	return k;
}

static int r_monitor(void *ud, tr_ref watcher, tr_ref target, uint64_t id, int on)
{
	tr_cluster *c = ud;
	if (peer_up(c, target.node) == NULL) {
		if (!on)
			return TR_ENOTFOUND;
		/* As for a dead local target: DOWN at once. */
		return tr__send_sys(c->node, target, watcher, TR_TAG_DOWN, TR_ENODEDOWN, id, 0, 0) ==
		               TR_OK
		           ? TR_OK
		           : TR_ENOMEM;
	}
	tr_msg *m = tr_msg_new();
	if (m == NULL)
		return TR_ENOMEM;
	m->from = watcher;
	m->to = target;
	m->corr = id;
	m->tag = on ? TAG_MONITOR : TAG_DEMONITOR;
	m->flags = TR_MSGF_SYSTEM;
	return tr__enqueue_at(c->node, c->ref, m, TR_REF_NONE);
}

const tr__remote_ops tr__cl_remote_ops = {r_deliver, r_lookup, r_monitor};

/* ---- the actor's side ------------------------------------------------------ */

int tr__cl_data_receive(tr_ctx *ctx, cstate *cs, tr_msg *m)
{
	tr_cluster *c = cs->c;
	if (m->to.node == c->node_id) {
		if (m->tag == TAG_FLUSH) {
			cs->flush_queued = 0;
			flush_all(cs);
		} else if (m->tag == TR_TAG_DOWN) {
			on_proxy_down(cs, m);
		} else if (m->tag == TR_TAG_WRITABLE) {
			in_resume(cs);
		}
		return TR_OK;
	}
	carry(cs, m);
	if (!cs->flush_queued) {
		if (tr_send_u64(ctx, c->ref, TAG_FLUSH, 0) == TR_OK)
			cs->flush_queued = 1;
		else
			flush_all(cs); /* our mailbox is full: no marker, send now */
	}
	return TR_OK;
}

void tr__cl_data_event(cstate *cs, slot *s)
{
	tr_cluster *c = cs->c;
	int rv = nng_aio_result(s->aio);
	if (s->q.kind == Q_DRECV) {
		if (rv == 0) {
			nng_msg *nm = nng_aio_get_msg(s->aio);
			nng_aio_set_msg(s->aio, NULL);
			if (!cs->stopping)
				on_batch(cs, nm);
			else
				nng_msg_free(nm);
		}
		if (cs->stopping || rv == NNG_ECLOSED || rv == NNG_ECANCELED)
			return;
		if (cs->in_total >= IN_STALL) {
			/* Too much held for full mailboxes: stop reading, so
			 * TCP pushes back on the senders. */
			s->free_next = cs->stalled;
			cs->stalled = s;
			return;
		}
		nng_recv_aio(c->dsock, s->aio);
		return;
	}
	/* Q_DSEND */
	if (rv != 0) {
		nng_msg *nm = nng_aio_get_msg(s->aio);
		nng_aio_set_msg(s->aio, NULL);
		if (nm != NULL)
			nng_msg_free(nm); /* not sent (link closed): still ours */
	}
	peer *p = &c->peers[s->peer];
	s->free_next = c->dsend_free;
	c->dsend_free = s;
	if (s->epoch != p->epoch)
		return; /* sent before a reset */
	p->sending--;
	pump(c, p);
}

void tr__cl_peer_up(cstate *cs, const member *m)
{
	tr_cluster *c = cs->c;
	char url[160];
	int rv;
	if (m->m.data[0] == '\0' || cs->stopping)
		return;
	peer *p = peer_slot(c, m->m.node_id, 1);
	if (p == NULL)
		return;
	if (atomic_load_explicit(&p->up, memory_order_relaxed)) {
		if (p->inc == m->m.incarnation && strcmp(p->daddr, m->m.data) == 0)
			return;
		peer_reset(cs, p, TR_ENODEDOWN); /* a new life: the old one's asks are lost */
	}
	snprintf(p->name, sizeof(p->name), "%s", m->m.name);
	snprintf(p->daddr, sizeof(p->daddr), "%s", m->m.data);
	p->inc = m->m.incarnation;
	if (tr__cl_token(c, c->name, c->incarnation, p->name, p->inc, p->tok_out) != TR_OK ||
	    tr__cl_token(c, p->name, p->inc, c->name, c->incarnation, p->tok_in) != TR_OK)
		return;
	if ((rv = nng_push0_open(&p->push)) != 0)
		return;
	p->push_open = 1;
	snprintf(url, sizeof(url), "%s", p->daddr);
	if ((rv = nng_socket_set_int(p->push, NNG_OPT_SENDBUF, 8)) != 0 ||
	    (rv = nng_socket_set_ms(p->push, NNG_OPT_RECONNMINT, 50)) != 0 ||
	    (rv = nng_socket_set_ms(p->push, NNG_OPT_RECONNMAXT, 1000)) != 0 ||
	    (rv = tr__cl_sock_dial(c, p->push, url, NULL)) != 0) {
		fprintf(stderr, "cluster: cannot dial the data link of %s at %s: %s\n", p->name, url,
		        nng_strerror(rv));
		nng_close(p->push);
		p->push_open = 0;
		return;
	}
	atomic_store_explicit(&p->up, 1, memory_order_release);
	send_names(cs);
}

void tr__cl_peer_down(cstate *cs, const member *m, int err)
{
	peer *p = peer_slot(cs->c, m->m.node_id, 0);
	if (p != NULL && (atomic_load_explicit(&p->up, memory_order_relaxed) || p->push_open))
		peer_reset(cs, p, err);
}

void tr_cluster_retire(tr_cluster *c)
{
	if (c != NULL)
		atomic_store_explicit(&c->retired, 1, memory_order_relaxed);
}

void tr__cl_data_tick(cstate *cs, uint64_t now)
{
	tr_cluster *c = cs->c;
	unsigned v = atomic_load_explicit(&c->node->names_ver, memory_order_relaxed);
	int retired = atomic_load_explicit(&c->retired, memory_order_relaxed);
	/* On a change, and every NAMES_EVERY anyway: a list that met a
	 * reset link is not lost for good. */
	if (v != cs->names_ver || (retired && !cs->retired_sent) || now >= cs->names_ns) {
		cs->names_ver = v;
		cs->names_ns = now + NAMES_EVERY_NS;
		send_names(cs);
	}
	if (cs->in_total > 0)
		in_resume(cs);
	if (now < cs->sweep_ns)
		return;
	cs->sweep_ns = now + 1000000000u;
	uint64_t now_s = now / 1000000000u;
	for (unsigned i = 0; i < PEERS_MAX; i++) {
		peer *p = &c->peers[i];
		for (uint32_t k = 0; k < p->asks.cap; k++) {
			tr__map_ent *e = &p->asks.ents[k];
			if (e->key != 0 && (uint64_t)(uintptr_t)e->ptr < now_s) {
				tr__map_del(&p->asks, e->key, e->ref, NULL);
				k = (uint32_t)-1; /* entries moved: start over */
			}
		}
	}
}

/* ---- setup ------------------------------------------------------------------ */

/* data_listen, or the host of `listen` with port 0. */
static void data_url(const tr_cluster *c, char *out, size_t cap)
{
	if (c->data_listen[0] != '\0') {
		snprintf(out, cap, "%s", c->data_listen);
		return;
	}
	const char *colon = strrchr(c->listen, ':');
	snprintf(out, cap, "%.*s:0", (int)(colon != NULL ? colon - c->listen : 0), c->listen);
}

int tr__cl_data_open(cstate *cs)
{
	tr_cluster *c = cs->c;
	char url[sizeof(c->data_listen)];
	nng_listener l;
	int rv, port = 0;
	cs->names_ver = atomic_load_explicit(&c->node->names_ver, memory_order_relaxed) - 1u;
	if ((rv = nng_pull0_open(&c->dsock)) != 0) {
		if (c->err != NULL)
			snprintf(c->err, c->errlen, "cluster: cannot open the data socket: %s",
			         nng_strerror(rv));
		return TR_EIO;
	}
	c->dsock_open = 1;
	data_url(c, url, sizeof(url));
	if ((rv = nng_socket_set_size(c->dsock, NNG_OPT_RECVMAXSZ, (size_t)c->max_frame + 64u)) !=
	        0 ||
	    (rv = nng_socket_set_int(c->dsock, NNG_OPT_RECVBUF, 8)) != 0 ||
	    (rv = tr__cl_sock_listen(c, c->dsock, url, &l)) != 0) {
		if (c->err != NULL)
			snprintf(c->err, c->errlen, "cluster: cannot listen on %s (data): %s", url,
			         nng_strerror(rv));
		return rv == NNG_EINVAL || rv == NNG_EADDRINVAL ? TR_EINVAL : TR_EIO;
	}
	if (nng_listener_get_int(l, NNG_OPT_TCP_BOUND_PORT, &port) != 0)
		port = 0;
	const char *colon = strrchr(url, ':');
	if (colon != NULL && strcmp(colon, ":0") == 0 && port > 0)
		snprintf(c->daddr, sizeof(c->daddr), "%.*s:%d", (int)(colon - url), url, port);
	else
		snprintf(c->daddr, sizeof(c->daddr), "%s", url);
	for (unsigned k = 0; k < K_DRECV; k++)
		nng_recv_aio(c->dsock, c->drecv[k].aio);
	tr__node_set_remote(c->node, &tr__cl_remote_ops, c);
	return TR_OK;
}

void tr__cl_data_close(cstate *cs)
{
	tr_cluster *c = cs->c;
	for (unsigned i = 0; i < PEERS_MAX; i++) {
		peer *p = &c->peers[i];
		if (atomic_load_explicit(&p->node_id, memory_order_relaxed) != 0)
			peer_reset(cs, p, TR_ESHUTDOWN);
	}
	for (uint32_t i = 0; i < cs->proxies.cap; i++)
		if (cs->proxies.ents[i].key != 0)
			tr__free(cs->proxies.ents[i].ptr);
	tr__map_free(&cs->proxies);
	for (unsigned k = 0; k < K_DRECV; k++)
		if (c->drecv[k].aio != NULL)
			nng_aio_stop(c->drecv[k].aio);
	for (slot *s = c->dsend_all; s != NULL; s = s->all_next)
		nng_aio_stop(s->aio);
	if (c->dsock_open) {
		close_async(c, c->dsock);
		c->dsock_open = 0;
	}
	uint64_t until = tr_now_ns() + (uint64_t)CLOSE_WAIT_MS * 1000000u;
	uv_mutex_lock(&c->lmu);
	while (c->dclosing > 0) {
		uint64_t now = tr_now_ns();
		if (now >= until || uv_cond_timedwait(&c->lcv, &c->lmu, until - now) == UV_ETIMEDOUT)
			break;
	}
	int stuck = c->dclosing > 0;
	uv_mutex_unlock(&c->lmu);
	if (stuck)
		fprintf(stderr, "cluster: a data socket's nng_close did not return within %d ms "
		        "(nng 1.5.2 bug); leaving it behind\n", CLOSE_WAIT_MS);
}

int tr__cl_data_alloc(tr_cluster *c)
{
	if (uv_rwlock_init(&c->nmu) != 0)
		return TR_ENOMEM;
	c->nmu_init = 1;
	for (unsigned k = 0; k < K_DRECV; k++) {
		c->drecv[k].c = c;
		c->drecv[k].q.kind = Q_DRECV;
		if (nng_aio_alloc(&c->drecv[k].aio, tr__cl_aio_cb, &c->drecv[k]) != 0)
			return TR_ENOMEM;
	}
	return TR_OK;
}

void tr__cl_data_free(tr_cluster *c)
{
	for (unsigned k = 0; k < K_DRECV; k++)
		if (c->drecv[k].aio != NULL)
			nng_aio_free(c->drecv[k].aio);
	while (c->dsend_all != NULL) {
		slot *s = c->dsend_all;
		c->dsend_all = s->all_next;
		nng_aio_free(s->aio);
		tr__free(s);
	}
	for (unsigned i = 0; i < PEERS_MAX; i++) {
		peer *p = &c->peers[i];
		tr_buf_free(&p->out);
		tr__free(p->ready);
		tr__free(p->in);
		tr__map_free(&p->asks);
		tr__map_free(&p->mons);
		tr__free(p->names);
	}
	if (c->nmu_init)
		uv_rwlock_destroy(&c->nmu);
}

/* ---- fuzzing (tests/fuzz/fuzz_cluster_frame.c) ------------------------------ */

int tr__cluster_fuzz_batch(const void *buf, size_t len)
{
	/* A scratch cluster for on_names (its counters, the names lock) and
	 * one peer, node 2. One thread only. */
	static tr_cluster c;
	static int init;
	const unsigned char *b = buf;
	peer *p = &c.peers[0];
	if (!init) {
		if (uv_rwlock_init(&c.nmu) != 0)
			return TR_ENOMEM;
		atomic_store(&p->node_id, 2);
		init = 1;
	}
	/* on_batch: the header (the token is a MAC: not checked here) */
	if (len < DHDR || memcmp(b, "TRB", 3) != 0 || b[3] != DATA_VERSION ||
	    check_batch(b, len) != 0)
		return TR_EPROTO;
	/* in_run and deliver_in: each envelope, which check_batch said is
	 * inside the batch */
	size_t off = DHDR;
	for (uint32_t left = rd32(b + 24); left > 0; left--) {
		tr_msg *m;
		uint32_t l = rd32(b + off);
		if (tr_msg_decode(b + off + 4, l, &m) != TR_OK)
			return TR_EPROTO;
		if (m->tag == TAG_NAMES) {
			on_names(&c, p, m);
			for (uint32_t i = 0; i < p->nnames; i++)
				if (memchr(p->names[i].name, '\0', sizeof(p->names[i].name)) == NULL)
					abort(); /* a name must be a C string */
			names_clear(&c, p);
		}
		tr_msg_free(m);
		off += 4u + l;
	}
	return off == len ? TR_OK : TR_EPROTO;
}
