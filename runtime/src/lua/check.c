/*
 * lua/check.c -- `troupe check FILE...`: load and validate pipeline files
 * without running anything, for editors and CI.
 */
#include <stdio.h>

#include "lua/tlua.h"

int tr_check_main(int argc, char **argv)
{
	tr_config *c = NULL;
	tr_diag d;
	int rc;

	if (argc < 2) {
		fprintf(stderr, "usage: troupe check FILE...\n");
		return 2;
	}
	tr_diag_init(&d);
	rc = tr_config_load((const char *const *)(argv + 1), (size_t)argc - 1, &c, &d);
	for (size_t i = 0; i < d.n; i++)
		fprintf(stderr, "%s\n", d.msgs[i]);
	if (rc == TR_ENOMEM)
		fprintf(stderr, "troupe check: out of memory\n");
	tr_diag_free(&d);
	if (rc != TR_OK)
		return 1;
	tr_config_free(c);
	for (int i = 1; i < argc; i++)
		printf("%s%s", i > 1 ? " " : "", argv[i]);
	printf(": ok\n");
	return 0;
}
