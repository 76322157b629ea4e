/*
 * troupe/msg.h -- actor references, message envelopes and bodies.
 *
 * An envelope (tr_msg) carries routing and tracing fields plus an optional
 * refcounted body of msgpack bytes. Envelopes travel by pointer inside a
 * node (no serialization); tr_msg_encode/tr_msg_decode turn one into bytes
 * for the wire and back. Decoding treats its input as hostile: counts and
 * lengths are checked against the bytes present before anything is
 * allocated, and any malformed input is TR_EPROTO, never a crash.
 *
 * Ownership, in one place:
 *  - A tr_msg has exactly one owner. tr_send()/tr_ask()/tr_reply() consume
 *    the message whatever they return. Inside receive() the message is
 *    borrowed; tr_take() makes the actor its owner.
 *  - A tr_body is refcounted (atomically: bodies cross threads). A message
 *    owns one reference to its body; fan-out takes more references with
 *    tr_body_ref(), never copies. A body is immutable once shared.
 */
#ifndef TROUPE_MSG_H
#define TROUPE_MSG_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * A reference to an actor: the node it lives on, its slot in that node's
 * actor table, and the generation of the slot. A slot is reused after its
 * actor dies, with the generation bumped, so a stale ref never reaches the
 * new occupant (sends to it fail with TR_ENOACTOR). gen 0 is never used:
 * the all-zero ref is "no actor".
 */
typedef struct tr_ref {
	uint32_t node;
	uint32_t idx;
	uint32_t gen;
} tr_ref;

#define TR_REF_NONE ((tr_ref){0, 0, 0})

static inline int tr_ref_eq(tr_ref a, tr_ref b)
{
	return a.node == b.node && a.idx == b.idx && a.gen == b.gen;
}

static inline int tr_ref_is_none(tr_ref r)
{
	return r.gen == 0;
}

/* A refcounted, immutable-once-shared byte string (msgpack, by convention). */
typedef struct tr_body {
	atomic_uint refs; /* private */
	uint32_t len;     /* read-only */
	atomic_uchar checked; /* private: 1 once tr_body_check() accepted it */
	unsigned char data[]; /* read-only once shared */
} tr_body;

/* Copies `len` bytes into a new body with one reference. NULL on OOM or
 * len > UINT32_MAX. */
TR_EXTERN tr_body *tr_body_new(const void *data, size_t len);
/* A new body of `len` uninitialised bytes, writable until first shared. */
TR_EXTERN tr_body *tr_body_alloc(size_t len);
/*
 * tr_mp_check(data, len, TR_MP_MAX_DEPTH) of a shared body, done once:
 * a body is immutable once shared, so the verdict is remembered in it and
 * every later check (the next hop, the engine, the door) costs a load.
 * TR_OK, or TR_EPROTO (and TR_EINVAL for NULL), like tr_mp_check.
 */
TR_EXTERN int tr_body_check(tr_body *b);
/* Takes one more reference; returns `b`. */
TR_EXTERN tr_body *tr_body_ref(tr_body *b);
/* Drops one reference; frees the body on the last one. NULL is a no-op. */
TR_EXTERN void tr_body_unref(tr_body *b);

/* Message flags. */
enum {
	TR_MSGF_SYSTEM = 1 << 0, /* never dropped, jumps the queue */
	TR_MSGF_ASK = 1 << 1,    /* the sender waits for a reply (corr) */
	TR_MSGF_REPLY = 1 << 2,  /* a reply to an ask (corr identifies it) */
	TR_MSGF_ERROR = 1 << 3,  /* an error reply: `err` says which */
	TR_MSGF_TIMER = 1 << 4,  /* delivered by a timer (arg: ticks missed) */
	TR_MSGF__WIRE = 0x001f   /* flags that travel on the wire */
};

/*
 * System tags. User tags are below TR_TAG_SYS_BASE. System messages are
 * delivered before user messages and are never dropped or rejected.
 */
#define TR_TAG_SYS_BASE 0xffff0000u
/* A linked actor died: from, err = reason. */
#define TR_TAG_EXIT (TR_TAG_SYS_BASE + 1u)
/* A monitored actor died: from, corr = monitor id, err = reason. */
#define TR_TAG_DOWN (TR_TAG_SYS_BASE + 2u)
/* A mailbox that refused us (overflow=block) has room again: from. */
#define TR_TAG_WRITABLE (TR_TAG_SYS_BASE + 3u)
/* A watched mailbox crossed a watermark: from, arg 1 = raised, 0 = cleared. */
#define TR_TAG_PRESSURE (TR_TAG_SYS_BASE + 4u)
/* Asks the receiver to stop with err as reason; handled by the runtime. */
#define TR_TAG_STOP (TR_TAG_SYS_BASE + 5u)
/* Tag of runtime-made error replies (flags REPLY|ERROR). */
#define TR_TAG_REPLY_ERR (TR_TAG_SYS_BASE + 6u)

