//! Providers' availability as part of presence: set over HTTP (`PATCH /v1/me`) or
//! MQTT (`from/{uid}/presence`), announced to contacts and partners like any
//! presence change, shown by `GET /v1/presence` and the contacts list; refused for
//! accounts that have none.

mod common;

use std::time::Duration;

use common::{Backend, Device, TestApp, TestUser};
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(a_providers_availability_reaches_its_contacts_devices_as_presence);

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {body}"))
}

/// The next presence signal about `user` on `device` (of `receiver`).
async fn next_presence_of(device: &mut Device, receiver: &TestUser, user: &TestUser) -> Value {
    let topic = format!("to/{}/presence", receiver.id);
    device
        .next_matching(|p| match p {
            rumqttc::Packet::Publish(p) if p.topic == topic => {
                let v: Value = serde_json::from_slice(&p.payload).expect("json");
                (v["user_id"] == user.id.as_str()).then_some(v)
            }
            _ => None,
        })
        .await
}

/// Whether no presence signal about `user` reaches `device` (of `receiver`) for a moment.
async fn no_presence_of(device: &mut Device, receiver: &TestUser, user: &TestUser) -> bool {
    let topic = format!("to/{}/presence", receiver.id);
    let about = |p: &rumqttc::Packet| match p {
        rumqttc::Packet::Publish(p) if p.topic == topic => {
            serde_json::from_slice::<Value>(&p.payload).is_ok_and(|v| v["user_id"] == user.id.as_str())
        }
        _ => false,
    };
    device.nothing_matching(about, Duration::from_millis(300)).await
}

async fn a_providers_availability_reaches_its_contacts_devices_as_presence(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else { return };
    let password = "pw-doc-long-enough";
    let register = json!({"username": "doc", "password": password, "role": "provider"});
    assert_eq!(app.post("/v1/auth/register", register).await.0, 201);
    let doc = app.login("doc", password).await;
    let (ann, eve) = (app.user("ann").await, app.user("eve").await);
    app.send(Method::POST, "/v1/contacts", &ann, Some(json!({"user_id": doc.id}))).await;
    let (status, _) = app.send(Method::POST, &format!("/v1/contacts/{}/accept", ann.id), &doc, None).await;
    assert_eq!(status, 200);
    let (mut a, mut e) = (app.device(&ann, "ann-phone").await, app.device(&eve, "eve-phone").await);

    // Over HTTP, while doc has no device connected.
    let (status, me) = app.send(Method::PATCH, "/v1/me", &doc, Some(json!({"availability": "busy"}))).await;
    assert_eq!((status, me["availability"].as_str()), (200, Some("busy")), "{me}");
    let seen = next_presence_of(&mut a, &ann, &doc).await;
    assert_eq!((seen["status"].as_str(), seen["availability"].as_str()), (Some("offline"), Some("busy")), "{seen}");
    app.send(Method::PATCH, "/v1/me", &doc, Some(json!({"availability": "busy", "bio": "GP"}))).await;
    assert!(no_presence_of(&mut a, &ann, &doc).await, "no change, no signal");
    assert!(no_presence_of(&mut e, &eve, &doc).await, "eve is neither contact nor partner");

    // Connecting keeps the availability in every signal; the app changes it over MQTT.
    let mut d = app.device(&doc, "doc-phone").await;
    let seen = next_presence_of(&mut a, &ann, &doc).await;
    assert_eq!((seen["status"].as_str(), seen["availability"].as_str()), (Some("online"), Some("busy")));
    d.publish_json(&format!("from/{}/presence", doc.id), &json!({"availability": "available"})).await;
    let seen = next_presence_of(&mut a, &ann, &doc).await;
    assert_eq!((seen["status"].as_str(), seen["availability"].as_str()), (Some("online"), Some("available")));
    let presence = json!({"status": "away", "availability": "unavailable"});
    d.publish_json(&format!("from/{}/presence", doc.id), &presence).await;
    let seen = next_presence_of(&mut a, &ann, &doc).await;
    assert_eq!((seen["status"].as_str(), seen["availability"].as_str()), (Some("away"), Some("unavailable")));
    let (_, me) = app.send(Method::GET, "/v1/me", &doc, None).await;
    assert_eq!(me["availability"], "unavailable", "stored in the profile");

    // Refusals: a user has no availability; unknown values and empty updates are errors.
    a.publish_json(&format!("from/{}/presence", ann.id), &json!({"id": "p1", "availability": "busy"})).await;
    let refused = a.next_on(&format!("to/{}/error", ann.id)).await;
    assert_eq!((refused["id"].as_str(), code(&refused)), (Some("p1"), "field_not_allowed"), "{refused}");
    d.publish_json(&format!("from/{}/presence", doc.id), &json!({"availability": "sleeping"})).await;
    assert_eq!(code(&d.next_on(&format!("to/{}/error", doc.id)).await), "invalid_availability");
    d.publish_json(&format!("from/{}/presence", doc.id), &json!({})).await;
    assert_eq!(code(&d.next_on(&format!("to/{}/error", doc.id)).await), "invalid_status");
    assert!(no_presence_of(&mut a, &ann, &doc).await, "refusals announce nothing");
    let (_, me) = app.send(Method::GET, "/v1/me", &ann, None).await;
    assert_eq!(me["availability"], Value::Null);
    let (_, me) = app.send(Method::GET, "/v1/me", &doc, None).await;
    assert_eq!(me["availability"], "unavailable", "unchanged by the refused update");

    // A user's own presence carries no availability.
    a.publish_json(&format!("from/{}/presence", ann.id), &json!({"status": "away"})).await;
    let seen = next_presence_of(&mut d, &doc, &ann).await;
    assert_eq!(seen["status"], "away");
    assert!(seen.get("availability").is_none(), "{seen}");

    // HTTP answers show it too.
    let (status, seen) = app.send(Method::GET, &format!("/v1/presence?users={},{}", doc.id, ann.id), &ann, None).await;
    assert_eq!(status, 200, "{seen}");
    let list = seen.as_array().expect("list");
    let of = |user: &TestUser| list.iter().find(|p| p["user_id"] == user.id.as_str()).expect("listed").clone();
    assert_eq!((of(&doc)["status"].as_str(), of(&doc)["availability"].as_str()), (Some("away"), Some("unavailable")));
    assert!(of(&ann).get("availability").is_none());
    let (_, contacts) = app.send(Method::GET, "/v1/contacts", &ann, None).await;
    let entry = &contacts["contacts"][0];
    assert_eq!((entry["user"]["id"].as_str(), entry["status"].as_str()), (Some(doc.id.as_str()), Some("away")));
    assert_eq!(entry["availability"], "unavailable", "{contacts}");
    app.stop().await;
}
