//! Typed settings for every part of Parley, read once at start.
//!
//! Layers, later ones winning: built-in defaults, a TOML file (`--config`), then
//! `PARLEY_…` environment variables where `__` separates sections
//! (`PARLEY_HTTP__LISTEN=0.0.0.0:9090`, `PARLEY_DATABASE__URL=postgres://…`).
//! Secrets are wrapped so that printing the settings never shows them.

use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub mod bus;
mod secret;
pub use bus::{BusUrlError, ExternalBus};
pub use secret::{BusUrl, DatabaseUrl, Secret, SecretUrl};

/// Everything Parley can be told, grouped by the part it concerns.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where the SQLite file, the generated signing key and uploads live.
    pub data_dir: PathBuf,
    pub database: DatabaseSettings,
    pub http: HttpSettings,
    pub mqtt: MqttSettings,
    pub bus: BusSettings,
    pub auth: AuthSettings,
    pub delivery: DeliverySettings,
    pub messages: MessageSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `sqlite://path` or `postgres://…`; unset means `sqlite://{data_dir}/parley.db`.
    pub url: Option<DatabaseUrl>,
    /// Connections in the pool. On PostgreSQL all of them are opened at start,
    /// warmed up and kept (the server must allow that many for each process).
    pub max_connections: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    pub listen: String,
    /// Behind a reverse proxy: take the client address (for throttles and the list
    /// of sign-ins) from the last `X-Forwarded-For` entry instead of the peer.
    pub trust_forwarded_for: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSettings {
    /// Where devices connect with MQTT 3.1.1 and 5 over TCP; empty turns it off.
    pub listen: String,
    /// MQTT over WebSocket (subprotocol `mqtt`, path `ws_path`) for browsers; empty turns it off.
    pub ws_listen: String,
    /// The HTTP path of the WebSocket endpoint.
    pub ws_path: String,
    /// MQTT over TLS; needs `tls_cert_file` and `tls_key_file`. Empty (the default) turns it off.
    pub tls_listen: String,
    /// MQTT over WebSocket over TLS; needs the certificate too. Empty (the default) turns it off.
    pub wss_listen: String,
    /// PEM certificate chain (leaf first) for the TLS listeners.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for the TLS listeners.
    pub tls_key_file: Option<PathBuf>,
    /// Largest packet accepted from a device, in bytes; larger ones end the connection.
    pub max_packet_size: u32,
    /// Seconds a new connection has to finish its TLS and WebSocket handshakes and send CONNECT.
    pub connect_timeout_secs: u64,
    /// Longest keepalive a device may ask for, in seconds: a v5 device asking for more (or 0)
    /// is told this one in CONNACK; a 3.1.1 device asking for more is refused.
    pub max_keep_alive_secs: u16,
    /// Longest client id accepted, in bytes.
    pub max_client_id_len: usize,
    /// Longest topic name or filter accepted, in bytes.
    pub max_topic_len: usize,
    /// Most levels (`a/b/c` has 3) in a topic name or filter.
    pub max_topic_levels: usize,
    /// PUBLISH packets one connection may send per second, sustained, and in a burst;
    /// beyond that the gate stops reading from it until the rate allows (0 = no limit).
    pub publish_rate_per_sec: u32,
    pub publish_burst: u32,
    /// Bytes one connection may send per second, sustained, and in a burst (0 = no limit).
    /// The burst is raised to at least `max_packet_size`.
    pub bytes_per_sec: u32,
    pub bytes_burst: u32,
    /// New connections one client address may open per second, sustained, and in a burst;
    /// beyond that CONNECT is refused (v5: 0x9F connection rate exceeded) before the
    /// token is checked (0 = no limit).
    pub connections_per_sec_per_address: u32,
    pub connections_burst_per_address: u32,
    /// A client (address, claimed user and client id) connecting more than `flapping_max_connects` times
    /// within `flapping_window_secs` is banned for `flapping_ban_secs` (v5: 0x8A banned).
    /// 0 connects turns it off.
    pub flapping_max_connects: u32,
    pub flapping_window_secs: u64,
    pub flapping_ban_secs: u64,
    /// A part of the topic space where the gate is a plain MQTT broker, for tests and tools:
    /// a topic prefix (`lab/`), or `*` for every topic outside Parley's own (`from/`, `to/`,
    /// `sys/`, `$…`). Empty (the default) turns it off.
    pub open_namespace: String,
    /// Clients without credentials may connect, to use the open namespace only.
    pub allow_anonymous: bool,
    /// How long a persistent session (clean session = 0) outlives its connection, in seconds.
    pub session_expiry_secs: u64,
    /// Messages kept for a device that is away (persistent sessions only); more are dropped and counted.
    pub max_queued_messages: usize,
    /// QoS 1 messages sent to a device and not yet acknowledged.
    pub max_inflight: u16,
    /// Subscriptions one session may hold.
    pub max_subscriptions: usize,
    /// This gate's name in presence reports; each gate sharing a database needs its own.
    pub node_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusSettings {
    /// Loopback address of the embedded rumqttd (when `url` is unset); port 0 picks a free one at start.
    pub listen: String,
    /// An external MQTT broker or cluster (`mqtt://user:password@host:1883`) instead of
    /// the embedded one; required to run parts in separate processes (`serve --only`).
    pub url: Option<BusUrl>,
    /// How long a start waits for the external bus to accept Parley before giving up.
    pub start_timeout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// HS256 signing key; unset means a key generated on first start in `{data_dir}/signing.key`.
    pub signing_key: Option<Secret>,
    pub issuer: String,
    pub audience: String,
    pub access_token_ttl_secs: u64,
    /// A refresh token not used within this time stops working.
    pub refresh_token_ttl_secs: u64,
    /// A sign-in ends this long after the login, however often it is refreshed.
    pub session_lifetime_secs: u64,
    /// A used refresh token presented again within this time (its response was lost)
    /// gets a fresh one instead of revoking the sign-in.
    pub refresh_reuse_grace_secs: u64,
    /// How long a one-time code (verification, password reset) is valid.
    pub code_ttl_secs: u64,
    /// Wrong guesses that use up a code.
    pub code_max_attempts: u32,
    /// Least time between two codes to one email or phone.
    pub code_resend_interval_secs: u64,
    /// Most codes to one email or phone per hour.
    pub codes_per_identifier_per_hour: u32,
    /// Most codes requested from one client address per hour.
    pub codes_per_address_per_hour: u32,
    /// Failed logins tolerated per account, and per client address, within `login_window_secs`.
    pub login_failures_per_account: u32,
    pub login_failures_per_address: u32,
    pub login_window_secs: u64,
    /// Mark auth cookies `Secure` (browsers then send them over HTTPS only).
    pub cookie_secure: bool,
    /// A kiosk device's secret stops working this long after it was issued or renewed.
    pub device_secret_lifetime_secs: u64,
    /// An email or phone registered but not proven within this time is released
    /// (and an account with nothing else to log in with is deleted).
    pub unverified_release_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySettings {
    /// `development` logs one-time codes when no mail or SMS delivery is configured;
    /// `production` refuses to start without them.
    pub mode: String,
    /// SMTP server for one-time codes by email: `smtps://user:pass@host:465`,
    /// `smtp://user:pass@host:587?tls=required` or `smtp://host:25` (no TLS).
    pub smtp_url: Option<Secret>,
    /// The sender of those mails.
    pub mail_from: String,
    /// HTTP endpoint of the SMS provider: Parley POSTs `{"to", "text"}` as JSON.
    pub sms_url: Option<String>,
    /// Sent as `Authorization: Bearer …` to the SMS provider.
    pub sms_token: Option<Secret>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessageSettings {
    /// Longest text accepted in one message, in characters.
    pub max_text_chars: usize,
    /// Days each user's event log is kept for sync; a device away longer resets from a snapshot.
    pub event_retention_days: u32,
    /// Messages one user may send per second, sustained, and in a burst.
    pub user_rate_per_sec: u32,
    pub user_burst: u32,
    /// Messages one conversation may take per second, sustained, and in a burst.
    pub conversation_rate_per_sec: u32,
    pub conversation_burst: u32,
    /// Largest file accepted by `POST /v1/uploads`, in bytes.
    pub max_upload_bytes: usize,
    /// Who may start 1:1 conversations, write in them and add whom to groups.
    pub contact_policy: ContactPolicy,
}

/// `messages.contact_policy`. Admins may reach anyone under every policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContactPolicy {
    /// Anyone may reach anyone.
    #[default]
    Open,
    /// Only accepted contacts reach each other.
    Contacts,
    /// Users reach the providers and institutions they have an open consultation
    /// with; those reach the users who consulted them, and each other.
    Consulted,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// A tracing filter, e.g. `info` or `parley=debug,info`.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("parley-data"),
            database: DatabaseSettings::default(),
            http: HttpSettings::default(),
            mqtt: MqttSettings::default(),
            bus: BusSettings::default(),
            auth: AuthSettings::default(),
            delivery: DeliverySettings::default(),
            messages: MessageSettings::default(),
            log: LogSettings::default(),
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self { url: None, max_connections: 10 }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self { listen: "0.0.0.0:8080".into(), trust_forwarded_for: false }
    }
}

impl Default for MqttSettings {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:1883".into(),
            ws_listen: "0.0.0.0:8083".into(),
            ws_path: "/mqtt".into(),
            tls_listen: String::new(),
            wss_listen: String::new(),
            tls_cert_file: None,
            tls_key_file: None,
            max_packet_size: 256 * 1024,
            connect_timeout_secs: 10,
            max_keep_alive_secs: u16::MAX,
            max_client_id_len: 256,
            max_topic_len: 256,
            max_topic_levels: 16,
            publish_rate_per_sec: 100,
            publish_burst: 500,
            bytes_per_sec: 1024 * 1024,
            bytes_burst: 4 * 1024 * 1024,
            connections_per_sec_per_address: 50,
            connections_burst_per_address: 500,
            flapping_max_connects: 30,
            flapping_window_secs: 60,
            flapping_ban_secs: 300,
            open_namespace: String::new(),
            allow_anonymous: false,
            session_expiry_secs: 24 * 3600,
            max_queued_messages: 1000,
            max_inflight: 100,
            max_subscriptions: 64,
            node_id: "gate-1".into(),
        }
    }
}

