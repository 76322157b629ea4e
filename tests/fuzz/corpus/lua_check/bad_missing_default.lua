-- expect: tests/lua/bad/missing_default.lua:6: route 'intent': missing default = { ... } (the steps for any other value)
actor "intent" { kind = "intent" }
actor "execute" { kind = "execute" }
pipeline "p" {
  step "intent" {},
  route "intent" {
    action = { step "execute" {} },
  },
}
