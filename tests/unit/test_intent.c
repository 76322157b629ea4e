/*
 * test_intent.c -- the intent kind: accuracy on a held-out set (trained
 * from tests/data/intent/train.txt, scored on heldout.txt), the built-in
 * examples on the same set, rules (regex with slots, Lua-style classes,
 * keywords, order), threshold and fallback, labels, words (UTF-8 kept
 * whole, invalid UTF-8, huge text), every settings error with its exact
 * message (built in C, and through the Lua loader with file:line, and
 * through `troupe check`), the cost of one classification, and the actor
 * on a real node answering good and bad messages.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <msgpack.h>
#include <troupe/troupe.h>

#include "actors/intent/intent.h"
#include "actors/kinds.h"
#include "actors/kit.h"
#include "core/alloc.h"
#include "lua/tlua.h"
#include "msg/msg_int.h"
#include "pipe/mp.h"
#include "tt.h"
#include "tnode.h"

#define ROOT TR_SOURCE_ROOT

/* ---- settings built in C ------------------------------------------------ */

typedef struct exset {
	char *label[1024];
	char *text[1024];
	size_t n;
} exset;

/* Reads "label<TAB>text" lines ('#' lines are comments). */
static int read_set(const char *path, exset *s)
{
	char line[1024];
	FILE *f = fopen(path, "r");
	s->n = 0;
	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL && s->n < 1024) {
		line[strcspn(line, "\r\n")] = '\0';
		char *tab = strchr(line, '\t');
		if (line[0] == '#' || tab == NULL)
			continue;
		*tab = '\0';
		s->label[s->n] = strdup(line);
		s->text[s->n] = strdup(tab + 1);
		s->n++;
	}
	fclose(f);
	return 0;
}

static void free_set(exset *s)
{
	for (size_t i = 0; i < s->n; i++) {
		free(s->label[i]);
		free(s->text[i]);
	}
	s->n = 0;
}

/* {examples = {label = {text...}...}, bigrams = b} from a set. */
static void pack_examples(const exset *s, int bigrams, tr_buf *out)
{
	msgpack_packer pk;
	const char *labels[64];
	size_t nl = 0;
	tr__mp_packer(&pk, out);
	for (size_t i = 0; i < s->n; i++) {
		size_t j;
		for (j = 0; j < nl && strcmp(labels[j], s->label[i]) != 0; j++)
			;
		if (j == nl)
			labels[nl++] = s->label[i];
	}
	msgpack_pack_map(&pk, bigrams >= 0 ? 2 : 1);
	tr__mp_pack_cstr(&pk, "examples");
	msgpack_pack_map(&pk, nl);
	for (size_t j = 0; j < nl; j++) {
		size_t n = 0;
		for (size_t i = 0; i < s->n; i++)
			n += strcmp(s->label[i], labels[j]) == 0;
		tr__mp_pack_cstr(&pk, labels[j]);
		msgpack_pack_array(&pk, n);
		for (size_t i = 0; i < s->n; i++)
			if (strcmp(s->label[i], labels[j]) == 0)
				tr__mp_pack_cstr(&pk, s->text[i]);
	}
	if (bigrams >= 0) {
		tr__mp_pack_cstr(&pk, "bigrams");
		if (bigrams)
			msgpack_pack_true(&pk);
		else
			msgpack_pack_false(&pk);
	}
}

static char errbuf[512];

#define BUILD_MP(lit, m) build_mp(lit, sizeof(lit) - 1, m)
#define REQ_RAW(lit) req_raw(lit, sizeof(lit) - 1)

static int build_mp(const void *cfg, size_t len, tr_intent_model **m)
{
	tr_actor_spec a;
	memset(&a, 0, sizeof(a));
	a.name = (char *)"intent";
	a.receive_fn = -1;
	a.instances = 1;
	a.config = (unsigned char *)cfg;
	a.config_len = len;
	return tr__intent_build(&a, m, errbuf, sizeof(errbuf));
}

/* Scores model m on a set: returns correct answers. */
static size_t score(const tr_intent_model *m, const exset *s, int verbose)
{
	size_t ok = 0;
	for (size_t i = 0; i < s->n; i++) {
		tr_intent_result r;
		tr__intent_classify(m, s->text[i], strlen(s->text[i]), &r);
		if (strcmp(r.intent, s->label[i]) == 0)
			ok++;
		else if (verbose)
			fprintf(stderr, "    miss: %-9s -> %-9s %.2f  \"%s\"\n", s->label[i], r.intent,
			        r.confidence, s->text[i]);
	}
	return ok;
}

/* ---- settings through the Lua loader ----------------------------------- */

static char lua_path[64];
static tr_config *lua_cfg;
static tr_diag lua_diag;

/* Loads `actor "intent" { kind = "intent", <settings> }` from a file:
 * TR_OK with *m built from the loaded spec, or the loader's error with
 * its first diagnostic in errbuf. */
static int build_lua(const char *settings, tr_intent_model **m)
{
	static int registered;
	int fd, rc;
	const char *files[1];
	if (!registered) {
		tr_actors_register_builtin();
		registered = 1;
	}
	*m = NULL;
	snprintf(lua_path, sizeof(lua_path), "/tmp/test_intent_XXXXXX.lua");
	fd = mkstemps(lua_path, 4);
	if (fd < 0)
		return TR_EFAILED;
	FILE *f = fdopen(fd, "w");
	fprintf(f, "actor \"intent\" { kind = \"intent\",\n  %s }\npipeline \"p\" { step \"intent\" {} }\n",
	        settings);
	fclose(f);
	files[0] = lua_path;
	tr_diag_init(&lua_diag);
	rc = tr_config_load(files, 1, &lua_cfg, &lua_diag);
	errbuf[0] = '\0';
	if (rc != TR_OK) {
		if (lua_diag.n > 0)
			snprintf(errbuf, sizeof(errbuf), "%s", lua_diag.msgs[0]);
	} else {
		rc = tr__intent_build(tr_config_actor(lua_cfg, "intent"), m, errbuf, sizeof(errbuf));
		tr_config_free(lua_cfg);
	}
	tr_diag_free(&lua_diag);
	unlink(lua_path);
	return rc;
}

/* The diagnostic without its "file:line: " (the file is a temp name). */
static const char *diag_msg(int *line)
{
	size_t n = strlen(lua_path);
	*line = 0;
	if (strncmp(errbuf, lua_path, n) != 0 || errbuf[n] != ':')
		return errbuf;
	*line = atoi(errbuf + n + 1);
	const char *p = strchr(errbuf + n + 1, ' ');
	return p ? p + 1 : errbuf;
}

