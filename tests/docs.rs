//! The book's generated reference pages match the code, every command, flag
//! and argument has help text, and shell completions are generated
//! (issue 33).

use std::path::Path;

/// Compares a generated page with the file; `FLOTILLA_BLESS=1` rewrites it.
fn check_page(path: &str, generated: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    if std::env::var_os("FLOTILLA_BLESS").is_some() {
        std::fs::write(&path, generated).expect("write the generated page");
        return;
    }
    let on_disk = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    assert!(
        on_disk == generated,
        "{} is stale: the CLI changed. Regenerate it with `FLOTILLA_BLESS=1 cargo test --test docs` and commit it.",
        path.display()
    );
}

#[test]
fn the_cli_reference_is_generated_from_the_code() {
    check_page(
        "docs/src/reference/cli.md",
        &flotilla::reference::cli_markdown(),
    );
}

#[test]
fn the_configuration_reference_is_generated_from_the_code() {
    check_page(
        "docs/src/reference/configuration.md",
        &flotilla::reference::configuration_markdown(),
    );
}

#[test]
fn every_command_flag_and_argument_says_what_it_is_for() {
    let missing = flotilla::reference::missing_help();
    assert!(
        missing.is_empty(),
        "without help text ({}):\n  {}",
        missing.len(),
        missing.join("\n  ")
    );
}

#[test]
fn completions_are_generated_for_each_shell() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef flotilla"),
        ("fish", "complete -c flotilla"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(["completions", shell])
            .output()
            .expect("run flotilla completions");
        assert!(output.status.success(), "completions {shell} failed");
        let script = String::from_utf8(output.stdout).expect("UTF-8");
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        // The completions know the subcommands and their flags.
        for word in ["run", "start", "allow-concurrent", "format"] {
            assert!(script.contains(word), "{shell} completion lacks {word:?}");
        }
    }
}

#[test]
fn version_names_the_commit_and_build_date() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .arg("--version")
        .output()
        .expect("run flotilla --version");
    let version = String::from_utf8(output.stdout).expect("UTF-8");
    assert!(
        version.starts_with(&format!("flotilla {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let built = version
        .split("built ")
        .nth(1)
        .and_then(|rest| rest.get(..10))
        .expect("a build date");
    assert!(
        chrono::NaiveDate::parse_from_str(built, "%Y-%m-%d").is_ok(),
        "{version}"
    );
}
