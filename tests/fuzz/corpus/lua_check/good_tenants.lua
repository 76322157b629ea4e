-- Tenants (API keys as SHA-256, rates) and the HTTP door's limits.
-- The keys are `printf %s acme-key-1 | sha256sum` and so on.
node {
  http = "127.0.0.1:8080",
  max_body = "4MiB",
  max_header = 32768, -- a plain number is bytes
  max_connections = 500,
  header_timeout = "5s",
  idle_timeout = "2m",
  grace = "1500ms",
}

-- two keys (one in upper case), 50 requests per second, burst 100
tenant "acme" {
  keys = {
    { sha256 = "904fc520be4ca9db80d0ffcc6bf7e01b4148e33d45bb6b422ad2e607815fb508" },
    { sha256 = "BE7DF782AF8078EBF81424068223C4993133431D522B67C61168FD9152097EB7" },
  },
  rate = "50/s",
  burst = 100,
}

-- one key, a fractional rate per minute: burst defaults to 1
tenant "beta" {
  keys = { sha256 = "7a3d637bc601f7000cc2c33141c8c8a7554e02e319fa8b293a0c88c613b77620" },
  rate = "1.5/m",
}

-- no rate: unlimited
tenant "free" { keys = { { sha256 = "0c7e232ca6aa55ab05a0287b1c4198c7b4275500bce25c40b5a6aa7d564d3c45" } } }

-- 7.5/s: burst defaults to 8; a tenant may share a name with an actor
tenant "echo" {
  keys = { sha256 = "1111111111111111111111111111111111111111111111111111111111111111" },
  rate = "27000/h",
}
actor "echo" { receive = function(msg) return msg end }
