-- expect: tests/lua/bad/step_is_supervisor.lua:5: pipeline 'p': tap: 'root' is a supervisor, not an actor
-- expect: tests/lua/bad/step_is_supervisor.lua:5: step 'root': 'root' is a supervisor, not an actor
actor "a" { kind = "intent" }
supervisor "root" { children = { "a" } }
pipeline "p" { step "root" {}, tap = "root" }
