//! The gate facing hostile and careless devices: bad tokens, foreign topics,
//! wildcard subscriptions, and the session rules, each refused in the protocol's
//! own terms without touching anyone else.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{now_secs, token_settings, Backend, Device, TestApp};
use rumqttc::{ConnectReturnCode, ConnectionError, SubscribeReasonCode};
use serde_json::json;

both_backends!(
    bad_tokens_are_refused_with_the_connack_code_and_change_nothing,
    v5_devices_get_v5_reason_codes_for_bad_tokens_and_foreign_subscriptions,
    foreign_and_wildcard_subscriptions_are_refused,
    publishing_as_another_user_is_refused_and_reported,
    a_persistent_session_keeps_messages_while_the_device_is_away,
    a_second_connection_with_the_same_client_id_takes_the_session_over,
    another_users_client_id_is_another_session,
);

async fn refused(app: &TestApp, username: &str, password: &str) -> ConnectReturnCode {
    let options = app.options(&format!("c-{}", uuid::Uuid::new_v4().simple()), username, password);
    match Device::connect(options).await {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        Err(other) => panic!("expected a CONNACK refusal, got {other:?}"),
        Ok(_) => panic!("connection with {username}/{password:.20} was accepted"),
    }
}

fn unsigned_token(sub: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(
        json!({"sub": sub, "iss": "parley", "aud": "parley", "iat": now_secs(), "exp": now_secs() + 600}).to_string(),
    );
    format!("{header}.{body}.")
}

async fn bad_tokens_are_refused_with_the_connack_code_and_change_nothing(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut watcher = app.device(&bob, "bob-phone").await;

    let (alice_id, alice_sid) = (alice.id.parse().expect("uuid"), alice.session_id.parse().expect("uuid"));
    let foreign =
        parley_domain::Tokens::new(&[7u8; 64], token_settings()).issue_access(alice_id, alice_sid, now_secs());
    let key = parley_domain::load_or_create_signing_key(&app.settings.data_dir.join("signing.key")).expect("key");
    let other_audience = parley_domain::Tokens::new(
        &key,
        parley_domain::TokenSettings { audience: "elsewhere".into(), ..token_settings() },
    )
    .issue_access(alice_id, alice_sid, now_secs());
    let expired = app.token_issued_at(&alice, now_secs() - 3600);
    let cases = [
        ("no password", alice.id.clone(), String::new(), ConnectReturnCode::BadUserNamePassword),
        ("garbage", alice.id.clone(), "not-a-jwt".to_string(), ConnectReturnCode::BadUserNamePassword),
        ("expired", alice.id.clone(), expired, ConnectReturnCode::BadUserNamePassword),
        ("wrong key", alice.id.clone(), foreign, ConnectReturnCode::BadUserNamePassword),
        ("wrong audience", alice.id.clone(), other_audience, ConnectReturnCode::BadUserNamePassword),
        ("alg none", alice.id.clone(), unsigned_token(&alice.id), ConnectReturnCode::BadUserNamePassword),
        (
            "refresh token as password",
            alice.id.clone(),
            alice.refresh_token.clone(),
            ConnectReturnCode::BadUserNamePassword,
        ),
        ("someone else's token", alice.id.clone(), bob.access_token.clone(), ConnectReturnCode::NotAuthorized),
        (
            "username not a user id",
            "alice".to_string(),
            alice.access_token.clone(),
            ConnectReturnCode::BadUserNamePassword,
        ),
    ];
    for (what, username, password, expected) in &cases {
        assert_eq!(refused(&app, username, password).await, *expected, "{what}");
    }
    let stats = app.gate().stats();
    assert_eq!(stats.connections_refused.load(Ordering::Relaxed), cases.len() as u64);
    assert_eq!(app.gate().session_counts(), (1, 1), "only bob's session exists");
    assert_eq!(app.message_rows().await, 0);

    // Bob's device never noticed, and Alice with her real token gets in.
    let a = app.device(&alice, "alice-phone").await;
    a.publish_json(&format!("from/{}/msg", alice.id), &json!({"id": "m1", "to": bob.id, "text": "hi"})).await;
    let got = watcher.next_on(&format!("to/{}/msg", bob.id)).await;
    assert_eq!(got["text"], "hi");
    app.stop().await;
}

async fn v5_devices_get_v5_reason_codes_for_bad_tokens_and_foreign_subscriptions(backend: Backend) {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as C5, Packet as P5, SubscribeReasonCode as S5};
    use rumqttc::v5::{AsyncClient, ConnectionError as E5, Event as Ev5, MqttOptions};
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let connect = |password: String| {
        let mut o = MqttOptions::new(
            format!("v5-{}", uuid::Uuid::new_v4().simple()),
            app.mqtt.ip().to_string(),
            app.mqtt.port(),
        );
        o.set_credentials(alice.id.clone(), password);
        AsyncClient::new(o, 16)
    };
    for (password, expected) in
        [("garbage".to_string(), C5::BadUserNamePassword), (bob.access_token.clone(), C5::NotAuthorized)]
    {
        let (_client, mut events) = connect(password);
        let outcome = tokio::time::timeout(Duration::from_secs(10), events.poll()).await.expect("answer in time");
        match outcome {
            Err(E5::ConnectionRefused(code)) => assert_eq!(code, expected),
            other => panic!("expected refusal {expected:?}, got {other:?}"),
        }
    }
    let (client, mut events) = connect(alice.access_token.clone());
    let own = format!("to/{}/#", alice.id);
    let theirs = format!("to/{}/#", bob.id);
    let mut sent = false;
    let codes = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await.expect("v5 connection") {
                Ev5::Incoming(P5::ConnAck(_)) if !sent => {
                    sent = true;
                    for f in [own.as_str(), "#", theirs.as_str()] {
                        client.subscribe(f, rumqttc::v5::mqttbytes::QoS::AtLeastOnce).await.expect("subscribe");
                    }
                }
                Ev5::Incoming(P5::SubAck(a)) if a.return_codes.len() == 1 && a.pkid == 3 => return a.return_codes,
                Ev5::Incoming(P5::SubAck(a)) => assert!(a.pkid < 3, "{a:?}"),
                _ => {}
            }
        }
    })
    .await
    .expect("SUBACKs in time");
    assert_eq!(codes, vec![S5::NotAuthorized]);
    app.stop().await;
}

