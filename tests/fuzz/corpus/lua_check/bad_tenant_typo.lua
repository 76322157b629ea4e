-- expect: tests/lua/bad/tenant_typo.lua:2: unknown name 'tenat' (did you mean 'tenant'?)
tenat "acme" { keys = { sha256 = string.rep("e", 64) } }
