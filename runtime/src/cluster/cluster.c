/*
 * cluster/cluster.c -- the cluster actor: links over one nng pair1
 * polyamorous socket, their HMAC handshake, and SWIM-like membership
 * (contract: cluster/cluster.h).
 *
 * Design notes.
 *  - Threads. One pinned actor owns everything; it works in the uv
 *    callbacks of its two handles (an async, the nng bridge, and a tick
 *    timer), which libuv runs between the actor's turns. nng's threads
 *    only append to one mutex-guarded queue in the handle and wake the
 *    loop (deps.md §4): receive aios (K_RECV outstanding, re-armed on the
 *    loop), send aios (a pool, returned on the loop) and pipe events.
 *  - Lifetimes. What nng callbacks touch (the queue, the aio slots) lives
 *    in the tr_cluster handle, which outlives the node; the actor's state
 *    is freed right after terminate(). Each uv handle is its own
 *    allocation, freed in its own close callback, so close order does not
 *    matter (pg.c does the same).
 *  - Links. A link is an nng pipe, tracked from its ADD event or from its
 *    first frame, whichever the queue gives first (they come from
 *    different nng threads). Until the handshake is done only HELLO and
 *    AUTH are read. Two nodes that dial each other end up with two links:
 *    both ends keep the same one (the one dialed by the node whose name
 *    sorts first; between two dialed by one node, the one whose dialer
 *    nonce sorts first) and close the other, the dialing end by closing
 *    its dialer so that it does not redial.
 *  - Failure detection. Only ACKs to our PINGs and PING_REQ_ACKs about a
 *    member count as news of it (its own PINGs do not: a node that cannot
 *    answer us may still talk to us). Everything is checked on one tick
 *    (a quarter of the shortest timing, at most 250 ms).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <mbedtls/md.h>
#include <msgpack.h>
#include <nng/nng.h>
#include <nng/protocol/pair1/pair.h>
#include <uv.h>

#include "cluster/cluster_int.h"
#include "core/alloc.h"
#include "core/util.h"
#include "msg/msg_int.h"
#include "pipe/mp.h"
#include "sched/sched.h"

/* ---- small helpers ------------------------------------------------------------ */

static void bump(atomic_uint_fast64_t *a)
{
	atomic_fetch_add_explicit(a, 1, memory_order_relaxed);
}

void tr__cl_bump(atomic_uint_fast64_t *a)
{
	bump(a);
}

static void add(atomic_uint_fast64_t *a, uint64_t n)
{
	atomic_fetch_add_explicit(a, n, memory_order_relaxed);
}

static void fill_random(unsigned char *p, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = getrandom(p + got, n - got, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	if (got < n) {
		int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			while (got < n) {
				ssize_t r = read(fd, p + got, n - got);
				if (r <= 0)
					break;
				got += (size_t)r;
			}
			close(fd);
		}
	}
	/* Never reached on Linux >= 3.17; keep nonces distinct anyway. */
	for (; got < n; got++)
		p[got] = (unsigned char)(tr_now_ns() >> (got % 8));
}

static uint64_t rnd(cstate *cs)
{
	return tr__xorshift(&cs->rng); /* only to pick PING_REQ helpers */
}


static nng_pipe pipe_of(uint32_t id)
{
	nng_pipe p = NNG_PIPE_INITIALIZER;
	p.id = id;
	return p;
}

static int ct_equal(const unsigned char *a, const unsigned char *b, size_t n)
{
	unsigned char d = 0;
	for (size_t i = 0; i < n; i++)
		d |= (unsigned char)(a[i] ^ b[i]);
	return d == 0;
}

int tr__cl_ct_equal(const unsigned char *a, const unsigned char *b, size_t n)
{
	return ct_equal(a, b, n);
}

/* HMAC-SHA256(secret, n1 || n2 || name). */
static int mac_of(const tr_cluster *c, const unsigned char *n1, const unsigned char *n2,
                  const char *name, unsigned char out[MAC_LEN])
{
	static const unsigned char nokey[1] = {0};
	unsigned char in[2 * NONCE_LEN + 64];
	size_t nl = strlen(name);
	const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
	if (md == NULL || nl >= 64)
		return TR_EIO;
	memcpy(in, n1, NONCE_LEN);
	memcpy(in + NONCE_LEN, n2, NONCE_LEN);
	memcpy(in + 2 * NONCE_LEN, name, nl);
	return mbedtls_md_hmac(md, c->secret_len ? c->secret : nokey, c->secret_len, in,
	                       2 * NONCE_LEN + nl, out) == 0
	           ? TR_OK
	           : TR_EIO;
}

/* The data plane's batch token (remote.c): HMAC-SHA256(secret, "data" ||
 * from || from_inc || to || to_inc), first TOKEN_LEN bytes. */
int tr__cl_token(const tr_cluster *c, const char *from, uint64_t from_inc, const char *to,
                 uint64_t to_inc, unsigned char out[TOKEN_LEN])
{
	static const unsigned char nokey[1] = {0};
	unsigned char in[4 + 64 + 8 + 64 + 8], mac[MAC_LEN];
	size_t fl = strlen(from), tl = strlen(to), k = 0;
	const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
	if (md == NULL || fl >= 64 || tl >= 64)
		return TR_EIO;
	memcpy(in, "data", 4);
	k = 4;
	memcpy(in + k, from, fl + 1); /* the NULs keep the fields apart */
	k += fl + 1;
	for (int i = 0; i < 8; i++)
		in[k++] = (unsigned char)(from_inc >> (56 - 8 * i));
	memcpy(in + k, to, tl + 1);
	k += tl + 1;
	for (int i = 0; i < 8; i++)
		in[k++] = (unsigned char)(to_inc >> (56 - 8 * i));
	if (mbedtls_md_hmac(md, c->secret_len ? c->secret : nokey, c->secret_len, in, k, mac) != 0)
		return TR_EIO;
	memcpy(out, mac, TOKEN_LEN);
	return TR_OK;
}

/* ---- the queue (nng threads -> loop) -------------------------------------- */

static void enqueue(tr_cluster *c, qitem *q)
{
	uv_mutex_lock(&c->qmu);
	q->next = NULL;
	if (c->qtail != NULL)
		c->qtail->next = q;
	else
		c->qhead = q;
	c->qtail = q;
	/* Under the lock: terminate sets `closed` under it before uv_close,
	 * so no send can follow the close. */
	if (!c->closed)
		uv_async_send(c->async);
	uv_mutex_unlock(&c->qmu);
}

static qitem *take_all(tr_cluster *c)
{
	uv_mutex_lock(&c->qmu);
	qitem *q = c->qhead;
	c->qhead = c->qtail = NULL;
	uv_mutex_unlock(&c->qmu);
	return q;
}

static void aio_cb(void *arg)
{
	slot *s = arg;
	enqueue(s->c, &s->q);
}

void tr__cl_aio_cb(void *arg)
{
	aio_cb(arg);
}

/* The endpoints take the socket's options when they are made (so
 * NNG_OPT_RECVMAXSZ and the redial times set on the socket apply); the
 * TLS configuration has to be set on each before it starts, and its URL
 * is the tls+ one (tr__cluster_tls_url maps tcp:// there, so addresses
 * given as tcp:// work too). */
int tr__cl_sock_listen(tr_cluster *c, nng_socket s, const char *url, nng_listener *out)
{
	char u[160];
	if (tr__cluster_tls_url(c->tls, url, u, sizeof(u), NULL, 0) != TR_OK)
		return NNG_EADDRINVAL;
	int rv = nng_listener_create(out, s, u);
	if (rv == 0 && ((rv = tr__cluster_tls_listener(c->tls, *out)) != 0 ||
	                (rv = nng_listener_start(*out, 0)) != 0))
		nng_listener_close(*out);
	return rv;
}

int tr__cl_sock_dial(tr_cluster *c, nng_socket s, const char *url, nng_dialer *out)
{
	char u[160];
	nng_dialer d;
	if (tr__cluster_tls_url(c->tls, url, u, sizeof(u), NULL, 0) != TR_OK)
		return NNG_EADDRINVAL;
	int rv = nng_dialer_create(&d, s, u);
	if (rv == 0 && ((rv = tr__cluster_tls_dialer(c->tls, d)) != 0 ||
	                (rv = nng_dialer_start(d, NNG_FLAG_NONBLOCK)) != 0))
		nng_dialer_close(d);
	if (rv == 0 && out != NULL)
		*out = d;
	return rv;
}

static void pipe_cb(nng_pipe p, nng_pipe_ev ev, void *arg)
{
	tr_cluster *c = arg;
	pipe_ev *e = tr__malloc(sizeof(*e));
	if (e == NULL)
		return; /* ADD: found again from its first frame; REM: the detector notices */
	e->q.kind = ev == NNG_PIPE_EV_ADD_POST ? Q_PIPE_ADD : Q_PIPE_REM;
	e->pipe = (uint32_t)nng_pipe_id(p);
	e->dialer = ev == NNG_PIPE_EV_ADD_POST ? nng_dialer_id(nng_pipe_dialer(p)) : 0;
	enqueue(c, &e->q);
}

