-- Actors for the sandbox and conversion tests.
-- eval: runs msg.code (a text chunk) in the sandbox and returns its result.
actor "eval" { receive = function(msg)
  local f, err = load(msg.code, "=code")
  if not f then error(err, 0) end
  return f()
end }

-- echo: returns the message as it came.
actor "echo" { receive = function(msg) return msg end }

-- pred: a `when`-style predicate.
actor "a" { kind = "intent" }
pipeline "p" { step "a" { when = function(msg) return msg.go == true end } }
