-- expect: tests/lua/bad/lua_actor_no_receive.lua:3: actor 'lazy': needs kind = "..." (a built-in actor) or receive = function(msg, ctx) ... end (a Lua actor)
-- expect: tests/lua/bad/lua_actor_no_receive.lua:4: actor 'wrong': receive: expected a function, got string
actor "lazy" { mailbox = 10 }
actor "wrong" { receive = "not a function" }
