-- The recommendation service's own data: which tier each recommendation was, and what happened to
-- it. No subject ids: effectiveness per tier is measured without personal data.
CREATE TABLE recommendations (
    recommendation_id TEXT PRIMARY KEY,
    tier TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE outcomes (
    recommendation_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    value_minor BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL
);
CREATE INDEX outcomes_by_recommendation ON outcomes (recommendation_id);