impl Default for BusSettings {
    fn default() -> Self {
        Self { listen: "127.0.0.1:0".into(), url: None, start_timeout_secs: 30 }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            signing_key: None,
            issuer: "parley".into(),
            audience: "parley".into(),
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            session_lifetime_secs: 90 * 24 * 3600,
            refresh_reuse_grace_secs: 30,
            code_ttl_secs: 10 * 60,
            code_max_attempts: 5,
            code_resend_interval_secs: 60,
            codes_per_identifier_per_hour: 5,
            codes_per_address_per_hour: 20,
            login_failures_per_account: 10,
            login_failures_per_address: 50,
            login_window_secs: 15 * 60,
            cookie_secure: true,
            device_secret_lifetime_secs: 365 * 24 * 3600,
            unverified_release_secs: 2 * 24 * 3600,
        }
    }
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            mode: "development".into(),
            smtp_url: None,
            mail_from: "Parley <no-reply@localhost>".into(),
            sms_url: None,
            sms_token: None,
        }
    }
}

impl Default for MessageSettings {
    fn default() -> Self {
        Self {
            max_text_chars: 4000,
            event_retention_days: 30,
            user_rate_per_sec: 20,
            user_burst: 200,
            conversation_rate_per_sec: 50,
            conversation_burst: 500,
            max_upload_bytes: 25 * 1024 * 1024,
            contact_policy: ContactPolicy::Open,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { level: "info".into(), format: "text".into() }
    }
}

/// Why settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Read(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Bus(#[from] BusUrlError),
}

