use super::*;
use std::io::Write;

#[test]
fn defaults_match_the_documented_embedded_setup() {
    let s = Settings::default();
    assert_eq!(s.mqtt.listen, "0.0.0.0:1883");
    assert_eq!(s.http.listen, "0.0.0.0:8080");
    assert!(s.bus.listen.starts_with("127.0.0.1:"));
    assert!(s.database.url.is_none());
    assert!(s.database_url().expose_secret().starts_with("sqlite://parley-data/parley.db"));
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's own signature
fn file_then_environment_override_defaults() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    writeln!(file, "[http]\nlisten = \"127.0.0.1:9999\"\n[mqtt]\nmax_inflight = 7").expect("write");
    figment::Jail::expect_with(|jail| {
        jail.set_env("PARLEY_MQTT__MAX_INFLIGHT", "9");
        jail.set_env("PARLEY_TEST_POSTGRES_URL", "ignored");
        let s = Settings::load(Some(file.path())).expect("settings load");
        assert_eq!(s.http.listen, "127.0.0.1:9999");
        assert_eq!(s.mqtt.max_inflight, 9);
        Ok(())
    });
}

#[test]
fn unknown_keys_are_refused() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    writeln!(file, "[http]\nlisen = \"127.0.0.1:9999\"").expect("write");
    let err = Settings::load(Some(file.path())).expect_err("typo must be refused");
    assert!(err.to_string().contains("lisen"), "{err}");
}

#[test]
fn printed_settings_hide_secrets() {
    let mut s = Settings::default();
    s.database.url = Some(DatabaseUrl::new("postgres://app:hunter2@db:5432/parley"));
    s.auth.signing_key = Some(Secret(SecretString::from("topsecretkey")));
    s.delivery.smtp_url = Some(Secret(SecretString::from("smtps://mailer:mailpass@smtp.example.com")));
    s.delivery.sms_token = Some(Secret(SecretString::from("smstoken123")));
    let shown = format!("{s} {s:?}");
    assert!(!shown.contains("mailpass") && !shown.contains("smstoken123"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("topsecretkey"), "{shown}");
    assert!(shown.contains("postgres://app:[redacted]@db:5432/parley"), "{shown}");
    assert_eq!(s.database_url_for_logs(), "postgres://app:[redacted]@db:5432/parley");
}

#[test]
fn the_example_file_lists_exactly_the_defaults() {
    // Compiled in, not read from env!("CARGO_MANIFEST_DIR") at run time: a test
    // binary reused from another checkout through a shared target directory named a
    // path that no longer existed (the cause of this test's rare failures).
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(include_str!("../examples/parley.toml").as_bytes()).expect("write");
    let loaded = Settings::load(Some(file.path())).expect("example parses");
    assert_eq!(loaded.to_string(), Settings::default().to_string());
}

#[test]
fn the_contact_policy_is_one_of_three_names() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    writeln!(file, "[messages]\ncontact_policy = \"consulted\"").expect("write");
    let s = Settings::load(Some(file.path())).expect("settings load");
    assert_eq!(s.messages.contact_policy, ContactPolicy::Consulted);
    assert_eq!(Settings::default().messages.contact_policy, ContactPolicy::Open);

    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    writeln!(file, "[messages]\ncontact_policy = \"friends\"").expect("write");
    let err = Settings::load(Some(file.path())).expect_err("an unknown policy must be refused").to_string();
    assert!(err.contains("friends") && err.contains("contact_policy"), "{err}");
    assert!(err.contains("open") && err.contains("contacts") && err.contains("consulted"), "{err}");
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's own signature
fn a_bus_url_is_checked_at_load_and_its_password_never_shown() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("PARLEY_BUS__URL", "mqtt://parley:hunter2@mqtt.internal:1884");
        let s = Settings::load(None).expect("settings load");
        let bus = s.external_bus().expect("valid").expect("external");
        assert_eq!((bus.host.as_str(), bus.port), ("mqtt.internal", 1884));
        let shown = format!("{s} {s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("mqtt://parley:[redacted]@mqtt.internal:1884"), "{shown}");

        jail.set_env("PARLEY_BUS__URL", "mqtts://parley:hunter2@mqtt.internal:8883");
        let err = Settings::load(None).expect_err("TLS is refused").to_string();
        assert!(err.contains("bus.url") && err.contains("PARLEY_BUS__URL") && err.contains("TLS"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        Ok(())
    });
    assert!(Settings::default().external_bus().expect("no url").is_none(), "the embedded bus is the default");
}

#[test]
fn a_password_with_unescaped_slashes_is_still_hidden() {
    let mut s = Settings::default();
    s.bus.url = Some(BusUrl::new("mqtt://parley:se/cr@t@mqtt:1883"));
    let shown = s.to_string();
    assert!(!shown.contains("se/cr") && shown.contains("mqtt://parley:[redacted]@mqtt:1883"), "{shown}");
}
