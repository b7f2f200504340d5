//! Secret values in settings: never printed, never serialised in clear.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret string (signing key, password). `Debug` and `Serialize` show `[redacted]`.
#[derive(Clone)]
pub struct Secret(pub SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Secret(SecretString::from(String::deserialize(d)?)))
    }
}

/// A URL that may carry a password (database, bus): the password is masked wherever
/// the URL is shown or serialised.
#[derive(Clone)]
pub struct SecretUrl(pub SecretString);

/// `database.url`.
pub type DatabaseUrl = SecretUrl;

/// `bus.url`.
pub type BusUrl = SecretUrl;

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(SecretString::from(url.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask_url_password(self.0.expose_secret()))
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&mask_url_password(self.0.expose_secret()))
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(SecretUrl::new(String::deserialize(d)?))
    }
}

/// `postgres://user:pw@host/db` → `postgres://user:[redacted]@host/db`; URLs without a
/// password unchanged. The user information ends at the last `@` before any query, so
/// a password with an unescaped `/` or `@` is still hidden.
pub(crate) fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let before_query = &rest[..rest.find(['?', '#']).unwrap_or(rest.len())];
    let Some(at) = before_query.rfind('@') else {
        return url.to_string();
    };
    let (userinfo, host_and_tail) = (&rest[..at], &rest[at..]);
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:[redacted]{host_and_tail}"),
        None => url.to_string(),
    }
}
