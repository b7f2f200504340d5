//! Accounts for the simulated devices, made through Parley's HTTP API as an app
//! would: people register and log in (two Argon2 hashes each, the slow part of a
//! run's set-up), kiosks are provisioned by an institution and exchange their
//! secret for a token, and group conversations are created by their first member.
//! Against the peers, an account is only a name.

use std::sync::Arc;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// Who a device connects as: the MQTT username (the user id) and password (the
/// access token; empty for the peers).
#[derive(Debug, Clone)]
pub struct Account {
    pub user_id: String,
    pub token: String,
}

/// How many requests are in flight while provisioning.
const PARALLEL: usize = 16;

pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> Api {
        Api { base: base.trim_end_matches('/').to_string(), http: reqwest::Client::new() }
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> anyhow::Result<Value> {
        let mut request = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.with_context(|| format!("POST {path}"))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("POST {path} answered {status}: {body}");
        }
        Ok(body)
    }

    /// Registers and logs in one person.
    pub async fn person(&self, username: &str) -> anyhow::Result<Account> {
        let password = "bench-password-1";
        self.post("/v1/auth/register", None, json!({"username": username, "password": password})).await?;
        let login = self.post("/v1/auth/login", None, json!({"login": username, "password": password})).await?;
        account(&login["user"]["id"], &login["access_token"])
    }

    /// `n` people, registered in parallel.
    pub async fn people(self: &Arc<Self>, run: &str, n: usize) -> anyhow::Result<Vec<Account>> {
        let gate = Arc::new(Semaphore::new(PARALLEL));
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let (api, gate, name) = (self.clone(), gate.clone(), format!("b{run}u{i}"));
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire().await?;
                api.person(&name).await
            }));
        }
        let mut accounts = Vec::with_capacity(n);
        for task in tasks {
            accounts.push(task.await??);
        }
        Ok(accounts)
    }

    /// `n` kiosks of one new institution, each with its own token.
    pub async fn kiosks(self: &Arc<Self>, run: &str, n: usize) -> anyhow::Result<Vec<Account>> {
        let owner = self.person(&format!("b{run}owner")).await?;
        let institution = self
            .post(
                "/v1/institutions",
                Some(&owner.token),
                json!({"username": format!("b{run}inst"), "display_name": "Bench kiosks"}),
            )
            .await?;
        let institution = institution["id"].as_str().context("institution without id")?.to_string();
        let gate = Arc::new(Semaphore::new(PARALLEL));
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let (api, gate, owner, institution) =
                (self.clone(), gate.clone(), owner.token.clone(), institution.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire().await?;
                let body = json!({"label": format!("kiosk {i}"), "institution_id": institution});
                let device = api.post("/v1/devices", Some(&owner), body).await?;
                let id = device["device"]["id"].clone();
                let token = api
                    .post("/v1/auth/device-token", None, json!({"device_id": id, "secret": device["secret"]}))
                    .await?;
                account(&id, &token["access_token"])
            }));
        }
        let mut accounts = Vec::with_capacity(n);
        for task in tasks {
            accounts.push(task.await??);
        }
        Ok(accounts)
    }

    /// A group conversation of `members`, created by the first; returns its id.
    pub async fn group(&self, members: &[&Account]) -> anyhow::Result<String> {
        let (first, rest) = members.split_first().context("a group needs members")?;
        let others: Vec<&str> = rest.iter().map(|a| a.user_id.as_str()).collect();
        let body = json!({"kind": "group", "title": "bench room", "members": others});
        let created = self.post("/v1/conversations", Some(&first.token), body).await?;
        Ok(created["id"].as_str().context("conversation without id")?.to_string())
    }
}

fn account(id: &Value, token: &Value) -> anyhow::Result<Account> {
    Ok(Account {
        user_id: id.as_str().context("no user id in the answer")?.to_string(),
        token: token.as_str().context("no access token in the answer")?.to_string(),
    })
}

/// Accounts for a peer broker: a name per device, no password.
pub fn names(n: usize) -> Vec<Account> {
    (0..n).map(|i| Account { user_id: format!("u{i}"), token: String::new() }).collect()
}
