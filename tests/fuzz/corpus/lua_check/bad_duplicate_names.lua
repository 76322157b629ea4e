-- expect: tests/lua/bad/duplicate_names.lua:6: actor 'intent' is declared twice (first at tests/lua/bad/duplicate_names.lua:5)
-- expect: tests/lua/bad/duplicate_names.lua:7: supervisor 'intent': the name is taken by actor 'intent' (tests/lua/bad/duplicate_names.lua:5)
-- expect: tests/lua/bad/duplicate_names.lua:9: pipeline 'p' is declared twice (first at tests/lua/bad/duplicate_names.lua:8)
-- expect: tests/lua/bad/duplicate_names.lua:11: node is declared twice (first at tests/lua/bad/duplicate_names.lua:10)
actor "intent" { kind = "intent" }
actor "intent" { kind = "rag" }
supervisor "intent" { children = { "intent" } }
pipeline "p" { step "intent" {} }
pipeline "p" { step "intent" {} }
node { name = "a" }
node { name = "b" }
