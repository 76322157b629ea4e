-- Lua actors for the node tests.
actor "shout" { receive = function(msg, ctx) msg.text = msg.text:upper(); return msg end }

local calls = 0
actor "count" { receive = function(msg, ctx)
  calls = calls + 1
  return { calls = calls, actor = ctx.actor, attempt = ctx.attempt, tenant = ctx.tenant }
end }

actor "boom" { receive = function(msg) error("boom: " .. tostring(msg.why)) end }
actor "nothing" { receive = function() end }
actor "spin" { receive = function() while true do end end }
