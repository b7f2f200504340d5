//! Consultations in the store, asserted identically on SQLite and PostgreSQL:
//! their life (requested → open → closed), the events each change writes, the one
//! live consultation per pair, the 1:1 conversation an opening ensures, listings,
//! and the standing the contact policy reads.

use parley_store::testing::{migrated_store as store, Backend};
use parley_store::{ConsultationCursor, ConsultationStanding, ConsultationStatus, NewConsultation, Store, StoreError};
use parley_wire::{Role, UserId};
use uuid::Uuid;

parley_store::both_backends!(
    a_consultation_is_requested_opened_and_closed_with_an_event_for_both_parties_each_time,
    only_one_consultation_per_pair_is_live_and_unknown_parties_are_refused,
    opening_ensures_the_pairs_conversation_and_points_its_context_at_the_consultation,
    consultations_list_newest_first_for_either_party_by_status_with_a_cursor,
    the_standing_tells_an_open_consultation_from_one_that_was_ever_opened,
);

async fn user(store: &Store, name: &str, role: Role) -> UserId {
    store.insert_user(&parley_store::testing::new_user(name, role)).await.expect("user").id
}

fn asked(user: UserId, provider: UserId, now_ms: i64) -> NewConsultation {
    NewConsultation { id: Uuid::now_v7(), user, provider, note: Some("back pain".into()), now_ms }
}

/// The `consultation` events in `user`'s log, as (status, consultation id).
async fn consultation_events(store: &Store, user: UserId) -> Vec<(String, String)> {
    let page = store.events_after(user, 0, 100).await.expect("events");
    page.events
        .iter()
        .filter(|e| e.kind == "consultation")
        .map(|e| {
            let body: serde_json::Value = serde_json::from_str(&e.body).expect("json body");
            (body["status"].as_str().expect("status").to_string(), body["id"].as_str().expect("id").to_string())
        })
        .collect()
}

async fn a_consultation_is_requested_opened_and_closed_with_an_event_for_both_parties_each_time(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let ann = user(&store, "ann", Role::User).await;
    let doc = user(&store, "doc", Role::Provider).await;
    let new = asked(ann, doc, 100);
    let requested = store.request_consultation(&new).await.expect("request");
    let c = &requested.consultation;
    assert_eq!((c.id, c.user_id, c.provider_id, c.status), (new.id, ann, doc, ConsultationStatus::Requested));
    assert_eq!((c.note.as_deref(), c.opened_at, c.closed_at, c.conversation_id), (Some("back pain"), None, None, None));
    assert_eq!(c.created_at.timestamp_millis(), 100);
    assert_eq!(requested.events, vec![(ann, 1), (doc, 1)]);

    let opened = store.open_consultation(new.id, "user_provider", 200).await.expect("open").expect("was requested");
    assert_eq!(opened.consultation.status, ConsultationStatus::Open);
    assert_eq!(opened.consultation.opened_at.map(|t| t.timestamp_millis()), Some(200));
    assert!(opened.consultation.conversation_id.is_some());
    assert_eq!(opened.events, vec![(ann, 2), (doc, 2)]);
    assert!(store.open_consultation(new.id, "user_provider", 250).await.expect("again").is_none(), "open once");

    let closed = store.close_consultation(new.id, 300).await.expect("close").expect("was open");
    assert_eq!(closed.consultation.status, ConsultationStatus::Closed);
    assert_eq!(closed.consultation.closed_at.map(|t| t.timestamp_millis()), Some(300));
    assert_eq!(closed.consultation.opened_at.map(|t| t.timestamp_millis()), Some(200), "kept");
    assert!(store.close_consultation(new.id, 350).await.expect("again").is_none(), "close once");
    assert!(store.open_consultation(new.id, "user_provider", 360).await.expect("reopen").is_none(), "no reopening");

    let id = new.id.to_string();
    let expected: Vec<(String, String)> =
        ["requested", "open", "closed"].iter().map(|s| (s.to_string(), id.clone())).collect();
    assert_eq!(consultation_events(&store, ann).await, expected, "the user's log");
    assert_eq!(consultation_events(&store, doc).await, expected, "the provider's log");
    assert_eq!(store.consultation(new.id).await.expect("read"), Some(closed.consultation));
    assert_eq!(store.consultation(Uuid::now_v7()).await.expect("read"), None);
    assert!(store.close_consultation(Uuid::now_v7(), 400).await.expect("unknown").is_none());
}

