-- Declarations split over two files share one namespace: this file holds
-- the actors and the tree, pipelines.lua the pipeline that uses them.
actor "intent" { kind = "intent" }
actor "rag"    { kind = "rag", instances = 3, dir = "docs", top_k = 5,
                 k1 = 1.5, extensions = { ".md", ".txt" } }
actor "tag"    { receive = function(msg, ctx)
                   msg.tagged_by = ctx.actor
                   return msg
                 end }

supervisor "workers" { strategy = "rest_for_one", children = { "rag", "tag" } }
supervisor "root"    { strategy = "one_for_all", children = { "intent", "workers" } }
