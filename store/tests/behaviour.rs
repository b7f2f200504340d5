//! The store's behaviour, asserted identically on SQLite and PostgreSQL.
//! Each test runs once per backend; the PostgreSQL variant needs `PARLEY_TEST_POSTGRES_URL`.

use parley_store::testing::{migrated_store as store, Backend};
use parley_store::{MessageRange, NewGroup, NewMessage, NewUser, StoreError, Stored, Target};
use parley_wire::ConversationId;
use parley_wire::UserId;

parley_store::both_backends!(
    users_are_unique_by_each_identifier,
    users_are_found_by_any_login,
    messages_are_stored_once_per_sender_and_client_id,
    sequence_numbers_are_gapless_per_conversation,
    another_senders_client_id_is_a_different_message,
    message_pages_read_forward_and_backward,
    conversations_list_newest_activity_first_with_members,
    unknown_recipient_is_a_missing_reference,
    every_member_gets_a_gapless_event_per_message,
    groups_have_roles_and_only_members_post,
    receipts_only_move_forward_and_drive_unread_counts,
    edits_deletions_and_reactions_change_messages_and_tell_members,
    settings_filter_listings_and_blocks_stop_messages_both_ways,
    search_finds_what_the_reader_may_see_as_it_is_now,
    search_finds_the_same_once_pending_entries_are_merged,
);

fn user(name: &str) -> NewUser {
    NewUser {
        id: UserId::new(),
        username: Some(name.to_string()),
        email: Some(format!("{name}@example.com")),
        phone: None,
        display_name: None,
        password_hash: "hash".into(),
        role: parley_wire::Role::User,
        created_at_ms: 1_000,
    }
}

fn msg(from: UserId, to: UserId, client_id: &str, now_ms: i64) -> NewMessage {
    parley_store::testing::text_message(from, Target::Direct(to), client_id, now_ms)
}

fn in_group(from: UserId, group: ConversationId, client_id: &str, now_ms: i64) -> NewMessage {
    NewMessage { target: Target::Conversation(group), ..msg(from, from, client_id, now_ms) }
}

async fn users_are_unique_by_each_identifier(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    store.insert_user(&user("ada")).await.expect("first insert");
    let mut same_email = user("grace");
    same_email.email = Some("ada@example.com".into());
    let err = store.insert_user(&same_email).await.expect_err("duplicate email");
    assert!(matches!(err, StoreError::Conflict("email")), "{err:?}");
    let mut same_name = user("ada");
    same_name.email = None;
    let err = store.insert_user(&same_name).await.expect_err("duplicate username");
    assert!(matches!(err, StoreError::Conflict("username")), "{err:?}");
    assert!(store.find_user_by_login("grace").await.expect("lookup").is_none());
}

async fn users_are_found_by_any_login(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let mut new = user("lin");
    new.phone = Some("+15551234567".into());
    let inserted = store.insert_user(&new).await.expect("insert");
    for login in ["lin", "lin@example.com", "+15551234567"] {
        let found = store.find_user_by_login(login).await.expect("lookup").expect("found");
        assert_eq!(found, inserted);
    }
    assert_eq!(store.get_user(new.id).await.expect("get"), Some(inserted));
    assert!(store.user_exists(new.id).await.expect("exists"));
    assert!(!store.user_exists(UserId::new()).await.expect("exists"));
}

async fn messages_are_stored_once_per_sender_and_client_id(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let a = store.insert_user(&user("a")).await.expect("a").id;
    let b = store.insert_user(&user("b")).await.expect("b").id;
    let first = store.store_message(&msg(a, b, "c1", 10)).await.expect("store");
    let Stored::New(first) = first else { panic!("first write must be new: {first:?}") };
    let again = store.store_message(&msg(a, b, "c1", 20)).await.expect("retry");
    assert_eq!(again, Stored::Existing(first.clone()));
    assert_eq!(store.count_messages().await.expect("count"), 1);
    let next = store.store_message(&msg(a, b, "c2", 30)).await.expect("next").into_inner().message;
    assert_eq!(next.seq, 2, "the retry must not have consumed a sequence number");
}

