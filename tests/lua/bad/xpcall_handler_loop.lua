-- expect: tests/lua/bad/xpcall_handler_loop.lua:5: instruction limit exceeded (50000000 instructions)
actor "a" { kind = "intent" }
-- The limit's error is raised by a hook, and Lua runs the message handler
-- with hooks still off: the sandbox skips the handler once the budget is spent.
xpcall(function() while true do end end, function() while true do end end)
