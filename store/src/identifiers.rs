//! Changing how an account is found: its username, email and phone. A new email or
//! phone is stored only once proven (so it arrives verified); none may be removed
//! when it is the last one the owner can log in with. Identifiers registered but
//! never proven are released after a while, so nobody can squat someone's address.

use parley_wire::UserId;

use crate::backend::on_pool;
use crate::{Store, StoreError};

/// One of an account's login identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identifier {
    Username,
    Email,
    Phone,
}

/// What changing an identifier did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifierChange {
    Done,
    /// No such account.
    NotFound,
    /// Removing it would leave no identifier the owner can log in with.
    LastIdentifier,
}

/// Accounts and identifiers released by [`Store::release_unverified`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// Accounts deleted: they had nothing but unproven identifiers.
    pub accounts: u64,
    /// Unproven emails and phones taken off accounts that keep another identifier.
    pub identifiers: u64,
}

impl Identifier {
    /// `SET` clause and, for removal, what must remain.
    fn statements(self) -> (&'static str, &'static str) {
        match self {
            Identifier::Username => {
                ("username = $2", "(email_verified_at IS NOT NULL OR phone_verified_at IS NOT NULL)")
            }
            Identifier::Email => (
                "email = $2, email_verified_at = CASE WHEN $2 IS NULL THEN NULL ELSE $3 END",
                "(username IS NOT NULL OR phone_verified_at IS NOT NULL)",
            ),
            Identifier::Phone => (
                "phone = $2, phone_verified_at = CASE WHEN $2 IS NULL THEN NULL ELSE $3 END",
                "(username IS NOT NULL OR email_verified_at IS NOT NULL)",
            ),
        }
    }

    fn column(self) -> &'static str {
        match self {
            Identifier::Username => "username",
            Identifier::Email => "email",
            Identifier::Phone => "phone",
        }
    }
}

impl Store {
    /// Sets (a proven email or phone is stored as verified at `now_ms`) or removes
    /// one identifier. A value another account holds is `Conflict(column)`.
    #[tracing::instrument(skip_all)]
    pub async fn set_identifier(
        &self,
        user: UserId,
        which: Identifier,
        value: Option<&str>,
        now_ms: i64,
    ) -> Result<IdentifierChange, StoreError> {
        let (set, remaining) = which.statements();
        let guard = if value.is_none() { remaining } else { "TRUE" };
        let sql = format!("UPDATE users SET {set} WHERE id = $1 AND {guard}");
        on_pool!(self, |pool| {
            let mut query = sqlx::query(&sql).bind(user.0).bind(value);
            if which != Identifier::Username {
                query = query.bind(now_ms);
            }
            let done = query.execute(pool).await.map_err(|e| StoreError::classify(e, &[which.column()]))?;
            if done.rows_affected() == 1 {
                return Ok(IdentifierChange::Done);
            }
        });
        Ok(if self.user_exists(user).await? { IdentifierChange::LastIdentifier } else { IdentifierChange::NotFound })
    }

    /// Releases emails and phones registered before `cutoff_ms` and never proven —
    /// all of them, or only the one equal to `only`. Accounts left with no way to log
    /// in (no username, nothing proven) are deleted; they never could log in.
    #[tracing::instrument(skip_all)]
    pub async fn release_unverified(&self, cutoff_ms: i64, only: Option<&str>) -> Result<Released, StoreError> {
        let accounts = "DELETE FROM users WHERE created_at < $1 AND role IN ('user', 'provider') \
                        AND username IS NULL AND email_verified_at IS NULL AND phone_verified_at IS NULL \
                        AND ($2 IS NULL OR email = $2 OR phone = $2)";
        let emails = "UPDATE users SET email = NULL WHERE created_at < $1 AND email IS NOT NULL \
                      AND email_verified_at IS NULL AND ($2 IS NULL OR email = $2)";
        let phones = "UPDATE users SET phone = NULL WHERE created_at < $1 AND phone IS NOT NULL \
                      AND phone_verified_at IS NULL AND ($2 IS NULL OR phone = $2)";
        on_pool!(self, |pool| {
            let mut tx = pool.begin().await?;
            let mut released = Released::default();
            released.accounts =
                sqlx::query(accounts).bind(cutoff_ms).bind(only).execute(&mut *tx).await?.rows_affected();
            for sql in [emails, phones] {
                released.identifiers +=
                    sqlx::query(sql).bind(cutoff_ms).bind(only).execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
            Ok(released)
        })
    }
}
