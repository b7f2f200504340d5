//! Institutions and their members, sign-ins acting for them, kiosk devices,
//! identifier changes and the release of unproven identifiers, asserted
//! identically on SQLite and PostgreSQL.

use parley_store::testing::{migrated_store as store, Backend};
use parley_store::{
    DeviceRenewal, Identifier, IdentifierChange, IdentifierKind, MemberChange, NewDevice, NewSession, NewUser,
    Released, Rotation, Store, StoreError,
};
use parley_wire::{Role, UserId};
use uuid::Uuid;

parley_store::both_backends!(
    institutions_keep_an_owner_and_refuse_duplicate_members,
    acting_sign_ins_end_with_the_members_sign_in_or_membership,
    devices_renew_and_retire_their_sign_in,
    identifiers_change_and_the_last_one_stays,
    unproven_identifiers_are_released_after_the_cutoff,
);

fn account(name: &str, role: Role, created_at_ms: i64) -> NewUser {
    NewUser {
        id: UserId::new(),
        username: Some(name.to_string()),
        email: None,
        phone: None,
        display_name: Some(name.to_uppercase()),
        password_hash: "hash".into(),
        role,
        created_at_ms,
    }
}

async fn person(store: &Store, name: &str) -> UserId {
    store.insert_user(&account(name, Role::User, 1_000)).await.expect("user").id
}

fn session(user: UserId, token: Option<&[u8]>, acting: Option<(UserId, Uuid)>, now: i64, ends: i64) -> NewSession {
    NewSession {
        id: Uuid::now_v7(),
        user,
        token_hash: token.map(<[u8]>::to_vec),
        acting,
        now_ms: now,
        token_expires_at_ms: now + 10_000,
        expires_at_ms: ends,
        user_agent: None,
        client_addr: None,
    }
}

async fn institutions_keep_an_owner_and_refuse_duplicate_members(backend: Backend) {
    let Some((store, _db)) = store(backend).await else { return };
    let (ada, bob) = (person(&store, "ada").await, person(&store, "bob").await);
    let clinic = account("clinic", Role::Institution, 2_000);
    store.create_institution(&clinic, ada).await.expect("create");
    let stored = store.get_user(clinic.id).await.expect("get").expect("exists");
    assert_eq!(stored.role, Role::Institution);
    assert_eq!(store.institution_role(clinic.id, ada).await.expect("role").as_deref(), Some("owner"));
    let taken = store.create_institution(&account("clinic", Role::Institution, 2_000), bob).await;
    assert!(matches!(taken, Err(StoreError::Conflict("username"))), "{taken:?}");

    store.add_institution_member(clinic.id, bob, "member", ada, 3_000).await.expect("add");
    let again = store.add_institution_member(clinic.id, bob, "admin", ada, 3_001).await;
    assert!(matches!(again, Err(StoreError::Conflict("member"))), "{again:?}");
    let ghost = store.add_institution_member(clinic.id, UserId::new(), "member", ada, 3_002).await;
    assert!(matches!(ghost, Err(StoreError::MissingReference)), "{ghost:?}");
    let members = store.institution_members(clinic.id).await.expect("members");
    assert_eq!(
        members.iter().map(|m| (m.user, m.role.as_str())).collect::<Vec<_>>(),
        [(ada, "owner"), (bob, "member")]
    );
    assert_eq!(store.institutions_of(bob).await.expect("of bob")[0].institution, clinic.id);

    // The only owner can be neither demoted nor removed; with a second owner, both work.
    assert_eq!(
        store.set_institution_member_role(clinic.id, ada, "admin").await.expect("demote"),
        MemberChange::LastOwner
    );
    assert_eq!(store.remove_institution_member(clinic.id, ada).await.expect("remove"), MemberChange::LastOwner);
    assert_eq!(store.institution_role(clinic.id, ada).await.expect("role").as_deref(), Some("owner"));
    assert_eq!(store.set_institution_member_role(clinic.id, bob, "owner").await.expect("promote"), MemberChange::Done);
    assert_eq!(store.remove_institution_member(clinic.id, ada).await.expect("remove"), MemberChange::Done);
    assert_eq!(store.remove_institution_member(clinic.id, ada).await.expect("gone"), MemberChange::NotFound);
    assert_eq!(store.institution_members(clinic.id).await.expect("members").len(), 1);
}

