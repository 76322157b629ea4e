/*
 * fuzz_http.c -- libFuzzer target: bytes from an HTTP client, through the
 * door's connection path without a socket (http/door_int.h,
 * tr__door_fuzz_request): http_parser and the door's callbacks (limits,
 * headers kept, 100-continue), the router (every GET endpoint, 405, 404),
 * API keys and rates, the JSON body checks and its conversion to
 * msgpack, and the answer (JSON, NDJSON or SSE) of a pipeline that echoes
 * its input; pipelined requests one after the other, then the client's
 * EOF.
 *
 * The node (one worker) has the pipeline "echo" and two tenants: key
 * "fuzz-free-key" (no rate) and "fuzz-rate-key" (2/s, burst 2). The
 * first byte picks how the bytes arrive: odd, one read; even, reads of
 * 1 + byte % 64 bytes (a request's first byte is its method's: "GET"
 * comes in one read, "POST" in reads of 17). Every answer must start
 * with a status line.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/door_int.h"
#include "lua/tlua.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
void fuzz_teardown(void);

static const char config[] =
	"actor \"echo\" { receive = function(msg) return msg end }\n"
	"pipeline \"echo\" { step \"echo\" { timeout = \"1s\" } }\n"
	"tenant \"free\" { keys = { sha256 = "
	"\"60a738e0022c6edd04ca43f4ccc5d6fc3319e24db2af1906933d3810bd3b1f95\" } }\n"
	"tenant \"rated\" { keys = { sha256 = "
	"\"ce37e4acc003466834281dcac7fb06b458524c5ee001f629b0cc78b484be7298\" },\n"
	"                   rate = \"2/s\", burst = 2 }\n";

static tr_node *node;
static tr_door *door;
static tr_config *cfg;
static int show;

static int echo_receive(tr_ctx *ctx, void *st, tr_msg *m)
{
	(void)ctx;
	(void)st;
	(void)m;
	return TR_OK; /* never asked: the door answers its runs itself */
}

static const tr_actor_ops echo_ops = {.name = "fuzz-echo", .receive = echo_receive};

static void setup(void)
{
	tr_node_opts o = {.threads = 1};
	tr_spawn_opts so = {.name = "pipeline:echo"};
	tr_diag d;
	tr_ref ref;

	tr_diag_init(&d);
	if (tr__config_load_mem("fuzz_http.lua", config, sizeof(config) - 1, NULL, &cfg, &d) != TR_OK ||
	    tr_node_new(&o, &node) != TR_OK || tr_node_start(node) != TR_OK ||
	    tr_node_spawn(node, &echo_ops, NULL, &so, &ref) != TR_OK ||
	    tr__door_fuzz_new(node, &door) != TR_OK || tr_door_set_config(door, cfg, 1) != TR_OK) {
		for (size_t i = 0; i < d.n; i++)
			fprintf(stderr, "%s\n", d.msgs[i]);
		abort();
	}
	tr_diag_free(&d);
}

void fuzz_teardown(void)
{
	if (node == NULL)
		return;
	tr__door_fuzz_free(door);
	tr_node_shutdown(node, 0);
	(void)tr_node_wait(node);
	tr_node_free(node);
	tr_config_free(cfg);
	node = NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	tr_buf out;
	size_t seg = size > 0 && data[0] % 2 == 0 ? 1u + data[0] % 64u : 0;

	if (node == NULL) {
		setup();
		show = getenv("FUZZ_HTTP_SHOW") != NULL;
	}
	tr_buf_init(&out);
	tr__door_fuzz_request(door, data, size, seg, &out);
	if (out.len > 0 && (out.len < 13 || memcmp(out.data, "HTTP/1.1 ", 9) != 0))
		abort(); /* bytes that are not a response */
	if (show) /* FUZZ_HTTP_SHOW=1: the answers on stderr, to look at a corpus */
		fprintf(stderr, "%.*s\n----\n", (int)out.len, (const char *)out.data);
	tr_buf_free(&out);
	return 0;
}
