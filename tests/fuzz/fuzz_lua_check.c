/*
 * fuzz_lua_check.c -- libFuzzer target: bytes as a pipeline file, loaded
 * and validated as `troupe check` does (built-in kinds registered first;
 * tr__config_load_mem: the loader of tr_config_load with its sandbox, on
 * text instead of a file). Whatever the text, the loader must return
 * TR_OK with a config, or an error with at least one diagnostic and no
 * config.
 *
 * The limits are lowered from 50 M instructions and 64 MiB to 100 k and
 * 16 MiB: the largest file of the repository loads in under 1 000
 * instructions (the count hook's grain), so no real file comes near
 * either, while an input that loops, or runs a pattern bomb (charged to
 * the same budget), reaches its limit through the same code 500 times
 * sooner. At 50 M such inputs were most of the fuzzer's time (330
 * execs/s on the grown corpus; 2.2 k at 100 k).
 */
#include <stdint.h>
#include <stdlib.h>

#include "kit.h"
#include "lua/tlua.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int kinds;
	static const tr_lua_limits lim = {.mem_bytes = (size_t)16 << 20, .instructions = 100000};
	tr_config *c = NULL;
	tr_diag d;
	int rc;

	if (!kinds) {
		if (tr_actors_register_builtin() != TR_OK)
			abort();
		kinds = 1;
	}
	tr_diag_init(&d);
	rc = tr__config_load_mem("fuzz.lua", (const char *)data, size, &lim, &c, &d);
	if (rc == TR_OK ? c == NULL || d.n != 0 : c != NULL || (rc != TR_ENOMEM && d.n == 0))
		abort(); /* the contract of tr_config_load */
	tr_config_free(c);
	tr_diag_free(&d);
	return 0;
}
