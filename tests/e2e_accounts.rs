//! Accounts through the real HTTP API, with mail and SMS going to fakes of the
//! providers: verified sign-up, one-time codes under attack (guessing, resend
//! floods, enumeration), login throttling, password reset and change.

mod common;

use std::time::Duration;

use common::{Backend, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(
    sign_up_sends_codes_that_verify_email_and_phone,
    guessing_a_code_is_cut_off_after_a_few_attempts,
    resends_are_throttled_and_only_the_newest_code_works,
    code_requests_do_not_reveal_which_identifiers_exist,
    logins_are_throttled_per_account_and_per_address,
    a_password_reset_by_code_ends_every_sign_in,
    changing_the_password_ends_the_other_sign_ins,
    behind_a_trusted_proxy_each_forwarded_address_is_throttled_alone,
);

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {body}"))
}

async fn register(app: &TestApp, body: Value) -> Value {
    let (status, created) = app.post("/v1/auth/register", body).await;
    assert_eq!(status, 201, "{created}");
    created
}

async fn sign_up_sends_codes_that_verify_email_and_phone(backend: Backend) {
    let Some((app, outbox)) = TestApp::spawn_with_outbox(backend, |_| {}).await else {
        return;
    };
    let created = register(
        &app,
        json!({"username": "ada", "email": "Ada@Example.com", "phone": "+1 555 000 2222", "password": "long enough pw"}),
    )
    .await;
    assert_eq!(created["codes_sent"], json!(["ada@example.com", "+15550002222"]));
    assert_eq!(
        (created["user"]["email_verified"].as_bool(), created["user"]["phone_verified"].as_bool()),
        (Some(false), Some(false))
    );
    let email_code = outbox.code("ada@example.com", 1).await;
    let sms_code = outbox.code("+15550002222", 1).await;
    let sms = &outbox.to("+15550002222")[0];
    assert_eq!((sms.channel, sms.authorization.as_deref()), ("sms", Some("Bearer sms-provider-token")));

    // An unproven identifier does not log in (after the password was checked), a username does.
    let (status, refused) =
        app.post("/v1/auth/login", json!({"login": "ada@example.com", "password": "long enough pw"})).await;
    assert_eq!((status, code(&refused)), (403, "verification_required"));
    let ada = app.login("ada", "long enough pw").await;

    let wrong = if email_code == "000000" { "111111" } else { "000000" };
    let (status, bad) = app.post("/v1/auth/verify", json!({"identifier": "ada@example.com", "code": wrong})).await;
    assert_eq!((status, code(&bad)), (422, "invalid_code"));
    let (status, malformed) =
        app.post("/v1/auth/verify", json!({"identifier": "ada@example.com", "code": "12ab"})).await;
    assert_eq!((status, code(&malformed)), (422, "invalid_code"));
    let (status, me) = app.post("/v1/auth/verify", json!({"identifier": "ADA@example.com", "code": email_code})).await;
    assert_eq!(
        (status, me["email_verified"].as_bool(), me["phone_verified"].as_bool()),
        (200, Some(true), Some(false))
    );
    // A code works once.
    let (status, again) =
        app.post("/v1/auth/verify", json!({"identifier": "ada@example.com", "code": email_code})).await;
    assert_eq!((status, code(&again)), (422, "invalid_code"));
    // The email code does not verify the phone.
    let (status, crossed) =
        app.post("/v1/auth/verify", json!({"identifier": "+15550002222", "code": email_code})).await;
    assert!(status == 422 && code(&crossed) == "invalid_code" || email_code == sms_code);
    let (status, _) = app.post("/v1/auth/verify", json!({"identifier": "+1 555 000 2222", "code": sms_code})).await;
    assert_eq!(status, 200);
    let (_, me) = app.get("/v1/me", Some(&ada.access_token)).await;
    assert_eq!((me["email_verified"].as_bool(), me["phone_verified"].as_bool()), (Some(true), Some(true)));
    for login in ["ada@example.com", "+15550002222"] {
        let user = app.login(login, "long enough pw").await;
        assert_eq!(user.id, ada.id);
    }
    app.stop().await;
}

