//! What the store tells about the other participants, asserted identically on
//! SQLite and PostgreSQL: conversation search by a participant's name or specialty,
//! and presence with the role and availability of each account.

use parley_store::testing::{migrated_store as store, Backend};
use parley_store::{ConversationFilter, NewGroup, NewUser, ProfileChange, Store};
use parley_wire::{Availability, ConversationId, Role, UserId};

parley_store::both_backends!(
    conversation_search_matches_other_participants_display_name_username_and_specialty_in_any_case,
    presence_carries_each_accounts_role_and_availability,
    presence_reports_applied_out_of_order_keep_the_newest,
);

async fn user(store: &Store, username: &str, display_name: Option<&str>, role: Role) -> UserId {
    let new = NewUser {
        id: UserId::new(),
        username: Some(username.to_string()),
        email: None,
        phone: None,
        display_name: display_name.map(str::to_string),
        password_hash: "hash".into(),
        role,
        created_at_ms: 1_000,
    };
    store.insert_user(&new).await.expect("user").id
}

async fn specialty(store: &Store, user: UserId, specialty: &str) {
    let change = ProfileChange { specialty: Some(Some(specialty.to_string())), ..Default::default() };
    store.update_profile(user, &change).await.expect("profile").expect("exists");
}

async fn conversation_search_matches_other_participants_display_name_username_and_specialty_in_any_case(
    backend: Backend,
) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let me = user(&store, "me_myself", Some("Mia Self"), Role::Provider).await;
    specialty(&store, me, "Neurology").await;
    let doc = user(&store, "drhouse", Some("Gregory House"), Role::Provider).await;
    specialty(&store, doc, "Diagnostic Medicine").await;
    let mid = user(&store, "bea_midwife", Some("Beatrice Okafor"), Role::Provider).await;
    specialty(&store, mid, "Midwifery").await;
    let pal = user(&store, "carl", Some("Carl Jung"), Role::User).await;
    let with_doc = store.ensure_direct(me, doc, 100).await.expect("direct");
    let with_mid = store.ensure_direct(me, mid, 200).await.expect("direct");
    let group = ConversationId::new();
    let new_group = NewGroup {
        id: group,
        title: Some("Case review".into()),
        audience: "group".into(),
        context_type: None,
        context_id: None,
        creator: me,
        members: vec![pal],
        now_ms: 300,
    };
    store.create_group(&new_group).await.expect("group");
    let without_me = store.ensure_direct(doc, pal, 400).await.expect("not mine");

    let search = |q: &str| {
        let (store, q) = (store.clone(), q.to_string());
        async move {
            let filter = ConversationFilter { query: Some(q), ..Default::default() };
            let list = store.conversations_for(me, None, 20, &filter).await.expect("search");
            list.into_iter().map(|c| c.conversation.id).collect::<Vec<_>>()
        }
    };
    // Display name, in any case.
    assert_eq!(search("gregory").await, vec![with_doc]);
    assert_eq!(search("OKAFOR").await, vec![with_mid]);
    // Username.
    assert_eq!(search("drhou").await, vec![with_doc]);
    assert_eq!(search("BEA_MID").await, vec![with_mid]);
    // Specialty (providers), in any case.
    assert_eq!(search("diagnostic").await, vec![with_doc]);
    assert_eq!(search("MIDWIF").await, vec![with_mid], "specialty and username both match: listed once");
    assert_eq!(search("wifery").await, vec![with_mid]);
    // A group member's name finds the group, as its title does.
    assert_eq!(search("jung").await, vec![group]);
    assert_eq!(search("case REV").await, vec![group]);
    // The caller's own name and specialty match nothing; others' conversations never show.
    assert!(search("neurolog").await.is_empty());
    assert!(search("mia self").await.is_empty());
    assert!(!search("carl").await.contains(&without_me));
    // LIKE wildcards are literal.
    assert!(search("%").await.is_empty());
    assert_eq!(search("_").await, vec![with_mid], "only bea_midwife has one (the caller's own is not searched)");
}

async fn presence_carries_each_accounts_role_and_availability(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let doc = user(&store, "doc", None, Role::Provider).await;
    let ann = user(&store, "ann", None, Role::User).await;
    let change = ProfileChange { availability: Some(Some(Availability::Busy)), ..Default::default() };
    store.update_profile(doc, &change).await.expect("profile").expect("exists");
    store.set_gate_presence(doc, "gate-1", 1, 100, 100).await.expect("online");

    let mut seen = store.presence_of(&[doc, ann]).await.expect("presence");
    seen.sort_by_key(|p| p.user_id != doc);
    assert_eq!((seen[0].user_id, seen[0].role, seen[0].availability), (doc, Role::Provider, Some(Availability::Busy)));
    assert!(seen[0].online);
    assert_eq!((seen[1].user_id, seen[1].role, seen[1].availability), (ann, Role::User, None));
    assert!(!seen[1].online);
}

/// Bridges share a gate's reports and may apply them in any order: the newest (by
/// the gate's sequence) wins, for reports and for a gate's reset alike.
async fn presence_reports_applied_out_of_order_keep_the_newest(backend: Backend) {
    let Some((store, _db)) = store(backend).await else {
        return;
    };
    let ann = user(&store, "ann", None, Role::User).await;
    let online = |store: Store| async move { store.presence_of(&[ann]).await.expect("presence")[0].online };
    // Connected (seq 20), then an older "0 devices" (seq 10) arrives late: still online.
    assert_eq!(store.set_gate_presence(ann, "gate-1", 1, 20, 1_000).await.expect("set"), (false, true));
    assert_eq!(store.set_gate_presence(ann, "gate-1", 0, 10, 1_001).await.expect("stale"), (true, true));
    assert!(online(store.clone()).await);
    // The newer "0 devices" takes her offline and stamps last seen.
    assert_eq!(store.set_gate_presence(ann, "gate-1", 0, 30, 1_002).await.expect("set"), (true, false));
    let seen = store.presence_of(&[ann]).await.expect("presence");
    assert_eq!(seen[0].last_seen_at.map(|t| t.timestamp_millis()), Some(1_002));
    // A gate's reset forgets what it reported before the reset, and a late older
    // report cannot bring the connection back.
    store.set_gate_presence(ann, "gate-2", 2, 40, 1_003).await.expect("set");
    assert_eq!(store.reset_gate_presence("gate-2", 50, 1_004).await.expect("reset"), vec![ann]);
    assert_eq!(store.set_gate_presence(ann, "gate-2", 1, 45, 1_005).await.expect("late"), (false, false));
    assert!(!online(store.clone()).await);
    // What the gate reports after its reset counts.
    assert_eq!(store.set_gate_presence(ann, "gate-2", 1, 60, 1_006).await.expect("set"), (false, true));
    // Another gate's reset leaves gate-2's devices alone.
    assert_eq!(store.reset_gate_presence("gate-1", 70, 1_007).await.expect("reset"), Vec::<UserId>::new());
    assert!(online(store).await);
}