static int classify_is(const tr_intent_model *m, const char *text, const char *want)
{
	tr_intent_result r;
	tr__intent_classify(m, text, strlen(text), &r);
	if (strcmp(r.intent, want) != 0)
		fprintf(stderr, "    \"%s\": got %s (%.3f), want %s\n", text, r.intent, r.confidence,
		        want);
	return strcmp(r.intent, want) == 0;
}

/* ---- accuracy ------------------------------------------------------------- */

TT_TEST(heldout_accuracy)
{
	exset train, held;
	tr_buf cfg;
	tr_intent_model *m;
	TT_EQ(read_set(ROOT "/tests/data/intent/train.txt", &train), 0);
	TT_EQ(read_set(ROOT "/tests/data/intent/heldout.txt", &held), 0);
	TT_ASSERT(train.n >= 60 && held.n >= 60);

	for (int bigrams = 0; bigrams <= 1; bigrams++) {
		tr_buf_init(&cfg);
		pack_examples(&train, bigrams, &cfg);
		TT_OK(build_mp(cfg.data, cfg.len, &m));
		tr_buf_free(&cfg);
		size_t ok = score(m, &held, !bigrams);
		double pct = 100.0 * (double)ok / (double)held.n;
		if (!bigrams)
			printf("intent accuracy: %.1f%% (%zu/%zu)\n", pct, ok, held.n);
		else
			printf("intent accuracy, with bigrams: %.1f%% (%zu/%zu)\n", pct, ok, held.n);
		fprintf(stderr, "  %s: %.1f%% (%zu/%zu), %zu features\n",
		        bigrams ? "unigrams+bigrams" : "unigrams", pct, ok, held.n, tr__intent_vocab(m));
		/* The training set itself must be learnt. */
		size_t self = score(m, &train, 0);
		tr__intent_free(m);
		TT_ASSERT(pct >= 80.0);
		TT_ASSERT(self * 100 >= train.n * 95);
	}
	free_set(&train);
	free_set(&held);
}

/* The built-in examples (what pipelines/assistant.lua gets) on the same
 * held-out set: they never saw it either. */
TT_TEST(defaults_accuracy)
{
	exset held;
	tr_intent_model *m;
	static const unsigned char labels[] = {
		0x81, 0xa6, 'l', 'a', 'b', 'e', 'l', 's', 0x93,
		0xa8, 'q', 'u', 'e', 's', 't', 'i', 'o', 'n',
		0xa6, 'a', 'c', 't', 'i', 'o', 'n',
		0xa8, 'c', 'h', 'i', 't', 'c', 'h', 'a', 't'};
	TT_EQ(read_set(ROOT "/tests/data/intent/heldout.txt", &held), 0);
	TT_OK(build_mp(labels, sizeof(labels), &m));
	TT_EQ(tr__intent_nlabels(m), 3);
	TT_STREQ(tr__intent_fallback(m), "question");
	size_t ok = score(m, &held, 1);
	double pct = 100.0 * (double)ok / (double)held.n;
	printf("intent accuracy, built-in examples: %.1f%% (%zu/%zu)\n", pct, ok, held.n);
	tr__intent_free(m);
	free_set(&held);
	TT_ASSERT(pct >= 75.0);
}

/* ---- rules ---------------------------------------------------------------- */

TT_TEST(regex_rule_slots)
{
	tr_intent_model *m;
	tr_intent_result r;
	const char *t;
	TT_OK(build_lua("rules = { { intent = \"action\", pattern = \"book (a|an) (%w+) on (%d+)\",\n"
	                "            slots = { \"_\", \"what\", \"day\" } } }", &m));
	t = "Please BOOK a Room on 12 thanks";
	tr__intent_classify(m, t, strlen(t), &r);
	TT_STREQ(r.intent, "action");
	TT_ASSERT(r.confidence == 1.0);
	TT_EQ(r.rule, 0);
	TT_EQ(r.nslots, 2);
	TT_STREQ(r.slots[0].name, "what");
	TT_EQ(r.slots[0].len, 4);
	TT_ASSERT(memcmp(r.slots[0].value, "Room", 4) == 0);
	TT_STREQ(r.slots[1].name, "day");
	TT_ASSERT(r.slots[1].len == 2 && memcmp(r.slots[1].value, "12", 2) == 0);
	/* %w takes UTF-8 words whole. */
	t = "book a caf\xc3\xa9 on 3";
	tr__intent_classify(m, t, strlen(t), &r);
	TT_EQ(r.rule, 0);
	TT_ASSERT(r.slots[0].len == 5 && memcmp(r.slots[0].value, "caf\xc3\xa9", 5) == 0);
	/* No match: the classifier (built-in examples) decides. */
	t = "book a room on friday";
	tr__intent_classify(m, t, strlen(t), &r);
	TT_EQ(r.rule, -1);
	TT_EQ(r.nslots, 0);
	/* A NUL byte in the text does not end it for the regex. */
	tr__intent_classify(m, "x\0book an owl on 7", 18, &r);
	TT_EQ(r.rule, 0);
	TT_ASSERT(r.slots[0].len == 3 && memcmp(r.slots[0].value, "owl", 3) == 0);
	tr__intent_free(m);

	/* Plain POSIX ERE works too; an optional group that took no part
	 * gives no slot; fewer names than groups is fine. */
	TT_OK(build_lua("rules = { { intent = \"action\", pattern = \"^remind me( at ([0-9]+))?\",\n"
	                "            slots = { \"_\", \"at\" } } }", &m));
	t = "remind me";
	tr__intent_classify(m, t, strlen(t), &r);
	TT_EQ(r.rule, 0);
	TT_EQ(r.nslots, 0);
	t = "Remind me at 5";
	tr__intent_classify(m, t, strlen(t), &r);
	TT_EQ(r.nslots, 1);
	TT_ASSERT(r.slots[0].len == 1 && r.slots[0].value[0] == '5');
	t = "please remind me";
	tr__intent_classify(m, t, strlen(t), &r);
	TT_EQ(r.rule, -1);
	tr__intent_free(m);

	/* Classes in and out of brackets, complements, %-escapes. */
	TT_OK(build_lua("rules = { { intent = \"action\", pattern = \"^order #[%d-]+%.$\" },\n"
	                "          { intent = \"chitchat\", pattern = \"^%S+ %%$\" } }", &m));
	TT_ASSERT(classify_is(m, "order #12-3.", "action"));
	tr__intent_classify(m, "order #12-3x", 12, &r);
	TT_EQ(r.rule, -1);
	tr__intent_classify(m, "100 %", 5, &r);
	TT_EQ(r.rule, 1);
	tr__intent_free(m);
}

