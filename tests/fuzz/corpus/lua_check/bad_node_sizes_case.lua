-- expect: tests/lua/bad/node_sizes_case.lua:3: node: max_body: bad size '10mb' (did you mean '10MiB'? sizes take binary units B, KiB, MiB, GiB: 1KiB = 1024 bytes)
-- expect: tests/lua/bad/node_sizes_case.lua:3: node: max_header: bad size '16kib' (did you mean '16KiB'? sizes take binary units B, KiB, MiB, GiB: 1KiB = 1024 bytes)
node { max_body = "10mb", max_header = "16kib" }
