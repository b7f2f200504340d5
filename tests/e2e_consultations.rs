//! Consultations over HTTP, with their events reaching both parties' devices over
//! MQTT and through sync; and every refusal (wrong role, wrong party, wrong
//! transition) with its error body and nothing changed.

mod common;

use common::{Backend, Device, TestApp, TestUser};
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(
    a_consultation_is_requested_accepted_and_closed_and_both_parties_devices_follow,
    consultations_refuse_the_wrong_caller_and_the_wrong_transition_without_a_trace,
);

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {body}"))
}

async fn provider(app: &TestApp, username: &str, role: &str) -> TestUser {
    if role == "institution" {
        return institution(app, username).await;
    }
    let password = format!("pw-{username}-long-enough");
    let (status, body) =
        app.post("/v1/auth/register", json!({"username": username, "password": password, "role": "provider"})).await;
    assert_eq!(status, 201, "{body}");
    if role != "provider" {
        let role = role.parse().expect("role");
        parley::app::set_role(&app.settings, username, role, true).await.expect("set role");
    }
    app.login(username, &password).await
}

/// An institution, used through a sign-in its owner opens for it.
async fn institution(app: &TestApp, username: &str) -> TestUser {
    let owner = app.user(&format!("{username}_owner")).await;
    let body = json!({"username": username, "display_name": username});
    let (status, created) = app.send(Method::POST, "/v1/institutions", &owner, Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id");
    let (status, tokens) = app.send(Method::POST, &format!("/v1/institutions/{id}/sessions"), &owner, None).await;
    assert_eq!(status, 200, "{tokens}");
    TestUser {
        id: id.to_string(),
        login: username.to_string(),
        password: String::new(),
        access_token: tokens["access_token"].as_str().expect("access").to_string(),
        refresh_token: tokens["refresh_token"].as_str().expect("refresh").to_string(),
        session_id: tokens["session_id"].as_str().expect("sid").to_string(),
    }
}

/// The next `consultation` event on `device` (of `user`).
async fn next_consultation_event(device: &mut Device, user: &TestUser) -> Value {
    let event = device.next_on(&format!("to/{}/consultation", user.id)).await;
    assert_eq!(event["type"], "consultation", "{event}");
    event
}

/// `user`'s consultation events in its log, through HTTP sync, as (status, id).
async fn synced(app: &TestApp, user: &TestUser) -> Vec<(String, String)> {
    let (status, page) = app.send(Method::GET, "/v1/sync?after=0", user, None).await;
    assert_eq!(status, 200, "{page}");
    page["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "consultation")
        .map(|e| (e["status"].as_str().expect("status").into(), e["id"].as_str().expect("id").into()))
        .collect()
}

async fn a_consultation_is_requested_accepted_and_closed_and_both_parties_devices_follow(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else { return };
    let ann = app.user("ann").await;
    let clinic = provider(&app, "clinic", "institution").await;
    let (mut a, mut c) = (app.device(&ann, "ann-phone").await, app.device(&clinic, "clinic-desk").await);

    let body = json!({"provider_id": clinic.id, "note": "  knee surgery follow-up  "});
    let (status, asked) = app.send(Method::POST, "/v1/consultations", &ann, Some(body)).await;
    assert_eq!(status, 201, "{asked}");
    let id = asked["id"].as_str().expect("id").to_string();
    assert_eq!(
        (asked["user_id"].as_str(), asked["provider_id"].as_str(), asked["status"].as_str()),
        (Some(ann.id.as_str()), Some(clinic.id.as_str()), Some("requested"))
    );
    assert_eq!((asked["note"].as_str(), &asked["conversation_id"]), (Some("knee surgery follow-up"), &Value::Null));
    for (device, user) in [(&mut a, &ann), (&mut c, &clinic)] {
        let event = next_consultation_event(device, user).await;
        assert_eq!((event["id"].as_str(), event["status"].as_str()), (Some(id.as_str()), Some("requested")));
        assert!(event["event_seq"].as_i64().is_some_and(|n| n > 0), "{event}");
    }

    let (status, opened) = app.send(Method::POST, &format!("/v1/consultations/{id}/accept"), &clinic, None).await;
    assert_eq!((status, opened["status"].as_str()), (200, Some("open")), "{opened}");
    assert!(opened["opened_at"].is_string());
    let conversation = opened["conversation_id"].as_str().expect("conversation").to_string();
    for (device, user) in [(&mut a, &ann), (&mut c, &clinic)] {
        let event = next_consultation_event(device, user).await;
        assert_eq!((event["status"].as_str(), event["conversation_id"].as_str()), (Some("open"), Some(&*conversation)));
    }
    let (_, details) = app.send(Method::GET, &format!("/v1/conversations/{conversation}"), &clinic, None).await;
    assert_eq!(
        (details["audience"].as_str(), details["context"]["id"].as_str()),
        (Some("user_institution"), Some(&*id))
    );

    let (status, closed) = app.send(Method::POST, &format!("/v1/consultations/{id}/close"), &clinic, None).await;
    assert_eq!((status, closed["status"].as_str()), (200, Some("closed")));
    assert!(closed["closed_at"].is_string() && closed["opened_at"].is_string(), "{closed}");
    for (device, user) in [(&mut a, &ann), (&mut c, &clinic)] {
        assert_eq!(next_consultation_event(device, user).await["status"], "closed");
    }
    // A device that was away learns the same through sync, in order.
    let expected: Vec<(String, String)> = ["requested", "open", "closed"].map(|s| (s.into(), id.clone())).to_vec();
    assert_eq!(synced(&app, &ann).await, expected);
    assert_eq!(synced(&app, &clinic).await, expected);

    // Another one may now be asked for; the listing shows both, newest first, by status, in pages.
    let body = json!({"provider_id": clinic.id});
    let (status, second) = app.send(Method::POST, "/v1/consultations", &ann, Some(body)).await;
    assert_eq!((status, second["note"].clone()), (201, Value::Null));
    let (_, all) = app.send(Method::GET, "/v1/consultations", &clinic, None).await;
    let ids: Vec<&str> =
        all["consultations"].as_array().expect("list").iter().map(|c| c["id"].as_str().expect("id")).collect();
    assert_eq!(ids, vec![second["id"].as_str().expect("id"), id.as_str()]);
    let (_, closed_only) = app.send(Method::GET, "/v1/consultations?status=closed", &ann, None).await;
    assert_eq!(closed_only["consultations"].as_array().expect("list").len(), 1);
    assert_eq!(closed_only["consultations"][0]["id"], id.as_str());
    let (_, page) = app.send(Method::GET, "/v1/consultations?limit=1", &ann, None).await;
    assert_eq!(page["consultations"][0]["id"], second["id"]);
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let (_, next) = app.send(Method::GET, &format!("/v1/consultations?limit=1&cursor={cursor}"), &ann, None).await;
    assert_eq!(next["consultations"][0]["id"], id.as_str());
    let (_, one) = app.send(Method::GET, &format!("/v1/consultations/{id}"), &clinic, None).await;
    assert_eq!(one, closed);
    app.stop().await;
}

async fn consultations_refuse_the_wrong_caller_and_the_wrong_transition_without_a_trace(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else { return };
    let (ann, bob) = (app.user("ann").await, app.user("bob").await);
    let (doc, mid) = (provider(&app, "doc", "provider").await, provider(&app, "mid", "provider").await);
    let root = provider(&app, "root", "admin").await;
    let ask = |who: &TestUser, body: Value| {
        let (app, who) = (&app, who.clone());
        async move { app.send(Method::POST, "/v1/consultations", &who, Some(body)).await }
    };

    // Wrong askers and targets.
    let (status, body) = ask(&doc, json!({"provider_id": mid.id})).await;
    assert_eq!((status, code(&body)), (403, "users_only"));
    let (status, body) = ask(&ann, json!({"provider_id": bob.id})).await;
    assert_eq!((status, code(&body)), (422, "not_a_provider"));
    let (status, body) = ask(&ann, json!({"provider_id": uuid::Uuid::now_v7()})).await;
    assert_eq!((status, code(&body)), (404, "user_not_found"));
    let (status, body) = ask(&ann, json!({"provider_id": doc.id, "note": "x".repeat(1001)})).await;
    assert_eq!((status, code(&body)), (422, "invalid_note"));
    let (status, body) = ask(&ann, json!({"provider_id": doc.id, "price": 0})).await;
    assert_eq!((status, code(&body)), (422, "invalid_json"));
    for who in [&ann, &bob, &doc, &mid] {
        let (_, list) = app.send(Method::GET, "/v1/consultations", who, None).await;
        assert_eq!(list["consultations"], json!([]), "nothing was recorded");
    }

    let (status, asked) = ask(&ann, json!({"provider_id": doc.id})).await;
    assert_eq!(status, 201, "{asked}");
    let id = asked["id"].as_str().expect("id").to_string();
    let (status, body) = ask(&ann, json!({"provider_id": doc.id})).await;
    assert_eq!((status, code(&body)), (409, "consultation_exists"));
    let (_, before) = app.send(Method::GET, "/v1/sync?after=0", &ann, None).await;

    // The user accepting its own request, another provider accepting, a stranger closing.
    let accept = format!("/v1/consultations/{id}/accept");
    let close = format!("/v1/consultations/{id}/close");
    let (status, body) = app.send(Method::POST, &accept, &ann, None).await;
    assert_eq!((status, code(&body)), (403, "not_the_provider"));
    let (status, body) = app.send(Method::POST, &accept, &mid, None).await;
    assert_eq!((status, code(&body)), (404, "consultation_not_found"), "mid may not even know it exists");
    let (status, body) = app.send(Method::POST, &close, &bob, None).await;
    assert_eq!((status, code(&body)), (404, "consultation_not_found"));
    let (status, body) = app.send(Method::GET, &format!("/v1/consultations/{id}"), &bob, None).await;
    assert_eq!((status, code(&body)), (404, "consultation_not_found"));
    let (status, body) = app.send(Method::POST, "/v1/consultations/not-a-uuid/accept", &doc, None).await;
    assert_eq!((status, code(&body)), (400, "invalid_path"));
    let (_, still) = app.send(Method::GET, &format!("/v1/consultations/{id}"), &doc, None).await;
    assert_eq!(still, asked, "unchanged");
    let (_, after) = app.send(Method::GET, "/v1/sync?after=0", &ann, None).await;
    assert_eq!(before["last_seq"], after["last_seq"], "no event for a refusal");
    let (_, mine) = app.send(Method::GET, "/v1/conversations", &ann, None).await;
    assert_eq!(mine["conversations"], json!([]), "no conversation was opened");

    // An admin may accept; then only a close moves it, once.
    let (status, opened) = app.send(Method::POST, &accept, &root, None).await;
    assert_eq!((status, opened["status"].as_str()), (200, Some("open")), "{opened}");
    let (status, body) = app.send(Method::POST, &accept, &doc, None).await;
    assert_eq!((status, code(&body)), (409, "invalid_transition"));
    let (status, _) = app.send(Method::POST, &close, &doc, None).await;
    assert_eq!(status, 200);
    let (status, body) = app.send(Method::POST, &close, &ann, None).await;
    assert_eq!((status, code(&body)), (409, "invalid_transition"));
    let (status, body) = app.send(Method::POST, &accept, &doc, None).await;
    assert_eq!((status, code(&body)), (409, "invalid_transition"), "no reopening");
    let (_, last) = app.send(Method::GET, &format!("/v1/consultations/{id}"), &ann, None).await;
    assert_eq!(last["status"], "closed");

    let (status, body) = app.send(Method::GET, "/v1/consultations?status=pending", &ann, None).await;
    assert_eq!((status, code(&body)), (422, "invalid_status"));
    let (status, body) = app.send(Method::GET, "/v1/consultations?cursor=nope", &ann, None).await;
    assert_eq!((status, code(&body)), (400, "invalid_cursor"));
    app.stop().await;
}
