-- expect: tests/lua/bad/kind_with_receive.lua:2: actor 'intent': receive: a kind actor has no receive function (drop kind = ... for a Lua actor)
actor "intent" { kind = "intent", receive = function(msg) return msg end }
