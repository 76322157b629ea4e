-- expect: tests/lua/bad/unknown_step_actor.lua:5: step 'intnet': no actor named 'intnet' (did you mean 'intent'?)
-- expect: tests/lua/bad/unknown_step_actor.lua:6: step 'nothing_like_it': no actor named 'nothing_like_it'
actor "intent" { kind = "intent" }
pipeline "p" {
  step "intnet" { timeout = "1s" },
  step "nothing_like_it" {},
}
