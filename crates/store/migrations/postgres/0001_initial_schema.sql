-- Entities are JSON documents keyed by name. API keys are hashed records. The meta table
-- holds the config version and store-wide secrets.

CREATE TABLE services (
    name TEXT PRIMARY KEY,
    spec JSONB NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE routes (
    name TEXT PRIMARY KEY,
    -- NULL for a route without a service.
    service_name TEXT REFERENCES services (name),
    spec JSONB NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX routes_service_name ON routes (service_name);

CREATE TABLE consumers (
    name TEXT PRIMARY KEY,
    spec JSONB NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

-- Keys outlive their consumer as revoked rows, so consumer is not a foreign key.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    consumer TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ,
    rotated_from TEXT,
    scopes JSONB NOT NULL DEFAULT '[]',
    source TEXT NOT NULL,
    -- Written in batches from memory, so it lags real use by up to the flush interval.
    last_used_at TIMESTAMPTZ
);

CREATE INDEX api_keys_prefix ON api_keys (prefix);
CREATE INDEX api_keys_consumer ON api_keys (consumer);

CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

INSERT INTO meta (key, value) VALUES ('config_version', '0');
