/*
 * actors/rag/ingest.h -- `troupe ingest DIR [--tenant T]`: the corpus of a
 * folder, chunked exactly as the embedded bm25 backend chunks it (the
 * same scan, sections and sources, rag_index_build), loaded into
 * troupe_documents / troupe_chunks for the postgres backend.
 *
 * Incremental: a file whose bytes (SHA-256) are unchanged since the last
 * ingest of that tenant is skipped; a changed file's chunks are replaced;
 * files gone from the folder are deleted with their chunks. All in one
 * transaction, so readers see the old corpus or the new one. Blocking
 * libpq: a command line tool.
 */
#ifndef TR_ACTORS_RAG_INGEST_H
#define TR_ACTORS_RAG_INGEST_H

#include <stddef.h>
#include <stdint.h>

typedef struct rag_ingest_opts {
	const char *conninfo;
	const char *dir;
	const char *tenant;   /* "" = none */
	uint32_t chunk, overlap; /* words; 0 = the rag defaults (120, 30) */
} rag_ingest_opts;

typedef struct rag_ingest_stats {
	size_t files, unchanged, updated, added, removed, chunks;
	uint64_t ms;
} rag_ingest_stats;

/* TR_OK; TR_EIO (the folder or the server: err says which), TR_EFAILED
 * (a statement failed: err has the server's message), TR_ENOMEM. */
int rag_ingest(const rag_ingest_opts *o, rag_ingest_stats *st, char *err, size_t errlen);

#endif
