//! Changing an account's username, email or phone. A new email or phone takes the
//! current password and a code sent to it; it replaces the old one only once proven,
//! so the owner is never locked out halfway. Removing one takes the password and
//! leaves at least one identifier to log in with. Emails and phones registered but
//! never proven are released after `auth.unverified_release_secs`, so a squatter
//! cannot hold someone else's address.

use parley_store::{Identifier, IdentifierChange, IdentifierKind, Released, StoreError, UserRecord};
use parley_wire::{Role, UserId};

use crate::accounts::{normalize_email, normalize_phone, normalize_username, verify_password, ClientInfo};
use crate::delivery::CodePurpose;
use crate::{now_ms, Domain, DomainError};

const CHANGE_EMAIL: &str = "change_email";
const CHANGE_PHONE: &str = "change_phone";

fn normalize(kind: IdentifierKind, raw: &str) -> Result<String, DomainError> {
    match kind {
        IdentifierKind::Email => normalize_email(raw),
        IdentifierKind::Phone => normalize_phone(raw),
    }
}

fn parts(kind: IdentifierKind) -> (&'static str, Identifier, bool) {
    match kind {
        IdentifierKind::Email => (CHANGE_EMAIL, Identifier::Email, true),
        IdentifierKind::Phone => (CHANGE_PHONE, Identifier::Phone, false),
    }
}

fn taken() -> DomainError {
    DomainError::conflict("identifier_taken", "another account uses this identifier")
}

fn changed(change: IdentifierChange) -> Result<(), DomainError> {
    match change {
        IdentifierChange::Done => Ok(()),
        IdentifierChange::NotFound => Err(DomainError::not_found("user_not_found", "no such user")),
        IdentifierChange::LastIdentifier => Err(DomainError::conflict(
            "last_identifier",
            "keep at least one identifier to log in with (a username, or a proven email or phone)",
        )),
    }
}

impl Domain {
    /// A person's account (institutions and devices have no identifiers of their own
    /// to change), after checking its password (failures throttled like logins).
    pub(crate) async fn reauthenticate(
        &self,
        user: UserId,
        password: Option<String>,
        client: &ClientInfo,
    ) -> Result<UserRecord, DomainError> {
        let account = self.user(user).await?;
        if !matches!(account.role, Role::User | Role::Provider | Role::Admin) {
            return Err(DomainError::forbidden("role_not_allowed", "this account's identifiers are managed for it"));
        }
        let Some(password) = password else { return Ok(account) };
        let key = user.to_string();
        self.check_login_throttle(&key, client).await?;
        if !verify_password(password, Some(account.password_hash.clone())).await? {
            self.store().record_login_failure(&key, client.addr_key(), now_ms()).await?;
            return Err(DomainError::unauthorized("invalid_credentials", "the current password is wrong"));
        }
        Ok(account)
    }

    /// Starts moving the account to a new email or phone: sends a code to it.
    /// Returns the normalised identifier the code went to.
    #[tracing::instrument(skip_all, fields(user_id = %user))]
    pub async fn request_identifier_change(
        &self,
        user: UserId,
        kind: IdentifierKind,
        value: &str,
        password: String,
        client: &ClientInfo,
    ) -> Result<String, DomainError> {
        let value = normalize(kind, value)?;
        let (purpose, _, is_email) = parts(kind);
        if !self.delivery().reaches(is_email) {
            return Err(DomainError::invalid("channel_unavailable", "this deployment cannot send codes there"));
        }
        let account = self.reauthenticate(user, Some(password), client).await?;
        let current = if is_email { &account.email } else { &account.phone };
        if current.as_deref() == Some(value.as_str()) {
            return Err(DomainError::invalid("identifier_unchanged", "that is already this account's identifier"));
        }
        self.ensure_free(&value).await?;
        self.issue_code(purpose, &value, Some(&account), client, CodePurpose::Verify).await?;
        Ok(value)
    }

    /// Finishes the change with the code sent to the new email or phone, which
    /// replaces the old one, proven.
    #[tracing::instrument(skip_all, fields(user_id = %user))]
    pub async fn confirm_identifier_change(
        &self,
        user: UserId,
        kind: IdentifierKind,
        value: &str,
        code: &str,
    ) -> Result<UserRecord, DomainError> {
        let value = normalize(kind, value)?;
        let (purpose, which, _) = parts(kind);
        self.redeem_code(purpose, &value, code, Some(user)).await?;
        match self.store().set_identifier(user, which, Some(&value), now_ms()).await {
            Ok(change) => changed(change)?,
            Err(StoreError::Conflict(_)) => return Err(taken()),
            Err(e) => return Err(e.into()),
        }
        tracing::info!(user_id = %user, "identifier changed");
        self.user(user).await
    }

    /// Sets or (with `None`) removes the username.
    pub async fn set_username(&self, user: UserId, username: Option<&str>) -> Result<UserRecord, DomainError> {
        let username = username.map(normalize_username).transpose()?;
        self.reauthenticate(user, None, &ClientInfo::default()).await?;
        match self.store().set_identifier(user, Identifier::Username, username.as_deref(), now_ms()).await {
            Ok(change) => changed(change)?,
            Err(StoreError::Conflict(_)) => return Err(taken()),
            Err(e) => return Err(e.into()),
        }
        self.user(user).await
    }

    /// Removes the email or phone, after checking the password.
    pub async fn remove_identifier(
        &self,
        user: UserId,
        kind: IdentifierKind,
        password: String,
        client: &ClientInfo,
    ) -> Result<UserRecord, DomainError> {
        self.reauthenticate(user, Some(password), client).await?;
        changed(self.store().set_identifier(user, parts(kind).1, None, now_ms()).await?)?;
        self.user(user).await
    }

    /// Refuses an identifier another account holds, unless that account never proved
    /// it in time (then it is released first).
    pub(crate) async fn ensure_free(&self, identifier: &str) -> Result<(), DomainError> {
        if self.store().find_user_by_login(identifier).await?.is_none() {
            return Ok(());
        }
        self.release_unverified(Some(identifier)).await?;
        match self.store().find_user_by_login(identifier).await? {
            None => Ok(()),
            Some(_) => Err(taken()),
        }
    }

    /// Releases emails and phones (all, or only `only`) registered longer ago than
    /// `auth.unverified_release_secs` and never proven.
    pub async fn release_unverified(&self, only: Option<&str>) -> Result<Released, DomainError> {
        let cutoff = now_ms() - self.auth().policy.unverified_release.as_millis() as i64;
        let released = self.store().release_unverified(cutoff, only).await?;
        if released != Released::default() {
            tracing::info!(
                accounts = released.accounts,
                identifiers = released.identifiers,
                "unproven identifiers released"
            );
        }
        Ok(released)
    }
}
