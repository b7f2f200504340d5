//! Accounts. Identifiers arrive already normalised by the domain (lower-case
//! username and email, phone in E.164), so equality here is plain equality.

use parley_wire::{Availability, Role, UserId};
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
    pub role: Role,
    pub created_at_ms: i64,
}

/// An account as stored. `password_hash` never leaves the domain layer.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub id: UserId,
    pub username: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub display_name: Option<String>,
    pub password_hash: String,
    pub role: Role,
    /// Checked by an admin (providers, institutions).
    pub verified_at: Option<Time>,
    pub email_verified_at: Option<Time>,
    pub phone_verified_at: Option<Time>,
    pub profile: Profile,
    /// Mean rating given by users (1–5) and how many gave one; computed, never set by the owner.
    pub rating: Option<f64>,
    pub rating_count: i64,
    pub created_at: Time,
}

type Time = chrono::DateTime<chrono::Utc>;

/// What an account says about itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    pub bio: Option<String>,
    pub specialty: Option<String>,
    pub experience_years: Option<i64>,
    pub availability: Option<Availability>,
    /// An uploaded image.
    pub photo_id: Option<uuid::Uuid>,
}

/// A change to a profile: `None` leaves a field alone, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProfileChange {
    pub display_name: Option<Option<String>>,
    pub bio: Option<Option<String>>,
    pub specialty: Option<Option<String>>,
    pub experience_years: Option<Option<i64>>,
    pub availability: Option<Option<Availability>>,
    pub photo_id: Option<Option<uuid::Uuid>>,
}

/// Who to find in a user search; every given field narrows it.
#[derive(Debug, Clone, Default)]
pub struct UserQuery {
    /// Part of the display name or username (case-insensitive).
    pub name: Option<String>,
    pub role: Option<Role>,
    /// Part of the specialty (case-insensitive).
    pub specialty: Option<String>,
    pub availability: Option<Availability>,
    /// Only accounts after this id (the cursor), in id order.
    pub after: Option<UserId>,
    pub limit: u32,
}

/// Which identifier a one-time code proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifierKind {
    Email,
    Phone,
}

const USER_COLUMNS: &str = "id, username, email, phone, display_name, password_hash, role, verified_at, \
    email_verified_at, phone_verified_at, bio, specialty, experience_years, availability, photo_id, rating, \
    rating_count, created_at";

macro_rules! user_from_row {
    ($row:expr) => {
        UserRecord {
            id: UserId($row.try_get::<Uuid, _>("id")?),
            username: $row.try_get("username")?,
            email: $row.try_get("email")?,
            phone: $row.try_get("phone")?,
            display_name: $row.try_get("display_name")?,
            password_hash: $row.try_get("password_hash")?,
            role: $row.try_get::<String, _>("role")?.parse().map_err(|_| StoreError::Corrupt("users.role"))?,
            verified_at: $row.try_get::<Option<i64>, _>("verified_at")?.map(time_from_ms),
            email_verified_at: $row.try_get::<Option<i64>, _>("email_verified_at")?.map(time_from_ms),
            phone_verified_at: $row.try_get::<Option<i64>, _>("phone_verified_at")?.map(time_from_ms),
            profile: Profile {
                bio: $row.try_get("bio")?,
                specialty: $row.try_get("specialty")?,
                experience_years: $row.try_get("experience_years")?,
                availability: match $row.try_get::<Option<String>, _>("availability")? {
                    Some(a) => Some(a.parse().map_err(|_| StoreError::Corrupt("users.availability"))?),
                    None => None,
                },
                photo_id: $row.try_get("photo_id")?,
            },
            rating: $row.try_get("rating")?,
            rating_count: $row.try_get("rating_count")?,
            created_at: time_from_ms($row.try_get("created_at")?),
        }
    };
}

