/*
 * actors/generate/generate.h -- the generate kind: turns a question and
 * the passages rag found into an answer that cites them.
 *
 * Backends: "extractive" (the default) builds the answer from the
 * passages' own sentences, deterministically, with no model; "openai"
 * asks any OpenAI-compatible /chat/completions server (openai.c). The
 * kind's ops and check are declared in actors/kinds.h; this header holds
 * the streaming protocol and what generate.c, extractive.c and openai.c
 * share.
 *
 * Streaming (setting stream = true). While answering a step ask `req`,
 * the actor first sends the asker (req->from, the pipeline engine) one
 * plain message per chunk of the answer, then replies as usual:
 *   tag   TR_TAG_STEP_DELTA
 *   corr  req->corr (which step ask the chunk belongs to)
 *   flags TR_MSGF_SYSTEM only (not an ask, not a reply)
 *   trace ids, tenant and deadline copied from req
 *   body  {text = "<chunk>"}
 * Why system: replies are system messages (actor.c, tr_reply), which
 * jump ahead of user messages in a mailbox. A delta sent as a user
 * message could be received after the reply that follows it, when the
 * step is already over. As system messages, the deltas and the reply
 * share one FIFO queue, so the asker receives every delta of an ask
 * before its reply, and its overflow policy never drops one. That is
 * what replies do too, and like them deltas are bounded: at most
 * TR_GEN_SENTENCES_MAX per ask with extractive; with openai, one per
 * read of the server's stream that brought content, so no more than the
 * tokens the server sends (max_tokens, for a server that honours it).
 * Extractive chunks are whole sentences with their citation markers; a
 * chunk after the first starts with the space that separates it from the
 * previous one. Openai chunks are the content the server streamed, as it
 * came (whole characters: each event is a JSON string). Either way the
 * chunks, concatenated in the order received, are exactly the reply's
 * `answer` (a fallback answer, or an answer that came unstreamed, is one
 * chunk). Deltas are best effort: if one cannot be sent (out of memory,
 * asker gone), the rest of that answer's are not sent either, so a
 * receiver sees a prefix of the chunks, never a gap; the reply is
 * authoritative. The engine passes deltas on to runs asked with
 * TR_RUN_EVENTS (pipe/engine.h, which defines the same tag).
 */
#ifndef TR_ACTORS_GENERATE_H
#define TR_ACTORS_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include <troupe/msg.h>
#include <troupe/node.h>

/* A chunk of an answer being produced (see above). TR_TAG_STEP + 1. */
#define TR_TAG_STEP_DELTA 0x101u

/* Bounds of the extractive composition. */
#define TR_GEN_SENTENCES_MAX 16    /* max_sentences at most */
#define TR_GEN_CANDIDATES_MAX 4096 /* sentences scored per answer; later ones ignored */
#define TR_GEN_SENTENCE_LEN 2048   /* a sentence with no end in sight is cut here */
#define TR_GEN_SOURCE_LEN 512      /* bytes of a source name kept in `sources` */

/* 1 if s[0..n) is valid UTF-8 (no overlongs, surrogates or > U+10FFFF). */
int tr_gen_utf8_valid(const char *s, size_t n);

/*
 * Appends s[0..n) to out (NULL: only counts) as clean text: invalid UTF-8
 * becomes U+FFFD (one per bad byte), control characters and runs of
 * whitespace one space, no space at either end, and at most `max` bytes
 * written (never part of a character). Returns the bytes written
 * (appended, or that would be); *more (if not NULL) is set when input was
 * left over because of `max`. TR_ENOMEM is reported as (size_t)-1.
 */
size_t tr_gen_clean(tr_buf *out, const char *s, size_t n, size_t max, int *more);

/* Appends s[0..n) to out with every invalid UTF-8 byte replaced by U+FFFD
 * and nothing else changed (white space and controls stay: a prompt's
 * line breaks matter). TR_OK or TR_ENOMEM. */
int tr_gen_utf8_repair(tr_buf *out, const char *s, size_t n);

/* One passage in context, for the extractive backend. */
typedef struct tr_gen_psg {
	const char *text; /* the bytes in context (possibly cut by the window) */
	size_t len;
	const char *src;  /* its source name (raw bytes) */
	size_t srcn;
	double score;     /* rag's score; weighs its sentences */
} tr_gen_psg;

/* The extractive backend's scratch space (per actor instance). */
typedef struct tr_gen_ex tr_gen_ex;

int tr_gen_ex_new(tr_gen_ex **out);
void tr_gen_ex_free(tr_gen_ex *x);

