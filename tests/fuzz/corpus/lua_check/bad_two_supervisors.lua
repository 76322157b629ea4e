-- expect: tests/lua/bad/two_supervisors.lua:5: supervisor 's2': actor 'a1' already belongs to supervisor 's1' (tests/lua/bad/two_supervisors.lua:4)
-- expect: tests/lua/bad/two_supervisors.lua:5: supervisor 's2': child 'a1' is listed twice
actor "a1" { kind = "intent" }
supervisor "s1" { children = { "a1" } }
supervisor "s2" { children = { "a1", "a1" } }
