-- expect: tests/lua/bad/node_sizes_negative.lua:4: node: max_body: expected a size (a number of bytes, or units B, KiB, MiB, GiB: "512B", "64KiB", "1MiB"), got -1
-- expect: tests/lua/bad/node_sizes_negative.lua:4: node: max_header: bad size '64 KiB' (a number of bytes, or units B, KiB, MiB, GiB: "512B", "64KiB", "1MiB")
-- a negative size, a size with a space, lower-case units
node { max_body = -1, max_header = "64 KiB" }
