//! Accounts: registration, password login and refresh-token rotation.
//! Identifiers are normalised before they are stored or looked up, so
//! `Ada@Example.com` and `ada@example.com` are the same account.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use parley_store::{NewUser, StoreError, UserRecord};
use parley_wire::UserId;

use crate::{now_ms, Domain, DomainError, Tokens};

/// What a new account is registered with: at least one identifier, and a password.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    pub username: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub display_name: Option<String>,
    pub password: String,
}

/// What a successful login or refresh hands the client.
#[derive(Debug, Clone)]
pub struct Session {
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub user: UserRecord,
}

const MIN_PASSWORD_CHARS: usize = 8;
const MAX_PASSWORD_BYTES: usize = 1024;

impl Domain {
    /// Creates an account. Refuses a missing identifier, malformed fields, a weak
    /// password and identifiers that are taken.
    #[tracing::instrument(skip_all)]
    pub async fn register(&self, reg: Registration) -> Result<UserRecord, DomainError> {
        let username = reg.username.as_deref().map(normalize_username).transpose()?;
        let email = reg.email.as_deref().map(normalize_email).transpose()?;
        let phone = reg.phone.as_deref().map(normalize_phone).transpose()?;
        if username.is_none() && email.is_none() && phone.is_none() {
            return Err(DomainError::invalid("identifier_required", "give at least one of username, email or phone"));
        }
        let display_name = match reg.display_name.map(|n| n.trim().to_string()) {
            Some(n) if n.chars().count() > 64 => {
                return Err(DomainError::invalid("invalid_display_name", "display_name is at most 64 characters"))
            }
            Some(n) if n.is_empty() => None,
            other => other,
        };
        check_password(&reg.password)?;
        let password_hash = hash_password(reg.password).await?;
        let user =
            NewUser { id: UserId::new(), username, email, phone, display_name, password_hash, created_at_ms: now_ms() };
        match self.store().insert_user(&user).await {
            Ok(user) => {
                tracing::info!(user_id = %user.id, "account registered");
                Ok(user)
            }
            Err(StoreError::Conflict(field)) => {
                Err(DomainError::conflict("identifier_taken", format!("this {field} is already registered")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Checks a password for the account named by `login` (username, email or phone)
    /// and opens a session. Unknown accounts cost the same time and get the same
    /// answer as a wrong password.
    #[tracing::instrument(skip_all)]
    pub async fn login(&self, login: &str, password: String) -> Result<Session, DomainError> {
        let refused = || DomainError::unauthorized("invalid_credentials", "login or password is wrong");
        let key = normalize_login(login);
        let user = match key {
            Some(key) => self.store().find_user_by_login(&key).await?,
            None => None,
        };
        let hash = user.as_ref().map(|u| u.password_hash.clone());
        if !verify_password(password, hash).await? {
            return Err(refused());
        }
        let user = user.ok_or_else(refused)?;
        tracing::info!(user_id = %user.id, "logged in");
        self.open_session(user).await
    }

    /// Exchanges a refresh token for a new session; the old token stops working.
    #[tracing::instrument(skip_all)]
    pub async fn refresh(&self, refresh_token: &str) -> Result<Session, DomainError> {
        let refused = || DomainError::unauthorized("invalid_refresh_token", "refresh token is invalid or expired");
        let hash = Tokens::hash_refresh_token(refresh_token);
        let user_id = self.store().take_refresh_token(&hash, now_ms()).await?.ok_or_else(refused)?;
        let user = self.store().get_user(user_id).await?.ok_or_else(refused)?;
        self.open_session(user).await
    }

    /// The account behind a verified access token.
    pub async fn user(&self, id: UserId) -> Result<UserRecord, DomainError> {
        self.store().get_user(id).await?.ok_or_else(|| DomainError::not_found("user_not_found", "no such user"))
    }

    async fn open_session(&self, user: UserRecord) -> Result<Session, DomainError> {
        let now = now_ms();
        let settings = self.tokens().settings();
        let access_token = self.tokens().issue_access(user.id, now / 1000);
        let (refresh_token, hash) = Tokens::new_refresh_token();
        let expires_at = now + settings.refresh_ttl.as_millis() as i64;
        self.store().insert_refresh_token(user.id, &hash, now, expires_at).await?;
        Ok(Session { access_token, refresh_token, expires_in: settings.access_ttl.as_secs(), user })
    }
}

fn normalize_username(raw: &str) -> Result<String, DomainError> {
    let name = raw.trim().to_lowercase();
    let ok = (3..=32).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if ok {
        Ok(name)
    } else {
        Err(DomainError::invalid(
            "invalid_username",
            "username is 3 to 32 letters, digits, '_' or '.', starting with a letter",
        ))
    }
}

fn normalize_email(raw: &str) -> Result<String, DomainError> {
    let email = raw.trim().to_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            }
            None => false,
        };
    if valid {
        Ok(email)
    } else {
        Err(DomainError::invalid("invalid_email", "email address is not valid"))
    }
}

/// Phones are kept in E.164 (`+` and 8 to 15 digits); spaces, dashes, dots and
/// parentheses are dropped.
fn normalize_phone(raw: &str) -> Result<String, DomainError> {
    let kept: String = raw.trim().chars().filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')')).collect();
    match kept.strip_prefix('+') {
        Some(digits) if (8..=15).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit()) => Ok(kept),
        _ => Err(DomainError::invalid(
            "invalid_phone",
            "phone is an international number starting with '+', e.g. +15551234567",
        )),
    }
}

