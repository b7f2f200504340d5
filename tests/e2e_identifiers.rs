//! Changing how an account logs in, through the real HTTP API with mail and SMS
//! going to fakes of the providers: a new email or phone proven by code before it
//! replaces the old, removals that keep one identifier, usernames, and addresses
//! squatted without proof released to their owners.

mod common;

use std::time::Duration;

use common::{Backend, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(
    a_new_email_is_proven_by_code_before_it_replaces_the_old,
    identifiers_are_removed_or_renamed_while_one_remains,
    an_address_squatted_without_proof_is_released_to_its_owner,
);

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {body}"))
}

async fn a_new_email_is_proven_by_code_before_it_replaces_the_old(backend: Backend) {
    let Some((app, outbox)) = TestApp::spawn_with_outbox(backend, |_| {}).await else { return };
    let password = "long enough pw";
    let (status, _) = app.post("/v1/auth/register", json!({"email": "ada@old.example", "password": password})).await;
    assert_eq!(status, 201);
    let first = outbox.code("ada@old.example", 1).await;
    let (status, _) = app.post("/v1/auth/verify", json!({"identifier": "ada@old.example", "code": first})).await;
    assert_eq!(status, 200);
    let ada = app.login("ada@old.example", password).await;
    let bob = app.user("bob").await;

    // The password is checked first: a stolen token alone cannot move the account.
    let wrong = json!({"value": "ada@new.example", "password": "not her password"});
    let (status, body) = app.send(Method::POST, "/v1/me/email", &ada, Some(wrong)).await;
    assert_eq!((status, code(&body)), (401, "invalid_credentials"));
    assert!(outbox.nothing_more("ada@new.example", 0, Duration::from_millis(200)).await);
    let (status, body) = app
        .send(Method::POST, "/v1/me/email", &ada, Some(json!({"value": "ada@old.example", "password": password})))
        .await;
    assert_eq!((status, code(&body)), (422, "identifier_unchanged"));
    let (status, body) = app
        .send(Method::POST, "/v1/me/email", &ada, Some(json!({"value": "not-an-email", "password": password})))
        .await;
    assert_eq!((status, code(&body)), (422, "invalid_email"));
    let (status, sent) = app
        .send(Method::POST, "/v1/me/email", &ada, Some(json!({"value": "Ada@New.example", "password": password})))
        .await;
    assert_eq!((status, sent["sent_to"].as_str()), (202, Some("ada@new.example")));
    let new_code = outbox.code("ada@new.example", 1).await;

    // Until the code comes back, the old address is the account's and the new one is nobody's.
    let (_, me) = app.send(Method::GET, "/v1/me", &ada, None).await;
    assert_eq!((me["email"].as_str(), me["email_verified"].as_bool()), (Some("ada@old.example"), Some(true)));
    let (status, _) = app.post("/v1/auth/login", json!({"login": "ada@new.example", "password": password})).await;
    assert_eq!(status, 401);
    // Someone else cannot redeem Ada's code (and trying does not use it up).
    let (status, body) = app
        .send(Method::POST, "/v1/me/email/verify", &bob, Some(json!({"value": "ada@new.example", "code": new_code})))
        .await;
    assert_eq!((status, code(&body)), (422, "invalid_code"));
    let (_, bobs) = app.send(Method::GET, "/v1/me", &bob, None).await;
    assert!(bobs["email"].is_null(), "{bobs}");
    let (status, sent) = app
        .send(Method::POST, "/v1/me/email", &ada, Some(json!({"value": "ada@new.example", "password": password})))
        .await;
    assert_eq!((status, code(&sent)), (429, "too_many_codes"), "resends are throttled as sign-up codes are");
    let (status, me) = app
        .send(Method::POST, "/v1/me/email/verify", &ada, Some(json!({"value": "ada@new.example", "code": new_code})))
        .await;
    assert_eq!(
        (status, me["email"].as_str(), me["email_verified"].as_bool()),
        (200, Some("ada@new.example"), Some(true))
    );
    app.login("ada@new.example", password).await;
    let (status, _) = app.post("/v1/auth/login", json!({"login": "ada@old.example", "password": password})).await;
    assert_eq!(status, 401, "the old address is no longer hers");

    // Taken addresses are refused before any code goes out.
    let bobs_password = bob.password.clone();
    let (status, body) = app
        .send(Method::POST, "/v1/me/email", &bob, Some(json!({"value": "ada@new.example", "password": bobs_password})))
        .await;
    assert_eq!((status, code(&body)), (409, "identifier_taken"));
    assert_eq!(outbox.to("ada@new.example").len(), 1);
    app.stop().await;
}

