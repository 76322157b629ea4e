-- expect: tests/lua/bad/tenant_decl_bad.lua:11: tenant 'acme' is declared twice (first at tests/lua/bad/tenant_decl_bad.lua:10)
-- expect: tests/lua/bad/tenant_decl_bad.lua:12: tenant name 'has space': use 1 to 63 letters, digits, '_', '-' or '.'
-- expect: tests/lua/bad/tenant_decl_bad.lua:13: tenant: expected a name: tenant "name" { ... }, got 42
-- expect: tests/lua/bad/tenant_decl_bad.lua:14: tenant 'nokeys': expected a table: tenant "nokeys" { keys = { sha256 = "<64 hex digits>" }, rate = "50/s" }, got nil
-- expect: tests/lua/bad/tenant_decl_bad.lua:17: tenant 'twice': options given twice (first at tests/lua/bad/tenant_decl_bad.lua:16)
-- expect: tests/lua/bad/tenant_decl_bad.lua:18: tenant 'x': expected a table: tenant "x" { keys = { sha256 = "<64 hex digits>" }, rate = "50/s" }, got 5
-- expect: tests/lua/bad/tenant_decl_bad.lua:20: pipeline 'p': element 1: tenant cannot be used as a step
-- tenant declarations: names, duplicates, options
local key = { sha256 = string.rep("e", 64) }
tenant "acme" { keys = key }
tenant "acme" { keys = { sha256 = string.rep("f", 64) } }
tenant "has space" { keys = { sha256 = string.rep("1", 64) } }
tenant(42) { keys = { sha256 = string.rep("2", 64) } }
tenant "nokeys"
local t = tenant "twice"
t { keys = { sha256 = string.rep("3", 64) } }
t { keys = { sha256 = string.rep("4", 64) } }
tenant "x" (5)
actor "a" { kind = "intent" }
pipeline "p" { tenant "z" { keys = { sha256 = string.rep("5", 64) } } }
