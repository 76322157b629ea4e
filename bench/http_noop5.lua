-- bench/http_noop5.lua -- the node bench/http loads: GET /health, and
-- POST /v1/pipelines/noop5, a pipeline of 5 no-op Lua actor steps (each
-- replies nil: the step keeps the message). Address and threads come from
-- `troupe run --http ... --threads ...`. The limits are raised so that the
-- idle-connection figure (thousands of keep-alive connections) fits.
node { name = "bench-http", max_connections = 100000, idle_timeout = "10m", grace = "2s" }

actor "n1" { receive = function(msg) return nil end }
actor "n2" { receive = function(msg) return nil end }
actor "n3" { receive = function(msg) return nil end }
actor "n4" { receive = function(msg) return nil end }
actor "n5" { receive = function(msg) return nil end }

supervisor "root" { strategy = "one_for_one", children = { "n1", "n2", "n3", "n4", "n5" } }

pipeline "noop5" { step "n1" {}, step "n2" {}, step "n3" {}, step "n4" {}, step "n5" {} }
