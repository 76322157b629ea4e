-- expect: tests/lua/bad/node_bad.lua:4: node: unknown key 'thread' (did you mean 'threads'?)
-- expect: tests/lua/bad/node_bad.lua:4: node: http: expected "host:port", got '8080'
-- expect: tests/lua/bad/node_bad.lua:4: node: threads: expected a non-negative integer, got -1
node { name = "n1", http = "8080", threads = -1, thread = 2 }
