//! Sign-ins, one-time codes, login failures, profiles and contacts in the store,
//! asserted identically on SQLite and PostgreSQL.

use parley_store::testing::{migrated_store as store, Backend};
use parley_store::{
    ContactState, Issue, NewCode, NewSession, NewUser, ProfileChange, Rotation, SendLimits, Store, UserQuery,
};
use parley_wire::{Availability, Role, UserId};
use uuid::Uuid;

parley_store::both_backends!(
    refresh_tokens_rotate_once_with_a_grace_window_and_reuse_revokes_the_sign_in,
    sign_ins_end_at_their_absolute_lifetime_and_on_revocation,
    codes_are_newest_only_attempt_limited_and_throttled,
    login_failures_count_per_account_and_address,
    profiles_change_only_named_fields_and_search_filters,
    contacts_request_accept_decline_remove_with_events,
);

async fn user(store: &Store, name: &str, role: Role) -> UserId {
    let new = NewUser {
        email: Some(format!("{name}@example.com")),
        display_name: Some(name.to_uppercase()),
        ..parley_store::testing::new_user(name, role)
    };
    store.insert_user(&new).await.expect("user").id
}

fn session(user: UserId, hash: &[u8], now: i64, lifetime: i64) -> NewSession {
    NewSession {
        id: Uuid::now_v7(),
        user,
        token_hash: Some(hash.to_vec()),
        acting: None,
        now_ms: now,
        token_expires_at_ms: now + 10_000,
        expires_at_ms: now + lifetime,
        user_agent: Some("test".into()),
        client_addr: Some("127.0.0.1".into()),
    }
}

const TTL: i64 = 10_000;
const GRACE: i64 = 30;

async fn refresh_tokens_rotate_once_with_a_grace_window_and_reuse_revokes_the_sign_in(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let a = user(&store, "a", Role::User).await;
    let s = session(a, b"t1", 100, 1_000_000);
    store.create_session(&s).await.expect("session");
    let rotated = store.rotate_refresh_token(b"t1", b"t2", 200, TTL, GRACE).await.expect("rotate");
    assert_eq!(rotated, Rotation::Rotated { user: a, session: s.id, actor: None });
    // The response was lost: the phone retries t1 within the grace window and gets t3; t2 dies.
    let retried = store.rotate_refresh_token(b"t1", b"t3", 210, TTL, GRACE).await.expect("retry");
    assert_eq!(retried, Rotation::Rotated { user: a, session: s.id, actor: None });
    assert!(store.session_live(a, s.id, 210).await.expect("live"));
    // t3 is the live one and rotates normally.
    assert_eq!(
        store.rotate_refresh_token(b"t3", b"t4", 220, TTL, GRACE).await.expect("t3"),
        Rotation::Rotated { user: a, session: s.id, actor: None }
    );
    // t1 again, now that its successor was used: reuse. The whole sign-in goes.
    assert_eq!(
        store.rotate_refresh_token(b"t1", b"t5", 230, TTL, GRACE).await.expect("reuse"),
        Rotation::Reused { user: a, session: s.id }
    );
    assert!(!store.session_live(a, s.id, 231).await.expect("revoked"));
    assert_eq!(store.rotate_refresh_token(b"t4", b"t6", 240, TTL, GRACE).await.expect("t4"), Rotation::Refused);
    assert_eq!(store.rotate_refresh_token(b"unknown", b"t7", 240, TTL, GRACE).await.expect("?"), Rotation::Refused);

    // Outside the grace window a replay is reuse even if the successor was never used.
    let s2 = session(a, b"u1", 1_000, 1_000_000);
    store.create_session(&s2).await.expect("session 2");
    store.rotate_refresh_token(b"u1", b"u2", 1_000, TTL, GRACE).await.expect("rotate");
    assert_eq!(
        store.rotate_refresh_token(b"u1", b"u3", 1_000 + GRACE + 1, TTL, GRACE).await.expect("late"),
        Rotation::Reused { user: a, session: s2.id }
    );
    assert_eq!(store.rotate_refresh_token(b"u2", b"u4", 1_100, TTL, GRACE).await.expect("u2"), Rotation::Refused);
    // An unused token past its own expiry is refused, and changes nothing.
    let s3 = session(a, b"v1", 2_000, 1_000_000);
    store.create_session(&s3).await.expect("session 3");
    assert_eq!(
        store.rotate_refresh_token(b"v1", b"v2", 2_000 + 10_001, TTL, GRACE).await.expect("old"),
        Rotation::Refused
    );
    assert!(store.session_live(a, s3.id, 2_000 + 10_001).await.expect("still live"));
}