impl Store {
    /// Inserts an account; a taken username, email or phone is `StoreError::Conflict(field)`.
    #[tracing::instrument(skip_all)]
    pub async fn insert_user(&self, user: &NewUser) -> Result<UserRecord, StoreError> {
        let sql = "INSERT INTO users (id, username, email, phone, display_name, password_hash, role, created_at) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        on_pool!(self, |pool| {
            sqlx::query(sql)
                .bind(user.id.0)
                .bind(&user.username)
                .bind(&user.email)
                .bind(&user.phone)
                .bind(&user.display_name)
                .bind(&user.password_hash)
                .bind(user.role.as_str())
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
            role: user.role,
            verified_at: None,
            email_verified_at: None,
            phone_verified_at: None,
            profile: Profile::default(),
            rating: None,
            rating_count: 0,
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

impl Store {
    /// Applies a profile change; returns the account as it is now (`None`: no such account).
    #[tracing::instrument(skip_all)]
    pub async fn update_profile(&self, id: UserId, change: &ProfileChange) -> Result<Option<UserRecord>, StoreError> {
        let mut sets: Vec<(&str, ProfileValue)> = Vec::new();
        if let Some(v) = &change.display_name {
            sets.push(("display_name", ProfileValue::Text(v.clone())));
        }
        if let Some(v) = &change.bio {
            sets.push(("bio", ProfileValue::Text(v.clone())));
        }
        if let Some(v) = &change.specialty {
            sets.push(("specialty", ProfileValue::Text(v.clone())));
        }
        if let Some(v) = change.experience_years {
            sets.push(("experience_years", ProfileValue::Int(v)));
        }
        if let Some(v) = change.availability {
            sets.push(("availability", ProfileValue::Text(v.map(|a| a.as_str().to_string()))));
        }
        if let Some(v) = change.photo_id {
            sets.push(("photo_id", ProfileValue::Uuid(v)));
        }
        if !sets.is_empty() {
            on_pool!(self, |pool| {
                let mut q = sqlx::QueryBuilder::new("UPDATE users SET ");
                let mut list = q.separated(", ");
                for (column, value) in &sets {
                    list.push(format!("{column} = "));
                    match value {
                        ProfileValue::Text(v) => list.push_bind_unseparated(v.clone()),
                        ProfileValue::Int(v) => list.push_bind_unseparated(*v),
                        ProfileValue::Uuid(v) => list.push_bind_unseparated(*v),
                    };
                }
                q.push(" WHERE id = ").push_bind(id.0);
                q.build().execute(pool).await.map_err(|e| StoreError::classify(e, &[]))?;
            });
        }
        self.get_user(id).await
    }

    /// Replaces the password hash.
    #[tracing::instrument(skip_all)]
    pub async fn set_password_hash(&self, id: UserId, hash: &str, now_ms: i64) -> Result<(), StoreError> {
        let sql = "UPDATE users SET password_hash = $2, password_changed_at = $3 WHERE id = $1";
        on_pool!(self, |pool| {
            sqlx::query(sql).bind(id.0).bind(hash).bind(now_ms).execute(pool).await?;
        });
        Ok(())
    }

    /// Records that the account's email or phone was proven, if it is still `identifier`.
    #[tracing::instrument(skip_all)]
    pub async fn mark_identifier_verified(
        &self,
        id: UserId,
        kind: IdentifierKind,
        identifier: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let sql = match kind {
            IdentifierKind::Email => {
                "UPDATE users SET email_verified_at = COALESCE(email_verified_at, $3) \
                                      WHERE id = $1 AND email = $2"
            }
            IdentifierKind::Phone => {
                "UPDATE users SET phone_verified_at = COALESCE(phone_verified_at, $3) \
                                      WHERE id = $1 AND phone = $2"
            }
        };
        on_pool!(self, |pool| {
            let done = sqlx::query(sql).bind(id.0).bind(identifier).bind(now_ms).execute(pool).await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Sets an account's role and whether it is checked (admin actions).
    #[tracing::instrument(skip_all)]
    pub async fn set_role(&self, id: UserId, role: Role, verified_at_ms: Option<i64>) -> Result<bool, StoreError> {
        let sql = "UPDATE users SET role = $2, verified_at = $3 WHERE id = $1";
        on_pool!(self, |pool| {
            let done = sqlx::query(sql).bind(id.0).bind(role.as_str()).bind(verified_at_ms).execute(pool).await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Accounts matching `query`, in id order after its cursor. Device accounts are never listed.
    #[tracing::instrument(skip_all)]
    pub async fn search_users(&self, query: &UserQuery) -> Result<Vec<UserRecord>, StoreError> {
        on_pool!(self, |pool| {
            let mut q = sqlx::QueryBuilder::new(format!("SELECT {USER_COLUMNS} FROM users WHERE role <> 'device'"));
            if let Some(name) = &query.name {
                let pattern = like_pattern(name);
                q.push(" AND (LOWER(display_name) LIKE ")
                    .push_bind(pattern.clone())
                    .push(" ESCAPE '\\' OR username LIKE ")
                    .push_bind(pattern)
                    .push(" ESCAPE '\\')");
            }
            if let Some(role) = query.role {
                q.push(" AND role = ").push_bind(role.as_str());
            }
            if let Some(specialty) = &query.specialty {
                q.push(" AND LOWER(specialty) LIKE ").push_bind(like_pattern(specialty)).push(" ESCAPE '\\'");
            }
            if let Some(availability) = query.availability {
                q.push(" AND availability = ").push_bind(availability.as_str());
            }
            if let Some(after) = query.after {
                q.push(" AND id > ").push_bind(after.0);
            }
            q.push(" ORDER BY id LIMIT ").push_bind(i64::from(query.limit));
            let rows = q.build().fetch_all(pool).await?;
            let mut users = Vec::with_capacity(rows.len());
            for row in rows {
                users.push(user_from_row!(row));
            }
            Ok(users)
        })
    }
}

enum ProfileValue {
    Text(Option<String>),
    Int(Option<i64>),
    Uuid(Option<uuid::Uuid>),
}

/// `%text%` for LIKE, lower-cased, with the pattern characters escaped.
pub(crate) fn like_pattern(text: &str) -> String {
    let escaped = text.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    format!("%{escaped}%")
}

impl Store {
    /// The accounts with these ids (unknown ids are left out), in no particular order.
    #[tracing::instrument(skip_all)]
    pub async fn get_users(&self, ids: &[UserId]) -> Result<Vec<UserRecord>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        on_pool!(self, |pool| {
            let mut q = sqlx::QueryBuilder::new(format!("SELECT {USER_COLUMNS} FROM users WHERE id IN ("));
            let mut list = q.separated(", ");
            for id in ids {
                list.push_bind(id.0);
            }
            q.push(")");
            let rows = q.build().fetch_all(pool).await?;
            let mut users = Vec::with_capacity(rows.len());
            for row in rows {
                users.push(user_from_row!(row));
            }
            Ok(users)
        })
    }
}
