-- expect: tests/lua/bad/instruction_limit.lua:3: instruction limit exceeded (50000000 instructions)
actor "a" { kind = "intent" }
while true do pcall(function() while true do end end) end
