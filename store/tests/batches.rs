//! Messages stored as a batch get exactly the answers, numbers and events they
//! would get stored one at a time. Each test runs once per backend; the PostgreSQL
//! variant needs `PARLEY_TEST_POSTGRES_URL`.

use parley_store::testing::{migrated_store as store, new_user, text_message, Backend, TestDatabase};
use parley_store::{NewGroup, NewMessage, NewUser, SettingsChange, Store, StoreError, Stored, Target, Turn};
use parley_wire::payloads::Attachment;
use parley_wire::{ConversationId, MessageId, Role, UserId};
use uuid::Uuid;

parley_store::both_backends!(
    a_batch_answers_each_message_as_if_stored_alone,
    a_batch_of_one_group_keeps_its_order,
    batches_of_one_answer_as_a_message_alone,
    a_batch_stores_every_field_as_given,
    a_full_batch_is_stored_together,
    a_failed_batch_leaves_nothing_and_holds_nothing,
    batches_are_stored_in_the_order_of_their_turns,
    a_batch_stored_in_parts_answers_as_if_stored_alone
);

/// The people of the scene, the same ids in every database it is played in.
struct Cast {
    users: Vec<NewUser>,
    group: ConversationId,
}

impl Cast {
    fn new() -> Self {
        Cast { users: ["a", "b", "c", "d"].map(|n| new_user(n, Role::User)).into(), group: ConversationId::new() }
    }

    fn id(&self, i: usize) -> UserId {
        self.users[i].id
    }

    /// Users, a 1:1 conversation a–b with one message, a group {a, b, c}, and a
    /// conversation a–c that c blocked. Returns the id of a's first message to b.
    async fn set(&self, store: &Store) -> MessageId {
        for u in &self.users {
            store.insert_user(u).await.expect("user");
        }
        let (a, b, c) = (self.id(0), self.id(1), self.id(2));
        let group = NewGroup {
            id: self.group,
            title: None,
            audience: "group".into(),
            context_type: None,
            context_id: None,
            creator: a,
            members: vec![b, c],
            now_ms: 1,
        };
        store.create_group(&group).await.expect("group");
        let seed = store.store_message(&msg(a, Target::Direct(b), "seed", None)).await.expect("seed").into_inner();
        let ac = store.store_message(&msg(a, Target::Direct(c), "hi", None)).await.expect("ac").into_inner();
        let block = SettingsChange { blocked: Some(true), ..Default::default() };
        store
            .update_member_settings(ac.message.conversation_id, c, &block, 3, |_| "{}".into())
            .await
            .expect("block")
            .expect("member");
        seed.message.id
    }

    /// Every case the bridge meets, in one batch.
    fn batch(&self, seed: MessageId) -> Vec<NewMessage> {
        let (a, b, c, d) = (self.id(0), self.id(1), self.id(2), self.id(3));
        let group = Target::Conversation(self.group);
        vec![
            msg(a, Target::Direct(b), "1", None),
            msg(b, Target::Direct(a), "2", None),
            msg(a, group, "3", None),
            msg(d, group, "4", None),                    // not a member
            msg(a, Target::Direct(d), "5", None),        // the first message of a–d
            msg(a, Target::Direct(d), "6", None),        // the second, same batch
            msg(a, Target::Direct(b), "1", None),        // a retry inside the batch
            msg(a, Target::Direct(b), "seed", None),     // a retry of an earlier message
            msg(a, Target::Direct(c), "9", None),        // blocked
            msg(b, group, "10", Some(seed)),             // a reply to another conversation
            msg(b, Target::Direct(a), "11", Some(seed)), // a reply in place
            msg(c, group, "12", None),
            msg(a, Target::Direct(UserId::new()), "13", None), // nobody
            msg(a, Target::Conversation(ConversationId::new()), "14", None), // no such conversation
        ]
    }
}

fn msg(sender: UserId, target: Target, client_id: &str, reply_to: Option<MessageId>) -> NewMessage {
    NewMessage { reply_to, ..text_message(sender, target, client_id, 100) }
}