/* After every aio was stopped: frees what the queue still holds. */
static void drain_queue(tr_cluster *c)
{
	qitem *q = take_all(c);
	while (q != NULL) {
		qitem *next = q->next;
		if (q->kind == Q_RECV || q->kind == Q_SEND) {
			slot *s = (slot *)q;
			int rv = nng_aio_result(s->aio);
			if ((q->kind == Q_RECV && rv == 0) || (q->kind == Q_SEND && rv != 0)) {
				nng_msg *m = nng_aio_get_msg(s->aio);
				nng_aio_set_msg(s->aio, NULL);
				if (m != NULL)
					nng_msg_free(m);
			}
			if (q->kind == Q_SEND) {
				s->free_next = c->send_free;
				c->send_free = s;
			}
		} else if (q->kind == Q_DRECV || q->kind == Q_DSEND) {
			slot *s = (slot *)q;
			nng_msg *m = nng_aio_get_msg(s->aio);
			nng_aio_set_msg(s->aio, NULL);
			/* a received batch, or one that was not sent: ours */
			if (m != NULL && (q->kind == Q_DSEND ? nng_aio_result(s->aio) != 0
			                                     : nng_aio_result(s->aio) == 0))
				nng_msg_free(m);
			if (q->kind == Q_DSEND) {
				s->free_next = c->dsend_free;
				c->dsend_free = s;
			}
		} else if (q->kind == Q_PIPE_ADD || q->kind == Q_PIPE_REM) {
			tr__free(q);
		}
		q = next;
	}
}

/* ---- frames: packing ------------------------------------------------------ */

static int kv_uint(msgpack_packer *pk, const char *k, uint64_t v)
{
	return tr__mp_pack_cstr(pk, k) != TR_OK || msgpack_pack_uint64(pk, v) != 0;
}

static int kv_str(msgpack_packer *pk, const char *k, const char *s)
{
	return tr__mp_pack_cstr(pk, k) != TR_OK || tr__mp_pack_cstr(pk, s) != TR_OK;
}

static int kv_bin(msgpack_packer *pk, const char *k, const unsigned char *b, size_t n)
{
	return tr__mp_pack_cstr(pk, k) != TR_OK || msgpack_pack_bin(pk, n) != 0 ||
	       msgpack_pack_bin_body(pk, b, n) != 0;
}

static int kv_labels(msgpack_packer *pk, const char *k, const char (*labels)[32], uint32_t n)
{
	if (tr__mp_pack_cstr(pk, k) != TR_OK || msgpack_pack_array(pk, n) != 0)
		return 1;
	for (uint32_t i = 0; i < n; i++)
		if (tr__mp_pack_cstr(pk, labels[i]) != TR_OK)
			return 1;
	return 0;
}

/* The map header and the v/t fields of a frame with `n` more fields. */
static int pk_head(msgpack_packer *pk, uint32_t n, unsigned t)
{
	return msgpack_pack_map(pk, n + 2) != 0 || kv_uint(pk, "v", TR_CLUSTER_VERSION) ||
	       kv_uint(pk, "t", t);
}

static slot *slot_get(cstate *cs)
{
	tr_cluster *c = cs->c;
	slot *s = c->send_free;
	if (s != NULL) {
		c->send_free = s->free_next;
		return s;
	}
	if (c->nsend >= SEND_SLOTS_MAX)
		return NULL;
	s = tr__calloc(1, sizeof(*s));
	if (s == NULL)
		return NULL;
	if (nng_aio_alloc(&s->aio, aio_cb, s) != 0) {
		tr__free(s);
		return NULL;
	}
	/* A send waits at most this long for room in the socket's queue. */
	nng_aio_set_timeout(s->aio, 2000);
	s->c = c;
	s->q.kind = Q_SEND;
	s->all_next = c->send_all;
	c->send_all = s;
	c->nsend++;
	return s;
}

/* Sends buf[0..len) as one frame to `pipe`. Best effort: a frame that
 * cannot be queued is dropped (the protocol repeats what matters). */
static void send_bytes(cstate *cs, uint32_t pipe, const unsigned char *p, size_t len)
{
	tr_cluster *c = cs->c;
	nng_msg *m;
	if (cs->stopping || pipe == 0 || nng_msg_alloc(&m, 0) != 0)
		return;
	if (nng_msg_append(m, p, len) != 0) {
		nng_msg_free(m);
		return;
	}
	nng_msg_set_pipe(m, pipe_of(pipe));
	slot *s = slot_get(cs);
	if (s == NULL) {
		nng_msg_free(m);
		return;
	}
	nng_aio_set_msg(s->aio, m);
	nng_send_aio(c->sock, s->aio);
	bump(&c->st.frames_out);
	add(&c->st.bytes_out, len);
}

static void send_buf(cstate *cs, uint32_t pipe, tr_buf *b, int bad)
{
	if (!bad)
		send_bytes(cs, pipe, b->data, b->len);
	tr_buf_free(b);
}

static void send_hello(cstate *cs, clink *l)
{
	tr_cluster *c = cs->c;
	tr_buf b;
	msgpack_packer pk;
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	int bad = pk_head(&pk, 7, F_HELLO) || kv_str(&pk, "name", c->name) ||
	          kv_uint(&pk, "id", c->node_id) || kv_str(&pk, "addr", c->addr) ||
	          kv_str(&pk, "data", c->daddr) ||
	          kv_labels(&pk, "labels", (const char(*)[32])c->labels, c->nlabels) ||
	          kv_bin(&pk, "nonce", l->my_nonce, NONCE_LEN) ||
	          kv_uint(&pk, "inc", c->incarnation);
	send_buf(cs, l->pipe, &b, bad);
}

static void send_auth(cstate *cs, clink *l)
{
	unsigned char mac[MAC_LEN];
	tr_buf b;
	msgpack_packer pk;
	if (mac_of(cs->c, l->peer_nonce, l->my_nonce, cs->c->name, mac) != TR_OK)
		return;
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	int bad = pk_head(&pk, 1, F_AUTH) || kv_bin(&pk, "mac", mac, MAC_LEN);
	send_buf(cs, l->pipe, &b, bad);
}

/* PING and ACK: {seq, ts} (ts: the pinger's monotonic ns, echoed). */
static void send_ping(cstate *cs, uint32_t pipe, unsigned t, uint64_t seq, uint64_t ts)
{
	tr_buf b;
	msgpack_packer pk;
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	int bad = pk_head(&pk, 2, t) || kv_uint(&pk, "seq", seq) || kv_uint(&pk, "ts", ts);
	send_buf(cs, pipe, &b, bad);
}

/* PING_REQ and PING_REQ_ACK: {target, seq}. */
static void send_preq(cstate *cs, uint32_t pipe, unsigned t, const char *target, uint64_t seq)
{
	tr_buf b;
	msgpack_packer pk;
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	int bad = pk_head(&pk, 2, t) || kv_str(&pk, "target", target) || kv_uint(&pk, "seq", seq);
	send_buf(cs, pipe, &b, bad);
}

static void send_leave(cstate *cs, uint32_t pipe, unsigned t)
{
	tr_buf b;
	msgpack_packer pk;
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	int bad = pk_head(&pk, 1, t) || kv_str(&pk, "name", cs->c->name);
	send_buf(cs, pipe, &b, bad);
}

/* MEMBERS, built once, to every authenticated link. */
static void gossip(cstate *cs)
{
	tr_buf b;
	msgpack_packer pk;
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	int bad = pk_head(&pk, 1, F_MEMBERS) || tr__mp_pack_cstr(&pk, "list") != TR_OK ||
	          msgpack_pack_array(&pk, cs->nmem) != 0;
	for (unsigned i = 0; i < cs->nmem && !bad; i++) {
		const tr_cluster_member *m = &cs->mem[i].m;
		bad = msgpack_pack_map(&pk, 6) != 0 || kv_str(&pk, "name", m->name) ||
		      kv_uint(&pk, "id", m->node_id) || kv_str(&pk, "addr", m->addr) ||
		      kv_labels(&pk, "labels", (const char(*)[32])m->labels, m->nlabels) ||
		      kv_uint(&pk, "inc", m->incarnation) || kv_uint(&pk, "state", (uint64_t)m->state);
	}
	if (!bad)
		for (unsigned i = 1; i < cs->nmem; i++)
			if (cs->mem[i].pipe != 0 && cs->mem[i].m.state != TR_MEMBER_LEFT)
				send_bytes(cs, cs->mem[i].pipe, b.data, b.len); /* a leaver hears nothing more */
	tr_buf_free(&b);
}

/* ---- frames: reading (input passed tr_mp_check) ---------------------------- */

static int f_uint(const unsigned char *p, size_t n, const char *k, uint64_t *v)
{
	const unsigned char *x;
	size_t xl;
	return tr__mp_map_get(p, n, k, &x, &xl) == TR_OK && tr__mp_uint(x, xl, v) == TR_OK ? 0 : -1;
}

/* A str field into out[cap] (NUL-terminated, no NUL inside). */
static int str_into(const unsigned char *x, size_t xl, char *out, size_t cap, int allow_empty)
{
	const char *s;
	size_t sl;
	if (tr__mp_str(x, xl, &s, &sl) != TR_OK || sl >= cap || (sl == 0 && !allow_empty) ||
	    memchr(s, '\0', sl) != NULL)
		return -1;
	memcpy(out, s, sl);
	out[sl] = '\0';
	return 0;
}

