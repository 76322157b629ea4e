/*
 * test_execute.c -- the execute kind: tools declared in Lua
 * (tests/lua/good/tools.lua, loaded with tr_config_load) run on a real
 * node: args checked and converted (numeric strings from slots, wrong
 * types, missing, unknown, given twice), the tool named by `tool` or
 * slots.tool, handler errors and results that cannot be encoded as step
 * errors with the Lua text, per-tool timeouts (instruction budget and the
 * clock), bad messages (not a map, empty, huge text, invalid UTF-8), the
 * tools setting, every settings error with its exact message (in C,
 * through the loader with file:line, through `troupe check`), and a
 * pipeline run whose error carries the tool's message.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <msgpack.h>
#include <troupe/troupe.h>

#include "actors/execute/execute.h"
#include "actors/kit.h"
#include "core/alloc.h"
#include "http/json.h"
#include "lua/tlua.h"
#include "msg/msg_int.h"
#include "pipe/engine.h"
#include "pipe/mp.h"
#include "tt.h"
#include "tnode.h"

#define ROOT TR_SOURCE_ROOT

static int setup(void)
{
	static int done;
	if (!done)
		done = chdir(ROOT) == 0 && tr_actors_register_builtin() == TR_OK ? 1 : -1;
	return done == 1;
}

static tr_config *load(const char *path, tr_diag *d)
{
	tr_config *c = NULL;
	tr_diag_init(d);
	(void)tr_config_load(&path, 1, &c, d);
	return c;
}

/* Writes `text` to a fresh temp .lua file; its path goes into path[64]. */
static int temp_lua(char *path, const char *text)
{
	snprintf(path, 64, "/tmp/test_execute_XXXXXX.lua");
	int fd = mkstemps(path, 4);
	if (fd < 0)
		return -1;
	FILE *f = fdopen(fd, "w");
	fputs(text, f);
	fclose(f);
	return 0;
}

/* JSON text -> msgpack (tests write messages as JSON). */
static int json_mp(const char *js, tr_buf *out)
{
	json_error_t e;
	json_t *j = json_loads(js, JSON_DECODE_ANY, &e);
	int rc;
	out->len = 0;
	if (j == NULL) {
		fprintf(stderr, "  bad test JSON: %s: %s\n", js, e.text);
		return TR_EINVAL;
	}
	rc = tr__json_to_mp(j, out);
	json_decref(j);
	return rc;
}

/* ---- settings -------------------------------------------------------------- */

static char err[600];

static int check_cfg(const tr_config *c, const char *json)
{
	tr_buf b;
	tr_actor_spec a;
	tr_buf_init(&b);
	memset(&a, 0, sizeof(a));
	a.name = (char *)"exec";
	a.kind = (char *)"execute";
	a.receive_fn = -1;
	a.instances = 1;
	a.cfg = c;
	if (json != NULL) {
		json_mp(json, &b);
		a.config = b.data;
		a.config_len = b.len;
	}
	int rc = tr_execute_check(&a, err, sizeof(err));
	tr_buf_free(&b);
	return rc;
}

#define BAD(c, json, want)                                                     \
	do {                                                                       \
		TT_RC(check_cfg(c, json), TR_EINVAL);                                  \
		TT_STREQ(err, want);                                                   \
	} while (0)

TT_TEST(settings_errors)
{
	TT_ASSERT(setup());
	tr_diag d;
	tr_config *c = load("tests/lua/good/tools.lua", &d);
	TT_ASSERT(c != NULL);
	tr_diag_free(&d);
	TT_OK(check_cfg(c, NULL));
	TT_OK(check_cfg(c, "{\"tools\": [\"echo\", \"spin\"]}"));
	BAD(NULL, NULL, "actor 'exec': execute needs the config its tools are declared in (a spec "
	                "loaded from a file)");
	BAD(c, "{\"tools\": []}", "actor 'exec': tools: the list is empty (leave tools out to "
	                          "allow every declared tool)");
	BAD(c, "{\"tools\": [\"ecko\"]}", "actor 'exec': tools: unknown tool 'ecko' (did you mean "
	                                 "'echo'?)");
	BAD(c, "{\"tools\": [\"zzzzzz\"]}", "actor 'exec': tools: unknown tool 'zzzzzz' (not a "
	                                   "declared tool)");
	BAD(c, "{\"tools\": [\"echo\", \"echo\"]}", "actor 'exec': tools: 'echo' is listed twice");
	BAD(c, "{\"tools\": \"echo\"}", "actor 'exec': tools: expected a list of strings, got string");
	BAD(c, "{\"tools\": [1]}", "actor 'exec': tools: element 1: expected a string, got integer");
	BAD(c, "{\"tool\": [\"echo\"]}", "actor 'exec': unknown setting 'tool' (did you mean "
	                                "'tools'?)");
	BAD(c, "{\"timeout\": 5}", "actor 'exec': unknown setting 'timeout' (this kind takes tools)");
	tr_config *none = load("tests/lua/good/actors.lua", &d);
	TT_ASSERT(none != NULL);
	tr_diag_free(&d);
	BAD(none, "{\"tools\": [\"echo\"]}", "actor 'exec': tools: unknown tool 'echo' (no tool is "
	                                    "declared: tool \"name\" { ... })");
	TT_OK(check_cfg(none, NULL)); /* no tools: fine until a step asks for one */
	tr_config_free(none);
	tr_config_free(c);
}

