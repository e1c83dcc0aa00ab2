-- Provider credentials for the AI gateway, encrypted with the nodes' master key, which is never
-- stored here. `ciphertext` is the ChaCha20-Poly1305 output with its tag, sealed with `nonce`
-- and the name as associated data. `key_id` is the fingerprint of the master key that sealed
-- the row, so that a node with another key reports the mismatch instead of failing to decrypt.
CREATE TABLE ai_credentials (
    name TEXT PRIMARY KEY,
    ciphertext BYTEA NOT NULL,
    nonce BYTEA NOT NULL,
    key_id TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
