//! Where the test suites find the Redis Cluster and the Sentinel-watched
//! Redis that `scripts/redis-topologies` starts on loopback (the test command
//! runs it) and the RabbitMQ cluster of `scripts/rabbitmq-cluster`, what to
//! say when they are not there, and how tests kill and restart their nodes.

use std::process::Command;
use std::time::Duration;

/// The test cluster's URL (`FLOTILLA_TEST_REDIS_CLUSTER_URL` overrides).
/// Writes that must survive a failover wait for one replica, as the book (docs/src/how-to/clusters.md)
/// advises for every deployment with replicas.
pub fn cluster_url() -> String {
    std::env::var("FLOTILLA_TEST_REDIS_CLUSTER_URL").unwrap_or_else(|_| {
        "redis+cluster://127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103?wait_replicas=1".into()
    })
}

/// The test Sentinel's URL (`FLOTILLA_TEST_REDIS_SENTINEL_URL` overrides),
/// waiting for its one replica as [`cluster_url`] does.
pub fn sentinel_url() -> String {
    std::env::var("FLOTILLA_TEST_REDIS_SENTINEL_URL").unwrap_or_else(|_| {
        "redis+sentinel://127.0.0.1:26401,127.0.0.1:26402,127.0.0.1:26403/flotilla?wait_replicas=1"
            .into()
    })
}

/// The failure message of a test whose Redis is not there.
pub fn needs(url: &str, error: &dyn std::fmt::Display) -> String {
    if url.contains("+cluster") || url.contains("+sentinel") {
        format!(
            "this test needs the Redis Cluster and Sentinel of scripts/redis-topologies ({url}): {error}; \
             run the tests with scripts/test, or start them with `scripts/redis-topologies start`"
        )
    } else {
        format!("this test needs Redis at {url}: {error}")
    }
}

/// The directory of `scripts/redis-topologies` (node configs and pid files).
pub fn topologies_dir() -> String {
    std::env::var("FLOTILLA_REDIS_TOPOLOGIES_DIR")
        .unwrap_or_else(|_| "/tmp/flotilla-redis-topologies".into())
}

/// The directory of `scripts/rabbitmq-cluster` (each node's pid file in `<n>/pid`).
pub fn rabbitmq_cluster_dir() -> String {
    std::env::var("FLOTILLA_RABBITMQ_CLUSTER_DIR")
        .unwrap_or_else(|_| "/tmp/flotilla-rabbitmq-cluster".into())
}

/// The test RabbitMQ cluster's nodes (`FLOTILLA_TEST_RABBITMQ_CLUSTER_URL`
/// overrides), the first of which every service connects to.
pub fn rabbitmq_cluster_url() -> String {
    std::env::var("FLOTILLA_TEST_RABBITMQ_CLUSTER_URL").unwrap_or_else(|_| {
        (1..=3)
            .map(|node| format!("amqp://guest:guest@127.0.0.1:570{node}/%2f"))
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// Fails with how to start it when the RabbitMQ cluster's first node does not answer.
pub fn require_rabbitmq_cluster() {
    let first = std::net::SocketAddr::from(([127, 0, 0, 1], 5701));
    if let Err(error) = std::net::TcpStream::connect_timeout(&first, Duration::from_secs(2)) {
        panic!(
            "this test needs the RabbitMQ cluster of scripts/rabbitmq-cluster (127.0.0.1:5701-5703): {error}; run the tests with scripts/test, or start it with `scripts/rabbitmq-cluster start`"
        );
    }
}

/// Runs `scripts/<name> start` when dropped: a test cluster's killed node
/// starts again and rejoins, also when the test fails.
pub struct RestartDeadNodes(pub &'static str);

impl RestartDeadNodes {
    /// Starts the dead nodes of `scripts/<name>` now; false when the script failed.
    pub fn now(name: &str) -> bool {
        let script = format!("{}/../scripts/{name}", env!("CARGO_MANIFEST_DIR"));
        match Command::new(&script).arg("start").status() {
            Ok(status) if status.success() => true,
            other => {
                eprintln!("could not restart the nodes of {script}: {other:?}");
                false
            }
        }
    }
}

impl Drop for RestartDeadNodes {
    fn drop(&mut self) {
        Self::now(self.0);
    }
}

/// Sends `signal` (`-KILL`, `-STOP`, …) to the process whose pid `pid_file` holds.
pub fn signal(signal: &str, pid_file: &str) {
    let pid = std::fs::read_to_string(pid_file)
        .unwrap_or_else(|error| panic!("{pid_file}: {error}; is the test cluster running?"));
    let sent = Command::new("kill")
        .args([signal, pid.trim()])
        .status()
        .unwrap_or_else(|error| panic!("kill {signal}: {error}"));
    assert!(sent.success(), "kill {signal} {}", pid.trim());
}

/// The test Redis Cluster's `CLUSTER NODES`, from the first node that
/// answers (a test may have killed one).
pub fn cluster_nodes() -> String {
    for port in 7101..=7106 {
        let output = Command::new("redis-cli")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "cluster",
                "nodes",
            ])
            .output()
            .expect("this test needs redis-cli (Debian's redis-tools)");
        let nodes = String::from_utf8_lossy(&output.stdout).to_string();
        if output.status.success() && nodes.contains("master") {
            return nodes;
        }
    }
    panic!("no node of the test Redis Cluster (127.0.0.1:7101-7106) answers");
}

/// The port of the master that serves `slot`, from `CLUSTER NODES`.
pub fn master_port_of(slot: u16) -> u16 {
    serving_master(slot, &cluster_nodes()).unwrap_or_else(|| {
        panic!(
            "no master serves slot {slot}; the cluster says:\n{}",
            cluster_nodes()
        )
    })
}

/// The port of the master (not failed) that serves `slot` in `nodes`.
pub fn serving_master(slot: u16, nodes: &str) -> Option<u16> {
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
            continue;
        }
        let serves = fields[8..].iter().any(|range| {
            let mut bounds = range
                .split('-')
                .filter_map(|bound| bound.parse::<u16>().ok());
            match (bounds.next(), bounds.next()) {
                (Some(low), Some(high)) => (low..=high).contains(&slot),
                (Some(only), None) => only == slot,
                _ => false,
            }
        });
        if serves {
            let address = fields[1].split('@').next().unwrap_or_default();
            return address.rsplit(':').next()?.parse().ok();
        }
    }
    None
}

/// The port of the master that serves `slot` once it is not `old`, or None
/// if no replica took over within `within`.
pub fn new_master_of(slot: u16, old: u16, within: Duration) -> Option<u16> {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        match serving_master(slot, &cluster_nodes()) {
            Some(port) if port != old => return Some(port),
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}