/* The loader runs the check with the actor's file:line, after every
 * declaration (a tool declared below the actor is found). */
TT_TEST(settings_through_loader)
{
	TT_ASSERT(setup());
	char path[64], want[512];
	TT_OK(temp_lua(path, "-- line 1\n"
	                     "actor \"a\" { kind = \"execute\", tools = { \"book\" } }\n"
	                     "actor \"b\" { kind = \"execute\", tools = { \"bok\", \"book\" } }\n"
	                     "tool \"book\" { args = { day = \"string\" }, handler = function(a) "
	                     "return a end }\n"));
	tr_diag d;
	tr_config *c = load(path, &d);
	TT_ASSERT(c == NULL);
	TT_EQ(d.n, 1);
	snprintf(want, sizeof(want), "%s:3: actor 'b': tools: unknown tool 'bok' (did you mean "
	         "'book'?)", path);
	TT_STREQ(d.msgs[0], want);
	tr_diag_free(&d);
	unlink(path);
}

TT_TEST(troupe_check_reports)
{
	TT_ASSERT(setup());
	const char *exe = getenv("TROUPE_EXE");
	char path[64], cmd[512], out[1024], want[512];
	if (exe == NULL) {
		fprintf(stderr, "  TROUPE_EXE not set: skipped\n");
		return;
	}
	TT_OK(temp_lua(path, "tool \"t\" { handler = function() end }\n\n"
	                     "actor \"x\" { kind = \"execute\", tools = { \"t\", \"t\" } }\n"
	                     "tool \"s\" { sql = \"select 1\" }\n"));
	snprintf(cmd, sizeof(cmd), "%s check %s 2>&1", exe, path);
	FILE *p = popen(cmd, "r");
	size_t n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = '\0';
	int st = pclose(p);
	unlink(path);
	snprintf(want, sizeof(want),
	         "%s:3: actor 'x': tools: 't' is listed twice\n"
	         "%s:4: tool 's': sql: SQL tools run on the node's PostgreSQL pool; declare "
	         "postgres { conninfo = \"...\" }\n", path, path);
	if (strcmp(out, want) != 0)
		TT_FAIL_("got: %s\nwant: %s", out, want);
	TT_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 1);
	snprintf(cmd, sizeof(cmd), "%s check tests/lua/good/tools.lua >/dev/null 2>&1", exe);
	TT_EQ(system(cmd), 0);
}

/* ---- the actor on a node ----------------------------------------------------- */

enum { KICK = 1 };

static tr_ref target;
static tr_buf req;
static uint32_t req_tenant;
static uv_mutex_t rep_mu;
static tr_buf rep;
static uint16_t rep_flags;
static int32_t rep_err;
static atomic_int replies;

static int burst = 1; /* asks per KICK */

