-- Documents and their chunks, for the rag kind's postgres backend
-- (`troupe ingest DIR --tenant T` fills them; rag ranks with ts_rank_cd).
-- A chunk's tsvector is generated from its text, and the GIN index is
-- built without a pending list (fastupdate = off): rows inserted after
-- CREATE INDEX would otherwise sit in the pending list, where the planner
-- prefers a sequential scan (../shared/deps.md §6).
CREATE TABLE troupe_documents (
    id          bigserial PRIMARY KEY,
    tenant      text NOT NULL DEFAULT '',
    source      text NOT NULL,            -- path relative to the ingested folder
    sha256      text NOT NULL,            -- of the file's bytes: unchanged files are skipped
    ingested_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, source)
);

CREATE TABLE troupe_chunks (
    id          bigserial PRIMARY KEY,
    document_id bigint NOT NULL REFERENCES troupe_documents (id) ON DELETE CASCADE,
    tenant      text NOT NULL DEFAULT '',
    ord         integer NOT NULL,         -- position in its document
    source      text NOT NULL,            -- "guide.md#Heading" or "notes.txt:12", as the embedded rag says
    body        text NOT NULL,
    tsv         tsvector GENERATED ALWAYS AS (to_tsvector('english', body)) STORED
);

CREATE INDEX troupe_chunks_tsv ON troupe_chunks USING gin (tsv) WITH (fastupdate = off);
CREATE INDEX troupe_chunks_tenant ON troupe_chunks (tenant, document_id);
