-- Accounts, refresh tokens, 1:1 conversations and their messages.
-- Times are milliseconds since the Unix epoch (UTC) in both backends.

CREATE TABLE users (
    id            BLOB PRIMARY KEY NOT NULL,
    username      TEXT UNIQUE,
    email         TEXT UNIQUE,
    phone         TEXT UNIQUE,
    display_name  TEXT,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    CHECK (username IS NOT NULL OR email IS NOT NULL OR phone IS NOT NULL)
);

CREATE TABLE refresh_tokens (
    id          BLOB PRIMARY KEY NOT NULL,
    user_id     BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash  BLOB NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX refresh_tokens_by_user ON refresh_tokens(user_id);

CREATE TABLE conversations (
    id              BLOB PRIMARY KEY NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('direct')),
    direct_key      TEXT UNIQUE,
    last_seq        INTEGER NOT NULL DEFAULT 0,
    last_message_at INTEGER,
    created_at      INTEGER NOT NULL,
    CHECK (kind <> 'direct' OR direct_key IS NOT NULL)
);

CREATE TABLE conversation_members (
    conversation_id BLOB NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    user_id         BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    joined_at       INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX conversation_members_by_user ON conversation_members(user_id);

CREATE TABLE messages (
    id              BLOB PRIMARY KEY NOT NULL,
    conversation_id BLOB NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL CHECK (seq > 0),
    sender_id       BLOB NOT NULL REFERENCES users(id),
    client_id       TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    UNIQUE (conversation_id, seq),
    UNIQUE (sender_id, client_id)
);