async fn sequence_numbers_are_gapless_per_conversation(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let a = store.insert_user(&user("a")).await.expect("a").id;
    let b = store.insert_user(&user("b")).await.expect("b").id;
    let c = store.insert_user(&user("c")).await.expect("c").id;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = store.clone();
        let (from, to) = if i % 2 == 0 { (a, b) } else { (b, a) };
        tasks.push(tokio::spawn(async move { store.store_message(&msg(from, to, &format!("m{i}"), i)).await }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        let m = t.await.expect("join").expect("store").into_inner().message;
        seqs.push(m.seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    let other = store.store_message(&msg(a, c, "x", 100)).await.expect("a→c").into_inner().message;
    assert_eq!(other.seq, 1, "each conversation numbers on its own");
}

async fn another_senders_client_id_is_a_different_message(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let a = store.insert_user(&user("a")).await.expect("a").id;
    let b = store.insert_user(&user("b")).await.expect("b").id;
    let from_a = store.store_message(&msg(a, b, "same", 1)).await.expect("a").into_inner().message;
    let from_b = store.store_message(&msg(b, a, "same", 2)).await.expect("b");
    let Stored::New(from_b) = from_b else { panic!("b's message must be new: {from_b:?}") };
    assert_ne!(from_a.id, from_b.message.id);
    assert_eq!(from_b.message.sender_id, b);
    assert_eq!(store.count_messages().await.expect("count"), 2);
}

async fn message_pages_read_forward_and_backward(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let a = store.insert_user(&user("a")).await.expect("a").id;
    let b = store.insert_user(&user("b")).await.expect("b").id;
    let mut conversation = None;
    for i in 1..=7 {
        let m = store.store_message(&msg(a, b, &format!("m{i}"), i)).await.expect("store");
        conversation = Some(m.into_inner().message.conversation_id);
    }
    let conversation = conversation.expect("conversation");
    let seqs = |p: &parley_store::MessagePage| p.messages.iter().map(|m| m.seq).collect::<Vec<_>>();

    let latest =
        store.messages_in(conversation, a, MessageRange { after: None, before: None, limit: 3 }).await.expect("latest");
    assert_eq!((seqs(&latest), latest.has_more), (vec![5, 6, 7], true));
    let older = store
        .messages_in(conversation, a, MessageRange { after: None, before: Some(5), limit: 3 })
        .await
        .expect("older");
    assert_eq!((seqs(&older), older.has_more), (vec![2, 3, 4], true));
    let oldest = store
        .messages_in(conversation, a, MessageRange { after: None, before: Some(2), limit: 3 })
        .await
        .expect("oldest");
    assert_eq!((seqs(&oldest), oldest.has_more), (vec![1], false));
    let forward = store
        .messages_in(conversation, a, MessageRange { after: Some(4), before: None, limit: 2 })
        .await
        .expect("forward");
    assert_eq!((seqs(&forward), forward.has_more), (vec![5, 6], true));
    let between = store
        .messages_in(conversation, a, MessageRange { after: Some(2), before: Some(5), limit: 10 })
        .await
        .expect("between");
    assert_eq!((seqs(&between), between.has_more), (vec![3, 4], false));
    assert_eq!(latest.messages[2].text, "text m7");
    assert_eq!(latest.messages[2].sender_id, a);
}

async fn conversations_list_newest_activity_first_with_members(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let a = store.insert_user(&user("a")).await.expect("a").id;
    let b = store.insert_user(&user("b")).await.expect("b").id;
    let c = store.insert_user(&user("c")).await.expect("c").id;
    let d = store.insert_user(&user("d")).await.expect("d").id;
    let ab = store.store_message(&msg(a, b, "1", 100)).await.expect("ab").into_inner().message;
    let ac = store.store_message(&msg(c, a, "2", 200)).await.expect("ac").into_inner().message;
    store.store_message(&msg(c, d, "3", 300)).await.expect("cd");
    let ab2 = store.store_message(&msg(b, a, "4", 400)).await.expect("ab2").into_inner().message;

    let list = store.conversations_for(a, None, 10, &Default::default()).await.expect("list");
    let ids: Vec<_> = list.iter().map(|c| c.conversation.id).collect();
    assert_eq!(ids, vec![ab.conversation_id, ac.conversation_id], "newest first, only a's");
    assert_eq!(list[0].last_message.as_ref(), Some(&ab2));
    assert_eq!(list[0].conversation.last_seq, 2);
    assert_eq!(list[0].unread, 1, "b's message is unread for a");
    let mut members: Vec<UserId> = list[0].members.iter().map(|m| m.user_id).collect();
    members.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(members, expected);

    let cursor = parley_store::ConversationCursor {
        last_activity_ms: list[0].conversation.last_activity_ms,
        id: list[0].conversation.id,
    };
    let page2 = store.conversations_for(a, Some(cursor), 10, &Default::default()).await.expect("page 2");
    assert_eq!(page2.iter().map(|c| c.conversation.id).collect::<Vec<_>>(), vec![ac.conversation_id]);
    assert!(store.is_member(ab.conversation_id, b).await.expect("member"));
    assert!(!store.is_member(ab.conversation_id, c).await.expect("not member"));
}

async fn unknown_recipient_is_a_missing_reference(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let a = store.insert_user(&user("a")).await.expect("a").id;
    let err = store.store_message(&msg(a, UserId::new(), "x", 1)).await.expect_err("no such user");
    assert!(matches!(err, StoreError::MissingReference), "{err:?}");
    assert_eq!(store.count_messages().await.expect("count"), 0);
    assert!(store.conversations_for(a, None, 10, &Default::default()).await.expect("list").is_empty());
}

async fn every_member_gets_a_gapless_event_per_message(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let a = store.insert_user(&user("a")).await.expect("a").id;
    let b = store.insert_user(&user("b")).await.expect("b").id;
    let c = store.insert_user(&user("c")).await.expect("c").id;
    let first = store.store_message(&msg(a, b, "1", 10)).await.expect("a→b").into_inner();
    let mut deliveries = first.deliveries.clone();
    deliveries.sort();
    let mut expected = vec![(a, 1), (b, 1)];
    expected.sort();
    assert_eq!(deliveries, expected, "sender and recipient each take their next number");
    store.store_message(&msg(c, b, "2", 20)).await.expect("c→b");
    let receipt = store.append_events(&[b], "receipt", None, r#"{"x":1}"#, 30).await.expect("append");
    assert_eq!(receipt, vec![(b, 3)]);

    let page = store.events_after(b, 0, 10).await.expect("events");
    assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!((page.last_seq, page.oldest_seq), (3, 1));
    assert_eq!(page.events[0].message.as_ref().map(|m| m.text.as_str()), Some("text 1"));
    assert_eq!(page.events[1].message.as_ref().map(|m| m.sender_id), Some(c));
    assert_eq!((page.events[2].kind.as_str(), page.events[2].body.as_str()), ("receipt", r#"{"x":1}"#));
    let tail = store.events_after(b, 2, 10).await.expect("tail");
    assert_eq!(tail.events.len(), 1);
    assert_eq!(store.events_after(a, 0, 10).await.expect("a").events.len(), 1);
    assert_eq!(store.delete_events_before(25).await.expect("prune"), 4, "a1, b1, c1 and b2 are older");
    let pruned = store.events_after(b, 0, 10).await.expect("pruned");
    assert_eq!((pruned.events.len(), pruned.last_seq, pruned.oldest_seq), (1, 3, 3));
}

async fn groups_have_roles_and_only_members_post(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let a = store.insert_user(&user("a")).await.expect("a").id;
    let b = store.insert_user(&user("b")).await.expect("b").id;
    let c = store.insert_user(&user("c")).await.expect("c").id;
    let group = NewGroup {
        id: ConversationId::new(),
        title: Some("team".into()),
        audience: "group".into(),
        context_type: None,
        context_id: None,
        creator: a,
        members: vec![b],
        now_ms: 5,
    };
    store.create_group(&group).await.expect("create");
    let roles: Vec<(UserId, String)> =
        store.members(group.id).await.expect("members").into_iter().map(|m| (m.user_id, m.role)).collect();
    assert!(
        roles.contains(&(a, "owner".into())) && roles.contains(&(b, "member".into())) && roles.len() == 2,
        "{roles:?}"
    );
    let err = store.store_message(&in_group(c, group.id, "x", 6)).await.expect_err("c is not a member");
    assert!(matches!(err, StoreError::NotMember), "{err:?}");
    let err = store.store_message(&in_group(a, ConversationId::new(), "y", 6)).await.expect_err("no such group");
    assert!(matches!(err, StoreError::NotMember), "{err:?}");
    assert!(store.add_member(group.id, c, "member", 7).await.expect("add"));
    assert!(!store.add_member(group.id, c, "member", 7).await.expect("again"), "already a member");
    let posted = store.store_message(&in_group(c, group.id, "z", 8)).await.expect("c posts").into_inner();
    assert_eq!((posted.message.seq, posted.deliveries.len()), (1, 3));
    assert!(store.set_member_role(group.id, b, "admin").await.expect("role"));
    assert!(store.remove_member(group.id, c).await.expect("remove"));
    assert!(!store.is_member(group.id, c).await.expect("gone"));
    store.rename_conversation(group.id, Some("renamed")).await.expect("rename");
    let record = store.get_conversation(group.id).await.expect("get").expect("exists");
    assert_eq!((record.kind.as_str(), record.title.as_deref(), record.last_seq), ("group", Some("renamed"), 1));
    let mut bad = group.clone();
    bad.id = ConversationId::new();
    bad.members = vec![UserId::new()];
    assert!(matches!(store.create_group(&bad).await, Err(StoreError::MissingReference)));
    assert!(store.get_conversation(bad.id).await.expect("get").is_none(), "nothing created");
}

async fn receipts_only_move_forward_and_drive_unread_counts(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let a = store.insert_user(&user("a")).await.expect("a").id;
    let b = store.insert_user(&user("b")).await.expect("b").id;
    let mut conversation = None;
    for i in 1..=4 {
        conversation = Some(
            store
                .store_message(&msg(a, b, &format!("m{i}"), i))
                .await
                .expect("store")
                .into_inner()
                .message
                .conversation_id,
        );
    }
    let conversation = conversation.expect("conversation");
    store.store_message(&msg(b, a, "reply", 10)).await.expect("reply");
    assert_eq!(store.unread_counts_for(b).await.expect("unread"), vec![(conversation, 4)]);
    assert_eq!(store.unread_counts_for(a).await.expect("unread"), vec![(conversation, 1)]);

    let (m, moved) = store.advance_receipts(conversation, b, Some(3), None).await.expect("receipt").expect("member");
    assert_eq!((m.last_delivered_seq, m.last_read_seq, moved), (3, 0, true));
    let (m, moved) = store.advance_receipts(conversation, b, None, Some(2)).await.expect("receipt").expect("member");
    assert_eq!((m.last_delivered_seq, m.last_read_seq, moved), (3, 2, true));
    let (m, moved) = store.advance_receipts(conversation, b, Some(1), Some(1)).await.expect("receipt").expect("member");
    assert_eq!((m.last_delivered_seq, m.last_read_seq, moved), (3, 2, false), "never backwards");
    let (m, _) = store.advance_receipts(conversation, b, None, Some(99)).await.expect("receipt").expect("member");
    assert_eq!((m.last_delivered_seq, m.last_read_seq), (5, 5), "capped at the newest message; read implies delivered");
    assert_eq!(store.unread_counts_for(b).await.expect("unread"), vec![(conversation, 0)]);
    let stranger = store.insert_user(&user("s")).await.expect("s").id;
    assert!(store.advance_receipts(conversation, stranger, Some(1), None).await.expect("receipt").is_none());
}

async fn edits_deletions_and_reactions_change_messages_and_tell_members(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let a = store.insert_user(&user("a")).await.expect("a").id;
    let b = store.insert_user(&user("b")).await.expect("b").id;
    let first = store.store_message(&msg(a, b, "1", 10)).await.expect("first").into_inner().message;
    let mut reply = msg(b, a, "2", 20);
    reply.reply_to = Some(first.id);
    let second = store.store_message(&reply).await.expect("reply").into_inner().message;
    assert_eq!(second.reply_to, Some(first.id));
    let mut stray = msg(b, a, "3", 21);
    stray.reply_to = Some(parley_wire::MessageId::new());
    assert!(matches!(store.store_message(&stray).await, Err(StoreError::InvalidReply)));

    assert!(store.edit_message(first.id, b, "not mine", 30).await.expect("edit").is_none(), "only the sender edits");
    let (edited, _) = store.edit_message(first.id, a, "better", 30).await.expect("edit").expect("edited");
    assert_eq!((edited.message.text.as_str(), edited.deliveries.len()), ("better", 2));
    assert_eq!(
        store.edits_of(first.id).await.expect("edits").iter().map(|e| e.text.clone()).collect::<Vec<_>>(),
        vec!["text 1"]
    );

    let counts = |c: &std::collections::BTreeMap<String, i64>| format!("{c:?}");
    let liked = store.react(&second, a, "👍", true, 40, counts).await.expect("react").expect("changed");
    assert_eq!(liked.counts.get("👍"), Some(&1));
    assert!(
        store.react(&second, a, "👍", true, 41, counts).await.expect("again").is_none(),
        "one of each emoji per user"
    );
    store.react(&second, b, "👍", true, 42, counts).await.expect("react").expect("changed");
    let conversation = first.conversation_id;
    let page = store
        .messages_in(conversation, a, MessageRange { after: Some(0), before: None, limit: 10 })
        .await
        .expect("page");
    assert_eq!(page.messages[1].reactions.get("👍"), Some(&2));
    assert!(page.messages[0].edited_at.is_some());

    store.hide_message(&second, a, "{}", 50).await.expect("hide");
    let for_a = store
        .messages_in(conversation, a, MessageRange { after: Some(0), before: None, limit: 10 })
        .await
        .expect("a's view");
    let for_b = store
        .messages_in(conversation, b, MessageRange { after: Some(0), before: None, limit: 10 })
        .await
        .expect("b's view");
    assert!(for_a.messages[1].deleted && for_a.messages[1].text.is_empty(), "hidden for a");
    assert!(!for_b.messages[1].deleted && for_b.messages[1].text == "text 2", "still there for b");

    let deleted = store.delete_message(first.id, a, "{}", 60).await.expect("delete").expect("deleted");
    assert!(deleted.message.deleted && deleted.message.text.is_empty());
    assert!(store.delete_message(first.id, a, "{}", 61).await.expect("again").is_none());
    assert!(
        store.edit_message(first.id, a, "zombie", 62).await.expect("edit").is_none(),
        "a tombstone cannot be edited"
    );
    assert!(store.edits_of(first.id).await.expect("edits").is_empty(), "old texts go with the message");
    let after = store
        .messages_in(conversation, b, MessageRange { after: Some(0), before: None, limit: 10 })
        .await
        .expect("page");
    assert_eq!(after.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2], "the tombstone keeps its seq");
    let kinds: Vec<String> =
        store.events_after(b, 0, 50).await.expect("events").events.into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["message", "message", "message_edited", "reaction", "reaction", "message_deleted"]);
}

async fn settings_filter_listings_and_blocks_stop_messages_both_ways(backend: Backend) {
    use parley_store::{ConversationFilter, ListView, SettingsChange};
    let Some((store, _db)) = store(backend).await else { return };
    let mut ada = user("ada");
    ada.display_name = Some("Ada Lovelace".into());
    let a = store.insert_user(&ada).await.expect("a").id;
    let b = store.insert_user(&user("bob")).await.expect("b").id;
    let c = store.insert_user(&user("cy_100%")).await.expect("c").id;
    let ab = store.store_message(&msg(a, b, "1", 10)).await.expect("ab").into_inner().message.conversation_id;
    let cb = store.store_message(&msg(c, b, "2", 20)).await.expect("cb").into_inner().message.conversation_id;
    let body = |_: &parley_store::MemberSettings| "{}".to_string();
    let change = SettingsChange { pinned: Some(true), muted_until_ms: Some(Some(5_000)), ..Default::default() };
    let (settings, seq) =
        store.update_member_settings(ab, b, &change, 30, body).await.expect("update").expect("member");
    assert!(settings.pinned && settings.muted_until.is_some() && !settings.archived);
    assert!(seq > 0);
    let unmute = SettingsChange { muted_until_ms: Some(None), archived: Some(true), ..Default::default() };
    let (settings, _) = store.update_member_settings(ab, b, &unmute, 31, body).await.expect("update").expect("member");
    assert!(settings.pinned && settings.muted_until.is_none() && settings.archived, "{settings:?}");
    assert!(store.update_member_settings(ab, c, &unmute, 31, body).await.expect("update").is_none(), "not a member");

    let list = |view: ListView, query: Option<&str>| {
        let store = store.clone();
        let filter = ConversationFilter { view, query: query.map(str::to_string) };
        async move {
            store
                .conversations_for(b, None, 10, &filter)
                .await
                .expect("list")
                .into_iter()
                .map(|c| c.conversation.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(ListView::All, None).await, vec![cb], "archived ones are not in the main list");
    assert_eq!(list(ListView::Archived, None).await, vec![ab]);
    assert_eq!(list(ListView::Pinned, None).await, vec![ab]);
    assert_eq!(list(ListView::Unread, None).await, vec![cb]);
    assert_eq!(list(ListView::Archived, Some("LOVELACE")).await, vec![ab], "by display name");
    assert_eq!(list(ListView::All, Some("100%")).await, vec![cb], "a % in the query is literal");
    assert!(list(ListView::All, Some("1%0")).await.is_empty());

    let block = SettingsChange { blocked: Some(true), ..Default::default() };
    store.update_member_settings(ab, b, &block, 40, body).await.expect("block").expect("member");
    assert!(matches!(store.store_message(&msg(a, b, "3", 50)).await, Err(StoreError::Blocked { by_sender: false })));
    assert!(matches!(store.store_message(&msg(b, a, "4", 51)).await, Err(StoreError::Blocked { by_sender: true })));
    assert_eq!(store.count_messages().await.expect("count"), 2, "nothing stored either way");
    let unblock = SettingsChange { blocked: Some(false), ..Default::default() };
    store.update_member_settings(ab, b, &unblock, 60, body).await.expect("unblock").expect("member");
    assert!(store.store_message(&msg(a, b, "5", 61)).await.is_ok());
}

async fn search_finds_what_the_reader_may_see_as_it_is_now(backend: Backend) {
    let Some((store, _db)) = store(backend).await else { return };
    let a = store.insert_user(&user("a")).await.expect("a").id;
    let b = store.insert_user(&user("b")).await.expect("b").id;
    let c = store.insert_user(&user("c")).await.expect("c").id;
    let say = |from: UserId, to: UserId, id: &str, text: &str, at: i64| {
        let mut m = msg(from, to, id, at);
        m.body = text.to_string();
        let store = store.clone();
        async move { store.store_message(&m).await.expect("store").into_inner().message }
    };
    let pizza = say(a, b, "1", "Pizza tonight at eight?", 10).await;
    let later = say(b, a, "2", "pizza is fine, eight works", 20).await;
    say(a, b, "3", "see you", 30).await;
    let secret = say(c, b, "4", "pizza party secret", 40).await;
    let ids = |hits: Vec<parley_store::SearchHit>| hits.into_iter().map(|h| h.message.id).collect::<Vec<_>>();

    let found = store.search_messages(a, "PIZZA eight", None, None, 10).await.expect("search");
    assert_eq!(
        found.iter().map(|h| h.message.id).collect::<Vec<_>>(),
        vec![later.id, pizza.id],
        "newest first, a's conversations only"
    );
    assert!(found[1].highlight.to_lowercase().contains("<mark>pizza</mark>"), "{}", found[1].highlight);
    assert_eq!(
        ids(store.search_messages(b, "pizza", None, None, 10).await.expect("b")),
        vec![secret.id, later.id, pizza.id]
    );
    assert_eq!(
        ids(store.search_messages(b, "pizza", Some(pizza.conversation_id), None, 10).await.expect("one")),
        vec![later.id, pizza.id]
    );
    let cursor = parley_store::SearchCursor { sent_at_ms: later.sent_at.timestamp_millis(), id: later.id };
    assert_eq!(ids(store.search_messages(a, "pizza", None, Some(cursor), 10).await.expect("page 2")), vec![pizza.id]);
    assert!(store
        .search_messages(a, "OR \"* NEAR(", None, None, 10)
        .await
        .expect("operators are plain text")
        .is_empty());

    store.edit_message(pizza.id, a, "Burgers tonight?", 50).await.expect("edit").expect("edited");
    assert_eq!(ids(store.search_messages(b, "burgers", None, None, 10).await.expect("new text")), vec![pizza.id]);
    assert_eq!(
        ids(store.search_messages(b, "tonight pizza", None, None, 10).await.expect("old text")),
        Vec::<parley_wire::MessageId>::new()
    );
    store.hide_message(&later, a, "{}", 60).await.expect("hide");
    assert!(ids(store.search_messages(a, "eight", None, None, 10).await.expect("hidden")).is_empty(), "hidden for a");
    assert_eq!(ids(store.search_messages(b, "eight", None, None, 10).await.expect("b still")), vec![later.id]);
    store.delete_message(later.id, b, "{}", 70).await.expect("delete").expect("deleted");
    assert!(store.search_messages(b, "eight", None, None, 10).await.expect("deleted").is_empty());
}

async fn search_finds_the_same_once_pending_entries_are_merged(backend: Backend) {
    let Some((store, _db)) = store(backend).await else { return };
    let a = store.insert_user(&user("a")).await.expect("a").id;
    let b = store.insert_user(&user("b")).await.expect("b").id;
    for i in 0..300 {
        let mut m = msg(a, b, &i.to_string(), i);
        m.body = format!("common w{i}");
        store.store_message(&m).await.expect("store");
    }
    let found = |text: &'static str| {
        let store = store.clone();
        async move { store.search_messages(b, text, None, None, 1000).await.expect("search").len() }
    };
    assert_eq!((found("common").await, found("w17").await, found("w300").await), (300, 1, 0));

    let merged = store.merge_pending_search_entries().await.expect("merge");
    match backend {
        Backend::Postgres => assert!(merged > 0, "the 300 messages' entries were pending"),
        Backend::Sqlite => assert_eq!(merged, 0),
    }
    assert_eq!(store.merge_pending_search_entries().await.expect("again"), 0, "nothing left pending");
    assert_eq!((found("common").await, found("w17").await, found("w300").await), (300, 1, 0));
}
