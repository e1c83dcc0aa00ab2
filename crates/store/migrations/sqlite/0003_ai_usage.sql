-- Usage and cost of AI calls, added up per hour and per consumer, credential, route, model and
-- target. Nodes add to a row with INSERT ... ON CONFLICT DO UPDATE, so a cluster that shares the
-- store shares the totals. An empty string stands for an absent consumer or credential.
CREATE TABLE ai_usage (
    -- Start of the hour, in seconds since the Unix epoch (UTC).
    bucket_start INTEGER NOT NULL,
    consumer TEXT NOT NULL,
    credential_id TEXT NOT NULL,
    route TEXT NOT NULL,
    -- The model as the client sent it: an alias or provider/model.
    model TEXT NOT NULL,
    -- provider/model of the target that served the calls.
    target TEXT NOT NULL,
    calls INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    -- Sum of the calls' costs; a call whose target has no price adds 0.
    cost REAL NOT NULL,
    -- Calls with at least one token count estimated from characters.
    estimated_calls INTEGER NOT NULL,
    PRIMARY KEY (bucket_start, consumer, credential_id, route, model, target)
);
