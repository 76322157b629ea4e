-- expect: tests/lua/bad/route_when_not_function.lua:6: route 'intent': when: expected a function(msg) returning true or false, got table
-- expect: tests/lua/bad/route_when_not_function.lua:7: route 'lang': when: expected a function(msg) returning true or false, got string
-- on a route, when is the predicate (like on a step), never a branch named "when"
actor "a" { kind = "intent" }
pipeline "p" {
  route "intent" { when = { step "a" {} }, default = { step "a" {} } },
  route "lang" { when = "yes", en = { step "a" {} }, default = {} },
}
