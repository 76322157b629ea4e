/*
 * db/migrate.h -- `troupe db migrate`: the SQL migrations shipped in the
 * repo (db/migrations/NNN_name.sql, embedded into the binary at build
 * time), applied in version order, each once.
 *
 * Each pending migration runs in its own transaction together with its
 * row in troupe_migrations, so a failed one leaves nothing behind and
 * the next run starts over from it. A session advisory lock serialises
 * nodes that migrate at the same time. Blocking libpq: this is a command
 * line tool, never called on a worker loop.
 */
#ifndef TR_DB_MIGRATE_H
#define TR_DB_MIGRATE_H

#include <stddef.h>

typedef struct tr_migration {
	int version;
	const char *name; /* "001_documents.sql" */
	const char *sql;
} tr_migration;

extern const tr_migration tr__migrations[];
extern const size_t tr__nmigrations;

/* Called for each migration applied (in order). */
typedef void (*tr_migrate_cb)(const tr_migration *m, void *ud);

/*
 * Connects with `conninfo`, applies the pending migrations. TR_OK with
 * *applied (how many ran now) and *version (the database's version after
 * it: the highest applied, 0 for none); TR_EIO when the server cannot be
 * reached, TR_EFAILED when a migration fails: err says which and the
 * server's message ("002_events.sql: ERROR: ...").
 */
int tr_db_migrate(const char *conninfo, tr_migrate_cb cb, void *ud, int *applied, int *version,
                  char *err, size_t errlen);

#endif
