-- expect: tests/lua/bad/node_limits_bad.lua:9: node: unknown key 'max_bdy' (did you mean 'max_body'?)
-- expect: tests/lua/bad/node_limits_bad.lua:9: node: max_body: bad size '64KB' (did you mean '64KiB'? sizes take binary units B, KiB, MiB, GiB: 1KiB = 1024 bytes)
-- expect: tests/lua/bad/node_limits_bad.lua:9: node: max_header: must be between 1KiB and 1MiB, got '512B'
-- expect: tests/lua/bad/node_limits_bad.lua:9: node: max_connections: expected a positive integer, got 0
-- expect: tests/lua/bad/node_limits_bad.lua:9: node: header_timeout: must be between 1ms and 1h, got '2h'
-- expect: tests/lua/bad/node_limits_bad.lua:9: node: idle_timeout: expected a duration string (units us, ms, s, m, h: "500us", "50ms", "1.5s", "1m"), got 60
-- expect: tests/lua/bad/node_limits_bad.lua:9: node: grace: must be more than 0
-- the HTTP door's limits: a typo, a decimal unit, bounds, types
node {
  http = "127.0.0.1:8080",
  max_bdy = "1MiB",
  max_body = "64KB",
  max_header = "512B",
  max_connections = 0,
  header_timeout = "2h",
  idle_timeout = 60,
  grace = "0s",
}
