-- expect: tests/lua/bad/unknown_global.lua:3: unknown name 'acter' (did you mean 'actor'?)
actor "a" { kind = "intent" }
acter "b" { kind = "rag" }
