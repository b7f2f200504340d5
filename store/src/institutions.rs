//! Institutions: accounts with role `institution` whose members (`owner`, `admin`,
//! `member`) act for them. The last owner can be neither removed nor demoted; the
//! statements themselves refuse it, so concurrent changes cannot leave none.

use crate::backend::on_pool;
use crate::{time_from_ms, NewUser, Store, StoreError};
use parley_wire::UserId;
use sqlx::Row;
use uuid::Uuid;

/// A member of an institution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstitutionMember {
    pub institution: UserId,
    pub user: UserId,
    pub role: String,
    pub added_at: chrono::DateTime<chrono::Utc>,
}

/// What removing or re-ranking a member did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    Done,
    /// Not a member.
    NotFound,
    /// It would leave the institution without an owner.
    LastOwner,
}

/// Keeps the statement from touching the only owner.
const NOT_LAST_OWNER: &str = "(role <> 'owner' OR (SELECT COUNT(*) FROM institution_members o \
     WHERE o.institution_id = $1 AND o.role = 'owner') > 1)";

macro_rules! member_from_row {
    ($row:expr) => {
        InstitutionMember {
            institution: UserId($row.try_get::<Uuid, _>("institution_id")?),
            user: UserId($row.try_get::<Uuid, _>("user_id")?),
            role: $row.try_get("role")?,
            added_at: time_from_ms($row.try_get("added_at")?),
        }
    };
}

impl Store {
    /// Creates the institution's account (its role is `institution`) with `owner` as
    /// its first owner; a taken username is `Conflict("username")`.
    #[tracing::instrument(skip_all)]
    pub async fn create_institution(&self, account: &NewUser, owner: UserId) -> Result<(), StoreError> {
        let user = "INSERT INTO users (id, username, email, phone, display_name, password_hash, role, created_at) \
                    VALUES ($1, $2, $3, $4, $5, $6, 'institution', $7)";
        let member = "INSERT INTO institution_members (institution_id, user_id, role, added_by, added_at) \
                      VALUES ($1, $2, 'owner', $2, $3)";
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(user)
                .bind(account.id.0)
                .bind(&account.username)
                .bind(&account.email)
                .bind(&account.phone)
                .bind(&account.display_name)
                .bind(&account.password_hash)
                .bind(account.created_at_ms)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::classify(e, &["username", "email", "phone"]))?;
            sqlx::query(member).bind(account.id.0).bind(owner.0).bind(account.created_at_ms).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// `user`'s role in `institution`, if a member.
    #[tracing::instrument(skip_all)]
    pub async fn institution_role(&self, institution: UserId, user: UserId) -> Result<Option<String>, StoreError> {
        let sql = "SELECT role FROM institution_members WHERE institution_id = $1 AND user_id = $2";
        on_pool!(self, |pool| {
            let row = sqlx::query(sql).bind(institution.0).bind(user.0).fetch_optional(pool).await?;
            Ok(row.map(|r| r.try_get("role")).transpose()?)
        })
    }

    /// The members of `institution`, owners first, then by when they joined.
    #[tracing::instrument(skip_all)]
    pub async fn institution_members(&self, institution: UserId) -> Result<Vec<InstitutionMember>, StoreError> {
        let sql = "SELECT institution_id, user_id, role, added_at FROM institution_members WHERE institution_id = $1 \
                   ORDER BY CASE role WHEN 'owner' THEN 0 WHEN 'admin' THEN 1 ELSE 2 END, added_at, user_id";
        on_pool!(self, |pool| {
            let rows = sqlx::query(sql).bind(institution.0).fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(member_from_row!(row));
            }
            Ok(out)
        })
    }

    /// The institutions `user` belongs to, with its role in each.
    #[tracing::instrument(skip_all)]
    pub async fn institutions_of(&self, user: UserId) -> Result<Vec<InstitutionMember>, StoreError> {
        let sql = "SELECT institution_id, user_id, role, added_at FROM institution_members WHERE user_id = $1 \
                   ORDER BY added_at, institution_id";
        on_pool!(self, |pool| {
            let rows = sqlx::query(sql).bind(user.0).fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(member_from_row!(row));
            }
            Ok(out)
        })
    }

    /// Adds a member; `Conflict("member")` if it already is one, `MissingReference`
    /// if either account does not exist.
    #[tracing::instrument(skip_all)]
    pub async fn add_institution_member(
        &self,
        institution: UserId,
        user: UserId,
        role: &str,
        by: UserId,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let sql = "INSERT INTO institution_members (institution_id, user_id, role, added_by, added_at) \
                   VALUES ($1, $2, $3, $4, $5)";
        on_pool!(self, |pool| {
            sqlx::query(sql)
                .bind(institution.0)
                .bind(user.0)
                .bind(role)
                .bind(by.0)
                .bind(now_ms)
                .execute(pool)
                .await
                .map_err(|e| match StoreError::classify(e, &[]) {
                    StoreError::Conflict(_) => StoreError::Conflict("member"),
                    other => other,
                })?;
        });
        Ok(())
    }

    /// Changes a member's role, unless that demotes the last owner.
    #[tracing::instrument(skip_all)]
    pub async fn set_institution_member_role(
        &self,
        institution: UserId,
        user: UserId,
        role: &str,
    ) -> Result<MemberChange, StoreError> {
        let sql = format!(
            "UPDATE institution_members SET role = $3 WHERE institution_id = $1 AND user_id = $2 \
             AND ($3 = 'owner' OR {NOT_LAST_OWNER})"
        );
        on_pool!(self, |pool| {
            let done = sqlx::query(&sql).bind(institution.0).bind(user.0).bind(role).execute(pool).await?;
            if done.rows_affected() == 1 {
                return Ok(MemberChange::Done);
            }
        });
        self.missing_or_last_owner(institution, user).await
    }

    /// Removes a member, unless it is the last owner.
    #[tracing::instrument(skip_all)]
    pub async fn remove_institution_member(
        &self,
        institution: UserId,
        user: UserId,
    ) -> Result<MemberChange, StoreError> {
        let sql =
            format!("DELETE FROM institution_members WHERE institution_id = $1 AND user_id = $2 AND {NOT_LAST_OWNER}");
        on_pool!(self, |pool| {
            let done = sqlx::query(&sql).bind(institution.0).bind(user.0).execute(pool).await?;
            if done.rows_affected() == 1 {
                return Ok(MemberChange::Done);
            }
        });
        self.missing_or_last_owner(institution, user).await
    }

    async fn missing_or_last_owner(&self, institution: UserId, user: UserId) -> Result<MemberChange, StoreError> {
        Ok(match self.institution_role(institution, user).await? {
            Some(_) => MemberChange::LastOwner,
            None => MemberChange::NotFound,
        })
    }
}
