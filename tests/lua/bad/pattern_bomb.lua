-- expect: tests/lua/bad/pattern_bomb.lua:6: pattern too complex (step budget exceeded)
actor "a" { kind = "intent" }
-- Lua patterns backtrack inside C, where the instruction hook never runs:
-- the sandbox's matcher counts its steps instead (lua/pattern.c). Stock
-- Lua would run this for ever.
string.find(("a"):rep(40), ("a*"):rep(30) .. "b")
