-- expect: tests/lua/bad/memory_bomb.lua:2: memory limit (64 MiB) exceeded
local s = string.rep("x", 1e9)
