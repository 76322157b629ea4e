/*
 * cli_db.c -- `troupe db migrate` and `troupe ingest`: the PostgreSQL
 * tools of the command line (blocking libpq; see db/migrate.h and
 * actors/rag/ingest.h).
 *
 * Where the database is: --conninfo, else the postgres { } declaration of
 * the pipeline files given (its conninfo, or the environment variable its
 * conninfo_env names), so that the same file that runs the node also
 * migrates its database.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <troupe/troupe.h>

#include "actors/rag/ingest.h"
#include "cli.h"
#include "db/migrate.h"
#include "lua/tlua.h"
#include "pipe/spec.h"

/* The conninfo for cmd: from --conninfo (given), else the files'
 * postgres { }. Returns a malloc'd string, or NULL after printing why. */
static char *conninfo_of(const char *cmd, const char *given, const char **files, size_t nfiles)
{
	tr_config *c = NULL;
	tr_diag d;
	char *out = NULL;

	if (given != NULL)
		return strdup(given);
	if (nfiles == 0) {
		fprintf(stderr, "troupe %s: no database: give --conninfo \"hostaddr=... dbname=...\" or a "
		        "pipeline file that declares postgres { conninfo = \"...\" }\n", cmd);
		return NULL;
	}
	tr_diag_init(&d);
	if (tr_config_load(files, nfiles, &c, &d) != TR_OK) {
		for (size_t i = 0; i < d.n; i++)
			fprintf(stderr, "%s\n", d.msgs[i]);
		tr_diag_free(&d);
		return NULL;
	}
	tr_diag_free(&d);
	if (!c->postgres.on) {
		fprintf(stderr, "troupe %s: %s declares no postgres { ... }: give --conninfo or add one\n",
		        cmd, files[0]);
	} else if (c->postgres.conninfo != NULL) {
		out = strdup(c->postgres.conninfo);
	} else {
		const char *v = getenv(c->postgres.conninfo_env);
		if (v == NULL || *v == '\0')
			fprintf(stderr, "troupe %s: postgres: conninfo_env names %s, which is not set\n", cmd,
			        c->postgres.conninfo_env);
		else
			out = strdup(v);
	}
	tr_config_free(c);
	return out;
}

static void on_applied(const tr_migration *m, void *ud)
{
	(void)ud;
	printf("applied %s\n", m->name);
}

int tr__cmd_db(int argc, char **argv)
{
	const char *given = NULL, **files = calloc((size_t)argc + 1, sizeof(char *));
	size_t nfiles = 0;
	int code = 2;
	if (files == NULL)
		return 1;
	if (argc < 1 || strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) {
		fputs("usage: troupe db migrate [--conninfo S] [FILE...]\n"
		      "  applies the SQL migrations shipped with troupe (documents and chunks for the\n"
		      "  postgres rag backend, the telemetry events table), each once, in order.\n"
		      "  The database: --conninfo, else the postgres { } of the pipeline FILEs.\n",
		      argc < 1 ? stderr : stdout);
		code = argc < 1 ? 2 : 0;
		goto out;
	}
	if (strcmp(argv[0], "migrate") != 0) {
		fprintf(stderr, "troupe db: unknown subcommand '%s' (troupe db migrate)\n", argv[0]);
		goto out;
	}
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--conninfo") == 0 && i + 1 < argc) {
			given = argv[++i];
		} else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			free(files);
			char *h[] = {(char *)"--help"};
			return tr__cmd_db(1, h);
		} else if (argv[i][0] == '-') {
			fprintf(stderr, "troupe db migrate: unknown option or missing value '%s'\n", argv[i]);
			goto out;
		} else {
			files[nfiles++] = argv[i];
		}
	}
	char *ci = conninfo_of("db migrate", given, files, nfiles);
	if (ci == NULL) {
		code = 1;
		goto out;
	}
	char err[512];
	int applied = 0, version = 0;
	int rc = tr_db_migrate(ci, on_applied, NULL, &applied, &version, err, sizeof(err));
	free(ci);
	if (rc != TR_OK) {
		fprintf(stderr, "troupe db migrate: %s\n", err);
		code = 1;
		goto out;
	}
	printf("database at version %d (%d migration%s applied now)\n", version, applied,
	       applied == 1 ? "" : "s");
	code = 0;
