-- bench/http_assistant.lua -- wrk script (wrk -s) for POST
-- /v1/pipelines/assistant (the default assistant, pipelines/assistant.lua):
-- the requests of each wrk thread (over all its keep-alive connections)
-- cycle through 8 questions about the docs, as {"input":{"text":"..."}}.
-- Every one is routed as a question (safety -> intent -> rag -> generate
-- -> safety).
--
--   wrk ... -s bench/http_assistant.lua URL            warm: 8 distinct
--       texts, so after the first 8 runs rag's cache (key = text) hits
--   wrk ... -s bench/http_assistant.lua URL -- cold [SALT]
--       cold: every text is unique (the question plus one token
--       "zq<salt>t<thread>n<counter>" that no doc holds, so BM25 retrieves
--       the same passages), so rag's cache misses and generate's
--       coalescing never joins two calls. Give each wrk run against the
--       same node its own SALT (a number), or the texts repeat.
--
-- Each wrk thread starts at a different question so that the threads do
-- not ask in lock step.
local questions = {
	"how do retries work?",
	"what is the backoff between attempts?",
	"what happens when a deadline expires?",
	"what happens under backpressure?",
	"how does hot reload work?",
	"which metrics are exported?",
	"how do tenants and api keys work?",
	"how does supervision restart actors?",
}

local threads = 0
function setup(thread)
	threads = threads + 1
	thread:set("tid", threads)
end

local cold, salt = false, "0"
local reqs = {}
local n = 0
local headers = { ["Content-Type"] = "application/json" }

local function body(text)
	-- the questions hold no character that JSON must escape
	return '{"input":{"text":"' .. text .. '"}}'
end

function init(args)
	cold = args[1] == "cold"
	if args[1] ~= nil and not cold then
		error("bench/http_assistant.lua: the first argument is 'cold', got '" .. args[1] .. "'")
	end
	salt = tostring(args[2] or 0)
	if not salt:match("^%d+$") then
		error("bench/http_assistant.lua: SALT is a number, got '" .. salt .. "'")
	end
	n = (tid or 1) - 1
	for i, q in ipairs(questions) do
		reqs[i] = wrk.format("POST", nil, headers, body(q))
	end
end

function request()
	n = n + 1
	local i = n % #questions + 1
	if cold then
		return wrk.format("POST", nil, headers,
			body(questions[i] .. " zq" .. salt .. "t" .. (tid or 1) .. "n" .. n))
	end
	return reqs[i]
end
