-- expect: tests/lua/bad/tap_events_output_bad.lua:7: pipeline 'p': tap_events: unknown step event 'stop' (known: start, end, retry, timeout, error)
-- expect: tests/lua/bad/tap_events_output_bad.lua:7: pipeline 'p': output: expected a list of field names, got 3
-- expect: tests/lua/bad/tap_events_output_bad.lua:8: pipeline 'q': tap_events: expected at least one step event (start, end, retry, timeout, error)
-- expect: tests/lua/bad/tap_events_output_bad.lua:8: pipeline 'q': output: element 2: expected a field name, got boolean
actor "a" { kind = "intent" }
actor "t" { kind = "telemetry" }
pipeline "p" { tap = "t", tap_events = { "end", "stop" }, output = 3, step "a" {} }
pipeline "q" { tap = "t", tap_events = {}, output = { "answer", true }, step "a" {} }
