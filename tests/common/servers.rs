//! The Redis and NATS servers the tests talk to.
//!
//! With `REDIS_URL` / `NATS_URL` set, the tests use those servers. Unset, each test binary starts
//! its own `redis-server` and `nats-server -js` on free ports, with their data in a temp dir, so
//! `cargo test` needs nothing running. Tests share the servers of their binary and stay apart by
//! key and subject prefixes. A private server is watched by a small shell loop that stops it and
//! removes its directory once the test process is gone, however the process ends.
//!
//! A binary that is not installed is a failure that says how to install it, never a skip.
// Each test binary uses the part it needs.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The Redis URL the tests use: `REDIS_URL`, or a private server started on first use.
pub fn redis_url() -> String {
    if let Ok(url) = std::env::var("REDIS_URL") {
        return url;
    }
    static REDIS: OnceLock<String> = OnceLock::new();
    REDIS.get_or_init(|| private_redis().0).clone()
}

/// The NATS URL the tests use: `NATS_URL`, or a private JetStream server started on first use.
pub fn nats_url() -> String {
    if let Ok(url) = std::env::var("NATS_URL") {
        return url;
    }
    static NATS: OnceLock<String> = OnceLock::new();
    NATS.get_or_init(|| {
        let port = free_port();
        let dir = private_dir("nats");
        let port_arg = port.to_string();
        let store = dir.join("js").display().to_string();
        let args = [
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            port_arg.as_str(),
            "-sd",
            store.as_str(),
        ];
        spawn_watched("nats-server", "NATS_URL", &args, &dir, port);
        format!("nats://127.0.0.1:{port}")
    })
    .clone()
}

/// A Redis of one test's own, watched like the shared one, for a test that stops or kills it:
/// its URL and its port.
pub fn private_redis() -> (String, u16) {
    let port = free_port();
    let dir = private_dir("redis");
    let (port_arg, dir_arg) = (port.to_string(), dir.display().to_string());
    let args = redis_args(&port_arg, &dir_arg, &[]);
    spawn_watched("redis-server", "REDIS_URL", &args, &dir, port);
    (format!("redis://127.0.0.1:{port}"), port)
}

/// A private redis-server's arguments: on `port` of the loopback, keeping nothing on disk but
/// in `dir`, then `extra`.
fn redis_args<'a>(port: &'a str, dir: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--port",
        port,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        dir,
    ];
    args.extend_from_slice(extra);
    args
}

/// Sends SIGCONT to a process when dropped: a test that stops a server (SIGSTOP) resumes it
/// however the test ends, so its watchdog can stop it.
pub struct Resume(pub String);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

/// A port nobody listens on right now (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

fn private_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "coretex-test-{what}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("creating {} for a private {what}: {e}", dir.display()));
    dir
}

/// Starts `program args…` under a watchdog tied to this process, then waits until it accepts
/// connections on `port`.
fn spawn_watched(program: &str, env_var: &str, args: &[&str], dir: &Path, port: u16) {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "`{program}` is not on PATH. The tests start a private {program} when {env_var} is unset: \
         install it (Debian/Ubuntu: `apt-get install -y {program}`), or point {env_var} at a \
         running server",
    );
    // The server runs as a child of the shell; the shell polls this test process and, when it
    // is gone (passed, failed or killed), stops the server and removes its directory.
    let script = r#"
        prog="$1"; dir="$2"; parent="$3"; shift 3
        "$prog" "$@" >"$dir/server.log" 2>&1 &
        server=$!
        while kill -0 "$parent" 2>/dev/null && kill -0 "$server" 2>/dev/null; do sleep 0.5; done
        kill "$server" 2>/dev/null; wait "$server" 2>/dev/null
        rm -rf "$dir"
    "#;
    let dir_arg = dir.display().to_string();
    let parent = std::process::id().to_string();
    let mut watchdog = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("watchdog")
        .args([program, dir_arg.as_str(), parent.as_str()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting a private {program}: {e}"));
    // Reaps the watchdog should it end before this process (its server died).
    std::thread::spawn(move || watchdog.wait());
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            panic!("a private {program} on port {port} did not start within 15 s:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private NATS cluster with JetStream: `n` nodes routed to each other, each on a free port
/// with its own store, watched like the single servers. Tests kill nodes with
/// [`NatsCluster::kill`] to prove the hosts and workers move to the survivors.
pub struct NatsCluster {
    /// Each node's client URL.
    pub urls: Vec<String>,
    pid_files: Vec<PathBuf>,
}

impl NatsCluster {
    pub fn start(n: usize) -> NatsCluster {
        let client_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let route_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let routes = route_ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut pid_files = Vec::new();
        for i in 0..n {
            let dir = private_dir(&format!("nats-cluster-{i}"));
            let pid_file = dir.join("nats.pid");
            let conf = dir.join("nats.conf");
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{}\n\
                     jetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{ name: coretex-test, listen: 127.0.0.1:{}, routes: [{routes}] }}\n",
                    client_ports[i],
                    dir.join("js").display(),
                    route_ports[i],
                ),
            )
            .unwrap_or_else(|e| panic!("writing {}: {e}", conf.display()));
            let conf_arg = conf.display().to_string();
            let pid_arg = pid_file.display().to_string();
            spawn_watched(
                "nats-server",
                "NATS_URL",
                &["-c", conf_arg.as_str(), "-P", pid_arg.as_str()],
                &dir,
                client_ports[i],
            );
            pid_files.push(pid_file);
        }
        NatsCluster {
            urls: client_ports
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect(),
            pid_files,
        }
    }

    /// All the nodes as one comma-separated seed list.
    pub fn seeds(&self) -> String {
        self.urls.join(",")
    }

    /// Kills (SIGKILL) node `i`.
    pub fn kill(&self, i: usize) {
        let pid = std::fs::read_to_string(&self.pid_files[i])
            .unwrap_or_else(|e| panic!("reading node {i}'s pid file: {e}"));
        let status = Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -9 {pid} failed");
    }
}

