//! The `flotilla` command as an operator runs it: `validate`, `schedule`, `sim`
//! and `demo`.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn flotilla(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("flotilla binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn yaml_files(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo().join(dir))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .map(|path| path.strip_prefix(repo()).unwrap().display().to_string())
        .collect();
    files.sort();
    files
}

#[test]
fn validate_accepts_every_good_example() {
    let files = yaml_files(Path::new("examples"));
    assert!(files.len() >= 3);
    let args: Vec<&str> = std::iter::once("validate")
        .chain(files.iter().map(String::as_str))
        .collect();
    let output = flotilla(&args);
    assert!(output.status.success(), "{}", stdout(&output));
    for file in &files {
        assert!(stdout(&output).contains(&format!("{file}: ok\n")), "{file}");
    }
}

/// Each bad example says in `# expect:` comments which errors it must produce.
#[test]
fn validate_rejects_each_bad_example_with_the_right_field_path() {
    let files = yaml_files(Path::new("examples/invalid"));
    assert!(files.len() >= 5);
    for file in files {
        let text = std::fs::read_to_string(repo().join(&file)).unwrap();
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# expect: "))
            .collect();
        assert!(!expected.is_empty(), "{file} has no # expect: line");
        let output = flotilla(&["validate", &file]);
        assert_eq!(output.status.code(), Some(1), "{file} must be rejected");
        let printed = stdout(&output);
        for expect in &expected {
            assert!(
                printed
                    .lines()
                    .any(|line| line.starts_with(&format!("{file}: {expect}"))),
                "{file}: expected a line starting with {expect:?}, got:\n{printed}"
            );
        }
        assert_eq!(
            printed.lines().count(),
            expected.len(),
            "{file}: unexpected extra errors:\n{printed}"
        );
    }
}

