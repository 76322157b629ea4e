/*
 * actors/rag/ingest.c -- loading a folder into PostgreSQL. See ingest.h.
 *
 * The chunks come from rag_index_build, so a question ranked by the
 * postgres backend sees the same passages, with the same sources, as the
 * embedded one would. Chunks are inserted 100 per statement (500
 * parameters), which keeps round trips few without building huge
 * statements.
 */
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>
#include <mbedtls/sha256.h>

#include <troupe/err.h>

#include "actors/rag/ingest.h"
#include "actors/rag/rag.h"
#include "core/alloc.h"

#define ROWS_PER_INSERT 100

static void trim(char *s)
{
	size_t n = strlen(s);
	while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ' '))
		s[--n] = '\0';
}

/* Runs a statement; TR_OK or TR_EFAILED with `what: message`. *res gets
 * the result when wanted (the caller clears it). */
static int run(PGconn *c, const char *sql, int n, const char *const *p, const char *what,
               PGresult **res, char *err, size_t errlen)
{
	PGresult *r = PQexecParams(c, sql, n, NULL, p, NULL, NULL, 0);
	ExecStatusType st = PQresultStatus(r);
	if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
		snprintf(err, errlen, "%s: %s", what, PQresultErrorMessage(r));
		trim(err);
		PQclear(r);
		return TR_EFAILED;
	}
	if (res != NULL)
		*res = r;
	else
		PQclear(r);
	return TR_OK;
}

/* SHA-256 of a file's text as the index holds it: [beg, end), from its
 * first chunk's start to its last chunk's end (chunks overlap, so the
 * range, not the chunks). Whitespace past the last word is not part of
 * it, which only means such a change is not worth a re-ingest. */
static void file_sha(const rag_index *ix, size_t beg, size_t end, char hex[65])
{
	unsigned char d[32];
	mbedtls_sha256_ret((const unsigned char *)ix->text + beg, end - beg, d, 0);
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", d[i]);
}

/* Inserts chunks [from, to) of one document. */
static int insert_chunks(PGconn *c, const rag_index *ix, uint32_t from, uint32_t to,
                         const char *doc_id, const char *tenant, char *err, size_t errlen)
{
	char sql[ROWS_PER_INSERT * 40 + 128];
	const char *p[ROWS_PER_INSERT * 5];
	char ord[ROWS_PER_INSERT][12];
	char **bodies = tr__calloc(ROWS_PER_INSERT, sizeof(char *));
	int rc = TR_OK;
	if (bodies == NULL)
		return TR_ENOMEM;
	for (uint32_t at = from; at < to && rc == TR_OK; at += ROWS_PER_INSERT) {
		uint32_t n = to - at < ROWS_PER_INSERT ? to - at : ROWS_PER_INSERT;
		size_t len = (size_t)snprintf(sql, sizeof(sql),
		                              "INSERT INTO troupe_chunks (document_id, tenant, ord, "
		                              "source, body) VALUES ");
		for (uint32_t i = 0; i < n; i++) {
			const rag_chunk *ch = &ix->chunks[at + i];
			bodies[i] = tr__strndup(ix->text + ch->off, ch->len);
			if (bodies[i] == NULL) {
				rc = TR_ENOMEM;
				n = i;
				break;
			}
			snprintf(ord[i], sizeof(ord[i]), "%u", at + i - from);
			p[5 * i] = doc_id;
			p[5 * i + 1] = tenant;
			p[5 * i + 2] = ord[i];
			p[5 * i + 3] = rag_chunk_source(ix, at + i);
			p[5 * i + 4] = bodies[i];
			len += (size_t)snprintf(sql + len, sizeof(sql) - len, "%s($%u,$%u,$%u,$%u,$%u)",
			                        i ? "," : "", 5 * i + 1, 5 * i + 2, 5 * i + 3, 5 * i + 4,
			                        5 * i + 5);
		}
		if (rc == TR_OK)
			rc = run(c, sql, (int)(5 * n), p, "inserting chunks", NULL, err, errlen);
		for (uint32_t i = 0; i < n; i++)
			tr__free(bodies[i]);
	}
	tr__free(bodies);
	return rc;
}

