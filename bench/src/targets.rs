//! The systems under test, each started fresh for a run as its own process on
//! this machine: Parley (`parley serve` on SQLite or PostgreSQL), the bare
//! rumqttd that Parley embeds as its bus, and Mosquitto. Each is stopped when
//! its [`Target`] is dropped.

use std::fmt;
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use std::sync::Arc;

use anyhow::{bail, Context};
use sqlx::Connection;
use tokio::process::{Child, Command};

use crate::transport::{Cert, Transport};

/// Which system a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    ParleySqlite,
    ParleyPostgres,
    /// rumqttd 0.20 alone: raw pub/sub, nothing stored.
    Rumqttd,
    /// Mosquitto from the Debian package: raw pub/sub, nothing stored.
    Mosquitto,
}

impl Kind {
    pub fn parse(name: &str) -> anyhow::Result<Kind> {
        Ok(match name {
            "parley-sqlite" | "sqlite" => Kind::ParleySqlite,
            "parley-postgres" | "postgres" | "parley-pg" => Kind::ParleyPostgres,
            "rumqttd" => Kind::Rumqttd,
            "mosquitto" => Kind::Mosquitto,
            other => bail!("unknown target {other:?}: parley-sqlite, parley-postgres, rumqttd or mosquitto"),
        })
    }

    /// Parley speaks its own protocol (accounts, acknowledgements, events); the
    /// peers are plain brokers.
    pub fn is_parley(self) -> bool {
        matches!(self, Kind::ParleySqlite | Kind::ParleyPostgres)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::ParleySqlite => "parley-sqlite",
            Kind::ParleyPostgres => "parley-postgres",
            Kind::Rumqttd => "rumqttd",
            Kind::Mosquitto => "mosquitto",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the programs are and what they may use.
#[derive(Debug, Clone)]
pub struct Programs {
    pub parley: PathBuf,
    pub mosquitto: PathBuf,
    /// This very binary, which runs the bare rumqttd (`parley-bench rumqttd`).
    pub bench: PathBuf,
    /// An administrative PostgreSQL URL; each run gets a database of its own there.
    pub postgres: Option<String>,
    /// An external bus for Parley (`bus.url`) instead of the embedded rumqttd.
    pub bus: Option<String>,
    /// Parley's log filter.
    pub log: String,
    /// How devices reach the target.
    pub transport: Transport,
}

/// A started system.
pub struct Target {
    pub kind: Kind,
    /// Where devices connect, over `transport`.
    pub mqtt: (String, u16),
    pub transport: Transport,
    /// For the TLS transports: a client configuration trusting the run's certificate.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Parley's HTTP API.
    pub api: Option<String>,
    child: Child,
    _dir: tempfile::TempDir,
    /// The database made for this run, dropped with it: (admin URL, name).
    database: Option<(String, String)>,
}

impl Target {
    pub async fn start(kind: Kind, programs: &Programs) -> anyhow::Result<Target> {
        let dir = tempfile::tempdir().context("no temporary directory")?;
        let transport = programs.transport;
        if transport != Transport::Mqtt && kind == Kind::Rumqttd {
            bail!("the rumqttd peer speaks MQTT over TCP only (it is built without TLS and WebSocket)");
        }
        let cert = match transport {
            Transport::Mqtt => None,
            _ => Some(Cert::new(dir.path())?),
        };
        // The targets keep a plain TCP listener on `mqtt_port`; devices use `device_port`.
        let mqtt_port = free_port()?;
        let device_port = if transport == Transport::Mqtt { mqtt_port } else { free_port()? };
        let mut database = None;
        let (mut command, api) = match kind {
            Kind::ParleySqlite | Kind::ParleyPostgres => {
                let http_port = free_port()?;
                let url = if kind == Kind::ParleyPostgres {
                    let admin = programs.postgres.clone().context("parley-postgres needs --postgres URL")?;
                    let name = format!("parley_bench_{}", uuid::Uuid::new_v4().simple());
                    let url = create_database(&admin, &name).await?;
                    database = Some((admin, name));
                    Some(url)
                } else {
                    None
                };
                let config = dir.path().join("parley.toml");
                let listener = parley_listener(transport, device_port, cert.as_ref());
                let mut text =
                    parley_config(dir.path(), mqtt_port, &listener, http_port, url.as_deref(), &programs.log);
                if let Some(bus) = &programs.bus {
                    text.push_str(&format!("\n[bus]\nurl = \"{bus}\"\n"));
                }
                std::fs::write(&config, text)?;
                let mut command = Command::new(&programs.parley);
                command.arg("--config").arg(&config).arg("serve");
                for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("PARLEY_")) {
                    command.env_remove(key);
                }
                (command, Some(format!("http://127.0.0.1:{http_port}")))
            }
            Kind::Rumqttd => {
                let mut command = Command::new(&programs.bench);
                command.arg("rumqttd").arg("--port").arg(mqtt_port.to_string());
                (command, None)
            }
            Kind::Mosquitto => {
                let config = dir.path().join("mosquitto.conf");
                std::fs::write(&config, mosquitto_config(mqtt_port, device_port, transport, cert.as_ref()))?;
                let mut command = Command::new(installed(&programs.mosquitto));
                command.arg("-c").arg(&config);
                (command, None)
            }
        };
        // Whatever a target logs goes to the generator's stderr, apart from its report.
        let log = Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?);
        command.stdin(Stdio::null()).stdout(log).stderr(Stdio::inherit()).kill_on_drop(true);
        let child = command.spawn().with_context(|| format!("cannot start {kind}"))?;
        let mut target = Target {
            kind,
            mqtt: ("127.0.0.1".into(), device_port),
            transport,
            tls: cert.map(|c| c.client),
            api,
            child,
            _dir: dir,
            database,
        };
        target.wait_ready().await?;
        Ok(target)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let http = reqwest::Client::new();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited during start ({status})", self.kind);
            }
            let mqtt_up = tokio::net::TcpStream::connect((self.mqtt.0.as_str(), self.mqtt.1)).await.is_ok();
            let api_up = match &self.api {
                Some(api) => http.get(format!("{api}/readyz")).send().await.is_ok_and(|r| r.status().is_success()),
                None => true,
            };
            if mqtt_up && api_up {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} did not start listening within 60 s", self.kind);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process id, to read its memory.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Resident memory of the whole process, in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_bytes(self.pid()?)
    }

    /// Stops the process and drops the run's database.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        if let Some((admin, name)) = self.database.take() {
            let mut conn = sqlx::PgConnection::connect(&admin).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await?;
        }
        Ok(())
    }
}