static int f_str(const unsigned char *p, size_t n, const char *k, char *out, size_t cap,
                 int allow_empty)
{
	const unsigned char *x;
	size_t xl;
	if (tr__mp_map_get(p, n, k, &x, &xl) != TR_OK)
		return -1;
	return str_into(x, xl, out, cap, allow_empty);
}

static int f_bin(const unsigned char *p, size_t n, const char *k, const unsigned char **b,
                 size_t *bl)
{
	const unsigned char *x;
	size_t xl;
	if (tr__mp_map_get(p, n, k, &x, &xl) != TR_OK || xl < 2)
		return -1;
	if (x[0] == 0xc4)
		*bl = x[1], *b = x + 2;
	else if (x[0] == 0xc5 && xl >= 3)
		*bl = ((size_t)x[1] << 8) | x[2], *b = x + 3;
	else if (x[0] == 0xc6 && xl >= 5)
		*bl = ((size_t)x[1] << 24) | ((size_t)x[2] << 16) | ((size_t)x[3] << 8) | x[4],
		*b = x + 5;
	else
		return -1;
	return 0;
}

static int f_labels(const unsigned char *p, size_t n, const char *k,
                    char (*out)[32], uint32_t *cnt)
{
	const unsigned char *x;
	size_t xl, hdr;
	uint32_t na;
	if (tr__mp_map_get(p, n, k, &x, &xl) != TR_OK ||
	    tr__mp_array_head(x, xl, &na, &hdr) != TR_OK || na > TR_CLUSTER_LABELS_MAX)
		return -1;
	size_t pos = hdr;
	for (uint32_t i = 0; i < na; i++) {
		size_t es = tr__mp_size(x + pos);
		if (str_into(x + pos, es, out[i], 32, 0) != 0)
			return -1;
		pos += es;
	}
	*cnt = na;
	return 0;
}

/* name, id, addr, labels and inc of a HELLO or a MEMBERS entry. */
static int f_member(const unsigned char *p, size_t n, tr_cluster_member *m)
{
	uint64_t id, inc;
	memset(m, 0, sizeof(*m));
	if (f_str(p, n, "name", m->name, sizeof(m->name), 0) != 0 || f_uint(p, n, "id", &id) != 0 ||
	    id == 0 || id > UINT32_MAX || f_str(p, n, "addr", m->addr, sizeof(m->addr), 1) != 0 ||
	    f_labels(p, n, "labels", m->labels, &m->nlabels) != 0 || f_uint(p, n, "inc", &inc) != 0)
		return -1;
	m->node_id = (uint32_t)id;
	m->incarnation = inc;
	return 0;
}

/* A MEMBERS entry: a member and its state (a TR_MEMBER_* it may gossip). */
static int f_entry(const unsigned char *e, size_t es, tr_cluster_member *em, uint64_t *st)
{
	return f_member(e, es, em) != 0 || f_uint(e, es, "state", st) != 0 ||
	               *st < TR_MEMBER_ALIVE || *st > TR_MEMBER_LEFT
	           ? -1
	           : 0;
}

/* ---- members, links, dialers ------------------------------------------------ */

static member *mem_find(cstate *cs, const char *name)
{
	for (unsigned i = 1; i < cs->nmem; i++)
		if (strcmp(cs->mem[i].m.name, name) == 0)
			return &cs->mem[i];
	return NULL;
}

static int live(int st)
{
	return st == TR_MEMBER_ALIVE || st == TR_MEMBER_SUSPECT;
}

static _Atomic uint32_t late_up_test; /* tr__cluster_test_late_up */

member *tr__cl_linked_member(cstate *cs, uint32_t node)
{
	for (unsigned i = 1; i < cs->nmem; i++) {
		member *m = &cs->mem[i];
		if (m->m.node_id == node && m->pipe != 0 && live(m->m.state))
			return m;
	}
	return NULL;
}

/* A free entry: a new one, or the oldest down/left one; NULL when full. */
static member *mem_add(cstate *cs)
{
	member *m = NULL;
	if (cs->nmem < TR_CLUSTER_MEMBERS_MAX) {
		m = &cs->mem[cs->nmem++];
	} else {
		for (unsigned i = 1; i < cs->nmem; i++) {
			member *x = &cs->mem[i];
			if (!live(x->m.state) && x->pipe == 0 && (m == NULL || x->m.since_us < m->m.since_us))
				m = x;
		}
	}
	if (m != NULL)
		memset(m, 0, sizeof(*m));
	return m;
}

static void set_state(cstate *cs, member *m, int st)
{
	if (m->m.state == st)
		return;
	m->m.state = st;
	m->m.since_us = tr_wall_us();
	if (st == TR_MEMBER_SUSPECT) {
		m->suspect_ns = tr_now_ns();
		bump(&cs->c->st.suspected);
	} else if (st == TR_MEMBER_DOWN) {
		bump(&cs->c->st.declared_down);
	}
	if ((st == TR_MEMBER_DOWN || st == TR_MEMBER_LEFT) && !m->m.self)
		tr__cl_peer_down(cs, m, TR_ENODEDOWN);
	cs->view_dirty = cs->gossip_dirty = 1;
}

static clink *link_find(cstate *cs, uint32_t pipe)
{
	for (clink *l = cs->links; l != NULL; l = l->next)
		if (l->pipe == pipe)
			return l;
	return NULL;
}

static void link_free(cstate *cs, clink *l)
{
	for (clink **pp = &cs->links; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == l) {
			*pp = l->next;
			cs->nlinks--;
			break;
		}
	}
	tr__free(l);
}

static clink *link_new(cstate *cs, uint32_t pipe, int dialer)
{
	if (cs->nlinks >= LINKS_MAX || cs->stopping || cs->leaving) {
		nng_pipe_close(pipe_of(pipe));
		return NULL;
	}
	clink *l = tr__calloc(1, sizeof(*l));
	if (l == NULL) {
		nng_pipe_close(pipe_of(pipe));
		return NULL;
	}
	l->pipe = pipe;
	l->dialer = dialer;
	l->st = L_HS;
	l->hs_deadline_ns = tr_now_ns() + cs->c->hs_ns;
	fill_random(l->my_nonce, NONCE_LEN);
	l->next = cs->links;
	cs->links = l;
	cs->nlinks++;
	send_hello(cs, l);
	return l;
}

static int dialer_find(cstate *cs, const char *addr)
{
	for (unsigned i = 0; i < cs->ndialers; i++)
		if (strcmp(cs->dialers[i].addr, addr) == 0)
			return (int)i;
	return -1;
}

static void dialer_drop(cstate *cs, unsigned i)
{
	nng_dialer_close(cs->dialers[i].d);
	cs->dialers[i] = cs->dialers[--cs->ndialers];
}

static void dialer_close_id(cstate *cs, int id)
{
	for (unsigned i = 0; i < cs->ndialers; i++) {
		if ((int)cs->dialers[i].d.id == id) {
			dialer_drop(cs, i);
			return;
		}
	}
	/* Not ours any more (closed already); close it by id anyway. */
	nng_dialer d = NNG_DIALER_INITIALIZER;
	d.id = (uint32_t)id;
	nng_dialer_close(d);
}

static void dialer_close_addr(cstate *cs, const char *addr)
{
	int i = dialer_find(cs, addr);
	if (i >= 0)
		dialer_drop(cs, (unsigned)i);
}

/* Dials `addr` in the background (nng redials by itself) unless a dialer
 * for it exists. TR_OK, TR_EINVAL for a URL nng refuses, TR_ELIMIT. */
static int dial(cstate *cs, const char *addr)
{
	tr_cluster *c = cs->c;
	nng_dialer d;
	if (addr[0] == '\0' || strcmp(addr, c->addr) == 0 || strcmp(addr, c->listen) == 0 ||
	    dialer_find(cs, addr) >= 0)
		return TR_OK;
	if (cs->ndialers >= DIALERS_MAX)
		return TR_ELIMIT;
	int rv = tr__cl_sock_dial(c, c->sock, addr, &d);
	if (rv != 0)
		return rv == NNG_ENOMEM ? TR_ENOMEM : TR_EINVAL;
	snprintf(cs->dialers[cs->ndialers].addr, sizeof(cs->dialers[0].addr), "%s", addr);
	cs->dialers[cs->ndialers++].d = d;
	return TR_OK;
}

/* Stops reading a link and closes its pipe; REM frees it. */
static void link_close(cstate *cs, clink *l)
{
	l->closing = 1;
	l->close_ns = tr_now_ns();
	if (nng_pipe_close(pipe_of(l->pipe)) == NNG_ENOENT)
		link_free(cs, l); /* gone already: no REM will come */
}

/* Closes the losing one of two links to one peer without a redial. */
static void link_drop_dup(cstate *cs, clink *l)
{
	l->closing = 1;
	l->close_ns = tr_now_ns();
	if (l->dialer > 0)
		dialer_close_id(cs, l->dialer); /* closes its pipe too */
	else
		nng_pipe_close(pipe_of(l->pipe));
}

/* Whether link a beats link b (two links to one peer); both ends agree. */
static int link_better(cstate *cs, const clink *a, const clink *b)
{
	const char *da = a->dialer > 0 ? cs->c->name : a->peer.name;
	const char *db = b->dialer > 0 ? cs->c->name : b->peer.name;
	int d = strcmp(da, db);
	if (d != 0)
		return d < 0;
	const unsigned char *na = a->dialer > 0 ? a->my_nonce : a->peer_nonce;
	const unsigned char *nb = b->dialer > 0 ? b->my_nonce : b->peer_nonce;
	return memcmp(na, nb, NONCE_LEN) < 0;
}