/* Exit reasons are tr_err codes; TR_OK is the normal exit. */

/*
 * The envelope. Fields marked private belong to the runtime. Everything
 * else is encoded on the wire.
 */
typedef struct tr_msg {
	struct tr_msg *next; /* private: intrusive mailbox link */
	uint64_t id;         /* unique per node, set by tr_msg_new() */
	tr_ref from;         /* sender; set by tr_send() when sent from an actor */
	tr_ref to;           /* receiver; set by tr_send() */
	uint32_t tag;        /* what the message is; see TR_TAG_* */
	uint16_t flags;      /* TR_MSGF_* */
	uint16_t attempt;    /* retry attempt number, 0 for the first */
	uint64_t corr;       /* correlation id of an ask and its reply */
	uint64_t deadline;   /* absolute, microseconds since the Unix epoch; 0 = none */
	uint64_t trace_hi;   /* 128-bit trace id (W3C trace-context sized) */
	uint64_t trace_lo;
	uint32_t tenant;     /* interned tenant id (tr_tenant_intern); 0 = none */
	int32_t err;         /* error replies and EXIT/DOWN: a tr_err code */
	uint64_t arg;        /* an inline scalar, for small messages without a body */
	tr_body *body;       /* owned reference; NULL when there is none */
	uint64_t enq_ns;     /* private: enqueue time, for time-in-mailbox stats */
} tr_msg;

/* A zeroed message with a fresh id, from the calling thread's pool. NULL on
 * OOM. */
TR_EXTERN tr_msg *tr_msg_new(void);
/* Frees `m` and drops its body reference. NULL is a no-op. */
TR_EXTERN void tr_msg_free(tr_msg *m);
/* A copy of `m` sharing its body (one more reference). NULL on OOM. */
TR_EXTERN tr_msg *tr_msg_clone(const tr_msg *m);

/* A growable byte buffer owned by its user; free with tr_buf_free(). */
typedef struct tr_buf {
	unsigned char *data;
	size_t len;
	size_t cap;
} tr_buf;

TR_EXTERN void tr_buf_init(tr_buf *b);
TR_EXTERN void tr_buf_free(tr_buf *b);

/* Largest encoded envelope the decoder accepts (and the encoder produces). */
#define TR_MSG_MAX_WIRE (16u * 1024u * 1024u)
/* Deepest nesting accepted in a body by tr_mp_check(). */
#define TR_MP_MAX_DEPTH 64

/*
 * Appends the msgpack encoding of `m` to `out` (wire format: README,
 * "Wire format"). The body must be one well-formed msgpack object or
 * empty. Returns TR_OK; TR_EPROTO for a malformed body; TR_EINVAL for an
 * unknown tenant id, runtime-private flags or a positive err; TR_ETOOBIG
 * past TR_MSG_MAX_WIRE; TR_ENOMEM. On error `out` is unchanged.
 */
TR_EXTERN int tr_msg_encode(const tr_msg *m, tr_buf *out);

/*
 * Decodes exactly one envelope occupying all of buf[0..len). On TR_OK,
 * *out is a new message owned by the caller (its body is a copy: the input
 * buffer may be freed at once). Returns TR_EPROTO for malformed, truncated
 * or trailing bytes, hostile counts, or an unknown tenant when the tenant
 * table is full; TR_ETOOBIG past TR_MSG_MAX_WIRE; TR_ENOMEM.
 */
TR_EXTERN int tr_msg_decode(const void *buf, size_t len, tr_msg **out);

/*
 * Checks that buf[0..len) is exactly one well-formed msgpack object, with
 * every count and length within the bytes present and nesting at most
 * `max_depth`. Allocates nothing. TR_OK or TR_EPROTO.
 */
TR_EXTERN int tr_mp_check(const void *buf, size_t len, unsigned max_depth);

/*
 * Tenants are interned: a node-wide, append-only table maps names (1..63
 * bytes) to small ids, so envelopes carry 4 bytes instead of a string.
 * Returns TR_OK and the id in *id; TR_EINVAL for a bad name; TR_ELIMIT when
 * the table (TR_TENANT_MAX names) is full. Thread-safe.
 */
#define TR_TENANT_MAX 4096
#define TR_TENANT_NAME_MAX 63
TR_EXTERN int tr_tenant_intern(const char *name, size_t len, uint32_t *id);
/* The name of tenant `id` (NUL-terminated, static), or NULL if unknown. */
TR_EXTERN const char *tr_tenant_name(uint32_t id);

#ifdef __cplusplus
}
#endif
#endif