/// A bare program name looked for on PATH and then in the sbin folders, where
/// Debian puts mosquitto (not on a normal user's PATH).
fn installed(program: &Path) -> PathBuf {
    if program.components().count() > 1 {
        return program.to_path_buf();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| program.to_path_buf())
}

/// VmRSS of a process, from /proc.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn create_database(admin: &str, name: &str) -> anyhow::Result<String> {
    let mut conn = sqlx::PgConnection::connect(admin).await.with_context(|| "cannot reach PostgreSQL at --postgres")?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
    let (base, _) = admin.rsplit_once('/').context("--postgres must end with /database")?;
    Ok(format!("{base}/{name}"))
}

/// Parley as shipped, except for what a load generator on one address needs:
/// the per-address connection rate, the flapping ban and the per-user and
/// per-conversation message rates are lifted (every simulated device connects
/// from 127.0.0.1, and a room of 100 members sending at 10/s each is 1000/s
/// into one conversation), tokens outlive the run, and the log says only
/// warnings (unless `--parley-log` says otherwise).
fn parley_config(dir: &Path, mqtt: u16, listener: &str, http: u16, database: Option<&str>, log: &str) -> String {
    let database = database.map(|url| format!("url = \"{url}\"\n")).unwrap_or_default();
    format!(
        r#"data_dir = "{data}"

[database]
{database}max_connections = 16

[http]
listen = "127.0.0.1:{http}"

[mqtt]
listen = "127.0.0.1:{mqtt}"
{listener}publish_rate_per_sec = 100000
publish_burst = 100000
connections_per_sec_per_address = 1000000
connections_burst_per_address = 1000000
flapping_max_connects = 1000000
max_queued_messages = 10000

[auth]
access_token_ttl_secs = 86400
login_failures_per_address = 1000000

[messages]
user_rate_per_sec = 1000000
user_burst = 1000000
conversation_rate_per_sec = 1000000
conversation_burst = 1000000

[log]
level = "{log}"
"#,
        data = dir.join("data").display(),
    )
}

