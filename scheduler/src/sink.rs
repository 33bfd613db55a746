//! Durable results: every target result as one JSON line, in gzip files
//! partitioned like `run=<id>/account=<id>/region=<r>/part-b<batch>-s<step>.jsonl.gz`
//! (Athena/Hive style), in a local directory or under an S3 prefix (through the
//! `object_store` crate). One file per batch and step: locally written to a
//! temporary name, synced and renamed; on S3 one PutObject (atomic). A report
//! applied twice writes the same file twice, and a reader never sees half a
//! file. Reports are acked only after this returns.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt};

use flate2::Compression;
use flate2::write::GzEncoder;
use protocol::job::{Location, UnixMillis};
use protocol::report::{PatchCompliance, TargetResult};
use protocol::status::StatusDetail;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One line of a results file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRecord {
    pub run_id: Uuid,
    pub campaign: String,
    pub account_id: String,
    pub region: String,
    pub batch_id: u32,
    pub step_index: u16,
    pub step: String,
    pub instance_id: String,
    /// SSM's coarse status (Success, Failed, TimedOut, …, NotStarted).
    pub status: String,
    /// SSM's status detail, as SSM spells it.
    pub status_detail: String,
    pub command_id: Option<String>,
    pub requested_at: Option<UnixMillis>,
    pub started_at: Option<UnixMillis>,
    pub finished_at: Option<UnixMillis>,
    pub response_code: Option<i32>,
    pub output: String,
    pub compliance: Option<PatchCompliance>,
    /// Why a succeeded patch step has no compliance counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance_missing: Option<String>,
    /// Where SSM keeps the instance's full output of this step
    /// (`s3://bucket/prefix/command/instance/`), with `output_logging`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_location: Option<String>,
}

impl ResultRecord {
    pub fn new(
        run_id: Uuid,
        campaign: &str,
        location: &Location,
        batch_id: u32,
        step_index: u16,
        step: &str,
        result: TargetResult,
    ) -> Self {
        Self {
            run_id,
            campaign: campaign.to_string(),
            account_id: location.account_id.clone(),
            region: location.region.clone(),
            batch_id,
            step_index,
            step: step.to_string(),
            instance_id: result.instance_id,
            status: result.status.status().as_str().to_string(),
            status_detail: result.status.as_ssm_str().to_string(),
            command_id: result.command_id,
            requested_at: result.requested_at,
            started_at: result.started_at,
            finished_at: result.finished_at,
            response_code: result.response_code,
            output: result.output_excerpt,
            compliance: result.compliance,
            compliance_missing: result.compliance_missing,
            output_location: None,
        }
    }

    pub fn status_detail(&self) -> Option<StatusDetail> {
        self.status_detail.parse().ok()
    }
}

/// A [`ResultRecord`] borrowed from the report it comes from: the line
/// written for each target of a report without copying its strings (the
/// report path's allocations were a quarter of the scheduler's CPU).
/// Serializes exactly as the record does (a test holds them together).
#[derive(Debug, Serialize)]
pub struct ResultLine<'a> {
    pub run_id: Uuid,
    pub campaign: &'a str,
    pub account_id: &'a str,
    pub region: &'a str,
    pub batch_id: u32,
    pub step_index: u16,
    pub step: &'a str,
    pub instance_id: &'a str,
    pub status: &'static str,
    pub status_detail: &'static str,
    pub command_id: Option<&'a str>,
    pub requested_at: Option<UnixMillis>,
    pub started_at: Option<UnixMillis>,
    pub finished_at: Option<UnixMillis>,
    pub response_code: Option<i32>,
    pub output: &'a str,
    pub compliance: Option<PatchCompliance>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compliance_missing: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_location: Option<String>,
}

