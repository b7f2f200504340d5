//! Kiosk devices: a `device` account, the hash of its long-lived secret, the rights
//! it was given, and its current sign-in. Renewing the secret or the rights replaces
//! the sign-in (ending the old one); retiring the device ends it for good.

use parley_wire::UserId;
use sqlx::Row;
use uuid::Uuid;

use crate::backend::on_pool;
use crate::tokens::insert_session;
use crate::{time_from_ms, NewSession, NewUser, Store, StoreError};

type Time = chrono::DateTime<chrono::Utc>;

/// A device to provision: its account, who it serves, and its first sign-in.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub account: NewUser,
    pub institution: Option<UserId>,
    pub created_by: UserId,
    pub label: String,
    pub rights: String,
    pub secret_hash: Vec<u8>,
    pub session: NewSession,
}

/// A device as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub id: UserId,
    pub institution: Option<UserId>,
    pub created_by: Option<UserId>,
    pub label: String,
    pub rights: String,
    pub secret_hash: Vec<u8>,
    /// The sign-in its tokens belong to.
    pub session: Option<Uuid>,
    pub created_at: Time,
    pub secret_set_at: Time,
    pub last_used_at: Option<Time>,
    pub revoked_at: Option<Time>,
}

/// A change to a live device: a new secret and/or new rights, with the sign-in that
/// replaces its current one.
#[derive(Debug, Clone)]
pub struct DeviceRenewal {
    pub secret_hash: Option<Vec<u8>>,
    pub rights: Option<String>,
    pub session: NewSession,
}

/// Ends a device's sign-in ($1) at $2 for reason $3.
const END_SESSION: &str =
    "UPDATE auth_sessions SET revoked_at = $2, revoke_reason = $3 WHERE id = $1 AND revoked_at IS NULL";

const DEVICE_COLUMNS: &str = "user_id, institution_id, created_by, label, rights, secret_hash, session_id, \
     created_at, secret_set_at, last_used_at, revoked_at";

macro_rules! device_from_row {
    ($row:expr) => {
        DeviceRecord {
            id: UserId($row.try_get::<Uuid, _>("user_id")?),
            institution: $row.try_get::<Option<Uuid>, _>("institution_id")?.map(UserId),
            created_by: $row.try_get::<Option<Uuid>, _>("created_by")?.map(UserId),
            label: $row.try_get("label")?,
            rights: $row.try_get("rights")?,
            secret_hash: $row.try_get("secret_hash")?,
            session: $row.try_get("session_id")?,
            created_at: time_from_ms($row.try_get("created_at")?),
            secret_set_at: time_from_ms($row.try_get("secret_set_at")?),
            last_used_at: $row.try_get::<Option<i64>, _>("last_used_at")?.map(time_from_ms),
            revoked_at: $row.try_get::<Option<i64>, _>("revoked_at")?.map(time_from_ms),
        }
    };
}

