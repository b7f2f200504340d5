//! Accounts: registration, password login (throttled) and password changes.
//! Identifiers are normalised before they are stored or looked up, so
//! `Ada@Example.com` and `ada@example.com` are the same account.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use parley_store::{NewUser, StoreError, UserRecord};
use parley_wire::{Role, UserId};

use crate::sessions::Session;
use crate::{now_ms, Domain, DomainError};

/// What a new account is registered with: at least one identifier, and a password.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    pub username: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub display_name: Option<String>,
    pub password: String,
    /// `user` (the default) or `provider`; other roles are granted by an admin.
    pub role: Option<Role>,
}

/// Where a request came from, for throttling and the list of sign-ins.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub addr: Option<String>,
    pub user_agent: Option<String>,
}

impl ClientInfo {
    /// The address throttles count against (`unknown` when the adapter has none).
    pub(crate) fn addr_key(&self) -> &str {
        self.addr.as_deref().unwrap_or("unknown")
    }
}

/// What registration did: the account, and where verification codes went.
#[derive(Debug, Clone)]
pub struct Registered {
    pub user: UserRecord,
    /// The identifiers a code was sent to.
    pub codes_sent: Vec<String>,
}

const MIN_PASSWORD_CHARS: usize = 8;
const MAX_PASSWORD_BYTES: usize = 1024;

impl Domain {
    /// Creates an account and sends a verification code to its email and phone.
    /// Refuses a missing identifier, malformed fields, a weak password, a role one
    /// may not choose, and identifiers that are taken.
    #[tracing::instrument(skip_all)]
    pub async fn register(&self, reg: Registration, client: &ClientInfo) -> Result<Registered, DomainError> {
        let username = reg.username.as_deref().map(normalize_username).transpose()?;
        let email = reg.email.as_deref().map(normalize_email).transpose()?;
        let phone = reg.phone.as_deref().map(normalize_phone).transpose()?;
        if username.is_none() && email.is_none() && phone.is_none() {
            return Err(DomainError::invalid("identifier_required", "give at least one of username, email or phone"));
        }
        if email.is_some() && !self.delivery().reaches(true) || phone.is_some() && !self.delivery().reaches(false) {
            return Err(DomainError::invalid(
                "channel_unavailable",
                "this deployment cannot send codes to that kind of identifier; use another",
            ));
        }
        let role = match reg.role {
            None | Some(Role::User) => Role::User,
            Some(Role::Provider) => Role::Provider,
            Some(_) => {
                return Err(DomainError::forbidden(
                    "role_not_allowed",
                    "sign-up creates `user` or `provider` accounts; other roles are granted by an admin",
                ))
            }
        };
        let display_name = crate::profiles::clean_text("display_name", reg.display_name, 64)?;
        check_password(&reg.password)?;
        let password_hash = hash_password(reg.password).await?;
        let user = NewUser {
            id: UserId::new(),
            username,
            email: email.clone(),
            phone: phone.clone(),
            display_name,
            password_hash,
            role,
            created_at_ms: now_ms(),
        };
        let mut inserted = self.store().insert_user(&user).await;
        // An email or phone held by an account that never proved it in time is released, then ours.
        for _ in 0..2 {
            let Err(StoreError::Conflict(field @ ("email" | "phone"))) = inserted else { break };
            let held = if field == "email" { user.email.as_deref() } else { user.phone.as_deref() };
            let Some(held) = held else { break };
            if self.release_unverified(Some(held)).await? == parley_store::Released::default() {
                break;
            }
            inserted = self.store().insert_user(&user).await;
        }
        let user = match inserted {
            Ok(user) => user,
            Err(StoreError::Conflict(field)) => {
                return Err(DomainError::conflict("identifier_taken", format!("this {field} is already registered")))
            }
            Err(e) => return Err(e.into()),
        };
        tracing::info!(user_id = %user.id, role = role.as_str(), "account registered");
        let mut codes_sent = Vec::new();
        let identifiers = [email.map(|e| (e, true)), phone.map(|p| (p, false))];
        for (identifier, is_email) in identifiers.into_iter().flatten() {
            // Only the address throttle can refuse here; the account exists either way.
            match self.send_first_verification(&user, &identifier, is_email, client).await {
                Ok(()) => codes_sent.push(identifier),
                Err(e) => tracing::warn!(user_id = %user.id, error = %e, "verification code not sent"),
            }
        }
        Ok(Registered { user, codes_sent })
    }