TT_TEST(keyword_rules_and_order)
{
	tr_intent_model *m;
	tr_intent_result r;
	TT_OK(build_lua("examples = false, rules = {\n"
	                "  { intent = \"chitchat\", keywords = { \"hello\", \"hi\", \"Thank you\" } },\n"
	                "  { intent = \"action\", keywords = { \"restart\" } },\n"
	                "  { intent = \"action\", pattern = \"hello world\" } }", &m));
	TT_ASSERT(classify_is(m, "Hello there", "chitchat"));
	TT_ASSERT(classify_is(m, "well, HI!", "chitchat"));
	TT_ASSERT(classify_is(m, "thank   YOU.", "chitchat"));
	TT_ASSERT(classify_is(m, "restart rag", "action"));
	/* First matching rule wins: "hello world" is chitchat by rule 1. */
	tr__intent_classify(m, "hello world", 11, &r);
	TT_EQ(r.rule, 0);
	/* Whole words only: othello, this, thankyou match nothing. */
	tr__intent_classify(m, "othello this thankyou restarted", 31, &r);
	TT_EQ(r.rule, -1);
	/* No classifier: no rule means the fallback, confidence 0. */
	TT_STREQ(r.intent, "chitchat"); /* no "question": the first intent */
	TT_ASSERT(r.confidence == 0.0 && r.fell_back);
	tr__intent_classify(m, "thank", 5, &r);
	TT_EQ(r.rule, -1);
	tr__intent_free(m);
}

/* ---- threshold, fallback, labels ------------------------------------------ */

TT_TEST(threshold_and_fallback)
{
	tr_intent_model *m;
	tr_intent_result r;
	const char *t = "how do i restart the node";
	TT_OK(build_lua("threshold = 0, examples = { q = { \"how does it work\", \"what is it\" },\n"
	                "  a = { \"restart the node\", \"stop the node\" } }", &m));
	TT_STREQ(tr__intent_fallback(m), "a"); /* no question: first by name */
	tr__intent_classify(m, t, strlen(t), &r);
	TT_ASSERT(r.confidence > 0.0 && r.confidence < 1.0);
	double conf = r.confidence;
	const char *winner = r.intent;
	TT_EQ(r.fell_back, 0);
	TT_STREQ(winner, "a");
	tr__intent_free(m);

	/* Above the winner's confidence: the fallback, real confidence. */
	char set[256];
	snprintf(set, sizeof(set), "threshold = %.9f, fallback = \"other\", examples = { q = { "
	         "\"how does it work\", \"what is it\" }, a = { \"restart the node\", \"stop the node\" } }",
	         (conf + 1.0) / 2);
	TT_OK(build_lua(set, &m));
	tr__intent_classify(m, t, strlen(t), &r);
	TT_STREQ(r.intent, "other");
	TT_EQ(r.fell_back, 1);
	TT_ASSERT(r.confidence > conf - 1e-9 && r.confidence < conf + 1e-9);
	TT_ASSERT(r.confidence < (conf + 1.0) / 2);
	/* Unknown words only, or none: the fallback with confidence 0. */
	tr__intent_classify(m, "zzz qqq", 7, &r);
	TT_STREQ(r.intent, "other");
	TT_ASSERT(r.confidence == 0.0);
	tr__intent_classify(m, "", 0, &r);
	TT_STREQ(r.intent, "other");
	tr__intent_classify(m, NULL, 0, &r);
	TT_STREQ(r.intent, "other");
	tr__intent_classify(m, " ,.!? ", 6, &r);
	TT_ASSERT(r.confidence == 0.0);
	tr__intent_free(m);

	/* Defaults: labels, threshold 0.5, fallback question. */
	TT_OK(build_lua("labels = { \"question\", \"action\", \"chitchat\" }", &m));
	TT_STREQ(tr__intent_fallback(m), "question");
	TT_ASSERT(classify_is(m, "thanks a lot", "chitchat"));
	TT_ASSERT(classify_is(m, "restart the generate actor please", "action"));
	TT_ASSERT(classify_is(m, "how do i configure the cache", "question"));
	tr__intent_free(m);
	/* labels narrow the built-in examples; the first label is the
	 * fallback when there is no question. */
	TT_OK(build_lua("labels = { \"chitchat\", \"action\", \"billing\" }", &m));
	TT_STREQ(tr__intent_fallback(m), "chitchat");
	tr__intent_classify(m, "how do i configure the cache", 28, &r);
	TT_ASSERT(strcmp(r.intent, "chitchat") == 0 || strcmp(r.intent, "action") == 0);
	tr__intent_free(m);
}

TT_TEST(words_utf8_and_bytes)
{
	tr_intent_model *m;
	tr_intent_result r;
	TT_OK(build_lua("examples = { action = { \"r\xc3\xa9server une salle\", \"\xe4\xba\x88\xe7\xb4\x84\" },\n"
	                "  question = { \"qu'est-ce que c'est\", \"o\xc3\xb9 est la gare\" } }", &m));
	TT_ASSERT(classify_is(m, "R\xc3\xa9SERVER!", "action")); /* ASCII folds, é stays */
	TT_ASSERT(classify_is(m, "\xe4\xba\x88\xe7\xb4\x84 ok", "action"));
	/* Bytes, not characters: "。" (E3 80 82) sticks to the word before it,
	 * which is then a word the examples never had. */
	tr__intent_classify(m, "\xe4\xba\x88\xe7\xb4\x84\xe3\x80\x82", 9, &r);
	TT_ASSERT(r.confidence == 0.0 && r.fell_back);
	TT_ASSERT(classify_is(m, "o\xc3\xb9?", "question"));
	/* Invalid UTF-8: just bytes; no crash, a sane answer. */
	const char bad[] = "\xff\xfe r\xc3\xa9server \xc3\x28 \xa0\xa1 \xed\xa0\x80 \xf8\x88\x80\x80\x80";
	tr__intent_classify(m, bad, sizeof(bad) - 1, &r);
	TT_STREQ(r.intent, "action");
	for (unsigned b = 0; b < 256; b++) {
		char one = (char)b;
		tr__intent_classify(m, &one, 1, &r);
		TT_ASSERT(r.confidence >= 0.0 && r.confidence <= 1.0);
	}
	tr__intent_free(m);
}

