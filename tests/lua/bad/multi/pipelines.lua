-- The second file of a two-file namespace: its duplicates name both
-- places. Expectations are in actors.lua.
--
--
--
actor "rag" { kind = "generate" }
pipeline "qa" { step "rag" {} }
supervisor "root" { children = { "rag" } }