/// A message whose writes fail: its attachment is no upload (the bridge checks
/// that before, so only a bug would send it), and the foreign key refuses it.
fn unwritable(sender: UserId, target: Target) -> NewMessage {
    let ghost = Attachment { id: Uuid::now_v7(), content_type: "image/png".into(), size: 1, filename: None };
    NewMessage { kind: "image", body: String::new(), attachment: Some(ghost), ..msg(sender, target, "bad", None) }
}

/// What an answer says, without the ids each database makes up.
fn shape(result: &Result<Stored<parley_store::Posted>, StoreError>) -> String {
    match result {
        Ok(stored) => {
            let fresh = matches!(stored, Stored::New(_));
            let posted = stored.clone().into_inner();
            let mut deliveries = posted.deliveries.clone();
            deliveries.sort();
            let m = &posted.message;
            format!("new={fresh} {} seq={} {:?} reply={}", m.client_id, m.seq, deliveries, m.reply_to.is_some())
        }
        Err(e) => format!("{e:?}"),
    }
}

/// Each user's log as (number, kind, client id of the message).
async fn logs(store: &Store, cast: &Cast) -> Vec<Vec<(i64, String, Option<String>)>> {
    let mut out = Vec::new();
    for u in &cast.users {
        let page = store.events_after(u.id, 0, 1000).await.expect("events");
        out.push(page.events.into_iter().map(|e| (e.seq, e.kind, e.message.map(|m| m.client_id))).collect());
    }
    out
}

/// The same scene in two databases: one to store batches in, one to store the
/// same messages one at a time, for comparison.
struct Twin {
    cast: Cast,
    batched: Store,
    seed_batched: MessageId,
    alone: Store,
    seed_alone: MessageId,
    _dbs: (TestDatabase, TestDatabase),
}

impl Twin {
    async fn set(backend: Backend) -> Option<Twin> {
        let ((batched, db1), (alone, db2)) = (store(backend).await?, store(backend).await?);
        let cast = Cast::new();
        let seed_batched = cast.set(&batched).await;
        let seed_alone = cast.set(&alone).await;
        Some(Twin { cast, batched, seed_batched, alone, seed_alone, _dbs: (db1, db2) })
    }
}

/// One database with the scene set: the store, its database, the cast and the
/// seed message's id.
async fn staged(backend: Backend) -> Option<(Store, TestDatabase, Cast, MessageId)> {
    let (store, db) = store(backend).await?;
    let cast = Cast::new();
    let seed = cast.set(&store).await;
    Some((store, db, cast, seed))
}

async fn a_batch_answers_each_message_as_if_stored_alone(backend: Backend) {
    let Some(Twin { cast, batched, seed_batched, alone, seed_alone, _dbs }) = Twin::set(backend).await else {
        return;
    };

    let outcome = batched.store_messages(&cast.batch(seed_batched)).await;
    let mut expected = Vec::new();
    for m in cast.batch(seed_alone) {
        expected.push(shape(&alone.store_message(&m).await));
    }
    let got: Vec<String> = outcome.results.iter().map(shape).collect();
    assert_eq!(got, expected);
    assert_eq!(outcome.together, 7, "1, 2, 3, 5, 6, 11 and 12 share the transaction: {got:#?}");
    for (i, want) in
        [(3, "NotMember"), (8, "Blocked { by_sender: false }"), (9, "InvalidReply"), (12, "MissingReference")]
    {
        assert_eq!(got[i], want, "message {i}");
    }
    let first = outcome.results[0].as_ref().expect("1").clone().into_inner();
    let retry = outcome.results[6].as_ref().expect("retry of 1").clone();
    assert!(matches!(&retry, Stored::Existing(p) if p.message.id == first.message.id), "{retry:?}");
    assert_eq!(logs(&batched, &cast).await, logs(&alone, &cast).await, "every log as if one at a time");
    let group = batched.get_conversation(cast.group).await.expect("get").expect("group");
    assert_eq!(group.last_seq, 2, "3 and 12, numbered without a gap");
}

