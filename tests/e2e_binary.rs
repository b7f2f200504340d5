//! The `parley` binary itself, as a newcomer runs it: embedded defaults under
//! ./parley-data, clean stop on SIGTERM, a clear message when a port is taken.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_parley");

fn parley(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("PARLEY_") || k == "RUST_LOG") {
        cmd.env_remove(key);
    }
    cmd.env("PARLEY_MQTT__LISTEN", "127.0.0.1:0")
        .env("PARLEY_MQTT__WS_LISTEN", "127.0.0.1:0")
        .env("PARLEY_HTTP__LISTEN", "127.0.0.1:0")
        .env("PARLEY_LOG__FORMAT", "json");
    cmd
}

/// Reads JSON log lines until "parley is up"; returns the HTTP address it logged.
/// A clean start logs no error on the way.
async fn wait_until_up(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            assert_ne!(entry["level"], "ERROR", "an error while starting: {line}");
            if entry["fields"]["message"] == "parley is up" {
                return entry["fields"]["http_addr"].as_str().expect("http_addr").to_string();
            }
        }
        panic!("parley exited before it was up");
    })
    .await
    .expect("parley up in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    found
}

async fn terminate(child: &mut Child) {
    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("stops in time").expect("wait");
    assert!(exit.success(), "parley exited with {exit}");
}

#[tokio::test]
async fn the_binary_runs_on_embedded_defaults_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("dir");
    let mut child = parley(dir.path(), &["serve"]).spawn().expect("spawn parley");
    let http = wait_until_up(&mut child).await;
    let ready: Value = reqwest::get(format!("http://{http}/readyz")).await.expect("readyz").json().await.expect("json");
    assert_eq!(ready["status"], "ready", "{ready}");
    let data = dir.path().join("parley-data");
    assert!(data.join("parley.db").is_file(), "SQLite file under ./parley-data");
    let key = std::fs::read(data.join("signing.key")).expect("signing key generated");
    terminate(&mut child).await;

    // A restart keeps the key, so tokens issued before it stay valid.
    let mut again = parley(dir.path(), &[]).spawn().expect("spawn parley again");
    wait_until_up(&mut again).await;
    assert_eq!(std::fs::read(data.join("signing.key")).expect("key"), key);
    terminate(&mut again).await;
}

#[tokio::test]
async fn a_port_in_use_names_the_setting_to_change() {
    let dir = tempfile::tempdir().expect("dir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let output = parley(dir.path(), &["serve"]).env("PARLEY_HTTP__LISTEN", &addr).output();
    let output = tokio::time::timeout(Duration::from_secs(30), output).await.expect("exits in time").expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("http.listen") && stderr.contains("PARLEY_HTTP__LISTEN") && stderr.contains(&addr),
        "{stderr}"
    );
}

#[tokio::test]
async fn migrate_creates_the_schema_and_config_hides_secrets() {
    let dir = tempfile::tempdir().expect("dir");
    let out = parley(dir.path(), &["migrate"]).output().await.expect("migrate");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let url = format!("sqlite://{}", dir.path().join("parley-data/parley.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.expect("open db");
    let tables: Vec<(String,)> = sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .fetch_all(&pool)
        .await
        .expect("tables");
    let names: Vec<_> = tables.into_iter().map(|t| t.0).collect();
    for t in ["conversation_members", "conversations", "messages", "refresh_tokens", "users"] {
        assert!(names.iter().any(|n| n == t), "{t} missing from {names:?}");
    }
    let out = parley(dir.path(), &["config"])
        .env("PARLEY_DATABASE__URL", "postgres://app:hunter2@db/parley")
        .output()
        .await
        .expect("config");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("postgres://app:[redacted]@db/parley") && !shown.contains("hunter2"), "{shown}");
}