impl<'a> ResultLine<'a> {
    /// The line of `result`, a target of `location`'s batch-step.
    pub fn new(
        run_id: Uuid,
        campaign: &'a str,
        location: &'a Location,
        (batch_id, step_index, step): (u32, u16, &'a str),
        result: &'a TargetResult,
    ) -> Self {
        Self {
            run_id,
            campaign,
            account_id: &location.account_id,
            region: &location.region,
            batch_id,
            step_index,
            step,
            instance_id: &result.instance_id,
            status: result.status.status().as_str(),
            status_detail: result.status.as_ssm_str(),
            command_id: result.command_id.as_deref(),
            requested_at: result.requested_at,
            started_at: result.started_at,
            finished_at: result.finished_at,
            response_code: result.response_code,
            output: &result.output_excerpt,
            compliance: result.compliance,
            compliance_missing: result.compliance_missing.as_deref(),
            output_location: None,
        }
    }
}

/// Results that could not be written, and whether trying again can help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("results cannot be written to {destination}: {reason}")]
pub struct SinkError {
    /// `s3://bucket/prefix` or the local directory.
    pub destination: String,
    pub reason: String,
    /// Refused as such (denied, missing bucket, read-only, disk full): it stays
    /// refused until an operator acts. Otherwise an outage that may pass.
    pub permanent: bool,
}

impl SinkError {
    fn io(destination: String, error: &std::io::Error) -> Self {
        use std::io::ErrorKind;
        let permanent = matches!(
            error.kind(),
            ErrorKind::PermissionDenied
                | ErrorKind::ReadOnlyFilesystem
                | ErrorKind::NotADirectory
                | ErrorKind::IsADirectory
                | ErrorKind::InvalidInput
                | ErrorKind::InvalidFilename
                | ErrorKind::StorageFull
                | ErrorKind::QuotaExceeded
                | ErrorKind::FileTooLarge
        );
        Self {
            destination,
            reason: error.to_string(),
            permanent,
        }
    }

    /// object_store retries 5xx and timeouts itself; what reaches here is a
    /// refusal (4xx) or an outage that outlasted those retries.
    fn object_store(destination: String, error: &object_store::Error) -> Self {
        use object_store::Error;
        let permanent = matches!(
            error,
            Error::PermissionDenied { .. }
                | Error::Unauthenticated { .. }
                | Error::NotFound { .. }
                | Error::NotSupported { .. }
                | Error::NotImplemented { .. }
                | Error::InvalidPath { .. }
                | Error::UnknownConfigurationKey { .. }
        );
        Self {
            destination,
            reason: error.to_string(),
            permanent,
        }
    }
}

/// Where S3 is and who the scheduler is there. `Debug` never shows the secret.
#[derive(Clone, Default)]
pub struct S3Settings {
    /// Instead of AWS (the simulator, MinIO).
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    /// (access key id, secret); `None` reads the AWS_* environment variables.
    pub credentials: Option<(String, String)>,
    /// How long a request is retried before it fails; object_store's
    /// default (3 minutes, 10 retries) when `None`. A command someone
    /// waits on (`flotilla report`) gives up sooner.
    pub retry_timeout: Option<std::time::Duration>,
}

/// Where a run's results go.
#[derive(Clone)]
pub enum ResultsStore {
    Local(PathBuf),
    S3 {
        store: Arc<dyn ObjectStore>,
        bucket: String,
        prefix: String,
    },
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint_url", &self.endpoint_url)
            .field("region", &self.region)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(key, _)| (key, "***")),
            )
            .field("retry_timeout", &self.retry_timeout)
            .finish()
    }
}

