//! A throwaway `redis-server` on a free loopback port, for tests. Killed when dropped.

use std::{
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// With an append-only file fsynced on every write, in this directory (kept across
    /// restarts, removed on drop).
    aof: Option<std::path::PathBuf>,
    /// TLS only (no plain port): `redis-server` arguments naming the certificate, key and CA.
    tls: Option<Vec<String>>,
}

#[allow(dead_code)] // tests/tls.rs
/// `redis-server` arguments for TLS only with this certificate, key and CA: clients need no
/// certificate of their own; the cluster bus and replication use TLS too.
pub fn tls_args(
    cert: &std::path::Path,
    key: &std::path::Path,
    ca: &std::path::Path,
) -> Vec<String> {
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    vec![
        "--tls-cert-file".into(),
        path(cert),
        "--tls-key-file".into(),
        path(key),
        "--tls-ca-cert-file".into(),
        path(ca),
        "--tls-auth-clients".into(),
        "no".into(),
    ]
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// A new server, or `None` (printing that the test is skipped) when `redis-server` is not
    /// installed. Under `CI=true` a missing server fails the test instead.
    pub fn start() -> Option<Self> {
        Self::start_with(None)
    }

    /// A server that keeps its data across kills and restarts: an append-only file with
    /// `appendfsync always`, as a production Redis that must not lose charges.
    pub fn start_durable() -> Option<Self> {
        let dir = std::env::temp_dir().join(format!("nat-redis-aof-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        Self::start_with(Some(dir))
    }

    #[allow(dead_code)] // tests/tls.rs
    /// A server that speaks TLS only, with `cert` and `key`, on `localhost` and 127.0.0.1.
    pub fn start_tls(
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
    ) -> Option<Self> {
        Self::start_with_tls(None, Some(tls_args(cert, key, ca)))
    }

    fn start_with(aof: Option<std::path::PathBuf>) -> Option<Self> {
        Self::start_with_tls(aof, None)
    }

    fn start_with_tls(aof: Option<std::path::PathBuf>, tls: Option<Vec<String>>) -> Option<Self> {
        if !installed("redis-server") {
            return None;
        }
        let mut server = Self {
            port: free_port(),
            child: None,
            aof,
            tls,
        };
        server.restart();
        Some(server)
    }

    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("rediss://localhost:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// Starts (again) on the same port and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let mut command = Command::new("redis-server");
        let port = self.port.to_string();
        match &self.tls {
            Some(tls) => command
                .args(["--bind", "127.0.0.1", "--port", "0", "--tls-port", &port])
                .args(tls),
            None => command.args(["--bind", "127.0.0.1", "--port", &port]),
        };
        command.args(["--save", "", "--protected-mode", "yes"]);
        match &self.aof {
            Some(dir) => command
                .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
                .arg(dir),
            None => command.args(["--appendonly", "no"]),
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        // Readiness: bounded, a few hundred attempts at most.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the server.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let ok = Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill {sig}");
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws it (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.stop();
        if let Some(dir) = &self.aof {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Whether `program` runs; when not, prints that the test is skipped, or fails under
/// `CI=true`.
pub fn installed(program: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{program} is not installed, and CI=true requires the Redis tests");
        }
        eprintln!("skipped: {program} not found (install it to run the Redis tests)");
    }
    found
}