async fn guessing_a_code_is_cut_off_after_a_few_attempts(backend: Backend) {
    let Some((app, outbox)) = TestApp::spawn_with_outbox(backend, |_| {}).await else {
        return;
    };
    register(&app, json!({"username": "boris", "email": "bo@example.com", "password": "long enough pw"})).await;
    let real = outbox.code("bo@example.com", 1).await;
    let mut guesses = (0..).map(|n| format!("{:06}", n)).filter(|g| *g != real);
    for _ in 0..5 {
        let guess = guesses.next().expect("guess");
        let (status, body) = app.post("/v1/auth/verify", json!({"identifier": "bo@example.com", "code": guess})).await;
        assert_eq!((status, code(&body)), (422, "invalid_code"));
    }
    // Out of attempts: even the right code is refused now, with the same answer.
    let (status, body) = app.post("/v1/auth/verify", json!({"identifier": "bo@example.com", "code": real})).await;
    assert_eq!((status, code(&body)), (422, "invalid_code"));
    let bo = app.login("boris", "long enough pw").await;
    let (_, me) = app.get("/v1/me", Some(&bo.access_token)).await;
    assert_eq!(me["email_verified"], json!(false), "the account is unchanged");
    app.stop().await;
}

async fn resends_are_throttled_and_only_the_newest_code_works(backend: Backend) {
    let Some((app, outbox)) = TestApp::spawn_with_outbox(backend, |s| {
        s.auth.code_resend_interval_secs = 0;
        s.auth.codes_per_identifier_per_hour = 3;
        s.auth.codes_per_address_per_hour = 6;
    })
    .await
    else {
        return;
    };
    register(&app, json!({"username": "cyril", "email": "cy@example.com", "password": "long enough pw"})).await;
    let first = outbox.code("cy@example.com", 1).await;
    let (status, _) = app.post("/v1/auth/verify/resend", json!({"identifier": "cy@example.com"})).await;
    assert_eq!(status, 202);
    let second = outbox.code("cy@example.com", 2).await;
    if first != second {
        let (status, old) = app.post("/v1/auth/verify", json!({"identifier": "cy@example.com", "code": first})).await;
        assert_eq!((status, code(&old)), (422, "invalid_code"), "only the newest code is live");
    }
    let (status, _) = app.post("/v1/auth/verify/resend", json!({"identifier": "cy@example.com"})).await;
    assert_eq!(status, 202);
    // The fourth code this hour for this identifier is refused with a retry time.
    let (status, headers, flood) = app
        .request(Method::POST, "/v1/auth/verify/resend", None, Some(json!({"identifier": "cy@example.com"})), &[])
        .await;
    assert_eq!((status, code(&flood)), (429, "too_many_codes"));
    assert!(flood["error"]["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{flood}");
    assert!(headers.get("retry-after").is_some());
    assert!(outbox.nothing_more("cy@example.com", 3, Duration::from_millis(300)).await);
    let third = outbox.code("cy@example.com", 3).await;
    let (status, _) = app.post("/v1/auth/verify", json!({"identifier": "cy@example.com", "code": third})).await;
    assert_eq!(status, 200, "the newest code still works after the refused resend");

    // The address is throttled too: three more codes, and this address is done for the hour.
    for n in 0..3 {
        register(&app, json!({"email": format!("x{n}@example.com"), "password": "long enough pw"})).await;
    }
    let (status, body) = app.post("/v1/auth/verify/resend", json!({"identifier": "x0@example.com"})).await;
    assert_eq!((status, code(&body)), (429, "too_many_codes"), "{body}");
    app.stop().await;
}

async fn code_requests_do_not_reveal_which_identifiers_exist(backend: Backend) {
    let Some((app, outbox)) = TestApp::spawn_with_outbox(backend, |s| s.auth.code_resend_interval_secs = 1).await
    else {
        return;
    };
    register(&app, json!({"username": "dina", "email": "di@example.com", "password": "long enough pw"})).await;
    outbox.code("di@example.com", 1).await;
    // Past the resend interval of the sign-up code (a second here).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (known_status, known) = app.post("/v1/auth/password/forgot", json!({"login": "di@example.com"})).await;
    let (unknown_status, unknown) = app.post("/v1/auth/password/forgot", json!({"login": "nobody@example.com"})).await;
    assert_eq!((known_status, unknown_status), (202, 202));
    assert_eq!(known, unknown, "same answer whether or not the account exists");
    outbox.code("di@example.com", 2).await;
    assert!(outbox.to("nobody@example.com").is_empty(), "nothing is sent to strangers");
    // Asking again right away is throttled the same way for both.
    let (s1, again_known) = app.post("/v1/auth/password/forgot", json!({"login": "di@example.com"})).await;
    let (s2, again_unknown) = app.post("/v1/auth/password/forgot", json!({"login": "nobody@example.com"})).await;
    assert_eq!((s1, code(&again_known)), (s2, code(&again_unknown)));
    assert_eq!(s1, 429);
    // A reset code of an unknown identifier never works (and says the same as a wrong one).
    let (status, body) = app
        .post(
            "/v1/auth/password/reset",
            json!({"login": "nobody@example.com", "code": "123456", "new_password": "another long pw"}),
        )
        .await;
    assert_eq!((status, code(&body)), (422, "invalid_code"));
    app.stop().await;
}

async fn logins_are_throttled_per_account_and_per_address(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |s| {
        s.auth.login_failures_per_account = 3;
        s.auth.login_failures_per_address = 8;
    })
    .await
    else {
        return;
    };
    let eve = app.user("eve").await;
    for _ in 0..3 {
        let (status, body) = app.post("/v1/auth/login", json!({"login": "eve", "password": "wrong password"})).await;
        assert_eq!((status, code(&body)), (401, "invalid_credentials"));
    }
    // Locked for now, even with the right password.
    let (status, headers, body) = app
        .request(Method::POST, "/v1/auth/login", None, Some(json!({"login": "eve", "password": eve.password})), &[])
        .await;
    assert_eq!((status, code(&body)), (429, "too_many_attempts"));
    assert!(headers.get("retry-after").is_some());
    // An unknown name behaves exactly the same way: nothing tells them apart.
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(app.post("/v1/auth/login", json!({"login": "ghost", "password": "wrong password"})).await);
    }
    let codes: Vec<(u16, String)> = answers.iter().map(|(s, b)| (*s, code(b).to_string())).collect();
    assert_eq!(codes[..3], vec![(401, "invalid_credentials".to_string()); 3]);
    assert_eq!(codes[3], (429, "too_many_attempts".to_string()));
    // The address has failed 6 times; two more and every account is closed to it.
    let frank = app.user("frank").await;
    for _ in 0..2 {
        let (status, _) = app.post("/v1/auth/login", json!({"login": "frank", "password": "wrong password"})).await;
        assert_eq!(status, 401);
    }
    let (status, body) = app.post("/v1/auth/login", json!({"login": "frank", "password": frank.password})).await;
    assert_eq!((status, code(&body)), (429, "too_many_attempts"));
    // Existing sign-ins are unaffected.
    let (status, _) = app.get("/v1/me", Some(&eve.access_token)).await;
    assert_eq!(status, 200);
    app.stop().await;
}