impl std::fmt::Debug for ResultsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl ResultsStore {
    pub fn s3(
        bucket: &str,
        prefix: &str,
        settings: &S3Settings,
    ) -> Result<Self, object_store::Error> {
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_region(
                settings
                    .region
                    .clone()
                    .unwrap_or_else(|| "us-east-1".into()),
            );
        if let Some(endpoint_url) = &settings.endpoint_url {
            builder = builder
                .with_endpoint(endpoint_url)
                .with_allow_http(endpoint_url.starts_with("http://"));
        }
        if let Some((key, secret)) = &settings.credentials {
            builder = builder
                .with_access_key_id(key)
                .with_secret_access_key(secret);
        }
        if let Some(retry_timeout) = settings.retry_timeout {
            builder = builder.with_retry(object_store::RetryConfig {
                retry_timeout,
                max_retries: 2,
                ..object_store::RetryConfig::default()
            });
        }
        Ok(Self::S3 {
            store: Arc::new(builder.build()?),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }

    /// The same store `child` below its root (`prefix/child`), sharing its
    /// client: a search over many prefixes builds one HTTP client, not one
    /// each.
    pub fn within(&self, child: &str) -> Self {
        let child = child.trim_matches('/');
        match self {
            Self::Local(root) => Self::Local(root.join(child)),
            Self::S3 {
                store,
                bucket,
                prefix,
            } => Self::S3 {
                store: store.clone(),
                bucket: bucket.clone(),
                prefix: [prefix.as_str(), child]
                    .into_iter()
                    .filter(|part| !part.is_empty())
                    .collect::<Vec<_>>()
                    .join("/"),
            },
        }
    }

    /// `s3://bucket/prefix` or the local path: what runs and reports show.
    pub fn describe(&self) -> String {
        match self {
            Self::Local(path) => path.display().to_string(),
            Self::S3 { bucket, prefix, .. } if prefix.is_empty() => format!("s3://{bucket}"),
            Self::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
        }
    }

    fn object_path(prefix: &str, relative: &str) -> object_store::path::Path {
        if prefix.is_empty() {
            object_store::path::Path::from(relative)
        } else {
            object_store::path::Path::from(format!("{prefix}/{relative}"))
        }
    }

    /// Writes one batch-step's records ([`ResultRecord`]s or
    /// [`ResultLine`]s) durably; replaces an earlier write of it.
    pub async fn write_batch<T: Serialize>(
        &self,
        path: &ResultPath,
        records: &[T],
    ) -> Result<(), SinkError> {
        self.put_lines(&path.relative(), records).await
    }

    /// Writes `records` as gzipped JSON lines to `relative` under this
    /// destination (temporary file, fsync, rename; or one PutObject).
    pub async fn put_lines<T: Serialize>(
        &self,
        relative: &str,
        records: &[T],
    ) -> Result<(), SinkError> {
        let body = encode(records).map_err(|error| SinkError::io(self.describe(), &error))?;
        match self {
            Self::Local(root) => {
                let path = root.join(relative);
                let written = tokio::task::spawn_blocking(move || write_durably(&path, &body))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|written| written);
                written.map_err(|error| SinkError::io(self.describe(), &error))
            }
            Self::S3 { store, prefix, .. } => store
                .put(&Self::object_path(prefix, relative), body.into())
                .await
                .map(|_| ())
                .map_err(|error| SinkError::object_store(self.describe(), &error)),
        }
    }

    /// Every record of a run.
    pub async fn read_run(&self, run_id: Uuid) -> std::io::Result<Vec<ResultRecord>> {
        self.read_under(format!("run={run_id}")).await
    }

    /// Whether any results file of the run is here (one listing, stopped
    /// at the first object).
    pub async fn has_run(&self, run_id: Uuid) -> std::io::Result<bool> {
        match self {
            Self::Local(root) => Ok(local_run_dir(root, run_id).is_dir()),
            Self::S3 { store, prefix, .. } => {
                let run_prefix = Self::object_path(prefix, &format!("run={run_id}"));
                match store.list(Some(&run_prefix)).next().await {
                    None => Ok(false),
                    Some(found) => found.map(|_| true).map_err(std::io::Error::other),
                }
            }
        }
    }

    /// The prefixes one level below this store's (at most `limit`): where
    /// campaigns' `output: s3://bucket/<prefix>` put their runs. Empty for a
    /// local store.
    pub async fn child_prefixes(&self, limit: usize) -> std::io::Result<Vec<String>> {
        let Self::S3 { store, prefix, .. } = self else {
            return Ok(Vec::new());
        };
        let at = (!prefix.is_empty()).then(|| object_store::path::Path::from(prefix.as_str()));
        let listed = store
            .list_with_delimiter(at.as_ref())
            .await
            .map_err(std::io::Error::other)?;
        Ok(listed
            .common_prefixes
            .into_iter()
            .map(|path| path.to_string())
            .filter(|path| !path.contains("run="))
            .take(limit)
            .collect())
    }

    /// The records of one location of a run (the console's location page).
    pub async fn read_location(
        &self,
        run_id: Uuid,
        location: &Location,
    ) -> std::io::Result<Vec<ResultRecord>> {
        // Account and region as AWS spells them: no `/`, no `..`.
        location.validate().map_err(std::io::Error::other)?;
        self.read_under(format!(
            "run={run_id}/account={}/region={}",
            location.account_id, location.region
        ))
        .await
    }

    /// Every record below `relative` (made here from a UUID and a validated
    /// location only).
    async fn read_under(&self, relative: String) -> std::io::Result<Vec<ResultRecord>> {
        match self {
            Self::Local(root) => {
                let dir = root.join(relative);
                tokio::task::spawn_blocking(move || read_dir_records(&dir))
                    .await
                    .map_err(std::io::Error::other)?
            }
            Self::S3 { store, prefix, .. } => {
                let run_prefix = Self::object_path(prefix, &relative);
                let mut listing = store.list(Some(&run_prefix));
                let mut records = Vec::new();
                while let Some(meta) = listing.next().await {
                    let meta = meta.map_err(std::io::Error::other)?;
                    if !meta.location.as_ref().ends_with(".jsonl.gz") {
                        continue;
                    }
                    let bytes = store
                        .get(&meta.location)
                        .await
                        .map_err(std::io::Error::other)?
                        .bytes()
                        .await
                        .map_err(std::io::Error::other)?;
                    records.extend(decode(&bytes, meta.location.as_ref())?);
                }
                Ok(records)
            }
        }
    }
}

/// Where one batch-step's results go:
/// `run=<uuid>/account=<12 digits>/region=<region>/part-b<batch>-s<step>.jsonl.gz`.
/// Made only by [`ResultPath::new`], from a UUID, integers and a location
/// whose account and region match their AWS patterns (no `/`, no `.`
/// segment): a path that leaves the output root cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultPath {
    run_id: Uuid,
    location: Location,
    batch_id: u32,
    step_index: u16,
}

