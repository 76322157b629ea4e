-- expect: tests/lua/bad/unknown_kind.lua:3: actor 'rag': unknown kind 'ragg' (did you mean 'rag'? known kinds: intent, rag, generate, safety, execute, telemetry)
-- expect: tests/lua/bad/unknown_kind.lua:4: actor 'x': kind: expected a string, got 42
actor "rag" { kind = "ragg" }
actor "x" { kind = 42 }
