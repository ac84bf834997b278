-- Message size in bytes, so queue listings need not load bodies.
-- Rows written before this migration get the length of their body.

ALTER TABLE messages ADD COLUMN size bigint NOT NULL DEFAULT 0;
UPDATE messages SET size = octet_length(body);
