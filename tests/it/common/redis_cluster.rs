//! A throwaway three-master Redis Cluster on free loopback ports, for tests: three
//! `redis-server --cluster-enabled yes` (six, with a replica each), joined by
//! `redis-cli --cluster create`, optionally over TLS only. Killed and removed when dropped.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::redis_server::{free_port, installed};

pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
    /// `redis-cli`'s TLS flags (none without TLS).
    flags: Vec<String>,
    tls: bool,
}

/// How the cluster is made.
#[derive(Default)]
pub struct Options {
    /// A replica for each master (`--cluster-replicas 1`): six nodes.
    pub replicas: bool,
    /// TLS only: the `redis-server` TLS arguments (`redis_server::tls_args`) and the CA.
    pub tls: Option<(Vec<String>, PathBuf)>,
}

struct Node {
    port: u16,
    child: Option<Child>,
}

fn cli(flags: &[String], port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(flags)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl RedisCluster {
    /// Three masters, each with a third of the slots (the first has 0–5460), or `None` when
    /// Redis is not installed (a failure under `CI=true`).
    pub fn start() -> Option<Self> {
        Self::start_with(Options::default())
    }

    /// A cluster made as `options` say.
    pub fn start_with(options: Options) -> Option<Self> {
        if !installed("redis-server") || !installed("redis-cli") {
            return None;
        }
        let dir = std::env::temp_dir().join(format!("nat-redis-cluster-{}", free_port()));
        let flags: Vec<String> = match &options.tls {
            Some((_, ca)) => vec![
                "--tls".into(),
                "--cacert".into(),
                ca.to_str().unwrap().into(),
            ],
            None => Vec::new(),
        };
        let mut nodes = Vec::new();
        let count = if options.replicas { 6 } else { 3 };
        for _ in 0..count {
            let port = free_port();
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let mut command = Command::new("redis-server");
            match &options.tls {
                Some((args, _)) => command
                    .args(["--bind", "127.0.0.1", "--port", "0"])
                    .args(["--tls-port", &port.to_string()])
                    .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                    .args(args),
                None => command.args(["--bind", "127.0.0.1", "--port", &port.to_string()]),
            };
            let child = command
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .args(["--cluster-node-timeout", "2000"])
                // A replica syncs at once (the default waits 5 s for others to join in).
                .args(["--repl-diskless-sync-delay", "0"])
                .args(["--save", "", "--appendonly", "no", "--dir"])
                .arg(&node_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server starts");
            nodes.push(Node {
                port,
                child: Some(child),
            });
        }
        let cluster = Self {
            nodes,
            dir,
            flags,
            tls: options.tls.is_some(),
        };
        for node in &cluster.nodes {
            let deadline = Instant::now() + Duration::from_secs(10);
            while cli(&cluster.flags, node.port, &["PING"]).trim() != "PONG" {
                assert!(Instant::now() < deadline, "a cluster node did not come up");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let replicas = if options.replicas { "1" } else { "0" };
        let mut create = Command::new("redis-cli")
            .args(&cluster.flags)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", replicas, "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-cli --cluster create runs");
        // It waits for the nodes to join for as long as it takes: bounded here.
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = create.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = create.kill();
                panic!("redis-cli --cluster create did not finish in 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "redis-cli --cluster create failed");
        cluster.wait_until_ok();
        if options.replicas {
            cluster.wait_until_replicas_synced();
        }
        Some(cluster)
    }

    /// Waits until every running node reports `cluster_state:ok` and agrees on the slots.
    pub fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                cli(&self.flags, n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every replica has copied its master (`master_link_status:up`): a replica
    /// that never synced is not promoted.
    fn wait_until_replicas_synced(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &self.nodes {
            loop {
                let info = cli(&self.flags, node.port, &["INFO", "replication"]);
                if info.contains("role:master") || info.contains("master_link_status:up") {
                    break;
                }
                assert!(Instant::now() < deadline, "a replica did not sync");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The seed URLs, one per node.
    pub fn urls(&self) -> Vec<String> {
        let scheme = if self.tls { "rediss" } else { "redis" };
        self.nodes
            .iter()
            .map(|n| format!("{scheme}://127.0.0.1:{}/", n.port))
            .collect()
    }

    /// `redis+cluster://` with every node, as the demo's `NAT_REDIS_URL` takes it.
    pub fn spec(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}+cluster://{}", nodes.join(","))
    }

    fn id(&self, node: usize) -> String {
        cli(&self.flags, self.nodes[node].port, &["CLUSTER", "MYID"])
            .trim()
            .to_owned()
    }

    /// A node that runs (the first one).
    fn live(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a node runs")
            .port
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn keyslot(&self, key: &str) -> u16 {
        cli(&self.flags, self.live(), &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("a slot")
    }

    /// The node that serves `slot`, as a running node sees it.
    pub fn owner(&self, slot: u16) -> usize {
        let port = self.live();
        let nodes = cli(&self.flags, port, &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let serves = fields.iter().skip(8).any(|range| {
                let mut bounds = range.split('-');
                let (Some(a), b) = (bounds.next(), bounds.next()) else {
                    return false;
                };
                let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.unwrap_or(a).parse::<u16>()) else {
                    return false;
                };
                (a..=b).contains(&slot)
            });
            if serves {
                let addr = fields[1].split('@').next().unwrap();
                return self
                    .nodes
                    .iter()
                    .position(|n| addr == format!("127.0.0.1:{}", n.port))
                    .expect("a known node");
            }
        }
        panic!("no node serves slot {slot}");
    }

    /// Moves the lowest slot of node `from` to node `to`, keys and all, with
    /// `redis-cli --cluster reshard`.
    pub fn reshard_one(&self, from: usize, to: usize) {
        let status = Command::new("redis-cli")
            .args(&self.flags)
            .args(["--cluster", "reshard"])
            .arg(format!("127.0.0.1:{}", self.nodes[from].port))
            .args([
                "--cluster-from",
                &self.id(from),
                "--cluster-to",
                &self.id(to),
            ])
            .args(["--cluster-slots", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster reshard runs");
        assert!(status.success(), "redis-cli --cluster reshard failed");
        self.wait_until_ok();
    }

    /// The number of nodes (3, or 6 with replicas).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether node `node` is a master now (`ROLE`).
    pub fn is_master(&self, node: usize) -> bool {
        cli(&self.flags, self.nodes[node].port, &["ROLE"]).starts_with("master")
    }

    /// Kills node `node` (SIGKILL).
    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in 0..self.nodes.len() {
            self.kill(node);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
