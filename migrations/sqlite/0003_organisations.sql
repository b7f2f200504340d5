-- Institutions and their members, sign-ins a member opens to act for its institution,
-- kiosk devices with long-lived secrets, and codes that prove a new email or phone.

-- An institution is an account (role 'institution') that nobody logs into directly:
-- its members act for it. Owners and admins manage members and devices.
CREATE TABLE institution_members (
    institution_id BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    user_id        BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role           TEXT NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member')),
    added_by       BLOB REFERENCES users(id) ON DELETE SET NULL,
    added_at       INTEGER NOT NULL,
    PRIMARY KEY (institution_id, user_id),
    CHECK (institution_id <> user_id)
);
CREATE INDEX institution_members_by_user ON institution_members(user_id);

-- A sign-in of an institution opened by one of its members (`actor_id`) from the
-- member's own sign-in (`parent_id`): ending the parent ends it.
ALTER TABLE auth_sessions ADD COLUMN actor_id BLOB REFERENCES users(id) ON DELETE CASCADE;
ALTER TABLE auth_sessions ADD COLUMN parent_id BLOB REFERENCES auth_sessions(id) ON DELETE CASCADE;
CREATE INDEX auth_sessions_by_parent ON auth_sessions(parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX auth_sessions_by_actor ON auth_sessions(actor_id) WHERE actor_id IS NOT NULL;

-- A kiosk: a `device` account whose secret (kept as a hash) is exchanged for
-- short-lived access tokens of its current sign-in, with the rights it was given.
CREATE TABLE devices (
    user_id        BLOB PRIMARY KEY NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    institution_id BLOB REFERENCES users(id) ON DELETE CASCADE,
    created_by     BLOB REFERENCES users(id) ON DELETE SET NULL,
    label          TEXT NOT NULL CHECK (length(label) BETWEEN 1 AND 64),
    -- Space-separated: send, receipts, typing, presence, settings.
    rights         TEXT NOT NULL,
    secret_hash    BLOB NOT NULL UNIQUE,
    session_id     BLOB REFERENCES auth_sessions(id) ON DELETE SET NULL,
    created_at     INTEGER NOT NULL,
    secret_set_at  INTEGER NOT NULL,
    last_used_at   INTEGER,
    revoked_at     INTEGER
);
CREATE INDEX devices_by_institution ON devices(institution_id);

-- One-time codes may now also prove a new email or phone for an existing account
-- (SQLite cannot alter a CHECK, so the table is rebuilt).
CREATE TABLE one_time_codes_new (
    id          BLOB PRIMARY KEY NOT NULL,
    purpose     TEXT NOT NULL CHECK (purpose IN
                  ('verify_email', 'verify_phone', 'reset_password', 'change_email', 'change_phone')),
    identifier  TEXT NOT NULL,
    user_id     BLOB REFERENCES users(id) ON DELETE CASCADE,
    code_hash   BLOB NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    client_addr TEXT,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    consumed_at INTEGER
);
INSERT INTO one_time_codes_new (id, purpose, identifier, user_id, code_hash, attempts, client_addr, created_at,
                                expires_at, consumed_at)
    SELECT id, purpose, identifier, user_id, code_hash, attempts, client_addr, created_at, expires_at, consumed_at
    FROM one_time_codes;
DROP TABLE one_time_codes;
ALTER TABLE one_time_codes_new RENAME TO one_time_codes;
CREATE INDEX one_time_codes_by_identifier ON one_time_codes(identifier, created_at);
CREATE INDEX one_time_codes_by_addr ON one_time_codes(client_addr, created_at);

-- Finding accounts whose email or phone was never proved (released after a while).
CREATE INDEX users_unverified ON users(created_at) WHERE email_verified_at IS NULL OR phone_verified_at IS NULL;
