//! SQLite's write-ahead log reaches the database file by the store's own
//! checkpoints (every second, beside the writers), not by the writers.

use std::time::Duration;

use parley_store::testing::{migrated_store, new_user, sqlite_pragma, text_message, Backend};
use parley_store::Target;
use parley_wire::Role;

#[tokio::test]
async fn sqlite_writes_reach_the_database_file_by_the_stores_checkpoints() {
    let (store, db) = migrated_store(Backend::Sqlite).await.expect("SQLite always runs");
    // Writers never stop to copy the log (SQLite's default: every 1,000 pages).
    assert_eq!(sqlite_pragma(&store, "wal_autocheckpoint").await, Some(0));

    let path = db.url.trim_start_matches("sqlite://").split('?').next().expect("path").to_string();
    let size = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = size();

    let (a, b) = (new_user("a", Role::User), new_user("b", Role::User));
    store.insert_user(&a).await.expect("user a");
    store.insert_user(&b).await.expect("user b");
    let body = "x".repeat(2000);
    for n in 0..100 {
        let batch: Vec<_> = (0..10)
            .map(|k| {
                let mut m = text_message(a.id, Target::Direct(b.id), &format!("m{n}-{k}"), 1_000 + n);
                m.body = format!("{body} {n} {k}");
                m
            })
            .collect();
        let stored = store.store_messages(&batch).await;
        assert!(stored.results.iter().all(Result::is_ok), "every message stored");
    }
    // Nothing writes now; only the store's checkpoint can move the log into the file.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while size() < before + 1024 * 1024 {
        assert!(tokio::time::Instant::now() < deadline, "database file still {} bytes (was {before})", size());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.count_messages().await.expect("count"), 1000);
    store.close().await;
}
