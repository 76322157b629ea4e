-- expect: tests/lua/bad/runtime_error.lua:4: attempt to index a nil value (local 't')
local t = nil
actor "a" { kind = "intent" }
print(t.x)