/// Every case of the scene sent as a batch of its own, as a quiet bridge sends
/// them. PostgreSQL stores each through its batch function (one round trip);
/// SQLite stores a batch of one as a message alone.
async fn batches_of_one_answer_as_a_message_alone(backend: Backend) {
    let Some(Twin { cast, batched, seed_batched, alone, seed_alone, _dbs }) = Twin::set(backend).await else {
        return;
    };
    let mut together = 0;
    for (m, n) in cast.batch(seed_batched).into_iter().zip(cast.batch(seed_alone)) {
        let outcome = batched.store_messages(std::slice::from_ref(&m)).await;
        together += outcome.together;
        assert_eq!(outcome.results.len(), 1);
        assert_eq!(shape(&outcome.results[0]), shape(&alone.store_message(&n).await), "{}", m.client_id);
    }
    // Both backends take a message alone through the batch path too.
    assert_eq!(together, 7, "1, 2, 3, 5, 6, 11 and 12 stored by the batch path");
    assert_eq!(logs(&batched, &cast).await, logs(&alone, &cast).await, "every log as if one at a time");
}

async fn a_batch_of_one_group_keeps_its_order(backend: Backend) {
    let Some((store, _db, cast, _)) = staged(backend).await else { return };
    let senders = [cast.id(0), cast.id(1), cast.id(2)];
    let batch: Vec<NewMessage> =
        (0..30).map(|k| msg(senders[k % 3], Target::Conversation(cast.group), &format!("g{k}"), None)).collect();
    let outcome = store.store_messages(&batch).await;
    assert_eq!(outcome.together, 30);
    let seqs: Vec<i64> =
        outcome.results.iter().map(|r| r.as_ref().expect("stored").clone().into_inner().message.seq).collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<i64>>(), "numbered in the order given");
    for (k, user) in senders.iter().enumerate() {
        let page = store.events_after(*user, 0, 1000).await.expect("events");
        let texts: Vec<String> =
            page.events.iter().filter_map(|e| e.message.as_ref().map(|m| m.client_id.clone())).collect();
        let group: Vec<String> = texts.into_iter().filter(|t| t.starts_with('g')).collect();
        assert_eq!(group, (0..30).map(|k| format!("g{k}")).collect::<Vec<_>>(), "member {k} saw the order given");
        let seqs: Vec<i64> = page.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=page.last_seq).collect::<Vec<_>>(), "member {k}'s log has no gap");
    }
}

/// Whatever a message carries is read back as given: quotes, backslashes,
/// newlines and other scripts in ids and texts, an attachment, a reply.
async fn a_batch_stores_every_field_as_given(backend: Backend) {
    let Some((store, _db, cast, seed)) = staged(backend).await else { return };
    let (a, b) = (cast.id(0), cast.id(1));
    let upload = Uuid::now_v7();
    let attachment = Attachment {
        id: upload,
        content_type: "image/png".into(),
        size: 4096,
        filename: Some("été \"quoted\".png".into()),
    };
    store.insert_upload(a, &attachment, 5).await.expect("upload");
    let odd = NewMessage {
        body: "line 1\nline \"2\" \\ \u{1F600} 中文 ',' {}".into(),
        ..msg(a, Target::Direct(b), "id \"with\" , quotes\\", None)
    };
    let media = NewMessage {
        kind: "image",
        body: String::new(),
        attachment: Some(attachment.clone()),
        reply_to: Some(seed),
        ..msg(a, Target::Direct(b), "media", None)
    };
    let outcome = store.store_messages(&[odd.clone(), media.clone()]).await;
    assert_eq!(outcome.together, 2);
    for (sent, result) in [odd, media].iter().zip(&outcome.results) {
        let answered = result.as_ref().expect("stored").clone().into_inner().message;
        let read = store.message(answered.id).await.expect("read").expect("row");
        assert_eq!(read, answered, "read back as answered");
        assert_eq!((read.client_id.as_str(), read.text.as_str()), (sent.client_id.as_str(), sent.body.as_str()));
        assert_eq!((read.kind.as_str(), read.reply_to), (sent.kind, sent.reply_to));
        assert_eq!(read.attachment, sent.attachment);
        assert_eq!(read.sent_at.timestamp_millis(), sent.now_ms);
    }
}

