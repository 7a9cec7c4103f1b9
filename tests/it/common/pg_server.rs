//! A throwaway PostgreSQL cluster on a free loopback port, for tests: a fresh `initdb` for
//! each server (under a second), run as the `postgres` (or `nobody`) user
//! when the tests run as root, since the server refuses root. Killed and deleted when dropped.

use std::{
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

pub struct PgServer {
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
}

/// The directory holding `initdb` and `postgres`: on `PATH`, or Debian's versioned one.
fn bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"));
    on_path
        .chain(debian)
        .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// The unprivileged user to run the server as, when running as root.
fn user() -> Option<&'static str> {
    static USER: OnceLock<Option<&'static str>> = OnceLock::new();
    *USER.get_or_init(|| {
        if !is_root() {
            return None;
        }
        let exists = |u: &str| {
            Command::new("id")
                .arg(u)
                .output()
                .is_ok_and(|o| o.status.success())
        };
        Some(if exists("postgres") {
            "postgres"
        } else {
            "nobody"
        })
    })
}

/// `program args…`, as the unprivileged user if there is one.
fn command(program: &Path) -> Command {
    match user() {
        Some(user) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={user}"),
                &format!("--regid={user}"),
                "--init-groups",
                "--",
            ]);
            c.arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn chown(path: &Path) {
    if let Some(user) = user() {
        let ok = Command::new("chown")
            .args(["-R", &format!("{user}:")])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "chown {}", path.display());
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgServer {
    /// A new server, or `None` (printing that the test is skipped) when PostgreSQL is not
    /// installed. Under `CI=true` a missing PostgreSQL fails the test instead.
    pub fn start() -> Option<Self> {
        let Some(bin) = bin_dir() else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("PostgreSQL is not installed, and CI=true requires the PostgreSQL tests");
            }
            eprintln!("skipped: initdb/postgres not found (install postgresql to run these tests)");
            return None;
        };
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("tower-nat-pg-{port}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        chown(&dir);
        let out = command(&bin.join("initdb"))
            .arg("-D")
            .arg(&dir)
            .args([
                "-U",
                "nat",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut server = Self {
            port,
            dir,
            bin,
            child: None,
        };
        server.restart();
        Some(server)
    }

    /// The URL of the `postgres` database, with a password the server ignores (trust), so
    /// tests can check it never leaks.
    pub fn url(&self) -> String {
        format!("postgres://nat:hunter2@127.0.0.1:{}/postgres", self.port)
    }

    #[allow(dead_code)] // tests/tls.rs
    /// Serves TLS with `cert` and `key` (PEM), and only TLS: `hostssl` is the one way in
    /// over TCP (a plain connection is refused by `pg_hba.conf`). Restarts the server.
    pub fn require_tls(&mut self, cert: &Path, key: &Path) {
        std::fs::copy(cert, self.dir.join("server.crt")).unwrap();
        std::fs::copy(key, self.dir.join("server.key")).unwrap();
        std::fs::write(
            self.dir.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        let conf = self.dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).unwrap();
        chown(&self.dir);
        let key_mode = std::os::unix::fs::PermissionsExt::from_mode(0o600);
        std::fs::set_permissions(self.dir.join("server.key"), key_mode).unwrap();
        self.restart();
    }

    /// Starts (again) on the same port and data, and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let mut cmd = command(&self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "unix_socket_directories="])
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        self.child = Some(cmd.spawn().expect("postgres starts"));
        let deadline = Instant::now() + Duration::from_secs(30);
        // Ready when the postmaster says so in its pid file (its status line reads `ready`):
        // accepting TCP is not enough, it may still be starting up.
        let pid_file = self.dir.join("postmaster.pid");
        loop {
            assert!(Instant::now() < deadline, "postgres did not come up");
            let ready = std::fs::read_to_string(&pid_file)
                .is_ok_and(|pid| pid.lines().any(|line| line.trim() == "ready"));
            if ready && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn group_signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let ok = Command::new("kill")
                .args([sig, "--", &format!("-{}", child.id())])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill {sig}");
        }
    }

    /// Stops the server at once (every process of it).
    pub fn stop(&mut self) {
        if self.child.is_some() {
            self.children_signal("-CONT");
            self.group_signal("-CONT");
            // Immediate shutdown: every process exits at once.
            self.group_signal("-QUIT");
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        // A killed postmaster leaves its pid file; the next start must not see it as running.
        let _ = std::fs::remove_file(self.dir.join("postmaster.pid"));
    }

    /// Freezes every process of the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.group_signal("-STOP");
        // Each backend runs in a session of its own (PostgreSQL calls `setsid`): freeze the
        // postmaster's children too, or open connections keep answering.
        self.children_signal("-STOP");
    }

    /// Thaws it.
    pub fn resume(&self) {
        self.children_signal("-CONT");
        self.group_signal("-CONT");
    }

    /// Signals every process the postmaster started.
    fn children_signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            // `pkill` exits 1 when no process matched: nothing to signal.
            let _ = Command::new("pkill")
                .args([sig, "-P", &child.id().to_string()])
                .status();
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
