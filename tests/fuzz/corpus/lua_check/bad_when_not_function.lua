-- expect: tests/lua/bad/when_not_function.lua:4: step 'a': when: expected a function(msg) returning true or false, got boolean
-- expect: tests/lua/bad/when_not_function.lua:4: parallel: when: expected a function(msg) returning true or false, got string
actor "a" { kind = "intent" }
pipeline "p" { step "a" { when = true }, parallel { { step "a" {} }, when = "x" } }
