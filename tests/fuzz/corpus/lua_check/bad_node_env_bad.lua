-- expect: tests/lua/bad/node_env_bad.lua:5: node: env: unknown value 'prod' (expected one of production, staging, dev, test)
-- A node's env is one of "production", "staging", "dev", "test" (a
-- production node refuses `troupe run --chaos`).
actor "a" { receive = function(msg) return msg end }
node { name = "n1", env = "prod" }
pipeline "p" { step "a" {} }
