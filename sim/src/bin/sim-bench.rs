//! sim-bench: how many SSM requests per second the simulator serves on one core,
//! and how much memory the `large` profile needs before and after a full scan.
//!
//! The simulator runs on its own single-threaded runtime (one core); the load
//! comes from another thread over keep-alive HTTP/1.1 on loopback, each
//! connection signed as a different account (signatures are not verified, only
//! the access key id is read). Run it with
//! `cargo run --release -p sim --bin sim-bench -- --seconds 5`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sim::profile::{Bucket, FleetProfile};
use sim::{SimServer, fleet::InstanceKey};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Connection {
    stream: BufReader<TcpStream>,
    host: String,
}

impl Connection {
    async fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: BufReader::new(stream),
            host: addr.to_string(),
        })
    }

    /// One request; returns (status, body).
    async fn call(
        &mut self,
        target: Option<&str>,
        akid: &str,
        content_type: &str,
        body: &str,
    ) -> std::io::Result<(u16, String)> {
        let target_header = target
            .map(|t| format!("X-Amz-Target: {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "POST / HTTP/1.1\r\nHost: {}\r\n{target_header}Content-Type: {content_type}\r\nAuthorization: AWS4-HMAC-SHA256 Credential={akid}/20261122/us-east-1/ssm/aws4_request, SignedHeaders=host, Signature=0\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status = line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut length = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    async fn ssm(
        &mut self,
        operation: &str,
        akid: &str,
        body: &str,
    ) -> std::io::Result<(u16, String)> {
        self.call(
            Some(&format!("AmazonSSM.{operation}")),
            akid,
            "application/x-amz-json-1.1",
            body,
        )
        .await
    }
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU seconds used by the calling thread.
fn thread_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return 0.0;
    };
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds = arg("--seconds", 5);
    let connections = arg("--connections", 16) as u32;
    let rss_before = rss_mib();
    let mut profile = FleetProfile::large();
    // Measure the server, not its throttling.
    let open = Bucket {
        rate: 1e9,
        burst: 1e9,
    };
    profile.api_limits.send_command = open;
    profile.api_limits.list_command_invocations = open;
    profile.api_limits.assume_role = open;
    let accounts = profile.accounts;

    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (cpu_tx, cpu_rx) = std::sync::mpsc::channel();
    let started = Instant::now();
    let server_thread = std::thread::spawn(move || -> std::io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let server = SimServer::start(
                profile,
                "127.0.0.1:0".parse().map_err(std::io::Error::other)?,
            )
            .await?;
            let _ = addr_tx.send((server.addr, server.state.clone()));
            let cpu_start = thread_cpu_seconds();
            let _ = stop_rx.await;
            let _ = cpu_tx.send(thread_cpu_seconds() - cpu_start);
            Ok(())
        })
    });
    let (addr, state) = addr_rx.recv()?;
    let startup = started.elapsed();
    let rss_started = rss_mib();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (requests, elapsed) = runtime.block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for c in 0..connections {
            let state = state.clone();
            tasks.push(tokio::spawn(async move {
                let mut conn = Connection::open(addr).await?;
                let account = 1 + c % (accounts - 1);
                let account_id = state.fleet.account_id(account);
                let form = format!("Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A{account_id}%3Arole%2FFlotillaExecutionRole&RoleSessionName=bench");
                let (_, xml) = conn.call(None, &state.fleet.profile.caller_access_key_id, "application/x-www-form-urlencoded", &form).await?;
                let akid = xml.split("<AccessKeyId>").nth(1).and_then(|s| s.split('<').next()).unwrap_or_default().to_string();
                let ids: Vec<String> = (0..50).map(|index| state.fleet.instance_id(InstanceKey { account, region: 0, index })).collect();
                let send = serde_json::json!({ "DocumentName": "AWS-RunShellScript", "InstanceIds": ids, "Comment": "bench" }).to_string();
                let mut count = 0u64;
                while Instant::now() < deadline {
                    let (status, body) = conn.ssm("SendCommand", &akid, &send).await?;
                    if status != 200 {
                        return Err(std::io::Error::other(format!("SendCommand answered {status}: {body}")));
                    }
                    let command_id = body.split("\"CommandId\":\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or_default().to_string();
                    let list = format!("{{\"CommandId\":\"{command_id}\",\"Details\":true}}");
                    let (status, body) = conn.ssm("ListCommandInvocations", &akid, &list).await?;
                    if status != 200 {
                        return Err(std::io::Error::other(format!("ListCommandInvocations answered {status}: {body}")));
                    }
                    count += 2;
                }
                Ok::<u64, std::io::Error>(count)
            }));
        }
        let begun = Instant::now();
        let mut total = 0;
        for task in tasks {
            total += task.await.map_err(std::io::Error::other)??;
        }
        Ok::<_, std::io::Error>((total, begun.elapsed()))
    })?;
    let rss_loaded = rss_mib();
    let commands = state_commands(addr, &runtime)?;
    let _ = stop_tx.send(());
    let server_cpu = cpu_rx.recv().unwrap_or(0.0);
    let _ = server_thread.join();

    let rate = requests as f64 / elapsed.as_secs_f64();
    println!("sim-bench: large profile (1,000,000 instances, 10,000 accounts × 2 regions)");
    println!(
        "  startup                      {:>10.1} ms",
        startup.as_secs_f64() * 1000.0
    );
    println!("  RSS before / after start     {rss_before:>10.1} / {rss_started:.1} MiB");
    println!(
        "  SendCommand(50 ids) + ListCommandInvocations(Details), {connections} connections, {seconds} s:"
    );
    println!("  requests                     {requests:>10}");
    println!("  requests per second          {rate:>10.0}");
    println!("  server CPU seconds           {server_cpu:>10.2} (one thread)");
    println!(
        "  requests per server CPU s    {:>10.0}",
        requests as f64 / server_cpu.max(0.001)
    );
    println!(
        "  commands stored              {commands:>10} ({} invocations)",
        commands * 50
    );
    println!("  RSS after load               {rss_loaded:>10.1} MiB");
    Ok(())
}

fn state_commands(addr: SocketAddr, runtime: &tokio::runtime::Runtime) -> std::io::Result<u64> {
    runtime.block_on(async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET /_sim/stats HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let stats: serde_json::Value = serde_json::from_str(body).map_err(std::io::Error::other)?;
        Ok(stats["commands"].as_u64().unwrap_or(0))
    })
}
