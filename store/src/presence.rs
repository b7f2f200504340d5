//! Presence: devices connected per user and gate, "away", and last seen.

use parley_wire::{Availability, Role, UserId};
use sqlx::{QueryBuilder, Row};
use uuid::Uuid;

use crate::backend::on_pool;
use crate::{time_from_ms, Store, StoreError};

/// A user's presence as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRecord {
    pub user_id: UserId,
    /// Some device is connected (through any gate).
    pub online: bool,
    pub away: bool,
    pub last_seen_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The account's role, so the domain can tell whose availability to show.
    pub role: Role,
    /// What a provider or institution said about taking new conversations.
    pub availability: Option<Availability>,
}

const TOTAL: &str = "SELECT CAST(COALESCE(SUM(devices), 0) AS BIGINT) AS n FROM user_presence WHERE user_id = $1";

impl Store {
    /// Records that `gate` holds `devices` connections of `user`, as of the gate's
    /// report `seq` (a report older than the one stored changes nothing); returns
    /// whether the user was online before and is online now. Going offline stamps
    /// `last_seen_at` (`now_ms`) and clears "away".
    #[tracing::instrument(skip_all)]
    pub async fn set_gate_presence(
        &self,
        user: UserId,
        gate: &str,
        devices: i64,
        seq: i64,
        now_ms: i64,
    ) -> Result<(bool, bool), StoreError> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let before: i64 = sqlx::query(TOTAL).bind(user.0).fetch_one(&mut *tx).await?.try_get("n")?;
            sqlx::query(
                "INSERT INTO user_presence (user_id, gate_id, devices, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (user_id, gate_id) DO UPDATE SET devices = $3, updated_at = $4 \
                 WHERE user_presence.updated_at <= $4",
            )
            .bind(user.0)
            .bind(gate)
            .bind(devices.max(0))
            .bind(seq)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::classify(e, &[]))?;
            let after: i64 = sqlx::query(TOTAL).bind(user.0).fetch_one(&mut *tx).await?.try_get("n")?;
            if before > 0 && after == 0 {
                sqlx::query("UPDATE users SET last_seen_at = $2, away = FALSE WHERE id = $1")
                    .bind(user.0)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok((before > 0, after > 0))
        })
    }

    /// Forgets every connection `gate` reported before its report `seq` (it restarted
    /// or stopped): the rows stay at zero devices, so a late older report cannot bring
    /// a connection back. Returns the users this left with no connected device, who
    /// are stamped last seen now.
    #[tracing::instrument(skip_all)]
    pub async fn reset_gate_presence(&self, gate: &str, seq: i64, now_ms: i64) -> Result<Vec<UserId>, StoreError> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let mut affected = Vec::new();
            for row in sqlx::query(
                "SELECT user_id FROM user_presence WHERE gate_id = $1 AND devices > 0 AND updated_at <= $2 \
                     ORDER BY user_id",
            )
            .bind(gate)
            .bind(seq)
            .fetch_all(&mut *tx)
            .await?
            {
                affected.push(UserId(row.try_get::<Uuid, _>("user_id")?));
            }
            sqlx::query(
                "UPDATE user_presence SET devices = 0, updated_at = $2 WHERE gate_id = $1 AND updated_at <= $2",
            )
            .bind(gate)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
            let mut offline = Vec::new();
            for user in affected {
                let n: i64 = sqlx::query(TOTAL).bind(user.0).fetch_one(&mut *tx).await?.try_get("n")?;
                if n == 0 {
                    sqlx::query("UPDATE users SET last_seen_at = $2, away = FALSE WHERE id = $1")
                        .bind(user.0)
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await?;
                    offline.push(user);
                }
            }
            tx.commit().await?;
            Ok(offline)
        })
    }

    /// Sets the app's "away" flag.
    #[tracing::instrument(skip_all)]
    pub async fn set_away(&self, user: UserId, away: bool) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query("UPDATE users SET away = $2 WHERE id = $1").bind(user.0).bind(away).execute(pool).await?;
            Ok(())
        })
    }

    /// The presence of each of `users` that exists.
    #[tracing::instrument(skip_all)]
    pub async fn presence_of(&self, users: &[UserId]) -> Result<Vec<PresenceRecord>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        on_pool!(self, |pool| {
            let mut query = QueryBuilder::new(
                "SELECT u.id, u.away, u.last_seen_at, u.role, u.availability, \
                        (SELECT CAST(COALESCE(SUM(p.devices), 0) AS BIGINT) FROM user_presence p WHERE p.user_id = u.id) AS devices \
                 FROM users u WHERE u.id IN (",
            );
            let mut ids = query.separated(", ");
            for u in users {
                ids.push_bind(u.0);
            }
            query.push(")");
            let mut out = Vec::new();
            for row in query.build().fetch_all(pool).await? {
                out.push(PresenceRecord {
                    user_id: UserId(row.try_get::<Uuid, _>("id")?),
                    online: row.try_get::<i64, _>("devices")? > 0,
                    away: row.try_get("away")?,
                    last_seen_at: row.try_get::<Option<i64>, _>("last_seen_at")?.map(time_from_ms),
                    role: row.try_get::<String, _>("role")?.parse().map_err(|_| StoreError::Corrupt("users.role"))?,
                    availability: match row.try_get::<Option<String>, _>("availability")? {
                        Some(a) => Some(a.parse().map_err(|_| StoreError::Corrupt("users.availability"))?),
                        None => None,
                    },
                });
            }
            Ok(out)
        })
    }

    /// Everyone who shares a conversation with `user`, and `user`'s contacts.
    #[tracing::instrument(skip_all)]
    pub async fn partners_of(&self, user: UserId) -> Result<Vec<UserId>, StoreError> {
        on_pool!(self, |pool| {
            let rows = sqlx::query(
                "SELECT other.user_id FROM conversation_members mine \
                 JOIN conversation_members other ON other.conversation_id = mine.conversation_id \
                 WHERE mine.user_id = $1 AND other.user_id <> $1 \
                 UNION SELECT contact_id FROM contacts WHERE user_id = $1",
            )
            .bind(user.0)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(UserId(row.try_get::<Uuid, _>("user_id")?));
            }
            Ok(out)
        })
    }
}
