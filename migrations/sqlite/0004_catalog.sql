-- The reference-model catalog: the models a custom model is created from. Seeded by
-- `kiln seed` (idempotent); not event-sourced: it is product data, not team history.

CREATE TABLE reference_models (
    id                       TEXT        PRIMARY KEY,
    name                     TEXT        NOT NULL,
    category                 TEXT        NOT NULL
        CHECK (category IN ('fashion', 'fitness', 'beauty', 'lifestyle', 'business')),
    -- JSON object: age_range, ethnicity, gender_presentation, style, setting, …
    characteristics          TEXT        NOT NULL,
    -- Thousandths: 1000 = 1.0.
    complexity_factor_milli  INTEGER     NOT NULL CHECK (complexity_factor_milli > 0),
    popularity               INTEGER     NOT NULL DEFAULT 0,
    active                   INTEGER     NOT NULL DEFAULT 1,
    -- JSON array of object-store keys.
    preview_keys             TEXT        NOT NULL DEFAULT '[]',
    created_at               TEXT        NOT NULL
);
-- Listing: by category or not, most popular first, ties by id (the cursor's order).
CREATE INDEX reference_models_category_popularity_idx ON reference_models (category, popularity DESC, id);
CREATE INDEX reference_models_popularity_idx ON reference_models (popularity DESC, id);