async fn acting_sign_ins_end_with_the_members_sign_in_or_membership(backend: Backend) {
    let Some((store, _db)) = store(backend).await else { return };
    let (ada, bob) = (person(&store, "ada").await, person(&store, "bob").await);
    let clinic = account("clinic", Role::Institution, 2_000);
    store.create_institution(&clinic, ada).await.expect("create");
    let own = session(ada, Some(b"own"), None, 100, 1_000_000);
    let spare = session(ada, Some(b"spare"), None, 100, 1_000_000);
    store.create_session(&own).await.expect("own");
    store.create_session(&spare).await.expect("spare");
    let acting = session(clinic.id, Some(b"act1"), Some((ada, own.id)), 200, 1_000_000);
    let from_spare = session(clinic.id, Some(b"act2"), Some((ada, spare.id)), 200, 1_000_000);
    store.create_session(&acting).await.expect("acting");
    store.create_session(&from_spare).await.expect("acting from spare");

    // Refreshing an acting sign-in names its actor.
    let rotated = store.rotate_refresh_token(b"act1", b"act1b", 300, 10_000, 30).await.expect("rotate");
    assert_eq!(rotated, Rotation::Rotated { user: clinic.id, session: acting.id, actor: Some(ada) });
    assert_eq!(store.session_end(clinic.id, acting.id, 300).await.expect("end"), Some(1_000_000));

    // Ending the member's own sign-in ends the institution's opened from it, and only that one.
    let mut revoked = store.revoke_sessions(ada, Some(own.id), None, "signed_out", 400).await.expect("revoke");
    revoked.sort();
    let mut expected = vec![(ada, own.id), (clinic.id, acting.id)];
    expected.sort();
    assert_eq!(revoked, expected);
    assert!(!store.session_live(clinic.id, acting.id, 401).await.expect("acting ended"));
    assert!(store.session_live(clinic.id, from_spare.id, 401).await.expect("other acting live"));

    // Leaving (or being removed) ends the rest; another member's are untouched.
    store.add_institution_member(clinic.id, bob, "member", ada, 500).await.expect("add bob");
    let bobs = session(bob, None, None, 500, 1_000_000);
    store.create_session(&bobs).await.expect("bob");
    let bob_acting = session(clinic.id, None, Some((bob, bobs.id)), 500, 1_000_000);
    store.create_session(&bob_acting).await.expect("bob acting");
    let ended = store.revoke_acting_sessions(clinic.id, ada, "left", 600).await.expect("left");
    assert_eq!(ended, vec![from_spare.id]);
    assert!(store.session_live(ada, spare.id, 601).await.expect("her own sign-in stays"));
    assert!(store.session_live(clinic.id, bob_acting.id, 601).await.expect("bob's stays"));
}

async fn devices_renew_and_retire_their_sign_in(backend: Backend) {
    let Some((store, _db)) = store(backend).await else { return };
    let ada = person(&store, "ada").await;
    let clinic = account("clinic", Role::Institution, 2_000);
    store.create_institution(&clinic, ada).await.expect("create");
    let kiosk = account("device.0123456789abcdef0123456789abcdef", Role::Device, 3_000);
    let first = session(kiosk.id, None, None, 3_000, 9_000_000);
    let new = NewDevice {
        account: kiosk.clone(),
        institution: Some(clinic.id),
        created_by: ada,
        label: "Lobby".into(),
        rights: "send typing".into(),
        secret_hash: b"secret-one".to_vec(),
        session: first.clone(),
    };
    store.create_device(&new).await.expect("device");
    let device = store.device(kiosk.id).await.expect("get").expect("exists");
    assert_eq!((device.label.as_str(), device.rights.as_str()), ("Lobby", "send typing"));
    assert_eq!(
        (device.institution, device.session, device.secret_hash.as_slice()),
        (Some(clinic.id), Some(first.id), &b"secret-one"[..])
    );
    assert_eq!(store.get_user(kiosk.id).await.expect("account").expect("exists").role, Role::Device);
    assert!(store.session_live(kiosk.id, first.id, 3_001).await.expect("live"));
    assert_eq!(store.devices(Some(clinic.id)).await.expect("list").len(), 1);
    assert!(store.devices(Some(ada)).await.expect("none").is_empty());
    // The same secret hash can never serve two devices.
    let twin = NewDevice {
        account: account("device.twin", Role::Device, 3_000),
        session: session(UserId::new(), None, None, 3_000, 9_000_000),
        ..new.clone()
    };
    let twin = NewDevice { session: NewSession { user: twin.account.id, ..twin.session.clone() }, ..twin };
    assert!(store.create_device(&twin).await.is_err());
    assert!(store.device(twin.account.id).await.expect("get").is_none(), "nothing of the failed device is left");

    // New rights: a new sign-in, the old one ended, the secret kept.
    let second = session(kiosk.id, None, None, 4_000, 9_000_000);
    let renewal = DeviceRenewal { secret_hash: None, rights: Some("typing".into()), session: second.clone() };
    assert_eq!(store.renew_device(kiosk.id, &renewal, 4_000).await.expect("renew"), Some(Some(first.id)));
    let device = store.device(kiosk.id).await.expect("get").expect("exists");
    assert_eq!(
        (device.rights.as_str(), device.session, device.secret_hash.as_slice()),
        ("typing", Some(second.id), &b"secret-one"[..])
    );
    assert!(!store.session_live(kiosk.id, first.id, 4_001).await.expect("old ended"));
    assert!(store.session_live(kiosk.id, second.id, 4_001).await.expect("new live"));

    // Retiring ends the sign-in; a retired device can be neither renewed nor retired again.
    assert_eq!(store.retire_device(kiosk.id, 5_000).await.expect("retire"), Some(Some(second.id)));
    assert!(!store.session_live(kiosk.id, second.id, 5_001).await.expect("ended"));
    let third = DeviceRenewal {
        secret_hash: Some(b"secret-two".to_vec()),
        rights: None,
        session: session(kiosk.id, None, None, 6_000, 9_000_000),
    };
    assert_eq!(store.renew_device(kiosk.id, &third, 6_000).await.expect("renew retired"), None);
    assert!(!store.session_live(kiosk.id, third.session.id, 6_001).await.expect("no new sign-in"));
    assert_eq!(store.retire_device(kiosk.id, 6_000).await.expect("again"), None);
    assert!(store.device(kiosk.id).await.expect("get").expect("kept").revoked_at.is_some());
}

