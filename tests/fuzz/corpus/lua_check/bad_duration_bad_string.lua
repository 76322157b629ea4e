-- expect: tests/lua/bad/duration_bad_string.lua:7: supervisor 'root': within: bad duration '10 s' (units us, ms, s, m, h: "500us", "50ms", "1.5s", "1m")
-- expect: tests/lua/bad/duration_bad_string.lua:8: pipeline 'p': deadline: bad duration '5x' (units us, ms, s, m, h: "500us", "50ms", "1.5s", "1m")
-- expect: tests/lua/bad/duration_bad_string.lua:10: step 'intent': timeout: must be more than 0
-- expect: tests/lua/bad/duration_bad_string.lua:10: step 'intent': backoff: base: bad duration '1d' (units us, ms, s, m, h: "500us", "50ms", "1.5s", "1m")
-- expect: tests/lua/bad/duration_bad_string.lua:10: step 'intent': backoff: max: bad duration 'ms' (units us, ms, s, m, h: "500us", "50ms", "1.5s", "1m")
actor "intent" { kind = "intent" }
supervisor "root" { children = { "intent" }, within = "10 s" }
pipeline "p" {
  deadline = "5x",
  step "intent" { timeout = "0ms", backoff = { base = "1d", max = "ms" } },
}
