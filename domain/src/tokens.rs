//! Access tokens (HS256 JWTs, one algorithm only) and opaque refresh tokens.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parley_wire::{DeviceRights, UserId};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Who issues tokens, for whom, and for how long.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The user id.
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    /// The sign-in the token belongs to; revoking it ends the token early.
    pub sid: String,
    /// For a member acting for an institution (`sub`): the member (RFC 8693 `act`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    /// For a kiosk device: `device` and its rights (see [`DeviceRights`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// The `act` claim: who acts for the token's subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub sub: String,
}

/// What an access token lets its bearer do, beyond naming the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// The account holder, with every right of the account.
    Account,
    /// A member acting for the institution the token names.
    Acting { actor: UserId },
    /// A kiosk device, with the rights it was provisioned with.
    Device(DeviceRights),
}

impl AccessClaims {
    /// The user the token was issued to.
    pub fn user(&self) -> Result<UserId, TokenError> {
        self.sub.parse().map_err(|_| TokenError::Invalid)
    }

    /// The sign-in the token belongs to.
    pub fn session(&self) -> Result<uuid::Uuid, TokenError> {
        uuid::Uuid::try_parse(&self.sid).map_err(|_| TokenError::Invalid)
    }

    /// What the token allows; a scope or actor that does not parse is refused.
    pub fn grant(&self) -> Result<Grant, TokenError> {
        match (&self.scope, &self.act) {
            (None, None) => Ok(Grant::Account),
            (None, Some(actor)) => {
                actor.sub.parse().map(|actor| Grant::Acting { actor }).map_err(|_| TokenError::Invalid)
            }
            (Some(scope), None) => DeviceRights::from_scope(scope).map(Grant::Device).ok_or(TokenError::Invalid),
            (Some(_), Some(_)) => Err(TokenError::Invalid),
        }
    }
}

/// Why a token was refused. Callers answer all of them the same way to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token has expired")]
    Expired,
    #[error("token signature, algorithm, issuer or audience is wrong")]
    Invalid,
}

/// Signs and verifies tokens with the deployment's key.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    settings: TokenSettings,
    /// Derived from the signing key; keys the hashes of one-time codes.
    code_key: [u8; 32],
}

/// Seconds a token may be past `exp` and still pass, for clock skew between parts.
const LEEWAY_SECS: u64 = 5;

