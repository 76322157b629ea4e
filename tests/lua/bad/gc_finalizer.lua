-- expect: tests/lua/bad/gc_finalizer.lua:5: setmetatable: a __gc metamethod is not allowed in the sandbox (finalizers run outside the instruction limit)
actor "a" { kind = "intent" }
-- Finalizers run with hooks off: a looping __gc would hang the loader
-- (or an actor's worker) beyond the instruction limit.
setmetatable({}, { __gc = function() while true do end end })