/// A private Redis Cluster: `masters` masters, each with `replicas` replicas, every node on
/// free ports with its own directory, watched like the single servers. The slots are split in
/// equal contiguous ranges over the masters (`redis-cli --cluster create`). Tests kill nodes
/// with [`RedisCluster::kill`] to prove a failover loses nothing.
pub struct RedisCluster {
    /// Every node's port, masters first as created.
    pub ports: Vec<u16>,
}

impl RedisCluster {
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        let n = masters * (1 + replicas);
        let mut ports = Vec::new();
        for i in 0..n {
            let port = free_port();
            // The cluster bus port is `port + 10000` unless given: an ephemeral port plus 10000
            // may not exist, so it gets a free port of its own.
            let bus = free_port();
            let dir = private_dir(&format!("redis-cluster-{i}"));
            let (port_arg, bus_arg) = (port.to_string(), bus.to_string());
            let dir_arg = dir.display().to_string();
            let args = redis_args(
                &port_arg,
                &dir_arg,
                &[
                    "--cluster-port",
                    &bus_arg,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    // A master silent for a second is failed over to its replica.
                    "--cluster-node-timeout",
                    "1000",
                ],
            );
            spawn_watched("redis-server", "REDIS_CLUSTER_URL", &args, &dir, port);
            ports.push(port);
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("running redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { ports };
        cluster.wait_ok(Duration::from_secs(30));
        cluster.wait_replicas_synced(Duration::from_secs(30));
        cluster
    }

    /// Waits until every replica has its master's data: a replica that never synced may not
    /// take over (Redis refuses a failover to it as too stale), and one that did not has
    /// nothing to take over with.
    pub fn wait_replicas_synced(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let synced = self.live_ports().iter().all(|p| {
                let info = Self::cli(*p, &["info", "replication"]);
                !info.contains("role:slave") || info.contains("master_link_status:up")
            });
            if synced {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster's replicas did not sync within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The cluster's URL for the store: every node as a seed.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// `redis-cli -p port args…`, its output.
    pub fn cli(port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("running redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until every live node says the cluster is ok (all slots served).
    pub fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ok = self
                .live_ports()
                .iter()
                .all(|p| Self::cli(*p, &["cluster", "info"]).contains("cluster_state:ok"));
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster did not come up within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The ports of the nodes that answer.
    pub fn live_ports(&self) -> Vec<u16> {
        self.ports
            .iter()
            .copied()
            .filter(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
            .collect()
    }

    /// The ports of the masters that answer.
    pub fn masters(&self) -> Vec<u16> {
        self.live_ports()
            .into_iter()
            .filter(|p| Self::cli(*p, &["role"]).starts_with("master"))
            .collect()
    }

    /// Keys on the node at `port`.
    pub fn dbsize(port: u16) -> u64 {
        Self::cli(port, &["dbsize"]).trim().parse().unwrap_or(0)
    }

    /// The ports of the replicas that answer.
    pub fn replicas(&self) -> Vec<u16> {
        self.live_ports()
            .into_iter()
            .filter(|p| Self::cli(*p, &["role"]).starts_with("slave"))
            .collect()
    }

    /// The process id of the node at `port`.
    pub fn pid(port: u16) -> String {
        Self::cli(port, &["info", "server"])
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .map(|p| p.trim().to_string())
            .unwrap_or_else(|| panic!("the pid of the node at {port}"))
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to process `pid` (a stopped node answers nothing,
    /// not even its pid: ask it first).
    pub fn signal(pid: &str, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), pid])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Kills (SIGKILL) the node at `port`.
    pub fn kill(&self, port: u16) {
        let i = self
            .ports
            .iter()
            .position(|p| *p == port)
            .expect("a node of this cluster");
        let pid = Self::cli(port, &["info", "server"])
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .map(|p| p.trim().to_string())
            .unwrap_or_else(|| panic!("the pid of node {i}"));
        let status = Command::new("kill")
            .args(["-9", &pid])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -9 {pid} failed");
    }
}

/// The Redis Cluster URL the tests use: `REDIS_CLUSTER_URL`, or a private three-master cluster
/// started on first use.
pub fn redis_cluster_url() -> String {
    if let Ok(url) = std::env::var("REDIS_CLUSTER_URL") {
        return url;
    }
    static CLUSTER: OnceLock<String> = OnceLock::new();
    CLUSTER
        .get_or_init(|| RedisCluster::start(3, 0).url())
        .clone()
}
