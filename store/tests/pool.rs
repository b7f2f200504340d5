//! The PostgreSQL pool opens every connection at start and warms each one up, so
//! that no batch of messages waits for a connection to be opened or for the
//! batch function to be planned. PostgreSQL only: it needs
//! `PARLEY_TEST_POSTGRES_URL`.

use std::time::{Duration, Instant};

use parley_store::testing::{Backend, TestDatabase};
use parley_store::Store;
use sqlx::{Connection, PgConnection};

/// The last statement of each of the store's connections to `db` (every
/// connection but `watcher`'s), once there are exactly `want` of them or 10 s have gone.
async fn connections(watcher: &mut PgConnection, want: usize) -> Vec<String> {
    let started = Instant::now();
    loop {
        let queries: Vec<String> = sqlx::query_scalar(
            "SELECT query FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
             ORDER BY pid",
        )
        .fetch_all(&mut *watcher)
        .await
        .expect("pg_stat_activity");
        let settled = queries.len() == want && queries.iter().all(|q| !q.is_empty());
        if settled || started.elapsed() > Duration::from_secs(10) {
            return queries;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn warmed(query: &str) -> bool {
    query.contains("store_message_batch('{}'")
}

/// Opened on a new database, the pool has nothing to warm; once the migrations
/// have run, `warm_up` warms every connection, all of them opened.
#[tokio::test]
async fn warm_up_opens_and_warms_every_connection_once_migrated() {
    let Some(db) = TestDatabase::create(Backend::Postgres).await else { return };
    let store = Store::connect(&db.url, 4).await.expect("connect before the migrations");
    let mut watcher = PgConnection::connect(&db.url).await.expect("watcher");
    let before = connections(&mut watcher, 4).await;
    assert_eq!(before.len(), 4, "every connection opened at start: {before:?}");
    assert!(!before.iter().any(|q| warmed(q)), "nothing to warm before the migrations: {before:?}");

    store.migrate().await.expect("migrate");
    assert_eq!(store.warm_up().await.expect("warm up"), 4);
    let after = connections(&mut watcher, 4).await;
    assert_eq!(after.len(), 4, "no connection more than the pool's: {after:?}");
    assert!(after.iter().all(|q| warmed(q)), "every connection warmed: {after:?}");

    // Warming stored nothing and left nothing locked.
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM messages").fetch_one(&mut watcher).await.unwrap();
    let conversations: i64 =
        sqlx::query_scalar("SELECT count(*) FROM conversations").fetch_one(&mut watcher).await.unwrap();
    let locks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE a.datname = current_database() AND l.pid <> pg_backend_pid() AND l.locktype IN ('relation', 'tuple')",
    )
    .fetch_one(&mut watcher)
    .await
    .unwrap();
    assert_eq!((messages, conversations, locks), (0, 0, 0));
    store.close().await;
}

/// On a migrated database every connection is warmed as the pool opens it,
/// without being asked.
#[tokio::test]
async fn connections_opened_on_a_migrated_database_are_warmed_as_they_open() {
    let Some(db) = TestDatabase::create(Backend::Postgres).await else { return };
    let first = Store::connect(&db.url, 1).await.expect("connect");
    first.migrate().await.expect("migrate");
    first.close().await;

    let store = Store::connect(&db.url, 3).await.expect("connect again");
    let mut watcher = PgConnection::connect(&db.url).await.expect("watcher");
    let queries = connections(&mut watcher, 3).await;
    assert_eq!(queries.len(), 3, "{queries:?}");
    assert!(queries.iter().all(|q| warmed(q)), "{queries:?}");
    store.close().await;
}

/// SQLite has nothing to warm.
#[tokio::test]
async fn sqlite_has_nothing_to_warm() {
    let Some(db) = TestDatabase::create(Backend::Sqlite).await else { return };
    let store = Store::connect(&db.url, 2).await.expect("connect");
    store.migrate().await.expect("migrate");
    assert_eq!(store.warm_up().await.expect("warm up"), 0);
    store.close().await;
}
