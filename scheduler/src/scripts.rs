//! The Lua scripts that update a run's state in Redis (real or in memory),
//! from the `.lua` files in `lua/`. Each runs atomically over one run's keys.
//!
//! Why Lua, written once, on both backends: the in-memory Redis
//! (`store::memory`) runs the very same scripts on an embedded Lua 5.1, so
//! every state transition exists in one place — these files — instead of a
//! Lua script for Redis and a Rust copy of it for the demo. Atomicity on
//! Redis is the script's; in memory, a script runs under the database's lock.
//!
//! What a script must agree on with Rust — state names, which states are
//! final, the batch id stride, the run record's field names — is not written
//! in the `.lua` files: a header generated here from `protocol::run::RunState`,
//! `protocol::run_fields` and [`BATCH_STRIDE`] defines `STATE`, `FINAL`,
//! `BATCH_STRIDE`, `F` (run fields), `WF` (a wave's fields) and
//! `wave_field(n, WF.x)` before the shared prelude.

use std::sync::LazyLock;

use protocol::run::RunState;
use protocol::run_fields::{RunField, WAVE_FIELD_PREFIX, WaveField};
use redis::Script;

/// A batch's id is `page × BATCH_STRIDE + chunk`: pages hold at most this
/// many batches (a page is at most 1,000 targets, a batch at least one).
pub(crate) const BATCH_STRIDE: u32 = 1000;

/// A batch split where a rollout's wave ends gets its remainder a new id
/// from here up (`SPLIT_BASE + n`, n counting the run's splits): above every
/// `page × BATCH_STRIDE + chunk` id of a location (pages hold ≤ 1,000
/// targets, so ids below 2³¹ cover 2 billion targets per location).
pub(crate) const SPLIT_BASE: u32 = 1 << 31;

/// `STATE`, `FINAL` and `BATCH_STRIDE` for the run scripts.
fn constants() -> String {
    let states: Vec<String> = RunState::ALL
        .iter()
        .map(|state| format!("{0} = '{0}'", state.as_str()))
        .collect();
    let finals: Vec<String> = RunState::ALL
        .iter()
        .filter(|state| state.is_final())
        .map(|state| format!("{} = true", state.as_str()))
        .collect();
    let fields: Vec<String> = RunField::ALL
        .iter()
        .map(|field| format!("{0} = '{0}'", field.as_str()))
        .collect();
    let wave_fields: Vec<String> = WaveField::ALL
        .iter()
        .map(|field| format!("{0} = '{0}'", field.as_str()))
        .collect();
    format!(
        "local STATE = {{{}}}\nlocal FINAL = {{{}}}\nlocal BATCH_STRIDE = {BATCH_STRIDE}\nlocal SPLIT_BASE = {SPLIT_BASE}\n\
         local F = {{{}}}\nlocal WF = {{{}}}\n\
         local function wave_field(n, field) return '{WAVE_FIELD_PREFIX}' .. n .. ':' .. field end\n",
        states.join(", "),
        finals.join(", "),
        fields.join(", "),
        wave_fields.join(", ")
    )
}

/// A run script: the constants, the prelude (the run's eight keys, `halt`),
/// then `body`.
fn run_script(body: &str) -> Script {
    Script::new(&format!(
        "{}{}\n{body}",
        constants(),
        include_str!("lua/run_prelude.lua")
    ))
}

macro_rules! run_scripts {
    ($($name:ident = $file:literal;)*) => {
        $(
            pub(crate) static $name: LazyLock<Script> =
                LazyLock::new(|| run_script(include_str!(concat!("lua/", $file))));
        )*
        /// Every run script's own text, for the tests that check it.
        #[cfg(test)]
        const RUN_SCRIPT_BODIES: &[&str] = &[$(include_str!(concat!("lua/", $file))),*];
    };
}

run_scripts! {
    RECORD_PAGE = "record_page.lua";
    LOCATION_FAILED = "location_failed.lua";
    START_EXECUTION = "start_execution.lua";
    ADMIT = "admit.lua";
    APPLY_RESULTS = "apply_results.lua";
    MARK_DRAINED = "mark_drained.lua";
    TRANSITION = "transition.lua";
    OPEN_DISCOVERY = "open_discovery.lua";
    WAVE_GATE = "wave_gate.lua";
    END_DISCOVERY = "end_discovery.lua";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_constants_name_every_state_and_exactly_the_final_ones() {
        let header = constants();
        for state in RunState::ALL {
            assert!(header.contains(&format!("{0} = '{0}'", state.as_str())));
            assert_eq!(
                header.contains(&format!("{} = true", state.as_str())),
                state.is_final(),
                "{state}"
            );
        }
        assert!(header.contains(&format!("BATCH_STRIDE = {BATCH_STRIDE}")));
        assert!(header.contains(&format!("SPLIT_BASE = {SPLIT_BASE}")));
    }

    #[test]
    fn run_scripts_name_run_fields_only_through_the_generated_tables() {
        let prelude = include_str!("lua/run_prelude.lua");
        let known = |table: &str, name: &str| match table {
            "F" => RunField::ALL.iter().any(|field| field.as_str() == name),
            _ => WaveField::ALL.iter().any(|field| field.as_str() == name),
        };
        for body in std::iter::once(&prelude).chain(RUN_SCRIPT_BODIES) {
            for line in body
                .lines()
                .filter(|line| !line.trim_start().starts_with("--"))
            {
                // No field name as a string literal in a command on the run hash.
                if let Some((_, args)) = line.split_once(", run, ") {
                    for field in RunField::ALL {
                        assert!(
                            !args.contains(&format!("'{}'", field.as_str())),
                            "{} spelled out in: {line}",
                            field.as_str()
                        );
                    }
                }
                // Every F.x and WF.x names a field Rust knows (a misspelled
                // one would be nil in Lua, so an error only at run time).
                for table in ["WF", "F"] {
                    let marker = format!("{table}.");
                    for (at, _) in line.match_indices(&marker) {
                        let before = line[..at].chars().next_back();
                        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                            continue;
                        }
                        let name: String = line[at + marker.len()..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        assert!(known(table, &name), "{table}.{name} is no field: {line}");
                    }
                }
            }
        }
        assert!(constants().contains("F = {campaign = 'campaign'"));
    }

    #[test]
    fn no_run_script_spells_a_state_name_or_the_stride() {
        let prelude = include_str!("lua/run_prelude.lua");
        for body in std::iter::once(&prelude).chain(RUN_SCRIPT_BODIES) {
            let code: String = body
                .lines()
                .filter(|line| !line.trim_start().starts_with("--"))
                .collect();
            for state in RunState::ALL {
                assert!(
                    !code.contains(&format!("'{}'", state.as_str())),
                    "{state} in {body}"
                );
            }
            assert!(
                !code.contains(&BATCH_STRIDE.to_string()),
                "stride in {body}"
            );
        }
    }
}
