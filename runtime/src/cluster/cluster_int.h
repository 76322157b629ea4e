/*
 * cluster/cluster_int.h -- what the cluster's two halves share: the
 * handle, the actor state and the nng bridge. cluster.c has links and
 * membership; remote.c carries envelopes between nodes (the data plane).
 * Loop-only fields are touched by the cluster actor's worker alone;
 * fields that other threads read say how.
 */
#ifndef TR_CLUSTER_CLUSTER_INT_H
#define TR_CLUSTER_CLUSTER_INT_H

#include <stdatomic.h>

#include <nng/nng.h>
#include <uv.h>

#include "cluster/cluster.h"
#include "cluster/tls.h"
#include "sched/sched.h"

/* Receives outstanding on the membership socket: one, so frames of a link
 * are handled in the order they came (two aios complete on two nng
 * threads and may reach the queue in either order: an AUTH seen before
 * its HELLO closed the link as garbage, a rare bad_frames in TSan runs).
 * The pipes wait meanwhile (nng reads a pipe only when the socket takes
 * the message); membership traffic is a few frames per heartbeat. */
#define K_RECV 1
#define SEND_SLOTS_MAX 1024    /* send aios at most (more frames are dropped) */
#define LINKS_MAX 256          /* pipes tracked at most (authenticated or not) */
#define DIALERS_MAX (TR_CLUSTER_MEMBERS_MAX + 16)
#define PROBES_MAX 64          /* indirect probes run for others at once */
#define NONCE_LEN 16
#define MAC_LEN 32
#define GOSSIP_EVERY 10        /* heartbeats between unprompted MEMBERS */
#define FRAME_DEPTH 8          /* nesting a frame may have */
#define CLOSE_WAIT_MS 2000     /* nng_close at most this long (close_bounded) */

/* Frame types (the `t` field). */
enum {
	F_HELLO = 1,
	F_AUTH,
	F_MEMBERS,
	F_PING,
	F_ACK,
	F_PING_REQ,
	F_PING_REQ_ACK,
	F_LEAVE,
	F_LEAVE_ACK
};

/* ---- the nng bridge ------------------------------------------------------ */

enum { Q_RECV = 1, Q_SEND, Q_PIPE_ADD, Q_PIPE_REM, Q_LEAVE, Q_DRECV, Q_DSEND };

typedef struct qitem {
	struct qitem *next;
	int kind; /* Q_* */
} qitem;

/* An aio and its queue entry. Recv slots are fixed; send slots are made
 * on demand and recycled on the loop. */
typedef struct slot {
	qitem q; /* first: the queue hands back a qitem* */
	tr_cluster *c;
	nng_aio *aio;
	struct slot *free_next;
	struct slot *all_next;
	unsigned peer;  /* Q_DSEND: index in tr_cluster.peers */
	unsigned epoch; /* Q_DSEND: the peer's epoch when it was sent */
} slot;

/* ---- the data plane (remote.c) ---------------------------------------------- */

/* Batch receives outstanding on the data socket: one, because order per
 * link is part of the contract and two aios completing on two nng
 * threads may reach our queue in either order. The socket's own receive
 * buffer keeps TCP busy meanwhile; a batch carries a burst. */
#define K_DRECV 1
#define PEERS_MAX TR_CLUSTER_MEMBERS_MAX
#define TOKEN_LEN 16

/* Actor names another node publishes (for tr_whereis_remote). */
typedef struct pname {
	char name[64];
	tr_ref ref;
} pname;

/*
 * One other node as the data plane sees it. Its envelopes travel in
 * batches over a push socket we dial to its data listener; ours come
 * back on our one pull socket. `node_id` and `up` are read by any thread
 * (the deliver hook, lookups); the rest is the cluster loop's.
 */
