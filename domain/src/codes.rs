//! One-time codes: six digits proving an email or phone, or authorising a password
//! reset. Codes are kept hashed (keyed with the signing key and salted with their
//! id), expire after minutes, allow a few attempts, and only the newest is valid.
//! Answers never say whether an identifier belongs to an account.

use std::time::Duration;

use parley_store::{IdentifierKind, Issue, NewCode, SendLimits, UserRecord};
use rand::Rng;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::accounts::{check_password, hash_password, normalize_email, normalize_phone, ClientInfo};
use crate::delivery::CodePurpose;
use crate::{now_ms, Domain, DomainError};

const VERIFY_EMAIL: &str = "verify_email";
const VERIFY_PHONE: &str = "verify_phone";
const RESET_PASSWORD: &str = "reset_password";

/// An email or phone as the client wrote it, normalised, with its kind.
fn parse_identifier(raw: &str) -> Result<(String, IdentifierKind), DomainError> {
    if raw.contains('@') {
        Ok((normalize_email(raw)?, IdentifierKind::Email))
    } else {
        normalize_phone(raw).map(|p| (p, IdentifierKind::Phone)).map_err(|_| {
            DomainError::invalid("invalid_identifier", "give an email address or a phone number starting with '+'")
        })
    }
}

fn invalid_code() -> DomainError {
    DomainError::invalid("invalid_code", "the code is wrong, expired or used up; ask for a new one")
}

impl Domain {
    /// Sends a verification code to `identifier` if it is an unproven email or phone
    /// of some account. Throttled per identifier and per address whether or not it is.
    #[tracing::instrument(skip_all)]
    pub async fn send_verification(&self, identifier: &str, client: &ClientInfo) -> Result<(), DomainError> {
        let (identifier, kind) = parse_identifier(identifier)?;
        let purpose = if kind == IdentifierKind::Email { VERIFY_EMAIL } else { VERIFY_PHONE };
        let owner = self.store().find_user_by_login(&identifier).await?.filter(|u| match kind {
            IdentifierKind::Email => u.email_verified_at.is_none(),
            IdentifierKind::Phone => u.phone_verified_at.is_none(),
        });
        self.issue_code(purpose, &identifier, owner.as_ref(), client, CodePurpose::Verify).await
    }

    /// Proves `identifier` with `code`; returns the account as it is now.
    #[tracing::instrument(skip_all)]
    pub async fn verify_identifier(&self, identifier: &str, code: &str) -> Result<UserRecord, DomainError> {
        let (identifier, kind) = parse_identifier(identifier)?;
        let purpose = if kind == IdentifierKind::Email { VERIFY_EMAIL } else { VERIFY_PHONE };
        let user = self.redeem_code(purpose, &identifier, code, None).await?;
        self.store().mark_identifier_verified(user, kind, &identifier, now_ms()).await?;
        tracing::info!(user_id = %user, "identifier verified");
        self.user(user).await
    }

    /// Sends a password reset code to the account's email or phone named `login`.
    /// The answer is the same for unknown identifiers.
    #[tracing::instrument(skip_all)]
    pub async fn forgot_password(&self, login: &str, client: &ClientInfo) -> Result<(), DomainError> {
        let (identifier, _) = parse_identifier(login)?;
        let owner = self.store().find_user_by_login(&identifier).await?;
        self.issue_code(RESET_PASSWORD, &identifier, owner.as_ref(), client, CodePurpose::ResetPassword).await
    }

    /// Sets a new password with a reset code. The identifier counts as proven, the
    /// failed-login count is cleared, and every sign-in ends.
    #[tracing::instrument(skip_all)]
    pub async fn reset_password(
        &self,
        login: &str,
        code: &str,
        new: String,
    ) -> Result<crate::sessions::Revoked, DomainError> {
        let (identifier, kind) = parse_identifier(login)?;
        check_password(&new)?;
        let user = self.redeem_code(RESET_PASSWORD, &identifier, code, None).await?;
        let hash = hash_password(new).await?;
        let now = now_ms();
        self.store().set_password_hash(user, &hash, now).await?;
        self.store().mark_identifier_verified(user, kind, &identifier, now).await?;
        self.store().clear_login_failures(&user.to_string()).await?;
        tracing::info!(user_id = %user, "password reset");
        self.revoke_sessions(user, None, None, "password_reset").await
    }

