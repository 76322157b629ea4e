-- The default assistant on real backends: retrieval ranked by PostgreSQL
-- full-text search over the ingested docs, and the retrieval cache shared
-- by every node through Redis (with the in-process LRU in front). Give
-- this file before the assistant's own:
--
--   export TROUPE_PG="hostaddr=127.0.0.1 port=5432 dbname=troupe"
--   export TROUPE_REDIS="redis://127.0.0.1:6379/0"
--   ./build/troupe db migrate pipelines/assistant-postgres.lua
--   ./build/troupe ingest docs pipelines/assistant-postgres.lua
--   ./build/troupe run pipelines/assistant-postgres.lua pipelines/assistant.lua
--
-- (scripts/pg and scripts/redis start throwaway servers for a try.)

postgres { conninfo_env = "TROUPE_PG", pool = 8, queue = 2000, statement_timeout = "2s",
           connect_timeout = "2s" }
redis { url_env = "TROUPE_REDIS", timeout = "100ms", connect_timeout = "500ms" }

-- Read by pipelines/assistant.lua.
ASSISTANT = {
  rag = { kind = "rag", backend = "postgres", mailbox = 512, overflow = "block", instances = 4,
          top_k = 4 },
  cache_store = "redis",
}
