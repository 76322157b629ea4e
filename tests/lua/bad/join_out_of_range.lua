-- expect: tests/lua/bad/join_out_of_range.lua:7: parallel: join = 3 is out of range (1..2, the number of branches)
-- expect: tests/lua/bad/join_out_of_range.lua:8: parallel: join: expected "all", "first" or a number of branches, got 'most'
-- expect: tests/lua/bad/join_out_of_range.lua:9: parallel has no branches: parallel { {step ...}, {step ...}, join = ... }
actor "a" { kind = "rag" }
actor "b" { kind = "rag" }
pipeline "p" {
  parallel { { step "a" {} }, { step "b" {} }, join = 3 },
  parallel { { step "a" {} }, join = "most" },
  parallel { join = "all" },
}
