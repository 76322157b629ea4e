-- expect: tests/lua/bad/options_twice.lua:8: actor 'b': options given twice (first at tests/lua/bad/options_twice.lua:7)
-- expect: tests/lua/bad/options_twice.lua:15: supervisor 'sv': options given twice (first at tests/lua/bad/options_twice.lua:14)
-- expect: tests/lua/bad/options_twice.lua:18: pipeline 'p': options given twice (first at tests/lua/bad/options_twice.lua:17)
-- expect: tests/lua/bad/options_twice.lua:12: step 'b': options given twice (first at tests/lua/bad/options_twice.lua:11)
-- a declaration's options table given again through a saved function
local b = actor "b"
b { kind = "rag" }
b { kind = "intent", mailbox = 5 }
b { kind = "safety" } -- a third table: still one message, for the second
local s = step "b"
local first = s { timeout = "1s" }
s { timeout = "2s" }
local sv = supervisor "sv"
sv { children = { "b" } }
sv { children = { "b" }, max_restarts = 1 }
local p = pipeline "p"
p { first }
p { first, first }
