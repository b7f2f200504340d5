//! One error type for every rule, with a stable code that both the HTTP API and
//! the MQTT error events carry.

use parley_store::StoreError;

/// What kind of failure this is; adapters map it to their protocol's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or breaks a rule on its fields.
    Invalid,
    /// The credentials are wrong or missing.
    Unauthorized,
    /// The caller is known but may not do this.
    Forbidden,
    /// The thing does not exist, or the caller may not know that it does.
    NotFound,
    /// The write collides with existing data.
    Conflict,
    /// Too many requests; the caller may retry after a while.
    RateLimited,
    /// Our fault; the caller may retry.
    Internal,
}

/// A refusal with a stable `code` (snake_case) and a sentence for people.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("{message}")]
    Rule { kind: ErrorKind, code: &'static str, message: String },
    #[error("{message}")]
    RateLimited { code: &'static str, message: String, retry_after: std::time::Duration },
    #[error("storage failure: {0}")]
    Store(#[from] StoreError),
    #[error("internal failure: {0}")]
    Internal(String),
}

impl DomainError {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::Rule { kind: ErrorKind::Invalid, code, message: message.into() }
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::Rule { kind: ErrorKind::Unauthorized, code, message: message.into() }
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::Rule { kind: ErrorKind::Forbidden, code, message: message.into() }
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::Rule { kind: ErrorKind::NotFound, code, message: message.into() }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Rule { kind: ErrorKind::Conflict, code, message: message.into() }
    }

    /// Too many attempts: `code` says of what; retry after `retry_after`.
    pub fn throttled(code: &'static str, message: impl Into<String>, retry_after: std::time::Duration) -> Self {
        Self::RateLimited { code, message: message.into(), retry_after }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Rule { kind, .. } => *kind,
            Self::RateLimited { .. } => ErrorKind::RateLimited,
            Self::Store(_) | Self::Internal(_) => ErrorKind::Internal,
        }
    }

    /// How long to wait before trying again, when rate limited.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Rule { code, .. } => code,
            Self::RateLimited { code, .. } => code,
            Self::Store(_) | Self::Internal(_) => "internal",
        }
    }

    /// The sentence safe to show a client: internal details are never included.
    pub fn public_message(&self) -> String {
        match self {
            Self::Rule { message, .. } | Self::RateLimited { message, .. } => message.clone(),
            Self::Store(_) | Self::Internal(_) => "internal error; try again later".into(),
        }
    }
}
