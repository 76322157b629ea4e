-- bench/pipeline.c --lua: the Lua step actor. Returning nil replies with
-- an empty body, which keeps the message (as the C no-op does).
actor "noop" { receive = function(msg, ctx) return nil end }
