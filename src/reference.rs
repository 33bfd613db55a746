//! The book's CLI and configuration reference pages, generated from the
//! argument definitions (`tests/docs.rs` fails when the pages in
//! `docs/src/reference/` differ; `FLOTILLA_BLESS=1` rewrites them), and the
//! check that every command, flag and argument says what it is for.
//!
//! Written here rather than with a markdown crate: the configuration page is
//! a table of the services' flags with their environment variables, which no
//! generator we found prints.

use clap::{Arg, Command, CommandFactory};

use crate::cli::Cli;

/// The commands a service runs as; their flags are its configuration.
const SERVICES: [&str; 3] = ["scheduler", "worker", "sim"];

fn visible_subcommands(command: &Command) -> impl Iterator<Item = &Command> {
    command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
}

fn visible_args(command: &Command) -> impl Iterator<Item = &Arg> {
    command
        .get_arguments()
        .filter(|arg| !arg.is_hide_set() && !matches!(arg.get_id().as_str(), "help" | "version"))
}

/// Every command, flag and argument without help text, by path
/// (`flotilla run start --file`); empty when all have one. The command is
/// not built, so a global flag is seen (and checked) once, where it is
/// defined.
pub fn missing_help() -> Vec<String> {
    fn walk(command: &Command, path: &str, missing: &mut Vec<String>) {
        if command.get_about().is_none() {
            missing.push(path.to_string());
        }
        for arg in visible_args(command) {
            if arg.get_help().is_none() {
                missing.push(format!("{path} {}", arg_name(arg)));
            }
        }
        for sub in visible_subcommands(command) {
            walk(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }
    let mut missing = Vec::new();
    walk(&Cli::command(), "flotilla", &mut missing);
    missing
}

fn arg_name(arg: &Arg) -> String {
    match (arg.get_long(), arg.get_short()) {
        (Some(long), _) => format!("--{long}"),
        (None, Some(short)) => format!("-{short}"),
        (None, None) => arg
            .get_value_names()
            .and_then(|names| names.first())
            .map_or_else(
                || arg.get_id().to_string().to_uppercase(),
                ToString::to_string,
            ),
    }
}

/// Text for one table cell: one line, pipes escaped.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn default_of(arg: &Arg) -> String {
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|value| value.to_string_lossy().into_owned())
        .collect();
    if defaults.is_empty() || arg.is_hide_default_value_set() {
        String::new()
    } else {
        format!("`{}`", defaults.join(","))
    }
}

fn possible_values(arg: &Arg) -> String {
    let values: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|value| !value.is_hide_set())
        .map(|value| value.get_name().to_string())
        .collect();
    if values.is_empty() || matches!(arg.get_action(), clap::ArgAction::SetTrue) {
        String::new()
    } else {
        format!(" One of: {}.", values.join(", "))
    }
}

fn help_of(arg: &Arg) -> String {
    let help = arg
        .get_long_help()
        .or(arg.get_help())
        .map(ToString::to_string)
        .unwrap_or_default();
    cell(&format!("{help}{}", possible_values(arg)))
}

fn env_of(arg: &Arg) -> String {
    arg.get_env()
        .map(|env| format!("`{}`", env.to_string_lossy()))
        .unwrap_or_default()
}

/// One flag's table row: name, environment variable, default, help.
fn row(arg: &Arg) -> String {
    format!(
        "| `{}` | {} | {} | {} |\n",
        arg_name(arg),
        env_of(arg),
        default_of(arg),
        help_of(arg)
    )
}

/// The CLI reference: every command with its usage, flags and examples.
pub fn cli_markdown() -> String {
    // A global flag is shown once, on the command that defines it, not on
    // every subcommand it reaches (`inherited`: the parent's flags).
    fn walk(command: &mut Command, path: &str, inherited: &[String], out: &mut String) {
        let depth = path.matches(' ').count();
        let heading = "#".repeat((depth + 1).min(4));
        out.push_str(&format!("{heading} `{path}`\n\n"));
        if let Some(about) = command.get_long_about().or(command.get_about()) {
            out.push_str(&format!("{}\n\n", about.to_string().trim()));
        }
        let usage = command.render_usage().to_string();
        let usage = usage.trim_start_matches("Usage: ").trim();
        out.push_str(&format!("```text\n{usage}\n```\n\n"));
        let args: Vec<&Arg> = visible_args(command)
            .filter(|arg| !(arg.is_global_set() && inherited.contains(&arg.get_id().to_string())))
            .collect();
        let here: Vec<String> = visible_args(command)
            .map(|arg| arg.get_id().to_string())
            .collect();
        if !args.is_empty() {
            out.push_str("| Flag or argument | Environment | Default | What it is |\n");
            out.push_str("|---|---|---|---|\n");
            for arg in args {
                out.push_str(&row(arg));
            }
            out.push('\n');
        }
        if let Some(after) = command.get_after_help() {
            out.push_str(&format!("```text\n{}\n```\n\n", after.to_string().trim()));
        }
        let names: Vec<String> = visible_subcommands(command)
            .map(|sub| sub.get_name().to_string())
            .collect();
        for name in names {
            if let Some(sub) = command.find_subcommand_mut(&name) {
                walk(sub, &format!("{path} {name}"), &here, out);
            }
        }
    }
    let mut out = String::from(
        "# CLI reference\n\nGenerated from the code by `tests/docs.rs` (`FLOTILLA_BLESS=1 cargo test --test docs` rewrites it); do not edit by hand. `flotilla help COMMAND` prints the same.\n\n",
    );
    let mut command = Cli::command();
    command.build();
    walk(&mut command, "flotilla", &[], &mut out);
    out.trim_end().to_string() + "\n"
}

/// The configuration reference: each service's flags, their environment
/// variables and defaults.
pub fn configuration_markdown() -> String {
    let mut out = String::from(
        "# Configuration reference\n\nGenerated from the code by `tests/docs.rs` (`FLOTILLA_BLESS=1 cargo test --test docs` rewrites it); do not edit by hand. Every flag of a service can be set by its environment variable instead; a flag given on the command line wins.\n\n",
    );
    let mut cli = Cli::command();
    cli.build();
    for service in SERVICES {
        let Some(command) = cli.find_subcommand(service) else {
            continue;
        };
        out.push_str(&format!("## `flotilla {service}`\n\n"));
        if let Some(about) = command.get_about() {
            out.push_str(&format!("{}\n\n", about.to_string().trim()));
        }
        out.push_str("| Flag | Environment | Default | What it is |\n|---|---|---|---|\n");
        let mut args: Vec<&Arg> = visible_args(command)
            .filter(|arg| arg.get_id() != "log_format")
            .collect();
        args.sort_by_key(|arg| arg.get_long().unwrap_or_default().to_string());
        for arg in args {
            out.push_str(&row(arg));
        }
        out.push('\n');
    }
    out.push_str(
        "## Every command\n\n| Flag | Environment | Default | What it is |\n|---|---|---|---|\n",
    );
    for arg in visible_args(&cli) {
        out.push_str(&row(arg));
    }
    out.trim_end().to_string() + "\n"
}
