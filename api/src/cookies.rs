//! Browser sessions in cookies instead of bearer headers. The access and refresh
//! tokens live in `HttpOnly`, `SameSite=Strict` cookies (the refresh one only sent
//! to `/v1/auth`); a third, script-readable cookie holds a CSRF token that unsafe
//! requests must echo in `X-CSRF-Token` (double submit).

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cookie::{Cookie, SameSite};
use parley_domain::constant_time_eq;
use rand::RngCore;

use crate::ApiError;

pub const ACCESS: &str = "parley_access";
pub const REFRESH: &str = "parley_refresh";
pub const CSRF: &str = "parley_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The value of cookie `name` in the request, if sent.
pub fn get(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| Cookie::split_parse(v.to_string()))
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

/// Unsafe methods authenticated by cookie must carry the CSRF cookie's value in `X-CSRF-Token`.
pub fn check_csrf(method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let cookie = get(headers, CSRF);
    let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    match (cookie, sent) {
        (Some(c), Some(s)) if !c.is_empty() && constant_time_eq(c.as_bytes(), s.as_bytes()) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf_failed",
            "requests authenticated by cookie must send the parley_csrf cookie's value in X-CSRF-Token",
        )),
    }
}

/// The `Set-Cookie` headers of a new token pair; returns the CSRF token too.
pub fn issue(
    headers: &mut HeaderMap,
    access: &str,
    access_secs: u64,
    refresh: &str,
    refresh_secs: u64,
    secure: bool,
) -> String {
    let mut raw = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let csrf = URL_SAFE_NO_PAD.encode(raw);
    set(headers, ACCESS, access, "/", access_secs, true, secure);
    set(headers, REFRESH, refresh, "/v1/auth", refresh_secs, true, secure);
    set(headers, CSRF, &csrf, "/", refresh_secs, false, secure);
    csrf
}

/// `Set-Cookie` headers that delete the session cookies.
pub fn clear(headers: &mut HeaderMap, secure: bool) {
    set(headers, ACCESS, "", "/", 0, true, secure);
    set(headers, REFRESH, "", "/v1/auth", 0, true, secure);
    set(headers, CSRF, "", "/", 0, false, secure);
}

fn set(headers: &mut HeaderMap, name: &str, value: &str, path: &str, max_age: u64, http_only: bool, secure: bool) {
    let cookie = Cookie::build((name, value))
        .path(path)
        .http_only(http_only)
        .secure(secure)
        .same_site(SameSite::Strict)
        .max_age(cookie::time::Duration::seconds(max_age.min(i64::MAX as u64) as i64))
        .build();
    if let Ok(v) = HeaderValue::from_str(&cookie.to_string()) {
        headers.append(header::SET_COOKIE, v);
    }
}
