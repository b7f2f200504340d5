-- Accounts and identity: roles and profiles, verified identifiers, one-time codes,
-- login throttling, sign-in sessions (refresh-token families) and contacts.

-- Who the account is. `verified_at` is set by an admin (a checked provider or institution);
-- `rating` is computed by the platform. Neither is ever written from a profile update.
ALTER TABLE users ADD COLUMN role TEXT NOT NULL DEFAULT 'user'
    CHECK (role IN ('user', 'provider', 'institution', 'admin', 'device'));
ALTER TABLE users ADD COLUMN verified_at INTEGER;
ALTER TABLE users ADD COLUMN email_verified_at INTEGER;
ALTER TABLE users ADD COLUMN phone_verified_at INTEGER;
ALTER TABLE users ADD COLUMN bio TEXT;
ALTER TABLE users ADD COLUMN specialty TEXT;
ALTER TABLE users ADD COLUMN experience_years INTEGER CHECK (experience_years BETWEEN 0 AND 80);
ALTER TABLE users ADD COLUMN availability TEXT CHECK (availability IN ('available', 'busy', 'unavailable'));
ALTER TABLE users ADD COLUMN rating REAL;
ALTER TABLE users ADD COLUMN rating_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN photo_id BLOB REFERENCES uploads(id) ON DELETE SET NULL;
ALTER TABLE users ADD COLUMN password_changed_at INTEGER;
CREATE INDEX users_by_role ON users(role, specialty);

-- A sign-in: one per login, carried by every refresh token of its rotation chain and by
-- the `sid` claim of its access tokens. Revoking it ends them all.
CREATE TABLE auth_sessions (
    id            BLOB PRIMARY KEY NOT NULL,
    user_id       BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at    INTEGER NOT NULL,
    -- The absolute lifetime: no rotation extends it.
    expires_at    INTEGER NOT NULL,
    last_used_at  INTEGER NOT NULL,
    revoked_at    INTEGER,
    revoke_reason TEXT,
    user_agent    TEXT,
    client_addr   TEXT
);
CREATE INDEX auth_sessions_by_user ON auth_sessions(user_id);

-- Refresh tokens now belong to a session; `revoked_at` (0001) means "used", and
-- `replaced_by` names the token issued in exchange.
ALTER TABLE refresh_tokens ADD COLUMN session_id BLOB REFERENCES auth_sessions(id) ON DELETE CASCADE;
ALTER TABLE refresh_tokens ADD COLUMN replaced_by BLOB;

-- Six-digit codes proving an email or phone (or authorising a password reset).
-- Only a hash is kept; only the newest unconsumed code of (purpose, identifier) is live.
CREATE TABLE one_time_codes (
    id          BLOB PRIMARY KEY NOT NULL,
    purpose     TEXT NOT NULL CHECK (purpose IN ('verify_email', 'verify_phone', 'reset_password')),
    identifier  TEXT NOT NULL,
    -- NULL for identifiers of no account: recorded so throttles behave the same.
    user_id     BLOB REFERENCES users(id) ON DELETE CASCADE,
    code_hash   BLOB NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    client_addr TEXT,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    consumed_at INTEGER
);
CREATE INDEX one_time_codes_by_identifier ON one_time_codes(identifier, created_at);
CREATE INDEX one_time_codes_by_addr ON one_time_codes(client_addr, created_at);

-- Failed logins, counted per account (or per unknown login name) and per client address.
CREATE TABLE login_failures (
    account_key TEXT NOT NULL,
    client_addr TEXT NOT NULL,
    at          INTEGER NOT NULL
);
CREATE INDEX login_failures_by_account ON login_failures(account_key, at);
CREATE INDEX login_failures_by_addr ON login_failures(client_addr, at);

-- Contacts: a pending request from one user to another, and accepted contacts stored
-- once per direction so each side's list is one index range.
CREATE TABLE contact_requests (
    from_id    BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    to_id      BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (from_id, to_id),
    CHECK (from_id <> to_id)
);
CREATE INDEX contact_requests_to ON contact_requests(to_id);

CREATE TABLE contacts (
    user_id    BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    contact_id BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    since      INTEGER NOT NULL,
    PRIMARY KEY (user_id, contact_id),
    CHECK (user_id <> contact_id)
);
