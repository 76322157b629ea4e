-- expect: tests/lua/bad/unknown_fallback_and_tap.lua:5: pipeline 'p': tap: no actor named 'telemetry'
-- expect: tests/lua/bad/unknown_fallback_and_tap.lua:7: step 'generate': fallback: no actor named 'generate_bakup' (did you mean 'generate_backup'?)
actor "generate" { kind = "generate" }
actor "generate_backup" { kind = "generate" }
pipeline "p" {
  tap = "telemetry",
  step "generate" { fallback = "generate_bakup" },
}