impl ResultPath {
    pub fn new(
        run_id: Uuid,
        location: &Location,
        batch_id: u32,
        step_index: u16,
    ) -> Result<Self, String> {
        location.validate()?;
        Ok(Self {
            run_id,
            location: location.clone(),
            batch_id,
            step_index,
        })
    }

    /// The partition directory, relative to the output root.
    pub fn partition(&self) -> String {
        format!(
            "run={}/account={}/region={}",
            self.run_id, self.location.account_id, self.location.region
        )
    }

    /// The file, relative to the output root.
    pub fn relative(&self) -> String {
        format!(
            "{}/part-b{:06}-s{:02}.jsonl.gz",
            self.partition(),
            self.batch_id,
            self.step_index
        )
    }
}

fn encode<T: Serialize>(records: &[T]) -> std::io::Result<Vec<u8>> {
    // JSON lines first, then one write into the compressor: serde_json writes
    // token by token, and flate2 zeroes its spare output buffer on every write —
    // half the scheduler's CPU went to that memset before (`perf`, flotilla bench).
    let mut lines = Vec::with_capacity(records.len() * 512);
    for record in records {
        serde_json::to_writer(&mut lines, record)?;
        lines.push(b'\n');
    }
    let mut encoder = GzEncoder::new(Vec::with_capacity(lines.len() / 4), Compression::fast());
    encoder.write_all(&lines)?;
    encoder.finish()
}

fn decode(bytes: &[u8], name: &str) -> std::io::Result<Vec<ResultRecord>> {
    let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(bytes));
    let mut records = Vec::new();
    for line in std::io::BufRead::lines(reader) {
        let line = line?;
        records.push(serde_json::from_str(&line).map_err(|error| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{name}: {error}"))
        })?);
    }
    Ok(records)
}

/// Writes one batch-step's records durably; replaces an earlier write of the same batch-step.
pub fn write_batch(
    root: &Path,
    path: &ResultPath,
    records: &[ResultRecord],
) -> std::io::Result<PathBuf> {
    let path = root.join(path.relative());
    write_durably(&path, &encode(records)?)?;
    Ok(path)
}