/* The member loses its link (closed, or about to be). */
static void mem_unlink(cstate *cs, member *m)
{
	if (m->pipe == 0)
		return;
	m->pipe = 0;
	bump(&cs->c->st.links_down);
	if (m->leave_pending) {
		m->leave_pending = 0;
		cs->leave_pending--;
	}
}

static void leave_signal(tr_cluster *c)
{
	uv_mutex_lock(&c->lmu);
	c->leave_done = 1;
	uv_cond_broadcast(&c->lcv);
	uv_mutex_unlock(&c->lmu);
}

/* ---- the view ------------------------------------------------------------ */

static void publish(cstate *cs)
{
	tr_cluster *c = cs->c;
	unsigned alive = 0;
	uv_mutex_lock(&c->vmu);
	for (unsigned i = 0; i < cs->nmem; i++) {
		c->view[i] = cs->mem[i].m;
		if (cs->mem[i].m.state == TR_MEMBER_ALIVE)
			alive++;
	}
	c->nview = cs->nmem;
	uv_mutex_unlock(&c->vmu);
	atomic_store_explicit(&c->st.alive, alive, memory_order_relaxed);
	cs->view_dirty = 0;
}

static void flush(cstate *cs)
{
	if (cs->gossip_dirty && !cs->leaving)
		gossip(cs);
	cs->gossip_dirty = 0;
	if (cs->view_dirty)
		publish(cs);
}

/* ---- the handshake ---------------------------------------------------------- */

static void refuse(cstate *cs, clink *l)
{
	bump(&cs->c->st.refused);
	link_close(cs, l);
}

static void on_hello(cstate *cs, clink *l, const unsigned char *p, size_t n)
{
	tr_cluster *c = cs->c;
	const unsigned char *nonce;
	size_t nl;
	if (f_member(p, n, &l->peer) != 0 || f_bin(p, n, "nonce", &nonce, &nl) != 0 ||
	    nl != NONCE_LEN ||
	    f_str(p, n, "data", l->peer.data, sizeof(l->peer.data), 1) != 0) {
		bump(&c->st.bad_frames);
		link_close(cs, l);
		return;
	}
	if (strcmp(l->peer.name, c->name) == 0 && l->peer.incarnation == c->incarnation) {
		/* Our own socket (a seed that is us under another name). The
		 * dialing end closes its dialer, which ends both pipes. */
		l->closing = 1;
		l->close_ns = tr_now_ns();
		if (l->dialer > 0)
			dialer_close_id(cs, l->dialer);
		return;
	}
	memcpy(l->peer_nonce, nonce, NONCE_LEN);
	l->got_hello = 1;
	send_auth(cs, l);
}

static void accept_peer(cstate *cs, clink *l)
{
	tr_cluster *c = cs->c;
	tr_cluster_member *pm = &l->peer;
	uint64_t now = tr_now_ns();
	if (strcmp(pm->name, c->name) == 0 || pm->node_id == c->node_id) {
		refuse(cs, l);
		return;
	}
	member *m = mem_find(cs, pm->name);
	for (unsigned i = 1; i < cs->nmem; i++) {
		member *x = &cs->mem[i];
		if (x != m && x->m.node_id == pm->node_id && live(x->m.state)) {
			refuse(cs, l); /* the id belongs to another live member */
			return;
		}
	}
	int rejoin = 0;
	if (m != NULL) {
		clink *e = m->pipe != 0 ? link_find(cs, m->pipe) : NULL;
		if (e != NULL && !e->closing && m->m.incarnation != pm->incarnation) {
			if (live(m->m.state) || pm->incarnation < m->m.incarnation) {
				refuse(cs, l); /* the name is taken by a member we still reach */
				return;
			}
			/* A new life of a node that left or is down: its old link
			 * is stale (the old socket's close may hang, nng #1543,
			 * and leave it open). Drop it, take this one. */
			link_close(cs, e);
			mem_unlink(cs, m);
		} else if (e != NULL && !e->closing) {
			/* A second link to the same node: keep one. */
			if (link_better(cs, l, e)) {
				l->st = L_UP;
				m->pipe = l->pipe;
				link_drop_dup(cs, e);
			} else {
				link_drop_dup(cs, l);
			}
			return;
		}
		if (pm->incarnation < m->m.incarnation) {
			refuse(cs, l); /* an older life of a node that has restarted */
			return;
		}
		rejoin = m->m.state == TR_MEMBER_DOWN || m->m.state == TR_MEMBER_LEFT ||
		         pm->incarnation != m->m.incarnation;
		if (strcmp(m->m.addr, pm->addr) != 0)
			dialer_close_addr(cs, m->m.addr);
		int st = m->m.state;
		uint64_t since = m->m.since_us, rtt = m->m.rtt_us;
		m->m = *pm;
		m->m.state = st;
		m->m.since_us = since;
		m->m.rtt_us = rtt;
	} else {
		m = mem_add(cs);
		if (m == NULL) {
			refuse(cs, l);
			return;
		}
		m->m = *pm;
		m->m.state = TR_MEMBER_ALIVE;
		m->m.since_us = tr_wall_us();
	}
	l->st = L_UP;
	m->pipe = l->pipe;
	m->last_ack_ns = now;
	bump(&c->st.links_up);
	if (rejoin)
		bump(&c->st.rejoined);
	set_state(cs, m, TR_MEMBER_ALIVE);
	/* Batches wait until it has accepted us too (on_up_frame): its data
	 * listener drops a batch from a node it does not know yet. */
	m->data_ready = 0;
	cs->view_dirty = cs->gossip_dirty = 1;
}

static void on_auth(cstate *cs, clink *l, const unsigned char *p, size_t n)
{
	unsigned char want[MAC_LEN];
	const unsigned char *mac;
	size_t ml;
	if (f_bin(p, n, "mac", &mac, &ml) != 0) {
		bump(&cs->c->st.bad_frames);
		refuse(cs, l);
		return;
	}
	if (ml != MAC_LEN || mac_of(cs->c, l->my_nonce, l->peer_nonce, l->peer.name, want) != TR_OK ||
	    !ct_equal(mac, want, MAC_LEN)) {
		refuse(cs, l);
		return;
	}
	accept_peer(cs, l);
}

/* ---- membership frames ---------------------------------------------------- */

static void on_members(cstate *cs, const unsigned char *p, size_t n)
{
	tr_cluster *c = cs->c;
	const unsigned char *x;
	size_t xl, hdr;
	uint32_t cnt;
	if (tr__mp_map_get(p, n, "list", &x, &xl) != TR_OK ||
	    tr__mp_array_head(x, xl, &cnt, &hdr) != TR_OK) {
		bump(&c->st.bad_frames);
		return;
	}
	size_t pos = hdr;
	for (uint32_t i = 0; i < cnt; i++) {
		const unsigned char *e = x + pos;
		size_t es = tr__mp_size(e);
		tr_cluster_member em;
		uint64_t st;
		pos += es;
		if (f_entry(e, es, &em, &st) != 0) {
			bump(&c->st.bad_frames);
			return;
		}
		if (strcmp(em.name, c->name) == 0)
			continue; /* about us: we know better */
		member *m = mem_find(cs, em.name);
		if (m == NULL) {
			if (!live((int)st) || em.node_id == c->node_id)
				continue;
			int taken = 0;
			for (unsigned k = 1; k < cs->nmem; k++)
				taken |= cs->mem[k].m.node_id == em.node_id && live(cs->mem[k].m.state);
			if (taken || (m = mem_add(cs)) == NULL)
				continue;
			/* Learnt from a member we trust: alive until our own probes
			 * say otherwise. */
			m->m = em;
			m->m.state = TR_MEMBER_ALIVE;
			m->m.since_us = tr_wall_us();
			m->last_ack_ns = tr_now_ns();
			cs->view_dirty = cs->gossip_dirty = 1;
			(void)dial(cs, m->m.addr);
			continue;
		}
		if (em.incarnation > m->m.incarnation && m->pipe == 0) {
			/* A new life: where it is now. It is alive for us once a
			 * link to it authenticates. */
			if (strcmp(m->m.addr, em.addr) != 0)
				dialer_close_addr(cs, m->m.addr);
			int old = m->m.state;
			uint64_t since = m->m.since_us;
			m->m = em;
			m->m.state = old;
			m->m.since_us = since;
			cs->view_dirty = 1;
			if (st == TR_MEMBER_LEFT)
				set_state(cs, m, TR_MEMBER_LEFT);
			else if (live((int)st))
				(void)dial(cs, m->m.addr);
		} else if (em.incarnation == m->m.incarnation && st == TR_MEMBER_LEFT &&
		           m->m.state != TR_MEMBER_LEFT) {
			set_state(cs, m, TR_MEMBER_LEFT); /* we missed its LEAVE */
		}
	}
}

