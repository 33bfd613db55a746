//! Subcommands of `flotilla`. Each prints what an operator needs and returns the
//! process exit code; `main` only parses and calls [`run`].

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use protocol::{Campaign, SpecFormat};

/// `--version`: the crate's version, the commit it was built from and when.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FLOTILLA_COMMIT"),
    ", built ",
    env!("FLOTILLA_BUILD_DATE"),
    ")"
);

const EXIT_CODES: &str = "Exit codes:
  0  done (a watched run completed; `validate`: every file is valid)
  1  failed: an error (printed on stderr with its cause), an invalid file, or
     a watched run that ended other than Completed
  2  the command line is wrong (unknown flag, missing argument)
  130  interrupted (Ctrl-C); a watched run goes on

Every command that prints takes `--format json` (one JSON document on stdout).
Shell completions: `flotilla completions bash|zsh|fish|elvish|powershell`.";

#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version = LONG_VERSION,
    about = "Operations campaigns across a fleet of cloud accounts, regions and instances",
    after_help = EXIT_CODES,
)]
pub struct Cli {
    /// Log lines as text (colored only on a terminal) or as one JSON object
    /// per line, for log shippers.
    #[arg(long, global = true, value_enum, env = "FLOTILLA_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check campaign specs (YAML or JSON); print `ok` or every problem with its field path.
    #[command(after_help = "Examples:
  flotilla validate examples/*.yaml
  flotilla validate patch-install.yaml --format json | jq '.[] | select(.ok | not)'")]
    Validate {
        /// Campaign files; `.json` is read as JSON, anything else as YAML.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The most account-region pairs a run may have (as the scheduler's flag).
        #[arg(long, default_value_t = protocol::campaign::DEFAULT_MAX_LOCATIONS)]
        max_locations: u64,
        #[command(flatten)]
        output: crate::commands::OutputArgs,
    },
    /// Print a scheduled campaign's next fire times, in UTC and in its timezone.
    Schedule {
        /// A campaign file with a `schedule`.
        file: PathBuf,
        /// How many fire times to print.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
        next: u16,
        /// Start after this instant (RFC 3339, e.g. 2026-01-01T00:00:00Z); now when absent.
        #[arg(long)]
        after: Option<DateTime<Utc>>,
        #[command(flatten)]
        output: crate::commands::OutputArgs,
    },
    /// Run the AWS-compatible fleet simulator (STS, SSM, Organizations, S3) until Ctrl-C.
    Sim {
        /// A preset (tiny, demo, large) or a fleet profile YAML file.
        #[arg(long, default_value = "demo")]
        profile: String,
        /// Address to listen on; point SDKs' endpoint_url at it.
        #[arg(long, default_value = "127.0.0.1:4566")]
        listen: SocketAddr,
    },
    /// See flotilla work in one command: simulator, scheduler and workers in this
    /// process (no services needed), the example patch scan, live progress, the report.
    #[command(after_help = "Examples:
  flotilla demo
  flotilla demo --profile large --workers 8
  flotilla demo --console        # keep the web console up after the run")]
    Demo(crate::demo::DemoArgs),
    /// Measure: real campaigns against the simulator on real RabbitMQ and Redis,
    /// each service its own process; a table and a JSON report.
    Bench(crate::bench::BenchArgs),
    /// Run a worker: take jobs from RabbitMQ, assume roles, call SSM, report results.
    #[command(after_help = "Examples:
  flotilla worker --amqp-url amqp://flotilla-worker:…@rabbit:5672/%2f --redis-url redis://…
  flotilla worker --aws-endpoint-url http://127.0.0.1:4566   # against `flotilla sim`
The worker checks its own AWS credentials at start and exits when there are none.")]
    Worker(crate::services::WorkerArgs),
    /// Run the scheduler: apply workers' reports, admit work, write results.
    #[command(after_help = "Examples:
  flotilla scheduler --results-dir /var/lib/flotilla/results --tokens-file tokens
  flotilla scheduler --insecure-no-auth   # loopback experiments only")]
    Scheduler(Box<crate::services::SchedulerArgs>),
    /// Stored campaigns (through the scheduler's API).
    #[command(after_help = "Examples:
  flotilla campaign apply -f examples/patch-scan.yaml
  flotilla campaign list --format json
  flotilla campaign approve patch-install --version 3")]
    Campaign {
        #[command(flatten)]
        api: crate::commands::ApiArgs,
        #[command(flatten)]
        output: crate::commands::OutputArgs,
        #[command(subcommand)]
        command: crate::commands::CampaignCommand,
    },
    /// Runs: start, watch, steer (through the scheduler's API).
    #[command(after_help = "Examples:
  flotilla run start patch-scan --watch
  flotilla run list --campaign patch-scan
  flotilla run show RUN_ID            # state, why it waits, every location
  flotilla run pause RUN_ID --reason 'DB team asked'
Only one run of a campaign is live at a time: a second start is refused
unless --allow-concurrent (both could act on the same hosts).")]
    Run {
        #[command(flatten)]
        api: crate::commands::ApiArgs,
        #[command(flatten)]
        output: crate::commands::OutputArgs,
        #[command(subcommand)]
        command: crate::commands::RunCommand,
    },
    /// The kill switch: global, or one campaign's.
    #[command(after_help = "Examples:
  flotilla kill engage --reason 'bad patch' --cancel-in-flight
  flotilla kill status --format json
  flotilla kill release")]
    Kill {
        #[command(flatten)]
        api: crate::commands::ApiArgs,
        #[command(flatten)]
        output: crate::commands::OutputArgs,
        #[command(subcommand)]
        command: crate::commands::KillCommand,
    },
    /// Change freezes: while one covers a campaign that changes hosts, its
    /// runs neither start nor send (read-only scans run on).
    Calendar {
        #[command(flatten)]
        api: crate::commands::ApiArgs,
        #[command(flatten)]
        output: crate::commands::OutputArgs,
        #[command(subcommand)]
        command: crate::commands::CalendarCommand,
    },
    /// The fleet's patch compliance across runs: the latest result of every
    /// instance, by account, region and severity, the daily trend, and the
    /// instances that need attention.
    Compliance {
        #[command(flatten)]
        api: crate::commands::ApiArgs,
        #[command(flatten)]
        args: crate::commands::ComplianceArgs,
    },
    /// API tokens: create (printed once), list, revoke; offline in a tokens
    /// file or through the API.
    Token {
        #[command(flatten)]
        api: crate::commands::ApiArgs,
        #[command(flatten)]
        output: crate::commands::OutputArgs,
        #[command(subcommand)]
        command: crate::access::TokenCommand,
    },
    /// The audit trail: who did what, from where, why, and how it ended.
    #[command(after_help = "Examples:
  flotilla audit --since 1h
  flotilla audit --action runs:start --format json | jq '.[].time'")]
    Audit {
        #[command(flatten)]
        api: crate::commands::ApiArgs,
        #[command(flatten)]
        args: crate::access::AuditArgs,
    },
    /// Signing keys for jobs and reports: generate, rotate, retire (offline).
    Keys {
        #[command(flatten)]
        output: crate::commands::OutputArgs,
        #[command(subcommand)]
        command: crate::keys::KeysCommand,
    },
    /// Maintenance of a deployment's queues and keys (talks to RabbitMQ and Redis).
    Admin {
        #[command(flatten)]
        output: crate::commands::OutputArgs,
        #[command(subcommand)]
        command: crate::admin::AdminCommand,
    },
    /// A run's results: totals, per location, non-compliant instances, failures.
    #[command(after_help = "Examples:
  flotilla report RUN_ID
  flotilla report RUN_ID --format csv > run.csv
  flotilla report RUN_ID --dir flotilla-demo          # without the API
  flotilla report RUN_ID --dir s3://bucket/results    # endpoint: FLOTILLA_S3_ENDPOINT_URL")]
    Report {
        #[command(flatten)]
        api: crate::commands::ApiArgs,
        #[command(flatten)]
        args: crate::commands::ReportArgs,
    },
    /// Print a completion script for a shell, e.g.
    /// `flotilla completions bash > /etc/bash_completion.d/flotilla`.
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cli.command {
        Command::Validate {
            files,
            max_locations,
            output,
        } => validate(&files, max_locations, output, &mut out),
        Command::Schedule {
            file,
            next,
            after,
            output,
        } => schedule(
            &file,
            usize::from(next),
            after.unwrap_or_else(Utc::now),
            output,
            &mut out,
        ),
        Command::Sim { profile, listen } => simulate(&profile, listen, &mut out),
        Command::Demo(args) => crate::demo::demo(args, &mut out),
        Command::Bench(args) => crate::bench::bench(args, &mut out),
        Command::Worker(args) => crate::services::worker(args),
        Command::Scheduler(args) => crate::services::scheduler(*args),
        Command::Campaign {
            api,
            output,
            command,
        } => crate::commands::campaign(&api, output, command, &mut out),
        Command::Run {
            api,
            output,
            command,
        } => crate::commands::run(&api, output, command, &mut out),
        Command::Kill {
            api,
            output,
            command,
        } => crate::commands::kill(&api, output, command, &mut out),
        Command::Calendar {
            api,
            output,
            command,
        } => crate::commands::calendar(&api, output, command, &mut out),
        Command::Compliance { api, args } => crate::commands::compliance(&api, args, &mut out),
        Command::Report { api, args } => crate::commands::report(&api, args, &mut out),
        Command::Admin { output, command } => crate::admin::admin(command, output, &mut out),
        Command::Keys { output, command } => crate::keys::keys(command, output, &mut out),
        Command::Token {
            api,
            output,
            command,
        } => crate::access::token(&api, output, command, &mut out),
        Command::Audit { api, args } => crate::access::audit(&api, args, &mut out),
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(shell, &mut Cli::command(), "flotilla", &mut out);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load(path: &Path) -> anyhow::Result<Result<Campaign, protocol::FieldErrors>> {
    load_within(path, protocol::campaign::DEFAULT_MAX_LOCATIONS)
}

/// Reads a spec (at most one byte past the size limit, so an oversized file
/// is refused by the parser's own bound without being read whole) and parses it.
fn load_within(
    path: &Path,
    max_locations: u64,
) -> anyhow::Result<Result<Campaign, protocol::FieldErrors>> {
    use std::io::Read as _;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(protocol::campaign::MAX_SPEC_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8(bytes)
        .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    Ok(Campaign::parse_within(
        &text,
        SpecFormat::from_path(path),
        max_locations,
    ))
}

/// Prints `FILE: ok` or one `FILE: path: problem` line per problem (as JSON:
/// `[{"file", "ok", "problems"}]`); fails if any file is invalid or
/// unreadable, after checking them all.
pub fn validate(
    files: &[PathBuf],
    max_locations: u64,
    output: crate::commands::OutputArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let mut all_valid = true;
    let mut checked = Vec::with_capacity(files.len());
    for path in files {
        let problems: Vec<String> = match load_within(path, max_locations) {
            Ok(Ok(_)) => Vec::new(),
            Ok(Err(errors)) => errors.iter().map(ToString::to_string).collect(),
            Err(error) => vec![format!("{error:#}")],
        };
        all_valid &= problems.is_empty();
        if output.json() {
            checked.push(serde_json::json!({
                "file": path.display().to_string(),
                "ok": problems.is_empty(),
                "problems": problems,
            }));
        } else if problems.is_empty() {
            writeln!(out, "{}: ok", path.display())?;
        } else {
            for problem in problems {
                writeln!(out, "{}: {problem}", path.display())?;
            }
        }
    }
    if output.json() {
        crate::commands::print_json(out, &checked)?;
    }
    Ok(if all_valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn schedule(
    path: &Path,
    count: usize,
    after: DateTime<Utc>,
    output: crate::commands::OutputArgs,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let campaign = match load(path)? {
        Ok(campaign) => campaign,
        Err(errors) => bail!("{} is not a valid campaign:\n{errors}", path.display()),
    };
    let Some(schedule) = campaign.schedule else {
        bail!(
            "{} has no schedule; add schedule.expression (cron(…) or rate(…))",
            path.display()
        );
    };
    let timezone = schedule.schedule.timezone;
    let times = schedule.schedule.next_fire_times(after, count);
    if times.is_empty() {
        bail!("{} never fires after {after}", schedule.schedule.expression);
    }
    if output.json() {
        let fires: Vec<serde_json::Value> = times
            .iter()
            .map(|time| {
                serde_json::json!({
                    "utc": time.to_rfc3339(),
                    "local": time.with_timezone(&timezone).to_rfc3339(),
                    "timezone": timezone.name(),
                })
            })
            .collect();
        crate::commands::print_json(out, &fires)?;
        return Ok(ExitCode::SUCCESS);
    }
    for time in times {
        if timezone == chrono_tz::UTC {
            writeln!(out, "{}", time.to_rfc3339())?;
        } else {
            writeln!(
                out,
                "{}  ({} {timezone})",
                time.to_rfc3339(),
                time.with_timezone(&timezone).format("%Y-%m-%d %H:%M")
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Serves the simulator until Ctrl-C; prints where it listens and how to call it.
pub fn simulate(
    profile: &str,
    listen: SocketAddr,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let profile = sim::FleetProfile::load(profile).map_err(anyhow::Error::msg)?;
    profile.validate().map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let caller_key = profile.caller_access_key_id.clone();
        let accounts = profile.accounts;
        let regions = profile.regions.join(", ");
        let server = sim::SimServer::start(profile, listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        writeln!(
            out,
            "simulator listening on {}\n  {accounts} accounts in {regions}; management account {}\n  caller access key id: {caller_key} (any secret)\n  admin: {}/_sim/stats",
            server.endpoint_url(),
            server.state.fleet.account_id(0),
            server.endpoint_url()
        )?;
        out.flush()?;
        tokio::signal::ctrl_c().await.context("cannot wait for Ctrl-C")?;
        Ok(ExitCode::SUCCESS)
    })
}