TT_TEST(huge_text)
{
	tr_intent_model *m;
	tr_intent_result r;
	size_t n = 1u << 20;
	char *t = malloc(n);
	TT_OK(build_lua("rules = { { intent = \"action\", pattern = \"book (a|an) (%w+) on (%d+)\", "
	                "slots = { \"_\", \"what\", \"day\" } } }", &m));
	for (size_t i = 0; i < n; i++)
		t[i] = "how do retries work "[i % 20];
	uint64_t t0 = tr_now_ns();
	tr__intent_classify(m, t, n, &r);
	uint64_t ns = tr_now_ns() - t0;
	TT_STREQ(r.intent, "question");
	fprintf(stderr, "  1 MiB of words: %.2f ms\n", (double)ns / 1e6);
	/* One word of 1 MiB. */
	memset(t, 'a', n);
	tr__intent_classify(m, t, n, &r);
	TT_ASSERT(r.confidence == 0.0);
	/* A match at the very end of 1 MiB. */
	memcpy(t + n - 17, " book a x on 9 ", 15);
	t[n - 2] = ' ';
	t[n - 1] = ' ';
	tr__intent_classify(m, t, n, &r);
	TT_EQ(r.rule, 0);
	tr__intent_free(m);
	free(t);
	TT_ASSERT(tn_quick() || ns < 200u * 1000000u);
}

/* ---- cost ------------------------------------------------------------------ */

TT_TEST(classify_cost)
{
	exset train;
	tr_buf cfg;
	tr_intent_model *m;
	tr_intent_result r;
	static const char *const texts[] = {"how do retries work in a pipeline",
	                                     "restart the rag actor now", "thanks a lot",
	                                     "what is the default mailbox size"};
	size_t lens[4];
	for (int i = 0; i < 4; i++)
		lens[i] = strlen(texts[i]);
	TT_EQ(read_set(ROOT "/tests/data/intent/train.txt", &train), 0);
	for (int bigrams = 0; bigrams <= 1; bigrams++) {
		tr_buf_init(&cfg);
		pack_examples(&train, bigrams, &cfg);
		TT_OK(build_mp(cfg.data, cfg.len, &m));
		tr_buf_free(&cfg);
		int iters = tn_quick() ? 20000 : 400000;
		double sink = 0;
		uint64_t t0 = tr_now_ns();
		for (int i = 0; i < iters; i++) {
			tr__intent_classify(m, texts[i & 3], lens[i & 3], &r);
			sink += r.confidence;
		}
		double per = (double)(tr_now_ns() - t0) / iters;
		printf("intent classify%s: %.0f ns per short sentence (%zu features, 3 intents)\n",
		       bigrams ? " with bigrams" : "", per, tr__intent_vocab(m));
		tr__intent_free(m);
		TT_ASSERT(sink > 0);
		TT_ASSERT(tn_quick() || per < 10000.0);
	}
	free_set(&train);

	/* The brief's two rules in front of the built-in examples: a text
	 * the pattern matches (with two slots), and one that falls through
	 * both rules to the classifier. */
	TT_OK(build_lua("rules = { { intent = \"action\", pattern = \"book (a|an) (%w+) on (%d+)\",\n"
	                "  slots = { \"_\", \"what\", \"day\" } },\n"
	                "  { intent = \"chitchat\", keywords = { \"hello\", \"hi\", \"thanks\" } } }",
	                &m));
	static const char *const rtexts[] = {"Book a room on 12", "how do i restart the rag actor"};
	for (int k = 0; k < 2; k++) {
		int iters = tn_quick() ? 5000 : 100000;
		size_t len = strlen(rtexts[k]);
		uint64_t t0 = tr_now_ns();
		for (int i = 0; i < iters; i++)
			tr__intent_classify(m, rtexts[k], len, &r);
		double per = (double)(tr_now_ns() - t0) / iters;
		printf("intent classify, 2 rules, %s: %.0f ns\n",
		       k == 0 ? "pattern matches" : "no rule matches", per);
		TT_EQ(r.rule, k == 0 ? 0 : -1);
		TT_ASSERT(tn_quick() || per < 20000.0);
	}
	tr__intent_free(m);
}

/* ---- settings errors ------------------------------------------------------- */

struct bad_case {
	const char *settings;
	const char *msg;
};