async fn identifiers_change_and_the_last_one_stays(backend: Backend) {
    let Some((store, _db)) = store(backend).await else { return };
    let ada = person(&store, "ada").await;
    let bob = person(&store, "bob").await;
    assert_eq!(
        store.set_identifier(ada, Identifier::Email, Some("ada@example.com"), 5_000).await.expect("email"),
        IdentifierChange::Done
    );
    let stored = store.get_user(ada).await.expect("get").expect("exists");
    assert_eq!(stored.email.as_deref(), Some("ada@example.com"));
    assert_eq!(stored.email_verified_at.map(|t| t.timestamp_millis()), Some(5_000), "a changed email arrives proven");
    let taken = store.set_identifier(bob, Identifier::Email, Some("ada@example.com"), 5_001).await;
    assert!(matches!(taken, Err(StoreError::Conflict("email"))), "{taken:?}");
    let taken = store.set_identifier(bob, Identifier::Username, Some("ada"), 5_001).await;
    assert!(matches!(taken, Err(StoreError::Conflict("username"))), "{taken:?}");

    // Ada may drop her username (a proven email remains), but then not the email.
    assert_eq!(
        store.set_identifier(ada, Identifier::Username, None, 6_000).await.expect("drop"),
        IdentifierChange::Done
    );
    assert_eq!(
        store.set_identifier(ada, Identifier::Email, None, 6_000).await.expect("last"),
        IdentifierChange::LastIdentifier
    );
    let stored = store.get_user(ada).await.expect("get").expect("exists");
    assert_eq!((stored.username, stored.email.as_deref()), (None, Some("ada@example.com")));
    // Bob has only a username: it stays.
    assert_eq!(
        store.set_identifier(bob, Identifier::Username, None, 6_000).await.expect("last"),
        IdentifierChange::LastIdentifier
    );
    assert_eq!(
        store.set_identifier(UserId::new(), Identifier::Username, Some("nobody"), 6_000).await.expect("ghost"),
        IdentifierChange::NotFound
    );
}

async fn unproven_identifiers_are_released_after_the_cutoff(backend: Backend) {
    let Some((store, _db)) = store(backend).await else { return };
    let with = |name: &str, username: bool, email: bool, phone: Option<&str>, at: i64| NewUser {
        username: username.then(|| name.to_string()),
        email: email.then(|| format!("{name}@example.com")),
        phone: phone.map(str::to_string),
        ..account(name, Role::User, at)
    };
    // Only unproven identifiers: the account goes. With a username: just the email goes.
    let squatter = store.insert_user(&with("squat", false, true, Some("+15550000001"), 1_000)).await.expect("squatter");
    let named = store.insert_user(&with("named", true, true, None, 1_000)).await.expect("named");
    let proven = store.insert_user(&with("proven", false, true, Some("+15550000002"), 1_000)).await.expect("proven");
    store.mark_identifier_verified(proven.id, IdentifierKind::Phone, "+15550000002", 1_500).await.expect("prove");
    let recent = store.insert_user(&with("recent", false, true, None, 9_000)).await.expect("recent");

    // A targeted release touches only the identifier asked about.
    let one = store.release_unverified(5_000, Some("named@example.com")).await.expect("one");
    assert_eq!(one, Released { accounts: 0, identifiers: 1 });
    assert!(store.get_user(squatter.id).await.expect("get").is_some());

    let all = store.release_unverified(5_000, None).await.expect("all");
    assert_eq!(all, Released { accounts: 1, identifiers: 1 });
    assert!(store.get_user(squatter.id).await.expect("get").is_none(), "nothing proven, no username: deleted");
    let named = store.get_user(named.id).await.expect("get").expect("kept");
    assert_eq!((named.username.as_deref(), named.email), (Some("named"), None));
    let proven = store.get_user(proven.id).await.expect("get").expect("kept");
    assert_eq!((proven.email, proven.phone.as_deref()), (None, Some("+15550000002")));
    let recent = store.get_user(recent.id).await.expect("get").expect("kept");
    assert_eq!(recent.email.as_deref(), Some("recent@example.com"), "not yet past the cutoff");
    // The released address can be registered again.
    store.insert_user(&with("squat", false, true, None, 10_000)).await.expect("address free again");
}
