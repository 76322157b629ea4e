-- expect: tests/lua/bad/cluster_bad.lua:7: node: labels: element 2: expected a field name, got 7
-- expect: tests/lua/bad/cluster_bad.lua:7: node: cluster: unknown key 'secrets'
-- expect: tests/lua/bad/cluster_bad.lua:7: node: cluster: listen: expected "tcp://host:port", got 'udp://127.0.0.1:7101'
-- expect: tests/lua/bad/cluster_bad.lua:7: node: cluster: seeds: element 1: expected "tcp://host:port", got 'tcp://127.0.0.1:x'
-- expect: tests/lua/bad/cluster_bad.lua:7: node: cluster: heartbeat: bad duration 'fast' (units us, ms, s, m, h: "500us", "50ms", "1.5s", "1m")
-- expect: tests/lua/bad/cluster_bad.lua:7: node: cluster: down_after must be longer than suspect_after
node { name = "n1", labels = { "gpu", 7 },
       cluster = { listen = "udp://127.0.0.1:7101", seeds = { "tcp://127.0.0.1:x" }, heartbeat = "fast",
                   suspect_after = "2s", down_after = "1s", secrets = "x" } }
actor "a" { kind = "intent" }
pipeline "p" { step "a" {} }