static const struct bad_case bad_lua[] = {
	{"threshhold = 0.3", "actor 'intent': unknown setting 'threshhold' (did you mean 'threshold'?)"},
	{"colour = 1", "actor 'intent': unknown setting 'colour' (this kind takes labels, rules, "
	               "examples, threshold, fallback, bigrams, smoothing)"},
	{"threshold = 2", "actor 'intent': threshold: must be between 0 and 1, got 2"},
	{"threshold = \"high\"", "actor 'intent': threshold: expected a number, got string"},
	{"bigrams = 1", "actor 'intent': bigrams: expected true or false, got integer"},
	{"smoothing = 0", "actor 'intent': smoothing: must be between 0.001 and 100, got 0"},
	{"labels = \"question\"", "actor 'intent': labels: expected a list of intent names, got string"},
	{"labels = {}", "actor 'intent': labels: must name at least one intent"},
	{"labels = { \"a\", \"a\" }", "actor 'intent': labels[2]: 'a' is listed twice"},
	{"labels = { \"a\", 3 }", "actor 'intent': labels[2]: expected a string, got integer"},
	{"labels = { \"\" }", "actor 'intent': labels[1]: an intent name must not be empty"},
	{"examples = {}", "actor 'intent': examples: is empty (give some, or examples = false for "
	                  "rules only)"},
	{"examples = { q = {} }", "actor 'intent': examples.q: no examples"},
	{"examples = { q = \"how\" }", "actor 'intent': examples.q: expected a list of example "
	                               "texts, got string"},
	{"examples = { q = { \"how\", 7 } }", "actor 'intent': examples.q[2]: expected a string, "
	                                      "got integer"},
	{"examples = { q = { \"how\", \"?!\" } }", "actor 'intent': examples.q[2]: '?!' has no word "
	                                           "in it"},
	{"examples = { \"how\" }", "actor 'intent': examples: expected a table { intent = { \"text\", "
	                           "... } }, got list"},
	{"examples = true", "actor 'intent': examples: expected a table { intent = { \"text\", ... } "
	                    "}, got boolean"},
	{"examples = { [1] = { \"x\" }, b = { \"y\" } }",
	 "actor 'intent': examples: keys must be intent names (strings), got integer"},
	{"labels = { \"question\" }, examples = { action = { \"do it\" } }",
	 "actor 'intent': examples: intent 'action' is not one of labels (question)"},
	{"labels = { \"question\", \"action\" }, rules = { { intent = \"chitchat\", keywords = { "
	 "\"hi\" } } }",
	 "actor 'intent': rules[1].intent: intent 'chitchat' is not one of labels (question, action)"},
	{"labels = { \"question\", \"action\" }, fallback = \"other\"",
	 "actor 'intent': fallback: intent 'other' is not one of labels (question, action)"},
	{"fallback = 3", "actor 'intent': fallback: expected a string, got integer"},
	{"fallback = \"\"", "actor 'intent': fallback: must be a non-empty intent name"},
	{"examples = false", "actor 'intent': examples = false needs rules (nothing to classify with)"},
	{"labels = { \"billing\" }", "actor 'intent': nothing to classify with: the built-in examples "
	                             "cover none of labels; give examples or rules"},
	{"rules = \"x\"", "actor 'intent': rules: expected a list of rules, got string"},
	{"rules = { \"x\" }", "actor 'intent': rules[1]: expected a table { intent = ..., pattern = "
	                      "... }, got string"},
	{"rules = { { pattern = \"x\" } }", "actor 'intent': rules[1]: intent is missing"},
	{"rules = { { intent = 1, pattern = \"x\" } }", "actor 'intent': rules[1].intent: expected "
	                                                "a string, got integer"},
	{"rules = { { intent = \"a\" } }", "actor 'intent': rules[1]: give either pattern or keywords"},
	{"rules = { { intent = \"a\", pattern = \"x\", keywords = { \"y\" } } }",
	 "actor 'intent': rules[1]: give either pattern or keywords"},
	{"rules = { { intent = \"a\", patern = \"x\" } }",
	 "actor 'intent': rules[1]: unknown key 'patern' (a rule takes intent, pattern, keywords, "
	 "slots)"},
	{"rules = { { intent = \"a\", pattern = \"x(\" } }",
	 "actor 'intent': rules[1].pattern: bad regex 'x(': Unmatched ( or \\("},
	/* glibc's regcomp copies repeated trees: these took gigabytes (the
	 * first one found by fuzz_lua_check), now refused by tr_kregex_check. */
	{"rules = { { intent = \"a\", pattern = \"x++++++++++++++++++++++++++++++++\" } }",
	 "actor 'intent': rules[1].pattern: refused: a quantifier right after another one (near "
	 "offset 2)"},
	{"rules = { { intent = \"a\", pattern = \"((a{200}){200}){200}\" } }",
	 "actor 'intent': rules[1].pattern: refused: it would compile too large (counted or stacked "
	 "repetitions: about 8161203 nodes, at most 100000)"},
	{"rules = { { intent = \"a\", pattern = \"a{2\" } }",
	 "actor 'intent': rules[1].pattern: bad regex 'a{2': Unmatched \\{"},
	{"rules = { { intent = \"a\", pattern = \"[z-a]\" } }",
	 "actor 'intent': rules[1].pattern: bad regex '[z-a]': Invalid range end"},
	{"rules = { { intent = \"a\", pattern = \"\" } }", "actor 'intent': rules[1].pattern: is empty"},
	{"rules = { { intent = \"a\", pattern = 5 } }",
	 "actor 'intent': rules[1].pattern: expected a string, got integer"},
	{"rules = { { intent = \"a\", pattern = \"100%\" } }",
	 "actor 'intent': rules[1].pattern: ends with '%' (write %% for a percent sign)"},
	{"rules = { { intent = \"a\", pattern = \"%q\" } }",
	 "actor 'intent': rules[1].pattern: unknown class '%q' (classes: %a %c %d %l %p %s %u %w %x, "
	 "capitals for their complements, %% for a percent sign)"},
	{"rules = { { intent = \"a\", pattern = \"[%W]\" } }",
	 "actor 'intent': rules[1].pattern: %W inside [...] is not supported"},
	{"rules = { { intent = \"a\", pattern = \"a\\0b\" } }",
	 "actor 'intent': rules[1].pattern: contains a NUL byte"},
	{"rules = { { intent = \"a\", pattern = \"(x)\", slots = { \"p\", \"q\" } } }",
	 "actor 'intent': rules[1].slots: 2 names but the pattern has 1 group"},
	{"rules = { { intent = \"a\", pattern = \"(x)(y)\", slots = { \"p\", \"p\" } } }",
	 "actor 'intent': rules[1].slots[2]: 'p' is named twice"},
	{"rules = { { intent = \"a\", pattern = \"(x)\", slots = { 1 } } }",
	 "actor 'intent': rules[1].slots[1]: expected a string, got integer"},
	{"rules = { { intent = \"a\", pattern = \"(x)\", slots = \"p\" } }",
	 "actor 'intent': rules[1].slots: expected a list of names, got string"},
	{"rules = { { intent = \"a\", keywords = { \"hi\" }, slots = { \"p\" } } }",
	 "actor 'intent': rules[1].slots: only a pattern has slots"},
	{"rules = { { intent = \"a\", keywords = {} } }",
	 "actor 'intent': rules[1].keywords: the list is empty"},
	{"rules = { { intent = \"a\", keywords = \"hi\" } }",
	 "actor 'intent': rules[1].keywords: expected a list of strings, got string"},
	{"rules = { { intent = \"a\", keywords = { \"hi\", \"--\" } } }",
	 "actor 'intent': rules[1].keywords[2]: '--' has no word in it"},
	{"rules = { { intent = \"a\", keywords = { \"hi\" } }, { intent = \"\", keywords = { \"x\" } } }",
	 "actor 'intent': rules[2].intent: an intent name must not be empty"},
	{NULL, NULL},
};

