-- Prices of AI models set through the admin API. Each row overrides the price of the same
-- `provider/model` in the node's `ai.prices`, and a write bumps the config version like any
-- other configuration write.
CREATE TABLE ai_prices (
    -- provider/model, such as openai-main/gpt-4.1.
    model TEXT PRIMARY KEY,
    -- The price spec as JSON, in the form of one `ai.prices` entry.
    spec JSONB NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