static void probe_forward(cstate *cs, member *m, uint64_t seq)
{
	for (unsigned i = 0; i < cs->nprobes; i++) {
		probe *pr = &cs->probes[i];
		if (pr->my_seq != seq)
			continue;
		clink *rl = link_find(cs, pr->req_pipe);
		if (rl != NULL && rl->st == L_UP && !rl->closing)
			send_preq(cs, pr->req_pipe, F_PING_REQ_ACK, m->m.name, pr->req_seq);
		cs->probes[i] = cs->probes[--cs->nprobes];
		return;
	}
}

static void on_up_frame(cstate *cs, clink *l, unsigned t, const unsigned char *p, size_t n)
{
	tr_cluster *c = cs->c;
	member *m = mem_find(cs, l->peer.name);
	uint64_t seq = 0, ts = 0, now = tr_now_ns();
	char target[64];
	if (m == NULL) {
		link_close(cs, l); /* evicted meanwhile */
		return;
	}
	if (cs->leaving && t != F_LEAVE_ACK)
		return;
	if (!m->data_ready &&
	    atomic_load_explicit(&late_up_test, memory_order_relaxed) != c->node_id) {
		/* It sends this only after accepting us: both ends know each
		 * other now, the data link can start. (Its first batch may
		 * come before this frame: remote.c's early_peer.) */
		m->data_ready = 1;
		tr__cl_peer_up(cs, m);
	}
	switch (t) {
	case F_MEMBERS:
		on_members(cs, p, n);
		break;
	case F_PING:
		if (f_uint(p, n, "seq", &seq) != 0 || f_uint(p, n, "ts", &ts) != 0) {
			bump(&c->st.bad_frames);
			break;
		}
		{
			unsigned ig = atomic_load_explicit(&c->ignore_pings_from, memory_order_relaxed);
			if (ig != 0 && ig == m->m.node_id)
				break; /* test hook */
		}
		send_ping(cs, l->pipe, F_ACK, seq, ts);
		break;
	case F_ACK:
		if (f_uint(p, n, "seq", &seq) != 0 || f_uint(p, n, "ts", &ts) != 0) {
			bump(&c->st.bad_frames);
			break;
		}
		if (!live(m->m.state))
			break;
		m->last_ack_ns = now;
		if (ts <= now && ts != 0) {
			m->m.rtt_us = (now - ts) / 1000u;
			if (m->m.rtt_us == 0)
				m->m.rtt_us = 1;
			cs->view_dirty = 1;
		}
		set_state(cs, m, TR_MEMBER_ALIVE);
		probe_forward(cs, m, seq);
		break;
	case F_PING_REQ: {
		if (f_str(p, n, "target", target, sizeof(target), 0) != 0 ||
		    f_uint(p, n, "seq", &seq) != 0) {
			bump(&c->st.bad_frames);
			break;
		}
		member *tm = mem_find(cs, target);
		if (tm == NULL || tm == m || tm->pipe == 0 || !live(tm->m.state) ||
		    cs->nprobes >= PROBES_MAX)
			break; /* cannot help: the asker hears nothing */
		probe *pr = &cs->probes[cs->nprobes++];
		pr->req_pipe = l->pipe;
		pr->req_seq = seq;
		pr->my_seq = ++cs->seq;
		pr->deadline_ns = now + c->down_ns;
		snprintf(pr->target, sizeof(pr->target), "%s", target);
		send_ping(cs, tm->pipe, F_PING, pr->my_seq, now);
		break;
	}
	case F_PING_REQ_ACK: {
		if (f_str(p, n, "target", target, sizeof(target), 0) != 0) {
			bump(&c->st.bad_frames);
			break;
		}
		member *tm = mem_find(cs, target);
		if (tm == NULL || !live(tm->m.state))
			break;
		tm->last_ack_ns = now;
		set_state(cs, tm, TR_MEMBER_ALIVE);
		bump(&c->confirmations);
		break;
	}
	case F_LEAVE:
		if (f_str(p, n, "name", target, sizeof(target), 0) != 0) {
			bump(&c->st.bad_frames);
			break;
		}
		if (strcmp(target, m->m.name) != 0)
			break; /* only a member itself may leave */
		set_state(cs, m, TR_MEMBER_LEFT);
		publish(cs); /* before the ACK: the leaver may look right after it */
		send_leave(cs, l->pipe, F_LEAVE_ACK);
		break;
	case F_LEAVE_ACK:
		if (cs->leaving && m->leave_pending) {
			m->leave_pending = 0;
			if (--cs->leave_pending == 0)
				leave_signal(c);
		}
		break;
	case F_HELLO:
	case F_AUTH:
	default:
		bump(&c->st.bad_frames);
		break;
	}
}

static void on_frame(cstate *cs, uint32_t pipe, const unsigned char *p, size_t n)
{
	tr_cluster *c = cs->c;
	uint64_t v, t;
	clink *l = link_find(cs, pipe);
	bump(&c->st.frames_in);
	add(&c->st.bytes_in, n);
	if (l == NULL) {
		/* A receive and the pipe's REM reach the queue from two nng
		 * threads, in either order: a frame of a pipe already gone is
		 * not news of a new one. */
		for (unsigned i = 0; i < cs->ngone && i < 64; i++)
			if (cs->gone[i] == pipe)
				return;
		l = link_new(cs, pipe, nng_dialer_id(nng_pipe_dialer(pipe_of(pipe))));
	}
	if (l == NULL || l->closing)
		return;
	if (n > c->max_frame || tr_mp_check(p, n, FRAME_DEPTH) != TR_OK ||
	    f_uint(p, n, "v", &v) != 0 || f_uint(p, n, "t", &t) != 0) {
		bump(&c->st.bad_frames);
		if (l->st == L_HS)
			link_close(cs, l); /* garbage before authenticating */
		return;
	}
	if (v != TR_CLUSTER_VERSION) {
		bump(&c->st.bad_frames);
		if (l->st == L_HS)
			refuse(cs, l);
		return;
	}
	l->any_frame = 1;
	if (l->st == L_HS) {
		if (t == F_HELLO && !l->got_hello) {
			on_hello(cs, l, p, n);
		} else if (t == F_AUTH && l->got_hello) {
			on_auth(cs, l, p, n);
		} else {
			bump(&c->st.bad_frames);
			link_close(cs, l);
		}
		return;
	}
	on_up_frame(cs, l, (unsigned)t, p, n);
}

/* ---- pipe events ----------------------------------------------------------- */

static void on_pipe_add(cstate *cs, uint32_t pipe, int dialer)
{
	clink *l = link_find(cs, pipe);
	if (l != NULL) {
		if (l->dialer <= 0)
			l->dialer = dialer;
		return;
	}
	for (unsigned i = 0; i < cs->ngone && i < 64; i++)
		if (cs->gone[i] == pipe)
			return; /* its REM came first */
	(void)link_new(cs, pipe, dialer);
}

static void on_pipe_rem(cstate *cs, uint32_t pipe)
{
	tr_cluster *c = cs->c;
	clink *l = link_find(cs, pipe);
	cs->gone[cs->ngone++ % 64] = pipe;
	if (l == NULL)
		return;
	if (l->st == L_UP) {
		member *m = mem_find(cs, l->peer.name);
		if (m != NULL && m->pipe == pipe) {
			mem_unlink(cs, m);
			if (m->m.state == TR_MEMBER_ALIVE && !cs->leaving && !cs->stopping)
				set_state(cs, m, TR_MEMBER_SUSPECT); /* at once: the link broke */
			else if (m->m.state == TR_MEMBER_LEFT)
				dialer_close_addr(cs, m->m.addr);
			if (cs->leaving && cs->leave_pending == 0)
				leave_signal(c);
		}
	}
	link_free(cs, l);
}

/* ---- the loop side -------------------------------------------------------- */

static void do_leave(cstate *cs)
{
	tr_cluster *c = cs->c;
	if (cs->leaving)
		return;
	cs->leaving = 1;
	cs->leave_pending = 0;
	for (unsigned i = 1; i < cs->nmem; i++) {
		member *m = &cs->mem[i];
		if (m->pipe == 0)
			continue;
		send_leave(cs, m->pipe, F_LEAVE);
		m->leave_pending = 1;
		cs->leave_pending++;
	}
	set_state(cs, &cs->mem[0], TR_MEMBER_LEFT);
	cs->gossip_dirty = 0;
	if (cs->leave_pending == 0)
		leave_signal(c);
}

static void on_async(uv_async_t *h)
{
	cstate *cs = h->data;
	tr_cluster *c = cs->c;
	qitem *q = take_all(c);
	while (q != NULL) {
		qitem *next = q->next;
		switch (q->kind) {
		case Q_RECV: {
			slot *s = (slot *)q;
			int rv = nng_aio_result(s->aio);
			if (rv == 0) {
				nng_msg *m = nng_aio_get_msg(s->aio);
				nng_aio_set_msg(s->aio, NULL);
				if (!cs->stopping)
					on_frame(cs, (uint32_t)nng_pipe_id(nng_msg_get_pipe(m)), nng_msg_body(m),
					         nng_msg_len(m));
				nng_msg_free(m);
			}
			if (!cs->stopping && rv != NNG_ECLOSED && rv != NNG_ECANCELED)
				nng_recv_aio(c->sock, s->aio); /* re-armed here: K in flight */
			break;
		}
		case Q_SEND: {
			slot *s = (slot *)q;
			if (nng_aio_result(s->aio) != 0) {
				nng_msg *m = nng_aio_get_msg(s->aio);
				nng_aio_set_msg(s->aio, NULL);
				if (m != NULL)
					nng_msg_free(m); /* not sent: still ours */
			}
			s->free_next = c->send_free;
			c->send_free = s;
			break;
		}
		case Q_PIPE_ADD: {
			pipe_ev *e = (pipe_ev *)q;
			if (!cs->stopping)
				on_pipe_add(cs, e->pipe, e->dialer);
			tr__free(e);
			break;
		}
		case Q_PIPE_REM: {
			pipe_ev *e = (pipe_ev *)q;
			on_pipe_rem(cs, e->pipe);
			tr__free(e);
			break;
		}
		case Q_DRECV:
		case Q_DSEND:
			tr__cl_data_event(cs, (slot *)q);
			break;
		case Q_LEAVE:
			uv_mutex_lock(&c->qmu);
			c->leave_queued = 0;
			uv_mutex_unlock(&c->qmu);
			do_leave(cs);
			break;
		default:
			break;
		}
		q = next;
	}
	flush(cs);
}

