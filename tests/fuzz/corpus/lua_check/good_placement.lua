-- Placement (on = {...}): where an actor runs, instances per matching node.
node { name = "n3", labels = { "cpu", "eu" } }
actor "generate" { kind = "generate", on = { label = "gpu" }, instances = 4 }
actor "intent" { kind = "intent", on = { label = "cpu" } }
actor "pinned" { kind = "intent", on = { node = "n3" } }
actor "both" { kind = "intent", on = { label = "eu", node = "n2" } }
actor "echo" { receive = function(msg) return msg end, on = { label = "eu" }, instances = 2 }
actor "rag" { kind = "rag" }
pipeline "p" { step "intent" {}, step "generate" { retries = 2 } }
