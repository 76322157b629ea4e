-- expect: tests/lua/bad/unknown_key_step.lua:6: step 'intent': unknown key 'colaesce' (did you mean 'coalesce'?)
-- expect: tests/lua/bad/unknown_key_step.lua:6: step 'intent': unknown key 'timout' (did you mean 'timeout'?)
-- expect: tests/lua/bad/unknown_key_step.lua:6: step 'intent': unknown key 'zzz'
actor "intent" { kind = "intent" }
pipeline "p" {
  step "intent" { timout = "50ms", retries = 1, colaesce = true, zzz = 1 },
}
