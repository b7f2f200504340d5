//! The contact policy (`messages.contact_policy`) as apps meet it: who may start a
//! 1:1 over HTTP, write in one over MQTT, and add whom to a group, under `open`,
//! `contacts` and `consulted`; admins exempt. Every refusal is asserted with its
//! error body and with nothing stored.

mod common;

use std::time::Duration;

use common::{Backend, Device, TestApp, TestUser};
use parley_config::ContactPolicy;
use reqwest::Method;
use serde_json::{json, Value};

both_backends!(
    under_open_strangers_start_and_write_as_before,
    under_contacts_only_accepted_contacts_reach_each_other,
    under_consulted_a_consultation_opens_the_way_between_user_and_provider,
    admins_reach_anyone_and_are_answered_under_every_policy,
);

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {body}"))
}

async fn spawn(backend: Backend, policy: ContactPolicy) -> Option<TestApp> {
    TestApp::spawn_with(backend, |s| s.messages.contact_policy = policy).await
}

async fn provider(app: &TestApp, username: &str) -> TestUser {
    let password = format!("pw-{username}-long-enough");
    let body = json!({"username": username, "password": password, "role": "provider"});
    let (status, body) = app.post("/v1/auth/register", body).await;
    assert_eq!(status, 201, "{body}");
    app.login(username, &password).await
}

async fn admin(app: &TestApp, username: &str) -> TestUser {
    let user = app.user(username).await;
    parley::app::set_role(&app.settings, username, parley_wire::Role::Admin, false).await.expect("set role");
    user
}

/// `POST /v1/conversations` for the 1:1 of `from` and `to`.
async fn direct(app: &TestApp, from: &TestUser, to: &TestUser) -> (u16, Value) {
    app.send(Method::POST, "/v1/conversations", from, Some(json!({"kind": "direct", "members": [to.id]}))).await
}

/// Publishes a message from `device` (of `from`) and returns its answer on `to/{uid}/ack`.
async fn write(device: &mut Device, from: &TestUser, target: Value, id: &str) -> Value {
    let mut body = json!({"id": id, "text": format!("text {id}")});
    body.as_object_mut().expect("object").extend(target.as_object().expect("target").clone());
    device.publish_json(&format!("from/{}/msg", from.id), &body).await;
    let ack = device.next_on(&format!("to/{}/ack", from.id)).await;
    assert_eq!(ack["id"], id, "{ack}");
    ack
}

/// The ids of `user`'s conversations.
async fn conversations(app: &TestApp, user: &TestUser) -> Vec<String> {
    let (status, body) = app.send(Method::GET, "/v1/conversations", user, None).await;
    assert_eq!(status, 200, "{body}");
    body["conversations"].as_array().expect("list").iter().map(|c| c["id"].as_str().expect("id").into()).collect()
}

/// Whether `device` receives no message event from `sender` for a moment.
async fn no_message_from(device: &mut Device, uid: &str, sender: &str) -> bool {
    let topic = format!("to/{uid}/msg");
    let from_sender = |p: &rumqttc::Packet| match p {
        rumqttc::Packet::Publish(p) if p.topic == topic => {
            serde_json::from_slice::<Value>(&p.payload).is_ok_and(|v| v["sender_id"] == sender)
        }
        _ => false,
    };
    device.nothing_matching(from_sender, Duration::from_millis(300)).await
}

async fn under_open_strangers_start_and_write_as_before(backend: Backend) {
    let Some(app) = spawn(backend, ContactPolicy::Open).await else { return };
    let (ann, ben, mut a, mut b) = app.pair().await;
    let (status, conversation) = direct(&app, &ann, &ben).await;
    assert_eq!(status, 201, "{conversation}");
    let ack = write(&mut a, &ann, json!({"to": ben.id}), "m1").await;
    assert_eq!(ack["conversation_id"], conversation["id"], "{ack}");
    assert_eq!(b.next_message_from(&ben.id, &ann.id).await["text"], "text m1");
    let group = json!({"kind": "group", "title": "Strangers", "members": [ben.id]});
    assert_eq!(app.send(Method::POST, "/v1/conversations", &ann, Some(group)).await.0, 201);
    assert_eq!(app.message_rows().await, 2, "the message and the group's creation");
    app.stop().await;
}

