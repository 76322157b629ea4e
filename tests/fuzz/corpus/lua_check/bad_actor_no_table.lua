-- expect: tests/lua/bad/actor_no_table.lua:3: actor 'a': expected a table: actor "a" { kind = ... } or { receive = function(msg, ctx) ... end }, got nil
-- expect: tests/lua/bad/actor_no_table.lua:4: actor 'b': expected a table: actor "b" { kind = ... } or { receive = function(msg, ctx) ... end }, got string
actor "a"
actor "b" "oops"
