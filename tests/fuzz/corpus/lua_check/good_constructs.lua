-- parallel, when, nested routes, join variants, Lua helper functions.
actor "a" { kind = "rag" }
actor "b" { kind = "rag" }
actor "c" { kind = "generate" }
actor "d" { kind = "safety" }

local function is_long(msg) return #(msg.text or "") > 10 end

pipeline "fan" {
  deadline = "1m",
  parallel {
    { step "a" { timeout = "20ms" } },
    { step "b" {}, step "c" { when = function(msg) return msg.lang == "en" end } },
    step "d" {},
    join = 2,
  },
  parallel { { step "a" {} }, { step "b" {} }, join = "first" },
  parallel { step "a" {}, step "b" {} },
  step "c" { when = is_long, timeout = "1h" },
  route "lang" {
    en = step "a" {},
    fr = { route "region" { ca = { step "b" {} }, default = {} } },
    default = { step "c" {} },
  },
}

-- a whole float is an integer for join too; a route's when is its predicate
pipeline "whole" {
  parallel { { step "a" {} }, { step "b" {} }, join = 2.0 },
  route "lang" { when = function(msg) return msg.lang ~= nil end, en = step "a" {}, default = {} },
}
