node { name = "n1", http = "127.0.0.1:8080", threads = 2 }

actor "intent"    { kind = "intent",    mailbox = 256,  overflow = "block" }
actor "rag"       { kind = "rag",       mailbox = 256,  overflow = "block", instances = 2 }
actor "generate"  { kind = "generate",  mailbox = 64,   overflow = "reject" }
actor "generate_backup" { kind = "generate", mailbox = 64, overflow = "reject" }
actor "safety"    { kind = "safety" }
actor "execute"   { kind = "execute" }
actor "telemetry" { kind = "telemetry", mailbox = 4096, overflow = "drop_oldest" }

actor "shout" { receive = function(msg, ctx) msg.text = msg.text:upper(); return msg end }  -- a Lua actor

supervisor "root" { strategy = "one_for_one", max_restarts = 5, within = "10s",
                    children = { "intent", "rag", "generate", "generate_backup", "safety", "execute", "telemetry", "shout" } }

pipeline "assistant" {
  deadline = "5s", max_inflight = 1000, tap = "telemetry",
  step "intent"  { timeout = "50ms", retries = 2, backoff = { base = "10ms", max = "200ms", jitter = true } },
  route "intent" {                                   -- branch on a field of the message
    action  = { step "execute" { timeout = "2s", retries = 3, retry_on = { "timeout", "overload" } } },
    default = {
      step "rag"      { timeout = "300ms", retries = 2, cache = { ttl = "60s", key = { "text", "tenant" } } },
      step "generate" { timeout = "15s", first_byte_timeout = "2s", retries = 1, coalesce = true,
                        fallback = "generate_backup" },
    },
  },
  step "safety"  { timeout = "100ms" },
}