/// A login names an account by any of its identifiers; each is normalised the way it was stored.
fn normalize_login(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.contains('@') {
        normalize_email(raw).ok()
    } else if raw.starts_with('+') {
        normalize_phone(raw).ok()
    } else {
        normalize_username(raw).ok()
    }
}

fn check_password(password: &str) -> Result<(), DomainError> {
    if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES {
        return Err(DomainError::invalid(
            "weak_password",
            format!("password is {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_BYTES} characters"),
        ));
    }
    Ok(())
}

/// Argon2id with the OWASP minimum (19 MiB, 2 passes, 1 lane), off the async threads.
async fn hash_password(password: String) -> Result<String, DomainError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| DomainError::Internal(format!("password hashing: {e}")))
    })
    .await
    .map_err(|e| DomainError::Internal(format!("password hashing task: {e}")))?
}

/// Verifies against `hash`, or against a fixed dummy hash when there is no account,
/// so both paths take the same time.
async fn verify_password(password: String, hash: Option<String>) -> Result<bool, DomainError> {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let known = hash.is_some();
    let hash = match hash {
        Some(h) => h,
        None => DUMMY
            .get_or_init(|| {
                let salt = SaltString::generate(&mut rand::rngs::OsRng);
                Argon2::default()
                    .hash_password(b"dummy password for timing", &salt)
                    .map(|h| h.to_string())
                    .unwrap_or_default()
            })
            .clone(),
    };
    tokio::task::spawn_blocking(move || {
        let ok = PasswordHash::new(&hash)
            .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
            .unwrap_or(false);
        ok && known
    })
    .await
    .map_err(|e| DomainError::Internal(format!("password check task: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_normalised() {
        assert_eq!(normalize_username("  Ada_L ").ok(), Some("ada_l".into()));
        assert_eq!(normalize_email(" Ada@Example.COM ").ok(), Some("ada@example.com".into()));
        assert_eq!(normalize_phone("+1 (555) 123-4567").ok(), Some("+15551234567".into()));
        assert_eq!(normalize_login("ADA@example.com"), Some("ada@example.com".into()));
        assert_eq!(normalize_login("+1 555 123 4567"), Some("+15551234567".into()));
    }

    #[test]
    fn malformed_identifiers_are_refused() {
        for bad in ["ab", "1abc", "has space", "a@b", "x".repeat(33).as_str(), "ünï"] {
            assert!(normalize_username(bad).is_err(), "{bad}");
        }
        for bad in ["plain", "@example.com", "a@b", "a@.com", "a@b.", "a b@c.com", "a@b@c.com"] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
        for bad in ["5551234567", "+12", "+1555abc4567", "+1234567890123456"] {
            assert!(normalize_phone(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn passwords_hash_with_argon2id_at_owasp_minimum() {
        let hash = hash_password("correct horse".into()).await.expect("hash");
        let parsed = PasswordHash::new(&hash).expect("phc string");
        assert_eq!(parsed.algorithm.as_str(), "argon2id");
        let m: u32 = parsed.params.get_decimal("m").expect("m");
        let t: u32 = parsed.params.get_decimal("t").expect("t");
        assert!(m >= 19 * 1024 && t >= 2, "m={m} t={t}");
        assert!(verify_password("correct horse".into(), Some(hash.clone())).await.expect("verify"));
        assert!(!verify_password("wrong horse".into(), Some(hash)).await.expect("verify"));
        assert!(!verify_password("anything".into(), None).await.expect("verify"));
    }
}
