//! Writers running side by side, as several bridges (or one bridge's concurrent
//! batches) do: every write succeeds, and every log stays gap-free.
//! Each test runs once per backend; the PostgreSQL variant needs `PARLEY_TEST_POSTGRES_URL`.

use std::collections::HashMap;

use parley_store::testing::{migrated_store as store, new_user, text_message, Backend};
use parley_store::{NewGroup, NewMessage, Target};
use parley_wire::{ConversationId, Role, UserId};

parley_store::both_backends!(crossing_writers_never_deadlock_and_logs_stay_gapless);

// Batches lock their conversations and then their users, each in id order, like single writes.

/// A small deterministic generator, so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

const WRITERS: usize = 8;
const WRITES: usize = 40;

async fn crossing_writers_never_deadlock_and_logs_stay_gapless(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let mut users = Vec::new();
    for i in 0..6 {
        users.push(store.insert_user(&new_user(&format!("w{i}"), Role::User)).await.expect("user").id);
    }
    let group = NewGroup {
        id: ConversationId::new(),
        title: None,
        audience: "group".into(),
        context_type: None,
        context_id: None,
        creator: users[0],
        members: users[1..].to_vec(),
        now_ms: 1,
    };
    store.create_group(&group).await.expect("group");
    // Every pair's direct conversation exists before the race, so each write
    // locks a conversation and then several users, in whatever order it names them.
    for (i, a) in users.iter().enumerate() {
        for b in &users[i + 1..] {
            store.store_message(&direct(*a, *b, &format!("seed-{a}-{b}"))).await.expect("seed");
        }
    }
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let users = users.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = Lcg(w as u64 + 1);
            for k in 0..WRITES {
                let from = users[rng.below(users.len())];
                let result = match rng.below(4) {
                    3 => {
                        // A bridge's batch: direct and group messages, several conversations.
                        let batch: Vec<NewMessage> = (0..6)
                            .map(|j| {
                                let from = users[rng.below(users.len())];
                                let mut to = users[rng.below(users.len())];
                                while to == from {
                                    to = users[rng.below(users.len())];
                                }
                                let id = format!("{w}-{k}-{j}");
                                match rng.below(2) {
                                    0 => direct(from, to, &id),
                                    _ => {
                                        NewMessage { target: Target::Conversation(group.id), ..direct(from, from, &id) }
                                    }
                                }
                            })
                            .collect();
                        let outcome = store.store_messages(&batch).await;
                        outcome.results.into_iter().collect::<Result<Vec<_>, _>>().map(|_| ())
                    }
                    0 => {
                        let mut to = users[rng.below(users.len())];
                        while to == from {
                            to = users[rng.below(users.len())];
                        }
                        store.store_message(&direct(from, to, &format!("{w}-{k}"))).await.map(|_| ())
                    }
                    1 => {
                        let msg = NewMessage {
                            target: Target::Conversation(group.id),
                            ..direct(from, from, &format!("{w}-{k}"))
                        };
                        store.store_message(&msg).await.map(|_| ())
                    }
                    _ => {
                        // Several users' logs, named in a random order.
                        let mut named = users.clone();
                        for i in (1..named.len()).rev() {
                            named.swap(i, rng.below(i + 1));
                        }
                        named.truncate(2 + rng.below(4));
                        store.append_events(&named, "receipt", None, "{}", 10).await.map(|_| ())
                    }
                };
                result.unwrap_or_else(|e| panic!("writer {w}, write {k}: {e:?}"));
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    for user in &users {
        let page = store.events_after(*user, 0, 10_000).await.expect("events");
        let seqs: Vec<i64> = page.events.iter().map(|e| e.seq).collect();
        let expected: Vec<i64> = (1..=page.last_seq).collect();
        assert_eq!(seqs, expected, "{user}'s log has no gap and no repeat");
    }
    let mut per_conversation: HashMap<ConversationId, Vec<i64>> = HashMap::new();
    for user in &users {
        for event in store.events_after(*user, 0, 10_000).await.expect("events").events {
            if let Some(m) = event.message.filter(|m| m.sender_id == *user) {
                per_conversation.entry(m.conversation_id).or_default().push(m.seq);
            }
        }
    }
    for (conversation, mut seqs) in per_conversation {
        seqs.sort();
        let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(seqs, expected, "conversation {conversation} is numbered without gaps");
    }
}

fn direct(from: UserId, to: UserId, client_id: &str) -> NewMessage {
    text_message(from, Target::Direct(to), client_id, 5)
}
