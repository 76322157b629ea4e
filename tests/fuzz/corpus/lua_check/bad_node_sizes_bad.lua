-- expect: tests/lua/bad/node_sizes_bad.lua:7: node: max_body: bad size '1.5MiB' (a number of bytes, or units B, KiB, MiB, GiB: "512B", "64KiB", "1MiB")
-- expect: tests/lua/bad/node_sizes_bad.lua:7: node: max_header: expected a size (a number of bytes, or units B, KiB, MiB, GiB: "512B", "64KiB", "1MiB"), got boolean
-- expect: tests/lua/bad/node_sizes_bad.lua:7: node: max_connections: must be at most 1000000, got 2000000
-- expect: tests/lua/bad/node_sizes_bad.lua:7: node: idle_timeout: must be between 1ms and 24h, got '25h'
-- expect: tests/lua/bad/node_sizes_bad.lua:7: node: grace: must be between 1ms and 1h, got '2h'
-- sizes are whole numbers with B, KiB, MiB or GiB, or plain bytes
node {
  max_body = "1.5MiB",
  max_header = true,
  max_connections = 2000000,
  idle_timeout = "25h",
  grace = "2h",
}
