-- The id of the key that replaced this one in a rotation. A rotation sets it only while it is
-- NULL, so two nodes that rotate the same key at once cannot both succeed.
ALTER TABLE api_keys ADD COLUMN rotated_to TEXT;
