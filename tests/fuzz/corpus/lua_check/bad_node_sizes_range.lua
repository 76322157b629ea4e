-- expect: tests/lua/bad/node_sizes_range.lua:5: node: max_body: must be between 1B and 1GiB, got '2GiB'
-- expect: tests/lua/bad/node_sizes_range.lua:5: node: max_header: must be between 1KiB and 1MiB, got 2097152
-- expect: tests/lua/bad/node_sizes_range.lua:5: node: header_timeout: must be between 1ms and 1h, got '500us'
-- sizes out of range, as strings and as numbers
node { max_body = "2GiB", max_header = 2097152, header_timeout = "500us" }
