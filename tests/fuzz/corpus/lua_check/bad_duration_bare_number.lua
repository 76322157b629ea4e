-- expect: tests/lua/bad/duration_bare_number.lua:4: pipeline 'p': deadline: expected a duration string (units us, ms, s, m, h: "500us", "50ms", "1.5s", "1m"), got 5
-- expect: tests/lua/bad/duration_bare_number.lua:6: step 'intent': timeout: expected a duration string (units us, ms, s, m, h: "500us", "50ms", "1.5s", "1m"), got 50
actor "intent" { kind = "intent" }
pipeline "p" {
  deadline = 5,
  step "intent" { timeout = 50 },
}
