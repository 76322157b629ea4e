-- expect: tests/lua/bad/cache_bad.lua:7: step 'rag': cache: unknown key 'capcity' (did you mean 'capacity'?)
-- expect: tests/lua/bad/cache_bad.lua:7: step 'rag': cache: missing ttl (e.g. ttl = "60s")
-- expect: tests/lua/bad/cache_bad.lua:7: step 'rag': cache: key: element 2: expected a field name, got 3
-- expect: tests/lua/bad/cache_bad.lua:8: step 'rag': cache: expected a table like { ttl = "60s", key = { "text" } }, got boolean
actor "rag" { kind = "rag" }
pipeline "p" {
  step "rag" { cache = { key = { "text", 3 }, capcity = 10 } },
  step "rag" { cache = true },
}
