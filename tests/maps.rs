//! The maps stay true: every module of every crate is on its crate's map
//! (the `//!` list at the top of its `lib.rs`), every crate is on
//! `ARCHITECTURE.md`'s code map, every route of the API and the console is
//! in its route table, and the run engine depends on nothing that serves
//! HTTP. A module, route or dependency added against the map fails here,
//! naming it.

use std::path::Path;

const CRATES: &[(&str, &str)] = &[
    ("protocol", "protocol/src/lib.rs"),
    ("store", "store/src/lib.rs"),
    ("broker", "broker/src/lib.rs"),
    ("scheduler", "scheduler/src/lib.rs"),
    ("api", "api/src/lib.rs"),
    ("test-support", "test-support/src/lib.rs"),
    ("worker", "worker/src/lib.rs"),
    ("sim", "sim/src/lib.rs"),
    ("flotilla", "src/lib.rs"),
];

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|error| panic!("{}: {error}", full.display()))
}

/// The modules a `lib.rs` declares (`mod x;`, `pub mod x;`, `pub(crate) mod x;`).
fn declared_modules(source: &str) -> Vec<String> {
    source
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let rest = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("pub(crate) mod "))
                .or_else(|| line.strip_prefix("mod "))?;
            rest.strip_suffix(';').map(str::to_string)
        })
        .collect()
}

/// The crate's map: its leading `//!` lines.
fn crate_map(source: &str) -> String {
    source
        .lines()
        .take_while(|line| line.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_module_of_every_crate_is_on_its_map() {
    let mut missing = Vec::new();
    for (krate, lib) in CRATES {
        let source = read(lib);
        let map = crate_map(&source);
        let modules = declared_modules(&source);
        assert!(!modules.is_empty(), "{lib}: no modules found");
        for module in modules {
            if !map.contains(&format!("`{module}`")) {
                missing.push(format!("{krate}: module `{module}` is not on {lib}'s map"));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn every_workspace_crate_is_on_the_architecture_code_map() {
    let architecture = read("ARCHITECTURE.md");
    let manifest = read("Cargo.toml");
    let members = manifest
        .lines()
        .find_map(|line| line.strip_prefix("members = "))
        .expect("the workspace lists its members");
    for member in members
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|member| member.trim().trim_matches('"'))
    {
        assert!(
            architecture.contains(&format!("### `{member}`")),
            "ARCHITECTURE.md has no code-map section `### `{member}``"
        );
    }
    assert!(
        architecture.contains("### `flotilla`"),
        "the binary's section"
    );
}

/// Whether `table` names `path` as a whole path: after a backtick or a
/// space (`GET /x`), before a backtick, space, comma, `?` or `[`.
fn names_path(table: &str, path: &str) -> bool {
    table.match_indices(path).any(|(at, _)| {
        let before = table[..at].chars().next_back();
        let after = table[at + path.len()..].chars().next();
        matches!(before, Some('`' | ' ')) && matches!(after, Some('`' | ' ' | ',' | '?' | '['))
    })
}

#[test]
fn every_route_is_in_its_route_table() {
    let mut missing = Vec::new();
    for file in ["api/src/json/mod.rs", "api/src/console/mod.rs"] {
        let source = read(file);
        let table = crate_map(&source);
        let found = test_support::routes::registered(&source);
        assert!(found.len() > 5, "{file}: routes not found");
        for route in found {
            // A table names `/runs/{id}/pause`, `/resume`, … for `{action}`.
            let named = route.replace("{action}", "pause");
            if !names_path(&table, &route) && !names_path(&table, &named) {
                missing.push(format!("{file}: route {route} is not in its table"));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn the_run_engine_depends_on_nothing_that_serves_http() {
    let manifest = read("scheduler/Cargo.toml");
    let dependencies = manifest
        .split("[dependencies]")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .expect("scheduler/Cargo.toml has [dependencies]");
    let names: Vec<&str> = dependencies
        .lines()
        .filter_map(|line| line.split(['.', ' ', '=']).next())
        .filter(|name| !name.is_empty())
        .collect();
    assert!(names.contains(&"redis"), "dependencies not read: {names:?}");
    for http in [
        "axum",
        "maud",
        "hyper",
        "hyper-util",
        "rustls",
        "tokio-rustls",
        "jsonwebtoken",
        "x509-parser",
        "tower",
        "serde_urlencoded",
    ] {
        assert!(
            !names.contains(&http),
            "the scheduler (run engine) depends on {http}: HTTP belongs to the api crate"
        );
    }
}