    /// Checks a password for the account named by `login` (username, email or phone)
    /// and opens a session. Unknown accounts cost the same time and get the same
    /// answer as a wrong password; failures are throttled per account and per address.
    #[tracing::instrument(skip_all)]
    pub async fn login(&self, login: &str, password: String, client: &ClientInfo) -> Result<Session, DomainError> {
        let refused = || DomainError::unauthorized("invalid_credentials", "login or password is wrong");
        let key = normalize_login(login);
        let user = match &key {
            Some(key) => self.store().find_user_by_login(key).await?,
            None => None,
        };
        // Unknown names are throttled too, under their own name, so throttling reveals nothing.
        let account_key = match (&user, &key) {
            (Some(u), _) => u.id.to_string(),
            (None, Some(k)) => k.clone(),
            (None, None) => login.trim().to_lowercase(),
        };
        self.check_login_throttle(&account_key, client).await?;
        // Institutions and devices never log in with a password; they take the dummy's time.
        let hash = user
            .as_ref()
            .filter(|u| !matches!(u.role, Role::Device | Role::Institution))
            .map(|u| u.password_hash.clone());
        if !verify_password(password, hash).await? {
            self.store().record_login_failure(&account_key, client.addr_key(), now_ms()).await?;
            return Err(refused());
        }
        let user = user.ok_or_else(refused)?;
        // An email or phone nobody proved does not identify anyone yet.
        let unproven = match key.as_deref() {
            Some(k) if user.email.as_deref() == Some(k) => user.email_verified_at.is_none(),
            Some(k) if user.phone.as_deref() == Some(k) => user.phone_verified_at.is_none(),
            _ => false,
        };
        if unproven {
            return Err(DomainError::forbidden(
                "verification_required",
                "confirm this email or phone with the code sent to it (POST /v1/auth/verify), or log in with another identifier",
            ));
        }
        self.store().clear_login_failures(&account_key).await?;
        tracing::info!(user_id = %user.id, "logged in");
        self.open_session(user, client).await
    }

    /// Changes the password after checking the current one; every other sign-in ends.
    #[tracing::instrument(skip_all)]
    pub async fn change_password(
        &self,
        user: UserId,
        current_session: uuid::Uuid,
        current: String,
        new: String,
        client: &ClientInfo,
    ) -> Result<crate::sessions::Revoked, DomainError> {
        check_password(&new)?;
        self.reauthenticate(user, Some(current), client).await?;
        let hash = hash_password(new).await?;
        self.store().set_password_hash(user, &hash, now_ms()).await?;
        tracing::info!(user_id = %user, "password changed");
        self.revoke_sessions(user, None, Some(current_session), "password_changed").await
    }

    /// The account behind a verified access token.
    pub async fn user(&self, id: UserId) -> Result<UserRecord, DomainError> {
        self.store().get_user(id).await?.ok_or_else(|| DomainError::not_found("user_not_found", "no such user"))
    }

    pub(crate) async fn check_login_throttle(&self, account_key: &str, client: &ClientInfo) -> Result<(), DomainError> {
        let policy = &self.auth().policy;
        let window = policy.login_window;
        let since = now_ms() - window.as_millis() as i64;
        let (account, addr) = self.store().login_failures(account_key, client.addr_key(), since).await?;
        if account >= i64::from(policy.login_failures_per_account)
            || addr >= i64::from(policy.login_failures_per_address)
        {
            tracing::warn!(addr = client.addr_key(), "login throttled");
            return Err(DomainError::throttled(
                "too_many_attempts",
                "too many failed logins; wait before trying again, or reset the password",
                window,
            ));
        }
        Ok(())
    }
}

pub(crate) fn normalize_username(raw: &str) -> Result<String, DomainError> {
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

pub(crate) fn normalize_email(raw: &str) -> Result<String, DomainError> {
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
pub(crate) fn normalize_phone(raw: &str) -> Result<String, DomainError> {
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
pub(crate) fn normalize_login(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.contains('@') {
        normalize_email(raw).ok()
    } else if raw.starts_with('+') {
        normalize_phone(raw).ok()
    } else {
        normalize_username(raw).ok()
    }
}

pub(crate) fn check_password(password: &str) -> Result<(), DomainError> {
    if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES {
        return Err(DomainError::invalid(
            "weak_password",
            format!("password is {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_BYTES} characters"),
        ));
    }
    Ok(())
}

/// At most one Argon2 computation per core at a time. Each holds 19 MiB while it
/// runs, and beyond the core count more in parallel only queue for the CPU: a
/// burst of 16 parallel logins measured with parley-bench took the process to
/// 1.5 GB resident (each blocking thread's allocator arena kept its buffers) and
/// it stayed above 1.1 GB; bounded, it stays near the idle figure.
async fn hashing_slot() -> Result<tokio::sync::SemaphorePermit<'static>, DomainError> {
    static SLOTS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    let slots =
        SLOTS.get_or_init(|| tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())));
    slots.acquire().await.map_err(|e| DomainError::Internal(format!("password hashing slots: {e}")))
}

/// Argon2id with the OWASP minimum (19 MiB, 2 passes, 1 lane), off the async threads.
pub(crate) async fn hash_password(password: String) -> Result<String, DomainError> {
    let _slot = hashing_slot().await?;
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
pub(crate) async fn verify_password(password: String, hash: Option<String>) -> Result<bool, DomainError> {
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
    let _slot = hashing_slot().await?;
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