async fn a_password_reset_by_code_ends_every_sign_in(backend: Backend) {
    // The reset code follows the verification code at once: no resend interval here.
    let Some((app, outbox)) = TestApp::spawn_with_outbox(backend, |s| s.auth.code_resend_interval_secs = 0).await
    else {
        return;
    };
    register(&app, json!({"username": "gil", "phone": "+15550003333", "password": "old long password"})).await;
    outbox.code("+15550003333", 1).await;
    let phone = app.login("gil", "old long password").await;
    let laptop = app.login("gil", "old long password").await;
    let device = app.device(&phone, "gil-phone").await;

    let (status, _) = app.post("/v1/auth/password/forgot", json!({"login": "+1 555 000 3333"})).await;
    assert_eq!(status, 202);
    let reset_code = outbox.code("+15550003333", 2).await;
    let (status, weak) = app
        .post("/v1/auth/password/reset", json!({"login": "+15550003333", "code": reset_code, "new_password": "short"}))
        .await;
    assert_eq!((status, code(&weak)), (422, "weak_password"));
    let (status, done) = app
        .post(
            "/v1/auth/password/reset",
            json!({"login": "+15550003333", "code": reset_code, "new_password": "new long password"}),
        )
        .await;
    assert_eq!((status, done["revoked_sessions"].as_u64()), (200, Some(2)), "{done}");
    device.closed_by_server().await;
    for old in [&phone, &laptop] {
        let (status, body) = app.get("/v1/me", Some(&old.access_token)).await;
        assert_eq!((status, code(&body)), (401, "session_revoked"));
        let (status, _) = app.post("/v1/auth/refresh", json!({"refresh_token": old.refresh_token})).await;
        assert_eq!(status, 401);
    }
    let (status, _) = app.post("/v1/auth/login", json!({"login": "gil", "password": "old long password"})).await;
    assert_eq!(status, 401);
    // The code proved the phone, so the phone now logs in too.
    let fresh = app.login("+15550003333", "new long password").await;
    let (_, me) = app.get("/v1/me", Some(&fresh.access_token)).await;
    assert_eq!(me["phone_verified"], json!(true));
    // The code is used up.
    let (status, _) = app
        .post(
            "/v1/auth/password/reset",
            json!({"login": "+15550003333", "code": reset_code, "new_password": "third long password"}),
        )
        .await;
    assert_eq!(status, 422);
    app.stop().await;
}

