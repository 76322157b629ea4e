-- expect: tests/lua/bad/many_problems.lua:7: actor 'intent': mailbox: expected a positive integer, got 0
-- expect: tests/lua/bad/many_problems.lua:8: actor 'echo': unknown key 'model' (a Lua actor takes receive, mailbox, overflow, instances, batch, on)
-- expect: tests/lua/bad/many_problems.lua:10: step 'intent': timeout: expected a duration string (units us, ms, s, m, h: "500us", "50ms", "1.5s", "1m"), got 5
-- expect: tests/lua/bad/many_problems.lua:11: step 'ghost': no actor named 'ghost'
-- expect: tests/lua/bad/many_problems.lua:12: route 'kind': missing default = { ... } (the steps for any other value)
-- expect: tests/lua/bad/many_problems.lua:14: supervisor 'root': unknown child 'missing' (not a declared actor or supervisor)
actor "intent" { kind = "intent", mailbox = 0 }
actor "echo" { receive = function(m) return m end, model = "x" }
pipeline "p" {
  step "intent" { timeout = 5 },
  step "ghost" {},
  route "kind" { yes = { step "intent" {} } },
}
supervisor "root" { children = { "echo", "missing" } }
