//! A redis-server of one test's own on a free loopback port — plain, or
//! speaking TLS only with a certificate of the test's CA — so the test can
//! freeze and continue it, or give it ACL users, without disturbing other
//! tests. Killed (and reaped) on drop.

use std::time::Duration;

use crate::pki::Pki;
use crate::ports::{free_port, wait_for_port};

pub struct PrivateRedis {
    /// `redis://127.0.0.1:<port>/`, or `rediss://…` with TLS.
    pub url: String,
    /// The CA of a TLS server's certificate.
    pub ca_file: Option<std::path::PathBuf>,
    child: std::process::Child,
    _pki: Option<Pki>,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        Self::start_with_args(&[]).await
    }

    /// [`PrivateRedis::start`] with more `redis-server` arguments (`--aclfile F`).
    pub async fn start_with_args(extra: &[&str]) -> Self {
        let port = free_port();
        let mut command = std::process::Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra);
        Self::spawn(command, port, format!("redis://127.0.0.1:{port}/"), None).await
    }

    /// A server speaking TLS only, its certificate for 127.0.0.1 from a CA
    /// of its own (`ca_file`); clients are not asked for certificates.
    pub async fn start_tls() -> Self {
        let pki = Pki::new();
        pki.issue_loopback_server();
        let port = free_port();
        let mut command = std::process::Command::new("redis-server");
        command
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
            ])
            .arg("--tls-cert-file")
            .arg(pki.path("server.pem"))
            .arg("--tls-key-file")
            .arg(pki.path("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(pki.path("ca.pem"))
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ]);
        Self::spawn(
            command,
            port,
            format!("rediss://127.0.0.1:{port}/"),
            Some(pki),
        )
        .await
    }

    // The child is reaped by Drop, which clippy cannot see.
    #[allow(clippy::zombie_processes)]
    async fn spawn(
        mut command: std::process::Command,
        port: u16,
        url: String,
        pki: Option<Pki>,
    ) -> Self {
        let child = command
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("this test starts its own redis-server ({error}); install it with `apt-get install redis-server`")
            });
        // Dropped (killed and reaped) if it never answers.
        let redis = Self {
            url,
            ca_file: pki.as_ref().map(|pki| pki.path("ca.pem")),
            child,
            _pki: pki,
        };
        if wait_for_port(port, Duration::from_secs(5)).await {
            return redis;
        }
        panic!(
            "redis-server on port {port} did not start within 5 s (does it accept its arguments?)"
        );
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
        assert!(
            status.is_ok_and(|status| status.success()),
            "kill {signal} failed"
        );
    }

    /// Freezes the server: connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
