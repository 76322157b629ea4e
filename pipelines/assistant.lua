-- The assistant: classify the request, answer actions directly, otherwise
-- retrieve context and generate an answer, then check it before replying.
-- `troupe check pipelines/assistant.lua` validates this file.

node { name = "assistant-1", http = "127.0.0.1:8080" }   -- threads: one per core

-- Built-in actors. Keys other than mailbox/overflow/instances/batch are the
-- kind's own settings.
actor "intent"    { kind = "intent", mailbox = 512, overflow = "block",
                    labels = { "question", "action", "chitchat" } }
actor "rag"       { kind = "rag", mailbox = 512, overflow = "block", instances = 4,
                    top_k = 8, min_score = 0.2 }
actor "generate"  { kind = "generate", mailbox = 128, overflow = "reject", instances = 2,
                    model = "small", max_tokens = 512, temperature = 0.2 }
actor "generate_backup" { kind = "generate", mailbox = 64, overflow = "reject",
                          model = "tiny", max_tokens = 256 }
actor "safety"    { kind = "safety", mailbox = 512, blocklist = { "password", "ssn" } }
actor "execute"   { kind = "execute", mailbox = 128, overflow = "reject" }
actor "telemetry" { kind = "telemetry", mailbox = 8192, overflow = "drop_oldest" }

-- A small Lua actor: greets without a model round trip.
actor "smalltalk" { mailbox = 256, receive = function(msg, ctx)
  msg.answer = "Hello! Ask me about the docs, or tell me what to do."
  msg.answered_by = ctx.actor
  return msg
end }

supervisor "models" { strategy = "one_for_one", max_restarts = 10, within = "30s",
                      children = { "generate", "generate_backup" } }
supervisor "root"   { strategy = "one_for_one", max_restarts = 5, within = "10s",
                      children = { "intent", "rag", "models", "safety", "execute",
                                   "telemetry", "smalltalk" } }

pipeline "assistant" {
  deadline = "8s", max_inflight = 2000, tap = "telemetry",
  step "intent" { timeout = "50ms", retries = 2,
                  backoff = { base = "5ms", max = "100ms", jitter = true } },
  route "intent" {
    action   = { step "execute" { timeout = "2s", retries = 3, retry_on = { "timeout", "overload" } } },
    chitchat = { step "smalltalk" { timeout = "20ms" } },
    default  = {
      step "rag" { timeout = "300ms", retries = 2,
                   cache = { ttl = "5m", key = { "text" }, capacity = 50000 } },
      step "generate" { timeout = "15s", first_byte_timeout = "2s", retries = 1,
                        coalesce = true, fallback = "generate_backup" },
    },
  },
  -- Skip the safety pass for answers that carry no generated text.
  step "safety" { timeout = "100ms", when = function(msg) return msg.answer ~= nil end },
}

-- A cheaper pipeline for search boxes: retrieval only.
pipeline "search" {
  deadline = "1s", max_inflight = 5000,
  step "rag" { timeout = "300ms", retries = 1, cache = { ttl = "60s", key = { "text" } } },
}
