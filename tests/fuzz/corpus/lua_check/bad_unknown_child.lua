-- expect: tests/lua/bad/unknown_child.lua:4: supervisor 'root': unknown child 'intnet' (did you mean 'intent'?)
-- expect: tests/lua/bad/unknown_child.lua:4: supervisor 'root': unknown child 'ghost' (not a declared actor or supervisor)
actor "intent" { kind = "intent" }
supervisor "root" { children = { "intent", "intnet", "ghost" } }
