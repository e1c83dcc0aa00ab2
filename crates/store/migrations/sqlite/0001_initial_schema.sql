-- Entities are JSON documents keyed by name. API keys are hashed records. The meta table
-- holds the config version and store-wide secrets.
--
-- Timestamps are UTC text in the fixed form 2024-05-01T12:00:00.123456Z, which sorts in
-- time order.

CREATE TABLE services (
    name TEXT PRIMARY KEY NOT NULL,
    spec TEXT NOT NULL CHECK (json_valid(spec)),
    updated_at TEXT NOT NULL
) STRICT;

CREATE TABLE routes (
    name TEXT PRIMARY KEY NOT NULL,
    -- NULL for a route without a service.
    service_name TEXT REFERENCES services (name),
    spec TEXT NOT NULL CHECK (json_valid(spec)),
    updated_at TEXT NOT NULL
) STRICT;

CREATE INDEX routes_service_name ON routes (service_name);

CREATE TABLE consumers (
    name TEXT PRIMARY KEY NOT NULL,
    spec TEXT NOT NULL CHECK (json_valid(spec)),
    updated_at TEXT NOT NULL
) STRICT;

-- Keys outlive their consumer as revoked rows, so consumer is not a foreign key.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY NOT NULL,
    consumer TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT,
    rotated_from TEXT,
    scopes TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(scopes)),
    source TEXT NOT NULL,
    -- Written in batches from memory, so it lags real use by up to the flush interval.
    last_used_at TEXT
) STRICT;

CREATE INDEX api_keys_prefix ON api_keys (prefix);
CREATE INDEX api_keys_consumer ON api_keys (consumer);

CREATE TABLE meta (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT;

INSERT INTO meta (key, value) VALUES ('config_version', '0');
