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
             by = ctx.actor, attempt = ctx.attempt }
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

tool "sleepy" {
  timeout = "1ms",
  -- a few million instructions: more than 1 ms of wall time, well under
  -- its instruction budget only if the machine is very fast
  handler = function() local x = 0 for i = 1, 3000000 do x = x + i end return x end,
}

tool "bad_result" { handler = function() return { f = function() end } end }
