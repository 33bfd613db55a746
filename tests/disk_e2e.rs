//! The results directory fills up mid-run, on the real RabbitMQ and Redis:
//! the run pauses with the reason, reports wait (parked, retried every
//! minute), the audit trail says so, and once space is freed and the run
//! resumed every result is there exactly once.
//!
//! The directory is a small tmpfs of the test's own, mounted for it (the
//! test runs as root, as `scripts/test` on CI does) and filled by a file
//! standing for whatever else fills a disk.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use protocol::run::RunState;
use support::Stack;

/// The tmpfs's size, and how much of it the results get before it is full.
const DISK_BYTES: u64 = 1024 * 1024;
const HEADROOM_BYTES: u64 = 12 * 1024;

/// A tmpfs mounted on a temporary directory; unmounted (lazily, so a
/// straggling file handle cannot keep it) and removed on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(bytes: u64) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-test-disk-")
            .tempdir()
            .unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0700"))
            .arg("flotilla-test-disk")
            .arg(dir.path())
            .status();
        match mounted {
            Ok(status) if status.success() => Self { dir },
            other => panic!(
                "the full-disk test mounts a small tmpfs and must run as root (CAP_SYS_ADMIN), as `scripts/test` does on CI: `mount -t tmpfs` gave {other:?}"
            ),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills `disk` but for `headroom` bytes with one file, and returns it.
fn fill(disk: &Path, headroom: u64) -> PathBuf {
    let filler = disk.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0xA5u8; 4096];
    let mut written: u64 = 0;
    while file.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    file.set_len(written.saturating_sub(headroom)).unwrap();
    file.sync_all().unwrap();
    filler
}

/// Files under `dir` whose names say they are unfinished writes.
fn temporary_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|extension| extension == "tmp") {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_results_disk_pauses_the_run_and_nothing_is_lost_once_freed() {
    let disk = SmallDisk::mount(DISK_BYTES);
    let mut stack = Stack::start(support::single_location(400, false)).await;
    stack.spawn_worker("worker-a", 8);
    let filler = fill(disk.path(), HEADROOM_BYTES);
    // 8 batches of 50, one SendCommand a second: a few batches' results fit.
    let campaign = stack.campaign(
        "full-disk",
        format!(
            "output: {}\n{}api_rate_limits:\n  send_command: 1\n",
            disk.path().display(),
            support::one_step("  max_concurrency: 100%\n  max_errors: 0\n")
        ),
    );
    let run_id = stack.start_run(&campaign).await;

    let started = tokio::time::Instant::now();
    let progress = loop {
        let progress = stack.scheduler.progress(run_id).await.unwrap();
        if progress.state == RunState::Paused || progress.finished {
            break progress;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the run did not pause on a full disk: {progress:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(progress.state, RunState::Paused, "{progress:#?}");
    assert!(
        progress.reason.contains("No space left on device")
            && progress.reason.contains(&disk.path().display().to_string()),
        "the reason names the destination and the cause: {:?}",
        progress.reason
    );
    let audit = stack
        .scheduler
        .audit()
        .unwrap()
        .query(&scheduler::audit::AuditQuery {
            action: Some("runs:pause".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        audit.iter().any(|record| record.principal == "scheduler"
            && record.object == format!("run {run_id}")
            && record.reason.contains("No space left on device")),
        "the audit trail records the pause and why: {audit:#?}"
    );
    // Every failed write removed what it began: a partial file left by each
    // retry would keep the disk full after it is freed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(temporary_files(disk.path()), Vec::<PathBuf>::new());
    assert!(
        stack.records_in(disk.path(), run_id).len() < 400,
        "the disk must fill before the run's end"
    );

    std::fs::remove_file(&filler).unwrap();
    assert!(stack.scheduler.resume(run_id, "disk freed").await.unwrap());
    // Parked reports come back within a minute.
    let progress = stack
        .wait_until_final(run_id, Duration::from_secs(180))
        .await;
    assert_eq!(progress.state, RunState::Completed, "{progress:#?}");
    let records = stack.records_in(disk.path(), run_id);
    let instances: HashSet<&str> = records
        .iter()
        .map(|record| record.instance_id.as_str())
        .collect();
    assert_eq!(
        (records.len(), instances.len()),
        (400, 400),
        "every target exactly one result"
    );
    let executions = stack.executions();
    assert!(
        executions.values().all(|runs| *runs == 1),
        "a target ran twice: {:?}",
        executions.values().max()
    );
    stack.teardown().await;
    drop(disk);
}