async fn under_contacts_only_accepted_contacts_reach_each_other(backend: Backend) {
    let Some(app) = spawn(backend, ContactPolicy::Contacts).await else { return };
    let (ann, ben, mut a, mut b) = app.pair().await;
    let cat = app.user("cat").await;

    // Strangers: no 1:1, no message, no group with them.
    let (status, body) = direct(&app, &ann, &ben).await;
    assert_eq!((status, code(&body)), (403, "not_a_contact"), "{body}");
    assert!(body["error"]["message"].as_str().expect("message").contains("POST /v1/contacts"), "{body}");
    let refused = write(&mut a, &ann, json!({"to": ben.id}), "stranger-1").await;
    assert_eq!(code(&refused), "not_a_contact", "{refused}");
    assert!(no_message_from(&mut b, &ben.id, &ann.id).await, "nothing reaches ben");
    let group = json!({"kind": "group", "title": "Ambush", "members": [ben.id]});
    let (status, body) = app.send(Method::POST, "/v1/conversations", &ann, Some(group)).await;
    assert_eq!((status, code(&body)), (403, "not_a_contact"));
    assert!(conversations(&app, &ann).await.is_empty() && conversations(&app, &ben).await.is_empty());
    assert_eq!(app.message_rows().await, 0);

    // Contacts: both ways.
    for (asker, answer) in [(&ann, &ben), (&ann, &cat)] {
        let (status, _) = app.send(Method::POST, "/v1/contacts", asker, Some(json!({"user_id": answer.id}))).await;
        assert_eq!(status, 200);
        let path = format!("/v1/contacts/{}/accept", asker.id);
        assert_eq!(app.send(Method::POST, &path, answer, None).await.0, 200);
    }
    let (status, conversation) = direct(&app, &ann, &ben).await;
    assert_eq!(status, 201, "{conversation}");
    let id = conversation["id"].as_str().expect("id").to_string();
    let ack = write(&mut a, &ann, json!({"conversation_id": id}), "contact-1").await;
    assert_eq!(ack["seq"], 1, "{ack}");
    assert_eq!(b.next_message_from(&ben.id, &ann.id).await["text"], "text contact-1");
    let ack = write(&mut b, &ben, json!({"to": ann.id}), "contact-2").await;
    assert_eq!(ack["seq"], 2, "{ack}");

    // Removing the contact stops the existing 1:1, both ways, and adding to groups.
    let (status, _) = app.send(Method::DELETE, &format!("/v1/contacts/{}", ann.id), &ben, None).await;
    assert_eq!(status, 200);
    let refused = write(&mut a, &ann, json!({"conversation_id": id}), "after-removal").await;
    assert_eq!(code(&refused), "not_a_contact", "{refused}");
    let refused = write(&mut b, &ben, json!({"to": ann.id}), "after-removal-2").await;
    assert_eq!(code(&refused), "not_a_contact", "{refused}");
    let group = json!({"kind": "group", "title": "Friends", "members": [cat.id]});
    let (status, group) = app.send(Method::POST, "/v1/conversations", &ann, Some(group)).await;
    assert_eq!(status, 201, "a contact may be added: {group}");
    let members = format!("/v1/conversations/{}/members", group["id"].as_str().expect("group id"));
    let (status, body) = app.send(Method::POST, &members, &ann, Some(json!({"user_id": ben.id}))).await;
    assert_eq!((status, code(&body)), (403, "not_a_contact"));
    let (_, details) = app.send(Method::GET, &members.replace("/members", ""), &ann, None).await;
    assert_eq!(details["members"].as_array().expect("members").len(), 2, "ben was not added: {details}");
    let (_, history) = app.send(Method::GET, &format!("/v1/conversations/{id}/messages"), &ann, None).await;
    let texts: Vec<&str> =
        history["messages"].as_array().expect("page").iter().map(|m| m["text"].as_str().expect("text")).collect();
    assert_eq!(texts, vec!["text contact-1", "text contact-2"], "the refused messages were not stored");
    assert_eq!(app.message_rows().await, 3, "two messages and the group's creation");
    app.stop().await;
}

