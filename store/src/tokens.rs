//! Refresh tokens, kept only as hashes.

use parley_wire::UserId;
use sqlx::Row;
use uuid::Uuid;

use crate::backend::on_pool;
use crate::{Store, StoreError};

impl Store {
    /// Records a refresh token (its hash) for `user`, valid until `expires_at_ms`.
    #[tracing::instrument(skip_all)]
    pub async fn insert_refresh_token(
        &self,
        user: UserId,
        token_hash: &[u8],
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), StoreError> {
        let sql = "INSERT INTO refresh_tokens (id, user_id, token_hash, created_at, expires_at) \
                   VALUES ($1, $2, $3, $4, $5)";
        on_pool!(self, |pool| {
            sqlx::query(sql)
                .bind(Uuid::now_v7())
                .bind(user.0)
                .bind(token_hash)
                .bind(now_ms)
                .bind(expires_at_ms)
                .execute(pool)
                .await
                .map_err(|e| StoreError::classify(e, &["token_hash"]))?;
        });
        Ok(())
    }

    /// Marks the token used and returns its owner, if it was live (known, unrevoked,
    /// unexpired). A token can be taken once: a second call returns `None`.
    #[tracing::instrument(skip_all)]
    pub async fn take_refresh_token(&self, token_hash: &[u8], now_ms: i64) -> Result<Option<UserId>, StoreError> {
        let sql = "UPDATE refresh_tokens SET revoked_at = $2 \
                   WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > $2 \
                   RETURNING user_id";
        on_pool!(self, |pool| {
            let row = sqlx::query(sql).bind(token_hash).bind(now_ms).fetch_optional(pool).await?;
            Ok(match row {
                Some(row) => Some(UserId(row.try_get::<Uuid, _>("user_id")?)),
                None => None,
            })
        })
    }

    /// Deletes tokens that expired or were used before `cutoff_ms`; returns how many.
    #[tracing::instrument(skip_all)]
    pub async fn delete_stale_refresh_tokens(&self, cutoff_ms: i64) -> Result<u64, StoreError> {
        let sql = "DELETE FROM refresh_tokens WHERE expires_at < $1 OR revoked_at < $1";
        on_pool!(self, |pool| {
            let done = sqlx::query(sql).bind(cutoff_ms).execute(pool).await?;
            Ok(done.rows_affected())
        })
    }
}
