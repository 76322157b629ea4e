-- expect: tests/lua/bad/retry_on_wrong_type.lua:3: step 'a': retry_on: expected a list of error classes (timeout, error, overload, rejected, crashed), got 7
actor "a" { kind = "intent" }
pipeline "p" { step "a" { retries = 1, retry_on = 7 } }