async fn under_consulted_a_consultation_opens_the_way_between_user_and_provider(backend: Backend) {
    let Some(app) = spawn(backend, ContactPolicy::Consulted).await else { return };
    let (ann, bob) = (app.user("ann").await, app.user("bob").await);
    let (doc, mid) = (provider(&app, "doc").await, provider(&app, "mid").await);
    let (mut a, mut d) = (app.device(&ann, "ann-phone").await, app.device(&doc, "doc-phone").await);

    // Before any consultation: no way between ann and doc, and never between users.
    let (status, body) = direct(&app, &ann, &doc).await;
    assert_eq!((status, code(&body)), (403, "consultation_required"));
    assert!(body["error"]["message"].as_str().expect("message").contains("POST /v1/consultations"), "{body}");
    let refused = write(&mut a, &ann, json!({"to": doc.id}), "early").await;
    assert_eq!(code(&refused), "consultation_required");
    let refused = write(&mut d, &doc, json!({"to": ann.id}), "cold-call").await;
    assert_eq!(code(&refused), "consultation_required", "a provider writes only to users who consulted it");
    let (status, body) = direct(&app, &ann, &bob).await;
    assert_eq!((status, code(&body)), (403, "provider_only"));
    assert!(no_message_from(&mut d, &doc.id, &ann.id).await);
    assert_eq!(app.message_rows().await, 0);

    // Requested is not enough; accepted opens it, and names their conversation.
    let (status, asked) =
        app.send(Method::POST, "/v1/consultations", &ann, Some(json!({"provider_id": doc.id, "note": "rash"}))).await;
    assert_eq!((status, asked["status"].as_str()), (201, Some("requested")), "{asked}");
    let consultation = asked["id"].as_str().expect("id").to_string();
    let refused = write(&mut a, &ann, json!({"to": doc.id}), "too-early").await;
    assert_eq!(code(&refused), "consultation_required");
    let path = format!("/v1/consultations/{consultation}/accept");
    let (status, opened) = app.send(Method::POST, &path, &doc, None).await;
    assert_eq!((status, opened["status"].as_str()), (200, Some("open")), "{opened}");
    let conversation = opened["conversation_id"].as_str().expect("conversation").to_string();
    let (_, details) = app.send(Method::GET, &format!("/v1/conversations/{conversation}"), &ann, None).await;
    assert_eq!(details["context"], json!({"type": "consultation", "id": consultation}));
    assert_eq!((details["kind"].as_str(), details["audience"].as_str()), (Some("direct"), Some("user_provider")));

    let ack = write(&mut a, &ann, json!({"conversation_id": conversation}), "symptoms").await;
    assert_eq!(ack["seq"], 1, "{ack}");
    assert_eq!(d.next_message_from(&doc.id, &ann.id).await["text"], "text symptoms");
    let ack = write(&mut d, &doc, json!({"to": ann.id}), "advice").await;
    assert_eq!(ack["conversation_id"].as_str(), Some(conversation.as_str()), "{ack}");

    // Closed: the user may no longer write; the provider may still write to its user.
    let (status, closed) = app.send(Method::POST, &format!("/v1/consultations/{consultation}/close"), &ann, None).await;
    assert_eq!((status, closed["status"].as_str()), (200, Some("closed")));
    let refused = write(&mut a, &ann, json!({"conversation_id": conversation}), "one-more-thing").await;
    assert_eq!(code(&refused), "consultation_required", "{refused}");
    assert!(no_message_from(&mut d, &doc.id, &ann.id).await, "the refused message reached nobody");
    let ack = write(&mut d, &doc, json!({"conversation_id": conversation}), "follow-up").await;
    assert_eq!(ack["seq"], 3, "{ack}");
    let (_, history) = app.send(Method::GET, &format!("/v1/conversations/{conversation}/messages"), &doc, None).await;
    let ids: Vec<&str> =
        history["messages"].as_array().expect("page").iter().map(|m| m["client_id"].as_str().expect("id")).collect();
    assert_eq!(ids, vec!["symptoms", "advice", "follow-up"], "nothing refused was stored");

    // Providers among themselves: free. Users to another user's provider: not.
    assert_eq!(direct(&app, &doc, &mid).await.0, 201);
    let (status, body) = direct(&app, &bob, &doc).await;
    assert_eq!((status, code(&body)), (403, "consultation_required"));
    let group = json!({"kind": "group", "title": "Board", "members": [mid.id, bob.id]});
    let (status, body) = app.send(Method::POST, "/v1/conversations", &doc, Some(group)).await;
    assert_eq!((status, code(&body)), (403, "consultation_required"), "bob never consulted doc");
    assert_eq!(conversations(&app, &doc).await.len(), 2, "the consultation's 1:1 and the one with mid");
    assert_eq!(app.message_rows().await, 3);
    app.stop().await;
}

async fn admins_reach_anyone_and_are_answered_under_every_policy(backend: Backend) {
    for policy in [ContactPolicy::Contacts, ContactPolicy::Consulted] {
        let Some(app) = spawn(backend, policy).await else { return };
        let root = admin(&app, "root").await;
        let (ann, bob, doc) = (app.user("ann").await, app.user("bob").await, provider(&app, "doc").await);
        let (mut r, mut a) = (app.device(&root, "root-phone").await, app.device(&ann, "ann-phone").await);

        // Nobody approaches an admin first without a way the policy gives…
        let (status, body) = direct(&app, &bob, &root).await;
        let expected = if policy == ContactPolicy::Contacts { "not_a_contact" } else { "admin_reply_only" };
        assert_eq!((status, code(&body)), (403, expected), "{policy:?}: {body}");
        // …but an admin reaches anyone, and is answered.
        assert_eq!(direct(&app, &root, &doc).await.0, 201, "{policy:?}");
        let ack = write(&mut r, &root, json!({"to": ann.id}), "notice").await;
        assert_eq!(ack["seq"], 1, "{policy:?}: {ack}");
        assert_eq!(a.next_message_from(&ann.id, &root.id).await["text"], "text notice");
        let answer = write(&mut a, &ann, json!({"to": root.id}), "thanks").await;
        assert_eq!(answer["seq"], 2, "{policy:?}: {answer}");
        let group = json!({"kind": "group", "title": "Support", "members": [ann.id, bob.id, doc.id]});
        let (status, body) = app.send(Method::POST, "/v1/conversations", &root, Some(group)).await;
        assert_eq!(status, 201, "{policy:?}: {body}");
        assert_eq!(app.message_rows().await, 3, "{policy:?}: two messages and the group's creation");
        app.stop().await;
    }
}