impl Tokens {
    pub fn new(key: &[u8], settings: TokenSettings) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let code_key = Sha256::new().chain_update(b"parley one-time codes\0").chain_update(key).finalize().into();
        Self {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
            settings,
            code_key,
        }
    }

    pub fn settings(&self) -> &TokenSettings {
        &self.settings
    }

    /// The key one-time codes are hashed with.
    pub(crate) fn code_key(&self) -> &[u8] {
        &self.code_key
    }

    /// A signed access token for `user`'s sign-in `session`, issued at `now_secs`.
    pub fn issue_access(&self, user: UserId, session: uuid::Uuid, now_secs: i64) -> String {
        self.issue_access_with(user, session, Grant::Account, now_secs)
    }

    /// A signed access token carrying `grant` (an actor, or a device's rights).
    pub fn issue_access_with(&self, user: UserId, session: uuid::Uuid, grant: Grant, now_secs: i64) -> String {
        let (act, scope) = match grant {
            Grant::Account => (None, None),
            Grant::Acting { actor } => (Some(Actor { sub: actor.to_string() }), None),
            Grant::Device(rights) => (None, Some(rights.scope())),
        };
        let claims = AccessClaims {
            sub: user.to_string(),
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            iat: now_secs,
            exp: now_secs + self.settings.access_ttl.as_secs() as i64,
            sid: session.to_string(),
            act,
            scope,
        };
        // HMAC signing of a small struct cannot fail.
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).unwrap_or_default()
    }

    /// Checks signature, algorithm, expiry, issuer and audience.
    pub fn verify_access(&self, token: &str) -> Result<AccessClaims, TokenError> {
        use jsonwebtoken::errors::ErrorKind as K;
        match decode::<AccessClaims>(token, &self.decoding, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => Err(match e.kind() {
                K::ExpiredSignature => TokenError::Expired,
                K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => TokenError::Malformed,
                _ => TokenError::Invalid,
            }),
        }
    }

    /// A new opaque refresh token and the hash under which it is stored.
    pub fn new_refresh_token() -> (String, Vec<u8>) {
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let token = URL_SAFE_NO_PAD.encode(raw);
        let hash = Self::hash_refresh_token(&token);
        (token, hash)
    }

    /// The stored form of a refresh token.
    pub fn hash_refresh_token(token: &str) -> Vec<u8> {
        Sha256::digest(token.as_bytes()).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> TokenSettings {
        TokenSettings {
            issuer: "parley".into(),
            audience: "parley".into(),
            access_ttl: Duration::from_secs(900),
            refresh_ttl: Duration::from_secs(3600),
        }
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    #[test]
    fn a_fresh_token_names_its_user() {
        let tokens = Tokens::new(b"key-one-key-one-key-one-key-one!", settings());
        let user = UserId::new();
        let claims = tokens.verify_access(&tokens.issue_access(user, uuid::Uuid::now_v7(), now())).expect("valid");
        assert_eq!(claims.user(), Ok(user));
        assert_eq!(claims.exp - claims.iat, 900);
    }

    #[test]
    fn grants_travel_in_the_token() {
        let tokens = Tokens::new(b"key-one-key-one-key-one-key-one!", settings());
        let (user, actor) = (UserId::new(), UserId::new());
        let rights = DeviceRights::KIOSK;
        for grant in [Grant::Account, Grant::Acting { actor }, Grant::Device(rights)] {
            let token = tokens.issue_access_with(user, uuid::Uuid::now_v7(), grant, now());
            assert_eq!(tokens.verify_access(&token).expect("valid").grant(), Ok(grant));
        }
        let mut claims = tokens.verify_access(&tokens.issue_access(user, uuid::Uuid::now_v7(), now())).expect("valid");
        claims.scope = Some("device send root".into());
        assert_eq!(claims.grant(), Err(TokenError::Invalid));
        claims.scope = Some("device send".into());
        claims.act = Some(Actor { sub: actor.to_string() });
        assert_eq!(claims.grant(), Err(TokenError::Invalid));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let tokens = Tokens::new(b"key-one-key-one-key-one-key-one!", settings());
        let token = tokens.issue_access(UserId::new(), uuid::Uuid::now_v7(), now() - 1000);
        assert_eq!(tokens.verify_access(&token), Err(TokenError::Expired));
    }

    #[test]
    fn tokens_signed_with_another_key_are_refused() {
        let ours = Tokens::new(b"key-one-key-one-key-one-key-one!", settings());
        let theirs = Tokens::new(b"key-two-key-two-key-two-key-two!", settings());
        let token = theirs.issue_access(UserId::new(), uuid::Uuid::now_v7(), now());
        assert_eq!(ours.verify_access(&token), Err(TokenError::Invalid));
    }

    #[test]
    fn tokens_for_another_audience_or_issuer_are_refused() {
        let key = b"key-one-key-one-key-one-key-one!";
        let ours = Tokens::new(key, settings());
        let other_aud = Tokens::new(key, TokenSettings { audience: "other".into(), ..settings() });
        let other_iss = Tokens::new(key, TokenSettings { issuer: "other".into(), ..settings() });
        for token in [
            other_aud.issue_access(UserId::new(), uuid::Uuid::now_v7(), now()),
            other_iss.issue_access(UserId::new(), uuid::Uuid::now_v7(), now()),
        ] {
            assert_eq!(ours.verify_access(&token), Err(TokenError::Invalid));
        }
    }

    #[test]
    fn unsigned_and_garbage_tokens_are_refused() {
        let tokens = Tokens::new(b"key-one-key-one-key-one-key-one!", settings());
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(
            format!(r#"{{"sub":"{}","iss":"parley","aud":"parley","iat":0,"exp":9999999999}}"#, UserId::new())
                .as_bytes(),
        );
        let unsigned = format!("{header}.{body}.");
        assert!(tokens.verify_access(&unsigned).is_err());
        assert_eq!(tokens.verify_access("garbage"), Err(TokenError::Malformed));
        assert!(tokens.verify_access("").is_err());
    }

    #[test]
    fn refresh_tokens_are_random_and_stored_hashed() {
        let (a, hash_a) = Tokens::new_refresh_token();
        let (b, _) = Tokens::new_refresh_token();
        assert_ne!(a, b);
        assert_eq!(Tokens::hash_refresh_token(&a), hash_a);
        assert_ne!(hash_a, a.as_bytes());
    }
}
