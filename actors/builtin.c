/*
 * actors/builtin.c -- registers the built-in kinds (pipe/kinds.h). Each
 * kind lives in actors/<kind>/ and exports its ops table and settings
 * check; add a kind by adding its row here and its sources to
 * actors/meson.build.
 */
#include "actors/kit.h"
#include "actors/kinds.h"
#include "pipe/kinds.h"

static const struct {
	const char *name;
	const tr_actor_ops *ops;
	tr_kind_check_fn check;
} builtin[] = {
	TR_BUILTIN_KINDS
	{NULL, NULL, NULL},
};

int tr_actors_register_builtin(void)
{
	for (size_t i = 0; builtin[i].name != NULL; i++) {
		int rc = tr_kind_register_checked(builtin[i].name, builtin[i].ops, builtin[i].check);
		if (rc != TR_OK)
			return rc;
	}
	return TR_OK;
}
