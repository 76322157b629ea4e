-- The node's backends and SQL tools (test_lua).
postgres { conninfo = "hostaddr=127.0.0.1 port=5432 dbname=app", pool = 4, queue = 100,
           connect_timeout = "2s", max_lifetime = "1h", idle_timeout = "20s",
           statement_timeout = "5s", pgbouncer = true }
redis { url = "redis://127.0.0.1:6379/2", prefix = "app:", timeout = "200ms" }

tool "appointments" {
  description = "A patient's appointments that are not cancelled.",
  sql = "select id, start_time from appointments where patient_id = $1 and status <> 'cancelled' order by start_time",
  args = { patient_id = "int" },
}
tool "between" {
  sql = "select count(*) as n from appointments where start_time between $1 and $2",
  args = { from = "string", to = "string" },
  params = { "from", "to" },
  timeout = "500ms",
}
actor "execute" { kind = "execute" }
pipeline "p" { step "execute" {} }
