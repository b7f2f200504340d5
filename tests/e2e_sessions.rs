//! Sign-ins as phones and browsers live them: refresh-token rotation with reuse
//! detection and a grace window, logout here or everywhere (with the devices'
//! MQTT connections closed), the MQTT session ending with its token, and
//! browser sign-ins in HTTP-only cookies guarded against CSRF.

mod common;

use std::time::Duration;

use common::{now_secs, Backend, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(
    a_lost_refresh_response_can_be_retried_but_a_stolen_token_revokes_the_sign_in,
    logout_ends_this_sign_in_and_logout_all_ends_every_one,
    the_gate_disconnects_a_device_when_its_token_expires,
    a_v5_device_is_told_why_it_was_disconnected,
    browsers_sign_in_with_cookies_and_must_echo_the_csrf_token,
);

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {body}"))
}

async fn refresh(app: &TestApp, token: &str) -> (u16, Value) {
    app.post("/v1/auth/refresh", json!({"refresh_token": token})).await
}

async fn a_lost_refresh_response_can_be_retried_but_a_stolen_token_revokes_the_sign_in(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let ada = app.user("ada").await;
    let other_sign_in = app.login("ada", &ada.password).await;
    let device = app.device(&ada, "ada-phone").await;

    let (status, lost) = refresh(&app, &ada.refresh_token).await;
    assert_eq!(status, 200, "{lost}");
    // The phone never saw `lost`; it retries with the same token and gets a new pair.
    let (status, retried) = refresh(&app, &ada.refresh_token).await;
    assert_eq!(status, 200, "{retried}");
    assert_ne!(retried["refresh_token"], lost["refresh_token"]);
    assert_eq!(retried["session_id"], json!(ada.session_id), "same sign-in");
    let (status, current) = refresh(&app, retried["refresh_token"].as_str().expect("token")).await;
    assert_eq!(status, 200);
    // An attacker holding `lost` (or the old token) now uses it: the sign-in is revoked.
    let (status, stolen) = refresh(&app, lost["refresh_token"].as_str().expect("token")).await;
    assert_eq!((status, code(&stolen)), (401, "refresh_token_reused"));
    device.closed_by_server().await;
    let (status, body) = refresh(&app, current["refresh_token"].as_str().expect("token")).await;
    assert_eq!((status, code(&body)), (401, "invalid_refresh_token"), "the legitimate chain ends too");
    let (status, body) = app.get("/v1/me", current["access_token"].as_str()).await;
    assert_eq!((status, code(&body)), (401, "session_revoked"));
    let refused = common::Device::connect(app.options("ada-phone", &ada.id, &ada.access_token)).await;
    assert!(refused.is_err(), "the gate refuses the revoked sign-in's token");
    // Another sign-in of the same account is untouched.
    let (status, _) = app.get("/v1/me", Some(&other_sign_in.access_token)).await;
    assert_eq!(status, 200);
    let (status, _) = refresh(&app, &other_sign_in.refresh_token).await;
    assert_eq!(status, 200);
    app.stop().await;
}

async fn logout_ends_this_sign_in_and_logout_all_ends_every_one(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let phone = app.user("bea").await;
    let tablet = app.login("bea", &phone.password).await;
    let laptop = app.login("bea", &phone.password).await;
    let mut phone_device = app.device(&phone, "bea-phone").await;
    let tablet_device = app.device(&tablet, "bea-tablet").await;

    let (status, list) = app.send(Method::GET, "/v1/auth/sessions", &phone, None).await;
    assert_eq!(status, 200);
    let sessions = list["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 3);
    let current: Vec<&Value> = sessions.iter().filter(|s| s["current"] == json!(true)).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["id"], json!(phone.session_id));

    let (status, done) = app.send(Method::POST, "/v1/auth/logout", &tablet, None).await;
    assert_eq!((status, done["revoked_sessions"].as_u64()), (200, Some(1)));
    tablet_device.closed_by_server().await;
    assert!(phone_device.nothing_matching(|_| false, Duration::from_millis(200)).await);
    assert!(phone_device.closed.borrow().is_none(), "the phone stays connected");
    let (status, body) = app.send(Method::GET, "/v1/me", &tablet, None).await;
    assert_eq!((status, code(&body)), (401, "session_revoked"));

    // Ending another sign-in by id (a lost laptop), then one that is not ours.
    let (status, done) =
        app.send(Method::DELETE, &format!("/v1/auth/sessions/{}", laptop.session_id), &phone, None).await;
    assert_eq!((status, done["revoked_sessions"].as_u64()), (200, Some(1)));
    let stranger = app.user("cleo").await;
    let (status, body) =
        app.send(Method::DELETE, &format!("/v1/auth/sessions/{}", stranger.session_id), &phone, None).await;
    assert_eq!((status, code(&body)), (404, "session_not_found"));
    let (status, _) = app.send(Method::GET, "/v1/me", &stranger, None).await;
    assert_eq!(status, 200, "someone else's sign-in is untouched");

    let second_phone_sign_in = app.login("bea", &phone.password).await;
    let (status, done) = app.send(Method::POST, "/v1/auth/logout-all", &phone, None).await;
    assert_eq!((status, done["revoked_sessions"].as_u64()), (200, Some(2)));
    phone_device.closed_by_server().await;
    for gone in [&phone, &second_phone_sign_in] {
        let (status, _) = app.send(Method::GET, "/v1/me", gone, None).await;
        assert_eq!(status, 401);
        let (status, _) = refresh(&app, &gone.refresh_token).await;
        assert_eq!(status, 401);
    }
    app.stop().await;
}

