-- expect: tests/lua/bad/unknown_in_route_branch.lua:5: step 'execute': no actor named 'execute'
actor "intent" { kind = "intent" }
pipeline "p" {
  route "intent" {
    action = { step "execute" {} },
    default = { step "intent" {} },
  },
}
