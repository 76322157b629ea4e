-- expect: tests/lua/bad/tool_bad.lua:23: tool 'a': unknown key 'handlr' (did you mean 'handler'?)
-- expect: tests/lua/bad/tool_bad.lua:23: tool 'a': unknown key 'zzz' (a tool takes args, handler, timeout, description, sql, params)
-- expect: tests/lua/bad/tool_bad.lua:23: tool 'a': needs handler = function(args, ctx) ... end (it returns the tool's result)
-- expect: tests/lua/bad/tool_bad.lua:24: tool 'b': handler: expected a function(args, ctx), got string
-- expect: tests/lua/bad/tool_bad.lua:25: tool 'c': args: 'd': unknown type 'integer' (did you mean 'int'?)
-- expect: tests/lua/bad/tool_bad.lua:25: tool 'c': args: 'e': unknown type 'strng?' (did you mean 'string?'?)
-- expect: tests/lua/bad/tool_bad.lua:25: tool 'c': args: 'f': expected a type name (string, int, number, bool or table, with a trailing ? for an optional arg), got 3
-- expect: tests/lua/bad/tool_bad.lua:25: tool 'c': args: 'g': unknown type 'date' (types: string, int, number, bool or table, with a trailing ? for an optional arg)
-- expect: tests/lua/bad/tool_bad.lua:26: tool 'd': args: expected name = "type" pairs, got a number key 1
-- expect: tests/lua/bad/tool_bad.lua:27: tool 'e': args: expected a table of name = "type" (string, int, number, bool or table, with a trailing ? for an optional arg), got string
-- expect: tests/lua/bad/tool_bad.lua:28: tool 'f': timeout: bad duration 'soon' (units us, ms, s, m, h: "500us", "50ms", "1.5s", "1m")
-- expect: tests/lua/bad/tool_bad.lua:29: tool 'g': timeout: must be between 1ms and 1h, got '2h'
-- expect: tests/lua/bad/tool_bad.lua:31: tool 'i': give handler or sql, not both
-- expect: tests/lua/bad/tool_bad.lua:32: tool 'j': description: expected a non-empty string, got 5
-- expect: tests/lua/bad/tool_bad.lua:33: tool 'k': args: arg name 'bad name': use 1 to 63 letters, digits, '_', '-' or '.'
-- expect: tests/lua/bad/tool_bad.lua:35: tool 'a' is declared twice (first at tests/lua/bad/tool_bad.lua:23)
-- expect: tests/lua/bad/tool_bad.lua:36: tool name 'no spaces': use 1 to 63 letters, digits, '_', '-' or '.'
-- expect: tests/lua/bad/tool_bad.lua:37: tool 'm': expected a table: tool "m" { args = { ... }, handler = function(args, ctx) ... end }, got nil
-- expect: tests/lua/bad/tool_bad.lua:39: tool 'n': options given twice (first at tests/lua/bad/tool_bad.lua:39)
-- expect: tests/lua/bad/tool_bad.lua:30: tool 'h': sql: SQL tools run on the node's PostgreSQL pool; declare postgres { conninfo = "..." }
-- expect: tests/lua/bad/tool_bad.lua:31: tool 'i': sql: SQL tools run on the node's PostgreSQL pool; declare postgres { conninfo = "..." }
-- expect: tests/lua/bad/tool_bad.lua:40: pipeline 'p': element 1: tool cannot be used as a step
tool "a" { handlr = function() end, zzz = 1 }
tool "b" { handler = "run" }
tool "c" { args = { d = "integer", e = "strng?", f = 3, g = "date" }, handler = function() end }
tool "d" { args = { "string" }, handler = function() end }
tool "e" { args = "string", handler = function() end }
tool "f" { timeout = "soon", handler = function() end }
tool "g" { timeout = "2h", handler = function() end }
tool "h" { sql = "select 1" }
tool "i" { sql = "select 1", handler = function() end }
tool "j" { description = 5, handler = function() end }
tool "k" { args = { ["bad name"] = "int" }, handler = function() end }
-- a tool's name is its own: an actor may share it
tool "a" { handler = function() end }
tool "no spaces" { handler = function() end }
tool "m"
local n = tool "n"
n { handler = function() end } n { handler = function() end }
pipeline "p" { tool "x" { handler = function() end } }
actor "a" { receive = function(m) return m end }
