/*
 * db/migrate.c -- applying the embedded SQL migrations. See migrate.h.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include <troupe/err.h>

#include "db/migrate.h"

/* pg_advisory_lock key: "troupe" in ASCII, so it is recognisable in pg_locks. */
#define LOCK_KEY "126943150649445"

/* Runs sql (no params); TR_OK, else TR_EFAILED with the server's message
 * prefixed by `what`. */
static int exec(PGconn *c, const char *sql, const char *what, char *err, size_t errlen)
{
	PGresult *r = PQexec(c, sql);
	ExecStatusType st = PQresultStatus(r);
	int rc = TR_OK;
	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
		const char *m = PQresultErrorMessage(r);
		snprintf(err, errlen, "%s: %s", what, m && *m ? m : PQerrorMessage(c));
		/* libpq ends messages with a newline */
		size_t n = strlen(err);
		while (n > 0 && (err[n - 1] == '\n' || err[n - 1] == ' '))
			err[--n] = '\0';
		rc = TR_EFAILED;
	}
	PQclear(r);
	return rc;
}

static int applied_already(PGconn *c, int version, int *yes, char *err, size_t errlen)
{
	char v[16];
	const char *p[1] = {v};
	snprintf(v, sizeof(v), "%d", version);
	PGresult *r = PQexecParams(c, "SELECT 1 FROM troupe_migrations WHERE version = $1", 1, NULL,
	                           p, NULL, NULL, 0);
	int rc = TR_OK;
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		snprintf(err, errlen, "reading troupe_migrations: %s", PQresultErrorMessage(r));
		rc = TR_EFAILED;
	} else {
		*yes = PQntuples(r) > 0;
	}
	PQclear(r);
	return rc;
}

static int apply(PGconn *c, const tr_migration *m, char *err, size_t errlen)
{
	char v[16];
	const char *p[2] = {v, m->name};
	int rc = exec(c, "BEGIN", m->name, err, errlen);
	if (rc == TR_OK)
		rc = exec(c, m->sql, m->name, err, errlen);
	if (rc == TR_OK) {
		snprintf(v, sizeof(v), "%d", m->version);
		PGresult *r = PQexecParams(c, "INSERT INTO troupe_migrations (version, name) VALUES ($1, $2)",
		                           2, NULL, p, NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_COMMAND_OK) {
			snprintf(err, errlen, "%s: recording it: %s", m->name, PQresultErrorMessage(r));
			rc = TR_EFAILED;
		}
		PQclear(r);
	}
	if (rc == TR_OK)
		rc = exec(c, "COMMIT", m->name, err, errlen);
	if (rc != TR_OK) {
		char ignore[64];
		(void)exec(c, "ROLLBACK", "rollback", ignore, sizeof(ignore));
	}
	return rc;
}

int tr_db_migrate(const char *conninfo, tr_migrate_cb cb, void *ud, int *applied, int *version,
                  char *err, size_t errlen)
{
	PGconn *c = PQconnectdb(conninfo);
	int rc = TR_OK, locked = 0;

	*applied = 0;
	*version = 0;
	if (c == NULL || PQstatus(c) != CONNECTION_OK) {
		snprintf(err, errlen, "cannot connect: %s", c ? PQerrorMessage(c) : "out of memory");
		size_t n = strlen(err);
		while (n > 0 && (err[n - 1] == '\n' || err[n - 1] == ' '))
			err[--n] = '\0';
		PQfinish(c);
		return TR_EIO;
	}
	rc = exec(c, "SET client_min_messages = warning", "settings", err, errlen);
	if (rc == TR_OK)
		rc = exec(c, "SELECT pg_advisory_lock(" LOCK_KEY ")", "locking", err, errlen);
	locked = rc == TR_OK;
	if (rc == TR_OK)
		rc = exec(c,
		          "CREATE TABLE IF NOT EXISTS troupe_migrations ("
		          " version integer PRIMARY KEY, name text NOT NULL,"
		          " applied_at timestamptz NOT NULL DEFAULT now())",
		          "creating troupe_migrations", err, errlen);
	for (size_t i = 0; rc == TR_OK && i < tr__nmigrations; i++) {
		const tr_migration *m = &tr__migrations[i];
		int yes = 0;
		rc = applied_already(c, m->version, &yes, err, errlen);
		if (rc != TR_OK || yes) {
			if (rc == TR_OK)
				*version = m->version;
			continue;
		}
		rc = apply(c, m, err, errlen);
		if (rc == TR_OK) {
			(*applied)++;
			*version = m->version;
			if (cb != NULL)
				cb(m, ud);
		}
	}
	if (locked) {
		char ignore[64];
		(void)exec(c, "SELECT pg_advisory_unlock(" LOCK_KEY ")", "unlock", ignore, sizeof(ignore));
	}
	PQfinish(c);
	return rc;
}