/* Up to 2 other live members with a link ask `target` for us. */
static void ask_helpers(cstate *cs, member *target)
{
	unsigned cand[TR_CLUSTER_MEMBERS_MAX], nc = 0;
	for (unsigned i = 1; i < cs->nmem; i++) {
		member *x = &cs->mem[i];
		if (x != target && x->pipe != 0 && x->m.state == TR_MEMBER_ALIVE)
			cand[nc++] = i;
	}
	for (unsigned k = 0; k < 2 && nc > 0; k++) {
		unsigned j = (unsigned)(rnd(cs) % nc);
		send_preq(cs, cs->mem[cand[j]].pipe, F_PING_REQ, target->m.name, ++cs->seq);
		cand[j] = cand[--nc];
	}
}

static void on_tick(uv_timer_t *t)
{
	cstate *cs = t->data;
	tr_cluster *c = cs->c;
	uint64_t now = tr_now_ns();

	tr__cl_data_tick(cs, now);
	/* Handshakes that did not finish; closed links whose REM never came. */
	for (clink *l = cs->links, *next; l != NULL; l = next) {
		next = l->next;
		if (l->closing) {
			if (now - l->close_ns > c->hs_ns + 1000000000u)
				link_free(cs, l);
		} else if (l->st == L_HS && now > l->hs_deadline_ns) {
			refuse(cs, l);
		}
	}
	for (unsigned i = 0; i < cs->nprobes;) {
		if (now > cs->probes[i].deadline_ns)
			cs->probes[i] = cs->probes[--cs->nprobes];
		else
			i++;
	}
	if (cs->leaving) {
		flush(cs);
		return;
	}

	int beat = now >= cs->next_ping_ns;
	if (beat) {
		cs->next_ping_ns = now + c->hb_ns;
		if (++cs->pings % GOSSIP_EVERY == 0)
			cs->gossip_dirty = 1;
	}
	for (unsigned i = 1; i < cs->nmem; i++) {
		member *m = &cs->mem[i];
		if (m->m.state == TR_MEMBER_ALIVE && now - m->last_ack_ns > c->suspect_ns) {
			set_state(cs, m, TR_MEMBER_SUSPECT);
			ask_helpers(cs, m);
		} else if (m->m.state == TR_MEMBER_SUSPECT && now - m->suspect_ns >= c->down_ns) {
			set_state(cs, m, TR_MEMBER_DOWN);
			if (m->pipe != 0) {
				clink *l = link_find(cs, m->pipe);
				mem_unlink(cs, m);
				if (l != NULL)
					link_close(cs, l);
			}
		} else if (beat && m->m.state == TR_MEMBER_SUSPECT) {
			ask_helpers(cs, m);
		}
		if (beat && live(m->m.state) && m->pipe != 0)
			send_ping(cs, m->pipe, F_PING, ++cs->seq, now);
		/* Dial every member we know of and have no link to. */
		if (beat && m->pipe == 0 && m->m.state != TR_MEMBER_LEFT)
			(void)dial(cs, m->m.addr);
	}
	flush(cs);
}

/* ---- the actor ------------------------------------------------------------- */

static void set_err(tr_cluster *c, const char *fmt, const char *a, const char *b)
{
	if (c->err != NULL && c->errlen > 0)
		snprintf(c->err, c->errlen, fmt, a, b);
}

/* The listen URL with a port of 0 replaced by the bound one. */
static void resolve_addr(tr_cluster *c, int port)
{
	const char *s = strstr(c->listen, "://");
	const char *colon = strrchr(c->listen, ':');
	snprintf(c->addr, sizeof(c->addr), "%s", c->listen);
	if (port > 0 && s != NULL && colon != NULL && colon > s + 2 && strcmp(colon, ":0") == 0)
		snprintf(c->addr, sizeof(c->addr), "%.*s:%d", (int)(colon - c->listen), c->listen, port);
}

static void closer_main(void *arg)
{
	tr_cluster *c = arg;
	nng_close(c->sock);
	uv_mutex_lock(&c->lmu);
	c->close_done = 1;
	uv_cond_broadcast(&c->lcv);
	uv_mutex_unlock(&c->lmu);
}

/*
 * nng_close, but never for more than CLOSE_WAIT_MS. nng 1.5.2 can hang in
 * it for good: its reaper waits in pair1poly's pipe_stop for a pipe
 * receive whose task was prepared and never dispatched (nng #1543, fixed
 * in 1.7.2 by #1786; measured here in about 1 of 15 node stops with
 * live peers). Then the closer thread is left behind and the handle is
 * not freed (close_stuck), since nng may still call pipe_cb with it.
 */
static void close_bounded(tr_cluster *c)
{
	if (uv_thread_create(&c->closer, closer_main, c) != 0) {
		nng_close(c->sock);
		return;
	}
	c->closer_started = 1;
	uint64_t until = tr_now_ns() + (uint64_t)CLOSE_WAIT_MS * 1000000u;
	uv_mutex_lock(&c->lmu);
	while (!c->close_done) {
		uint64_t now = tr_now_ns();
		if (now >= until || uv_cond_timedwait(&c->lcv, &c->lmu, until - now) == UV_ETIMEDOUT)
			break;
	}
	c->close_stuck = !c->close_done;
	uv_mutex_unlock(&c->lmu);
	if (c->close_stuck)
		fprintf(stderr, "cluster: nng_close did not return within %d ms (nng 1.5.2 bug); "
		        "leaving it behind\n", CLOSE_WAIT_MS);
}

/* Undoes what init did (init failed, or terminate). */
static void shut(cstate *cs)
{
	tr_cluster *c = cs->c;
	cs->stopping = 1;
	tr__close_handle((uv_handle_t *)cs->tick);
	cs->tick = NULL;
	uv_mutex_lock(&c->qmu);
	c->closed = 1;
	uv_mutex_unlock(&c->qmu);
	for (unsigned k = 0; k < K_RECV; k++)
		nng_aio_stop(c->recv[k].aio);
	for (slot *s = c->send_all; s != NULL; s = s->all_next)
		nng_aio_stop(s->aio);
	tr__cl_data_close(cs);
	if (c->sock_open) {
		close_bounded(c); /* pipe events still queue; freed below */
		c->sock_open = 0;
	}
	drain_queue(c);
	tr__close_handle((uv_handle_t *)c->async);
	while (cs->links != NULL)
		link_free(cs, cs->links);
	cs->ndialers = 0; /* closed with the socket */
	leave_signal(c);
}

