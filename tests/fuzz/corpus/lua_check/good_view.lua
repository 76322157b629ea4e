-- Predicates reading a message through tr_lua_test's view (test_lua).
actor "a" { kind = "intent" }
local kept
pipeline "p" {
  step "a" { when = function(msg) return msg.go == true end },                      -- 1
  step "a" { when = function(msg) return msg.input.text == "hi" and msg.nope == nil end },
  step "a" { when = function(msg) return msg[7] == "seven" end },
  step "a" { when = function(msg)                                                    -- 4
    msg.extra = true
    local n = 0
    for _ in pairs(msg) do n = n + 1 end
    return n == msg.want and msg.extra == true
  end },
  step "a" { when = function(msg) kept = msg; return true end },                   -- 5
  step "a" { when = function() return kept.go end },                                -- 6
  step "a" { when = function(msg) return getmetatable(msg) == false and type(msg) == "table" end },
  step "a" { when = function(msg) rawset(msg, "go", false); return msg.go == false end },
  step "a" { when = function(msg) setmetatable(msg, nil) end },                     -- 9
}
