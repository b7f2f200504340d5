//! A real Mosquitto for the scale-out tests: started on a free loopback port from a
//! config file in a temporary directory, killed on drop. Tests skip (with a note on
//! stderr) when no `mosquitto` binary is installed; `.ci/run` installs it.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Mosquitto {
    pub port: u16,
    binary: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An installed program named `name`, looked for on PATH and in the sbin folders
/// Debian puts mosquitto in.
fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

impl Mosquitto {
    /// A broker taking anonymous clients; `None` when mosquitto is not installed.
    pub fn start() -> Option<Mosquitto> {
        Self::start_with(None)
    }

    /// A broker that only lets `user` with `password` in.
    pub fn start_with_password(user: &str, password: &str) -> Option<Mosquitto> {
        Self::start_with(Some((user, password)))
    }

    fn start_with(auth: Option<(&str, &str)>) -> Option<Mosquitto> {
        let Some(binary) = find("mosquitto") else {
            eprintln!("skipped: install mosquitto (apt-get install mosquitto) to run the scale-out tests");
            return None;
        };
        let dir = tempfile::tempdir().expect("mosquitto dir");
        let mut config = String::from("persistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n");
        // Run as root, mosquitto would switch to its own user and lose the temporary files.
        config.push_str("user root\n");
        match auth {
            None => config.push_str("allow_anonymous true\n"),
            Some((user, password)) => {
                let Some(passwd) = find("mosquitto_passwd") else {
                    eprintln!("skipped: mosquitto_passwd is not installed");
                    return None;
                };
                let file = dir.path().join("passwords");
                let status = Command::new(passwd)
                    .args(["-b", "-c"])
                    .arg(&file)
                    .args([user, password])
                    .status()
                    .expect("run mosquitto_passwd");
                assert!(status.success(), "mosquitto_passwd failed");
                config.push_str(&format!("allow_anonymous false\npassword_file {}\n", file.display()));
            }
        }
        std::fs::write(dir.path().join("base.conf"), config).expect("write mosquitto config");
        let mut broker = Mosquitto { port: 0, binary, dir, child: None };
        for _ in 0..5 {
            let free = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            broker.port = free.local_addr().expect("addr").port();
            drop(free);
            if broker.run() {
                return Some(broker);
            }
        }
        panic!("mosquitto did not start; its log:\n{}", broker.log());
    }

    /// Starts the broker on `self.port`; false if it exited (the port was taken).
    fn run(&mut self) -> bool {
        let base = std::fs::read_to_string(self.dir.path().join("base.conf")).expect("config");
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(&conf, format!("listener {} 127.0.0.1\n{base}", self.port)).expect("write config");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("mosquitto log");
        let mut child = Command::new(&self.binary)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mosquitto");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait().expect("mosquitto status").is_some() {
                return false;
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    /// What the broker logged (errors and warnings).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `bus.url` for this broker, with `credentials` if given.
    pub fn url(&self, credentials: Option<(&str, &str)>) -> String {
        match credentials {
            Some((user, password)) => format!("mqtt://{user}:{password}@127.0.0.1:{}", self.port),
            None => format!("mqtt://127.0.0.1:{}", self.port),
        }
    }

    /// Kills the broker (every client loses its connection).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port, with no session or subscription left.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Starts a stopped broker again on its port.
    pub fn start_again(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.run() {
            assert!(Instant::now() < deadline, "mosquitto did not restart; its log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