async fn the_gate_disconnects_a_device_when_its_token_expires(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |s| s.auth.access_token_ttl_secs = 2).await else {
        return;
    };
    let (alice, bob, a, _b) = app.pair().await;
    let started = tokio::time::Instant::now();
    let why = a.closed_by_server().await;
    assert!(started.elapsed() < Duration::from_secs(6), "closed at expiry, not at some later check: {why}");
    // The device refreshes, reconnects, and its messages are stored and acknowledged again.
    let (status, fresh) = refresh(&app, &alice.refresh_token).await;
    assert_eq!(status, 200);
    let token = fresh["access_token"].as_str().expect("token");
    let mut again = common::Device::connect(app.options("alice-phone-2", &alice.id, token)).await.expect("reconnect");
    again.subscribe(&format!("to/{}/#", alice.id)).await;
    again
        .publish_json(&format!("from/{}/msg", alice.id), &json!({"id": "after-refresh", "to": bob.id, "text": "back"}))
        .await;
    let ack = again.next_on(&format!("to/{}/ack", alice.id)).await;
    assert_eq!((ack["id"].as_str(), ack.get("error")), (Some("after-refresh"), None), "{ack}");
    assert_eq!(app.message_rows().await, 1);
    // A token that expired before CONNECT is refused outright.
    let expired = app.token_issued_at(&alice, now_secs() - 3600);
    assert!(common::Device::connect(app.options("alice-old", &alice.id, &expired)).await.is_err());
    app.stop().await;
}

async fn a_v5_device_is_told_why_it_was_disconnected(backend: Backend) {
    use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode as D, Packet as P5};
    use rumqttc::v5::{AsyncClient, ConnectionError, Event as Ev5, MqttOptions, StateError};
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let dee = app.user("dee").await;
    let mut options = MqttOptions::new("dee-v5", app.mqtt.ip().to_string(), app.mqtt.port());
    options.set_credentials(dee.id.clone(), dee.access_token.clone());
    let (_client, mut events) = AsyncClient::new(options, 16);
    let reason = tokio::time::timeout(common::DEADLINE, async {
        let mut logged_out = false;
        loop {
            match events.poll().await {
                Ok(Ev5::Incoming(P5::ConnAck(_))) if !logged_out => {
                    logged_out = true;
                    let (status, _) = app.send(Method::POST, "/v1/auth/logout", &dee, None).await;
                    assert_eq!(status, 200);
                }
                Ok(Ev5::Incoming(P5::Disconnect(d))) => return (d.reason_code, None),
                Err(ConnectionError::MqttState(StateError::ServerDisconnect { reason_code, reason_string })) => {
                    return (reason_code, reason_string)
                }
                Ok(_) => {}
                Err(e) => panic!("closed without DISCONNECT: {e}"),
            }
        }
    })
    .await
    .expect("DISCONNECT in time");
    assert_eq!(reason.0, D::NotAuthorized);
    assert!(reason.1.is_none_or(|why| why.contains("revoked")));
    app.stop().await;
}

