//! The HTTP API as apps and admins use it: accounts, history access rules,
//! and errors that are JSON in one shape whatever went wrong.

mod common;

use common::{Backend, TestApp};
use serde_json::{json, Value};

both_backends!(
    registration_validates_and_refuses_taken_identifiers,
    login_works_with_any_identifier_and_hides_which_part_was_wrong,
    refresh_tokens_rotate_and_are_single_use,
    only_members_read_a_conversation,
    bad_requests_get_json_errors,
    operations_endpoints_report_health_readiness_and_the_api,
);

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {body}"))
}

async fn registration_validates_and_refuses_taken_identifiers(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let cases = [
        (json!({"password": "long enough pw"}), 422, "identifier_required"),
        (json!({"username": "ab", "password": "long enough pw"}), 422, "invalid_username"),
        (json!({"email": "not-an-email", "password": "long enough pw"}), 422, "invalid_email"),
        (json!({"phone": "5551234", "password": "long enough pw"}), 422, "invalid_phone"),
        (json!({"username": "ada", "password": "short"}), 422, "weak_password"),
        (json!({"username": "ada", "password": "long enough pw", "role": "admin"}), 403, "role_not_allowed"),
        (json!({"username": "ada", "password": "long enough pw", "role": "device"}), 403, "role_not_allowed"),
        (json!({"username": "ada", "password": "long enough pw", "verified": true}), 422, "invalid_json"),
    ];
    for (body, status, expected) in &cases {
        let (got, resp) = app.post("/v1/auth/register", body.clone()).await;
        assert_eq!((got, code(&resp)), (*status, *expected), "{body}");
    }
    let (status, created) = app
        .post("/v1/auth/register", json!({"username": "Ada", "email": "Ada@Example.com", "phone": "+1 555 123 4567", "password": "long enough pw"}))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["user"]["username"], "ada");
    assert_eq!(created["user"]["email"], "ada@example.com");
    assert_eq!(created["user"]["phone"], "+15551234567");
    assert!(created["user"].get("password_hash").is_none());
    for taken in [
        json!({"username": "ADA", "password": "long enough pw"}),
        json!({"email": "ada@EXAMPLE.com", "password": "long enough pw"}),
    ] {
        let (status, resp) = app.post("/v1/auth/register", taken.clone()).await;
        assert_eq!((status, code(&resp)), (409, "identifier_taken"), "{taken}");
    }
    app.stop().await;
}

async fn login_works_with_any_identifier_and_hides_which_part_was_wrong(backend: Backend) {
    let Some((app, outbox)) = TestApp::spawn_with_outbox(backend, |_| {}).await else {
        return;
    };
    let (status, _) = app
        .post("/v1/auth/register", json!({"username": "lin", "email": "lin@example.com", "phone": "+15550001111", "password": "long enough pw"}))
        .await;
    assert_eq!(status, 201);
    for identifier in ["lin@example.com", "+15550001111"] {
        let code = outbox.code(identifier, 1).await;
        let (status, _) = app.post("/v1/auth/verify", json!({"identifier": identifier, "code": code})).await;
        assert_eq!(status, 200);
    }
    let mut ids = Vec::new();
    for login in ["lin", "LIN@example.com", "+1 555 000 1111"] {
        let user = app.login(login, "long enough pw").await;
        let (status, me) = app.get("/v1/me", Some(&user.access_token)).await;
        assert_eq!(status, 200);
        ids.push(me["id"].as_str().expect("id").to_string());
    }
    assert!(ids.iter().all(|id| id == &ids[0]));
    let (s1, wrong_password) =
        app.post("/v1/auth/login", json!({"login": "lin", "password": "not the password"})).await;
    let (s2, unknown_user) =
        app.post("/v1/auth/login", json!({"login": "nobody", "password": "not the password"})).await;
    assert_eq!((s1, s2), (401, 401));
    assert_eq!(wrong_password, unknown_user, "the answer must not tell which part was wrong");
    assert_eq!(code(&wrong_password), "invalid_credentials");
    app.stop().await;
}

async fn refresh_tokens_rotate_and_are_single_use(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let ada = app.user("ada").await;
    let (status, fresh) = app.post("/v1/auth/refresh", json!({"refresh_token": ada.refresh_token})).await;
    assert_eq!(status, 200, "{fresh}");
    assert_ne!(fresh["refresh_token"], json!(ada.refresh_token));
    let (status, me) = app.get("/v1/me", fresh["access_token"].as_str()).await;
    assert_eq!((status, me["id"].as_str()), (200, Some(ada.id.as_str())));
    let (status, fresher) = app.post("/v1/auth/refresh", json!({"refresh_token": fresh["refresh_token"]})).await;
    assert_eq!(status, 200, "{fresher}");
    // The first token again, after its successor was used: theft. The sign-in ends.
    let (status, reused) = app.post("/v1/auth/refresh", json!({"refresh_token": ada.refresh_token})).await;
    assert_eq!((status, code(&reused)), (401, "refresh_token_reused"));
    let (status, after) = app.post("/v1/auth/refresh", json!({"refresh_token": fresher["refresh_token"]})).await;
    assert_eq!((status, code(&after)), (401, "invalid_refresh_token"));
    let (status, me) = app.get("/v1/me", fresher["access_token"].as_str()).await;
    assert_eq!((status, code(&me)), (401, "session_revoked"));
    let (status, bogus) = app.post("/v1/auth/refresh", json!({"refresh_token": "made-up"})).await;
    assert_eq!((status, code(&bogus)), (401, "invalid_refresh_token"));
    app.stop().await;
}

