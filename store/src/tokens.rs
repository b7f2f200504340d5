//! Sign-in sessions and their refresh tokens (kept only as hashes).
//!
//! A session is one login. Its refresh tokens form a chain: each is used once and
//! replaced by the next, so exactly one is live at a time. Presenting a used token
//! again is theft or a lost response: within the grace window, and while its
//! replacement has not been used, it is a retry and gets a fresh replacement (the
//! unseen one stops working); otherwise the whole session is revoked.

use parley_wire::UserId;
use sqlx::Row;
use uuid::Uuid;

use crate::backend::on_pool;
use crate::{time_from_ms, Store, StoreError};

/// A new session and its first refresh token.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: Uuid,
    pub user: UserId,
    pub token_hash: Vec<u8>,
    pub now_ms: i64,
    /// When the first token stops working unless used.
    pub token_expires_at_ms: i64,
    /// The session's absolute end; no rotation extends it.
    pub expires_at_ms: i64,
    pub user_agent: Option<String>,
    pub client_addr: Option<String>,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The new token replaced the presented one.
    Rotated { user: UserId, session: Uuid },
    /// Unknown, expired, or its session ended: nothing changed.
    Refused,
    /// A used token came back outside the grace window: the session is revoked now.
    Reused { user: UserId, session: Uuid },
}

/// A session as its owner sees it in the list of signed-in devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: Uuid,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub last_used_at: chrono::DateTime<chrono::Utc>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub user_agent: Option<String>,
    pub client_addr: Option<String>,
}

impl Store {
    /// Opens a session with its first refresh token.
    #[tracing::instrument(skip_all)]
    pub async fn create_session(&self, new: &NewSession) -> Result<(), StoreError> {
        let session = "INSERT INTO auth_sessions (id, user_id, created_at, expires_at, last_used_at, user_agent, \
                       client_addr) VALUES ($1, $2, $3, $4, $3, $5, $6)";
        let token = "INSERT INTO refresh_tokens (id, user_id, token_hash, created_at, expires_at, session_id) \
                     VALUES ($1, $2, $3, $4, $5, $6)";
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(session)
                .bind(new.id)
                .bind(new.user.0)
                .bind(new.now_ms)
                .bind(new.expires_at_ms)
                .bind(&new.user_agent)
                .bind(&new.client_addr)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::classify(e, &[]))?;
            sqlx::query(token)
                .bind(Uuid::now_v7())
                .bind(new.user.0)
                .bind(&new.token_hash)
                .bind(new.now_ms)
                .bind(new.token_expires_at_ms.min(new.expires_at_ms))
                .bind(new.id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Exchanges the token hashed `old_hash` for the one hashed `new_hash` (see the
    /// module comment for retries and reuse).
    #[tracing::instrument(skip_all)]
    pub async fn rotate_refresh_token(
        &self,
        old_hash: &[u8],
        new_hash: &[u8],
        now_ms: i64,
        token_ttl_ms: i64,
        grace_ms: i64,
    ) -> Result<Rotation, StoreError> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            // Touching the session row first takes the write lock (SQLite) or the row lock
            // (PostgreSQL), so rotations of one session never interleave.
            let row = sqlx::query(
                "UPDATE auth_sessions SET last_used_at = $2 \
                 WHERE id = (SELECT session_id FROM refresh_tokens WHERE token_hash = $1) \
                 RETURNING id, user_id, expires_at, revoked_at",
            )
            .bind(old_hash)
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else { return Ok(Rotation::Refused) };
            let session: Uuid = row.try_get("id")?;
            let user = UserId(row.try_get::<Uuid, _>("user_id")?);
            let session_ends: i64 = row.try_get("expires_at")?;
            if row.try_get::<Option<i64>, _>("revoked_at")?.is_some() || session_ends <= now_ms {
                return Ok(Rotation::Refused);
            }
            let state = sqlx::query(
                "SELECT t.id, t.expires_at, t.revoked_at AS used_at, t.replaced_by, n.revoked_at AS next_used_at \
                 FROM refresh_tokens t LEFT JOIN refresh_tokens n ON n.id = t.replaced_by WHERE t.token_hash = $1",
            )
            .bind(old_hash)
            .fetch_one(&mut *tx)
            .await?;
            let token: Uuid = state.try_get("id")?;
            let used_at: Option<i64> = state.try_get("used_at")?;
            let replaced_by: Option<Uuid> = state.try_get("replaced_by")?;
            let next_used: Option<i64> = state.try_get("next_used_at")?;
            match used_at {
                None if state.try_get::<i64, _>("expires_at")? <= now_ms => return Ok(Rotation::Refused),
                None => {}
                // Only a token that was exchanged (not one retired unseen by a retry) may be retried.
                Some(used) if now_ms - used <= grace_ms && replaced_by.is_some() && next_used.is_none() => {
                    // A retry of a response that was lost: the replacement it never saw is retired.
                    if let Some(unseen) = replaced_by {
                        sqlx::query("UPDATE refresh_tokens SET revoked_at = $2 WHERE id = $1")
                            .bind(unseen)
                            .bind(now_ms)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                Some(_) => {
                    sqlx::query(
                        "UPDATE auth_sessions SET revoked_at = $2, revoke_reason = 'refresh_token_reused' \
                         WHERE id = $1",
                    )
                    .bind(session)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    return Ok(Rotation::Reused { user, session });
                }
            }
            let next = Uuid::now_v7();
            sqlx::query(
                "INSERT INTO refresh_tokens (id, user_id, token_hash, created_at, expires_at, session_id) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(next)
            .bind(user.0)
            .bind(new_hash)
            .bind(now_ms)
            .bind((now_ms + token_ttl_ms).min(session_ends))
            .bind(session)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE refresh_tokens SET revoked_at = COALESCE(revoked_at, $2), replaced_by = $3 WHERE id = $1",
            )
            .bind(token)
            .bind(now_ms)
            .bind(next)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Rotation::Rotated { user, session })
        })
    }

