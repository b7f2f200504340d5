-- Institutions and their members, sign-ins a member opens to act for its institution,
-- kiosk devices with long-lived secrets, and codes that prove a new email or phone.

-- An institution is an account (role 'institution') that nobody logs into directly:
-- its members act for it. Owners and admins manage members and devices.
CREATE TABLE institution_members (
    institution_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    user_id        UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role           TEXT NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member')),
    added_by       UUID REFERENCES users(id) ON DELETE SET NULL,
    added_at       BIGINT NOT NULL,
    PRIMARY KEY (institution_id, user_id),
    CHECK (institution_id <> user_id)
);
CREATE INDEX institution_members_by_user ON institution_members(user_id);

-- A sign-in of an institution opened by one of its members (`actor_id`) from the
-- member's own sign-in (`parent_id`): ending the parent ends it.
ALTER TABLE auth_sessions ADD COLUMN actor_id UUID REFERENCES users(id) ON DELETE CASCADE;
ALTER TABLE auth_sessions ADD COLUMN parent_id UUID REFERENCES auth_sessions(id) ON DELETE CASCADE;
CREATE INDEX auth_sessions_by_parent ON auth_sessions(parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX auth_sessions_by_actor ON auth_sessions(actor_id) WHERE actor_id IS NOT NULL;

-- A kiosk: a `device` account whose secret (kept as a hash) is exchanged for
-- short-lived access tokens of its current sign-in, with the rights it was given.
CREATE TABLE devices (
    user_id        UUID PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    institution_id UUID REFERENCES users(id) ON DELETE CASCADE,
    created_by     UUID REFERENCES users(id) ON DELETE SET NULL,
    label          TEXT NOT NULL CHECK (length(label) BETWEEN 1 AND 64),
    -- Space-separated: send, receipts, typing, presence, settings.
    rights         TEXT NOT NULL,
    secret_hash    BYTEA NOT NULL UNIQUE,
    session_id     UUID REFERENCES auth_sessions(id) ON DELETE SET NULL,
    created_at     BIGINT NOT NULL,
    secret_set_at  BIGINT NOT NULL,
    last_used_at   BIGINT,
    revoked_at     BIGINT
);
CREATE INDEX devices_by_institution ON devices(institution_id);

-- One-time codes may now also prove a new email or phone for an existing account.
ALTER TABLE one_time_codes DROP CONSTRAINT one_time_codes_purpose_check;
ALTER TABLE one_time_codes ADD CONSTRAINT one_time_codes_purpose_check CHECK (purpose IN
    ('verify_email', 'verify_phone', 'reset_password', 'change_email', 'change_phone'));

-- Finding accounts whose email or phone was never proved (released after a while).
CREATE INDEX users_unverified ON users(created_at) WHERE email_verified_at IS NULL OR phone_verified_at IS NULL;
