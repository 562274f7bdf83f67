-- The event-store schema of DESIGN.md ("The event store it serves").
-- Loaded by the integration tests (harness.py) into every store they start,
-- and by docker/initdb/ into the compose services.

CREATE TABLE IF NOT EXISTS events (
    global_position BIGSERIAL PRIMARY KEY,
    event_id        UUID        NOT NULL UNIQUE,
    aggregate_id    UUID        NOT NULL,
    aggregate_type  TEXT        NOT NULL,
    event_type      TEXT        NOT NULL,
    tenant_id       UUID        NULL,
    actor_id        TEXT,
    version         INT         NOT NULL,
    timestamp       TIMESTAMPTZ NOT NULL,
    payload         JSONB       NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (aggregate_id, aggregate_type, version)
);
CREATE INDEX IF NOT EXISTS events_tenant_position_idx ON events (tenant_id, global_position);
CREATE INDEX IF NOT EXISTS events_aggregate_idx ON events (aggregate_id, aggregate_type, version);

-- Transactional outbox, tenant-scoped.
CREATE TABLE IF NOT EXISTS event_outbox (
    id             BIGSERIAL   PRIMARY KEY,
    event_id       UUID        NOT NULL,
    aggregate_id   UUID        NOT NULL,
    aggregate_type TEXT        NOT NULL,
    event_type     TEXT        NOT NULL,
    tenant_id      UUID        NULL,
    payload        JSONB       NOT NULL,
    status         TEXT        NOT NULL DEFAULT 'pending',
    attempts       INT         NOT NULL DEFAULT 0,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at   TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS event_outbox_pending_idx ON event_outbox (status, created_at);
CREATE INDEX IF NOT EXISTS event_outbox_tenant_idx ON event_outbox (tenant_id);

-- Aggregate snapshots, tenant-scoped, upserted.
CREATE TABLE IF NOT EXISTS snapshots (
    aggregate_id   UUID        NOT NULL,
    aggregate_type TEXT        NOT NULL,
    tenant_id      UUID        NULL,
    version        INT         NOT NULL,
    state          JSONB       NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_id, aggregate_type)
);
CREATE INDEX IF NOT EXISTS snapshots_tenant_idx ON snapshots (tenant_id);

-- Where each projection has read the global feed up to.
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    projection_name  TEXT        PRIMARY KEY,
    last_event_id    UUID,
    event_type       TEXT,
    global_position  BIGINT      NOT NULL DEFAULT 0,
    events_processed BIGINT      NOT NULL DEFAULT 0,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
