-- Accounts, refresh tokens, conversations (1:1 and groups), their members and
-- messages, and each user's event log (what sync replays).
-- Times are milliseconds since the Unix epoch (UTC) in both backends.

CREATE TABLE users (
    id             UUID PRIMARY KEY,
    username       TEXT UNIQUE,
    email          TEXT UNIQUE,
    phone          TEXT UNIQUE,
    display_name   TEXT,
    password_hash  TEXT NOT NULL,
    -- Sequence number of the newest event in this user's log.
    last_event_seq BIGINT NOT NULL DEFAULT 0,
    -- When the user's last device went away (presence).
    last_seen_at   BIGINT,
    -- The app said "away" while connected.
    away           BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     BIGINT NOT NULL,
    CHECK (username IS NOT NULL OR email IS NOT NULL OR phone IS NOT NULL)
);

CREATE TABLE refresh_tokens (
    id          UUID PRIMARY KEY,
    user_id     UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash  BYTEA NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX refresh_tokens_by_user ON refresh_tokens(user_id);

-- Uploaded files (the bytes live in the data directory's uploads/ folder).
CREATE TABLE uploads (
    id           UUID PRIMARY KEY,
    owner_id     UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    content_type TEXT NOT NULL,
    size         BIGINT NOT NULL CHECK (size >= 0),
    filename     TEXT,
    created_at   BIGINT NOT NULL
);

CREATE TABLE conversations (
    id              UUID PRIMARY KEY,
    kind            TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
    -- "{lower user id}:{higher user id}" for 1:1 conversations, so there is one per pair.
    direct_key      TEXT UNIQUE,
    title           TEXT,
    -- Who talks to whom.
    audience        TEXT NOT NULL DEFAULT 'user_user' CHECK (audience IN
                      ('user_user', 'user_provider', 'user_institution', 'institution_institution', 'admin_provider', 'group')),
    context_type    TEXT CHECK (context_type IN ('consultation', 'service_request', 'support', 'general')),
    context_id      TEXT,
    created_by      UUID REFERENCES users(id) ON DELETE SET NULL,
    last_seq        BIGINT NOT NULL DEFAULT 0,
    last_message_at BIGINT,
    created_at      BIGINT NOT NULL,
    CHECK ((kind = 'direct') = (direct_key IS NOT NULL)),
    CHECK (context_id IS NULL OR context_type IS NOT NULL)
);

CREATE TABLE conversation_members (
    conversation_id    UUID NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    user_id            UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role               TEXT NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member')),
    joined_at          BIGINT NOT NULL,
    -- Receipts as watermarks: every message up to this seq was delivered to / read by the member.
    last_delivered_seq BIGINT NOT NULL DEFAULT 0,
    last_read_seq      BIGINT NOT NULL DEFAULT 0,
    -- The member's own settings for this conversation.
    pinned             BOOLEAN NOT NULL DEFAULT FALSE,
    archived           BOOLEAN NOT NULL DEFAULT FALSE,
    favourite          BOOLEAN NOT NULL DEFAULT FALSE,
    muted_until        BIGINT,
    ringtone           TEXT,
    -- In a 1:1 conversation: this member blocked the other; nothing is delivered either way.
    blocked            BOOLEAN NOT NULL DEFAULT FALSE,
    CHECK (last_read_seq >= 0 AND last_delivered_seq >= 0),
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX conversation_members_by_user ON conversation_members(user_id);

CREATE TABLE messages (
    id              UUID PRIMARY KEY,
    conversation_id UUID NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    seq             BIGINT NOT NULL CHECK (seq > 0),
    sender_id       UUID NOT NULL REFERENCES users(id),
    client_id       TEXT NOT NULL,
    kind            TEXT NOT NULL DEFAULT 'text'
                      CHECK (kind IN ('text', 'image', 'audio', 'video', 'file', 'system')),
    -- Emptied when deleted for everyone: the row stays as a tombstone so seqs have no holes.
    body            TEXT NOT NULL,
    reply_to        UUID REFERENCES messages(id) ON DELETE SET NULL,
    -- For image, audio, video and file messages: the upload, and its description as JSON.
    attachment_id   UUID REFERENCES uploads(id),
    attachment      TEXT,
    edited_at       BIGINT,
    deleted_at      BIGINT,
    created_at      BIGINT NOT NULL,
    -- Full-text search over live text messages.
    search          TSVECTOR GENERATED ALWAYS AS
                      (to_tsvector('simple', CASE WHEN kind <> 'system' AND deleted_at IS NULL THEN body ELSE '' END)) STORED,
    UNIQUE (conversation_id, seq),
    UNIQUE (sender_id, client_id)
);
CREATE INDEX messages_search ON messages USING GIN (search);

-- Earlier texts of edited messages, oldest first.
CREATE TABLE message_edits (
    message_id UUID NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    body       TEXT NOT NULL,
    replaced_at BIGINT NOT NULL
);
CREATE INDEX message_edits_by_message ON message_edits(message_id);

-- One of each emoji per user per message.
CREATE TABLE message_reactions (
    message_id UUID NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    user_id    UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    emoji      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (message_id, user_id, emoji)
);

-- Messages a user deleted for itself only.
CREATE TABLE message_hidden (
    message_id UUID NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    user_id    UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    PRIMARY KEY (message_id, user_id)
);

-- Everything a user receives, numbered per user without gaps, so any device can
-- ask for exactly what it missed.
CREATE TABLE user_events (
    user_id         UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    seq             BIGINT NOT NULL CHECK (seq > 0),
    kind            TEXT NOT NULL,
    conversation_id UUID,
    message_id      UUID,
    body            TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (user_id, seq)
);
CREATE INDEX user_events_by_message ON user_events(message_id) WHERE message_id IS NOT NULL;

-- Connected devices per user and gate; a user is online while any count is > 0.
-- Each gate resets its own rows when it starts, so a crashed gate leaves nobody online.
CREATE TABLE user_presence (
    user_id    UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    gate_id    TEXT NOT NULL,
    devices    BIGINT NOT NULL CHECK (devices >= 0),
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, gate_id)
);
