//! One-time codes (hashed, newest only, counted attempts) and the records that
//! throttle them and password logins.

use parley_wire::UserId;
use sqlx::Row;
use uuid::Uuid;

use crate::backend::on_pool;
use crate::{Store, StoreError};

/// A code to record. The caller hashes it (with `id` as salt) before it gets here.
#[derive(Debug, Clone)]
pub struct NewCode {
    pub id: Uuid,
    /// `verify_email`, `verify_phone` or `reset_password`.
    pub purpose: &'static str,
    /// The normalised email or phone it goes to.
    pub identifier: String,
    /// `None` for an identifier of no account (the code can never be redeemed).
    pub user: Option<UserId>,
    pub code_hash: Vec<u8>,
    pub client_addr: Option<String>,
    pub now_ms: i64,
    pub expires_at_ms: i64,
}

/// How often codes may be sent.
#[derive(Debug, Clone, Copy)]
pub struct SendLimits {
    /// Least time between two codes to one identifier.
    pub min_interval_ms: i64,
    /// Most codes to one identifier per hour.
    pub per_identifier_per_hour: i64,
    /// Most codes requested from one client address per hour.
    pub per_address_per_hour: i64,
}

/// Whether a code was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issue {
    Issued,
    /// Too soon or too many; try again after this long.
    Throttled {
        retry_after_ms: i64,
    },
}

/// The live code of an identifier, after one attempt was counted against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub id: Uuid,
    pub user: Option<UserId>,
    pub code_hash: Vec<u8>,
}

const HOUR_MS: i64 = 3_600_000;

