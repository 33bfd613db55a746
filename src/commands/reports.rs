//! `flotilla compliance` and `flotilla report`: the fleet's compliance and
//! one run's report, from the API or straight from the results.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use api::json::RunDetail;
use clap::Args;
use uuid::Uuid;

use super::{ApiArgs, print_json};
use crate::client::ApiClient;
use crate::report::{self, Format};

#[derive(Debug, Args)]
pub struct ComplianceArgs {
    /// Only this account (12 digits).
    #[arg(long)]
    pub account: Option<String>,
    /// Only this region (e.g. eu-west-1).
    #[arg(long)]
    pub region: Option<String>,
    /// critical, security, other or compliant.
    #[arg(long)]
    pub severity: Option<String>,
    /// Instances not reported for longer are stale.
    #[arg(long, default_value_t = 7)]
    pub stale_days: u64,
    /// At most this many instances listed.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// `table` for people, `json` for scripts, `csv` (the instances that
    /// need attention) or `html` (a self-contained page).
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Compute it from the result files under this directory (every run's)
    /// instead of asking the scheduler; when the API does not answer,
    /// ./flotilla-demo and ./flotilla-results are read by themselves.
    #[arg(long, env = "FLOTILLA_RESULTS")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run's id.
    pub run_id: Uuid,
    /// `table` for people, `json` for scripts, `csv` (one row per target
    /// and step) or `html` (a self-contained page).
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// The results directory or `s3://bucket/prefix` (default: the run's, as
    /// the scheduler reports it; when the API does not answer,
    /// ./flotilla-demo or ./flotilla-results if the run is there, else the
    /// buckets of FLOTILLA_OUTPUT_BUCKETS at their root or one prefix down).
    #[arg(long, env = "FLOTILLA_RESULTS")]
    pub dir: Option<String>,
    /// Read `s3://` results here instead of AWS (credentials: AWS_* variables).
    #[arg(long, env = "FLOTILLA_S3_ENDPOINT_URL")]
    pub s3_endpoint_url: Option<String>,
}

pub fn compliance(
    api: &ApiArgs,
    args: ComplianceArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let view = match &args.dir {
        Some(dir) => compliance_from_results(std::slice::from_ref(dir), &args)?,
        None => {
            let mut query = vec![
                format!("stale_days={}", args.stale_days),
                format!("limit={}", args.limit),
            ];
            for (name, value) in [
                ("account", &args.account),
                ("region", &args.region),
                ("severity", &args.severity),
            ] {
                if let Some(value) = value {
                    query.push(format!("{name}={value}"));
                }
            }
            let path = format!("/compliance?{}", query.join("&"));
            let asked =
                ApiClient::from_args(api).and_then(|client| client.get::<serde_json::Value>(&path));
            match asked {
                Ok(answer) if args.format == Format::Json => {
                    print_json(out, &answer)?;
                    return Ok(ExitCode::SUCCESS);
                }
                Ok(answer) => serde_json::from_value(answer)
                    .context("the scheduler's compliance answer does not read")?,
                Err(error) if unreachable(&error) => {
                    let dirs: Vec<PathBuf> = LOCAL_RESULTS
                        .iter()
                        .map(PathBuf::from)
                        .filter(|dir| dir.is_dir())
                        .collect();
                    if dirs.is_empty() {
                        return Err(error.context(format!(
                            "and no results under {}; pass where they are with --dir",
                            LOCAL_RESULTS.map(|dir| format!("./{dir}")).join(" or ")
                        )));
                    }
                    let named: Vec<String> = dirs
                        .iter()
                        .map(|dir| format!("{}/", dir.display()))
                        .collect();
                    eprintln!(
                        "the API at {} did not answer; computing compliance from the results in {}",
                        api.api,
                        named.join(" and ")
                    );
                    compliance_from_results(&dirs, &args)?
                }
                Err(error) => return Err(error),
            }
        }
    };
    if args.format == Format::Json {
        print_json(out, &view)?;
        return Ok(ExitCode::SUCCESS);
    }
    match args.format {
        Format::Html => out.write_all(crate::report::html::render_fleet(&view).as_bytes())?,
        Format::Csv => out.write_all(scheduler::compliance::attention_csv(&view).as_bytes())?,
        _ => {
            writeln!(
                out,
                "{} instances, {} non-compliant, {} stale (> {} days)",
                view.instances, view.non_compliant, view.stale, view.stale_days
            )?;
            for (severity, n) in &view.by_severity {
                writeln!(out, "  {severity:<10} {n:>8}")?;
            }
            writeln!(out, "by account (instances, non-compliant)")?;
            for (account, (instances, bad)) in &view.by_account {
                writeln!(out, "  {account}  {instances:>8} {bad:>8}")?;
            }
            for state in view.attention.iter().take(20) {
                writeln!(
                    out,
                    "  {:<22} {}/{}  {:<9} missing {:>3}",
                    state.instance_id,
                    state.account_id,
                    state.region,
                    state.severity(),
                    state.missing
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The fleet's compliance from the result files of every run under `dirs`:
/// each instance's latest result with compliance counts, as the scheduler
/// keeps it. No trend: only the scheduler counts days.
fn compliance_from_results(
    dirs: &[PathBuf],
    args: &ComplianceArgs,
) -> anyhow::Result<scheduler::compliance::FleetCompliance> {
    let mut records = Vec::new();
    for dir in dirs {
        if dir.to_string_lossy().starts_with("s3://") {
            anyhow::bail!(
                "compliance reads a local results directory, not {}; ask the scheduler (FLOTILLA_API_URL) for a fleet whose results are in S3",
                dir.display()
            );
        }
        if !dir.is_dir() {
            anyhow::bail!("{} is not a results directory", dir.display());
        }
        records.extend(
            scheduler::sink::read_all_runs(dir)
                .with_context(|| format!("reading the results under {}", dir.display()))?,
        );
    }
    let query = scheduler::compliance::ComplianceQuery {
        account: args.account.clone(),
        region: args.region.clone(),
        severity: args.severity.clone(),
        stale_days: Some(args.stale_days),
        limit: Some(args.limit),
    };
    Ok(scheduler::compliance::fleet_view(
        scheduler::compliance::latest_from_results(&records),
        &query,
        protocol::job::UnixMillis::now().0,
    ))
}

/// Where results are when the API cannot say: the demo's directory and a
/// campaign's default one, under the current directory.
const LOCAL_RESULTS: [&str; 2] = [
    "flotilla-demo",
    protocol::campaign::DEFAULT_OUTPUT_DIRECTORY,
];

/// True when no API answered at all: nothing listens there, the host is
/// unknown or the connection timed out (not a TLS failure, a bad CA or an
/// answer cut off, which are errors of their own).
fn unreachable(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| match cause.downcast_ref::<ureq::Error>() {
            Some(
                ureq::Error::ConnectionFailed | ureq::Error::HostNotFound | ureq::Error::Timeout(_),
            ) => true,
            Some(ureq::Error::Io(io)) => matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut
            ),
            _ => false,
        })
}

/// The buckets the services may write results to (`FLOTILLA_OUTPUT_BUCKETS`,
/// as the scheduler is given them): where a report looks when the API does
/// not answer and no local directory holds the run.
const OUTPUT_BUCKETS_ENV: &str = "FLOTILLA_OUTPUT_BUCKETS";
/// Prefixes of one bucket a report looks under: `s3://bucket/<prefix>`.
const MAX_PREFIXES_SEARCHED: usize = 100;

/// Where the run's results are: `--dir`, else the scheduler's answer (with
/// the run, for the report's header), else (the API unreachable) a local
/// results directory holding the run, else a bucket of
/// `FLOTILLA_OUTPUT_BUCKETS` holding it at its root or one prefix down.
fn results_location(
    api: &ApiArgs,
    run_id: Uuid,
    args: &ReportArgs,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<(String, Option<RunDetail>)> {
    if let Some(dir) = &args.dir {
        return Ok((dir.clone(), None));
    }
    let asked = ApiClient::from_args(api)
        .and_then(|client| client.get::<RunDetail>(&format!("/runs/{run_id}")));
    let error = match asked {
        Ok(detail) => return Ok((detail.progress.results_location.clone(), Some(detail))),
        Err(error) if unreachable(&error) => error,
        Err(error) => return Err(error),
    };
    let local = LOCAL_RESULTS
        .iter()
        .find(|dir| scheduler::sink::local_run_dir(std::path::Path::new(dir), run_id).is_dir());
    if let Some(dir) = local {
        eprintln!(
            "the API at {} did not answer; reading the results in {dir}/",
            api.api
        );
        return Ok(((*dir).to_string(), None));
    }
    let buckets: Vec<String> = std::env::var(OUTPUT_BUCKETS_ENV)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|bucket| !bucket.is_empty())
        .map(str::to_string)
        .collect();
    for bucket in &buckets {
        match runtime.block_on(find_in_bucket(bucket, run_id, args.s3_endpoint_url.clone())) {
            Ok(Some(location)) => {
                eprintln!(
                    "the API at {} did not answer; reading the results in {location}",
                    api.api
                );
                return Ok((location, None));
            }
            Ok(None) => {}
            // One bucket out of reach does not stop the search: said once,
            // with its cause.
            Err(error) => eprintln!("could not look in s3://{bucket}: {error:#}"),
        }
    }
    let searched = LOCAL_RESULTS
        .map(|dir| format!("./{dir}"))
        .into_iter()
        .chain(buckets.iter().map(|bucket| format!("s3://{bucket}")))
        .collect::<Vec<_>>()
        .join(", ");
    Err(error.context(format!(
        "and no results of run {run_id} in {searched}; pass where they are with --dir (a directory or s3://bucket/prefix), or name the buckets to search in {OUTPUT_BUCKETS_ENV}"
    )))
}

/// `s3://bucket` or `s3://bucket/<prefix>` when it holds the run's results
/// (the bucket's root, then each prefix one level down, at most
/// [`MAX_PREFIXES_SEARCHED`]).
async fn find_in_bucket(
    bucket: &str,
    run_id: Uuid,
    endpoint_url: Option<String>,
) -> anyhow::Result<Option<String>> {
    let settings = s3_settings(endpoint_url);
    let root = scheduler::sink::ResultsStore::s3(bucket, "", &settings)?;
    if root.has_run(run_id).await? {
        return Ok(Some(root.describe()));
    }
    for prefix in root.child_prefixes(MAX_PREFIXES_SEARCHED).await? {
        let store = root.within(&prefix);
        if store.has_run(run_id).await? {
            return Ok(Some(store.describe()));
        }
    }
    Ok(None)
}

/// S3 as the services reach it: the endpoint given, the region and
/// credentials from the AWS_* environment.
fn s3_settings(endpoint_url: Option<String>) -> scheduler::sink::S3Settings {
    scheduler::sink::S3Settings {
        endpoint_url,
        region: std::env::var("AWS_REGION").ok(),
        credentials: None,
        // Someone waits on the command: an unreachable bucket fails in
        // seconds, with its cause, not after object_store's 3 minutes.
        retry_timeout: Some(std::time::Duration::from_secs(15)),
    }
}

pub fn report(api: &ApiArgs, args: ReportArgs, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let (output, detail) = results_location(api, args.run_id, &args, &runtime)?;
    let store = match output.strip_prefix("s3://") {
        Some(location) => {
            let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
            scheduler::sink::ResultsStore::s3(bucket, prefix, &s3_settings(args.s3_endpoint_url))
                .with_context(|| format!("results at {output}"))?
        }
        None => scheduler::sink::ResultsStore::Local(PathBuf::from(&output)),
    };
    let records = runtime
        .block_on(store.read_run(args.run_id))
        .with_context(|| format!("reading the results of run {} at {output}", args.run_id))?;
    if records.is_empty() {
        anyhow::bail!(
            "no results of run {} at {output}; pass where the scheduler writes them with --dir",
            args.run_id
        );
    }
    let mut built = report::build(args.run_id, &records);
    if let Some(detail) = detail {
        built = built.with_run(&detail);
    }
    report::write(&built, &records, args.format, out)?;
    Ok(ExitCode::SUCCESS)
}