async fn sign_ins_end_at_their_absolute_lifetime_and_on_revocation(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let a = user(&store, "a", Role::User).await;
    let b = user(&store, "b", Role::User).await;
    let short = session(a, b"s1", 100, 500);
    store.create_session(&short).await.expect("short");
    // Rotation does not extend the sign-in: the new token dies with it.
    store.rotate_refresh_token(b"s1", b"s2", 400, TTL, GRACE).await.expect("rotate");
    assert_eq!(store.rotate_refresh_token(b"s2", b"s3", 700, TTL, GRACE).await.expect("late"), Rotation::Refused);
    assert!(!store.session_live(a, short.id, 700).await.expect("ended"));

    let one = session(a, b"p1", 100, 1_000_000);
    let two = session(a, b"q1", 100, 1_000_000);
    let theirs = session(b, b"r1", 100, 1_000_000);
    for s in [&one, &two, &theirs] {
        store.create_session(s).await.expect("create");
    }
    assert_eq!(store.sessions_of(a, 700).await.expect("list").len(), 2, "the ended one is not listed");
    assert!(!store.session_live(b, one.id, 700).await.expect("not b's"), "a sign-in belongs to its user");
    // Everything live but `two`; b is untouched.
    let revoked = store.revoke_sessions(a, None, Some(two.id), "test", 800).await.expect("revoke");
    assert_eq!(revoked, vec![(a, one.id)]);
    assert!(store.session_live(a, two.id, 800).await.expect("spared"));
    assert!(store.session_live(b, theirs.id, 800).await.expect("b"));
    assert_eq!(store.revoke_sessions(a, Some(two.id), None, "test", 801).await.expect("one"), vec![(a, two.id)]);
    assert!(store.revoke_sessions(a, Some(two.id), None, "test", 802).await.expect("again").is_empty());
    assert!(store.sessions_of(a, 900).await.expect("none").is_empty());
}

fn code(purpose: &'static str, identifier: &str, user: Option<UserId>, hash: &[u8], now: i64, addr: &str) -> NewCode {
    NewCode {
        id: Uuid::now_v7(),
        purpose,
        identifier: identifier.into(),
        user,
        code_hash: hash.to_vec(),
        client_addr: Some(addr.into()),
        now_ms: now,
        expires_at_ms: now + 600_000,
    }
}

