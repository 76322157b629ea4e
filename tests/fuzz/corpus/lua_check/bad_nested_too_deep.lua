-- expect: tests/lua/bad/nested_too_deep.lua:8: route 'k': default: steps nested deeper than 32 (or a table that contains itself)
-- expect: tests/lua/bad/nested_too_deep.lua:13: parallel: branch 1: steps nested deeper than 32 (or a table that contains itself)
-- expect: tests/lua/bad/nested_too_deep.lua:13: parallel: branch 2: steps nested deeper than 32 (or a table that contains itself)
actor "a" { kind = "intent" }

local function nest(n, inner)
  local s = inner
  for _ = 1, n do s = route "k" { default = { s } } end
  return s
end

pipeline "deep" { nest(32, step "a" {}) }
pipeline "deep_par" { nest(31, parallel { { step "a" {} }, { step "a" {} } }) }
