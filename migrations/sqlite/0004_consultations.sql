-- Consultations: a user asks a provider (or an institution) for one, the provider
-- accepts it (`open`), either side or an admin closes it. Under the `consulted`
-- contact policy they decide who may message whom. At most one live (requested or
-- open) consultation per user and provider.

CREATE TABLE consultations (
    id              BLOB PRIMARY KEY NOT NULL,
    user_id         BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    -- A provider or institution account (checked by the domain when requested).
    provider_id     BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    status          TEXT NOT NULL DEFAULT 'requested' CHECK (status IN ('requested', 'open', 'closed')),
    note            TEXT,
    -- The 1:1 conversation of the two, set when the consultation opens.
    conversation_id BLOB REFERENCES conversations(id) ON DELETE SET NULL,
    created_at      INTEGER NOT NULL,
    opened_at       INTEGER,
    closed_at       INTEGER,
    CHECK (user_id <> provider_id),
    CHECK (status <> 'requested' OR (opened_at IS NULL AND closed_at IS NULL)),
    CHECK (status <> 'open' OR (opened_at IS NOT NULL AND closed_at IS NULL)),
    CHECK (status <> 'closed' OR closed_at IS NOT NULL)
);
CREATE UNIQUE INDEX consultations_one_live ON consultations(user_id, provider_id)
    WHERE status IN ('requested', 'open');
CREATE INDEX consultations_by_user ON consultations(user_id, created_at);
CREATE INDEX consultations_by_provider ON consultations(provider_id, created_at);
