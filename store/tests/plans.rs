//! PostgreSQL's batch function keeps its plans for the life of a connection, so
//! the plans it makes at a connection's first call must hold up as the tables
//! grow. PostgreSQL only: it needs `PARLEY_TEST_POSTGRES_URL`.

use parley_store::testing::{migrated_store as store, new_user, Backend};
use parley_store::{NewGroup, Store};
use parley_wire::{ConversationId, Role, UserId};
use sqlx::{Connection, PgConnection};

/// Stores `n` text messages from `sender` to `group` in one call of the batch
/// function, on `conn`; the rows it returned (one per member of each message).
async fn call_batch(conn: &mut PgConnection, n: i32, sender: UserId, group: ConversationId, tag: &str) -> i64 {
    let sql = "SELECT count(*) FROM store_message_batch(
            ARRAY(SELECT gen_random_uuid() FROM generate_series(1, $1)),
            array_fill($2::uuid, ARRAY[$1]), array_fill(NULL::uuid, ARRAY[$1]), array_fill(NULL::text, ARRAY[$1]),
            array_fill($3::uuid, ARRAY[$1]),
            ARRAY(SELECT $4 || '-' || g FROM generate_series(1, $1) g),
            array_fill('text'::text, ARRAY[$1]), array_fill('{\"text\":\"hi\"}'::text, ARRAY[$1]),
            array_fill(NULL::uuid, ARRAY[$1]), array_fill(NULL::uuid, ARRAY[$1]), array_fill(NULL::text, ARRAY[$1]),
            array_fill(5::bigint, ARRAY[$1]), array_fill(NULL::uuid, ARRAY[$1]))";
    sqlx::query_scalar(sql)
        .bind(n)
        .bind(sender.0)
        .bind(group.0)
        .bind(tag)
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("batch {tag}: {e}"))
}

/// The scans of `messages` this connection has started and not yet reported to
/// the statistics (its open transaction's among them).
async fn scans_of_messages(conn: &mut PgConnection) -> (i64, i64) {
    sqlx::query_as(
        "SELECT coalesce(seq_scan, 0), coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables WHERE relname = 'messages'",
    )
    .fetch_one(&mut *conn)
    .await
    .expect("scans")
}

/// A database analyzed while `messages` was empty: the first call of a
/// connection plans on "one row". Later batches must still reach messages by
/// their indexes, not by scanning the table once per message.
#[tokio::test]
async fn batches_reach_messages_by_index_when_first_planned_on_an_empty_table() {
    let Some((store, db)) = store(Backend::Postgres).await else { return };
    let (a, b, c) = (new_user("a", Role::User), new_user("b", Role::User), new_user("c", Role::User));
    for u in [&a, &b, &c] {
        store.insert_user(u).await.expect("user");
    }
    let group = ConversationId::new();
    let new_group = NewGroup {
        id: group,
        title: None,
        audience: "group".into(),
        context_type: None,
        context_id: None,
        creator: a.id,
        members: vec![b.id, c.id],
        now_ms: 1,
    };
    store.create_group(&new_group).await.expect("group");
    drop::<Store>(store);

    let mut conn = PgConnection::connect(&db.url).await.expect("connect");
    // No autovacuum ANALYZE mid-test: it would make the connection plan afresh.
    sqlx::query("ALTER TABLE messages SET (autovacuum_enabled = false)").execute(&mut conn).await.expect("alter");
    sqlx::query("ANALYZE messages").execute(&mut conn).await.expect("analyze");
    let empty: i64 = sqlx::query_scalar("SELECT count(*) FROM messages").fetch_one(&mut conn).await.expect("count");
    assert_eq!(empty, 0, "the group wrote no messages");

    // The first call makes the connection's plans; then the table grows.
    assert_eq!(call_batch(&mut conn, 1, a.id, group, "first").await, 3);
    assert_eq!(call_batch(&mut conn, 300, b.id, group, "grow").await, 900);

    let mut tx = conn.begin().await.expect("begin");
    let (seq_before, index_before) = scans_of_messages(&mut tx).await;
    assert_eq!(call_batch(&mut tx, 100, c.id, group, "measured").await, 300, "every message stored");
    let (seq_after, index_after) = scans_of_messages(&mut tx).await;
    tx.commit().await.expect("commit");
    let (seq_scans, index_scans) = (seq_after - seq_before, index_after - index_before);
    assert_eq!(seq_scans, 0, "a batch of 100 scanned messages {seq_scans} times");
    assert!(index_scans >= 100, "the retry check looks each message up by index: {index_scans}");

    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages").fetch_one(&mut conn).await.expect("count");
    assert_eq!(stored, 401);
}
