/*
 * cluster/cluster.h -- troupe nodes forming a cluster over nng: links,
 * their authentication, and membership with failure detection.
 *
 * One actor per node, registered as "cluster", pinned on one worker,
 * owns one nng pair1 socket in polyamorous mode (NNG_OPT_PAIR1_POLY):
 * it listens on `listen` and dials each seed from the same socket, so
 * every peer is one nng pipe. nng's threads never touch actor state:
 * receives are nng aios (K outstanding) whose callbacks queue the
 * message and wake the worker's loop with uv_async_send (../shared/
 * deps.md §4); sends are aios too. NNG_OPT_RECVMAXSZ is set before
 * listen/dial (nng's default is unlimited), redial times are explicit.
 * With tls options every endpoint the cluster makes is tls+tcp with
 * mutual certificate checks (cluster/tls.h); the HMAC handshake below
 * still runs inside TLS.
 *
 * Wire. Every nng message is one frame: a msgpack map
 *     {v = TR_CLUSTER_VERSION, t = <type>, ...}
 * checked with tr_mp_check before anything reads it; t is 1 HELLO,
 * 2 AUTH, 3 MEMBERS, 4 PING, 5 ACK, 6 PING_REQ, 7 PING_REQ_ACK, 8 LEAVE,
 * 9 LEAVE_ACK. A frame that is malformed, oversized, of another version
 * or of an unknown type is dropped and counted (bad_frames), never
 * crashes the node; a pipe that sends garbage before authenticating is
 * closed. Some garbage never reaches us, so it is dropped but cannot be
 * counted: bytes that are not an SP handshake never become a pipe, and a
 * message over max_frame (NNG_OPT_RECVMAXSZ) or with a bad length or
 * pair1 header is dropped by nng, which closes its pipe (to us that looks
 * like a peer that went away).
 *
 * Handshake (HMAC challenge; the secret never crosses the wire). When a
 * pipe is added each side sends HELLO {name, id (node_id), addr (its
 * listen URL, the bound port filled in), labels, nonce (16 random bytes),
 * inc (incarnation: wall clock µs at start)}. Each answers the other's HELLO
 * with AUTH {mac = HMAC-SHA256(secret, their_nonce || my_nonce ||
 * my_name)}; a side accepts the peer when the mac checks (constant-time
 * compare) and the names/ids are not already taken by another live
 * member. Until then only HELLO and AUTH are read; a wrong mac, a
 * version mismatch, a duplicate name or no AUTH within the handshake
 * timeout closes the pipe and counts `refused`. (A name is "taken" while
 * its member has a working link; a new incarnation of a member whose
 * link is gone is welcome.) Two nodes that dialed each other keep one of
 * the two links, the same one at both ends, and close the other without
 * counting it. Without a secret
 * (secret_file unset) the cluster refuses to start unless
 * allow_insecure is set (tests only).
 *
 * Membership (SWIM-like: direct probes plus indirect confirmation, so one
 * slow link does not evict a healthy node). Members learn each other
 * from HELLOs and from the member lists they gossip (MEMBERS {list of
 * {name, id, addr, labels, inc, state}} on join and when the
 * view changes, and every 10 heartbeats); a node dials every member it
 * learns of that it has no link to. Gossip adds unknown members (as
 * alive) and spreads "left" and new incarnations; whether a known member
 * is suspect or down each node finds out by itself. Every `heartbeat`
 * each node PINGs each member (ACK expected; only ACKs and confirmations
 * count as news of a member, not its own frames); a member with no ACK
 * within `suspect_after` is "suspect": the node asks up to 2 other
 * members to probe it (PING_REQ -> their PING -> ACK back as
 * PING_REQ_ACK), again every heartbeat while it is suspect; a
 * confirmation makes it alive again; with none within `down_after` of
 * becoming suspect it is "down" (and its link closed). A closed pipe
 * (kill -9: the kernel resets the TCP connection) makes a member suspect
 * at once, so a dead node is down after about down_after. LEAVE {name}
 * on graceful shutdown marks the sender "left" at once everywhere; each
 * member answers LEAVE_ACK, and sends a left member nothing more. A
 * down or left member that connects and authenticates again (a new
 * incarnation) rejoins as "alive".
 *
 * Shutdown bounds nng_close (2 s): nng 1.5.2 sometimes never returns from
 * it (nng #1543); the socket is then left behind, and so is the handle
 * (tr_cluster_free does not free it). A graceful leave first makes that
 * rare: the peers stop sending to us before we close.
 */
#ifndef TR_CLUSTER_CLUSTER_H
#define TR_CLUSTER_CLUSTER_H

#include <stdatomic.h>
#include <stdint.h>

#include <troupe/actor.h>

#define TR_CLUSTER_NAME "cluster"
#define TR_CLUSTER_VERSION 1
#define TR_CLUSTER_MEMBERS_MAX 64
#define TR_CLUSTER_LABELS_MAX 16

/* TLS on every cluster link (cluster/tls.h): mutual, both ends show a
 * certificate that ca_file's CA signed. PEM files, read at start. */
typedef struct tr_cluster_tls_opts {
	const char *cert_file;       /* this node's certificate (its chain may follow) */
	const char *key_file;        /* its private key, unencrypted */
	const char *ca_file;         /* the CA(s) every node's certificate is checked against */
	const char *server_name;     /* NULL: any certificate the CA signed; else the name
	                              * (SAN/CN) a dialed peer's certificate must carry */
} tr_cluster_tls_opts;

