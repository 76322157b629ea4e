-- expect: tests/lua/bad/sup_cycle.lua:4: supervisor 'top' contains itself (top -> mid -> top)
-- expect: tests/lua/bad/sup_cycle.lua:6: supervisor 'self' contains itself (self -> self)
actor "a1" { kind = "intent" }
supervisor "top" { children = { "mid" } }
supervisor "mid" { children = { "a1", "top" } }
supervisor "self" { children = { "self" } }