/// Writes `body` to `path` so that a reader sees all of it or nothing,
/// readable by the scheduler's user only ([`crate::files::replace_private`]).
fn write_durably(path: &Path, body: &[u8]) -> std::io::Result<()> {
    crate::files::replace_private(path, body)
}

/// Reads every record of a run (for reports and tests).
/// The directory of a run's results under a local results root.
pub fn local_run_dir(root: &Path, run_id: Uuid) -> PathBuf {
    root.join(format!("run={run_id}"))
}

/// Every record of every run under a local results directory.
pub fn read_all_runs(root: &Path) -> std::io::Result<Vec<ResultRecord>> {
    read_dir_records(root)
}

pub fn read_run(root: &Path, run_id: Uuid) -> std::io::Result<Vec<ResultRecord>> {
    read_dir_records(&local_run_dir(root, run_id))
}

/// Every record of the results files below `dir` (none when it is absent).
fn read_dir_records(dir: &Path) -> std::io::Result<Vec<ResultRecord>> {
    let mut records = Vec::new();
    if !dir.exists() {
        return Ok(records);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let is_part = path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("part-") && name.ends_with(".jsonl.gz"));
            if !is_part {
                continue;
            }
            records.extend(decode(&std::fs::read(&path)?, &path.display().to_string())?);
        }
    }
    Ok(records)
}

/// Where the deployment lets campaigns put results (`--output-root`,
/// `--output-bucket`): a campaign whose `output` is elsewhere is refused at
/// apply and at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRoots {
    /// Directories results may go under (relative ones: to the scheduler's
    /// working directory).
    pub local: Vec<PathBuf>,
    /// S3 buckets results may go to.
    pub buckets: Vec<String>,
}

impl Default for OutputRoots {
    /// Under the scheduler's working directory; no bucket.
    fn default() -> Self {
        Self {
            local: vec![PathBuf::from(".")],
            buckets: Vec::new(),
        }
    }
}

/// `path` made absolute (against the working directory), lexically: `.`
/// dropped; `None` if it climbs with `..`.
fn absolute(path: &Path) -> Option<PathBuf> {
    use std::path::Component;
    let base = if path.is_absolute() {
        PathBuf::new()
    } else {
        std::env::current_dir().ok()?
    };
    let mut absolute = base;
    for component in path.components() {
        match component {
            Component::ParentDir => return None,
            Component::CurDir => {}
            other => absolute.push(other),
        }
    }
    Some(absolute)
}