/// Mosquitto's defaults, on one loopback port, without persistence (Parley's
/// peers store nothing) and with the same in-flight window as Parley.
/// Mosquitto as a plain broker on `port`, and for another transport a listener for
/// it on `device_port` (Mosquitto 2.0.11 refuses to start with a WebSocket listener
/// alone, so the plain one stays).
fn mosquitto_config(port: u16, device_port: u16, transport: Transport, cert: Option<&Cert>) -> String {
    let mut text = format!(
        "allow_anonymous true\npersistence false\nmax_inflight_messages 100\n\
         max_queued_messages 10000\nset_tcp_nodelay true\nlog_type error\nlog_dest stderr\n\
         listener {port} 127.0.0.1\n"
    );
    if transport != Transport::Mqtt {
        text.push_str(&format!("listener {device_port} 127.0.0.1\n"));
    }
    if transport.websocket() {
        text.push_str("protocol websockets\n");
    }
    if let Some(cert) = cert.filter(|_| transport.tls()) {
        text.push_str(&format!("certfile {}\nkeyfile {}\n", cert.cert_file.display(), cert.key_file.display()));
    }
    text
}

/// The `[mqtt]` keys of Parley's listener for devices on a transport other than
/// TCP; the WebSocket listener is off unless asked for.
fn parley_listener(transport: Transport, port: u16, cert: Option<&Cert>) -> String {
    let key = match transport {
        Transport::Mqtt => return "ws_listen = \"\"\n".into(),
        Transport::Mqtts => "tls_listen",
        Transport::Ws => "ws_listen",
        Transport::Wss => "wss_listen",
    };
    let mut text = format!("{key} = \"127.0.0.1:{port}\"\n");
    if transport != Transport::Ws {
        text.push_str("ws_listen = \"\"\n");
    }
    if let Some(cert) = cert {
        text.push_str(&format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            cert.cert_file.display(),
            cert.key_file.display()
        ));
    }
    text
}

/// CPU time (user + system) a process has used, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: count from after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The machine's CPU time so far, all CPUs together, in clock ticks: (busy,
/// stolen by the hypervisor, total). `None` where `/proc/stat` is not there.
pub fn machine_cpu() -> Option<(u64, u64, u64)> {
    parse_cpu_line(std::fs::read_to_string("/proc/stat").ok()?.lines().next()?)
}

/// The first line of `/proc/stat`: `cpu user nice system idle iowait irq softirq
/// steal guest guest_nice` (guest time is already in user and nice).
fn parse_cpu_line(line: &str) -> Option<(u64, u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let t: Vec<u64> = fields.take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = t[..] else { return None };
    let busy = user + nice + system + irq + softirq;
    Some((busy, steal, busy + idle + iowait + steal))
}

/// Shares of the machine's CPU between two [`machine_cpu`] readings: (busy, stolen).
pub fn machine_shares(before: (u64, u64, u64), after: (u64, u64, u64)) -> Option<(f64, f64)> {
    let total = after.2.checked_sub(before.2).filter(|t| *t > 0)? as f64;
    Some((after.0.saturating_sub(before.0) as f64 / total, after.1.saturating_sub(before.1) as f64 / total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_line_gives_busy_stolen_and_total_ticks() {
        let line = "cpu  100 5 40 800 20 3 2 30 7 0";
        assert_eq!(parse_cpu_line(line), Some((150, 30, 1000)));
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4 5 6 7 8"), None, "one CPU's line is not the machine's");
        assert_eq!(parse_cpu_line("cpu 1 2 3"), None, "too few fields");
        let (busy, stolen) = machine_shares((150, 30, 1000), (650, 130, 2000)).expect("shares");
        assert!((busy - 0.5).abs() < 1e-9 && (stolen - 0.1).abs() < 1e-9, "{busy} {stolen}");
        assert_eq!(machine_shares((0, 0, 10), (0, 0, 10)), None, "no time passed");
    }
}