impl Settings {
    /// Reads defaults, then `file` if given, then `PARLEY_…` variables from the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        // PARLEY_CONFIG names the file itself and PARLEY_TEST_* belong to the test suite.
        let env = Env::prefixed("PARLEY_")
            .ignore(&["config"])
            .filter(|key| !key.as_str().to_ascii_lowercase().starts_with("test_"))
            .split("__");
        let settings: Settings = figment.merge(env).extract().map_err(|e| ConfigError::Read(Box::new(e)))?;
        settings.external_bus()?;
        Ok(settings)
    }

    /// The external bus named by `bus.url`, or `None` for the embedded one.
    pub fn external_bus(&self) -> Result<Option<ExternalBus>, BusUrlError> {
        self.bus.url.as_ref().map(|url| bus::parse(url.expose())).transpose()
    }

    /// The database URL in effect: the configured one, or the SQLite file in the data directory.
    pub fn database_url(&self) -> SecretString {
        match &self.database.url {
            Some(url) => url.0.clone(),
            None => {
                let path = self.data_dir.join("parley.db");
                SecretString::from(format!("sqlite://{}?mode=rwc", path.display()))
            }
        }
    }

    /// The database URL with any password hidden, for logs.
    pub fn database_url_for_logs(&self) -> String {
        secret::mask_url_password(self.database_url().expose_secret())
    }
}

impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // TOML of the Serialize impl, where secrets serialise as "[redacted]".
        match toml::to_string(self) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{self:?}"),
        }
    }
}

#[cfg(test)]
mod tests;
