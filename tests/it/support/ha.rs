//! The Patroni cluster of `scripts/ha-up` (issue 29), for the failover tests: etcd, three
//! PostgreSQL 15 nodes under Patroni (synchronous mode, strict) and HAProxy's write and
//! read ports, all on loopback. Started on first use (ha-up is idempotent and takes a
//! lock, so test processes share one cluster); `scripts/test` stops it at the end.
//!
//! Faults are the real ones: a switchover asked of Patroni's REST API, a `kill -9` of the
//! leader's postmaster.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

/// Patroni's `ttl` in `scripts/ha-up`: a lost leader's key lapses after at most this.
pub const TTL: Duration = Duration::from_secs(20);

pub struct Cluster {
    /// HAProxy's write port, database `postgres`: where tests create their databases.
    pub write_url: String,
    /// HAProxy's read port (replicas), database `postgres`.
    pub read_url: String,
    dir: PathBuf,
    rest_ports: [u16; 3],
}

/// A cluster member as Patroni's `/cluster` reports it.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub role: String,
    pub state: String,
}

fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl Cluster {
    /// Starts the cluster if it is not up (or waits for it to be healthy again). `None`
    /// when Patroni is not installed outside CI (`scripts/test` installs it through
    /// `scripts/ensure-ha`; in CI a missing package fails the test).
    pub fn up() -> Option<Cluster> {
        let installed = Command::new("sh").args(["-c", "command -v patroni && command -v etcd && command -v haproxy"]).output();
        if !installed.is_ok_and(|out| out.status.success()) {
            assert!(std::env::var_os("CI").is_none(), "patroni, etcd and haproxy are needed (scripts/ensure-ha)");
            eprintln!("skipped: patroni, etcd or haproxy is not installed (scripts/ensure-ha installs them)");
            return None;
        }
        let out = Command::new(project_root().join("scripts/ha-up")).output().expect("run scripts/ha-up");
        assert!(out.status.success(), "scripts/ha-up: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let url = |label: &str| {
            stdout.lines().find_map(|line| line.strip_prefix(label)).map(|url| url.trim().to_string()).expect("ha-up prints its URLs")
        };
        let base: u16 = std::env::var("KILN_HA_PORT_BASE").ok().and_then(|b| b.parse().ok()).unwrap_or(25400);
        Some(Cluster {
            write_url: url("write:"),
            read_url: url("read:"),
            dir: std::env::var_os("KILN_HA_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp/kiln-ha")),
            rest_ports: [base + 21, base + 22, base + 23],
        })
    }

    /// The read port's URL of database `name`.
    pub fn read_url_of(&self, name: &str) -> String {
        let server = self.read_url.rsplit_once('/').map_or(self.read_url.as_str(), |(server, _)| server);
        format!("{server}/{name}")
    }

    /// The members as the first node's REST API that answers reports them.
    pub async fn members(&self) -> Vec<Member> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
        for port in self.rest_ports {
            let Ok(response) = client.get(format!("http://127.0.0.1:{port}/cluster")).send().await else { continue };
            let Ok(body) = response.json::<Value>().await else { continue };
            return body["members"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| Member {
                    name: m["name"].as_str().unwrap_or_default().to_string(),
                    role: m["role"].as_str().unwrap_or_default().to_string(),
                    state: m["state"].as_str().unwrap_or_default().to_string(),
                })
                .collect();
        }
        Vec::new()
    }

    pub async fn leader(&self) -> Option<Member> {
        self.members().await.into_iter().find(|m| m.role == "leader" && m.state == "running")
    }

    fn rest_port(&self, member: &str) -> u16 {
        let n: usize = member.trim_start_matches("node").parse().expect("node name");
        self.rest_ports[n - 1]
    }

    /// Asks Patroni to hand the leadership to the synchronous standby; returns the old
    /// and the new leader's names.
    pub async fn switchover(&self) -> (String, String) {
        let members = self.members().await;
        let leader = members.iter().find(|m| m.role == "leader").expect("a leader").name.clone();
        let candidate = members.iter().find(|m| m.role == "sync_standby").expect("a synchronous standby").name.clone();
        let response = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/switchover", self.rest_port(&leader)))
            .json(&serde_json::json!({"leader": leader, "candidate": candidate}))
            .send()
            .await
            .expect("ask Patroni for a switchover");
        let status = response.status();
        assert!(status.is_success(), "switchover: {status} {}", response.text().await.unwrap_or_default());
        (leader, candidate)
    }

    /// `kill -9` of the leader's postmaster (its backends notice and exit); returns the
    /// leader's name. Patroni (`primary_start_timeout: 0`) fails over to the synchronous
    /// standby rather than restart it.
    pub async fn kill_leader_postmaster(&self) -> String {
        let leader = self.leader().await.expect("a leader").name;
        let pid_file = self.dir.join(&leader).join("postmaster.pid");
        let pid = std::fs::read_to_string(&pid_file).expect("the leader's postmaster.pid");
        let pid = pid.lines().next().expect("a pid").trim().to_string();
        let status = Command::new("kill").args(["-KILL", &pid]).status().expect("kill");
        assert!(status.success(), "kill -9 {pid}");
        leader
    }

    /// Waits (bounded) until another member than `old` leads.
    pub async fn wait_new_leader(&self, old: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(leader) = self.leader().await.filter(|l| l.name != old) {
                return leader.name;
            }
            assert!(tokio::time::Instant::now() < deadline, "no new leader within {within:?}: {:?}", self.members().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (bounded) until all three members run again, one of them the synchronous
    /// standby: the next test finds the cluster whole.
    pub async fn wait_healthy(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let members = self.members().await;
            let running = members.iter().filter(|m| matches!(m.state.as_str(), "running" | "streaming")).count();
            if running == 3 && members.iter().any(|m| m.role == "sync_standby") && members.iter().any(|m| m.role == "leader") {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "the cluster did not heal within {within:?}: {members:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