async fn only_one_consultation_per_pair_is_live_and_unknown_parties_are_refused(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let ann = user(&store, "ann", Role::User).await;
    let doc = user(&store, "doc", Role::Provider).await;
    let clinic = user(&store, "clinic", Role::Institution).await;
    let first = asked(ann, doc, 100);
    store.request_consultation(&first).await.expect("first");
    let again = store.request_consultation(&asked(ann, doc, 110)).await;
    assert!(matches!(again, Err(StoreError::Conflict("consultation"))), "{again:?}");
    store.open_consultation(first.id, "user_provider", 120).await.expect("open").expect("opened");
    let while_open = store.request_consultation(&asked(ann, doc, 130)).await;
    assert!(matches!(while_open, Err(StoreError::Conflict("consultation"))), "{while_open:?}");
    // Another provider is another pair.
    store.request_consultation(&asked(ann, clinic, 140)).await.expect("another provider");
    // Once closed, a new one may be asked for.
    store.close_consultation(first.id, 150).await.expect("close").expect("closed");
    let next = asked(ann, doc, 160);
    store.request_consultation(&next).await.expect("after closing");

    let unknown = store.request_consultation(&asked(ann, UserId::new(), 170)).await;
    assert!(matches!(unknown, Err(StoreError::MissingReference)), "{unknown:?}");
    let with_oneself = store.request_consultation(&asked(ann, ann, 180)).await;
    assert!(with_oneself.is_err(), "the schema refuses a consultation with oneself");
    // Refused writes left nothing: three consultations, and no event for the refusals.
    let all = store.consultations_of(ann, None, None, 10).await.expect("list");
    assert_eq!(all.len(), 3);
    assert_eq!(consultation_events(&store, ann).await.len(), 5, "requested, open, requested, closed, requested");
}

async fn opening_ensures_the_pairs_conversation_and_points_its_context_at_the_consultation(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let ann = user(&store, "ann", Role::User).await;
    let clinic = user(&store, "clinic", Role::Institution).await;
    // They already talk: the opening reuses their 1:1.
    let existing = store.ensure_direct(ann, clinic, 50).await.expect("direct");
    let first = asked(ann, clinic, 100);
    store.request_consultation(&first).await.expect("request");
    let opened = store.open_consultation(first.id, "user_institution", 200).await.expect("open").expect("opened");
    assert_eq!(opened.consultation.conversation_id, Some(existing));
    let conversation = store.get_conversation(existing).await.expect("read").expect("exists");
    assert_eq!(conversation.kind, "direct");
    assert_eq!(conversation.audience, "user_institution");
    assert_eq!(conversation.context_type.as_deref(), Some("consultation"));
    assert_eq!(conversation.context_id, Some(first.id.to_string()));

    // A later consultation takes over the context of the same conversation.
    store.close_consultation(first.id, 300).await.expect("close").expect("closed");
    let second = asked(ann, clinic, 400);
    store.request_consultation(&second).await.expect("request");
    let reopened = store.open_consultation(second.id, "user_institution", 500).await.expect("open").expect("opened");
    assert_eq!(reopened.consultation.conversation_id, Some(existing));
    let conversation = store.get_conversation(existing).await.expect("read").expect("exists");
    assert_eq!(conversation.context_id, Some(second.id.to_string()));

    // Without an earlier conversation, the opening creates one with both as members.
    let bea = user(&store, "bea", Role::User).await;
    let third = asked(bea, clinic, 600);
    store.request_consultation(&third).await.expect("request");
    let fresh = store.open_consultation(third.id, "user_institution", 700).await.expect("open").expect("opened");
    let id = fresh.consultation.conversation_id.expect("a conversation");
    assert_eq!(store.direct_between(clinic, bea).await.expect("lookup"), Some(id));
    let mut members = store.members_of(id).await.expect("members");
    members.sort();
    let mut expected = vec![bea, clinic];
    expected.sort();
    assert_eq!(members, expected);
}

