//! The simulator tutorial's one command (`scripts/tutorial`, issue 33):
//! it starts the simulator, a scheduler and a worker on the real RabbitMQ
//! and Redis, a run started against it completes and reports, and Ctrl-C
//! stops every service it started.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Stops the script's whole process group (the services it started too),
/// and purges the test's deployment, also when the test fails.
struct Cleanup {
    group: Option<u32>,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(group) = self.group {
            // `--` before the negative id: a process group, not a signal.
            let _ = std::process::Command::new("kill")
                .args(["-s", "TERM", "--", &format!("-{group}")])
                .status();
        }
        let _ = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(["admin", "purge", "--prefix", &self.prefix])
            .output();
    }
}

/// The flotilla CLI in `dir` against the API at `api`.
async fn flotilla(dir: &Path, api: &str, args: &[&str]) -> std::process::Output {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .current_dir(dir)
        .env("FLOTILLA_API_URL", api)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .expect("the CLI answers within 120 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tutorial_starts_everything_from_one_command_and_stops_it_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("flotilla-test-tutorial-{}", uuid::Uuid::new_v4().simple());
    let api_port = test_support::ports::free_port();
    let sim_port = test_support::ports::free_port();
    let api = format!("http://127.0.0.1:{api_port}");
    let mut cleanup = Cleanup {
        group: None,
        prefix: prefix.clone(),
    };
    let mut script = tokio::process::Command::new(repo().join("scripts/tutorial"))
        .current_dir(dir.path())
        .env("FLOTILLA_BIN", env!("CARGO_BIN_EXE_flotilla"))
        .env("FLOTILLA_PREFIX", &prefix)
        .env("FLOTILLA_SIM_PROFILE", "tiny")
        .env("FLOTILLA_SIM_LISTEN", format!("127.0.0.1:{sim_port}"))
        .env("FLOTILLA_API_ADDR", format!("127.0.0.1:{api_port}"))
        .env_remove("FLOTILLA_TUTORIAL_DIR")
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    cleanup.group = script.id();
    let mut errors = script.stderr.take().unwrap();
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut errors, &mut text).await;
        text
    });
    let mut lines = BufReader::new(script.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(90), async {
        let mut said = String::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            said.push_str(&line);
            said.push('\n');
            if line.starts_with("Ctrl-C here stops them all") {
                return Ok(said);
            }
        }
        Err(said)
    })
    .await
    .expect("the services run within 90 s");
    let ready = match ready {
        Ok(said) => said,
        Err(said) => panic!(
            "the script ended before the services ran: {said}{}",
            stderr.await.unwrap()
        ),
    };
    assert!(
        ready.contains(&format!("http://127.0.0.1:{api_port}")),
        "{ready}"
    );
    assert!(
        dir.path().join("flotilla-tutorial/keys/keyring").is_file(),
        "the keys were made"
    );

    // A scan of the tiny fleet, as the tutorial's next command does for the
    // demo fleet.
    let accounts: Vec<String> = (0..3).map(sim::fleet::account_id).collect();
    let spec = dir.path().join("tutorial-scan.yaml");
    std::fs::write(
        &spec,
        format!(
            "name: tutorial-scan\nsteps:\n  - name: scan\n    document: AWS-RunPatchBaseline\n    parameters: {{ Operation: Scan }}\naccounts:\n  ids: [{}]\nregions: [us-east-1, eu-west-1]\nrole:\n  name: FlotillaExecutionRole\ntargets:\n  all: true\nrate_control:\n  max_errors: 100%\n",
            accounts
                .iter()
                .map(|id| format!("\"{id}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .unwrap();
    let started = flotilla(
        dir.path(),
        &api,
        &[
            "run",
            "start",
            "tutorial-scan",
            "-f",
            spec.to_str().unwrap(),
            "--watch",
            "--format",
            "json",
        ],
    )
    .await;
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let run: serde_json::Value = serde_json::from_slice(&started.stdout).unwrap();
    assert_eq!(run["progress"]["state"], "Completed", "{run}");
    let run_id = run["progress"]["run_id"].as_str().unwrap();
    let report = flotilla(dir.path(), &api, &["report", run_id, "--format", "json"]).await;
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(
        report["results"], run["progress"]["total_targets"],
        "{report}"
    );

    // Ctrl-C, as a terminal sends it (to the script and the services it
    // started), stops every service and says nothing failed.
    let _ = std::process::Command::new("kill")
        .args(["-s", "INT", "--", &format!("-{}", script.id().unwrap())])
        .status();
    let ended = tokio::time::timeout(Duration::from_secs(30), script.wait())
        .await
        .expect("the script ends within 30 s of Ctrl-C")
        .unwrap();
    assert_eq!(ended.code(), Some(130), "interrupted");
    let said = stderr.await.unwrap();
    assert!(!said.contains("error:"), "{said}");
    for port in [api_port, sim_port] {
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err(),
            "nothing listens on {port} any more"
        );
    }
    cleanup.group = None;
}