/// The `name=value` of cookie `name` among the response's `Set-Cookie` headers, and its attributes.
fn set_cookie(headers: &reqwest::header::HeaderMap, name: &str) -> Option<(String, String)> {
    headers.get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).find_map(|c| {
        let (pair, attrs) = c.split_once(';').unwrap_or((c, ""));
        let (n, v) = pair.split_once('=')?;
        (n.trim() == name).then(|| (v.to_string(), attrs.to_string()))
    })
}

async fn browsers_sign_in_with_cookies_and_must_echo_the_csrf_token(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let eve = app.user("eve").await;
    let (status, headers, body) = app
        .request(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"login": "eve", "password": eve.password, "cookie": true})),
            &[],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.get("access_token").is_none() && body.get("refresh_token").is_none(),
        "tokens stay out of scripts' reach"
    );
    let csrf = body["csrf_token"].as_str().expect("csrf").to_string();
    let (access, access_attrs) = set_cookie(&headers, "parley_access").expect("access cookie");
    let (refresh_cookie, refresh_attrs) = set_cookie(&headers, "parley_refresh").expect("refresh cookie");
    let (csrf_cookie, csrf_attrs) = set_cookie(&headers, "parley_csrf").expect("csrf cookie");
    assert_eq!(csrf_cookie, csrf);
    for attrs in [&access_attrs, &refresh_attrs] {
        assert!(attrs.contains("HttpOnly") && attrs.contains("Secure") && attrs.contains("SameSite=Strict"), "{attrs}");
    }
    assert!(refresh_attrs.contains("Path=/v1/auth"), "{refresh_attrs}");
    assert!(!csrf_attrs.contains("HttpOnly"), "scripts read the CSRF token");

    let cookies = format!("parley_access={access}; parley_csrf={csrf}");
    let (status, _, me) = app.request(Method::GET, "/v1/me", None, None, &[("cookie", &cookies)]).await;
    assert_eq!((status, me["id"].as_str()), (200, Some(eve.id.as_str())));
    // An unsafe request by cookie without the echoed token (a forged cross-site form) changes nothing.
    let patch = json!({"display_name": "Forged"});
    for headers in [vec![("cookie", cookies.as_str())], vec![("cookie", cookies.as_str()), ("x-csrf-token", "guess")]] {
        let (status, _, body) = app.request(Method::PATCH, "/v1/me", None, Some(patch.clone()), &headers).await;
        assert_eq!((status, code(&body)), (403, "csrf_failed"));
    }
    let (_, me) = app.get("/v1/me", Some(&eve.access_token)).await;
    assert_eq!(me["display_name"], Value::Null);
    let (status, _, me) = app
        .request(
            Method::PATCH,
            "/v1/me",
            None,
            Some(json!({"display_name": "Eve"})),
            &[("cookie", &cookies), ("x-csrf-token", &csrf)],
        )
        .await;
    assert_eq!((status, me["display_name"].as_str()), (200, Some("Eve")));

    // Refreshing from the cookie needs the CSRF token too, and answers with new cookies.
    let refresh_only = format!("parley_refresh={refresh_cookie}; parley_csrf={csrf}");
    let (status, _, body) =
        app.request(Method::POST, "/v1/auth/refresh", None, Some(json!({})), &[("cookie", &refresh_only)]).await;
    assert_eq!((status, code(&body)), (403, "csrf_failed"));
    let (status, headers, body) = app
        .request(
            Method::POST,
            "/v1/auth/refresh",
            None,
            Some(json!({})),
            &[("cookie", &refresh_only), ("x-csrf-token", &csrf)],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (new_access, _) = set_cookie(&headers, "parley_access").expect("new access cookie");
    let (new_refresh, _) = set_cookie(&headers, "parley_refresh").expect("new refresh cookie");
    let new_csrf = body["csrf_token"].as_str().expect("new csrf").to_string();
    assert_ne!(new_refresh, refresh_cookie, "the refresh token rotated");

    // Logging out clears the cookies.
    let cookies = format!("parley_access={new_access}; parley_csrf={new_csrf}");
    let (status, headers, _) = app
        .request(Method::POST, "/v1/auth/logout", None, None, &[("cookie", &cookies), ("x-csrf-token", &new_csrf)])
        .await;
    assert_eq!(status, 200);
    let (cleared, attrs) = set_cookie(&headers, "parley_access").expect("cleared");
    assert!(cleared.is_empty() && attrs.contains("Max-Age=0"), "{attrs}");
    let (status, _, _) = app.request(Method::GET, "/v1/me", None, None, &[("cookie", &cookies)]).await;
    assert_eq!(status, 401);
    app.stop().await;
}
