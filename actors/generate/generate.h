/*
 * actors/generate/generate.h -- the generate kind: turns a question and
 * the passages rag found into an answer that cites them.
 *
 * Backends: "extractive" (the default and, for now, the only one) builds
 * the answer from the passages' own sentences, deterministically, with no
 * model. The kind's ops and check are declared in actors/kinds.h; this
 * header holds the streaming protocol and what generate.c and
 * extractive.c share.
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
 * TR_GEN_SENTENCES_MAX per ask.
 * Chunks are whole sentences with their citation markers; a chunk after
 * the first starts with the space that separates it from the previous
 * one, so the chunks, concatenated in the order received, are exactly
 * the reply's `answer` (the fallback answer is one chunk). Deltas are
 * best effort: if one cannot be sent (out of memory, asker gone), the
 * rest of that answer's are not sent either, so a receiver sees a
 * prefix of the chunks, never a gap; the reply is authoritative. The
 * engine does not forward deltas yet (it ignores messages it does not
 * know), so stream = true is safe today. The tag lives here, not in
 * actors/kit.h, until the engine adopts it.
 */
#ifndef TR_ACTORS_GENERATE_H
#define TR_ACTORS_GENERATE_H

#include <stddef.h>
#include <stdint.h>

#include <troupe/msg.h>

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

#endif
