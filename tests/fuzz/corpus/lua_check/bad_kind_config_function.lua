-- expect: tests/lua/bad/kind_config_function.lua:2: actor 'rag': hook: a function cannot be passed to a kind (values must be strings, numbers, booleans or tables of them)
actor "rag" { kind = "rag", dsn = "postgres://x", hook = function() end }
