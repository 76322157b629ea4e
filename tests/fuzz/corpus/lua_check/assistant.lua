-- The default assistant: classify the request, run actions as tools,
-- greet chit-chat, otherwise retrieve passages from docs/ and compose a
-- grounded answer with its sources; safety checks input and output; every
-- step event goes to telemetry. `troupe check pipelines/assistant.lua`
-- validates this file; `troupe run` (from the repo root) serves it.

node { name = "assistant-1", http = "127.0.0.1:8080" }   -- threads: one per core

-- Real backends: pipelines/assistant-postgres.lua, given before this
-- file, sets ASSISTANT to move retrieval to PostgreSQL and to share the
-- retrieval cache through Redis. Without it: the embedded defaults.
local backends = rawget(_ENV, "ASSISTANT") or {}

-- What the user wants. Rules first (a booking is an action whatever the
-- wording around it), then the classifier trained on built-in examples.
actor "intent" { kind = "intent", mailbox = 512, overflow = "block",
  labels = { "question", "action", "chitchat" },
  threshold = 0.4, fallback = "question",
  rules = {
    { intent = "action",
      pattern = "(book|cancel) (an? )?(appointment|slot) (on|for) (%d%d%d%d%-%d%d%-%d%d) at slot (%d+)",
      slots = { "tool", "_", "_", "_", "date", "slot" } },
    { intent = "action", pattern = "(list) (my |the )?(appointments|bookings)", slots = { "tool" } },
    { intent = "chitchat", keywords = { "hello", "hi", "hey", "thanks", "thank you" } },
  } }

-- Retrieval over the docs shipped in the repo (rebuilt when they change).
actor "rag" (backends.rag or { kind = "rag", mailbox = 512, overflow = "block", instances = 4,
                               dir = "docs", top_k = 4, min_score = 0.2 })

-- Extractive answers (no model needed); the backup answers shorter.
actor "generate" { kind = "generate", mailbox = 128, overflow = "reject",
                   model = "extractive", max_tokens = 512, max_sentences = 3,
                   stream = true }   -- sentence by sentence, as it is composed
actor "generate_backup" { kind = "generate", mailbox = 64, overflow = "reject",
                          model = "extractive-short", max_tokens = 256, max_sentences = 1 }

actor "safety" { kind = "safety", mailbox = 512, blocklist = { "password", "ssn" } }

-- Tools: the demo bookings live in the execute actor's Lua state.
actor "execute" { kind = "execute", mailbox = 128, overflow = "reject" }
local bookings = {}

tool "book" {
  description = "Books a slot on a date (YYYY-MM-DD).",
  args = { date = "string", slot = "int" },
  timeout = "50ms",
  handler = function(args, ctx)
    local key = args.date .. "#" .. args.slot
    if bookings[key] then
      return { booked = false, reason = "slot " .. args.slot .. " on " .. args.date .. " is taken" }
    end
    bookings[key] = { date = args.date, slot = args.slot, tenant = ctx.tenant }
    return { booked = true, date = args.date, slot = args.slot }
  end,
}

tool "cancel" {
  description = "Cancels a booking.",
  args = { date = "string", slot = "int" },
  timeout = "50ms",
  handler = function(args)
    local key = args.date .. "#" .. args.slot
    local had = bookings[key] ~= nil
    bookings[key] = nil
    return { cancelled = had, date = args.date, slot = args.slot }
  end,
}

tool "list" {
  description = "Lists the bookings.",
  timeout = "50ms",
  handler = function(args, ctx)
    local out = {}
    for _, b in pairs(bookings) do out[#out + 1] = b.date .. " slot " .. b.slot end
    table.sort(out)
    return { bookings = out, count = #out }
  end,
}

actor "telemetry" { kind = "telemetry", mailbox = 8192, overflow = "drop_oldest", sink = "ring" }

-- A small Lua actor: greets without a model round trip.
actor "smalltalk" { mailbox = 256, receive = function(msg, ctx)
  msg.answer = "Hello! Ask me about troupe (\"how do retries work?\"), or book an appointment."
  return msg
end }

supervisor "models" { strategy = "one_for_one", max_restarts = 10, within = "30s",
                      children = { "generate", "generate_backup" } }
supervisor "root"   { strategy = "one_for_one", max_restarts = 5, within = "10s",
                      children = { "intent", "rag", "models", "safety", "execute",
                                   "telemetry", "smalltalk" } }

pipeline "assistant" {
  deadline = "8s", max_inflight = 2000, tap = "telemetry",
  tap_events = { "end", "retry", "timeout", "error" },   -- one event per step, plus failures
  -- what the caller gets back: the retrieved passages stay inside the run
  output = { "text", "intent", "confidence", "slots", "answer", "sources", "usage",
             "safety", "blocked", "tool", "result" },
  stream = "safety",   -- streamed answer text is redacted by safety before a client sees it
  step "safety" { timeout = "100ms" },                  -- the input: PII redacted, injection blocked
  step "intent" { timeout = "50ms", retries = 2, when = function(msg) return not msg.blocked end,
                  backoff = { base = "5ms", max = "100ms", jitter = true } },
  route "intent" {
    action   = { step "execute" { timeout = "2s", retries = 3, retry_on = { "timeout", "overload" } } },
    chitchat = { step "smalltalk" { timeout = "20ms" } },
    default  = {
      step "rag" { timeout = "300ms", retries = 2, when = function(msg) return not msg.blocked end,
                   cache = { ttl = "5m", key = { "text" }, capacity = 50000,
                             store = backends.cache_store } },
      step "generate" { timeout = "15s", first_byte_timeout = "2s", retries = 1,
                        coalesce = true, fallback = "generate_backup",
                        when = function(msg) return not msg.blocked end },
      step "safety" { timeout = "100ms", when = function(msg) return msg.answer ~= nil end },
    },
  },
}

-- A cheaper pipeline for search boxes: retrieval only.
pipeline "search" {
  deadline = "1s", max_inflight = 5000,
  step "rag" { timeout = "300ms", retries = 1, cache = { ttl = "60s", key = { "text" } } },
}