impl Store {
    /// Creates the device's account (role `device`), its sign-in and its record, at once.
    #[tracing::instrument(skip_all)]
    pub async fn create_device(&self, new: &NewDevice) -> Result<(), StoreError> {
        let user = "INSERT INTO users (id, username, display_name, password_hash, role, created_at) \
                    VALUES ($1, $2, $3, $4, 'device', $5)";
        let device = "INSERT INTO devices (user_id, institution_id, created_by, label, rights, secret_hash, \
                      session_id, created_at, secret_set_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)";
        let account = &new.account;
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(user)
                .bind(account.id.0)
                .bind(&account.username)
                .bind(&account.display_name)
                .bind(&account.password_hash)
                .bind(account.created_at_ms)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::classify(e, &["username"]))?;
            insert_session!(&mut *tx, &new.session);
            sqlx::query(device)
                .bind(account.id.0)
                .bind(new.institution.map(|i| i.0))
                .bind(new.created_by.0)
                .bind(&new.label)
                .bind(&new.rights)
                .bind(&new.secret_hash)
                .bind(new.session.id)
                .bind(account.created_at_ms)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::classify(e, &[]))?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// The device whose account is `id`.
    #[tracing::instrument(skip_all)]
    pub async fn device(&self, id: UserId) -> Result<Option<DeviceRecord>, StoreError> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE user_id = $1");
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql).bind(id.0).fetch_optional(pool).await?;
            Ok(match row {
                Some(row) => Some(device_from_row!(row)),
                None => None,
            })
        })
    }

    /// Devices serving `institution` (or, with `None`, every device), oldest first.
    #[tracing::instrument(skip_all)]
    pub async fn devices(&self, institution: Option<UserId>) -> Result<Vec<DeviceRecord>, StoreError> {
        let sql = format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE ($1 IS NULL OR institution_id = $1) ORDER BY created_at, user_id"
        );
        on_pool!(self, |pool| {
            let rows = sqlx::query(&sql).bind(institution.map(|i| i.0)).fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(device_from_row!(row));
            }
            Ok(out)
        })
    }

    /// Notes that the device exchanged its secret for a token.
    #[tracing::instrument(skip_all)]
    pub async fn touch_device(&self, id: UserId, now_ms: i64) -> Result<(), StoreError> {
        on_pool!(self, |pool| {
            sqlx::query("UPDATE devices SET last_used_at = $2 WHERE user_id = $1")
                .bind(id.0)
                .bind(now_ms)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Renames a live device; false if there is none.
    #[tracing::instrument(skip_all)]
    pub async fn set_device_label(&self, id: UserId, label: &str) -> Result<bool, StoreError> {
        let sql = "UPDATE devices SET label = $2 WHERE user_id = $1 AND revoked_at IS NULL";
        let name = "UPDATE users SET display_name = $2 WHERE id = $1";
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(sql).bind(id.0).bind(label).execute(&mut *tx).await?;
            sqlx::query(name).bind(id.0).bind(label).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Gives a live device a new secret and/or new rights under a new sign-in, ending
    /// the old one. Returns the old sign-in's id (`Some(None)` if it had none), or
    /// `None` when there is no live device.
    #[tracing::instrument(skip_all)]
    pub async fn renew_device(
        &self,
        id: UserId,
        renewal: &DeviceRenewal,
        now_ms: i64,
    ) -> Result<Option<Option<Uuid>>, StoreError> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            // Locks the device row first, so renewals of one device never interleave.
            let row = sqlx::query(
                "UPDATE devices SET secret_set_at = secret_set_at WHERE user_id = $1 AND revoked_at IS NULL \
                 RETURNING session_id",
            )
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let old: Option<Uuid> = row.try_get("session_id")?;
            sqlx::query(END_SESSION).bind(old).bind(now_ms).bind("device_renewed").execute(&mut *tx).await?;
            insert_session!(&mut *tx, &renewal.session);
            sqlx::query(
                "UPDATE devices SET session_id = $2, secret_hash = COALESCE($3, secret_hash), \
                 rights = COALESCE($4, rights), secret_set_at = CASE WHEN $3 IS NULL THEN secret_set_at ELSE $5 END \
                 WHERE user_id = $1",
            )
            .bind(id.0)
            .bind(renewal.session.id)
            .bind(&renewal.secret_hash)
            .bind(&renewal.rights)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Some(old))
        })
    }

    /// Retires a device for good and ends its sign-in. Returns the sign-in's id
    /// (`Some(None)` if it had none), or `None` when there was no live device.
    #[tracing::instrument(skip_all)]
    pub async fn retire_device(&self, id: UserId, now_ms: i64) -> Result<Option<Option<Uuid>>, StoreError> {
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let row = sqlx::query(
                "UPDATE devices SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL RETURNING session_id",
            )
            .bind(id.0)
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let session: Option<Uuid> = row.try_get("session_id")?;
            sqlx::query(END_SESSION).bind(session).bind(now_ms).bind("device_retired").execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(Some(session))
        })
    }
}