async fn only_members_read_a_conversation(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let eve = app.user("eve").await;
    let mut a = app.device(&alice, "alice-phone").await;
    for i in 0..5 {
        a.publish_json(
            &format!("from/{}/msg", alice.id),
            &json!({"id": format!("m{i}"), "to": bob.id, "text": format!("n{i}")}),
        )
        .await;
    }
    let mut conversation = Value::Null;
    for _ in 0..5 {
        conversation = a.next_on(&format!("to/{}/ack", alice.id)).await["conversation_id"].clone();
    }
    let conversation = conversation.as_str().expect("conversation id").to_string();
    let path = format!("/v1/conversations/{conversation}/messages");

    let (status, page) = app.get(&format!("{path}?limit=2"), Some(&bob.access_token)).await;
    assert_eq!(status, 200);
    let texts: Vec<_> = page["messages"].as_array().expect("messages").iter().map(|m| m["text"].clone()).collect();
    assert_eq!((texts, page["has_more"].clone()), (vec![json!("n3"), json!("n4")], json!(true)));
    let (_, older) = app.get(&format!("{path}?before=4&limit=10"), Some(&bob.access_token)).await;
    assert_eq!(older["messages"].as_array().expect("messages").len(), 3);
    assert_eq!(older["has_more"], false);

    let (status, denied) = app.get(&path, Some(&eve.access_token)).await;
    let (status2, missing) =
        app.get(&format!("/v1/conversations/{}/messages", uuid::Uuid::now_v7()), Some(&eve.access_token)).await;
    assert_eq!((status, status2), (404, 404));
    assert_eq!(denied, missing, "a non-member cannot tell the conversation exists");
    let (_, eves) = app.get("/v1/conversations", Some(&eve.access_token)).await;
    assert_eq!(eves["conversations"], json!([]));
    let (status, anonymous) = app.get(&path, None).await;
    assert_eq!((status, code(&anonymous)), (401, "unauthenticated"));
    let (status, forged) = app.get(&path, Some("eyJhbGciOiJub25lIn0.e30.")).await;
    assert_eq!((status, code(&forged)), (401, "unauthenticated"));
    app.stop().await;
}

async fn bad_requests_get_json_errors(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let ada = app.user("ada").await;
    let token = Some(ada.access_token.as_str());
    let id = uuid::Uuid::now_v7();
    for (path, status, expected) in [
        (format!("/v1/conversations/{id}/messages?limit=many"), 400, "invalid_query"),
        (format!("/v1/conversations/{id}/messages?before=-1"), 404, "conversation_not_found"),
        ("/v1/conversations/not-a-uuid/messages".to_string(), 400, "invalid_path"),
        ("/v1/conversations?cursor=garbage".to_string(), 400, "invalid_cursor"),
        ("/v1/nothing-here".to_string(), 404, "route_not_found"),
    ] {
        let (got, body) = app.get(&path, token).await;
        assert_eq!((got, code(&body)), (status, expected), "{path}");
    }
    let resp = app
        .client
        .post(format!("{}/v1/auth/login", app.http))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .expect("http");
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(code(&resp.json::<Value>().await.expect("json")), "invalid_json");
    let resp = app.client.delete(format!("{}/v1/auth/login", app.http)).send().await.expect("http");
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(code(&resp.json::<Value>().await.expect("json")), "method_not_allowed");
    app.stop().await;
}

async fn operations_endpoints_report_health_readiness_and_the_api(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    assert_eq!(app.get("/healthz", None).await, (200, json!({"status": "ok"})));
    let (status, ready) = app.get("/readyz", None).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["checks"], json!({"database": "ok", "bus": "ok", "gate": "ok"}));
    let (status, doc) = app.get("/openapi.json", None).await;
    assert_eq!(status, 200);
    for path in [
        "/v1/auth/register",
        "/v1/auth/login",
        "/v1/auth/refresh",
        "/v1/conversations",
        "/v1/conversations/{id}/messages",
        "/v1/consultations",
        "/v1/consultations/{id}/accept",
        "/v1/consultations/{id}/close",
        "/readyz",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
    }
    assert!(doc["components"]["schemas"].get("Message").is_some());
    assert!(doc["components"]["schemas"].get("Consultation").is_some());
    app.running().store.close().await;
    let (status, unready) = app.get("/readyz", None).await;
    assert_eq!((status, unready["status"].as_str()), (503, Some("unready")));
    assert_eq!(unready["checks"]["database"], "unreachable");
}
