-- expect: tests/lua/bad/wrong_types.lua:8: actor 'intent': mailbox: expected a positive integer, got string
-- expect: tests/lua/bad/wrong_types.lua:8: actor 'intent': instances: expected a positive integer, got 0
-- expect: tests/lua/bad/wrong_types.lua:8: actor 'intent': batch: expected a positive integer, got 1.5
-- expect: tests/lua/bad/wrong_types.lua:9: supervisor 'root': max_restarts: expected a non-negative integer, got string
-- expect: tests/lua/bad/wrong_types.lua:10: pipeline 'p': max_inflight: expected a positive integer, got -1
-- expect: tests/lua/bad/wrong_types.lua:10: step 'intent': retries: expected a non-negative integer, got string
-- expect: tests/lua/bad/wrong_types.lua:10: step 'intent': coalesce: expected true or false, got string
actor "intent" { kind = "intent", mailbox = "big", instances = 0, batch = 1.5 }
supervisor "root" { children = { "intent" }, max_restarts = "many" }
pipeline "p" { max_inflight = -1, step "intent" { retries = "two", coalesce = "yes" } }