impl Store {
    /// Records a code, making it the only live one for (purpose, identifier), unless
    /// the identifier or the address asked too often.
    #[tracing::instrument(skip_all)]
    pub async fn issue_code(&self, code: &NewCode, limits: SendLimits) -> Result<Issue, StoreError> {
        let hour_ago = code.now_ms - HOUR_MS;
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            // Writing first takes SQLite's write lock before anything is read.
            sqlx::query(
                "UPDATE one_time_codes SET consumed_at = $3 \
                 WHERE purpose = $1 AND identifier = $2 AND consumed_at IS NULL",
            )
            .bind(code.purpose)
            .bind(&code.identifier)
            .bind(code.now_ms)
            .execute(&mut *tx)
            .await?;
            let row = sqlx::query(
                "SELECT COUNT(*) AS n, MIN(created_at) AS oldest, MAX(created_at) AS newest \
                 FROM one_time_codes WHERE identifier = $1 AND created_at > $2",
            )
            .bind(&code.identifier)
            .bind(hour_ago)
            .fetch_one(&mut *tx)
            .await?;
            let sent: i64 = row.try_get("n")?;
            if let Some(newest) = row.try_get::<Option<i64>, _>("newest")? {
                let wait = newest + limits.min_interval_ms - code.now_ms;
                if wait > 0 {
                    return Ok(Issue::Throttled { retry_after_ms: wait });
                }
            }
            if sent >= limits.per_identifier_per_hour {
                let oldest: i64 = row.try_get::<Option<i64>, _>("oldest")?.unwrap_or(code.now_ms);
                return Ok(Issue::Throttled { retry_after_ms: (oldest + HOUR_MS - code.now_ms).max(1) });
            }
            if let Some(addr) = &code.client_addr {
                let row = sqlx::query(
                    "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM one_time_codes \
                     WHERE client_addr = $1 AND created_at > $2",
                )
                .bind(addr)
                .bind(hour_ago)
                .fetch_one(&mut *tx)
                .await?;
                if row.try_get::<i64, _>("n")? >= limits.per_address_per_hour {
                    let oldest: i64 = row.try_get::<Option<i64>, _>("oldest")?.unwrap_or(code.now_ms);
                    return Ok(Issue::Throttled { retry_after_ms: (oldest + HOUR_MS - code.now_ms).max(1) });
                }
            }
            sqlx::query(
                "INSERT INTO one_time_codes (id, purpose, identifier, user_id, code_hash, client_addr, created_at, \
                 expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(code.id)
            .bind(code.purpose)
            .bind(&code.identifier)
            .bind(code.user.map(|u| u.0))
            .bind(&code.code_hash)
            .bind(&code.client_addr)
            .bind(code.now_ms)
            .bind(code.expires_at_ms)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Issue::Issued)
        })
    }

    /// Counts one attempt against the live code of (purpose, identifier) and returns
    /// it, or `None` when there is none (never sent, expired, used, superseded, or
    /// out of attempts). Counting before comparing means parallel guesses cannot
    /// exceed `max_attempts`.
    #[tracing::instrument(skip_all)]
    pub async fn attempt_code(
        &self,
        purpose: &str,
        identifier: &str,
        now_ms: i64,
        max_attempts: i64,
    ) -> Result<Option<Attempt>, StoreError> {
        let sql = "UPDATE one_time_codes SET attempts = attempts + 1 \
                   WHERE purpose = $1 AND identifier = $2 AND consumed_at IS NULL AND expires_at > $3 \
                   AND attempts < $4 RETURNING id, user_id, code_hash";
        on_pool!(self, |pool| {
            let row = sqlx::query(sql)
                .bind(purpose)
                .bind(identifier)
                .bind(now_ms)
                .bind(max_attempts)
                .fetch_optional(pool)
                .await?;
            Ok(match row {
                Some(row) => Some(Attempt {
                    id: row.try_get("id")?,
                    user: row.try_get::<Option<Uuid>, _>("user_id")?.map(UserId),
                    code_hash: row.try_get("code_hash")?,
                }),
                None => None,
            })
        })
    }

    /// Uses up a code that matched; false if it was used meanwhile.
    #[tracing::instrument(skip_all)]
    pub async fn consume_code(&self, id: Uuid, now_ms: i64) -> Result<bool, StoreError> {
        let sql = "UPDATE one_time_codes SET consumed_at = $2 WHERE id = $1 AND consumed_at IS NULL";
        on_pool!(self, |pool| {
            let done = sqlx::query(sql).bind(id).bind(now_ms).execute(pool).await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Failed logins since `since_ms`: (for this account key, from this address).
    #[tracing::instrument(skip_all)]
    pub async fn login_failures(&self, account_key: &str, addr: &str, since_ms: i64) -> Result<(i64, i64), StoreError> {
        let sql = "SELECT (SELECT COUNT(*) FROM login_failures WHERE account_key = $1 AND at > $3) AS account, \
                          (SELECT COUNT(*) FROM login_failures WHERE client_addr = $2 AND at > $3) AS addr";
        on_pool!(self, |pool| {
            let row = sqlx::query(sql).bind(account_key).bind(addr).bind(since_ms).fetch_one(pool).await?;
            Ok((row.try_get("account")?, row.try_get("addr")?))
        })
    }

    /// Records a failed login.
    #[tracing::instrument(skip_all)]
    pub async fn record_login_failure(&self, account_key: &str, addr: &str, now_ms: i64) -> Result<(), StoreError> {
        let sql = "INSERT INTO login_failures (account_key, client_addr, at) VALUES ($1, $2, $3)";
        on_pool!(self, |pool| {
            sqlx::query(sql).bind(account_key).bind(addr).bind(now_ms).execute(pool).await?;
        });
        Ok(())
    }

    /// Forgets an account's failed logins (after it logged in or reset its password).
    #[tracing::instrument(skip_all)]
    pub async fn clear_login_failures(&self, account_key: &str) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query("DELETE FROM login_failures WHERE account_key = $1").bind(account_key).execute(pool).await?;
        });
        Ok(())
    }

    /// Deletes codes and failed-login records older than `cutoff_ms`.
    #[tracing::instrument(skip_all)]
    pub async fn delete_stale_auth_records(&self, cutoff_ms: i64) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query("DELETE FROM one_time_codes WHERE created_at < $1").bind(cutoff_ms).execute(pool).await?;
            sqlx::query("DELETE FROM login_failures WHERE at < $1").bind(cutoff_ms).execute(pool).await?;
        });
        Ok(())
    }
}