TT_TEST(bad_settings_lua)
{
	tr_intent_model *m;
	for (const struct bad_case *b = bad_lua; b->settings; b++) {
		int line;
		int rc = build_lua(b->settings, &m);
		if (rc == TR_OK) {
			tr__intent_free(m);
			TT_FAIL_("accepted: %s", b->settings);
		}
		const char *msg = diag_msg(&line);
		if (strcmp(msg, b->msg) != 0)
			TT_FAIL_("%s\n    got:  %s\n    want: %s", b->settings, errbuf, b->msg);
		TT_EQ(line, 1); /* the actor's line */
	}
	/* Good ones, including {} as an empty list where a list may be
	 * empty, and slots with skipped groups. */
	TT_OK(build_lua("rules = {}, slots_are_not_here = nil, threshold = 0.7, smoothing = 0.5, "
	                "bigrams = false", &m));
	tr__intent_free(m);
	TT_OK(build_lua("rules = { { intent = \"a\", pattern = \"(x)(y)\", slots = {} } }", &m));
	tr__intent_free(m);
}

/* Settings the Lua loader cannot produce. */
TT_TEST(bad_settings_msgpack)
{
	tr_intent_model *m;
	/* Not a map. */
	TT_RC(BUILD_MP("\x91\x01", &m), TR_EINVAL);
	TT_STREQ(errbuf, "actor 'intent': settings are not a table");
	/* Truncated. */
	TT_RC(BUILD_MP("\x81\xa6labels", &m), TR_EINVAL);
	TT_STREQ(errbuf, "actor 'intent': settings are not a table");
	/* A non-string key. */
	TT_RC(BUILD_MP("\x81\x01\x02", &m), TR_EINVAL);
	TT_STREQ(errbuf, "actor 'intent': settings must have string keys");
	/* Binary where a string goes. */
	TT_RC(BUILD_MP("\x81\xa6labels\x91\xc4\x01x", &m), TR_EINVAL);
	TT_STREQ(errbuf, "actor 'intent': labels[1]: expected a string, got binary data");
	/* A NUL inside an intent name. */
	TT_RC(BUILD_MP("\x81\xa6labels\x91\xa3q\0x", &m), TR_EINVAL);
	TT_STREQ(errbuf, "actor 'intent': labels[1]: an intent name must not contain a NUL byte");
	/* No settings at all: the built-in examples, all three intents. */
	TT_OK(build_mp(NULL, 0, &m));
	TT_EQ(tr__intent_nlabels(m), 3);
	TT_STREQ(tr__intent_fallback(m), "question");
	tr__intent_free(m);
	/* 65 intents. */
	tr_buf b;
	msgpack_packer pk;
	char name[16];
	tr_buf_init(&b);
	tr__mp_packer(&pk, &b);
	msgpack_pack_map(&pk, 1);
	tr__mp_pack_cstr(&pk, "labels");
	msgpack_pack_array(&pk, 65);
	for (int i = 0; i < 65; i++) {
		snprintf(name, sizeof(name), "l%d", i);
		tr__mp_pack_cstr(&pk, name);
	}
	TT_RC(build_mp(b.data, b.len, &m), TR_EINVAL);
	tr_buf_free(&b);
	TT_STREQ(errbuf, "actor 'intent': labels[65]: too many intents (at most 64)");
	/* The check function says the same as init. */
	tr_actor_spec a;
	char err[256];
	memset(&a, 0, sizeof(a));
	a.name = (char *)"classify";
	a.config = (unsigned char *)"\x81\xa9threshold\xa1x";
	a.config_len = 13;
	TT_RC(tr_intent_check(&a, err, sizeof(err)), TR_EINVAL);
	TT_STREQ(err, "actor 'classify': threshold: expected a number, got string");
	a.config = NULL;
	a.config_len = 0;
	TT_OK(tr_intent_check(&a, err, sizeof(err)));
	/* Out of memory anywhere in the build: an error, no leak, no crash. */
	exset train;
	TT_EQ(read_set(ROOT "/tests/data/intent/train.txt", &train), 0);
	tr_buf_init(&b);
	pack_examples(&train, 1, &b);
	free_set(&train);
	int fails = 0;
	for (long k = 1; k < 400; k++) {
		tr__alloc_fail_after(k);
		int rc = build_mp(b.data, b.len, &m);
		tr__alloc_fail_after(0);
		if (rc == TR_OK) {
			tr__intent_free(m);
			break;
		}
		fails++;
	}
	tr_buf_free(&b);
	TT_ASSERT(fails > 5);
}

/* `troupe check` names the file and line. */
TT_TEST(troupe_check_reports)
{
	const char *exe = getenv("TROUPE_EXE");
	char path[64], cmd[512], out[1024];
	if (exe == NULL) {
		fprintf(stderr, "  TROUPE_EXE not set: skipped\n");
		return;
	}
	snprintf(path, sizeof(path), "/tmp/test_intent_check_XXXXXX.lua");
	int fd = mkstemps(path, 4);
	TT_ASSERT(fd >= 0);
	FILE *f = fdopen(fd, "w");
	fprintf(f, "-- a bad pattern on line 3\n\nactor \"intent\" { kind = \"intent\", rules = {\n"
	           "  { intent = \"action\", pattern = \"book (a|an\" } } }\n"
	           "pipeline \"p\" { step \"intent\" {} }\n");
	fclose(f);
	snprintf(cmd, sizeof(cmd), "%s check %s 2>&1", exe, path);
	FILE *p = popen(cmd, "r");
	size_t n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = '\0';
	int st = pclose(p);
	unlink(path);
	char want[512];
	snprintf(want, sizeof(want), "%s:3: actor 'intent': rules[1].pattern: bad regex 'book (a|an': "
	         "Unmatched ( or \\(\n", path);
	if (strcmp(out, want) != 0)
		TT_FAIL_("got: %s\nwant: %s", out, want);
	TT_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	/* The shipped assistant passes. */
	snprintf(cmd, sizeof(cmd), "%s check %s/pipelines/assistant.lua >/dev/null 2>&1", exe, ROOT);
	TT_EQ(system(cmd), 0);
}

/* ---- the actor on a node ---------------------------------------------------- */

enum { KICK = 1 };

static tr_ref actor_ref;
static tr_buf req;
static uv_mutex_t rep_mu;
static tr_buf rep;
static uint16_t rep_flags;
static int32_t rep_err;
static atomic_int replies;

static int client_msg(tr_ctx *ctx, probe *p, tr_msg *m)
{
	if (m->tag == KICK) {
		tr_msg *q = tr_msg_new();
		q->tag = (uint32_t)m->arg;
		if (req.len > 0)
			q->body = tr_body_new(req.data, req.len);
		return tr_ask(ctx, actor_ref, q, 10000, NULL);
	}
	if (m->flags & TR_MSGF_REPLY) {
		uv_mutex_lock(&rep_mu);
		rep.len = 0;
		if (m->body != NULL)
			tr__buf_append(&rep, m->body->data, m->body->len);
		rep_flags = m->flags;
		rep_err = m->err;
		uv_mutex_unlock(&rep_mu);
		atomic_fetch_add(&replies, 1);
	}
	return TR_OK;
}