typedef struct peer {
	atomic_uint node_id;      /* 0: slot free. Relaxed: an id is set
	                           * before `up` is released, see up */
	atomic_int up;            /* 1 while we carry messages to it; release
	                           * by the loop, acquire by the hook */
	atomic_int full;          /* 1: the link's queue is over its bound, or
	                           * the ask window is: the hook refuses user
	                           * messages. Relaxed: a hint, set and cleared
	                           * by the loop; a message that slips past is
	                           * still carried (the mailbox bounds those) */
	char name[64];
	uint64_t inc;             /* its incarnation */
	char daddr[160];          /* its data listener */
	nng_socket push;
	int push_open;
	unsigned char tok_out[TOKEN_LEN]; /* on our batches to it */
	unsigned char tok_in[TOKEN_LEN];  /* on its batches to us */
	tr_buf out;               /* the batch being filled (header + envelopes) */
	uint32_t out_n;
	nng_msg **ready;          /* sealed batches waiting for a send aio (ring) */
	unsigned rhead, rlen, rcap;
	unsigned sending;         /* batch sends outstanding */
	unsigned epoch;           /* bumped by each reset: older send completions are stale */
	/* Its batches not yet delivered: a target with a full mailbox
	 * (overflow block) pauses the link until it is WRITABLE. */
	nng_msg **in;             /* ring of IN_CAP */
	unsigned ihead, ilen;
	size_t in_off;            /* the next envelope of in[ihead] */
	uint32_t in_left;         /* envelopes left in in[ihead] */
	tr__map asks;             /* (corr, asker) -> expiry: asks carried, unanswered */
	tr__map mons;             /* (id, watcher) -> target: local monitors of its actors */
	pname *names;             /* guarded by tr_cluster.nmu */
	uint32_t nnames;
} peer;

typedef struct pipe_ev {
	qitem q;
	uint32_t pipe;
	int dialer; /* ADD only: the dialer id, or <= 0 when accepted */
} pipe_ev;

struct tr_cluster {
	tr_cluster_stats st;
	/* set by tr_cluster_start, read-only after */
	char name[64];
	uint32_t node_id;
	char listen[128];
	char **seeds;
	size_t nseeds;
	unsigned char *secret;
	size_t secret_len;
	char labels[TR_CLUSTER_LABELS_MAX][32];
	uint32_t nlabels;
	uint64_t hb_ns, suspect_ns, down_ns, hs_ns;
	uint32_t max_frame;
	uint64_t incarnation;
	tr__cluster_tls *tls;    /* NULL = plain tcp; every endpoint gets it (tr__cl_sock_*) */
	tr_ref ref;
	/* written by init (before tr_cluster_start returns) */
	char addr[128];
	char *err;
	size_t errlen;
	atomic_int port;
	nng_socket sock;
	int sock_open;
	/* aios: recv fixed; send pool touched by the loop only */
	slot recv[K_RECV];
	slot *send_all, *send_free;
	unsigned nsend;
	/* the queue: guarded by qmu */
	uv_mutex_t qmu;
	qitem *qhead, *qtail;
	uv_async_t *async;
	int closed;      /* no more uv_async_send: the async is closing */
	qitem leave_item;
	int leave_queued;
	/* graceful leave; and the closer thread (shut) */
	uv_mutex_t lmu;
	uv_cond_t lcv;
	int leave_done;
	uv_thread_t closer;
	int closer_started, close_done, close_stuck;
	int dclosing;            /* data sockets being closed by threads (remote.c close_async) */
	/* the view, for tr_cluster_view */
	uv_mutex_t vmu;
	tr_cluster_member view[TR_CLUSTER_MEMBERS_MAX];
	size_t nview;
	/* the data plane (remote.c) */
	char data_listen[128];   /* option; "" = the listen host, any port */
	char daddr[160];         /* bound, advertised in HELLO */
	nng_socket dsock;        /* pull: every peer's batches */
	int dsock_open;
	slot drecv[K_DRECV];
	slot *dsend_all, *dsend_free; /* batch send aios (loop only) */
	peer peers[PEERS_MAX];
	uv_rwlock_t nmu;         /* peers' names */
	atomic_int retired;      /* tr_cluster_retire: publish no names (relaxed: the tick polls it) */
	int nmu_init;
	tr_node *node;
	/* test hooks (cluster.h) */
	atomic_uint ignore_pings_from;
	atomic_uint_fast64_t confirmations;
};

/* ---- actor state ------------------------------------------------------------ */

enum { L_HS = 1, L_UP };

typedef struct clink {
	struct clink *next;
	uint32_t pipe;
	int dialer;              /* our dialer's id if we dialed it, else <= 0 */
	int st;                  /* L_* */
	int got_hello;
	int any_frame;           /* a well-formed frame came on it */
	int closing;             /* we closed it (or ignore it): no more frames */
	uint64_t hs_deadline_ns;
	uint64_t close_ns;
	unsigned char my_nonce[NONCE_LEN], peer_nonce[NONCE_LEN];
	tr_cluster_member peer;  /* from its HELLO */
} clink;

typedef struct member {
	tr_cluster_member m;     /* the public part */
	uint32_t pipe;           /* its authenticated link, 0 = none */
	uint64_t last_ack_ns;    /* last news of it (ACK, confirmation, join) */
	uint64_t suspect_ns;     /* when it became suspect */
	int leave_pending;       /* we left and wait for its LEAVE_ACK */
	int data_ready;          /* it accepted us too (a frame only an accepted link
	                          * carries came): its data link may carry batches */
} member;

