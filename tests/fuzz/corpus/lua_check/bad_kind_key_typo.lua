-- expect: tests/lua/bad/kind_key_typo.lua:9: actor 'x': unknown key 'btch' (did you mean 'batch'?)
-- expect: tests/lua/bad/kind_key_typo.lua:9: actor 'x': unknown key 'instance' (did you mean 'instances'?)
-- expect: tests/lua/bad/kind_key_typo.lua:9: actor 'x': unknown key 'knd' (did you mean 'kind'?)
-- expect: tests/lua/bad/kind_key_typo.lua:9: actor 'x': unknown key 'mailbx' (did you mean 'mailbox'?)
-- expect: tests/lua/bad/kind_key_typo.lua:9: actor 'x': unknown key 'overflw' (did you mean 'overflow'?)
-- expect: tests/lua/bad/kind_key_typo.lua:9: actor 'x': unknown key 'recieve' (did you mean 'receive'?)
-- near-misses of the common actor keys are typos, not settings for the kind;
-- other keys (top_k, model, mode, index) still go to the kind
actor "x" { kind = "rag", mailbx = 5, overflw = "reject", instance = 2, btch = 4,
            recieve = 1, knd = "rag", top_k = 5, model = "m", mode = "fast" }
actor "y" { kind = "rag", mailbox = 8, batch = 2, index = "docs" }