async fn identifiers_are_removed_or_renamed_while_one_remains(backend: Backend) {
    let Some((app, outbox)) = TestApp::spawn_with_outbox(backend, |_| {}).await else { return };
    let password = "long enough pw";
    let (status, _) =
        app.post("/v1/auth/register", json!({"username": "cat", "phone": "+15550001111", "password": password})).await;
    assert_eq!(status, 201);
    let sms = outbox.code("+15550001111", 1).await;
    app.post("/v1/auth/verify", json!({"identifier": "+15550001111", "code": sms})).await;
    let cat = app.login("cat", password).await;
    app.user("dan").await;

    let (status, body) = app.send(Method::PUT, "/v1/me/username", &cat, Some(json!({"username": "Dan"}))).await;
    assert_eq!((status, code(&body)), (409, "identifier_taken"));
    let (status, body) = app.send(Method::PUT, "/v1/me/username", &cat, Some(json!({"username": "1bad"}))).await;
    assert_eq!((status, code(&body)), (422, "invalid_username"));
    let (status, me) = app.send(Method::PUT, "/v1/me/username", &cat, Some(json!({"username": "Catherine"}))).await;
    assert_eq!((status, me["username"].as_str()), (200, Some("catherine")));
    app.login("catherine", password).await;
    let (status, _) = app.post("/v1/auth/login", json!({"login": "cat", "password": password})).await;
    assert_eq!(status, 401);

    // The phone goes only with the password; then the username is all that is left.
    let (status, body) =
        app.send(Method::DELETE, "/v1/me/phone", &cat, Some(json!({"password": "wrong password"}))).await;
    assert_eq!((status, code(&body)), (401, "invalid_credentials"));
    let (status, me) = app.send(Method::DELETE, "/v1/me/phone", &cat, Some(json!({"password": password}))).await;
    assert_eq!((status, me["phone"].clone(), me["phone_verified"].as_bool()), (200, Value::Null, Some(false)));
    let (status, body) = app.send(Method::PUT, "/v1/me/username", &cat, Some(json!({"username": null}))).await;
    assert_eq!((status, code(&body)), (409, "last_identifier"));
    let (status, body) = app.send(Method::DELETE, "/v1/me/email", &cat, Some(json!({"password": password}))).await;
    assert_eq!(
        (status, body["email"].clone(), body["username"].as_str()),
        (200, Value::Null, Some("catherine")),
        "removing what is not there is no change"
    );
    let (_, me) = app.send(Method::GET, "/v1/me", &cat, None).await;
    assert_eq!(me["username"], "catherine");
    // The profile route still refuses identifiers, pointing to these routes.
    let (status, body) = app.send(Method::PATCH, "/v1/me", &cat, Some(json!({"email": "cat@example.com"}))).await;
    assert_eq!(status, 403);
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("/v1/me/email"), "{body}");
    app.stop().await;
}

async fn an_address_squatted_without_proof_is_released_to_its_owner(backend: Backend) {
    let Some((app, outbox)) = TestApp::spawn_with_outbox(backend, |s| s.auth.unverified_release_secs = 1).await else {
        return;
    };
    // Mallory registers Victor's address and never proves it.
    let (status, _) =
        app.post("/v1/auth/register", json!({"email": "victor@example.com", "password": "mallory's password"})).await;
    assert_eq!(status, 201);
    let (status, body) =
        app.post("/v1/auth/register", json!({"email": "victor@example.com", "password": "victor's password"})).await;
    assert_eq!((status, code(&body)), (409, "identifier_taken"), "within the release time it is held");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // Past it, Victor's sign-up takes the address and gets the code; Mallory's account is gone.
    let (status, created) =
        app.post("/v1/auth/register", json!({"email": "victor@example.com", "password": "victor's password"})).await;
    assert_eq!((status, created["codes_sent"].clone()), (201, json!(["victor@example.com"])), "{created}");
    let code2 = outbox.code("victor@example.com", 2).await;
    let (status, me) = app.post("/v1/auth/verify", json!({"identifier": "victor@example.com", "code": code2})).await;
    assert_eq!((status, me["id"].clone()), (200, created["user"]["id"].clone()));
    let (status, body) =
        app.post("/v1/auth/login", json!({"login": "victor@example.com", "password": "mallory's password"})).await;
    assert_eq!((status, code(&body)), (401, "invalid_credentials"));
    app.login("victor@example.com", "victor's password").await;
    // The housekeeping job releases the rest the same way.
    let (status, _) = app
        .post("/v1/auth/register", json!({"username": "sam", "phone": "+15550009999", "password": "sam's password"}))
        .await;
    assert_eq!(status, 201);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let now = chrono::Utc::now().timestamp_millis();
    let released = app.running().store.release_unverified(now - 1_000, None).await.expect("release");
    assert_eq!((released.accounts, released.identifiers), (0, 1));
    let sam = app.login("sam", "sam's password").await;
    let (_, me) = app.send(Method::GET, "/v1/me", &sam, None).await;
    assert!(me["phone"].is_null(), "{me}");
    app.stop().await;
}
