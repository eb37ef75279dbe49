-- Price versions added by operators (issue 28): each takes effect at `effective_at`
-- (NULL: the seeded version 1, in effect from the start), names who added it and why.
-- Rows past version 1 are the inline projection of the PriceBook stream.
ALTER TABLE credit_pricing_config ADD COLUMN effective_at TEXT;
ALTER TABLE credit_pricing_config ADD COLUMN added_by text;
ALTER TABLE credit_pricing_config ADD COLUMN reason text;
