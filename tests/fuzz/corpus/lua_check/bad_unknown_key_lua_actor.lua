-- expect: tests/lua/bad/unknown_key_lua_actor.lua:3: actor 'echo': unknown key 'recieve' (did you mean 'receive'?)
-- expect: tests/lua/bad/unknown_key_lua_actor.lua:3: actor 'echo': needs kind = "..." (a built-in actor) or receive = function(msg, ctx) ... end (a Lua actor)
actor "echo" {
  recieve = function(msg) return msg end,
}