impl OutputRoots {
    /// Ok when results may go to `output`; else why not, naming the flag
    /// that would allow it.
    pub fn check(&self, output: &protocol::campaign::OutputLocation) -> Result<(), String> {
        use protocol::campaign::OutputLocation;
        match output {
            OutputLocation::Local(path) => {
                let Some(wanted) = absolute(path) else {
                    return Err(format!(
                        "output {}: a results directory may not climb out with `..`",
                        path.display()
                    ));
                };
                if self
                    .local
                    .iter()
                    .filter_map(|root| absolute(root))
                    .any(|root| wanted.starts_with(root))
                {
                    return Ok(());
                }
                Err(format!(
                    "output {}: not under a results root of this deployment ({}); --output-root allows one",
                    path.display(),
                    self.local
                        .iter()
                        .map(|root| root.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
            OutputLocation::S3 { bucket, .. } => {
                if self.buckets.iter().any(|allowed| allowed == bucket) {
                    Ok(())
                } else {
                    Err(format!(
                        "output s3://{bucket}/…: bucket {bucket} is not one this deployment writes results to ({}); --output-bucket {bucket} allows it",
                        if self.buckets.is_empty() {
                            "none is".to_string()
                        } else {
                            self.buckets.join(", ")
                        }
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn outputs_stay_under_the_deployments_roots_and_buckets() {
        use protocol::campaign::OutputLocation;
        let roots = OutputRoots {
            local: vec![PathBuf::from("/srv/results"), PathBuf::from("relative")],
            buckets: vec!["acme-results".into()],
        };
        let local = |path: &str| OutputLocation::Local(PathBuf::from(path));
        let s3 = |bucket: &str| OutputLocation::S3 {
            bucket: bucket.into(),
            prefix: "p".into(),
        };
        assert!(roots.check(&local("/srv/results/nightly")).is_ok());
        assert!(roots.check(&local("/srv/results/./a")).is_ok());
        assert!(roots.check(&local("relative/a")).is_ok());
        assert!(roots.check(&local("./relative")).is_ok());
        assert!(roots.check(&s3("acme-results")).is_ok());
        for (bad, why) in [
            (local("/srv/results/../../etc"), "may not climb out"),
            (local("../../.."), "may not climb out"),
            (local("/srv/results-evil"), "not under a results root"),
            (local("/etc/cron.d"), "not under a results root"),
            (local("elsewhere"), "not under a results root"),
            (
                s3("someone-elses-bucket"),
                "--output-bucket someone-elses-bucket",
            ),
        ] {
            let error = roots.check(&bad).unwrap_err();
            assert!(error.contains(why), "{bad:?}: {error}");
        }
        let error = OutputRoots::default()
            .check(&s3("acme-results"))
            .unwrap_err();
        assert!(error.contains("none is"), "{error}");
    }

    fn record(instance_id: &str, status: StatusDetail) -> ResultRecord {
        let location = Location {
            account_id: "111122223333".into(),
            region: "us-east-1".into(),
        };
        ResultRecord::new(
            Uuid::nil(),
            "scan",
            &location,
            3,
            0,
            "scan",
            TargetResult {
                instance_id: instance_id.into(),
                status,
                command_id: Some("c".into()),
                requested_at: None,
                started_at: None,
                finished_at: None,
                response_code: Some(0),
                output_excerpt: "ok".into(),
                compliance: None,
                compliance_missing: None,
            },
        )
    }

    #[test]
    fn batches_are_written_partitioned_and_read_back_once_however_often_written() {
        let root = tempfile::tempdir().unwrap();
        let location = Location {
            account_id: "111122223333".into(),
            region: "us-east-1".into(),
        };
        let records = vec![
            record("i-1", StatusDetail::Success),
            record("i-2", StatusDetail::Failed),
        ];
        let at = ResultPath::new(Uuid::nil(), &location, 3, 0).unwrap();
        let path = write_batch(root.path(), &at, &records).unwrap();
        write_batch(root.path(), &at, &records).unwrap();
        assert!(
            path.ends_with(
                "run=00000000-0000-0000-0000-000000000000/account=111122223333/region=us-east-1/part-b000003-s00.jsonl.gz"
            ),
            "{}",
            path.display()
        );
        let mut read = read_run(root.path(), Uuid::nil()).unwrap();
        read.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        assert_eq!(read, records);
        assert_eq!(read[1].status, "Failed");
    }

    #[test]
    fn a_borrowed_result_line_is_written_exactly_as_its_record() {
        let location = Location {
            account_id: "111122223333".into(),
            region: "us-east-1".into(),
        };
        let full = TargetResult {
            instance_id: "i-0123456789abcdef0".into(),
            status: StatusDetail::Success,
            command_id: Some("c-1".into()),
            requested_at: Some(UnixMillis(1)),
            started_at: Some(UnixMillis(2)),
            finished_at: Some(UnixMillis(3)),
            response_code: Some(0),
            output_excerpt: "line \"one\"\n\u{7}".into(),
            compliance: Some(PatchCompliance::default()),
            compliance_missing: Some("DescribeInstancePatchStates failed".into()),
        };
        // The optional fields a result of a target never sent lacks.
        let sparse = TargetResult {
            status: StatusDetail::NotStarted,
            command_id: None,
            response_code: None,
            compliance: None,
            compliance_missing: None,
            ..full.clone()
        };
        for (result, output_location) in [
            (full, Some("s3://b/p/c-1/i-0/".to_string())),
            (sparse, None),
        ] {
            let mut record = ResultRecord::new(
                Uuid::nil(),
                "scan",
                &location,
                7,
                1,
                "install",
                result.clone(),
            );
            record.output_location = output_location.clone();
            let mut line =
                ResultLine::new(Uuid::nil(), "scan", &location, (7, 1, "install"), &result);
            line.output_location = output_location;
            assert_eq!(
                serde_json::to_string(&line).unwrap(),
                serde_json::to_string(&record).unwrap()
            );
        }
    }

    #[test]
    fn a_result_path_cannot_leave_the_output_root() {
        let escapes = [
            ("x/../..", "us-east-1"),
            ("..", "us-east-1"),
            ("111122223333", "../../etc"),
            ("111122223333", "us-east-1/../../x"),
            ("/111122223333", "us-east-1"),
            ("11112222333\0", "us-east-1"),
            ("111122223333", ""),
        ];
        for (account_id, region) in escapes {
            let location = Location {
                account_id: account_id.into(),
                region: region.into(),
            };
            let refused = ResultPath::new(Uuid::nil(), &location, 0, 0).unwrap_err();
            assert!(
                refused.contains("is not"),
                "{account_id}/{region}: {refused}"
            );
        }
        // Whatever is accepted stays below the root: only `run=`, `account=`,
        // `region=` and `part-` segments, none of them `.` or `..`.
        let location = Location {
            account_id: "111122223333".into(),
            region: "us-gov-west-1".into(),
        };
        let path = ResultPath::new(Uuid::new_v4(), &location, u32::MAX, u16::MAX).unwrap();
        for segment in path.relative().split('/') {
            assert!(
                ["run=", "account=", "region=", "part-"]
                    .iter()
                    .any(|start| segment.starts_with(start)),
                "{segment}"
            );
        }
    }

    /// The Athena table's columns (`deploy/athena/results.sql`), in order,
    /// with a struct's fields as `name.field`.
    fn athena_columns() -> Vec<String> {
        let ddl = include_str!("../../deploy/athena/results.sql");
        let body = ddl
            .split_once("CREATE EXTERNAL TABLE flotilla_results (")
            .and_then(|(_, rest)| rest.split_once("\n)\nPARTITIONED BY"))
            .map(|(columns, _)| columns)
            .unwrap();
        let mut columns = Vec::new();
        let mut within: Option<String> = None;
        for line in body.lines().map(str::trim).filter(|line| !line.is_empty()) {
            let name = line.split([' ', ':', '>', ',']).next().unwrap().to_string();
            if line.ends_with("struct<") {
                within = Some(name);
                continue;
            }
            match &within {
                Some(parent) => columns.push(format!("{parent}.{name}")),
                None => columns.push(name),
            }
            if line.ends_with(">,") || line.ends_with('>') {
                within = None;
            }
        }
        columns
    }

    #[test]
    fn the_athena_table_has_a_column_for_every_field_the_sink_writes() {
        // Every optional field present, as the fullest record has them.
        let mut full = record("i-0123456789abcdef0", StatusDetail::Success);
        full.command_id = Some("cmd".into());
        full.requested_at = Some(UnixMillis(1));
        full.started_at = Some(UnixMillis(2));
        full.finished_at = Some(UnixMillis(3));
        full.response_code = Some(0);
        full.compliance = Some(PatchCompliance::default());
        full.compliance_missing = Some("why".into());
        full.output_location = Some("s3://b/p/cmd/i-0123456789abcdef0/".into());
        let json = serde_json::to_value(&full).unwrap();
        let mut written: Vec<String> = Vec::new();
        for (key, value) in json.as_object().unwrap() {
            match value.as_object() {
                Some(fields) => written.extend(fields.keys().map(|field| format!("{key}.{field}"))),
                None => written.push(key.clone()),
            }
        }
        // `region` is the table's partition column (region=… in the path).
        written.retain(|field| field != "region");
        written.sort();
        let mut columns = athena_columns();
        columns.sort();
        assert_eq!(
            columns, written,
            "deploy/athena/results.sql and ResultRecord differ"
        );
    }
}
