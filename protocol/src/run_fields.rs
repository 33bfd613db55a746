//! The run record's field names, written once. Rust reads and writes a run
//! hash by [`RunField`] (and a wave's fields by [`WaveField`]); the
//! scheduler's Lua scripts by the `F` and `WF` tables that
//! `scheduler::scripts` generates from the same lists — so no field name is
//! spelled twice, and a misspelled one fails to compile in Rust and fails
//! the script-check test in Lua, instead of reading as 0.
//!
//! Required fields are written when the run is created: one that is absent
//! means the record is broken, and reading it is an error. Optional fields
//! are written as the run goes on (or by some runs only); absent, a counter
//! among them reads as 0.

/// Declares the fields: the enum, its names, and which are required.
macro_rules! run_fields {
    (
        required { $($required:ident = $required_name:literal,)* }
        optional { $($optional:ident = $optional_name:literal,)* }
    ) => {
        /// A field of the run hash (`<prefix>:run:{<id>}`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum RunField {
            $($required,)*
            $($optional,)*
        }

        impl RunField {
            /// Every field, required ones first.
            pub const ALL: &'static [RunField] = &[
                $(RunField::$required,)*
                $(RunField::$optional,)*
            ];

            /// The field's name in the hash.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(RunField::$required => $required_name,)*
                    $(RunField::$optional => $optional_name,)*
                }
            }

            /// Written when the run is created: absent, the record is broken.
            pub const fn is_required(self) -> bool {
                matches!(self, $(RunField::$required)|*)
            }
        }
    };
}

run_fields! {
    required {
        Campaign = "campaign",
        CampaignVersion = "campaign_version",
        Spec = "spec",
        Priority = "priority",
        State = "state",
        Reason = "reason",
        CreatedMs = "created_ms",
        LocationCount = "location_count",
        LocationConcurrency = "location_concurrency",
        AllowedLocationErrors = "allowed_location_errors",
        Total = "total",
        InFlight = "in_flight",
        Failures = "failures",
        DiscoveredLocations = "discovered_locations",
        FailedLocations = "failed_locations",
        LocationsDone = "locations_done",
    }
    optional {
        // Written at creation by every version since they were added; runs
        // of older versions lack them.
        StartedBy = "started_by",
        PlanOnly = "plan_only",
        // Where results go; `output_dir` in runs of older versions.
        ResultsLocation = "results_location",
        OutputDir = "output_dir",
        // The location limit the spec is read back under (newer runs).
        MaxLocations = "max_locations",
        // An event's one instance, as a target selection (JSON).
        Targets = "targets",
        // What every job of the run must match (JSON), before the first job.
        Contract = "contract",
        SendUntilMs = "send_until_ms",
        FreezeOverride = "freeze_override",
        // What a principal overrode at start, and who (newer runs).
        Overrides = "overrides",
        // When the run reached a final state (Redis's clock, Unix ms; newer runs).
        EndedMs = "ended_ms",
        HaltReason = "halt_reason",
        Drained = "drained",
        DiscoverNext = "discover_next",
        ActiveLocations = "active_locations",
        // Limits, resolved as targets are discovered.
        MaxInFlight = "max_in_flight",
        BatchSize = "batch_size",
        AllowedErrors = "allowed_errors",
        LimitsResolvedFor = "limits_resolved_for",
        BatchSplits = "batch_splits",
        // A rollout's state.
        Rollout = "rollout",
        BakeMs = "bake_ms",
        BakeUntil = "bake_until",
        WaveCaps = "wave_caps",
        Wave = "wave",
        WaveAdmitted = "wave_admitted",
        WaveFailuresBase = "wave_failures_base",
        GateFailedWave = "gate_failed_wave",
    }
}

/// A field of one rollout wave, stored as `wave:<n>:<name>` in the run hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaveField {
    /// Targets the wave admitted (step 0).
    Targets,
    /// Failed targets counted while the wave ran.
    Failures,
    /// When the wave's last target was admitted and it began to bake.
    DoneMs,
    /// When the wave began.
    StartedMs,
    /// Its health gates' results (JSON).
    Gates,
    /// How the wave ended (`next`, `approval`, `approved`, `resumed`,
    /// `pause`, `halt`).
    Outcome,
}

impl WaveField {
    pub const ALL: [WaveField; 6] = [
        WaveField::Targets,
        WaveField::Failures,
        WaveField::DoneMs,
        WaveField::StartedMs,
        WaveField::Gates,
        WaveField::Outcome,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            WaveField::Targets => "targets",
            WaveField::Failures => "failures",
            WaveField::DoneMs => "done_ms",
            WaveField::StartedMs => "started_ms",
            WaveField::Gates => "gates",
            WaveField::Outcome => "outcome",
        }
    }

    /// The field's name in the run hash for wave `wave` (0-based); the Lua
    /// scripts' `wave_field(n, WF.x)` builds the same.
    pub fn of(self, wave: u64) -> String {
        format!("{WAVE_FIELD_PREFIX}{wave}:{}", self.as_str())
    }
}

/// The start of every wave field's name.
pub const WAVE_FIELD_PREFIX: &str = "wave:";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_has_one_distinct_name_and_wave_fields_cannot_collide_with_them() {
        let mut seen = std::collections::HashSet::new();
        for field in RunField::ALL {
            assert!(seen.insert(field.as_str()), "{field:?} twice");
            assert!(!field.as_str().starts_with(WAVE_FIELD_PREFIX));
        }
        assert!(RunField::State.is_required() && !RunField::Wave.is_required());
        assert_eq!(WaveField::Gates.of(2), "wave:2:gates");
    }
}