/* Asks the actor with req (tag TR_TAG_STEP unless told); waits. */
static int ask(tr_node *node, tr_ref client, uint32_t tag)
{
	int before = atomic_load(&replies);
	if (tn_send(node, client, KICK, tag) != TR_OK)
		return 0;
	for (int i = 0; i < 2000 && atomic_load(&replies) == before; i++)
		tn_sleep_ms(1);
	return atomic_load(&replies) > before;
}

static void req_text(const char *text, size_t n, const char *extra_key)
{
	msgpack_packer pk;
	req.len = 0;
	tr__mp_packer(&pk, &req);
	msgpack_pack_map(&pk, extra_key ? 2 : 1);
	tr__mp_pack_cstr(&pk, "text");
	msgpack_pack_str(&pk, n);
	msgpack_pack_str_body(&pk, text, n);
	if (extra_key) {
		tr__mp_pack_cstr(&pk, extra_key);
		tr__mp_pack_cstr(&pk, "kept");
	}
}

static void req_raw(const void *p, size_t n)
{
	req.len = 0;
	tr__buf_append(&req, p, n);
}

/* The reply's string field k into buf ("" if absent or not a string). */
static const char *rep_str(const char *k, char *buf, size_t len)
{
	const unsigned char *v;
	const char *s;
	size_t vn, sn;
	buf[0] = '\0';
	if (tr__mp_map_get(rep.data, rep.len, k, &v, &vn) == TR_OK && tr__mp_str(v, vn, &s, &sn) == TR_OK)
		snprintf(buf, len, "%.*s", (int)sn, s);
	return buf;
}

static double rep_num(const char *k)
{
	msgpack_unpacked u;
	size_t off = 0;
	const unsigned char *v;
	size_t vn;
	double d = -1;
	if (tr__mp_map_get(rep.data, rep.len, k, &v, &vn) != TR_OK)
		return -2;
	msgpack_unpacked_init(&u);
	if (msgpack_unpack_next(&u, (const char *)v, vn, &off) == MSGPACK_UNPACK_SUCCESS &&
	    u.data.type == MSGPACK_OBJECT_FLOAT64)
		d = u.data.via.f64;
	msgpack_unpacked_destroy(&u);
	return d;
}

/* The reply's slots map as "k=v,k=v" (or "!" if not a map). */
static const char *rep_slots(char *buf, size_t len)
{
	msgpack_unpacked u;
	size_t off = 0, o = 0;
	const unsigned char *v;
	size_t vn;
	snprintf(buf, len, "!");
	if (tr__mp_map_get(rep.data, rep.len, "slots", &v, &vn) != TR_OK)
		return buf;
	msgpack_unpacked_init(&u);
	if (msgpack_unpack_next(&u, (const char *)v, vn, &off) == MSGPACK_UNPACK_SUCCESS &&
	    u.data.type == MSGPACK_OBJECT_MAP) {
		buf[0] = '\0';
		for (uint32_t i = 0; i < u.data.via.map.size; i++) {
			const msgpack_object_kv *kv = &u.data.via.map.ptr[i];
			o += (size_t)snprintf(buf + o, len - o, "%s%.*s=%.*s", i ? "," : "",
			                      (int)kv->key.via.str.size, kv->key.via.str.ptr,
			                      (int)kv->val.via.str.size, kv->val.via.str.ptr);
		}
	}
	msgpack_unpacked_destroy(&u);
	return buf;
}

static int rep_is_error(const char *want_msg)
{
	char b[256];
	if (!(rep_flags & TR_MSGF_ERROR) || rep_err != TR_EINVAL)
		return 0;
	rep_str("message", b, sizeof(b));
	if (strcmp(b, want_msg) != 0) {
		fprintf(stderr, "    message: \"%s\", want \"%s\"\n", b, want_msg);
		return 0;
	}
	return 1;
}

