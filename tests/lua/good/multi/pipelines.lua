pipeline "qa" {
  step "intent" {},
  step "rag" { timeout = "1.5s", retries = 1, retry_on = { "error", "rejected" } },
  step "tag" { timeout = "500us" },
}
