//! An uplink redelivered by the bus can reach two bridges at once: the same
//! message, stored concurrently, must be stored once and answered identically.
//! Asserted on SQLite and PostgreSQL.

use parley_store::testing::{migrated_store as store, new_user, text_message, Backend};
use parley_store::{NewGroup, NewMessage, NewUser, Store, Stored, Target};
use parley_wire::{ConversationId, UserId};

parley_store::both_backends!(concurrent_copies_of_one_message_are_stored_once);

fn user(name: &str) -> NewUser {
    new_user(name, parley_wire::Role::User)
}

fn msg(from: UserId, target: Target, client_id: &str) -> NewMessage {
    text_message(from, target, client_id, 10_000)
}

/// Stores `copies` copies of `m` at once; returns how many were new and their message ids.
async fn store_at_once(store: &Store, m: NewMessage, copies: usize) -> (usize, Vec<parley_wire::MessageId>) {
    let tasks: Vec<_> = (0..copies)
        .map(|_| {
            let (store, m) = (store.clone(), m.clone());
            tokio::spawn(async move { store.store_message(&m).await.expect("a copy is answered, not refused") })
        })
        .collect();
    let mut fresh = 0;
    let mut ids = Vec::new();
    for t in tasks {
        let stored = t.await.expect("task");
        fresh += usize::from(matches!(stored, Stored::New(_)));
        ids.push(stored.into_inner().message.id);
    }
    (fresh, ids)
}

async fn concurrent_copies_of_one_message_are_stored_once(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let a = store.insert_user(&user("a")).await.expect("a").id;
    let b = store.insert_user(&user("b")).await.expect("b").id;

    // The first message of a pair also opens their conversation, concurrently.
    let (fresh, ids) = store_at_once(&store, msg(a, Target::Direct(b), "first"), 6).await;
    assert_eq!(fresh, 1, "exactly one copy is stored");
    assert!(ids.iter().all(|id| *id == ids[0]), "every copy is answered with the stored message: {ids:?}");
    assert_eq!(store.count_messages().await.expect("count"), 1);
    let next = store.store_message(&msg(a, Target::Direct(b), "second")).await.expect("next").into_inner();
    assert_eq!(next.message.seq, 2, "the copies took no sequence number");

    let group = ConversationId::new();
    let new_group = NewGroup {
        id: group,
        title: Some("g".into()),
        audience: "user_user".into(),
        context_type: None,
        context_id: None,
        creator: a,
        members: vec![a, b],
        now_ms: 5_000,
    };
    store.create_group(&new_group).await.expect("group");
    let (fresh, ids) = store_at_once(&store, msg(b, Target::Conversation(group), "in-group"), 6).await;
    assert_eq!(fresh, 1, "exactly one copy is stored");
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let stored = store.message_by_client_id(b, "in-group").await.expect("lookup").expect("stored");
    assert_eq!((stored.id, stored.seq), (ids[0], 1));
    assert_eq!(store.count_messages().await.expect("count"), 3);
}