async fn codes_are_newest_only_attempt_limited_and_throttled(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let a = user(&store, "a", Role::User).await;
    let limits = SendLimits { min_interval_ms: 60_000, per_identifier_per_hour: 3, per_address_per_hour: 5 };
    let first = code("verify_email", "a@example.com", Some(a), b"h1", 0, "1.1.1.1");
    assert_eq!(store.issue_code(&first, limits).await.expect("first"), Issue::Issued);
    // Too soon for the same identifier, and nothing is recorded.
    let early = code("verify_email", "a@example.com", Some(a), b"hx", 30_000, "1.1.1.1");
    assert_eq!(store.issue_code(&early, limits).await.expect("early"), Issue::Throttled { retry_after_ms: 30_000 });
    let attempt = store.attempt_code("verify_email", "a@example.com", 31_000, 5).await.expect("attempt");
    assert_eq!(attempt.map(|t| t.code_hash), Some(b"h1".to_vec()), "the first code is still the live one");
    // A new code supersedes the old.
    let second = code("verify_email", "a@example.com", Some(a), b"h2", 61_000, "1.1.1.1");
    assert_eq!(store.issue_code(&second, limits).await.expect("second"), Issue::Issued);
    let live = store.attempt_code("verify_email", "a@example.com", 62_000, 5).await.expect("live").expect("one");
    assert_eq!((live.id, live.user), (second.id, Some(a)));
    // Attempts are counted before comparing: the fifth is the last.
    for n in 2..=5 {
        assert!(store.attempt_code("verify_email", "a@example.com", 62_000, 5).await.expect("n").is_some(), "{n}");
    }
    assert!(store.attempt_code("verify_email", "a@example.com", 62_000, 5).await.expect("6").is_none());
    // A consumed code is gone; an expired one too.
    let third = code("verify_email", "a@example.com", Some(a), b"h3", 122_000, "1.1.1.1");
    assert_eq!(store.issue_code(&third, limits).await.expect("third"), Issue::Issued);
    assert!(store.consume_code(third.id, 123_000).await.expect("consume"));
    assert!(!store.consume_code(third.id, 123_001).await.expect("once"));
    assert!(store.attempt_code("verify_email", "a@example.com", 123_002, 5).await.expect("used").is_none());
    // Three codes this hour: the fourth waits until the first is an hour old.
    let fourth = code("verify_email", "a@example.com", Some(a), b"h4", 200_000, "1.1.1.1");
    assert_eq!(
        store.issue_code(&fourth, limits).await.expect("fourth"),
        Issue::Throttled { retry_after_ms: 3_600_000 - 200_000 }
    );
    // Per address: five codes to different identifiers, then the address waits.
    for i in 0..2 {
        let other = code("reset_password", &format!("x{i}@example.com"), None, b"n", 300_000, "1.1.1.1");
        assert_eq!(store.issue_code(&other, limits).await.expect("other"), Issue::Issued);
    }
    let flood = code("reset_password", "y@example.com", None, b"n", 300_000, "1.1.1.1");
    assert!(matches!(store.issue_code(&flood, limits).await.expect("flood"), Issue::Throttled { .. }));
    let elsewhere = code("reset_password", "y@example.com", None, b"n", 300_000, "2.2.2.2");
    assert_eq!(store.issue_code(&elsewhere, limits).await.expect("elsewhere"), Issue::Issued);
    // A code of no account can be attempted but names nobody.
    let nobody = store.attempt_code("reset_password", "y@example.com", 300_001, 5).await.expect("nobody");
    assert_eq!(nobody.map(|t| t.user), Some(None));
    store.delete_stale_auth_records(10_000_000).await.expect("purge");
    assert!(store.attempt_code("reset_password", "y@example.com", 300_002, 5).await.expect("purged").is_none());
}

async fn login_failures_count_per_account_and_address(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    for (key, addr, at) in [("acct", "1.1.1.1", 10), ("acct", "2.2.2.2", 20), ("other", "1.1.1.1", 30)] {
        store.record_login_failure(key, addr, at).await.expect("record");
    }
    assert_eq!(store.login_failures("acct", "1.1.1.1", 0).await.expect("count"), (2, 2));
    assert_eq!(store.login_failures("acct", "1.1.1.1", 15).await.expect("window"), (1, 1));
    store.clear_login_failures("acct").await.expect("clear");
    assert_eq!(store.login_failures("acct", "1.1.1.1", 0).await.expect("cleared"), (0, 1));
}

async fn profiles_change_only_named_fields_and_search_filters(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let doc = user(&store, "doc_ada", Role::Provider).await;
    let mid = user(&store, "mid_bea", Role::Provider).await;
    let plain = user(&store, "carl", Role::User).await;
    let change = ProfileChange {
        bio: Some(Some("Paediatrics, 20% off".into())),
        specialty: Some(Some("Paediatrician".into())),
        experience_years: Some(Some(12)),
        availability: Some(Some(Availability::Available)),
        ..Default::default()
    };
    let updated = store.update_profile(doc, &change).await.expect("update").expect("exists");
    assert_eq!(updated.profile.specialty.as_deref(), Some("Paediatrician"));
    assert_eq!(updated.display_name.as_deref(), Some("DOC_ADA"), "unnamed fields stay");
    assert_eq!(updated.role, Role::Provider);
    let cleared = store
        .update_profile(doc, &ProfileChange { bio: Some(None), ..Default::default() })
        .await
        .expect("clear")
        .expect("exists");
    assert_eq!((cleared.profile.bio, cleared.profile.experience_years), (None, Some(12)));
    store
        .update_profile(mid, &ProfileChange { specialty: Some(Some("Midwife".into())), ..Default::default() })
        .await
        .expect("mid");

    let find = |q: UserQuery| {
        let store = store.clone();
        async move { store.search_users(&q).await.expect("search").into_iter().map(|u| u.id).collect::<Vec<_>>() }
    };
    let q = |limit| UserQuery { limit, ..Default::default() };
    assert_eq!(find(UserQuery { role: Some(Role::Provider), ..q(10) }).await.len(), 2);
    assert_eq!(find(UserQuery { specialty: Some("PAEDIA".into()), ..q(10) }).await, vec![doc]);
    assert_eq!(find(UserQuery { availability: Some(Availability::Available), ..q(10) }).await, vec![doc]);
    assert_eq!(find(UserQuery { name: Some("carl".into()), ..q(10) }).await, vec![plain]);
    // LIKE wildcards in the query are literal.
    assert!(find(UserQuery { name: Some("%".into()), ..q(10) }).await.is_empty());
    assert_eq!(find(UserQuery { name: Some("_".into()), ..q(10) }).await.len(), 2, "doc_ada and mid_bea");
    // Pages in id order.
    let first = find(q(2)).await;
    let rest = find(UserQuery { after: first.last().copied(), ..q(2) }).await;
    assert_eq!((first.len(), rest.len()), (2, 1));
    assert!(!first.contains(&rest[0]));
    assert!(store.update_profile(UserId::new(), &change).await.expect("nobody").is_none());
}