out:
	free(files);
	return code;
}

static int parse_u32(const char *s, uint32_t max, uint32_t *out)
{
	char *end;
	unsigned long v = strtoul(s, &end, 10);
	if (*s == '\0' || *end != '\0' || v > max)
		return -1;
	*out = (uint32_t)v;
	return 0;
}

int tr__cmd_ingest(int argc, char **argv)
{
	const char *given = NULL, *dir = NULL, *tenant = "", **files = calloc((size_t)argc + 1, sizeof(char *));
	size_t nfiles = 0;
	uint32_t chunk = 0, overlap = 30;
	int code = 2;
	if (files == NULL)
		return 1;
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];
		int has = i + 1 < argc;
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			fputs("usage: troupe ingest DIR [--tenant T] [--conninfo S] [--chunk N] [--overlap N] [FILE...]\n"
			      "  chunks the .md and .txt files under DIR as the rag kind does and loads them\n"
			      "  into PostgreSQL for `backend = \"postgres\"` (run `troupe db migrate` first).\n"
			      "  Unchanged files are skipped, changed ones replaced, removed ones deleted.\n"
			      "  --tenant T      the documents belong to tenant T (default: none)\n"
			      "  --chunk N       words per chunk (default 120), --overlap N (default 30)\n"
			      "  The database: --conninfo, else the postgres { } of the pipeline FILEs.\n",
			      stdout);
			code = 0;
			goto out;
		} else if (strcmp(a, "--tenant") == 0 && has) {
			tenant = argv[++i];
		} else if (strcmp(a, "--conninfo") == 0 && has) {
			given = argv[++i];
		} else if (strcmp(a, "--chunk") == 0 && has) {
			if (parse_u32(argv[++i], 10000, &chunk) != 0 || chunk == 0) {
				fprintf(stderr, "troupe ingest: --chunk wants 1 to 10000 words, got '%s'\n", argv[i]);
				goto out;
			}
		} else if (strcmp(a, "--overlap") == 0 && has) {
			if (parse_u32(argv[++i], 9999, &overlap) != 0) {
				fprintf(stderr, "troupe ingest: --overlap wants 0 to 9999 words, got '%s'\n", argv[i]);
				goto out;
			}
		} else if (a[0] == '-') {
			fprintf(stderr, "troupe ingest: unknown option or missing value '%s' (see --help)\n", a);
			goto out;
		} else if (dir == NULL) {
			dir = a;
		} else {
			files[nfiles++] = a;
		}
	}
	if (dir == NULL) {
		fputs("usage: troupe ingest DIR [--tenant T] [--conninfo S] [FILE...]\n", stderr);
		goto out;
	}
	if (chunk != 0 && overlap >= chunk) {
		fprintf(stderr, "troupe ingest: --overlap (%u) must be less than --chunk (%u)\n", overlap,
		        chunk);
		goto out;
	}
	char *ci = conninfo_of("ingest", given, files, nfiles);
	if (ci == NULL) {
		code = 1;
		goto out;
	}
	rag_ingest_opts o = {ci, dir, tenant, chunk ? chunk : 120, chunk ? overlap : 30};
	rag_ingest_stats st;
	char err[512];
	int rc = rag_ingest(&o, &st, err, sizeof(err));
	free(ci);
	if (rc != TR_OK) {
		fprintf(stderr, "troupe ingest: %s\n", err);
		code = 1;
		goto out;
	}
	printf("ingested %s%s%s: %zu files (%zu added, %zu updated, %zu unchanged), %zu removed, "
	       "%zu chunks written, %llu ms\n",
	       dir, *tenant ? " for tenant " : "", tenant, st.files, st.added, st.updated,
	       st.unchanged, st.removed, st.chunks, (unsigned long long)st.ms);
	code = 0;
out:
	free(files);
	return code;
}
