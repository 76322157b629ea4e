-- expect: tests/lua/bad/bad_names.lua:4: actor name 'has space': use 1 to 63 letters, digits, '_', '-' or '.'
-- expect: tests/lua/bad/bad_names.lua:5: actor: expected a name: actor "name" { ... }, got 42
-- expect: tests/lua/bad/bad_names.lua:6: pipeline name '': use 1 to 63 letters, digits, '_', '-' or '.'
actor "has space" { kind = "intent" }
actor(42) { kind = "intent" }
pipeline "" { }
