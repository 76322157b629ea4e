-- expect: tests/lua/bad/sandbox_escape.lua:3: unknown name 'io'
actor "a" { kind = "intent" }
local f = io.open("/etc/passwd")
