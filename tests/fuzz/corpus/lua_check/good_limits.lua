-- the limits, at their bounds: steps nested exactly TR_STEP_NEST_MAX (32)
-- levels deep (31 routes, the step in the innermost default list; or a
-- parallel at the bottom level), and supervisor windows of 1ms and 24h.
actor "a" { kind = "intent" }

local function nest(n, inner)
  local s = inner
  for _ = 1, n do s = route "k" { default = { s } } end
  return s
end

pipeline "deep" { nest(31, step "a" {}) }
pipeline "deep_par" { nest(30, parallel { { step "a" {} }, { step "a" {} } }) }

-- supervisor windows at both bounds; max_restarts = 0 means never restart
supervisor "tight" { max_restarts = 0, within = "1ms", children = { "a" } }
supervisor "day" { max_restarts = 2.0, within = "24h", children = { "tight" } }