async fn contacts_request_accept_decline_remove_with_events(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let a = user(&store, "a", Role::User).await;
    let b = user(&store, "b", Role::User).await;
    let c = user(&store, "c", Role::User).await;
    let asked = store.request_contact(a, b, 10).await.expect("ask");
    assert_eq!((asked.state, asked.events.len()), (ContactState::Requested, 2));
    assert!(!store.request_contact(a, b, 11).await.expect("again").changed, "a repeat changes nothing");
    assert_eq!(store.contact_state(b, a).await.expect("b sees"), ContactState::Incoming);
    let accepted = store.answer_contact(b, a, true, 12).await.expect("answer").expect("pending");
    assert_eq!(accepted.state, ContactState::Contacts);
    assert_eq!(store.contact_state(a, b).await.expect("a sees"), ContactState::Contacts);
    assert!(store.answer_contact(b, a, true, 13).await.expect("twice").is_none(), "no request left");
    // Crossing requests become contacts at once.
    store.request_contact(a, c, 14).await.expect("a asks c");
    let crossed = store.request_contact(c, a, 15).await.expect("c asks a");
    assert_eq!(crossed.state, ContactState::Contacts);
    let list: Vec<UserId> = store.contacts_of(a, false).await.expect("list").into_iter().map(|r| r.user).collect();
    assert_eq!(list, vec![c, b], "newest first");
    // Declining and removing.
    store.request_contact(b, c, 16).await.expect("b asks c");
    let requests = store.contacts_of(c, true).await.expect("requests");
    assert_eq!(requests.iter().map(|r| (r.user, r.state)).collect::<Vec<_>>(), vec![(b, ContactState::Incoming)]);
    let declined = store.answer_contact(c, b, false, 17).await.expect("decline").expect("pending");
    assert_eq!(declined.state, ContactState::None);
    assert_eq!(store.contact_state(b, c).await.expect("none"), ContactState::None);
    let removed = store.remove_contact(b, a, 18).await.expect("remove");
    assert!(removed.changed);
    assert_eq!(store.contact_state(a, b).await.expect("gone"), ContactState::None);
    assert!(!store.remove_contact(b, a, 19).await.expect("again").changed);
    // Every change is in both logs, in order: a got requested, contacts(b), requested(c), contacts(c), none(b).
    let log = store.events_after(a, 0, 100).await.expect("log");
    let kinds: Vec<(String, String)> = log
        .events
        .iter()
        .map(|e| {
            let body: serde_json::Value = serde_json::from_str(&e.body).expect("json");
            (
                body["user_id"].as_str().unwrap_or_default().to_string(),
                body["state"].as_str().unwrap_or_default().into(),
            )
        })
        .collect();
    let (bs, cs) = (b.to_string(), c.to_string());
    assert_eq!(
        kinds,
        vec![
            (bs.clone(), "requested".into()),
            (bs.clone(), "contacts".into()),
            (cs.clone(), "requested".into()),
            (cs, "contacts".into()),
            (bs, "none".into()),
        ]
    );
}
