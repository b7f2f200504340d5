//! Kiosk devices through the real HTTP API and real MQTT connections: provisioned
//! by an institution's admins (or a platform admin), their secret exchanged for
//! short-lived tokens whose rights the gate and the API enforce, and renewing,
//! re-scoping or retiring a device closing its connections.

mod common;

use std::time::Duration;

use common::{Backend, TestApp, TestUser};
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(
    kiosks_exchange_their_secret_for_tokens_limited_to_their_rights,
    renewing_rescoping_or_retiring_a_kiosk_closes_its_connections,
);

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {body}"))
}

async fn clinic(app: &TestApp, owner: &TestUser) -> String {
    let body = json!({"username": "stmary", "display_name": "St. Mary Clinic"});
    let (status, created) = app.send(Method::POST, "/v1/institutions", owner, Some(body)).await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().expect("id").to_string()
}

/// Provisions a kiosk; returns (device id, secret).
async fn provision(app: &TestApp, by: &TestUser, body: Value) -> (String, String) {
    let (status, created) = app.send(Method::POST, "/v1/devices", by, Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let id = created["device"]["id"].as_str().expect("id").to_string();
    (id, created["secret"].as_str().expect("secret").to_string())
}

async fn exchange(app: &TestApp, id: &str, secret: &str) -> (u16, Value) {
    app.post("/v1/auth/device-token", json!({"device_id": id, "secret": secret})).await
}

/// The kiosk as a client: its token used like a user's.
async fn kiosk(app: &TestApp, id: &str, secret: &str) -> TestUser {
    let (status, body) = exchange(app, id, secret).await;
    assert_eq!(status, 200, "{body}");
    TestUser {
        id: id.to_string(),
        login: String::new(),
        password: String::new(),
        access_token: body["access_token"].as_str().expect("token").to_string(),
        refresh_token: String::new(),
        session_id: String::new(),
    }
}

async fn kiosks_exchange_their_secret_for_tokens_limited_to_their_rights(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else { return };
    let (ann, cat, eve) = (app.user("ann").await, app.user("cat").await, app.user("eve").await);
    let clinic = clinic(&app, &ann).await;
    // Only the institution's owners and admins (or a platform admin) provision for it.
    let lobby = json!({"label": "Lobby kiosk", "institution_id": clinic, "rights": ["send", "receipts"]});
    let (status, body) = app.send(Method::POST, "/v1/devices", &eve, Some(lobby.clone())).await;
    assert_eq!((status, code(&body)), (403, "not_institution_member"));
    let (status, body) = app.send(Method::POST, "/v1/devices", &eve, Some(json!({"label": "Mine"}))).await;
    assert_eq!((status, code(&body)), (403, "institution_role_required"));
    let bad = json!({"label": "Lobby", "institution_id": clinic, "rights": ["send", "root"]});
    let (status, body) = app.send(Method::POST, "/v1/devices", &ann, Some(bad)).await;
    assert_eq!((status, code(&body)), (422, "invalid_rights"));
    let (id, secret) = provision(&app, &ann, lobby).await;
    let (_, listed) = app.send(Method::GET, &format!("/v1/devices?institution_id={clinic}"), &ann, None).await;
    assert_eq!(listed["devices"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["devices"][0]["rights"], json!(["send", "receipts"]));
    assert!(listed["devices"][0].get("secret").is_none(), "the secret is shown once");
    let (status, _) = app.send(Method::GET, &format!("/v1/devices/{id}"), &eve, None).await;
    assert_eq!(status, 404, "someone else's device is not there");

    // Wrong secrets and unknown devices get the same answer; the secret opens a token.
    let (status, wrong) = exchange(&app, &id, "pds_not-the-secret").await;
    let (_, unknown) = exchange(&app, &parley_wire::UserId::new().to_string(), &secret).await;
    assert_eq!((status, code(&wrong)), (401, "invalid_credentials"));
    assert_eq!(wrong, unknown);
    let (status, token) = exchange(&app, &id, &secret).await;
    assert_eq!(
        (status, token["device_id"].as_str(), token["rights"].clone()),
        (200, Some(id.as_str()), json!(["send", "receipts"]))
    );
    assert!(token.get("refresh_token").is_none());
    let device = kiosk(&app, &id, &secret).await;
    let (status, body) = app
        .post("/v1/auth/login", json!({"login": format!("device.{}", id.replace('-', "")), "password": secret}))
        .await;
    assert_eq!((status, code(&body)), (401, "invalid_credentials"), "devices never log in with a password");

    // What people do is refused to the device; what its rights lack is refused too.
    let group = json!({"kind": "group", "title": "Lobby", "members": [cat.id]});
    for (method, path, body, expected) in [
        (Method::POST, "/v1/conversations".to_string(), group, "device_not_allowed"),
        (Method::POST, "/v1/contacts".to_string(), json!({"user_id": cat.id}), "device_not_allowed"),
        (Method::GET, "/v1/users?name=cat".to_string(), Value::Null, "device_not_allowed"),
        (Method::PATCH, "/v1/me".to_string(), json!({"display_name": "Hacked"}), "device_not_allowed"),
        (Method::POST, "/v1/auth/logout".to_string(), Value::Null, "device_not_allowed"),
        (Method::POST, "/v1/devices".to_string(), json!({"label": "Clone"}), "device_not_allowed"),
    ] {
        let body = (!body.is_null()).then_some(body);
        let (status, answer) = app.send(method.clone(), &path, &device, body).await;
        assert_eq!((status, code(&answer)), (403, expected), "{method} {path}");
    }
    let (status, me) = app.send(Method::GET, "/v1/me", &device, None).await;
    assert_eq!((status, me["display_name"].as_str(), me["role"].as_str()), (200, Some("Lobby kiosk"), Some("device")));

    // Ann puts the kiosk in a group with Cat; it chats there over MQTT.
    let body = json!({"kind": "group", "title": "Lobby", "members": [cat.id, id]});
    let (status, created) = app.send(Method::POST, "/v1/conversations", &ann, Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let group = created["id"].as_str().expect("group").to_string();
    let (status, body) = app
        .send(Method::PATCH, &format!("/v1/conversations/{group}/settings"), &device, Some(json!({"pinned": true})))
        .await;
    assert_eq!((status, code(&body)), (403, "right_required"), "no `settings` right");
    let mut screen = app.device(&device, "lobby-screen").await;
    let mut cat_phone = app.device(&cat, "cat-phone").await;
    screen
        .publish_json(&format!("from/{id}/msg"), &json!({"id": "k1", "conversation_id": group, "text": "Welcome!"}))
        .await;
    assert_eq!(screen.next_on(&format!("to/{id}/ack")).await["seq"], 2);
    let got = cat_phone.next_message_from(&cat.id, &id).await;
    assert_eq!(got["text"], "Welcome!");
    // Typing is not among its rights: refused at the gate with an error event, nobody sees it.
    screen.publish_json(&format!("from/{id}/typing"), &json!({"conversation_id": group, "typing": true})).await;
    let refused = screen.next_on(&format!("to/{id}/error")).await;
    assert_eq!(
        (refused["error"]["code"].as_str(), refused["topic"].as_str()),
        (Some("not_authorized"), Some(format!("from/{id}/typing").as_str()))
    );
    assert!(cat_phone.nothing_on(&format!("to/{}/typing", cat.id), Duration::from_millis(300)).await);
    // Receipts are: Cat's message is marked read by the kiosk.
    let (status, read) =
        app.send(Method::POST, &format!("/v1/conversations/{group}/read"), &device, Some(json!({"seq": 2}))).await;
    assert_eq!((status, read["unread"].as_i64()), (200, Some(0)), "{read}");
    let (status, _) = app.send(Method::GET, &format!("/v1/conversations/{group}/messages"), &device, None).await;
    assert_eq!(status, 200, "reading is always allowed");
    assert_eq!(app.message_rows().await, 2, "the group notice and the kiosk's one message");
    app.stop().await;
}

async fn renewing_rescoping_or_retiring_a_kiosk_closes_its_connections(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else { return };
    let (ann, root) = (app.user("ann").await, app.user("root").await);
    let clinic = clinic(&app, &ann).await;
    let (id, secret) = provision(&app, &ann, json!({"label": "Lobby", "institution_id": clinic})).await;
    let path = format!("/v1/devices/{id}");

    // New rights: the connection closes and the old token stops; the next exchange carries them.
    let before = kiosk(&app, &id, &secret).await;
    let screen = app.device(&before, "screen").await;
    let (status, updated) =
        app.send(Method::PATCH, &path, &ann, Some(json!({"rights": ["typing"], "label": "Lobby 2"}))).await;
    assert_eq!(
        (status, updated["rights"].clone(), updated["label"].as_str()),
        (200, json!(["typing"]), Some("Lobby 2"))
    );
    screen.closed_by_server().await;
    let (status, body) = app.send(Method::GET, "/v1/me", &before, None).await;
    assert_eq!((status, code(&body)), (401, "session_revoked"));
    let (_, token) = exchange(&app, &id, &secret).await;
    assert_eq!(token["rights"], json!(["typing"]));

    // A new secret: the old one stops working at once.
    let now = kiosk(&app, &id, &secret).await;
    let screen = app.device(&now, "screen").await;
    let (status, renewed) = app.send(Method::POST, &format!("{path}/secret"), &ann, None).await;
    assert_eq!(status, 200, "{renewed}");
    let new_secret = renewed["secret"].as_str().expect("secret").to_string();
    assert_ne!(new_secret, secret);
    screen.closed_by_server().await;
    let (status, body) = exchange(&app, &id, &secret).await;
    assert_eq!((status, code(&body)), (401, "invalid_credentials"));
    let now = kiosk(&app, &id, &new_secret).await;

    // Retired: connections close, the secret is refused with a clear reason, nothing changes it back.
    let screen = app.device(&now, "screen").await;
    let (status, _) = app.send(Method::DELETE, &path, &ann, None).await;
    assert_eq!(status, 204);
    screen.closed_by_server().await;
    let (status, body) = exchange(&app, &id, &new_secret).await;
    assert_eq!((status, code(&body)), (401, "device_retired"));
    let (status, body) = app.send(Method::POST, &format!("{path}/secret"), &ann, None).await;
    assert_eq!((status, code(&body)), (409, "device_retired"));
    let (_, shown) = app.send(Method::GET, &path, &ann, None).await;
    assert!(shown["retired_at"].is_string(), "{shown}");

    // A platform admin sees every device; others cannot list them all.
    let (status, body) = app.send(Method::GET, "/v1/devices", &ann, None).await;
    assert_eq!((status, code(&body)), (403, "institution_role_required"));
    parley::app::set_role(&app.settings, "root", parley_wire::Role::Admin, false).await.expect("admin");
    let (status, all) = app.send(Method::GET, "/v1/devices", &root, None).await;
    assert_eq!((status, all["devices"].as_array().map(Vec::len)), (200, Some(1)));
    app.stop().await;
}
