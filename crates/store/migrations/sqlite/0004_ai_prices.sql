-- Prices of AI models set through the admin API. Each row overrides the price of the same
-- `provider/model` in the node's `ai.prices`, and a write bumps the config version like any
-- other configuration write.
CREATE TABLE ai_prices (
    -- provider/model, such as openai-main/gpt-4.1.
    model TEXT PRIMARY KEY NOT NULL,
    -- The price spec as JSON, in the form of one `ai.prices` entry.
    spec TEXT NOT NULL CHECK (json_valid(spec)),
    updated_at TEXT NOT NULL
) STRICT;
