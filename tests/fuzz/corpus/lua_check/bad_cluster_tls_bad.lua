-- expect: tests/lua/bad/cluster_tls_bad.lua:4: node: cluster: listen: 'tls+tcp://127.0.0.1:7101' needs tls = { cert_file = ..., key_file = ..., ca_file = ... }
-- expect: tests/lua/bad/cluster_tls_bad.lua:4: node: cluster: seeds: 'tls+tcp://127.0.0.1:7102' needs tls = { cert_file = ..., key_file = ..., ca_file = ... }
-- tls+tcp URLs without the tls table.
node { name = "n1",
       cluster = { listen = "tls+tcp://127.0.0.1:7101", seeds = { "tls+tcp://127.0.0.1:7102" },
                   secret_file = "secret" } }
actor "a" { kind = "intent" }
pipeline "p" { step "a" {} }