    /// Whether `session` of `user` is live (not revoked, not past its absolute end).
    #[tracing::instrument(skip_all)]
    pub async fn session_live(&self, user: UserId, session: Uuid, now_ms: i64) -> Result<bool, StoreError> {
        let sql = "SELECT 1 FROM auth_sessions WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL \
                   AND expires_at > $3";
        on_pool!(self, |pool| {
            let row = sqlx::query(sql).bind(session).bind(user.0).bind(now_ms).fetch_optional(pool).await?;
            Ok(row.is_some())
        })
    }

    /// Revokes `user`'s live sessions: the one given, or all of them (optionally
    /// sparing one). Returns the ids revoked.
    #[tracing::instrument(skip_all)]
    pub async fn revoke_sessions(
        &self,
        user: UserId,
        which: Option<Uuid>,
        except: Option<Uuid>,
        reason: &str,
        now_ms: i64,
    ) -> Result<Vec<Uuid>, StoreError> {
        let sql = "UPDATE auth_sessions SET revoked_at = $2, revoke_reason = $3 \
                   WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 AND ($4 IS NULL OR id = $4) \
                   AND ($5 IS NULL OR id <> $5) RETURNING id";
        on_pool!(self, |pool| {
            let rows = sqlx::query(sql)
                .bind(user.0)
                .bind(now_ms)
                .bind(reason)
                .bind(which)
                .bind(except)
                .fetch_all(pool)
                .await?;
            rows.iter().map(|r| r.try_get::<Uuid, _>("id").map_err(StoreError::from)).collect()
        })
    }

    /// `user`'s live sessions, newest first.
    #[tracing::instrument(skip_all)]
    pub async fn sessions_of(&self, user: UserId, now_ms: i64) -> Result<Vec<SessionRecord>, StoreError> {
        let sql = "SELECT id, created_at, last_used_at, expires_at, user_agent, client_addr FROM auth_sessions \
                   WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 ORDER BY created_at DESC";
        on_pool!(self, |pool| {
            let rows = sqlx::query(sql).bind(user.0).bind(now_ms).fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(SessionRecord {
                    id: row.try_get("id")?,
                    created_at: time_from_ms(row.try_get("created_at")?),
                    last_used_at: time_from_ms(row.try_get("last_used_at")?),
                    expires_at: time_from_ms(row.try_get("expires_at")?),
                    user_agent: row.try_get("user_agent")?,
                    client_addr: row.try_get("client_addr")?,
                });
            }
            Ok(out)
        })
    }

    /// Deletes refresh tokens that expired before `cutoff_ms` and sessions that ended
    /// before it (with their tokens); returns how many tokens went. Used tokens of a
    /// live session stay until they expire, so a replay is still recognised as reuse.
    #[tracing::instrument(skip_all)]
    pub async fn delete_stale_refresh_tokens(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        let tokens = "DELETE FROM refresh_tokens WHERE expires_at < $1 OR session_id IS NULL";
        let sessions = "DELETE FROM auth_sessions WHERE expires_at < $1 OR revoked_at < $1";
        on_pool!(self, |pool| {
            let done = sqlx::query(tokens).bind(cutoff_ms).execute(pool).await?;
            sqlx::query(sessions).bind(cutoff_ms).execute(pool).await?;
            Ok(done.rows_affected())
        })
    }
}
