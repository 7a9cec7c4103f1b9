//! A throwaway three-master Redis Cluster on free loopback ports, for tests: three
//! `redis-server --cluster-enabled yes`, joined by `redis-cli --cluster create`. Killed and
//! removed when dropped.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::redis_server::{free_port, installed};

pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
}

struct Node {
    port: u16,
    child: Option<Child>,
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
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
        if !installed("redis-server") || !installed("redis-cli") {
            return None;
        }
        let dir = std::env::temp_dir().join(format!("nat-redis-cluster-{}", free_port()));
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let node_dir = dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir).unwrap();
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .args(["--cluster-node-timeout", "2000"])
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
        let cluster = Self { nodes, dir };
        for node in &cluster.nodes {
            let deadline = Instant::now() + Duration::from_secs(10);
            while cli(node.port, &["PING"]).trim() != "PONG" {
                assert!(Instant::now() < deadline, "a cluster node did not come up");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create runs");
        assert!(status.success(), "redis-cli --cluster create failed");
        cluster.wait_until_ok();
        Some(cluster)
    }

    /// Waits until every running node reports `cluster_state:ok` and agrees on the slots.
    pub fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = self
                .nodes
                .iter()
                .filter(|n| n.child.is_some())
                .all(|n| cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The seed URLs, one per node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}/", n.port))
            .collect()
    }

    /// `redis+cluster://` with every node, as the demo's `NAT_REDIS_URL` takes it.
    pub fn spec(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    fn id(&self, node: usize) -> String {
        cli(self.nodes[node].port, &["CLUSTER", "MYID"])
            .trim()
            .to_owned()
    }

    /// The node (0, 1 or 2) that serves `slot`.
    pub fn owner(&self, slot: u16) -> usize {
        let port = self.nodes[0].port;
        let nodes = cli(port, &["CLUSTER", "NODES"]);
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
