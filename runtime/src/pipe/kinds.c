/*
 * pipe/kinds.c -- the registry of actor kinds. See kinds.h.
 */
#include <stdio.h>
#include <string.h>

#include "pipe/kinds.h"

static const char *const builtin[] = {"intent", "rag", "generate", "safety", "execute",
                                      "telemetry"};

static struct {
	char name[32];
	const tr_actor_ops *ops;
	tr_kind_check_fn check;
} kinds[TR_KINDS_MAX];
static size_t nkinds;

int tr_kind_register(const char *name, const tr_actor_ops *ops)
{
	return tr_kind_register_checked(name, ops, NULL);
}

int tr_kind_check(const tr_actor_spec *a, char *err, size_t errlen)
{
	for (size_t i = 0; a->kind != NULL && i < nkinds; i++)
		if (strcmp(kinds[i].name, a->kind) == 0)
			return kinds[i].check ? kinds[i].check(a, err, errlen) : TR_OK;
	return TR_OK;
}

int tr_kind_register_checked(const char *name, const tr_actor_ops *ops, tr_kind_check_fn check)
{
	size_t len = name ? strlen(name) : 0;

	if (len == 0 || len >= sizeof(kinds[0].name) || ops == NULL)
		return TR_EINVAL;
	for (size_t i = 0; i < nkinds; i++) {
		if (strcmp(kinds[i].name, name) == 0) {
			kinds[i].ops = ops;
			kinds[i].check = check;
			return TR_OK;
		}
	}
	if (nkinds == TR_KINDS_MAX)
		return TR_ELIMIT;
	memcpy(kinds[nkinds].name, name, len + 1);
	kinds[nkinds].ops = ops;
	kinds[nkinds].check = check;
	nkinds++;
	return TR_OK;
}

const tr_actor_ops *tr_kind_find(const char *name)
{
	for (size_t i = 0; i < nkinds; i++)
		if (strcmp(kinds[i].name, name) == 0)
			return kinds[i].ops;
	return NULL;
}

static int is_builtin(const char *name)
{
	for (size_t i = 0; i < sizeof(builtin) / sizeof(builtin[0]); i++)
		if (strcmp(builtin[i], name) == 0)
			return 1;
	return 0;
}

int tr_kind_known(const char *name)
{
	return is_builtin(name) || tr_kind_find(name) != NULL;
}

static void append(char *buf, size_t len, size_t *off, const char *k)
{
	int w = snprintf(buf + *off, len - *off, "%s%s", *off ? ", " : "", k);
	if (w > 0 && (size_t)w < len - *off)
		*off += (size_t)w;
}

void tr_kind_list(char *buf, size_t len)
{
	size_t off = 0;

	if (len == 0)
		return;
	buf[0] = '\0';
	for (size_t i = 0; i < sizeof(builtin) / sizeof(builtin[0]); i++)
		append(buf, len, &off, builtin[i]);
	for (size_t i = 0; i < nkinds; i++)
		if (!is_builtin(kinds[i].name))
			append(buf, len, &off, kinds[i].name);
}