typedef struct dialer_ent {
	char addr[128];
	nng_dialer d;
} dialer_ent;

/* A PING we send for someone else's PING_REQ. */
typedef struct probe {
	uint32_t req_pipe;
	uint64_t req_seq;
	uint64_t my_seq;
	uint64_t deadline_ns;
	char target[64];
} probe;

typedef struct cstate {
	tr_cluster *c;
	uv_loop_t *loop;
	uv_timer_t *tick;
	clink *links;
	unsigned nlinks;
	member mem[TR_CLUSTER_MEMBERS_MAX]; /* [0] is this node */
	unsigned nmem;
	dialer_ent dialers[DIALERS_MAX];
	unsigned ndialers;
	probe probes[PROBES_MAX];
	unsigned nprobes;
	uint64_t seq;
	uint64_t rng;
	uint64_t next_ping_ns;
	unsigned pings;
	unsigned leave_pending;
	int stopping, leaving;
	int view_dirty, gossip_dirty;
	uint32_t gone[64];       /* pipes whose REM came: their late frames are dropped */
	unsigned ngone;
	/* data plane (remote.c) */
	tr_ctx ioctx;            /* init's ctx, for sends from uv callbacks */
	int flush_queued;        /* a FLUSH marker waits in our mailbox */
	unsigned names_ver;      /* registry version last published */
	int retired_sent;        /* the empty list went out after tr_cluster_retire */
	uint64_t names_ns;       /* when the names go out again unasked */
	tr__map proxies;         /* our monitor id -> proxy: remote watchers of local actors */
	unsigned in_total;       /* batches held in peers' rings */
	slot *stalled;           /* receive slots not re-armed while too many are held */
	uint64_t sweep_ns;
} cstate;

/* cluster.c, used by remote.c */
void tr__cl_bump(atomic_uint_fast64_t *a);
int tr__cl_token(const tr_cluster *c, const char *from, uint64_t from_inc, const char *to,
                 uint64_t to_inc, unsigned char out[TOKEN_LEN]);
int tr__cl_ct_equal(const unsigned char *a, const unsigned char *b, size_t n);
/* The live member with node id `node` whose link we accepted, or NULL. */
member *tr__cl_linked_member(cstate *cs, uint32_t node);
void tr__cl_aio_cb(void *arg); /* nng threads: queue the slot, wake the loop */
/* Every listener and dialer the cluster makes goes through these two
 * (options, TLS). nng error codes. */
int tr__cl_sock_listen(tr_cluster *c, nng_socket s, const char *url, nng_listener *out);
int tr__cl_sock_dial(tr_cluster *c, nng_socket s, const char *url, nng_dialer *out);

/* remote.c */
int tr__cl_data_alloc(tr_cluster *c);          /* tr_cluster_start: locks, aios */
int tr__cl_data_open(cstate *cs);             /* init: the pull socket, its receives */
void tr__cl_data_close(cstate *cs);           /* shut: every data socket */
void tr__cl_data_free(tr_cluster *c);         /* cluster_free */
void tr__cl_peer_up(cstate *cs, const member *m);   /* alive with a link */
void tr__cl_peer_down(cstate *cs, const member *m, int err); /* down, left, gone */
void tr__cl_data_event(cstate *cs, slot *s);  /* Q_DRECV / Q_DSEND */
int tr__cl_data_receive(tr_ctx *ctx, cstate *cs, tr_msg *m); /* the actor's receive */
void tr__cl_data_tick(cstate *cs, uint64_t now);
extern const tr__remote_ops tr__cl_remote_ops;

/*
 * Fuzzing (tests/fuzz/fuzz_cluster_frame.c): the checks and field reads
 * the cluster makes of bytes from the network, acting on nothing (no
 * sockets, no members). tr__cluster_fuzz_frame: a membership frame, as
 * on_frame and the handler of its type read it. tr__cluster_fuzz_batch:
 * a data-plane batch as on_batch checks it (all but the token) and each
 * envelope in it as in_run decodes it (a NAMES list read as on_names
 * does). TR_OK if every check passed, TR_EPROTO at the first that did not;
 * they abort on a broken invariant. One thread at a time.
 */
int tr__cluster_fuzz_frame(const void *buf, size_t n);
int tr__cluster_fuzz_batch(const void *buf, size_t len);

#endif
