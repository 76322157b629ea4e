-- expect: tests/lua/bad/empty_pipeline.lua:4: pipeline 'nothing' has no steps
-- expect: tests/lua/bad/empty_pipeline.lua:5: pipeline 'also_nothing' has no steps
actor "a1" { kind = "intent" }
pipeline "nothing" { deadline = "1s" }
pipeline "also_nothing" {}