async fn consultations_list_newest_first_for_either_party_by_status_with_a_cursor(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let ann = user(&store, "ann", Role::User).await;
    let bea = user(&store, "bea", Role::User).await;
    let doc = user(&store, "doc", Role::Provider).await;
    let mid = user(&store, "mid", Role::Provider).await;
    let a_doc = asked(ann, doc, 100);
    let b_doc = asked(bea, doc, 200);
    let a_mid = asked(ann, mid, 300);
    for new in [&a_doc, &b_doc, &a_mid] {
        store.request_consultation(new).await.expect("request");
    }
    store.open_consultation(b_doc.id, "user_provider", 400).await.expect("open").expect("opened");

    let ids = |list: Vec<parley_store::ConsultationRecord>| list.into_iter().map(|c| c.id).collect::<Vec<_>>();
    assert_eq!(ids(store.consultations_of(ann, None, None, 10).await.expect("ann")), vec![a_mid.id, a_doc.id]);
    assert_eq!(ids(store.consultations_of(doc, None, None, 10).await.expect("doc")), vec![b_doc.id, a_doc.id]);
    let open = store.consultations_of(doc, Some(ConsultationStatus::Open), None, 10).await.expect("open");
    assert_eq!(ids(open), vec![b_doc.id]);
    let requested = store.consultations_of(doc, Some(ConsultationStatus::Requested), None, 10).await.expect("req");
    assert_eq!(ids(requested), vec![a_doc.id]);
    assert!(store.consultations_of(mid, Some(ConsultationStatus::Closed), None, 10).await.expect("none").is_empty());

    let first = store.consultations_of(ann, None, None, 1).await.expect("page 1");
    assert_eq!(ids(first.clone()), vec![a_mid.id]);
    let cursor = ConsultationCursor { created_at_ms: first[0].created_at.timestamp_millis(), id: first[0].id };
    let second = store.consultations_of(ann, None, Some(cursor), 1).await.expect("page 2");
    assert_eq!(ids(second.clone()), vec![a_doc.id]);
    let cursor = ConsultationCursor { created_at_ms: second[0].created_at.timestamp_millis(), id: second[0].id };
    assert!(store.consultations_of(ann, None, Some(cursor), 1).await.expect("page 3").is_empty());
}

async fn the_standing_tells_an_open_consultation_from_one_that_was_ever_opened(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let ann = user(&store, "ann", Role::User).await;
    let doc = user(&store, "doc", Role::Provider).await;
    let standing = |open, opened| ConsultationStanding { open, opened };
    assert_eq!(store.consultation_standing(ann, doc).await.expect("none"), standing(false, false));
    let withdrawn = asked(ann, doc, 100);
    store.request_consultation(&withdrawn).await.expect("request");
    assert_eq!(store.consultation_standing(ann, doc).await.expect("requested"), standing(false, false));
    store.close_consultation(withdrawn.id, 150).await.expect("close").expect("closed");
    assert_eq!(
        store.consultation_standing(ann, doc).await.expect("withdrawn"),
        standing(false, false),
        "a request closed before it opened gives nothing"
    );
    let real = asked(ann, doc, 200);
    store.request_consultation(&real).await.expect("request");
    store.open_consultation(real.id, "user_provider", 300).await.expect("open").expect("opened");
    assert_eq!(store.consultation_standing(ann, doc).await.expect("open"), standing(true, true));
    assert_eq!(store.consultation_standing(doc, ann).await.expect("reversed"), standing(false, false), "directed");
    store.close_consultation(real.id, 400).await.expect("close").expect("closed");
    assert_eq!(store.consultation_standing(ann, doc).await.expect("closed"), standing(false, true));
}
