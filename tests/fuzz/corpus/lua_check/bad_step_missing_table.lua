-- expect: tests/lua/bad/step_missing_table.lua:4: pipeline 'p': element 1: expected step, route or parallel, got a function (missing { ... } after step "name"?)
-- expect: tests/lua/bad/step_missing_table.lua:4: pipeline 'p': element 2: expected step, route or parallel, got string
actor "a" { kind = "intent" }
pipeline "p" {
  step "a",
  "a",
}
