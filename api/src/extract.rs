//! Extractors whose failures are [`ApiError`]s, and the authenticated caller.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use parley_domain::{ClientInfo, Grant};
use parley_wire::{Right, UserId};

use crate::{cookies, ApiError, AppState};

/// `axum::Json`, with errors in the API's shape.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query`, with errors in the API's shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// `axum::extract::Path`, with errors in the API's shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// A signed-in caller: the access token (bearer header, or the `parley_access`
/// cookie with the CSRF header on unsafe methods) is valid and its sign-in live.
#[derive(Debug, Clone, Copy)]
pub struct SignedIn {
    pub user: UserId,
    pub session: uuid::Uuid,
    /// Whether the token came from a cookie (so the answer should refresh or clear cookies).
    pub via_cookie: bool,
    /// The account holder, a member acting for an institution, or a kiosk device.
    pub grant: Grant,
}

impl SignedIn {
    /// Refuses kiosk devices: what only people do (contacts, starting conversations, profiles).
    pub fn person(self) -> Result<Self, ApiError> {
        match self.grant {
            Grant::Device(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "device_not_allowed",
                "kiosk devices cannot do this; they chat in the conversations they were added to",
            )),
            _ => Ok(self),
        }
    }

    /// Refuses devices and institution sign-ins: what only the account holder does in
    /// person (passwords, identifiers, sign-ins, institutions and devices).
    pub fn holder(self) -> Result<Self, ApiError> {
        match self.person()?.grant {
            Grant::Acting { .. } => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "acting_not_allowed",
                "an institution sign-in cannot do this; use your own sign-in",
            )),
            _ => Ok(self),
        }
    }

    /// For a device, requires `right`; everyone else has every right.
    pub fn may(self, right: Right) -> Result<Self, ApiError> {
        match self.grant {
            Grant::Device(rights) if !rights.allows(right) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "right_required",
                format!("this device was not given the `{}` right", right.as_str()),
            )),
            _ => Ok(self),
        }
    }
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let (token, via_cookie) = match parts.headers.get(header::AUTHORIZATION) {
            Some(value) => {
                let token = value
                    .to_str()
                    .ok()
                    .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
                    .ok_or_else(|| ApiError::unauthenticated("the Authorization header must be 'Bearer <token>'"))?;
                (token.trim().to_string(), false)
            }
            None => match cookies::get(&parts.headers, cookies::ACCESS) {
                Some(token) => {
                    cookies::check_csrf(&parts.method, &parts.headers)?;
                    (token, true)
                }
                None => {
                    return Err(ApiError::unauthenticated(
                        "an Authorization: Bearer access token (or the session cookie) is required",
                    ))
                }
            },
        };
        let claims = state
            .domain
            .tokens()
            .verify_access(&token)
            .map_err(|e| ApiError::unauthenticated(format!("access token refused: {e}")))?;
        let user = claims.user().map_err(|_| ApiError::unauthenticated("access token names no user"))?;
        let session = claims.session().map_err(|_| ApiError::unauthenticated("access token names no sign-in"))?;
        let grant = claims.grant().map_err(|_| ApiError::unauthenticated("access token has an unknown grant"))?;
        if !state.domain.session_live(user, session).await? {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "session_revoked",
                "this sign-in has ended (logged out, password changed or token reuse); log in again",
            ));
        }
        Ok(SignedIn { user, session, via_cookie, grant })
    }
}

/// The caller, proven as [`SignedIn`] describes.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub UserId);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        SignedIn::from_request_parts(parts, state).await.map(|s| Caller(s.user))
    }
}

/// A signed-in person: any token but a kiosk device's ([`SignedIn::person`]).
#[derive(Debug, Clone, Copy)]
pub struct Person(pub UserId);

impl FromRequestParts<AppState> for Person {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Person(SignedIn::from_request_parts(parts, state).await?.person()?.user))
    }
}

/// The account holder in person ([`SignedIn::holder`]).
#[derive(Debug, Clone, Copy)]
pub struct Holder(pub SignedIn);

impl FromRequestParts<AppState> for Holder {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Holder(SignedIn::from_request_parts(parts, state).await?.holder()?))
    }
}

/// Where the request came from: the peer address (or, behind a trusted proxy, the
/// forwarded one) and the user agent.
#[derive(Debug, Clone)]
pub struct Client(pub ClientInfo);

impl FromRequestParts<AppState> for Client {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        // Behind a trusted proxy the last X-Forwarded-For entry is the address the proxy saw.
        let forwarded = state
            .trust_forwarded_for
            .then(|| parts.headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).next_back())
            .flatten()
            .and_then(|v| v.rsplit(',').next())
            .and_then(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
            .map(|ip| ip.to_string());
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
        let addr = forwarded.or(peer);
        let user_agent = parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_string);
        Ok(Client(ClientInfo { addr, user_agent }))
    }
}
