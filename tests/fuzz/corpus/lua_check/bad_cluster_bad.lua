-- expect: tests/lua/bad/cluster_bad.lua:13: node: labels: element 2: expected a field name, got 7
-- expect: tests/lua/bad/cluster_bad.lua:13: node: cluster: unknown key 'secrets'
-- expect: tests/lua/bad/cluster_bad.lua:13: node: cluster: listen: expected "tcp://host:port", got 'udp://127.0.0.1:7101'
-- expect: tests/lua/bad/cluster_bad.lua:13: node: cluster: seeds: element 1: expected "tcp://host:port", got 'tcp://127.0.0.1:x'
-- expect: tests/lua/bad/cluster_bad.lua:13: node: cluster: data_listen: expected "tcp://host:port", got 'tcp://:'
-- expect: tests/lua/bad/cluster_bad.lua:13: node: cluster: heartbeat: bad duration 'fast' (units us, ms, s, m, h: "500us", "50ms", "1.5s", "1m")
-- expect: tests/lua/bad/cluster_bad.lua:13: node: cluster: down_after must be longer than suspect_after
-- expect: tests/lua/bad/cluster_bad.lua:13: node: cluster: tls: unknown key 'ca_filee' (did you mean 'ca_file'?)
-- expect: tests/lua/bad/cluster_bad.lua:13: node: cluster: tls: cert_file: expected a non-empty string, got 7
-- expect: tests/lua/bad/cluster_bad.lua:13: node: cluster: tls: key_file is required (a PEM file)
-- expect: tests/lua/bad/cluster_bad.lua:13: node: cluster: tls: ca_file is required (a PEM file)
-- expect: tests/lua/bad/cluster_bad.lua:13: node: cluster: tls: server_name: expected a non-empty string, got an empty or binary string
node { name = "n1", labels = { "gpu", 7 },
       cluster = { listen = "udp://127.0.0.1:7101", seeds = { "tcp://127.0.0.1:x", "tls+tcp://127.0.0.1:7102" },
                   heartbeat = "fast", suspect_after = "2s", down_after = "1s", secrets = "x", data_listen = "tcp://:",
                   tls = { cert_file = 7, ca_filee = "ca.pem", server_name = "" } } }
actor "a" { kind = "intent" }
pipeline "p" { step "a" {} }