/// The bridge's largest batch (1,000 messages) is one transaction on both
/// backends: no statement of it runs into a limit of the database.
async fn a_full_batch_is_stored_together(backend: Backend) {
    let Some((store, _db, cast, _)) = staged(backend).await else { return };
    let (a, b, d) = (cast.id(0), cast.id(1), cast.id(3));
    let batch: Vec<NewMessage> = (0..1000)
        .map(|k| match k % 3 {
            0 => msg(a, Target::Direct(b), &format!("f{k}"), None),
            1 => msg(b, Target::Direct(d), &format!("f{k}"), None),
            _ => msg(d, Target::Direct(a), &format!("f{k}"), None),
        })
        .collect();
    let outcome = store.store_messages(&batch).await;
    assert_eq!(outcome.together, 1000);
    assert!(outcome.results.iter().all(|r| matches!(r, Ok(Stored::New(_)))));
    let page = store.events_after(a, 0, 1000).await.expect("events");
    assert_eq!(page.events.len(), 667 + 1 + 1, "a's log: 667 new, the seed and the message to c");
}

/// A batch whose writes fail (here: an attachment that is no upload, which the
/// bridge checks before, so only a bug would send it) leaves no row and no open
/// transaction behind: its other messages are stored one by one, and the next
/// batch is stored together (on SQLite a transaction left open would hold the
/// write lock, and both would wait for it and fail).
async fn a_failed_batch_leaves_nothing_and_holds_nothing(backend: Backend) {
    let Some((store, _db, cast, _)) = staged(backend).await else { return };
    let (a, b) = (cast.id(0), cast.id(1));
    let before = store.count_messages().await.expect("count");
    let bad = unwritable(a, Target::Direct(b));
    let batch = [msg(a, Target::Direct(b), "g1", None), bad, msg(b, Target::Direct(a), "g2", None)];
    let outcome = store.store_messages(&batch).await;
    assert_eq!(outcome.together, 0, "the batch failed as a whole");
    let shapes: Vec<String> = outcome.results.iter().map(shape).collect();
    assert!(shapes[0].starts_with("new=true g1 seq=2 "), "{shapes:?}");
    assert!(outcome.results[1].is_err(), "{shapes:?}");
    assert!(shapes[2].starts_with("new=true g2 seq=3 "), "{shapes:?}");
    assert_eq!(store.count_messages().await.expect("count"), before + 2, "the two good ones, once");

    let next = [msg(a, Target::Direct(b), "g3", None), msg(b, Target::Direct(a), "g4", None)];
    let outcome = store.store_messages(&next).await;
    assert_eq!(outcome.together, 2, "the next batch is one transaction again");
    let shapes: Vec<String> = outcome.results.iter().map(shape).collect();
    assert!(shapes[0].starts_with("new=true g3 seq=4 ") && shapes[1].starts_with("new=true g4 seq=5 "), "{shapes:?}");
}

/// A batch stored in turn waits for its turn before it stores anything, and the
/// batch before it says when its turn ends only once all of it is stored, the
/// messages it left to the one-by-one path included: so the second batch's
/// messages come after the first's in their conversation, whichever starts first.
async fn batches_are_stored_in_the_order_of_their_turns(backend: Backend) {
    let Some((store, _db, cast, _)) = staged(backend).await else { return };
    let (a, b) = (cast.id(0), cast.id(1));
    let before = store.count_messages().await.expect("count");
    let bad = unwritable(a, Target::Direct(b));
    // The first batch fails as a whole and is stored one by one.
    let first = [msg(a, Target::Direct(b), "t1", None), bad, msg(b, Target::Direct(a), "t2", None)];
    let second = [msg(a, Target::Direct(b), "t3", None), msg(b, Target::Direct(a), "t4", None)];
    let (first_turn, first_end) = Turn::after(None);
    let (second_turn, second_end) = Turn::after(Some(first_end));
    let waiting = store.store_messages_in_turn(&second, second_turn);
    tokio::pin!(waiting);
    // Its turn has not come: it stores nothing, however long it is given.
    assert!(tokio::time::timeout(std::time::Duration::from_millis(300), &mut waiting).await.is_err());
    assert_eq!(store.count_messages().await.expect("count"), before, "nothing stored before its turn");

    let (second_outcome, first_outcome) = tokio::join!(waiting, store.store_messages_in_turn(&first, first_turn));
    assert!(second_end.stored().await, "the second batch's turn ended with its storing");
    assert_eq!(first_outcome.together, 0, "the first batch failed as a whole");
    assert_eq!(second_outcome.together, 2);
    let seqs: Vec<String> =
        first_outcome.results.iter().chain(&second_outcome.results).filter(|r| r.is_ok()).map(shape).collect();
    let want = ["t1 seq=2", "t2 seq=3", "t3 seq=4", "t4 seq=5"];
    assert_eq!(seqs.len(), 4, "{seqs:?}");
    for (got, want) in seqs.iter().zip(want) {
        assert!(got.starts_with(&format!("new=true {want} ")), "{seqs:?}");
    }
}