int rag_ingest(const rag_ingest_opts *o, rag_ingest_stats *st, char *err, size_t errlen)
{
	static char md[] = ".md", txt[] = ".txt";
	char *const ext[] = {md, txt};
	rag_listing ls = {NULL, 0};
	rag_index *ix = NULL;
	PGconn *c = NULL;
	PGresult *r = NULL;
	const char *tenant = o->tenant ? o->tenant : "";
	uint64_t t0 = 0;
	int rc, began = 0;
	struct timespec ts;

	memset(st, 0, sizeof(*st));
	clock_gettime(CLOCK_MONOTONIC, &ts);
	t0 = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
	rc = rag_scan(o->dir, ext, 2, &ls, err, errlen);
	if (rc != TR_OK)
		return TR_EIO;
	rag_build_opts bo = {o->chunk ? o->chunk : 120, o->chunk ? o->overlap : 30, NULL};
	if (bo.overlap >= bo.chunk)
		bo.overlap = bo.chunk / 4;
	rc = rag_index_build(o->dir, &ls, &bo, &ix);
	if (rc != TR_OK) {
		snprintf(err, errlen, "chunking %s: %s", o->dir, tr_strerror(rc));
		goto out;
	}
	c = PQconnectdb(o->conninfo);
	if (c == NULL || PQstatus(c) != CONNECTION_OK) {
		snprintf(err, errlen, "cannot connect: %s", c ? PQerrorMessage(c) : "out of memory");
		trim(err);
		rc = TR_EIO;
		goto out;
	}
	rc = run(c, "BEGIN", 0, NULL, "begin", NULL, err, errlen);
	began = rc == TR_OK;
	/* The chunks of file f are a contiguous run (the builder goes file by
	 * file); its text is [first chunk's offset, end of its last chunk). */
	for (uint32_t f = 0, ci = 0; rc == TR_OK && f < ix->nfiles; f++) {
		uint32_t cj = ci;
		while (cj < ix->nchunks && ix->chunks[cj].file == f)
			cj++;
		const char *path = ix->srcs + ix->file_path[f];
		size_t beg = ci < cj ? ix->chunks[ci].off : 0, end = beg;
		for (uint32_t k = ci; k < cj; k++)
			if (ix->chunks[k].off + ix->chunks[k].len > end)
				end = ix->chunks[k].off + ix->chunks[k].len;
		char sha[65], id[24];
		file_sha(ix, beg, end, sha);
		const char *p[3] = {tenant, path, sha};
		st->files++;
		/* New or changed: the upsert returns the row (and whether it is new). */
		rc = run(c,
		         "INSERT INTO troupe_documents (tenant, source, sha256) VALUES ($1, $2, $3) "
		         "ON CONFLICT (tenant, source) DO UPDATE SET sha256 = EXCLUDED.sha256, "
		         "ingested_at = now() WHERE troupe_documents.sha256 <> EXCLUDED.sha256 "
		         "RETURNING id, (xmax = 0) AS inserted",
		         3, p, path, &r, err, errlen);
		if (rc != TR_OK)
			break;
		if (PQntuples(r) == 0) {
			st->unchanged++;
		} else {
			snprintf(id, sizeof(id), "%s", PQgetvalue(r, 0, 0));
			int inserted = PQgetvalue(r, 0, 1)[0] == 't';
			const char *q[1] = {id};
			st->added += inserted;
			st->updated += !inserted;
			if (!inserted)
				rc = run(c, "DELETE FROM troupe_chunks WHERE document_id = $1", 1, q,
				         "replacing chunks", NULL, err, errlen);
			if (rc == TR_OK)
				rc = insert_chunks(c, ix, ci, cj, id, tenant, err, errlen);
			if (rc == TR_OK)
				st->chunks += cj - ci;
		}
		PQclear(r);
		r = NULL;
		ci = cj;
	}
	if (rc == TR_OK) {
		/* Files gone from the folder: their documents (and chunks, by cascade). */
		size_t cap = 2, len = 0;
		for (uint32_t f = 0; f < ix->nfiles; f++)
			cap += strlen(ix->srcs + ix->file_path[f]) * 2 + 4;
		char *arr = tr__malloc(cap);
		if (arr == NULL) {
			rc = TR_ENOMEM;
		} else {
			/* a text[] literal: {"a","b"} with " and \ escaped */
			arr[len++] = '{';
			for (uint32_t f = 0; f < ix->nfiles; f++) {
				const char *s = ix->srcs + ix->file_path[f];
				if (f)
					arr[len++] = ',';
				arr[len++] = '"';
				for (; *s; s++) {
					if (*s == '"' || *s == '\\')
						arr[len++] = '\\';
					arr[len++] = *s;
				}
				arr[len++] = '"';
			}
			arr[len++] = '}';
			arr[len] = '\0';
			const char *p[2] = {tenant, arr};
			rc = run(c, "DELETE FROM troupe_documents WHERE tenant = $1 AND NOT (source = ANY ($2::text[]))",
			         2, p, "removing deleted files", &r, err, errlen);
			if (rc == TR_OK) {
				st->removed = (size_t)strtoull(PQcmdTuples(r), NULL, 10);
				PQclear(r);
				r = NULL;
			}
			tr__free(arr);
		}
	}
	if (rc == TR_OK)
		rc = run(c, "COMMIT", 0, NULL, "commit", NULL, err, errlen);
	else if (began)
		(void)run(c, "ROLLBACK", 0, NULL, "rollback", NULL, (char[64]){0}, 64);
out:
	PQclear(r);
	PQfinish(c);
	rag_index_unref(ix);
	rag_listing_free(&ls);
	clock_gettime(CLOCK_MONOTONIC, &ts);
	st->ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u - t0;
	return rc;
}
