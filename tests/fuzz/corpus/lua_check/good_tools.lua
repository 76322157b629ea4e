-- Tools run by the execute kind: typed args, a Lua handler, a timeout.
local booked = {}

actor "exec" { kind = "execute" }
actor "exec_book_only" { kind = "execute", tools = { "book_appointment" } }

tool "book_appointment" {
  description = "Books a slot on a date.",
  args = { date = "string", slot = "int", note = "string?" },
  timeout = "500ms",
  handler = function(args, ctx)
    if args.date == "never" then error("no such date: " .. args.date) end
    local key = args.date .. "/" .. args.slot
    if booked[key] then return { booked = false, reason = "taken" } end
    booked[key] = ctx.tenant or true
    return { booked = true, date = args.date, slot = args.slot, note = args.note,
             by = ctx.actor, attempt = ctx.attempt, tenant = ctx.tenant }
  end,
}

tool "echo" {
  args = { n = "number?", flag = "bool?", data = "table?", s = "string?", i = "int?" },
  handler = function(args) return args end,
}

tool "nothing" { handler = function() end }

tool "spin" {
  timeout = "20ms",
  handler = function() while true do end end,
}

tool "slow" {
  timeout = "1ms",
  -- few instructions, but making 24 MB takes longer than 1 ms of wall time
  handler = function() return #string.rep("x", 24000000) end,
}

tool "bad_result" { handler = function() return { f = function() end } end }

-- a pipeline through the execute actor (test_execute runs it)
pipeline "act" { step "exec" { timeout = "2s" } }
