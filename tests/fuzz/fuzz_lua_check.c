/*
 * fuzz_lua_check.c -- libFuzzer target: bytes as a pipeline file, loaded
 * and validated as `troupe check` does (built-in kinds registered first;
 * tr__config_load_mem: the loader of tr_config_load with its sandbox, 64
 * MiB cap and 50 M instructions, on text instead of a file). Whatever
 * the text, the loader must return TR_OK with a config, or an error with
 * at least one diagnostic and no config.
 */
#include <stdint.h>
#include <stdlib.h>

#include "kit.h"
#include "lua/tlua.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int kinds;
	tr_config *c = NULL;
	tr_diag d;
	int rc;

	if (!kinds) {
		if (tr_actors_register_builtin() != TR_OK)
			abort();
		kinds = 1;
	}
	tr_diag_init(&d);
	rc = tr__config_load_mem("fuzz.lua", (const char *)data, size, &c, &d);
	if (rc == TR_OK ? c == NULL || d.n != 0 : c != NULL || (rc != TR_ENOMEM && d.n == 0))
		abort(); /* the contract of tr_config_load */
	tr_config_free(c);
	tr_diag_free(&d);
	return 0;
}
