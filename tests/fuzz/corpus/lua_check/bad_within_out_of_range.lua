-- expect: tests/lua/bad/within_out_of_range.lua:8: supervisor 'short': within: must be between 1ms and 24h, got '500us'
-- expect: tests/lua/bad/within_out_of_range.lua:9: supervisor 'long': within: must be between 1ms and 24h, got '1200h'
-- expect: tests/lua/bad/within_out_of_range.lua:10: supervisor 'days': within: must be between 1ms and 24h, got '25h'
-- within: 1ms .. 24h (the bounds themselves load: tests/lua/good/limits.lua)
actor "a" { kind = "intent" }
actor "b" { kind = "intent" }
actor "c" { kind = "intent" }
supervisor "short" { max_restarts = 0, within = "500us", children = { "a" } }
supervisor "long" { within = "1200h", children = { "b" } }
supervisor "days" { within = "25h", children = { "c" } }