/// A large batch of two groups of people who share no conversation (a–b, c–d) is
/// stored on PostgreSQL in two parts at once, each its own transaction; the
/// answers, numbers and logs are still those of one message at a time. A part
/// that fails (c–d, with a message whose writes fail) is stored one by one
/// without taking the other part with it. SQLite stores the batch as one
/// transaction, which that message fails as a whole.
async fn a_batch_stored_in_parts_answers_as_if_stored_alone(backend: Backend) {
    let Some(Twin { cast, batched, seed_batched, alone, seed_alone, _dbs }) = Twin::set(backend).await else {
        return;
    };
    let (a, b, c, d) = (cast.id(0), cast.id(1), cast.id(2), cast.id(3));
    let batch = |seed: MessageId| -> Vec<NewMessage> {
        let mut out = Vec::new();
        for k in 0..100 {
            let ab = match k {
                10 => msg(a, Target::Direct(b), "p0", None),   // a retry inside the batch
                20 => msg(a, Target::Direct(b), "seed", None), // a retry of an earlier message
                30 => msg(a, Target::Direct(UserId::new()), "p30", None), // nobody
                41 => msg(b, Target::Direct(a), "p41", Some(seed)), // a reply in place
                k if k % 2 == 0 => msg(a, Target::Direct(b), &format!("p{k}"), None),
                k => msg(b, Target::Direct(a), &format!("p{k}"), None),
            };
            let cd = match k {
                50 => unwritable(c, Target::Direct(d)),
                k if k % 3 == 0 => msg(d, Target::Direct(c), &format!("q{k}"), None),
                k => msg(c, Target::Direct(d), &format!("q{k}"), None),
            };
            out.extend([ab, cd]);
        }
        out
    };

    let outcome = batched.store_messages(&batch(seed_batched)).await;
    let mut expected = Vec::new();
    for m in batch(seed_alone) {
        expected.push(shape(&alone.store_message(&m).await));
    }
    let got: Vec<String> = outcome.results.iter().map(shape).collect();
    for (i, (got, want)) in got.iter().zip(&expected).enumerate() {
        // The failing message's error names its attachment, a new id in each database.
        if i != 101 {
            assert_eq!(got, want, "message {i}");
        }
    }
    let together = match backend {
        // a–b's part: 100 messages but for the two retries and the one to nobody.
        Backend::Postgres => 97,
        Backend::Sqlite => 0,
    };
    assert_eq!(outcome.together, together);
    assert!(got[1].starts_with("new=true q0 seq=1 "), "c–d made by its first message: {}", got[1]);
    assert!(outcome.results[101].is_err(), "the message whose writes fail: {}", got[101]);
    assert_eq!(got[60], "MissingReference", "the message to nobody");
    assert!(got[20].starts_with("new=false p0 "), "{}", got[20]);
    assert_eq!(logs(&batched, &cast).await, logs(&alone, &cast).await, "every log as if one at a time");
    assert_eq!(batched.count_messages().await.expect("count"), alone.count_messages().await.expect("count"));
}
