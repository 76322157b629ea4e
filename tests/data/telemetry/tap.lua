-- A pipeline whose step events go to a telemetry actor (test_telemetry).
actor "tel" { kind = "telemetry", ring = 100, mailbox = 4096, overflow = "drop_oldest" }
actor "up" { receive = function(msg)
  if msg.fail then error("asked to fail") end
  msg.text = string.upper(msg.text or "")
  return msg
end }
pipeline "p" { tap = "tel", step "up" { timeout = "1s" } }
