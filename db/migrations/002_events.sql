-- Step events from the telemetry kind's postgres sink (batched inserts).
CREATE TABLE troupe_events (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    node      text NOT NULL DEFAULT '',
    tenant    text NOT NULL DEFAULT '',
    pipeline  text NOT NULL DEFAULT '',
    step      text NOT NULL DEFAULT '',
    event     text NOT NULL,              -- start, end, retry, timeout, error
    attempt   integer,
    step_us   bigint,
    run_us    bigint,
    trace     text,
    error     text
);

CREATE INDEX troupe_events_at ON troupe_events (at);
CREATE INDEX troupe_events_trace ON troupe_events (trace);