#[test]
fn validate_checks_every_file_even_after_a_bad_one() {
    let output = flotilla(&[
        "validate",
        "examples/invalid/step-timeout-too-long.yaml",
        "does/not/exist.yaml",
        "examples/agent-install.yaml",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let printed = stdout(&output);
    assert!(printed.contains(
        "examples/invalid/step-timeout-too-long.yaml: steps[1].timeout: must be between 30s and 30d"
    ));
    assert!(
        printed.contains("does/not/exist.yaml: cannot read does/not/exist.yaml"),
        "{printed}"
    );
    assert!(printed.contains("examples/agent-install.yaml: ok"));
}

#[test]
fn validate_reads_json_by_extension() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("campaign.json");
    std::fs::write(
        &path,
        r#"{"name": "j", "steps": [{"name": "s", "document": "AWS-RunShellScript", "parameters": {"commands": ["uptime"]}}],
            "accounts": {"ids": ["111122223333"]}, "regions": ["eu-west-1"], "targets": {"all": true}}"#,
    )
    .unwrap();
    let output = flotilla(&["validate", path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stdout(&output));
    std::fs::write(&path, r#"{"name": "j", "steps": 5}"#).unwrap();
    let output = flotilla(&["validate", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stdout(&output).contains(": steps: invalid type: integer `5`, expected a sequence"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn schedule_prints_patch_tuesdays_in_utc_and_local_time() {
    let output = flotilla(&[
        "schedule",
        "examples/patch-install-patch-tuesday.yaml",
        "--next",
        "3",
        "--after",
        "2026-05-01T00:00:00Z",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout(&output),
        "2026-05-12T00:00:00+00:00  (2026-05-12 02:00 Europe/Berlin)\n\
         2026-06-09T00:00:00+00:00  (2026-06-09 02:00 Europe/Berlin)\n\
         2026-07-14T00:00:00+00:00  (2026-07-14 02:00 Europe/Berlin)\n"
    );
}

#[test]
fn schedule_of_an_unscheduled_campaign_says_so() {
    let output = flotilla(&["schedule", "examples/agent-install.yaml"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("has no schedule"), "{stderr}");
}

#[test]
fn schedule_rejects_a_bad_next_count() {
    let output = flotilla(&[
        "schedule",
        "examples/patch-scan-nightly.yaml",
        "--next",
        "0",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--next"));
}

#[test]
fn sim_serves_the_fleet_on_loopback_until_stopped() {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["sim", "--profile", "tiny", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Keep reading the banner's pipe open while the simulator runs: closing it
    // would fail the simulator's next write.
    let mut banner = BufReader::new(child.stdout.take().unwrap());
    let mut first_line = String::new();
    banner.read_line(&mut first_line).unwrap();
    let address = first_line
        .trim()
        .strip_prefix("simulator listening on http://")
        .unwrap()
        .to_string();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET /_sim/fleet HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    drop(banner);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("\"regions\":[\"us-east-1\",\"eu-west-1\"]"),
        "{response}"
    );
}

#[test]
fn sim_rejects_an_unknown_profile() {
    let output = flotilla(&["sim", "--profile", "galactic", "--listen", "127.0.0.1:0"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("neither a preset (tiny, demo, large) nor a readable file")
    );
}

/// `flotilla demo` in a fresh directory, as a newcomer runs it.
fn demo(extra: &[&str]) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["demo", "--profile", "tiny", "--workers", "2"])
        .args(extra)
        .current_dir(dir.path())
        .output()
        .expect("flotilla binary runs");
    (output, dir)
}

fn assert_demo_reported(output: &Output, dir: &Path) {
    let text = stdout(output);
    assert!(
        output.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for section in [
        "Completed: 55 targets",
        "why: every location is done",
        "by status",
        "by account and region",
        "100000000002/eu-west-1",
        "non-compliant instances: ",
        "results are under flotilla-demo/",
        "its report again, no services needed: flotilla report ",
    ] {
        assert!(text.contains(section), "missing {section:?} in:\n{text}");
    }
    let results = dir.join("flotilla-demo");
    let runs = std::fs::read_dir(&results)
        .unwrap_or_else(|error| panic!("{} missing: {error}", results.display()))
        .count();
    assert_eq!(runs, 1, "one run directory under flotilla-demo/");
}

#[test]
fn demo_runs_the_example_scan_in_memory_and_leaves_results() {
    let (output, dir) = demo(&[]);
    assert_demo_reported(&output, dir.path());
    assert!(stdout(&output).contains("in-memory queues and state"));

    // The run's report as one HTML file that opens offline.
    let results = dir.path().join("flotilla-demo");
    let run = std::fs::read_dir(&results)
        .unwrap()
        .find_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name.strip_prefix("run=").map(str::to_string)
        })
        .unwrap();
    let output = flotilla(&[
        "report",
        &run,
        "--format",
        "html",
        "--dir",
        results.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let html = stdout(&output);
    assert!(
        html.to_ascii_lowercase().starts_with("<!doctype html>"),
        "{html}"
    );
    assert!(html.contains(&format!("flotilla run {run}")) && html.contains("<svg"));
    assert!(html.contains("55 results"), "the demo's 55 targets");
    assert!(
        !html.contains("http:") && !html.contains("https:") && !html.contains("//"),
        "a reference to somewhere else: {html}"
    );

    // After the demo no API answers: `flotilla report RUN`, as the demo's
    // last line says, reads ./flotilla-demo by itself (issue 33).
    let output = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["report", &run])
        .env("FLOTILLA_API_URL", "http://127.0.0.1:1")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stdout(&output).contains("55 results"),
        "{}",
        stdout(&output)
    );
    assert!(
        stderr.contains("did not answer; reading the results in flotilla-demo/"),
        "{stderr}"
    );
    // And the fleet's compliance, from the same results: as many
    // non-compliant instances as the run's report lists.
    let without_api = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(args)
            .env("FLOTILLA_API_URL", "http://127.0.0.1:1")
            .env_remove("FLOTILLA_RESULTS")
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let report = without_api(&["report", &run, "--format", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let compliance = without_api(&["compliance", "--format", "json", "--stale-days", "100000"]);
    let stderr = String::from_utf8_lossy(&compliance.stderr);
    assert!(compliance.status.success(), "{stderr}");
    assert!(
        stderr.contains("computing compliance from the results in flotilla-demo/"),
        "{stderr}"
    );
    let fleet: serde_json::Value = serde_json::from_slice(&compliance.stdout).unwrap();
    assert!(fleet["instances"].as_u64() > Some(0), "{fleet}");
    assert_eq!(
        fleet["non_compliant"].as_u64(),
        report["non_compliant"]
            .as_array()
            .map(|list| list.len() as u64),
        "{fleet}"
    );
    // Elsewhere, with nothing to read, it says what to pass.
    let output = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["report", &run])
        .env("FLOTILLA_API_URL", "http://127.0.0.1:1")
        .current_dir(repo())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("cannot reach the flotilla API") && stderr.contains("--dir"),
        "{stderr}"
    );
}

#[test]
fn demo_runs_the_same_scan_on_real_rabbitmq_and_redis() {
    let (output, dir) = demo(&[
        "--amqp-url",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        "--redis-url",
        "redis://127.0.0.1:6379/",
    ]);
    assert_demo_reported(&output, dir.path());
    assert!(stdout(&output).contains("RabbitMQ amqp://guest:***@127.0.0.1:5672/%2f"));
}

/// `admin arm` declares a deployment's topology and releases its kill
/// switch once (again: nothing changes); `admin purge` removes it all. Both
/// answer scripts in JSON (issue 33), on the real RabbitMQ and Redis.
#[test]
fn admin_arms_once_and_purges_and_says_so_in_json() {
    let prefix = format!("flotilla-test-arm-{}", uuid::Uuid::new_v4().simple());
    let services = [
        "--amqp-url",
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        "--redis-url",
        "redis://127.0.0.1:6379/",
    ];
    let admin = |command: &str| {
        let mut args = vec!["admin", command, "--prefix", prefix.as_str()];
        args.extend(services);
        args.extend(["--format", "json"]);
        let output = flotilla(&args);
        let json: Option<serde_json::Value> = serde_json::from_str(&stdout(&output)).ok();
        (output, json)
    };
    // Whatever happens below, the deployment is purged at the end.
    struct Purge<'a>(&'a dyn Fn(&str) -> (Output, Option<serde_json::Value>));
    impl Drop for Purge<'_> {
        fn drop(&mut self) {
            let _ = (self.0)("purge");
        }
    }
    let _purge = Purge(&admin);
    let (first, armed) = admin("arm");
    assert!(first.status.success(), "{first:?}");
    let armed = armed.expect("arm prints JSON");
    assert_eq!(armed["arming"], "armed", "{armed}");
    assert_eq!(armed["queues_declared"], true, "{armed}");
    let (_, again) = admin("arm");
    assert_eq!(again.expect("JSON")["arming"], "already_armed");
    let (purged, said) = admin("purge");
    assert!(purged.status.success(), "{purged:?}");
    let said = said.expect("purge prints JSON");
    assert_eq!(said[0]["prefix"], prefix.as_str(), "{said}");
    assert!(said[0]["redis_keys_deleted"].as_u64() >= Some(1), "{said}");
}

#[test]
fn demo_writes_its_results_where_output_says_outside_its_directory() {
    let elsewhere = tempfile::tempdir().unwrap();
    let output_dir = elsewhere.path().join("results");
    let (output, _dir) = demo(&["--output", output_dir.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}\n{}",
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    let runs = std::fs::read_dir(&output_dir)
        .unwrap_or_else(|error| panic!("{} missing: {error}", output_dir.display()))
        .count();
    assert_eq!(runs, 1, "one run directory under {}", output_dir.display());
}

#[test]
fn demo_without_rabbitmq_says_how_to_start_it() {
    let (output, _dir) = demo(&["--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2f"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("rabbitmq-server -detached"), "{stderr}");
}

#[test]
fn bench_quick_scan_measures_a_run_where_every_target_has_one_result() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let output = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["bench", "--quick", "--scenario", "scan"])
        // The in-memory scan writes under the bench's own directory too.
        .args(["--scenario", "embedded", "--json"])
        .arg(&json)
        .current_dir(dir.path())
        .output()
        .expect("flotilla binary runs");
    let text = stdout(&output);
    assert!(
        output.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("targets with exactly one result"), "{text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let scan = &report["scan"];
    let targets = scan["targets"].as_u64().unwrap();
    assert!(targets > 10_000, "{scan}");
    assert_eq!(scan["state"], "Completed");
    assert_eq!(scan["targets_with_one_result"].as_u64(), Some(targets));
    assert_eq!(scan["targets_with_several_results"].as_u64(), Some(0));
    assert_eq!(scan["fanout"]["locations"].as_u64(), Some(400));
    assert!(
        scan["aws_calls_per_target"]["SendCommand"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let embedded = &report["embedded"];
    assert_eq!(embedded["state"], "Completed", "{embedded}");
    assert_eq!(embedded["targets"].as_u64(), Some(targets));
    assert_eq!(embedded["targets_with_one_result"].as_u64(), Some(targets));
}

/// Runs `flotilla worker` against a broker that is not there for a moment
/// and returns what it logged.
fn worker_logs(extra: &[&str]) -> String {
    let worker = protocol::signing::SigningIdentity::generate(
        protocol::signing::SignerKind::Worker,
        "log-test",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["worker", "--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2f"])
        .args(["--redis-url", "memory://log-test"])
        .args(extra)
        .env("FLOTILLA_SIGNING_KEY", worker.to_secret_text())
        .env("FLOTILLA_TRUSTED_KEYS", worker.public_line())
        .env("AWS_ACCESS_KEY_ID", "AKIAFLOTILLASIMULATOR")
        .env("AWS_SECRET_ACCESS_KEY", "any")
        .env("AWS_REGION", "us-east-1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("flotilla binary runs");
    std::thread::sleep(std::time::Duration::from_secs(3));
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Issue 33: a worker without AWS credentials (here with an endpoint URL,
/// as against the simulator) exits at start saying what to give it, instead
/// of retrying every job as if AWS were down.
#[test]
fn a_worker_without_aws_credentials_exits_saying_what_to_give_it() {
    let worker = protocol::signing::SigningIdentity::generate(
        protocol::signing::SignerKind::Worker,
        "no-aws",
    )
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_flotilla"));
    command
        .args(["worker", "--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2f"])
        .args(["--redis-url", "memory://no-aws"])
        .args(["--aws-endpoint-url", "http://127.0.0.1:1"])
        .env("FLOTILLA_SIGNING_KEY", worker.to_secret_text())
        .env("FLOTILLA_TRUSTED_KEYS", worker.public_line())
        .env("HOME", home.path())
        // No instance metadata on a test machine: say so rather than wait.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (name, _) in std::env::vars() {
        if name.starts_with("AWS_") && name != "AWS_EC2_METADATA_DISABLED" {
            command.env_remove(name);
        }
    }
    let mut child = command.spawn().expect("flotilla binary runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the worker without credentials did not exit within 40 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("no AWS credentials for the worker's own identity")
            && stderr.contains("AWS_ACCESS_KEY_ID"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("cannot use rabbitmq"),
        "checked before anything else is tried: {stderr}"
    );
}

#[test]
fn logs_to_a_pipe_are_plain_text_or_json_lines() {
    let text = worker_logs(&[]);
    assert!(text.contains("cannot use rabbitmq yet"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "no color codes in a pipe: {text:?}"
    );

    let json = worker_logs(&["--log-format", "json"]);
    let lines: Vec<&str> = json
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert!(!lines.is_empty(), "{json}");
    for line in lines {
        let record: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("not a JSON line ({error}): {line}"));
        assert!(
            record["level"].is_string() && record["fields"].is_object(),
            "{line}"
        );
    }
}

#[test]
fn keys_are_generated_rotated_and_retired_and_services_refuse_to_run_without_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    // A directory that does not exist yet is made (the simulator tutorial's `keys/`).
    let (key, keyring) = (path("keys/scheduler.key"), path("keys/keyring"));
    let generate = || {
        flotilla(&[
            "keys",
            "generate",
            "--kind",
            "scheduler",
            "--id",
            "sched-1",
            "--out",
            &key,
            "--keyring",
            &keyring,
        ])
    };
    let made = generate();
    assert!(made.status.success(), "{made:?}");
    let secret = std::fs::read_to_string(&key).unwrap();
    assert!(secret.starts_with("flotilla-signing-key v1 scheduler sched-1 "));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "a signing key is readable by its owner only"
        );
    }
    let again = generate();
    assert!(!again.status.success(), "a key is never overwritten");
    let rotated = flotilla(&[
        "keys",
        "rotate",
        "--key",
        &key,
        "--keyring",
        &keyring,
        "--id",
        "sched-2",
    ]);
    assert!(rotated.status.success(), "{rotated:?}");
    assert!(stdout(&rotated).contains("retire --id sched-1"));
    let ring = std::fs::read_to_string(&keyring).unwrap();
    assert!(
        ring.contains("scheduler sched-1 ") && ring.contains("scheduler sched-2 "),
        "{ring}"
    );
    assert!(std::fs::read_to_string(&key).unwrap().contains(" sched-2 "));
    assert!(
        std::fs::read_to_string(format!("{key}.old"))
            .unwrap()
            .contains(" sched-1 ")
    );
    let retired = flotilla(&[
        "keys",
        "retire",
        "--id",
        "sched-1",
        "--keyring",
        &keyring,
        "--format",
        "json",
    ]);
    assert!(retired.status.success(), "{retired:?}");
    let said: serde_json::Value = serde_json::from_str(&stdout(&retired)).unwrap();
    assert_eq!(said["retired"], "sched-1", "{said}");
    assert_eq!(said["keyring"], keyring.as_str(), "{said}");
    let ring = std::fs::read_to_string(&keyring).unwrap();
    assert!(
        !ring.contains("sched-1") && ring.contains("sched-2"),
        "{ring}"
    );

    // A worker given a scheduler's key, or none, says what to do.
    let wrong = flotilla(&[
        "worker",
        "--redis-url",
        "memory://keys-test",
        "--signing-key-file",
        &key,
        "--trusted-keys-file",
        &keyring,
    ]);
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("is a scheduler key; a worker signs with a worker key"),
        "{stderr}"
    );
    let none = flotilla(&[
        "worker",
        "--redis-url",
        "memory://keys-test",
        "--trusted-keys-file",
        &keyring,
    ]);
    let stderr = String::from_utf8_lossy(&none.stderr);
    assert!(!none.status.success());
    assert!(
        stderr.contains("--signing-key-file") && stderr.contains("flotilla keys generate"),
        "{stderr}"
    );
}

#[test]
fn a_campaign_expanding_past_the_location_cap_is_refused_naming_both_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wide.yaml");
    let accounts: Vec<String> = (0..600)
        .map(|n| format!("\"{:012}\"", 100_000_000_000u64 + n))
        .collect();
    std::fs::write(
        &file,
        format!(
            "name: wide\naccounts: {{ids: [{}]}}\nregions: [us-east-1, us-east-2, us-west-1, us-west-2]\ntargets: {{all: true}}\nsteps:\n  - name: scan\n    document: AWS-RunPatchBaseline\n    parameters:\n      Operation: [Scan]\n",
            accounts.join(", ")
        ),
    )
    .unwrap();
    let file = file.display().to_string();
    let refused = flotilla(&["validate", "--max-locations", "2000", &file]);
    assert!(!refused.status.success());
    let out = stdout(&refused);
    assert!(
        out.contains("600 accounts × 4 regions are 2400 locations") && out.contains("at most 2000"),
        "{out}"
    );
    let accepted = flotilla(&["validate", &file]);
    assert!(accepted.status.success(), "{}", stdout(&accepted));
}

#[test]
fn a_scheduler_on_a_public_address_without_authentication_refuses_to_start() {
    let output = flotilla(&["scheduler", "--listen", "0.0.0.0:0"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for hint in [
        "without authentication",
        "flotilla token create",
        "--tokens-file",
        "--insecure-no-auth",
    ] {
        assert!(stderr.contains(hint), "missing {hint:?}: {stderr}");
    }
}

#[test]
fn tokens_are_made_listed_and_revoked_in_a_tokens_file_and_shown_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let file_arg = file.to_str().unwrap();
    let made = flotilla(&[
        "token",
        "create",
        "--name",
        "ada",
        "--role",
        "admin",
        "--expires",
        "90d",
        "--tokens-file",
        file_arg,
    ]);
    assert!(made.status.success(), "{made:?}");
    let token = stdout(&made).trim().to_string();
    assert!(token.starts_with("flt_") && token.len() == 68, "{token}");
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(!stored.contains(&token[4..]), "only the hash is kept");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the tokens file is its owner's only");
    }
    let listed = stdout(&flotilla(&["token", "list", "--tokens-file", file_arg]));
    assert!(
        listed.contains("ada") && listed.contains("admin") && !listed.contains(&token[4..]),
        "{listed}"
    );
    let bad = flotilla(&[
        "token",
        "create",
        "--name",
        "x",
        "--role",
        "root",
        "--tokens-file",
        file_arg,
    ]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("viewer, operator, approver, admin"));
    let revoked = flotilla(&["token", "revoke", "ada", "--tokens-file", file_arg]);
    assert!(revoked.status.success(), "{revoked:?}");
    assert!(
        stdout(&flotilla(&["token", "list", "--tokens-file", file_arg]))
            .trim()
            .is_empty()
    );
}

#[test]
fn help_never_shows_secrets_from_the_environment() {
    for service in ["scheduler", "worker"] {
        let output = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args([service, "--help"])
            .env(
                "FLOTILLA_AMQP_URL",
                "amqp://flotilla:amqp-secret@rabbitmq:5672/%2f",
            )
            .env("FLOTILLA_REDIS_URL", "redis://:redis-secret@redis:6379/")
            .output()
            .unwrap();
        let text = stdout(&output);
        assert!(text.contains("--redis-url"), "{text}");
        assert!(
            !text.contains("amqp-secret") && !text.contains("redis-secret"),
            "{text}"
        );
    }
}
