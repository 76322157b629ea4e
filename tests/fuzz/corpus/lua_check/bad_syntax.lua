-- expect: tests/lua/bad/syntax.lua:3: '}' expected near 'mailbox'
actor "a" { kind = "intent" }
actor "b" { kind = "rag" mailbox = 4 }