static int client_msg(tr_ctx *ctx, probe *p, tr_msg *m)
{
	if (m->tag == KICK) {
		for (int i = 0; i < burst; i++) {
			tr_msg *q = tr_msg_new();
			q->tag = (uint32_t)m->arg;
			q->tenant = req_tenant;
			if (req.len > 0)
				q->body = tr_body_new(req.data, req.len);
			int rc = tr_ask(ctx, target, q, 20000, NULL);
			if (rc != TR_OK)
				return rc;
		}
		return TR_OK;
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

static tr_node *node;
static tr_ref client;

/* Asks `to` with req (tag `tag`) and waits for the answer. */
static int ask_to(tr_ref to, uint32_t tag)
{
	int before = atomic_load(&replies);
	target = to;
	if (tn_send(node, client, KICK, tag) != TR_OK)
		return 0;
	for (int i = 0; i < 20000 && atomic_load(&replies) == before; i++)
		tn_sleep_ms(1);
	return atomic_load(&replies) > before;
}

static tr_ref exec_ref, only_ref, none_ref;

static int ask_json(const char *js)
{
	if (json_mp(js, &req) != TR_OK)
		return 0;
	return ask_to(exec_ref, TR_TAG_STEP);
}

/* The answer as JSON text (errors: their body). */
static const char *rep_json(char *buf, size_t len)
{
	tr_buf j;
	tr_buf_init(&j);
	buf[0] = '\0';
	if (rep.len > 0 && tr__mp_json(rep.data, rep.len, &j) == TR_OK)
		snprintf(buf, len, "%.*s", (int)j.len, (const char *)j.data);
	tr_buf_free(&j);
	return buf;
}

static const char *rep_field(const char *k, char *buf, size_t len)
{
	const unsigned char *v;
	size_t vn;
	tr_buf j;
	buf[0] = '\0';
	if (tr__mp_map_get(rep.data, rep.len, k, &v, &vn) != TR_OK)
		return "(absent)";
	tr_buf_init(&j);
	if (tr__mp_json(v, vn, &j) == TR_OK)
		snprintf(buf, len, "%.*s", (int)j.len, (const char *)j.data);
	tr_buf_free(&j);
	return buf;
}

/* The answer must be an error with code `code` and this message. */
static int failed_with(int code, const char *msg)
{
	char b[1024];
	const unsigned char *v;
	const char *s;
	size_t vn, sn;
	if (!(rep_flags & TR_MSGF_ERROR) || rep_err != code) {
		fprintf(stderr, "    not a %s error: flags %x err %s, body %s\n", tr_err_name(code),
		        rep_flags, tr_err_name(rep_err), rep_json(b, sizeof(b)));
		return 0;
	}
	if (tr__mp_map_get(rep.data, rep.len, "message", &v, &vn) != TR_OK ||
	    tr__mp_str(v, vn, &s, &sn) != TR_OK) {
		fprintf(stderr, "    no message\n");
		return 0;
	}
	snprintf(b, sizeof(b), "%.*s", (int)sn, s);
	if (msg != NULL && strcmp(b, msg) != 0) {
		fprintf(stderr, "    message: %s\n    want:    %s\n", b, msg);
		return 0;
	}
	return 1;
}

#define FAILS(js, code, msg)                                                   \
	do {                                                                       \
		TT_ASSERT(ask_json(js));                                               \
		TT_ASSERT(failed_with(code, msg));                                     \
	} while (0)

/* Whether JSON texts a and b are the same value (object keys in any
 * order: Lua tables have no order). */
static int same_json(const char *a, const char *b)
{
	json_error_t e;
	json_t *x = json_loads(a, JSON_DECODE_ANY, &e), *y = json_loads(b, JSON_DECODE_ANY, &e);
	int eq = x != NULL && y != NULL && json_equal(x, y);
	if (!eq)
		fprintf(stderr, "    got:  %s\n    want: %s\n", a, b);
	json_decref(x);
	json_decref(y);
	return eq;
}

/* The answer must be a success whose field k, as JSON, is `want`. */
#define FIELD(k, want)                                                         \
	do {                                                                       \
		char fb_[1024];                                                        \
		if (rep_flags & TR_MSGF_ERROR)                                         \
			TT_FAIL_("an error: %s", rep_json(fb_, sizeof(fb_)));              \
		TT_ASSERT(same_json(rep_field(k, fb_, sizeof(fb_)), want));            \
	} while (0)

static tr_config *cfg, *cfg_none;

static tr_ref spawn_exec(const tr_config *c, const char *name)
{
	tr_spawn_opts so = {0};
	tr_ref r = TR_REF_NONE;
	so.name = name;
	if (tr_node_spawn(node, &tr_execute_ops, tr_config_actor(c, name), &so, &r) != TR_OK)
		fprintf(stderr, "  cannot spawn %s\n", name);
	return r;
}

TT_TEST(start)
{
	static probe_cfg pc = {.id = 1, .on_msg = client_msg};
	tr_diag d;
	TT_ASSERT(setup());
	uv_mutex_init(&rep_mu);
	tr_buf_init(&req);
	tr_buf_init(&rep);
	cfg = load("tests/lua/good/tools.lua", &d);
	TT_ASSERT(cfg != NULL);
	tr_diag_free(&d);
	cfg_none = load("tests/lua/good/actors.lua", &d); /* no tools declared */
	TT_ASSERT(cfg_none != NULL);
	tr_diag_free(&d);
	node = tn_start(2);
	TT_ASSERT(node != NULL);
	TT_OK(tn_spawn(node, &pc, "client", &client));
	exec_ref = spawn_exec(cfg, "exec");
	only_ref = spawn_exec(cfg, "exec_book_only");
	TT_ASSERT(!tr_ref_is_none(exec_ref) && !tr_ref_is_none(only_ref));
	/* a hand-made spec (no config) is refused at spawn */
	tr_actor_spec bare = *tr_config_actor(cfg, "exec");
	bare.cfg = NULL;
	TT_RC(tr_node_spawn(node, &tr_execute_ops, &bare, NULL, NULL), TR_EINVAL);
}

TT_TEST(runs_a_tool)
{
	char b[1024];
	uint32_t acme;
	TT_OK(tr_tenant_intern("acme", 4, &acme));
	req_tenant = acme;
	TT_ASSERT(ask_json("{\"text\": \"book me in\", \"tool\": \"book_appointment\", "
	                   "\"args\": {\"date\": \"2024-05-01\", \"slot\": 3, \"note\": \"hi\"}}"));
	FIELD("tool", "\"book_appointment\"");
	FIELD("text", "\"book me in\""); /* the message is kept */
	FIELD("result", "{\"booked\":true,\"date\":\"2024-05-01\",\"slot\":3,\"note\":\"hi\","
	                "\"by\":\"exec\",\"attempt\":0,\"tenant\":\"acme\"}");
	req_tenant = 0;
	/* the handler's file locals live on between calls of one instance */
	TT_ASSERT(ask_json("{\"tool\": \"book_appointment\", \"args\": {\"date\": \"2024-05-01\", "
	                   "\"slot\": 3}}"));
	FIELD("result", "{\"booked\":false,\"reason\":\"taken\"}");
	/* a numeric string (regex slots) is an int when it is one whole */
	TT_ASSERT(ask_json("{\"tool\": \"book_appointment\", \"args\": {\"date\": \"d\", "
	                   "\"slot\": \"12\"}}"));
	FIELD("result", "{\"booked\":true,\"date\":\"d\",\"slot\":12,\"by\":\"exec\",\"attempt\":0}");
	/* the tool and its args from slots; slots the tool does not take are left out */
	TT_ASSERT(ask_json("{\"intent\": \"action\", \"slots\": {\"tool\": \"book_appointment\", "
	                   "\"date\": \"2024-06-01\", \"slot\": \"-7\", \"what\": \"a haircut\"}}"));
	FIELD("result", "{\"booked\":true,\"date\":\"2024-06-01\",\"slot\":-7,\"by\":\"exec\","
	                "\"attempt\":0}");
	FIELD("slots", "{\"tool\":\"book_appointment\",\"date\":\"2024-06-01\",\"slot\":\"-7\","
	               "\"what\":\"a haircut\"}");
	/* `tool` beats slots.tool, `args` beats slots */
	TT_ASSERT(ask_json("{\"tool\": \"echo\", \"args\": {\"i\": 1}, \"slots\": {\"tool\": "
	                   "\"book_appointment\", \"date\": \"x\", \"slot\": 1}}"));
	FIELD("result", "{\"i\":1}");
	/* a handler that returns nothing: result = nil */
	TT_ASSERT(ask_json("{\"tool\": \"nothing\"}"));
	FIELD("result", "null");
	TT_ASSERT(rep_json(b, sizeof(b))[0] == '{');
}

TT_TEST(arg_types)
{
	/* conversions */
	TT_ASSERT(ask_json("{\"tool\": \"echo\", \"args\": {\"n\": \"1.5\", \"flag\": \"true\", "
	                   "\"data\": {\"a\": [1, 2]}, \"s\": \"\", \"i\": 2.0}}"));
	FIELD("result", "{\"data\":{\"a\":[1,2]},\"flag\":true,\"i\":2,\"n\":1.5,\"s\":\"\"}");
	TT_ASSERT(ask_json("{\"tool\": \"echo\", \"args\": {\"n\": \"-12\", \"flag\": false, "
	                   "\"data\": [], \"i\": \"+4\"}}"));
	/* an empty table comes back as a map (tlua.h: empty tables encode as maps) */
	FIELD("result", "{\"data\":{},\"flag\":false,\"i\":4,\"n\":-12}");
	TT_ASSERT(ask_json("{\"tool\": \"echo\", \"args\": {\"n\": 3, \"i\": null}}"));
	FIELD("result", "{\"n\":3}"); /* nil is absent */
	/* wrong types, each with its exact message */
	FAILS("{\"tool\": \"book_appointment\", \"args\": {\"date\": \"d\", \"slot\": \"x\"}}", TR_EINVAL,
	      "tool 'book_appointment': arg 'slot': expected int, got string \"x\"");
	FAILS("{\"tool\": \"book_appointment\", \"args\": {\"date\": \"d\", \"slot\": 1.5}}", TR_EINVAL,
	      "tool 'book_appointment': arg 'slot': expected int, got number 1.5");
	FAILS("{\"tool\": \"book_appointment\", \"args\": {\"date\": \"d\", \"slot\": \"12abc\"}}",
	      TR_EINVAL, "tool 'book_appointment': arg 'slot': expected int, got string \"12abc\"");
	FAILS("{\"tool\": \"book_appointment\", \"args\": {\"date\": \"d\", \"slot\": \" 12\"}}",
	      TR_EINVAL, "tool 'book_appointment': arg 'slot': expected int, got string \" 12\"");
	FAILS("{\"tool\": \"book_appointment\", \"args\": {\"date\": \"d\", \"slot\": \"\"}}", TR_EINVAL,
	      "tool 'book_appointment': arg 'slot': expected int, got string \"\"");
	FAILS("{\"tool\": \"book_appointment\", \"args\": {\"date\": \"d\", \"slot\": "
	      "\"99999999999999999999\"}}", TR_EINVAL,
	      "tool 'book_appointment': arg 'slot': expected int, got string \"99999999999999999999\"");
	FAILS("{\"tool\": \"book_appointment\", \"args\": {\"date\": 5, \"slot\": 1}}", TR_EINVAL,
	      "tool 'book_appointment': arg 'date': expected string, got int 5");
	FAILS("{\"tool\": \"book_appointment\", \"args\": {\"date\": [\"d\"], \"slot\": 1}}", TR_EINVAL,
	      "tool 'book_appointment': arg 'date': expected string, got table");
	FAILS("{\"tool\": \"echo\", \"args\": {\"flag\": \"yes\"}}", TR_EINVAL,
	      "tool 'echo': arg 'flag': expected bool, got string \"yes\"");
	FAILS("{\"tool\": \"echo\", \"args\": {\"flag\": 1}}", TR_EINVAL,
	      "tool 'echo': arg 'flag': expected bool, got int 1");
	FAILS("{\"tool\": \"echo\", \"args\": {\"n\": \"0x10\"}}", TR_EINVAL,
	      "tool 'echo': arg 'n': expected number, got string \"0x10\"");
	FAILS("{\"tool\": \"echo\", \"args\": {\"n\": \"inf\"}}", TR_EINVAL,
	      "tool 'echo': arg 'n': expected number, got string \"inf\"");
	FAILS("{\"tool\": \"echo\", \"args\": {\"n\": \"1e999\"}}", TR_EINVAL,
	      "tool 'echo': arg 'n': expected number, got string \"1e999\"");
	FAILS("{\"tool\": \"echo\", \"args\": {\"n\": true}}", TR_EINVAL,
	      "tool 'echo': arg 'n': expected number, got bool true");
	FAILS("{\"tool\": \"echo\", \"args\": {\"data\": \"x\"}}", TR_EINVAL,
	      "tool 'echo': arg 'data': expected table, got string \"x\"");
	/* missing, unknown */
	FAILS("{\"tool\": \"book_appointment\", \"args\": {\"slot\": 1}}", TR_EINVAL,
	      "tool 'book_appointment': missing required arg 'date' (string)");
	FAILS("{\"tool\": \"book_appointment\"}", TR_EINVAL,
	      "tool 'book_appointment': missing required arg 'date' (string)");
	FAILS("{\"tool\": \"book_appointment\", \"args\": {\"dat\": \"d\", \"slot\": 1}}", TR_EINVAL,
	      "tool 'book_appointment': unknown arg 'dat' (did you mean 'date'?)");
	FAILS("{\"tool\": \"book_appointment\", \"args\": {\"date\": \"d\", \"slot\": 1, \"room\": 4}}",
	      TR_EINVAL, "tool 'book_appointment': unknown arg 'room' (args: date, note, slot)");
	FAILS("{\"tool\": \"nothing\", \"args\": {\"x\": 1}}", TR_EINVAL,
	      "tool 'nothing': unknown arg 'x' (the tool takes no args)");
	FAILS("{\"tool\": \"echo\", \"args\": \"n=1\"}", TR_EINVAL,
	      "tool 'echo': args: expected a table of name = value, got string \"n=1\"");
	FAILS("{\"tool\": \"echo\", \"args\": [1]}", TR_EINVAL,
	      "tool 'echo': args: expected a table of name = value, got table");
	/* a long value is cut in the message */
	FAILS("{\"tool\": \"echo\", \"args\": {\"i\": \"0123456789012345678901234567890123456789xyz\"}}",
	      TR_EINVAL, "tool 'echo': arg 'i': expected int, got string "
	                 "\"0123456789012345678901234567890123456789...\"");
}

TT_TEST(bad_messages)
{
	static const char hostile_twice[] = "\x82" "\xa4" "tool" "\xa4" "echo" "\xa4" "args"
	                                    "\x82" "\xa1" "s" "\xa1" "a" "\xa1" "s" "\xa1" "b";
	static const char int_key[] = "\x82" "\xa4" "tool" "\xa4" "echo" "\xa4" "args"
	                              "\x81" "\x01" "\x02";
	static const char bad_name[] = "\x81" "\xa4" "tool" "\xa2" "\xff" "\xfe";
	static const char not_map[] = "\x93\x01\x02\x03";
	FAILS("{}", TR_EINVAL, "no tool to run: the message has no 'tool' field (nor slots.tool); "
	                       "tools: book_appointment, echo, nothing, spin, slow, bad_result");
	FAILS("{\"text\": \"\"}", TR_EINVAL, NULL);
	FAILS("{\"tool\": 5}", TR_EINVAL, "tool: expected a tool name (string), got int 5");
	FAILS("{\"tool\": null, \"slots\": \"book\"}", TR_EINVAL, NULL);
	FAILS("{\"tool\": \"bok_appointment\"}", TR_EINVAL,
	      "unknown tool 'bok_appointment' (did you mean 'book_appointment'? tools: "
	      "book_appointment, echo, nothing, spin, slow, bad_result)");
	FAILS("{\"tool\": \"weather\"}", TR_EINVAL,
	      "unknown tool 'weather' (tools: book_appointment, echo, nothing, spin, slow, bad_result)");
	/* raw msgpack: hostile or odd shapes JSON cannot make */
	req.len = 0;
	tr__buf_append(&req, hostile_twice, sizeof(hostile_twice) - 1);
	TT_ASSERT(ask_to(exec_ref, TR_TAG_STEP));
	TT_ASSERT(failed_with(TR_EINVAL, "tool 'echo': arg 's' is given twice"));
	req.len = 0;
	tr__buf_append(&req, int_key, sizeof(int_key) - 1);
	TT_ASSERT(ask_to(exec_ref, TR_TAG_STEP));
	TT_ASSERT(failed_with(TR_EINVAL, "tool 'echo': args: keys must be arg names (strings), got "
	                                 "int 1"));
	req.len = 0;
	tr__buf_append(&req, bad_name, sizeof(bad_name) - 1);
	TT_ASSERT(ask_to(exec_ref, TR_TAG_STEP));
	TT_ASSERT(failed_with(TR_EINVAL, "unknown tool '\\xff\\xfe' (tools: book_appointment, echo, "
	                                 "nothing, spin, slow, bad_result)"));
	req.len = 0;
	tr__buf_append(&req, not_map, sizeof(not_map) - 1);
	TT_ASSERT(ask_to(exec_ref, TR_TAG_STEP));
	TT_ASSERT(failed_with(TR_EPROTO, "the message is not a msgpack map"));
	req.len = 0;
	tr__buf_append(&req, "\xc1", 1); /* never valid msgpack */
	TT_ASSERT(ask_to(exec_ref, TR_TAG_STEP));
	TT_ASSERT(failed_with(TR_EPROTO, "the message is not a msgpack map"));
	req.len = 0; /* no body at all */
	TT_ASSERT(ask_to(exec_ref, TR_TAG_STEP));
	TT_ASSERT(failed_with(TR_EINVAL, NULL));

	/* a 1 MiB text rides along; invalid UTF-8 in a string arg is passed as bytes */
	{
		size_t n = 1u << 20;
		char *big = malloc(n);
		msgpack_packer pk;
		memset(big, 'a', n);
		req.len = 0;
		tr__mp_packer(&pk, &req);
		msgpack_pack_map(&pk, 3);
		tr__mp_pack_cstr(&pk, "text");
		msgpack_pack_str(&pk, n);
		msgpack_pack_str_body(&pk, big, n);
		tr__mp_pack_cstr(&pk, "tool");
		tr__mp_pack_cstr(&pk, "echo");
		tr__mp_pack_cstr(&pk, "args");
		msgpack_pack_map(&pk, 1);
		tr__mp_pack_cstr(&pk, "s");
		msgpack_pack_str(&pk, 3);
		msgpack_pack_str_body(&pk, "\xff\xfez", 3);
		free(big);
		TT_ASSERT(ask_to(exec_ref, TR_TAG_STEP));
		TT_EQ(rep_flags & TR_MSGF_ERROR, 0);
		const unsigned char *v;
		size_t vn;
		TT_OK(tr__mp_map_get(rep.data, rep.len, "text", &v, &vn));
		TT_EQ(vn, n + 5);
		TT_OK(tr__mp_map_get(rep.data, rep.len, "result", &v, &vn));
		TT_EQ(vn, 7); /* {s = "\xff\xfez"}: 0x81 0xa1 's' 0xa3 + 3 bytes */
		TT_ASSERT(memcmp(v + 4, "\xff\xfez", 3) == 0);
	}
}

TT_TEST(handler_errors_and_timeouts)
{
	FAILS("{\"tool\": \"book_appointment\", \"args\": {\"date\": \"never\", \"slot\": 1}}",
	      TR_EFAILED, "tool 'book_appointment': handler failed: tests/lua/good/tools.lua:12: no "
	                  "such date: never");
	FAILS("{\"tool\": \"bad_result\"}", TR_EPROTO,
	      "tool 'bad_result': tests/lua/good/tools.lua:39: the function's result cannot be "
	      "encoded as msgpack (functions, userdata, cycles, non-string keys or nesting deeper "
	      "than 64)");
	/* an endless loop is cut by its budget: 20 ms x 100 instructions/us */
	uint64_t t0 = tr_now_ns();
	FAILS("{\"tool\": \"spin\"}", TR_ETIMEDOUT,
	      "tool 'spin': timed out: its timeout (20ms) allows 2000000 Lua instructions and the "
	      "handler ran past them (tests/lua/good/tools.lua:30: instruction limit exceeded "
	      "(2000000 instructions))");
	double ms = (double)(tr_now_ns() - t0) / 1e6;
	fprintf(stderr, "  spin: cut after %.1f ms (its timeout: 20 ms; 2 M instructions: %.0f "
	        "instructions/us on this machine)\n", ms, 2e6 / (ms * 1e3));
	TT_ASSERT(ms < 2000);
	/* few instructions but slower than its timeout by the clock */
	TT_ASSERT(ask_json("{\"tool\": \"slow\"}"));
	TT_ASSERT(failed_with(TR_ETIMEDOUT, NULL));
	{
		char b[512];
		const char *m = rep_field("message", b, sizeof(b));
		TT_ASSERT(strstr(m, "tool 'slow': timed out: took ") != NULL);
		TT_ASSERT(strstr(m, " ms, its timeout is 1ms (the result is dropped)") != NULL);
	}
	/* the state is fine after all that */
	TT_ASSERT(ask_json("{\"tool\": \"echo\", \"args\": {\"s\": \"still here\"}}"));
	FIELD("result", "{\"s\":\"still here\"}");
	/* the actor never crashed */
	tr_actor_stats as;
	TT_OK(tr_actor_stats_get(node, exec_ref, &as));
	TT_EQ(as.restarts, 0);
}

TT_TEST(tools_setting_and_no_tools)
{
	TT_OK(json_mp("{\"tool\": \"echo\", \"args\": {}}", &req));
	TT_ASSERT(ask_to(only_ref, TR_TAG_STEP));
	TT_ASSERT(failed_with(TR_EINVAL, "tool 'echo' is not allowed here: actor 'exec_book_only' "
	                                 "runs book_appointment (its tools setting)"));
	TT_OK(json_mp("{}", &req));
	TT_ASSERT(ask_to(only_ref, TR_TAG_STEP));
	TT_ASSERT(failed_with(TR_EINVAL, "no tool to run: the message has no 'tool' field (nor "
	                                 "slots.tool); tools: book_appointment"));
	/* an execute actor in a file that declares no tool (as the default
	 * assistant does today) answers every step with a clear error */
	static tr_actor_spec spec;
	tr_spawn_opts so = {0};
	spec = *tr_config_actor(cfg, "exec");
	spec.cfg = cfg_none;
	spec.name = (char *)"lonely";
	so.name = "lonely";
	TT_OK(tr_node_spawn(node, &tr_execute_ops, &spec, &so, &none_ref));
	TT_OK(json_mp("{\"tool\": \"echo\"}", &req));
	TT_ASSERT(ask_to(none_ref, TR_TAG_STEP));
	TT_ASSERT(failed_with(TR_EINVAL, "unknown tool 'echo' (no tool is declared: tool \"name\" { "
	                                 "args = { ... }, handler = function(args, ctx) ... end })"));
	TT_OK(json_mp("{}", &req));
	TT_ASSERT(ask_to(none_ref, TR_TAG_STEP));
	TT_ASSERT(failed_with(TR_EINVAL, "no tool to run: the message has no 'tool' field (nor "
	                                 "slots.tool); tools: none declared"));
}

/* The pipeline "act" of tools.lua: the run's error carries the tool's words. */
TT_TEST(pipeline_run)
{
	static tr_pipe_arg pa;
	tr_spawn_opts so = {0};
	tr_ref eng;
	char b[1024];
	pa = (tr_pipe_arg){cfg, tr_config_pipeline(cfg, "act"), NULL, NULL, NULL, 0};
	TT_ASSERT(pa.spec != NULL);
	so.name = "pipeline:act";
	TT_OK(tr_node_spawn(node, &tr_pipe_ops, &pa, &so, &eng));
	TT_OK(json_mp("{\"text\": \"hi\", \"tool\": \"echo\", \"args\": {\"n\": \"2\"}}", &req));
	TT_ASSERT(ask_to(eng, TR_TAG_RUN));
	FIELD("result", "{\"n\":2}");
	FIELD("tool", "\"echo\"");
	TT_OK(json_mp("{\"tool\": \"book_appointment\", \"args\": {\"date\": \"never\", \"slot\": "
	              "\"1\"}}", &req));
	TT_ASSERT(ask_to(eng, TR_TAG_RUN));
	TT_ASSERT(rep_flags & TR_MSGF_ERROR);
	TT_STREQ(rep_field("code", b, sizeof(b)), "\"error\"");
	TT_STREQ(rep_field("step", b, sizeof(b)), "\"exec\"");
	TT_STREQ(rep_field("message", b, sizeof(b)),
	         "\"step 'exec' failed after 1 attempt: tool 'book_appointment': handler failed: "
	         "tests/lua/good/tools.lua:12: no such date: never\"");
}

/* What one call costs (echo with two args), asks sent in bursts of 500
 * so that replies do not each wake a sleeping asker: printed, not
 * asserted. */
TT_TEST(cost)
{
	int rounds = tn_quick() ? 2 : 20;
	TT_OK(json_mp("{\"text\": \"hi\", \"tool\": \"echo\", \"args\": {\"n\": \"2\", \"s\": \"x\"}}",
	              &req));
	tr_actor_stats a0, a1;
	TT_OK(tr_actor_stats_get(node, exec_ref, &a0));
	burst = 500;
	for (int i = 0; i < rounds; i++) {
		int before = atomic_load(&replies);
		target = exec_ref;
		TT_OK(tn_send(node, client, KICK, TR_TAG_STEP));
		for (int w = 0; w < 20000 && atomic_load(&replies) < before + burst; w++)
			tn_sleep_ms(1);
		TT_EQ(atomic_load(&replies), before + burst);
	}
	burst = 1;
	TT_EQ(rep_flags & TR_MSGF_ERROR, 0);
	TT_OK(tr_actor_stats_get(node, exec_ref, &a1));
	fprintf(stderr, "  execute: %.2f us per tool call in receive (echo, 2 args, %llu calls)\n",
	        (double)(a1.receive_ns - a0.receive_ns) / 1e3 / (double)(a1.processed - a0.processed),
	        (unsigned long long)(a1.processed - a0.processed));
}

TT_TEST(stop)
{
	TT_EQ(tn_stop(node), 0);
	tr_config_free(cfg);
	tr_config_free(cfg_none);
	tr_buf_free(&req);
	tr_buf_free(&rep);
}

TT_LIST = {
	TT_ENTRY(settings_errors),
	TT_ENTRY(settings_through_loader),
	TT_ENTRY(troupe_check_reports),
	TT_ENTRY(start),
	TT_ENTRY(runs_a_tool),
	TT_ENTRY(arg_types),
	TT_ENTRY(bad_messages),
	TT_ENTRY(handler_errors_and_timeouts),
	TT_ENTRY(tools_setting_and_no_tools),
	TT_ENTRY(pipeline_run),
	TT_ENTRY(cost),
	TT_ENTRY(stop),
	TT_END,
};

TT_MAIN()
