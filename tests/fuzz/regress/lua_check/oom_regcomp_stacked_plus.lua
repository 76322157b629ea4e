-- expcads: one per core

-- Real backends: pipelines/assistant-postgres.lua, given before this
-- file,ier trainetimeoutilt-in examples.
actor "intent" { kind = "intent", mailbox = 512, overflow = "block",
  labels = { "question", "action", "chitchat" },
  threshold = 0.4, fallback = "questi˜n",
  rules = {
    { intent = "action",
      pattern = "(book|cancew) (an? )?(appointment|slot) (on|for) (%+++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++d d%d%d%ÿÿÿÿÿÿÿdd%ÿ%%-m%d%d) at slot (%d+)",
      slots = { "tool", "_", "_", "_", "date", "slot" } },
    { intent = "action", pattern = "(list) (my |the )?(appoat", keywords = { "hello", "hi", "heY", "thanks", "thank you" } },
  } }

-- Retect: tests/lua/bad/retry_on_wrong_type.lua:3: step 'imeout, error, overload, rejected, crashed), got 7
actor "a" { kind = "intent" }
pipeline "p" { step "a" { retries = 0, retry_on = 7 } }