TT_TEST(actor_on_node)
{
	static probe_cfg ccfg;
	static tr_actor_spec spec;
	static tr_buf cfg;
	tr_ref client;
	tr_spawn_opts so;
	char b[256];
	uv_mutex_init(&rep_mu);
	tr_buf_init(&req);
	tr_buf_init(&rep);
	tr_buf_init(&cfg);
	{
		/* {rules = [{intent = action, pattern = ..., slots = [_, what, day]}],
		 *  labels = [question, action, chitchat]} */
		msgpack_packer pk;
		tr__mp_packer(&pk, &cfg);
		msgpack_pack_map(&pk, 2);
		tr__mp_pack_cstr(&pk, "rules");
		msgpack_pack_array(&pk, 1);
		msgpack_pack_map(&pk, 3);
		tr__mp_pack_cstr(&pk, "intent");
		tr__mp_pack_cstr(&pk, "action");
		tr__mp_pack_cstr(&pk, "pattern");
		tr__mp_pack_cstr(&pk, "book (a|an) (%w+) on (%d+)");
		tr__mp_pack_cstr(&pk, "slots");
		msgpack_pack_array(&pk, 3);
		tr__mp_pack_cstr(&pk, "_");
		tr__mp_pack_cstr(&pk, "what");
		tr__mp_pack_cstr(&pk, "day");
		tr__mp_pack_cstr(&pk, "labels");
		msgpack_pack_array(&pk, 3);
		tr__mp_pack_cstr(&pk, "question");
		tr__mp_pack_cstr(&pk, "action");
		tr__mp_pack_cstr(&pk, "chitchat");
	}
	memset(&spec, 0, sizeof(spec));
	spec.name = (char *)"intent";
	spec.kind = (char *)"intent";
	spec.instances = 1;
	spec.receive_fn = -1;
	spec.config = cfg.data;
	spec.config_len = cfg.len;

	tr_node *node = tn_start(2);
	TT_ASSERT(node != NULL);
	memset(&so, 0, sizeof(so));
	so.name = "intent";
	TT_OK(tr_node_spawn(node, &tr_intent_ops, &spec, &so, &actor_ref));
	ccfg = (probe_cfg){.id = 1, .on_msg = client_msg};
	TT_OK(tn_spawn(node, &ccfg, NULL, &client));

	/* A rule with slots; the other fields are kept. */
	req_text("Book an owl on 12", 17, "session");
	TT_ASSERT(ask(node, client, TR_TAG_STEP));
	TT_EQ(rep_flags & TR_MSGF_ERROR, 0);
	TT_STREQ(rep_str("intent", b, sizeof(b)), "action");
	TT_ASSERT(rep_num("confidence") == 1.0);
	TT_STREQ(rep_slots(b, sizeof(b)), "what=owl,day=12");
	TT_STREQ(rep_str("session", b, sizeof(b)), "kept");
	TT_STREQ(rep_str("text", b, sizeof(b)), "Book an owl on 12");

	/* The classifier: slots is an empty map. */
	req_text("thanks so much", 14, NULL);
	TT_ASSERT(ask(node, client, TR_TAG_STEP));
	TT_STREQ(rep_str("intent", b, sizeof(b)), "chitchat");
	double c = rep_num("confidence");
	TT_ASSERT(c >= 0.5 && c <= 1.0);
	TT_STREQ(rep_slots(b, sizeof(b)), "");

	/* Empty text: the fallback, confidence 0. */
	req_text("", 0, NULL);
	TT_ASSERT(ask(node, client, TR_TAG_STEP));
	TT_EQ(rep_flags & TR_MSGF_ERROR, 0);
	TT_STREQ(rep_str("intent", b, sizeof(b)), "question");
	TT_ASSERT(rep_num("confidence") == 0.0);

	/* Invalid UTF-8 is classified as bytes. */
	{
		static const char bad[] = "\xff\xfe restart \xc3\x28 the node \xed\xa0\x80";
		req_text(bad, sizeof(bad) - 1, NULL);
	}
	TT_ASSERT(ask(node, client, TR_TAG_STEP));
	TT_EQ(rep_flags & TR_MSGF_ERROR, 0);
	TT_STREQ(rep_str("intent", b, sizeof(b)), "action");

	/* 1 MiB of text. */
	{
		size_t n = 1u << 20;
		char *t = malloc(n);
		for (size_t i = 0; i < n; i++)
			t[i] = "hello there "[i % 12];
		req_text(t, n, NULL);
		free(t);
		TT_ASSERT(ask(node, client, TR_TAG_STEP));
		TT_EQ(rep_flags & TR_MSGF_ERROR, 0);
		TT_STREQ(rep_str("intent", b, sizeof(b)), "chitchat");
		TT_ASSERT(rep.len > n);
	}

	/* Bad messages: error replies with a message, the actor stays up. */
	REQ_RAW("\x81\xa4user\xa1x");
	TT_ASSERT(ask(node, client, TR_TAG_STEP));
	TT_ASSERT(rep_is_error("intent: the message has no 'text'"));
	REQ_RAW("\x81\xa4text\xc0"); /* text = nil */
	TT_ASSERT(ask(node, client, TR_TAG_STEP));
	TT_ASSERT(rep_is_error("intent: the message has no 'text'"));
	REQ_RAW("\x81\xa4text\x07");
	TT_ASSERT(ask(node, client, TR_TAG_STEP));
	TT_ASSERT(rep_is_error("intent: 'text' must be a string, got a number"));
	REQ_RAW("\x81\xa4text\x81\xa1k\xa1v");
	TT_ASSERT(ask(node, client, TR_TAG_STEP));
	TT_ASSERT(rep_is_error("intent: 'text' must be a string, got a table"));
	REQ_RAW("\x81\xa4text\x91\x01");
	TT_ASSERT(ask(node, client, TR_TAG_STEP));
	TT_ASSERT(rep_is_error("intent: 'text' must be a string, got a list"));
	REQ_RAW("\x81\xa4text\xc3");
	TT_ASSERT(ask(node, client, TR_TAG_STEP));
	TT_ASSERT(rep_is_error("intent: 'text' must be a string, got a boolean"));
	REQ_RAW("\x81\xa4text\xc4\x02hi");
	TT_ASSERT(ask(node, client, TR_TAG_STEP));
	TT_ASSERT(rep_is_error("intent: 'text' must be a string, got binary data"));
	REQ_RAW("\x92\x01\x02");
	TT_ASSERT(ask(node, client, TR_TAG_STEP));
	TT_ASSERT(rep_is_error("intent: the message is not a map"));
	REQ_RAW("\x85\xa4"); /* truncated */
	TT_ASSERT(ask(node, client, TR_TAG_STEP));
	TT_ASSERT(rep_is_error("intent: the message is not a map"));
	req.len = 0; /* no body */
	TT_ASSERT(ask(node, client, TR_TAG_STEP));
	TT_ASSERT(rep_is_error("intent: the message has no 'text'"));
	req_text("hi", 2, NULL);
	TT_ASSERT(ask(node, client, 77));
	TT_ASSERT(rep_is_error("intent: unexpected request (tag 77)"));

	/* Still the same actor: nothing crashed. */
	req_text("how do i set a deadline", 23, NULL);
	TT_ASSERT(ask(node, client, TR_TAG_STEP));
	TT_STREQ(rep_str("intent", b, sizeof(b)), "question");
	tr_actor_stats st;
	TT_OK(tr_actor_stats_get(node, actor_ref, &st));
	TT_EQ(st.restarts, 0);

	/* Bad settings fail the spawn. */
	static tr_actor_spec bad;
	bad = spec;
	bad.config = (unsigned char *)"\x81\xa5rules\xa1x";
	bad.config_len = 9;
	memset(&so, 0, sizeof(so));
	TT_RC(tr_node_spawn(node, &tr_intent_ops, &bad, &so, NULL), TR_EINVAL);

	TT_OK(tn_stop(node));
	tr_buf_free(&req);
	tr_buf_free(&rep);
	tr_buf_free(&cfg);
}

TT_LIST = {
	TT_ENTRY(heldout_accuracy),
	TT_ENTRY(defaults_accuracy),
	TT_ENTRY(regex_rule_slots),
	TT_ENTRY(keyword_rules_and_order),
	TT_ENTRY(threshold_and_fallback),
	TT_ENTRY(words_utf8_and_bytes),
	TT_ENTRY(huge_text),
	TT_ENTRY(classify_cost),
	TT_ENTRY(bad_settings_lua),
	TT_ENTRY(bad_settings_msgpack),
	TT_ENTRY(troupe_check_reports),
	TT_ENTRY(actor_on_node),
	TT_END,
};

TT_MAIN()
