-- expect: tests/lua/bad/tenant_rate_bad.lua:15: tenant 'a': rate: expected a rate string (a number per s, m or h: "50/s", "100/m", "0.5/s"), got 50
-- expect: tests/lua/bad/tenant_rate_bad.lua:16: tenant 'b': rate: bad rate '50/sec' (a number per s, m or h: "50/s", "100/m", "0.5/s")
-- expect: tests/lua/bad/tenant_rate_bad.lua:17: tenant 'c': rate: must be more than 0 (leave rate out for no limit)
-- expect: tests/lua/bad/tenant_rate_bad.lua:18: tenant 'd': rate: must be at most 1000000/s, got '2000000/s'
-- expect: tests/lua/bad/tenant_rate_bad.lua:19: tenant 'e': burst: only with a rate (a tenant without one is not limited)
-- expect: tests/lua/bad/tenant_rate_bad.lua:20: tenant 'f': burst: expected a positive integer, got 0
-- expect: tests/lua/bad/tenant_rate_bad.lua:21: tenant 'g': burst: expected a positive integer, got 1.5
-- expect: tests/lua/bad/tenant_rate_bad.lua:22: tenant 'h': burst: must be at most 1000000, got 2000000
-- expect: tests/lua/bad/tenant_rate_bad.lua:23: tenant 'i': rate: bad rate '-5/s' (a number per s, m or h: "50/s", "100/m", "0.5/s")
-- expect: tests/lua/bad/tenant_rate_bad.lua:24: tenant 'j': unknown key 'bursts' (did you mean 'burst'?)
-- expect: tests/lua/bad/tenant_rate_bad.lua:24: tenant 'j': unknown key 'rates' (did you mean 'rate'?)
-- expect: tests/lua/bad/tenant_rate_bad.lua:25: tenant 'k': rate: bad rate '50 /s' (a number per s, m or h: "50/s", "100/m", "0.5/s")
-- tenant rates: "N/s", "N/m" or "N/h"; burst a positive integer, only with a rate
local k = function(c) return { sha256 = string.rep(c, 64) } end
tenant "a" { keys = k("1"), rate = 50 }
tenant "b" { keys = k("2"), rate = "50/sec" }
tenant "c" { keys = k("3"), rate = "0/s" }
tenant "d" { keys = k("4"), rate = "2000000/s" }
tenant "e" { keys = k("5"), burst = 10 }
tenant "f" { keys = k("6"), rate = "5/s", burst = 0 }
tenant "g" { keys = k("7"), rate = "5/s", burst = 1.5 }
tenant "h" { keys = k("8"), rate = "5/s", burst = 2000000 }
tenant "i" { keys = k("9"), rate = "-5/s" }
tenant "j" { keys = k("a"), rates = "5/s", bursts = 2 }
tenant "k" { keys = k("b"), rate = "50 /s" }
