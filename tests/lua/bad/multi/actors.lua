-- expect: tests/lua/bad/multi/pipelines.lua:6: actor 'rag' is declared twice (first at tests/lua/bad/multi/actors.lua:5)
-- expect: tests/lua/bad/multi/pipelines.lua:7: pipeline 'qa' is declared twice (first at tests/lua/bad/multi/actors.lua:6)
-- expect: tests/lua/bad/multi/pipelines.lua:8: supervisor 'root': actor 'rag' already belongs to supervisor 'top' (tests/lua/bad/multi/actors.lua:7)
-- (this file is loaded together with pipelines.lua)
actor "rag" { kind = "rag" }
pipeline "qa" { step "rag" {} }
supervisor "top" { children = { "rag" } }