/* An answer composed by tr_gen_extract; everything points into the
 * tr_gen_ex and stays valid until its next tr_gen_extract. */
typedef struct tr_gen_answer {
	int found;              /* 0: nothing relevant (text empty, no sources) */
	const char *text;       /* the answer, valid UTF-8 */
	size_t len;
	uint32_t nsources;      /* sources cited: [k] in text is source k (1-based) */
	const char *src[TR_GEN_SENTENCES_MAX];
	size_t srcn[TR_GEN_SENTENCES_MAX];
	uint32_t nchunks;       /* chunk i is text[chunk_end[i-1] .. chunk_end[i]) */
	size_t chunk_end[TR_GEN_SENTENCES_MAX];
	uint32_t sentences;     /* candidate sentences scored */
} tr_gen_answer;

/*
 * Composes an answer to question q from passages pv (in the order given:
 * that is the reading order of the answer) and the questions of the
 * recent turns in context (hq/hqn, nh of them; they only weigh terms).
 * At most max_sentences sentences (1..TR_GEN_SENTENCES_MAX) and
 * max_bytes bytes of answer (>= 64). TR_OK or TR_ENOMEM.
 */
int tr_gen_extract(tr_gen_ex *x, const char *q, size_t qn, const char *const *hq,
                   const size_t *hqn, size_t nh, const tr_gen_psg *pv, size_t np,
                   uint32_t max_sentences, size_t max_bytes, tr_gen_answer *out);

/* ---- the openai backend's HTTP client (openai.c) --------------------------
 *
 * One client per generate instance: a thread with its own libuv loop and
 * one libcurl multi handle (so connections are kept alive between
 * requests). The actor submits requests; the client answers each with
 * messages to `owner` (system messages, from = no actor, arg = the
 * request's id), in this order:
 *   TR_GEN_TAG_OAI_DELTA  streamed requests only, zero or more: body
 *                         {text = "<the content since the last delta>"},
 *                         ready to be passed on as a TR_TAG_STEP_DELTA body;
 *   TR_GEN_TAG_OAI_DONE   exactly one (unless the client is stopped
 *                         first): err = TR_OK and body {text, finish?,
 *                         prompt_tokens?, completion_tokens?} (the usage
 *                         keys only when the server reported them), or err
 *                         = the error's class (below) and body {message,
 *                         retry_after_ms?}; an empty body when even that
 *                         could not be allocated (then err is TR_ENOMEM).
 * Error classes, chosen so that a step's retry_on means something:
 *   TR_ETIMEDOUT  connect, first byte or total timeout; HTTP 408, 504
 *   TR_EREJECTED  HTTP 429 and 503 (the server is overloaded; the
 *                 message gives its Retry-After)
 *   TR_EINVAL     any other HTTP 4xx (the request is wrong: not retried)
 *   TR_EFAILED    connection refused or cut, other HTTP 5xx, a response
 *                 that is not what the protocol says
 */
#define TR_GEN_TAG_OAI_DELTA 0x1f0u
#define TR_GEN_TAG_OAI_DONE 0x1f1u

typedef struct tr_oai tr_oai;

typedef struct tr_oai_cfg {
	tr_node *node;
	tr_ref owner;          /* gets the messages above */
	const char *url;       /* the endpoint itself (.../chat/completions) */
	const char *api_key;   /* NULL: no Authorization header */
	uint32_t connect_ms;   /* connect_timeout */
	uint32_t first_byte_ms;/* first_byte_timeout: until the first body byte */
	uint32_t max_conns;    /* connections kept in the pool */
} tr_oai_cfg;

/* Starts a client (its thread runs until tr_oai_stop). cfg's strings are
 * copied. TR_OK, TR_ENOMEM or TR_EFAILED (no thread, no loop, no curl). */
int tr_oai_start(const tr_oai_cfg *cfg, tr_oai **out);
/*
 * Hands a request to the client: POST body[0..len) (JSON; taken over, a
 * tr__malloc'd buffer, whatever the result), as a stream of deltas if
 * `stream`, to be done within total_ms (by_deadline: total_ms is what was
 * left of the step's deadline, for the message). Thread-safe, never
 * blocks on I/O. TR_OK (one DONE will come), TR_ENOMEM or TR_ESHUTDOWN.
 */
int tr_oai_submit(tr_oai *c, uint64_t id, char *body, size_t len, int stream, uint32_t total_ms,
                  int by_deadline);
/* Aborts every request (no more messages are sent for them), stops the
 * thread and joins it, frees c. Blocks for as long as closing the
 * connections takes (no network round trip). NULL is a no-op. */
void tr_oai_stop(tr_oai *c);

#endif
