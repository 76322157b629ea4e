-- expect: tests/lua/bad/placement_bad.lua:9: actor 'a': on: expected a table: on = { label = "gpu" } or on = { node = "n2" }, got string
-- expect: tests/lua/bad/placement_bad.lua:10: actor 'b': on: unknown key 'lable' (did you mean 'label'?)
-- expect: tests/lua/bad/placement_bad.lua:11: actor 'c': on: needs label = "..." (nodes with that label) or node = "..." (the node of that name)
-- expect: tests/lua/bad/placement_bad.lua:12: actor 'd': on: label: expected a non-empty string, got 7
-- expect: tests/lua/bad/placement_bad.lua:12: actor 'd': on: node: expected a non-empty string, got an empty or binary string
-- expect: tests/lua/bad/placement_bad.lua:13: actor 'e': on: unknown key 'zone' (did you mean 'node'?)
-- expect: tests/lua/bad/placement_bad.lua:14: actor 'f': on: unexpected key [1]
node { name = "n1", labels = { "cpu" } }
actor "a" { kind = "intent", on = "gpu" }
actor "b" { kind = "intent", on = { lable = "gpu" } }
actor "c" { kind = "intent", on = {} }
actor "d" { kind = "intent", on = { label = 7, node = "" } }
actor "e" { receive = function(msg) return msg end, on = { label = "gpu", zone = "eu" } }
actor "f" { kind = "intent", on = { "gpu" } }
pipeline "p" { step "a" {} }
