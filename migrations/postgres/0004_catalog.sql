-- The reference-model catalog: the models a custom model is created from. Seeded by
-- `kiln seed` (idempotent); not event-sourced: it is product data, not team history.

CREATE TABLE reference_models (
    id                       text        PRIMARY KEY,
    name                     text        NOT NULL,
    category                 text        NOT NULL
        CHECK (category IN ('fashion', 'fitness', 'beauty', 'lifestyle', 'business')),
    -- JSON object: age_range, ethnicity, gender_presentation, style, setting, …
    characteristics          text        NOT NULL,
    -- Thousandths: 1000 = 1.0.
    complexity_factor_milli  bigint      NOT NULL CHECK (complexity_factor_milli > 0),
    popularity               bigint      NOT NULL DEFAULT 0,
    active                   boolean     NOT NULL DEFAULT true,
    -- JSON array of object-store keys.
    preview_keys             text        NOT NULL DEFAULT '[]',
    created_at               timestamptz NOT NULL
);
-- Listing: by category or not, most popular first, ties by id (the cursor's order).
CREATE INDEX reference_models_category_popularity_idx ON reference_models (category, popularity DESC, id);
CREATE INDEX reference_models_popularity_idx ON reference_models (popularity DESC, id);
