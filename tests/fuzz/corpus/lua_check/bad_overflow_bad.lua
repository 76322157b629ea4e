-- expect: tests/lua/bad/overflow_bad.lua:4: actor 'a': overflow: unknown value 'drop' (expected one of block, drop_oldest, drop_newest, reject)
-- expect: tests/lua/bad/overflow_bad.lua:5: actor 'b': overflow: unknown value 'rejct' (did you mean 'reject'?)
-- expect: tests/lua/bad/overflow_bad.lua:6: supervisor 's': strategy: unknown value 'one_for_none' (did you mean 'one_for_one'?)
actor "a" { kind = "intent", overflow = "drop" }
actor "b" { kind = "intent", overflow = "rejct" }
supervisor "s" { strategy = "one_for_none", children = { "a", "b" } }