static int cl_init(tr_ctx *ctx, void *st, const void *arg)
{
	cstate *cs = st;
	tr_cluster *c = (tr_cluster *)arg;
	int rv, port = 0;
	nng_listener lst;
	cs->c = c;
	cs->loop = tr__ctx_loop(ctx);
	fill_random((unsigned char *)&cs->rng, sizeof(cs->rng));
	cs->rng |= 1u;

	c->async = tr__malloc(sizeof(*c->async));
	cs->tick = tr__malloc(sizeof(*cs->tick));
	if (c->async == NULL || cs->tick == NULL) {
		tr__free(c->async);
		tr__free(cs->tick);
		c->async = NULL;
		cs->tick = NULL;
		set_err(c, "cluster: out of memory%s%s", "", "");
		return TR_ENOMEM;
	}
	uv_async_init(cs->loop, c->async, on_async);
	c->async->data = cs;
	uv_timer_init(cs->loop, cs->tick);
	cs->tick->data = cs;

	if ((rv = nng_pair1_open_poly(&c->sock)) != 0) {
		set_err(c, "cluster: cannot open the socket: %s%s", nng_strerror(rv), "");
		shut(cs);
		return TR_EIO;
	}
	c->sock_open = 1;
	/* Before listen/dial: endpoints copy the socket's options. */
	if ((rv = nng_socket_set_size(c->sock, NNG_OPT_RECVMAXSZ, (size_t)c->max_frame + 8u)) != 0 ||
	    (rv = nng_socket_set_ms(c->sock, NNG_OPT_RECONNMINT, 100)) != 0 ||
	    (rv = nng_socket_set_ms(c->sock, NNG_OPT_RECONNMAXT, 2000)) != 0 ||
	    (rv = nng_socket_set_int(c->sock, NNG_OPT_SENDBUF, 128)) != 0 ||
	    (rv = nng_socket_set_int(c->sock, NNG_OPT_RECVBUF, 0)) != 0 ||
	    (rv = nng_pipe_notify(c->sock, NNG_PIPE_EV_ADD_POST, pipe_cb, c)) != 0 ||
	    (rv = nng_pipe_notify(c->sock, NNG_PIPE_EV_REM_POST, pipe_cb, c)) != 0) {
		set_err(c, "cluster: socket options: %s%s", nng_strerror(rv), "");
		shut(cs);
		return TR_EIO;
	}
	if ((rv = tr__cl_sock_listen(c, c->sock, c->listen, &lst)) != 0) {
		int bad_url = rv == NNG_EINVAL || rv == NNG_EADDRINVAL || rv == NNG_ENOTSUP;
		set_err(c, "cluster: cannot listen on %s: %s", c->listen, nng_strerror(rv));
		shut(cs);
		return bad_url ? TR_EINVAL : TR_EIO;
	}
	if (nng_listener_get_int(lst, NNG_OPT_TCP_BOUND_PORT, &port) != 0)
		port = 0;
	atomic_store_explicit(&c->port, port, memory_order_relaxed);
	resolve_addr(c, port);
	c->ref = tr_self(ctx);
	cs->ioctx = tr__io_ctx(ctx);
	if ((rv = tr__cl_data_open(cs)) != TR_OK) {
		shut(cs);
		return rv;
	}

	/* This node, first in the view. */
	member *self = &cs->mem[cs->nmem++];
	snprintf(self->m.name, sizeof(self->m.name), "%s", c->name);
	self->m.node_id = c->node_id;
	snprintf(self->m.addr, sizeof(self->m.addr), "%s", c->addr);
	snprintf(self->m.data, sizeof(self->m.data), "%s", c->daddr);
	memcpy(self->m.labels, c->labels, sizeof(c->labels));
	self->m.nlabels = c->nlabels;
	self->m.state = TR_MEMBER_ALIVE;
	self->m.incarnation = c->incarnation;
	self->m.since_us = tr_wall_us();
	self->m.self = 1;

	for (unsigned k = 0; k < K_RECV; k++)
		nng_recv_aio(c->sock, c->recv[k].aio);
	for (size_t i = 0; i < c->nseeds; i++) {
		if ((rv = dial(cs, c->seeds[i])) != TR_OK) {
			set_err(c, "cluster: cannot dial seed %s: %s", c->seeds[i], tr_strerror(rv));
			shut(cs);
			return rv;
		}
	}
	uint64_t tick_ms = c->hb_ns / 2;
	if (c->suspect_ns / 4 < tick_ms)
		tick_ms = c->suspect_ns / 4;
	if (c->down_ns / 4 < tick_ms)
		tick_ms = c->down_ns / 4;
	tick_ms /= 1000000u;
	if (tick_ms < 5)
		tick_ms = 5;
	if (tick_ms > 250)
		tick_ms = 250;
	uv_timer_start(cs->tick, on_tick, tick_ms, tick_ms);
	publish(cs);
	return TR_OK;
}

static int cl_receive(tr_ctx *ctx, void *st, tr_msg *m)
{
	/* Membership arrives through the bridge; the mailbox holds messages
	 * for other nodes (remote.c). */
	return tr__cl_data_receive(ctx, st, m);
}

static void cl_terminate(tr_ctx *ctx, void *st, int reason)
{
	cstate *cs = st;
	(void)ctx;
	(void)reason;
	shut(cs);
	cs->view_dirty = 1;
	publish(cs);
}

static const tr_actor_ops cluster_ops = {
	.name = "cluster",
	.size = sizeof(cstate),
	.init = cl_init,
	.receive = cl_receive,
	.terminate = cl_terminate,
};

/* ---- control --------------------------------------------------------------- */

static void cluster_free(tr_cluster *c)
{
	if (c == NULL)
		return;
	uv_mutex_lock(&c->lmu);
	int dstuck = c->dclosing > 0;
	uv_mutex_unlock(&c->lmu);
	if (dstuck)
		return; /* a data socket's close hangs (remote.c close_async): nng may still use c */
	if (c->closer_started) {
		uv_mutex_lock(&c->lmu);
		int stuck = !c->close_done;
		uv_mutex_unlock(&c->lmu);
		if (stuck)
			return; /* nng_close never returned: nng may still use c (close_bounded) */
		uv_thread_join(&c->closer);
	}
	drain_queue(c);
	for (unsigned k = 0; k < K_RECV; k++)
		if (c->recv[k].aio != NULL)
			nng_aio_free(c->recv[k].aio);
	while (c->send_all != NULL) {
		slot *s = c->send_all;
		c->send_all = s->all_next;
		nng_aio_free(s->aio);
		tr__free(s);
	}
	tr__cl_data_free(c);
	tr__cluster_tls_free(c->tls); /* endpoints still open hold their own */
	for (size_t i = 0; i < c->nseeds; i++)
		tr__free(c->seeds[i]);
	tr__free(c->seeds);
	if (c->secret != NULL) {
		memset(c->secret, 0, c->secret_len);
		tr__free(c->secret);
	}
	uv_mutex_destroy(&c->qmu);
	uv_mutex_destroy(&c->lmu);
	uv_cond_destroy(&c->lcv);
	uv_mutex_destroy(&c->vmu);
	tr__free(c);
}

static int name_ok(const char *s, size_t max)
{
	return s != NULL && s[0] != '\0' && strlen(s) < max;
}

int tr_cluster_start(tr_node *n, unsigned worker, const tr_cluster_opts *o, tr_cluster **out,
                     char *err, size_t errlen)
{
	char dummy[8];
	if (err == NULL || errlen == 0)
		err = dummy, errlen = sizeof(dummy);
	err[0] = '\0';
	if (out != NULL)
		*out = NULL;
	if (n == NULL || o == NULL || out == NULL) {
		snprintf(err, errlen, "cluster: no options");
		return TR_EINVAL;
	}
	if (!name_ok(o->name, 64)) {
		snprintf(err, errlen, "cluster: name must be 1..63 bytes");
		return TR_EINVAL;
	}
	if (o->node_id == 0) {
		snprintf(err, errlen, "cluster: node_id must not be 0");
		return TR_EINVAL;
	}
	if (!name_ok(o->listen, 128) || strstr(o->listen, "://") == NULL) {
		snprintf(err, errlen, "cluster: bad listen URL (want e.g. tcp://127.0.0.1:7101)");
		return TR_EINVAL;
	}
	if ((o->secret == NULL || o->secret_len == 0) && !o->allow_insecure) {
		snprintf(err, errlen, "cluster: no secret (secret_file), and allow_insecure is not set");
		return TR_EINVAL;
	}
	if (o->nlabels > TR_CLUSTER_LABELS_MAX || (o->nlabels > 0 && o->labels == NULL)) {
		snprintf(err, errlen, "cluster: at most %d labels", TR_CLUSTER_LABELS_MAX);
		return TR_EINVAL;
	}
	for (size_t i = 0; i < o->nlabels; i++) {
		if (!name_ok(o->labels[i], 32)) {
			snprintf(err, errlen, "cluster: a label must be 1..31 bytes");
			return TR_EINVAL;
		}
	}
	if (o->nseeds > 0 && o->seeds == NULL) {
		snprintf(err, errlen, "cluster: nseeds without seeds");
		return TR_EINVAL;
	}
	for (size_t i = 0; i < o->nseeds; i++) {
		if (!name_ok(o->seeds[i], 128) || strstr(o->seeds[i], "://") == NULL) {
			snprintf(err, errlen, "cluster: bad seed URL");
			return TR_EINVAL;
		}
	}

	tr_cluster *c = tr__calloc(1, sizeof(*c));
	if (c == NULL)
		goto oom;
	if (uv_mutex_init(&c->qmu) != 0) {
		tr__free(c);
		goto oom;
	}
	if (uv_mutex_init(&c->lmu) != 0) {
		uv_mutex_destroy(&c->qmu);
		tr__free(c);
		goto oom;
	}
	if (uv_cond_init(&c->lcv) != 0) {
		uv_mutex_destroy(&c->qmu);
		uv_mutex_destroy(&c->lmu);
		tr__free(c);
		goto oom;
	}
	if (uv_mutex_init(&c->vmu) != 0) {
		uv_mutex_destroy(&c->qmu);
		uv_mutex_destroy(&c->lmu);
		uv_cond_destroy(&c->lcv);
		tr__free(c);
		goto oom;
	}
	/* From here on cluster_free undoes everything. */
	snprintf(c->name, sizeof(c->name), "%s", o->name);
	c->node_id = o->node_id;
	int tls_rc;
	if (o->tls != NULL &&
	    (tls_rc = tr__cluster_tls_new(o->tls, &c->tls, err, errlen)) != TR_OK) {
		cluster_free(c);
		return tls_rc;
	}
	/* With TLS every URL is tls+ from here on: the one HELLO advertises
	 * and the seeds (given as tcp:// or tls+tcp://), so that they compare
	 * equal to the addresses the peers gossip (dial, dialer_find). */
	if (tr__cluster_tls_url(c->tls, o->listen, c->listen, sizeof(c->listen), err, errlen) !=
	    TR_OK) {
		cluster_free(c);
		return TR_EINVAL;
	}
	for (size_t i = 0; i < o->nlabels; i++)
		snprintf(c->labels[i], sizeof(c->labels[i]), "%s", o->labels[i]);
	c->nlabels = (uint32_t)o->nlabels;
	c->hb_ns = (o->heartbeat_us ? o->heartbeat_us : 500000u) * 1000u;
	c->suspect_ns = (o->suspect_after_us ? o->suspect_after_us : 1500000u) * 1000u;
	c->down_ns = (o->down_after_us ? o->down_after_us : 3000000u) * 1000u;
	c->hs_ns = (o->handshake_us ? o->handshake_us : 2000000u) * 1000u;
	c->max_frame = o->max_frame ? o->max_frame : 4u * 1024u * 1024u;
	/* A restarted node has a larger incarnation than any earlier life. */
	c->incarnation = tr_wall_us();
	c->leave_item.kind = Q_LEAVE;
	if (o->secret != NULL && o->secret_len > 0) {
		c->secret = tr__malloc(o->secret_len);
		if (c->secret == NULL)
			goto oom_free;
		memcpy(c->secret, o->secret, o->secret_len);
		c->secret_len = o->secret_len;
	}
	if (o->nseeds > 0) {
		c->seeds = tr__calloc(o->nseeds, sizeof(*c->seeds));
		if (c->seeds == NULL)
			goto oom_free;
		for (size_t i = 0; i < o->nseeds; i++) {
			char u[160];
			if (tr__cluster_tls_url(c->tls, o->seeds[i], u, sizeof(u), err, errlen) != TR_OK) {
				cluster_free(c);
				return TR_EINVAL;
			}
			c->seeds[i] = tr__strndup(u, strlen(u));
			if (c->seeds[i] == NULL)
				goto oom_free;
			c->nseeds = i + 1;
		}
	}
	for (unsigned k = 0; k < K_RECV; k++) {
		c->recv[k].c = c;
		c->recv[k].q.kind = Q_RECV;
		if (nng_aio_alloc(&c->recv[k].aio, aio_cb, &c->recv[k]) != 0)
			goto oom_free;
	}
	if (o->data_listen != NULL)
		snprintf(c->data_listen, sizeof(c->data_listen), "%s", o->data_listen);
	if (tr__cl_data_alloc(c) != TR_OK)
		goto oom_free;
	c->node = n;

	c->err = err;
	c->errlen = errlen;
	tr_spawn_opts so;
	memset(&so, 0, sizeof(so));
	so.name = TR_CLUSTER_NAME;
	/* The mailbox holds envelopes for other nodes: full means overload,
	 * refused at once (TR_EREJECTED) like any full remote mailbox. */
	so.mbox.mailbox = 65536;
	so.mbox.overflow = TR_OVERFLOW_REJECT;
	so.mbox.batch = 1024;
	/* init sets c->ref itself, before the loop can read it: writing it
	 * here again, after init, would race with the loop. */
	tr_ref self;
	int rc = tr__spawn_pinned(n, worker, &cluster_ops, c, &so, &self);
	c->err = NULL;
	c->errlen = 0;
	if (rc != TR_OK) {
		if (err[0] == '\0') {
			if (rc == TR_EEXIST)
				snprintf(err, errlen, "cluster: \"%s\" is registered already", TR_CLUSTER_NAME);
			else
				snprintf(err, errlen, "cluster: cannot start: %s", tr_strerror(rc));
		}
		cluster_free(c);
		return rc;
	}
	*out = c;
	return TR_OK;
oom_free:
	cluster_free(c);
oom:
	snprintf(err, errlen, "out of memory");
	return TR_ENOMEM;
}

