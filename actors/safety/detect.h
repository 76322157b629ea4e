/*
 * actors/safety/detect.h -- what the safety kind looks for, shared by the
 * actor (safety.c, whole messages) and the stream redactor (stream.c,
 * chunks): the rules built from an actor's settings, and the detectors.
 *
 *   PII         email, phone, card (Luhn), IBAN (mod 97), custom POSIX ERE
 *               patterns; found as sorted, non-overlapping byte spans and
 *               replaced by a label ("[EMAIL]", "[EMPLOYEE_ID]").
 *   blocklist   whole words or phrases, ASCII case-insensitive.
 *   injection   a small scored list of prompt-injection phrases, role
 *               markers and long base64-looking blobs (input only).
 *
 * Design notes. Every detector reads bytes, not characters: the built-in
 * ones only ever match ASCII, so their spans start and end on character
 * boundaries of any UTF-8 text; spans from custom patterns (which may
 * match single bytes of a multibyte character) are widened to whole
 * characters. Invalid UTF-8 is read as-is and never makes a detector read
 * outside the text. Detection is linear in the text (a custom pattern
 * costs what glibc's regexec costs).
 *
 * Each match's extent depends on at most TR_SAFETY_REACH bytes around it
 * (an email: at most TR_SAFETY_EMAIL_MAX), which is what lets the stream
 * redactor decide a chunk's fate from a bounded window.
 */
#ifndef TR_ACTORS_SAFETY_DETECT_H
#define TR_ACTORS_SAFETY_DETECT_H

#include <regex.h>
#include <stddef.h>
#include <stdint.h>

#include <troupe/msg.h>

#include "pipe/spec.h"

/* Match kinds: the built-in detectors, then custom pattern i as
 * TR_SAFETY_CUSTOM + i. */
enum {
	TR_SAFETY_EMAIL = 0,
	TR_SAFETY_PHONE,
	TR_SAFETY_CARD,
	TR_SAFETY_IBAN,
	TR_SAFETY_CUSTOM
};

#define TR_SAFETY_PATTERNS_MAX 32 /* custom patterns per actor */
#define TR_SAFETY_WORDS_MAX 1024  /* blocklist entries per actor */
#define TR_SAFETY_WORD_LEN 128    /* longest blocklist entry, bytes */
/* The longest built-in non-email match plus the text after it that can
 * change it (a phone needs to see its 16th digit to know it has none). */
#define TR_SAFETY_REACH 64
/* The longest email the detector returns: 64 bytes of local part, '@',
 * 255 of domain. */
#define TR_SAFETY_EMAIL_MAX 320

/* What a check does when it fires (settings on_pii, on_blocklist,
 * on_injection); ordered, so the verdict is the largest. */
enum { TR_SAFETY_ALLOW = 0, TR_SAFETY_REDACT = 1, TR_SAFETY_BLOCK = 2 };

typedef struct tr_safety_pattern {
	char *name;      /* as configured */
	char label[40];  /* "[EMPLOYEE_ID]" */
	size_t label_len;
	regex_t re;
	int compiled;
} tr_safety_pattern;

typedef struct tr_safety_word {
	char *text;   /* as configured (for reasons) */
	char *lower;  /* ASCII-lowercased, compared against the text */
	size_t len;
	uint8_t wstart, wend; /* 1: its first/last byte is a word byte, so the
	                       * text must have a word boundary there */
} tr_safety_word;

/*
 * The rules of one actor, built from its settings by tr_safety_rules_load
 * and read-only afterwards (the stream redactor borrows them). Owns every
 * string and compiled pattern; free with tr_safety_rules_free.
 */
typedef struct tr_safety_rules {
	unsigned pii;                 /* bit k: built-in detector k is on */
	tr_safety_pattern *pats;
	size_t npats;
	tr_safety_word *words;        /* sorted by first byte of `lower` */
	size_t nwords;
	uint16_t first[257];          /* words[first[c]..first[c+1]) start with c */
	size_t maxword;
	uint8_t on_pii, on_blocklist, on_injection;
	double inj_threshold;
	uint64_t max_input, max_output; /* bytes; 0 = no limit */
	char *refusal;
	size_t refusal_len;
	int block_as_error;
	unsigned phone_min;           /* digits of a phone without a leading + */
	size_t window;                /* stream hold-back, bytes */
} tr_safety_rules;

/*
 * Reads a's settings into r: TR_OK, TR_EINVAL with the first problem in
 * err ("actor 'safety': on_pii: ..."), or TR_ENOMEM. r is always safe to
 * free afterwards, whatever the result.
 */
int tr_safety_rules_load(tr_safety_rules *r, const tr_actor_spec *a, char *err, size_t errlen);
void tr_safety_rules_free(tr_safety_rules *r);

/* The replacement text of a match kind ("[EMAIL]") and a short name for
 * reasons ("email", or the pattern's name). */
const char *tr_safety_label(const tr_safety_rules *r, unsigned kind, size_t *len);
const char *tr_safety_kind_name(const tr_safety_rules *r, unsigned kind);

typedef struct tr_safety_match {
	size_t start, end; /* bytes [start, end) */
	unsigned kind;
} tr_safety_match;

/* Scratch space the detectors reuse from call to call, so that a warm
 * actor does not allocate per message. One owner at a time. */
typedef struct tr_safety_scan {
	tr_safety_match *m; /* results of the last tr_safety_pii */
	size_t n, cap;
	uint32_t *tok;      /* word tokens (start, length pairs) for injection */
	size_t ntok, tokcap;
	char *cstr;         /* the text NUL-terminated, for regexec */
	size_t cstrcap;
} tr_safety_scan;

void tr_safety_scan_init(tr_safety_scan *sc);
void tr_safety_scan_free(tr_safety_scan *sc);
/* Frees the scratch if it grew past `keep` bytes (after a huge text), so
 * that an idle owner does not pin it. */
void tr_safety_scan_trim(tr_safety_scan *sc, size_t keep);

/*
 * Finds the PII in s[0..n): sc->m[0..sc->n) sorted by start and
 * non-overlapping (where two candidates overlap the longer wins, then
 * the earlier kind: email, phone, card, iban, patterns in order).
 * TR_OK or TR_ENOMEM.
 */
int tr_safety_pii(const tr_safety_rules *r, tr_safety_scan *sc, const char *s, size_t n);

/*
 * Blocklist hits in s[0..n): the indexes (into r->words) of up to `max`
 * distinct entries found, in order of first appearance, in hits; returns
 * how many. If end_pending, a hit that ends exactly at n does not count
 * (the next byte, not yet seen, might extend the word). *first_end (if
 * not NULL) is where the first hit ends.
 */
size_t tr_safety_blocklist(const tr_safety_rules *r, const char *s, size_t n, int end_pending,
                           size_t *hits, size_t max, size_t *first_end);

/*
 * Scores s[0..n) for prompt injection: the sum of the scores of the
 * distinct rules that match (each counts once). The names of the rules
 * that matched go into why (comma-separated, truncated to whylen).
 * TR_ENOMEM only if the token scratch cannot grow.
 */
int tr_safety_injection(tr_safety_scan *sc, const char *s, size_t n, double *score, char *why,
                        size_t whylen);

/* Appends s[0..n) to out with each match replaced by its label. */
int tr_safety_redact(const tr_safety_rules *r, const char *s, size_t n,
                     const tr_safety_match *m, size_t nm, tr_buf *out);

/* Detector internals, exposed for the tests. */
int tr_safety_luhn(const char *digits, size_t n);
int tr_safety_iban_ok(const char *s, size_t n); /* s: no spaces */

#endif
