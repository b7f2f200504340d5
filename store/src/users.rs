//! Accounts. Identifiers arrive already normalised by the domain (lower-case
//! username and email, phone in E.164), so equality here is plain equality.

use parley_wire::UserId;
use sqlx::Row;
use uuid::Uuid;

use crate::backend::on_pool;
use crate::{time_from_ms, Store, StoreError};

/// A new account to insert.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: UserId,
    pub username: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub display_name: Option<String>,
    pub password_hash: String,
    pub created_at_ms: i64,
}

/// An account as stored. `password_hash` never leaves the domain layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: UserId,
    pub username: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub display_name: Option<String>,
    pub password_hash: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

const USER_COLUMNS: &str = "id, username, email, phone, display_name, password_hash, created_at";

macro_rules! user_from_row {
    ($row:expr) => {
        UserRecord {
            id: UserId($row.try_get::<Uuid, _>("id")?),
            username: $row.try_get("username")?,
            email: $row.try_get("email")?,
            phone: $row.try_get("phone")?,
            display_name: $row.try_get("display_name")?,
            password_hash: $row.try_get("password_hash")?,
            created_at: time_from_ms($row.try_get("created_at")?),
        }
    };
}

impl Store {
    /// Inserts an account; a taken username, email or phone is `StoreError::Conflict(field)`.
    #[tracing::instrument(skip_all)]
    pub async fn insert_user(&self, user: &NewUser) -> Result<UserRecord, StoreError> {
        let sql = "INSERT INTO users (id, username, email, phone, display_name, password_hash, created_at) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7)";
        on_pool!(self, |pool| {
            sqlx::query(sql)
                .bind(user.id.0)
                .bind(&user.username)
                .bind(&user.email)
                .bind(&user.phone)
                .bind(&user.display_name)
                .bind(&user.password_hash)
                .bind(user.created_at_ms)
                .execute(pool)
                .await
                .map_err(|e| StoreError::classify(e, &["username", "email", "phone"]))?;
        });
        Ok(UserRecord {
            id: user.id,
            username: user.username.clone(),
            email: user.email.clone(),
            phone: user.phone.clone(),
            display_name: user.display_name.clone(),
            password_hash: user.password_hash.clone(),
            created_at: time_from_ms(user.created_at_ms),
        })
    }

    /// The account whose username, email or phone equals `login`.
    #[tracing::instrument(skip_all)]
    pub async fn find_user_by_login(&self, login: &str) -> Result<Option<UserRecord>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE username = $1 OR email = $1 OR phone = $1 LIMIT 1");
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql).bind(login).fetch_optional(pool).await?;
            Ok(match row {
                Some(row) => Some(user_from_row!(row)),
                None => None,
            })
        })
    }

    /// The account with this id.
    #[tracing::instrument(skip_all)]
    pub async fn get_user(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        on_pool!(self, |pool| {
            let row = sqlx::query(&sql).bind(id.0).fetch_optional(pool).await?;
            Ok(match row {
                Some(row) => Some(user_from_row!(row)),
                None => None,
            })
        })
    }

    /// Whether an account with this id exists.
    #[tracing::instrument(skip_all)]
    pub async fn user_exists(&self, id: UserId) -> Result<bool, StoreError> {
        on_pool!(self, |pool| {
            let row = sqlx::query("SELECT 1 FROM users WHERE id = $1").bind(id.0).fetch_optional(pool).await?;
            Ok(row.is_some())
        })
    }
}
