-- expect: tests/lua/bad/join_out_of_range.lua:9: parallel: join = 3 is out of range (1..2, the number of branches)
-- expect: tests/lua/bad/join_out_of_range.lua:10: parallel: join: expected "all", "first" or a number of branches, got 'most'
-- expect: tests/lua/bad/join_out_of_range.lua:11: parallel has no branches: parallel { {step ...}, {step ...}, join = ... }
-- expect: tests/lua/bad/join_out_of_range.lua:12: parallel: join = 3 is out of range (1..2, the number of branches)
-- expect: tests/lua/bad/join_out_of_range.lua:13: parallel: join: expected "all", "first" or a number of branches, got 1.5
actor "a" { kind = "rag" }
actor "b" { kind = "rag" }
pipeline "p" {
  parallel { { step "a" {} }, { step "b" {} }, join = 3 },
  parallel { { step "a" {} }, join = "most" },
  parallel { join = "all" },
  parallel { { step "a" {} }, { step "b" {} }, join = 3.0 },  -- whole floats are integers
  parallel { { step "a" {} }, { step "b" {} }, join = 1.5 },
}