async fn foreign_and_wildcard_subscriptions_are_refused(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut a = app.device(&alice, "alice-phone").await;
    for filter in [
        "#".to_string(),
        "+/#".to_string(),
        "to/#".to_string(),
        "to/+/msg".to_string(),
        format!("to/{}/#", bob.id),
        format!("from/{}/#", bob.id),
        "$SYS/#".to_string(),
        format!("$share/g/to/{}/#", bob.id),
    ] {
        assert_eq!(a.subscribe(&filter).await, vec![SubscribeReasonCode::Failure], "{filter}");
    }
    assert_eq!(
        a.subscribe(&format!("to/{}/msg", alice.id)).await,
        vec![SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce)]
    );
    assert_eq!(app.gate().stats().subscriptions_refused.load(Ordering::Relaxed), 8);

    // None of those filters lets Alice see Bob's traffic.
    let carol = app.user("carol").await;
    let c = app.device(&carol, "carol-phone").await;
    // Bob is connected first: a downlink for a user with no device is not held
    // (devices catch up with `sync`), so connecting after the send would race it.
    let mut b = app.device(&bob, "bob-phone").await;
    c.publish_json(&format!("from/{}/msg", carol.id), &json!({"id": "c1", "to": bob.id, "text": "for bob only"})).await;
    let _ = b.next_on(&format!("to/{}/msg", bob.id)).await;
    assert!(a.nothing_on(&format!("to/{}/msg", bob.id), Duration::from_millis(300)).await);
    app.stop().await;
}

async fn publishing_as_another_user_is_refused_and_reported(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let (alice, bob, mut a, mut b) = app.pair().await;
    let forged = json!({"id": "f1", "to": alice.id, "text": "I am bob"});
    a.publish_json(&format!("from/{}/msg", bob.id), &forged).await;
    a.publish_json(&format!("to/{}/msg", bob.id), &forged).await;
    for _ in 0..2 {
        let err = a.next_on(&format!("to/{}/error", alice.id)).await;
        assert_eq!(err["error"]["code"], "not_authorized");
    }
    assert!(b.nothing_on(&format!("to/{}/msg", bob.id), Duration::from_millis(300)).await);
    assert!(b.nothing_on(&format!("to/{}/ack", bob.id), Duration::from_millis(100)).await);
    assert_eq!(app.gate().stats().publishes_refused.load(Ordering::Relaxed), 2);
    assert_eq!(app.message_rows().await, 0);
    app.stop().await;
}

async fn a_persistent_session_keeps_messages_while_the_device_is_away(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut options = app.options("bob-tablet", &bob.id, &bob.access_token);
    options.set_clean_session(false);
    let mut first = Device::connect(options.clone()).await.expect("connect");
    assert!(!first.session_present);
    first.subscribe(&format!("to/{}/msg", bob.id)).await;
    drop(first);
    common::wait_until("the device's session is away", || app.gate().session_counts() == (1, 0)).await;

    let mut a = app.device(&alice, "alice-phone").await;
    for i in 0..3 {
        a.publish_json(
            &format!("from/{}/msg", alice.id),
            &json!({"id": format!("m{i}"), "to": bob.id, "text": format!("while away {i}")}),
        )
        .await;
        let _ = a.next_on(&format!("to/{}/ack", alice.id)).await;
    }
    let mut again = Device::connect(options).await.expect("reconnect");
    assert!(again.session_present, "the session survived");
    for i in 0..3 {
        let m = again.next_on(&format!("to/{}/msg", bob.id)).await;
        assert_eq!(m["text"], json!(format!("while away {i}")));
    }
    app.stop().await;
}

async fn a_second_connection_with_the_same_client_id_takes_the_session_over(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let old = app.device(&bob, "bob-phone").await;
    let mut new = app.device(&bob, "bob-phone").await;
    let mut closed = old.closed.clone();
    tokio::time::timeout(Duration::from_secs(10), closed.wait_for(Option::is_some))
        .await
        .expect("old connection closed")
        .expect("watch");
    let a = app.device(&alice, "alice-phone").await;
    a.publish_json(&format!("from/{}/msg", alice.id), &json!({"id": "t1", "to": bob.id, "text": "to the new one"}))
        .await;
    assert_eq!(new.next_on(&format!("to/{}/msg", bob.id)).await["text"], "to the new one");
    assert_eq!(app.gate().session_counts(), (2, 2));
    app.stop().await;
}

async fn another_users_client_id_is_another_session(backend: Backend) {
    let Some(app) = TestApp::spawn(backend).await else {
        return;
    };
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let mut a = app.device(&alice, "same-id").await;
    let b = app.device(&bob, "same-id").await;
    assert!(a.closed.borrow().is_none());
    b.publish_json(&format!("from/{}/msg", bob.id), &json!({"id": "x", "to": alice.id, "text": "still here?"})).await;
    assert_eq!(a.next_on(&format!("to/{}/msg", alice.id)).await["text"], "still here?");
    assert!(a.closed.borrow().is_none(), "alice's connection was not taken over");
    assert_eq!(app.gate().session_counts(), (2, 2));
    app.stop().await;
}
