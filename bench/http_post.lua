-- bench/http_post.lua -- wrk script (wrk -s): every request is
-- POST {"input":{"text":"hi"}} as JSON, on keep-alive connections.
wrk.method = "POST"
wrk.body = '{"input":{"text":"hi"}}'
wrk.headers["Content-Type"] = "application/json"