void tr_cluster_leave(tr_cluster *c, unsigned wait_ms)
{
	if (c == NULL)
		return;
	uv_mutex_lock(&c->qmu);
	int closed = c->closed;
	if (!closed && !c->leave_queued) {
		c->leave_queued = 1;
		c->leave_item.next = NULL;
		if (c->qtail != NULL)
			c->qtail->next = &c->leave_item;
		else
			c->qhead = &c->leave_item;
		c->qtail = &c->leave_item;
		uv_async_send(c->async);
	}
	uv_mutex_unlock(&c->qmu);
	if (closed)
		return;
	uint64_t until = tr_now_ns() + (uint64_t)wait_ms * 1000000u;
	uv_mutex_lock(&c->lmu);
	while (!c->leave_done) {
		uint64_t now = tr_now_ns();
		if (now >= until || uv_cond_timedwait(&c->lcv, &c->lmu, until - now) != 0)
			break;
	}
	uv_mutex_unlock(&c->lmu);
}

size_t tr_cluster_view(const tr_cluster *c, tr_cluster_member *out, size_t max)
{
	if (c == NULL || out == NULL)
		return 0;
	tr_cluster *h = (tr_cluster *)c; /* the mutex is not const */
	uv_mutex_lock(&h->vmu);
	size_t n = h->nview < max ? h->nview : max;
	memcpy(out, h->view, n * sizeof(*out));
	uv_mutex_unlock(&h->vmu);
	return n;
}

const tr_cluster_stats *tr_cluster_stats_of(const tr_cluster *c)
{
	return &c->st;
}

int tr_cluster_port(const tr_cluster *c)
{
	return atomic_load_explicit(&c->port, memory_order_relaxed);
}

void tr_cluster_free(tr_cluster *c)
{
	cluster_free(c);
}

/* Relaxed: set before the node it names starts, read by its loop. */
void tr__cluster_test_late_up(uint32_t node_id)
{
	atomic_store_explicit(&late_up_test, node_id, memory_order_relaxed);
}

void tr__cluster_test_ignore_pings(tr_cluster *c, uint32_t node_id)
{
	atomic_store_explicit(&c->ignore_pings_from, node_id, memory_order_relaxed);
}

uint64_t tr__cluster_test_confirmations(const tr_cluster *c)
{
	return atomic_load_explicit(&c->confirmations, memory_order_relaxed);
}

int tr__cluster_test_close_stuck(const tr_cluster *c)
{
	tr_cluster *h = (tr_cluster *)c; /* the mutex is not const */
	uv_mutex_lock(&h->lmu);
	int stuck = h->close_stuck || h->dclosing > 0;
	uv_mutex_unlock(&h->lmu);
	return stuck;
}

/* ---- fuzzing (tests/fuzz/fuzz_cluster_frame.c) ---------------------------- */

/* Aborts unless the n bytes at b lie inside p[0..pn): what a reader
 * hands back must point into the frame. */
static void fuzz_inside(const unsigned char *p, size_t pn, const unsigned char *b, size_t n)
{
	if (b < p || n > pn || (size_t)(b - p) > pn - n)
		abort();
}

int tr__cluster_fuzz_frame(const void *buf, size_t n)
{
	const unsigned char *p = buf, *b, *x;
	uint64_t v, t, seq, ts;
	tr_cluster_member m;
	char s[64];
	size_t bl, xl, hdr;
	uint32_t cnt;

	/* on_frame, with the default max_frame */
	if (n > 4u * 1024u * 1024u || tr_mp_check(p, n, FRAME_DEPTH) != TR_OK ||
	    f_uint(p, n, "v", &v) != 0 || f_uint(p, n, "t", &t) != 0 || v != TR_CLUSTER_VERSION)
		return TR_EPROTO;
	switch (t) {
	case F_HELLO: /* on_hello */
		if (f_member(p, n, &m) != 0 || f_bin(p, n, "nonce", &b, &bl) != 0)
			return TR_EPROTO;
		fuzz_inside(p, n, b, bl);
		if (bl != NONCE_LEN || f_str(p, n, "data", m.data, sizeof(m.data), 1) != 0)
			return TR_EPROTO;
		break;
	case F_AUTH: /* on_auth */
		if (f_bin(p, n, "mac", &b, &bl) != 0)
			return TR_EPROTO;
		fuzz_inside(p, n, b, bl);
		break;
	case F_MEMBERS: /* on_members */
		if (tr__mp_map_get(p, n, "list", &x, &xl) != TR_OK ||
		    tr__mp_array_head(x, xl, &cnt, &hdr) != TR_OK)
			return TR_EPROTO;
		fuzz_inside(p, n, x, xl);
		for (size_t pos = hdr; cnt > 0; cnt--) {
			size_t es = tr__mp_size(x + pos);
			fuzz_inside(x, xl, x + pos, es);
			if (f_entry(x + pos, es, &m, &v) != 0)
				return TR_EPROTO;
			pos += es;
		}
		break;
	case F_PING: /* on_up_frame */
	case F_ACK:
		if (f_uint(p, n, "seq", &seq) != 0 || f_uint(p, n, "ts", &ts) != 0)
			return TR_EPROTO;
		break;
	case F_PING_REQ:
		if (f_str(p, n, "target", s, sizeof(s), 0) != 0 || f_uint(p, n, "seq", &seq) != 0)
			return TR_EPROTO;
		break;
	case F_PING_REQ_ACK:
		if (f_str(p, n, "target", s, sizeof(s), 0) != 0)
			return TR_EPROTO;
		break;
	case F_LEAVE:
		if (f_str(p, n, "name", s, sizeof(s), 0) != 0)
			return TR_EPROTO;
		break;
	case F_LEAVE_ACK:
		break;
	default:
		return TR_EPROTO;
	}
	return TR_OK;
}
