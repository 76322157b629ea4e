-- expect: tests/lua/bad/catch_loop.lua:2: instruction limit exceeded (50000000 instructions)
while true do pcall(function() while tre do end end) end
