/*
 * actors/intent/intent.h -- the intent kind's model: rules and a naive
 * Bayes classifier built from the actor's settings, and the classifier
 * call the actor makes per message. Internal to the kind and its tests.
 *
 * A model is built once (init, and `troupe check` through
 * tr_intent_check), then only read: tr__intent_classify allocates
 * nothing and never fails, whatever the bytes of the text.
 */
#ifndef TR_ACTORS_INTENT_H
#define TR_ACTORS_INTENT_H

#include <stddef.h>
#include <stdint.h>

#include "pipe/spec.h"

/* Intents one model may know; a rule may name this many slots. */
#define TR_INTENT_MAX_LABELS 64
#define TR_INTENT_MAX_SLOTS 16

typedef struct tr_intent_model tr_intent_model;

typedef struct tr_intent_slot {
	const char *name;  /* the rule's slot name (owned by the model) */
	const char *value; /* points into the classified text */
	size_t len;
} tr_intent_slot;

typedef struct tr_intent_result {
	const char *intent; /* NUL-terminated, owned by the model */
	double confidence;  /* 1.0 for a rule; the posterior for the classifier */
	int rule;           /* index of the rule that matched; -1: the classifier */
	int fell_back;      /* 1: the winner was below threshold, intent = fallback */
	unsigned nslots;
	tr_intent_slot slots[TR_INTENT_MAX_SLOTS];
} tr_intent_result;

/* Builds the model from a's settings. TR_OK and *out (free with
 * tr__intent_free), or an error code with the first problem in err
 * ("actor 'intent': rules[1].pattern: ..."). */
int tr__intent_build(const tr_actor_spec *a, tr_intent_model **out, char *err, size_t errlen);
void tr__intent_free(tr_intent_model *m);

/* Classifies text[0..n) (any bytes; no NUL needed). Slots point into
 * text, so they live as long as it does. */
void tr__intent_classify(const tr_intent_model *m, const char *text, size_t n,
                         tr_intent_result *r);

/* What the model knows, for tests and logs. */
size_t tr__intent_vocab(const tr_intent_model *m);
size_t tr__intent_nlabels(const tr_intent_model *m);
const char *tr__intent_fallback(const tr_intent_model *m);

/* The built-in examples (defaults.c), used when `examples` is absent:
 * label/text pairs, terminated by {NULL, NULL}. */
typedef struct tr_intent_example {
	const char *label;
	const char *text;
} tr_intent_example;
extern const tr_intent_example tr__intent_defaults[];

#endif