async fn changing_the_password_ends_the_other_sign_ins(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let here = app.user("hal").await;
    let there = app.login("hal", &here.password).await;
    let other_device = app.device(&there, "hal-tablet").await;
    let (status, wrong) = app
        .send(
            Method::POST,
            "/v1/auth/password",
            &here,
            Some(json!({"current_password": "not it at all", "new_password": "brand new password"})),
        )
        .await;
    assert_eq!((status, code(&wrong)), (401, "invalid_credentials"));
    let (status, done) = app
        .send(
            Method::POST,
            "/v1/auth/password",
            &here,
            Some(json!({"current_password": here.password, "new_password": "brand new password"})),
        )
        .await;
    assert_eq!((status, done["revoked_sessions"].as_u64()), (200, Some(1)), "{done}");
    other_device.closed_by_server().await;
    let (status, _) = app.get("/v1/me", Some(&here.access_token)).await;
    assert_eq!(status, 200, "this sign-in stays");
    let (status, body) = app.get("/v1/me", Some(&there.access_token)).await;
    assert_eq!((status, code(&body)), (401, "session_revoked"));
    app.login("hal", "brand new password").await;
    app.stop().await;
}

async fn behind_a_trusted_proxy_each_forwarded_address_is_throttled_alone(backend: Backend) {
    let Some(app) = TestApp::spawn_with(backend, |s| {
        s.http.trust_forwarded_for = true;
        s.auth.login_failures_per_address = 2;
        s.auth.login_failures_per_account = 100;
    })
    .await
    else {
        return;
    };
    let ivy = app.user("ivy").await;
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    let wrong = json!({"login": "ivy", "password": "wrong password"});
    for _ in 0..2 {
        let (status, _, _) = app
            .request(Method::POST, "/v1/auth/login", None, Some(wrong.clone()), &from("10.0.0.1, 203.0.113.7"))
            .await;
        assert_eq!(status, 401);
    }
    let right = json!({"login": "ivy", "password": ivy.password});
    let (status, _, body) =
        app.request(Method::POST, "/v1/auth/login", None, Some(right.clone()), &from("203.0.113.7")).await;
    assert_eq!((status, code(&body)), (429, "too_many_attempts"), "that address is throttled");
    let (status, _, body) = app.request(Method::POST, "/v1/auth/login", None, Some(right), &from("203.0.113.8")).await;
    assert_eq!(status, 200, "another client behind the same proxy is not: {body}");
    let token = body["access_token"].as_str().expect("token");
    let (_, _, list) = app.request(Method::GET, "/v1/auth/sessions", Some(token), None, &[]).await;
    let current = list["sessions"].as_array().expect("sessions").iter().find(|s| s["current"] == json!(true)).cloned();
    assert_eq!(current.expect("current")["client_addr"], "203.0.113.8");
    app.stop().await;
}
