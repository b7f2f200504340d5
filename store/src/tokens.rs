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
    /// The first refresh token; `None` for a device's sign-in, which is renewed with
    /// the device's secret instead.
    pub token_hash: Option<Vec<u8>>,
    /// For an institution's sign-in: the member acting for it, and the member's own
    /// sign-in it was opened from (ending that one ends this one).
    pub acting: Option<(UserId, Uuid)>,
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
    /// The new token replaced the presented one (`actor`: the member acting for an institution).
    Rotated { user: UserId, session: Uuid, actor: Option<UserId> },
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

/// Inserts a [`NewSession`] (and its first refresh token, if any) with `$conn`.
macro_rules! insert_session {
    ($conn:expr, $new:expr) => {{
        let new: &NewSession = $new;
        sqlx::query(
            "INSERT INTO auth_sessions (id, user_id, created_at, expires_at, last_used_at, user_agent, client_addr, \
             actor_id, parent_id) VALUES ($1, $2, $3, $4, $3, $5, $6, $7, $8)",
        )
        .bind(new.id)
        .bind(new.user.0)
        .bind(new.now_ms)
        .bind(new.expires_at_ms)
        .bind(&new.user_agent)
        .bind(&new.client_addr)
        .bind(new.acting.map(|(actor, _)| actor.0))
        .bind(new.acting.map(|(_, parent)| parent))
        .execute($conn)
        .await
        .map_err(|e| StoreError::classify(e, &[]))?;
        if let Some(hash) = &new.token_hash {
            sqlx::query(
                "INSERT INTO refresh_tokens (id, user_id, token_hash, created_at, expires_at, session_id) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(Uuid::now_v7())
            .bind(new.user.0)
            .bind(hash)
            .bind(new.now_ms)
            .bind(new.token_expires_at_ms.min(new.expires_at_ms))
            .bind(new.id)
            .execute($conn)
            .await?;
        }
    }};
}
pub(crate) use insert_session;

impl Store {
    /// Opens a session with its first refresh token.
    #[tracing::instrument(skip_all)]
    pub async fn create_session(&self, new: &NewSession) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            insert_session!(&mut *tx, new);
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
                 RETURNING id, user_id, actor_id, expires_at, revoked_at",
            )
            .bind(old_hash)
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else { return Ok(Rotation::Refused) };
            let session: Uuid = row.try_get("id")?;
            let user = UserId(row.try_get::<Uuid, _>("user_id")?);
            let actor = row.try_get::<Option<Uuid>, _>("actor_id")?.map(UserId);
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
            Ok(Rotation::Rotated { user, session, actor })
        })
    }

    /// Whether `session` of `user` is live (not revoked, not past its absolute end).
    #[tracing::instrument(skip_all)]
    pub async fn session_live(&self, user: UserId, session: Uuid, now_ms: i64) -> Result<bool, StoreError> {
        Ok(self.session_end(user, session, now_ms).await?.is_some())
    }

    /// When `session` of `user` ends (ms), if it is live.
    #[tracing::instrument(skip_all)]
    pub async fn session_end(&self, user: UserId, session: Uuid, now_ms: i64) -> Result<Option<i64>, StoreError> {
        let sql = "SELECT expires_at FROM auth_sessions WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL \
                   AND expires_at > $3";
        on_pool!(self, |pool| {
            let row = sqlx::query(sql).bind(session).bind(user.0).bind(now_ms).fetch_optional(pool).await?;
            Ok(row.map(|r| r.try_get("expires_at")).transpose()?)
        })
    }

    /// Revokes `user`'s live sessions: the one given, or all of them (optionally
    /// sparing one), with the institution sign-ins opened from them. Returns the
    /// (owner, id) of each sign-in revoked.
    #[tracing::instrument(skip_all)]
    pub async fn revoke_sessions(
        &self,
        user: UserId,
        which: Option<Uuid>,
        except: Option<Uuid>,
        reason: &str,
        now_ms: i64,
    ) -> Result<Vec<(UserId, Uuid)>, StoreError> {
        let sql = "UPDATE auth_sessions SET revoked_at = $2, revoke_reason = $3 \
                   WHERE revoked_at IS NULL AND expires_at > $2 AND (id IN (SELECT id FROM targets) \
                   OR parent_id IN (SELECT id FROM targets)) RETURNING user_id, id";
        let sql = format!(
            "WITH targets AS (SELECT id FROM auth_sessions WHERE user_id = $1 AND ($4 IS NULL OR id = $4) \
             AND ($5 IS NULL OR id <> $5)) {sql}"
        );
        on_pool!(self, |pool| {
            let rows = sqlx::query(&sql)
                .bind(user.0)
                .bind(now_ms)
                .bind(reason)
                .bind(which)
                .bind(except)
                .fetch_all(pool)
                .await?;
            rows.iter().map(|r| Ok((UserId(r.try_get::<Uuid, _>("user_id")?), r.try_get::<Uuid, _>("id")?))).collect()
        })
    }

    /// Revokes the live sign-ins `actor` opened to act for `institution` (it left or
    /// was removed). Returns their ids.
    #[tracing::instrument(skip_all)]
    pub async fn revoke_acting_sessions(
        &self,
        institution: UserId,
        actor: UserId,
        reason: &str,
        now_ms: i64,
    ) -> Result<Vec<Uuid>, StoreError> {
        let sql = "UPDATE auth_sessions SET revoked_at = $3, revoke_reason = $4 \
                   WHERE user_id = $1 AND actor_id = $2 AND revoked_at IS NULL AND expires_at > $3 RETURNING id";
        on_pool!(self, |pool| {
            let rows =
                sqlx::query(sql).bind(institution.0).bind(actor.0).bind(now_ms).bind(reason).fetch_all(pool).await?;
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
