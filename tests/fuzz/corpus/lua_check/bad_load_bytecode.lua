-- expect: tests/lua/bad/load_bytecode.lua:4: attempt to load a binary chunk (mode is 't')
local f, err = load("\27Lua\84\0", "chunk", "b")
assert(f == nil)
error(err)