    /// Sends the verification code of a just-registered account's email or phone.
    pub(crate) async fn send_first_verification(
        &self,
        user: &UserRecord,
        identifier: &str,
        email: bool,
        client: &ClientInfo,
    ) -> Result<(), DomainError> {
        let purpose = if email { VERIFY_EMAIL } else { VERIFY_PHONE };
        self.issue_code(purpose, identifier, Some(user), client, CodePurpose::Verify).await
    }

    /// Records a code for `identifier` and sends it if there is an `owner`. Without
    /// one, a code nobody can redeem is recorded instead, so the throttles (and the
    /// answers) are the same either way.
    pub(crate) async fn issue_code(
        &self,
        purpose: &'static str,
        identifier: &str,
        owner: Option<&UserRecord>,
        client: &ClientInfo,
        what: CodePurpose,
    ) -> Result<(), DomainError> {
        let policy = &self.auth().policy;
        let id = Uuid::now_v7();
        let code = format!("{:06}", rand::rngs::OsRng.gen_range(0..1_000_000u32));
        let now = now_ms();
        let new = NewCode {
            id,
            purpose,
            identifier: identifier.to_string(),
            user: owner.map(|u| u.id),
            code_hash: self.hash_code(id, &code),
            client_addr: Some(client.addr_key().to_string()),
            now_ms: now,
            expires_at_ms: now + policy.code_ttl.as_millis() as i64,
        };
        let limits = SendLimits {
            min_interval_ms: policy.code_resend_interval.as_millis() as i64,
            per_identifier_per_hour: i64::from(policy.codes_per_identifier_per_hour),
            per_address_per_hour: i64::from(policy.codes_per_address_per_hour),
        };
        match self.store().issue_code(&new, limits).await? {
            Issue::Issued => {
                if owner.is_some() {
                    self.delivery().send_code(identifier, &code, what);
                }
                Ok(())
            }
            Issue::Throttled { retry_after_ms } => Err(DomainError::throttled(
                "too_many_codes",
                format!("a code was sent recently; ask again in {} s", (retry_after_ms + 999) / 1000),
                Duration::from_millis(retry_after_ms.max(0) as u64),
            )),
        }
    }

    /// Checks `code` against the live code of (purpose, identifier), using up one
    /// attempt, and consumes it when it matches (and, given `owner`, was sent for them).
    pub(crate) async fn redeem_code(
        &self,
        purpose: &str,
        identifier: &str,
        code: &str,
        owner: Option<parley_wire::UserId>,
    ) -> Result<parley_wire::UserId, DomainError> {
        let code = code.trim();
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DomainError::invalid("invalid_code", "the code is six digits"));
        }
        let max = i64::from(self.auth().policy.code_max_attempts);
        let now = now_ms();
        let attempt = self.store().attempt_code(purpose, identifier, now, max).await?.ok_or_else(invalid_code)?;
        let expected = self.hash_code(attempt.id, code);
        let matches = constant_time_eq(&expected, &attempt.code_hash);
        match attempt.user {
            Some(user)
                if matches && owner.is_none_or(|o| o == user) && self.store().consume_code(attempt.id, now).await? =>
            {
                Ok(user)
            }
            _ => {
                tracing::info!(purpose, "wrong one-time code");
                Err(invalid_code())
            }
        }
    }

    fn hash_code(&self, id: Uuid, code: &str) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(self.tokens().code_key());
        h.update(id.as_bytes());
        h.update(code.as_bytes());
        h.finalize().to_vec()
    }
}

/// Equality whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}
