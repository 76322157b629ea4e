-- expect: tests/lua/bad/backends_bad.lua:20: redis has no name: write redis { ... }
-- expect: tests/lua/bad/backends_bad.lua:13: postgres: unknown key 'idle_timout' (did you mean 'idle_timeout'?)
-- expect: tests/lua/bad/backends_bad.lua:13: postgres: give conninfo = "..." or conninfo_env = "VAR" (one of them)
-- expect: tests/lua/bad/backends_bad.lua:13: postgres: pool: expected a positive integer, got 0
-- expect: tests/lua/bad/backends_bad.lua:14: postgres is declared twice (first at tests/lua/bad/backends_bad.lua:13)
-- expect: tests/lua/bad/backends_bad.lua:15: redis: url: expected "redis://<numeric ip>:<port>[/<db>]", got 'redis://localhost:6379'
-- expect: tests/lua/bad/backends_bad.lua:16: tool 'a': params: a SQL tool with several args needs params = { "x", ... } naming the arg of $1, $2, ... in order
-- expect: tests/lua/bad/backends_bad.lua:17: tool 'b': params: 'x' is a table, which cannot be a SQL parameter
-- expect: tests/lua/bad/backends_bad.lua:18: tool 'c': params: 'z' (for $2) is not one of the tool's args
-- expect: tests/lua/bad/backends_bad.lua:18: tool 'c': params: 'x' is given twice (use $1 again in the SQL instead)
-- expect: tests/lua/bad/backends_bad.lua:18: tool 'c': args: 'y' is not in params, so the SQL never sees it
-- expect: tests/lua/bad/backends_bad.lua:19: tool 'd': params: only SQL tools (sql = "...") take params
postgres { pool = 0, conninfo = "x", conninfo_env = "Y", idle_timout = "1s" }
postgres { conninfo = "y" }
redis { url = "redis://localhost:6379" }
tool "a" { sql = "select $1, $2", args = { x = "int", y = "string" } }
tool "b" { sql = "select $1", args = { x = "table" } }
tool "c" { sql = "select $1", args = { x = "int", y = "int" }, params = { "x", "z", "x" } }
tool "d" { handler = function() end, params = { "x" } }
redis "r" { url = "redis://127.0.0.1:1" }
