//! `amqps://`: a RabbitMQ node of the test's own, speaking TLS only on a free
//! loopback port, with a certificate from a CA the test makes. Jobs go through
//! it with the CA given, and a broker of an unknown CA or plain AMQP on the TLS
//! port are refused.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use broker::{Broker, BrokerTls};
use protocol::Job;
use protocol::campaign::{ApiRateLimits, ExecutionRole, TargetSelection, TargetSelector};
use protocol::job::{DiscoverJob, Location, Priority, RunContext};
use protocol::names::Names;
use uuid::Uuid;

/// Signs as a scheduler and trusts that key.
fn keys() -> protocol::signing::Keyring {
    static KEYS: std::sync::LazyLock<protocol::signing::Keyring> = std::sync::LazyLock::new(|| {
        protocol::signing::Keyring::ephemeral_deployment()
            .unwrap()
            .scheduler
    });
    KEYS.clone()
}

use test_support::ports::free_port;

/// A private RabbitMQ node; stopped on drop.
struct TlsRabbit {
    port: u16,
    node: String,
    ca_file: std::path::PathBuf,
    child: std::process::Child,
    _pki: test_support::pki::Pki,
}

impl TlsRabbit {
    #[allow(clippy::zombie_processes)] // reaped by Drop
    async fn start() -> Self {
        let pki = test_support::pki::Pki::new();
        pki.issue_loopback_server();
        let path = |name: &str| pki.path(name);
        let port = free_port();
        std::fs::write(
            path("rabbitmq.conf"),
            format!(
                "listeners.tcp = none\nlisteners.ssl.default = 127.0.0.1:{port}\nssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\nssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
                path("ca.pem").display(),
                path("server.pem").display(),
                path("server.key").display()
            ),
        )
        .unwrap();
        std::fs::write(path("enabled_plugins"), "[].\n").unwrap();
        // The node runs as the rabbitmq user (Debian's wrapper switches to it).
        let chowned = std::process::Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(pki.dir())
            .status();
        assert!(
            chowned.is_ok_and(|status| status.success()),
            "this test runs a RabbitMQ node of its own as the rabbitmq user: run it as root with rabbitmq-server installed (`apt-get install rabbitmq-server`)"
        );
        let node = format!(
            "flotilla-tls-{}@localhost",
            &Uuid::new_v4().simple().to_string()[..8]
        );
        let child = std::process::Command::new("rabbitmq-server")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_NODE_PORT", free_port().to_string())
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("this test starts its own rabbitmq-server ({error}); install it with `apt-get install rabbitmq-server`")
            });
        let rabbit = Self {
            port,
            node,
            ca_file: path("ca.pem"),
            child,
            _pki: pki,
        };
        for _ in 0..600 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return rabbit;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the TLS RabbitMQ node did not listen on {port} within 60 s");
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for TlsRabbit {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.node, "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn job() -> Job {
    Job::Discover(DiscoverJob {
        job_id: Uuid::new_v4(),
        run: RunContext {
            run_id: Uuid::new_v4(),
            campaign: "tls".into(),
            campaign_version: 1,
            role: ExecutionRole {
                name: "FlotillaExecutionRole".into(),
                external_id: None,
                session_duration: Duration::from_secs(3600),
            },
            api_rate_limits: ApiRateLimits::default(),
            priority: Priority::Bulk,
            output_logging: None,
        },
        location: Location {
            account_id: "111122223333".into(),
            region: "us-east-1".into(),
        },
        targets: TargetSelection {
            selector: TargetSelector::All,
            platform: None,
            online_only: true,
        },
        page: 0,
        next_token: None,
        window_tag: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_go_through_a_broker_that_speaks_only_tls() {
    let rabbit = TlsRabbit::start().await;
    let names = Names::new(format!("flotilla-test-{}", Uuid::new_v4()));
    let tls = BrokerTls {
        ca_file: Some(rabbit.ca_file.clone()),
    };
    let mut broker = None;
    // The listener opens before the node accepts logins; give it a moment.
    for _ in 0..50 {
        let url = rabbit.url("amqps");
        let declared = Broker::declare_topology(&url, &names, &tls).await;
        match declared.and(Broker::connect_with(&url, names.clone(), "tls-test", &tls).await) {
            Ok(connected) => {
                broker = Some(connected.with_keyring(keys()));
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let broker = broker.expect("amqps with the test's CA connects");
    let sent = job();
    broker.publish_job(&sent).await.unwrap();
    let mut bulk = broker.consume(&names.bulk_queue(), 1, "tls").await.unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(10), bulk.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(delivery.open::<Job>(&keys()).unwrap().message, sent);
    delivery.ack().await.unwrap();

    let unknown_ca = Broker::connect(&rabbit.url("amqps"), names.clone(), "tls-test").await;
    assert!(
        unknown_ca.is_err(),
        "a certificate of an unknown CA was accepted"
    );
    let plain = Broker::connect(&rabbit.url("amqp"), names, "tls-test").await;
    assert!(plain.is_err(), "plain AMQP on the TLS port was accepted");
}
