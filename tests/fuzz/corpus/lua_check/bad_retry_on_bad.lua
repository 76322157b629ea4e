-- expect: tests/lua/bad/retry_on_bad.lua:5: step 'a': retry_on: unknown error class 'timout' (did you mean 'timeout'?)
-- expect: tests/lua/bad/retry_on_bad.lua:5: step 'a': retry_on: unknown error class 'everything' (known: timeout, error, overload, rejected, crashed)
-- expect: tests/lua/bad/retry_on_bad.lua:5: step 'a': retry_on: element 4: expected a string, got 5
actor "a" { kind = "intent" }
pipeline "p" { step "a" { retries = 2, retry_on = { "timout", "overload", "everything", 5 } } }
