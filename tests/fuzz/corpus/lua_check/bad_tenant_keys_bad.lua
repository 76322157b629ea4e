-- expect: tests/lua/bad/tenant_keys_bad.lua:20: tenant 'a': missing keys = { sha256 = "<64 hex digits>" } (the SHA-256 of each API key, e.g. printf %s KEY | sha256sum)
-- expect: tests/lua/bad/tenant_keys_bad.lua:21: tenant 'b': keys: expected { sha256 = "<64 hex digits>" } or a list of them, got string (raw keys are never accepted: put the key's SHA-256, e.g. printf %s KEY | sha256sum)
-- expect: tests/lua/bad/tenant_keys_bad.lua:22: tenant 'c': keys: the list is empty (a tenant needs at least one key)
-- expect: tests/lua/bad/tenant_keys_bad.lua:23: tenant 'd': keys: element 1: expected { sha256 = "<64 hex digits>" }, got string (raw keys are never accepted: put the key's SHA-256, e.g. printf %s KEY | sha256sum)
-- expect: tests/lua/bad/tenant_keys_bad.lua:24: tenant 'e': keys: unknown key 'key' (a key is { sha256 = "<64 hex digits>" }; raw keys are never accepted: put the key's SHA-256, e.g. printf %s KEY | sha256sum)
-- expect: tests/lua/bad/tenant_keys_bad.lua:25: tenant 'f': keys: sha256: expected 64 hex digits, got 13 characters (raw keys are never accepted: put the key's SHA-256, e.g. printf %s KEY | sha256sum)
-- expect: tests/lua/bad/tenant_keys_bad.lua:26: tenant 'g': keys: element 1: sha256: character 1 is not a hex digit (0-9, a-f)
-- expect: tests/lua/bad/tenant_keys_bad.lua:27: tenant 'h': keys: element 1: unknown key 'sha265' (did you mean 'sha256'?)
-- expect: tests/lua/bad/tenant_keys_bad.lua:28: tenant 'i': keys: element 1: sha256: expected 64 hex digits, got 42
-- expect: tests/lua/bad/tenant_keys_bad.lua:29: tenant 'j': keys: element 1: missing sha256 = "<64 hex digits>"
-- expect: tests/lua/bad/tenant_keys_bad.lua:30: tenant 'k': keys: element 2: the same key is listed twice
-- expect: tests/lua/bad/tenant_keys_bad.lua:31: tenant 'l': keys: already a key of tenant 'k' (tests/lua/bad/tenant_keys_bad.lua:30); a key must belong to one tenant
-- expect: tests/lua/bad/tenant_keys_bad.lua:32: tenant 'm': keys: expected { sha256 = "<64 hex digits>" } or a list of them, got 5
-- expect: tests/lua/bad/tenant_keys_bad.lua:33: tenant 'n': keys: unknown key 'extra' (a key is { sha256 = "<64 hex digits>" }; raw keys are never accepted: put the key's SHA-256, e.g. printf %s KEY | sha256sum)
-- expect: tests/lua/bad/tenant_keys_bad.lua:33: tenant 'n': keys: element 2: expected { sha256 = "<64 hex digits>" }, got string (raw keys are never accepted: put the key's SHA-256, e.g. printf %s KEY | sha256sum)
-- expect: tests/lua/bad/tenant_keys_bad.lua:34: tenant 'o': keys: element [3] follows a nil: the list has a hole
-- expect: tests/lua/bad/tenant_keys_bad.lua:35: tenant 'p': keys: sha256: character 64 is not a hex digit (0-9, a-f)
-- expect: tests/lua/bad/tenant_keys_bad.lua:36: tenant 'q': keys: element 1: unexpected key [1]
-- tenant keys: only SHA-256 hashes, at least one, each in one tenant
tenant "a" { rate = "1/s" }
tenant "b" { keys = "my-secret-key" }
tenant "c" { keys = {} }
tenant "d" { keys = { "my-secret-key" } }
tenant "e" { keys = { key = "my-secret-key" } }
tenant "f" { keys = { sha256 = "my-secret-key" } }
tenant "g" { keys = { { sha256 = "zzaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" } } }
tenant "h" { keys = { { sha265 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" } } }
tenant "i" { keys = { { sha256 = 42 } } }
tenant "j" { keys = { {} } }
tenant "k" { keys = { { sha256 = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb" }, { sha256 = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB" } } }
tenant "l" { keys = { sha256 = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb" } }
tenant "m" { keys = 5 }
tenant "n" { keys = { { sha256 = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc" }, "x", extra = 1 } }
tenant "o" { keys = { { sha256 = "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd" }, nil, { sha256 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" } } }
tenant "p" { keys = { sha256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeX" } }
tenant "q" { keys = { { { sha256 = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" } } } }
