//! The `flotilla` command: parses arguments and hands them to the library.

use std::process::ExitCode;

use clap::Parser;

/// Every service's allocator (see the manifest for why and the figures).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = flotilla::cli::Cli::parse();
    // Operators see what the services do unless RUST_LOG says otherwise; the
    // demo shows progress bars, and only warnings besides.
    let default_filter = match cli.command {
        // lapin reports the demo's own connections closing at the end as errors.
        flotilla::cli::Command::Demo(_) => "warn,lapin=off",
        // The SDK's credential chain logs each failed source (instance
        // metadata's at length) at warn; the worker checks its credentials
        // at start and says what is missing itself.
        flotilla::cli::Command::Worker(_)
        | flotilla::cli::Command::Scheduler(_)
        | flotilla::cli::Command::Sim { .. }
        | flotilla::cli::Command::Bench(_) => "info,aws_config=error",
        // A command that answers (report, run, kill, …) prints its answer
        // and, on failure, its error once with the cause: no log lines of
        // the libraries' retries before it.
        _ => "warn,aws_config=error,object_store=error",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        flotilla::cli::LogFormat::Json => logs.json().init(),
        // Colors only where a person reads them: a file or a pipe gets plain text.
        flotilla::cli::LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    match flotilla::cli::run(cli) {
        Ok(code) => code,
        // `flotilla run list | head`: the reader left; nothing went wrong.
        Err(error)
            if error.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