typedef struct tr_cluster_opts {
	const char *name;            /* this node's name (unique in the cluster) */
	uint32_t node_id;            /* this node's id in refs (tr_node_id) */
	const char *listen;          /* "tcp://127.0.0.1:7101" (copied) */
	const char *data_listen;     /* envelopes: "tcp://host:port"; NULL = listen's host, any port */
	const char *const *seeds;    /* URLs to dial (copied); may include our own */
	size_t nseeds;
	const unsigned char *secret; /* the cluster secret (copied); NULL only with allow_insecure */
	size_t secret_len;
	const char *const *labels;   /* this node's labels (copied) */
	size_t nlabels;
	uint64_t heartbeat_us;       /* 0 = 500 ms */
	uint64_t suspect_after_us;   /* 0 = 1.5 s */
	uint64_t down_after_us;      /* 0 = 3 s */
	uint64_t handshake_us;       /* 0 = 2 s */
	uint32_t max_frame;          /* NNG_OPT_RECVMAXSZ; 0 = 4 MiB */
	int allow_insecure;          /* tests only: no secret */
	const tr_cluster_tls_opts *tls; /* NULL = plain tcp; else tls+tcp (copied at start) */
} tr_cluster_opts;

enum { TR_MEMBER_ALIVE = 1, TR_MEMBER_SUSPECT, TR_MEMBER_DOWN, TR_MEMBER_LEFT };

typedef struct tr_cluster_member {
	char name[64];
	uint32_t node_id;
	char addr[128];
	char data[160];              /* its data listener (links only; "" in gossip) */
	char labels[TR_CLUSTER_LABELS_MAX][32];
	uint32_t nlabels;
	int state;                   /* TR_MEMBER_* */
	uint64_t incarnation;
	uint64_t since_us;           /* wall clock of the last state change */
	uint64_t rtt_us;             /* last ping round trip (0: none yet) */
	int self;                    /* this node */
} tr_cluster_member;

typedef struct tr_cluster_stats {
	atomic_uint_fast64_t frames_in, frames_out, bytes_in, bytes_out;
	atomic_uint_fast64_t bad_frames;   /* malformed, wrong version, unknown type, oversized */
	atomic_uint_fast64_t refused;      /* links refused at the handshake (wrong secret, ...) */
	atomic_uint_fast64_t links_up, links_down;
	atomic_uint_fast64_t suspected, declared_down, rejoined;
	atomic_uint alive;                 /* members alive, this node included (gauge) */
	/* the data plane: envelopes carried to and from other nodes */
	atomic_uint_fast64_t msgs_out, msgs_in, batches_out, batches_in;
	atomic_uint_fast64_t remote_refused;  /* not carried: link queue or ask window full, too big */
	atomic_uint_fast64_t remote_failed;   /* asks failed with node_down (pending or new) */
	atomic_uint_fast64_t remote_undelivered; /* arrived for an actor that is gone or full */
	atomic_uint_fast64_t bad_batches;     /* malformed, wrong token, unknown sender */
} tr_cluster_stats;

typedef struct tr_cluster tr_cluster;

/* Starts the cluster actor on worker `worker` of the running node n
 * (pinned), registers TR_CLUSTER_NAME, listens and dials the seeds in
 * the background. TR_OK with *out; TR_EINVAL (bad options, message in
 * err: no secret, bad URL), TR_EIO (cannot listen: err says why),
 * TR_ENOMEM. Free with tr_cluster_free after the node has stopped. */
int tr_cluster_start(tr_node *n, unsigned worker, const tr_cluster_opts *o, tr_cluster **out,
                     char *err, size_t errlen);
/* Before a drain: this node stops publishing its names, so the others
 * stop picking its actors for new work (within one tick, <= 250 ms),
 * while links stay up and work in flight finishes. Thread-safe. */
void tr_cluster_retire(tr_cluster *c);
/* Graceful leave: sends LEAVE to every member it has a link to and
 * waits (at most wait_ms) until each answered LEAVE_ACK or its link
 * closed. Afterwards this node stops probing and gossiping. Call before
 * stopping the node, from a thread that is not its worker. */
void tr_cluster_leave(tr_cluster *c, unsigned wait_ms);
/* A copy of the membership view (this node first): how many entries
 * were written to out (at most max). Thread-safe. */
size_t tr_cluster_view(const tr_cluster *c, tr_cluster_member *out, size_t max);
const tr_cluster_stats *tr_cluster_stats_of(const tr_cluster *c);
/* The port actually listened on (tcp://...:0 picks one). */
int tr_cluster_port(const tr_cluster *c);
void tr_cluster_free(tr_cluster *c);

/* Test hooks (tests/unit/test_cluster.c only). This node stops answering
 * the PINGs of the member whose node id is `node_id` (0: answers all
 * again), as if that one link were slow; and the number of PING_REQ_ACKs
 * (indirect confirmations) this node received. */
void tr__cluster_test_ignore_pings(tr_cluster *c, uint32_t node_id);
uint64_t tr__cluster_test_confirmations(const tr_cluster *c);
/* 1 when this cluster's nng_close did not return within its bound (nng
 * 1.5.2's close hang, see cluster.c close_bounded): tr_cluster_free then
 * leaves the handle allocated. Read it before tr_cluster_free. */
int tr__cluster_test_close_stuck(const tr_cluster *c);
/* Process-wide, set before the node starts (tests/unit/test_remote.c): the
 * node whose own id is `node_id` never starts a data link from an up
 * frame, only from the peer's first batch (remote.c early_peer). 0: off. */
void tr__cluster_test_late_up(uint32_t node_id);

#endif
