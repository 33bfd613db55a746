//! Every validation rule of the campaign spec, each as the operator would meet it:
//! a spec with one mistake, and the error naming the field and what is allowed.

// Test helpers may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use protocol::campaign::{OutputLocation, Platform, TargetSelector};
use protocol::rate_control::RateValue;
use protocol::spec::{MissedOccurrence, TriggerEvent};
use protocol::{Campaign, SpecFormat};

const BASE: &str = r#"
name: base
steps:
  - name: scan
    document: AWS-RunPatchBaseline
    parameters: { Operation: Scan }
accounts: { ids: ["111122223333"] }
regions: [us-east-1]
targets: { all: true }
"#;

/// BASE with top-level sections replaced or added (`key: value` YAML lines).
fn spec_with(overrides: &[(&str, &str)]) -> String {
    let mut sections: Vec<(String, String)> = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in BASE.lines().filter(|l| !l.trim().is_empty()) {
        if !line.starts_with(' ') {
            if let Some(section) = current.take() {
                sections.push(section);
            }
            let (key, rest) = line.split_once(':').unwrap();
            current = Some((key.to_string(), rest.to_string()));
        } else if let Some((_, body)) = current.as_mut() {
            body.push('\n');
            body.push_str(line);
        }
    }
    sections.extend(current);
    for (key, value) in overrides {
        match sections.iter_mut().find(|(k, _)| k == key) {
            Some(section) => section.1 = format!(" {value}"),
            None => sections.push((key.to_string(), format!(" {value}"))),
        }
    }
    sections
        .into_iter()
        .filter(|(_, body)| body.trim() != "DELETE")
        .map(|(key, body)| format!("{key}:{body}\n"))
        .collect()
}

fn parse(yaml: &str) -> Result<Campaign, Vec<String>> {
    Campaign::parse(yaml, SpecFormat::Yaml)
        .map_err(|errors| errors.iter().map(|e| e.to_string()).collect())
}

fn valid(overrides: &[(&str, &str)]) -> Campaign {
    let yaml = spec_with(overrides);
    match parse(&yaml) {
        Ok(campaign) => campaign,
        Err(errors) => panic!("expected valid, got {errors:#?}\n---\n{yaml}"),
    }
}

/// Asserts some error starts with `path: ` and contains `fragment`.
fn rejects(overrides: &[(&str, &str)], path: &str, fragment: &str) {
    let yaml = spec_with(overrides);
    let errors = match parse(&yaml) {
        Ok(_) => panic!("expected an error at {path}, but the spec is valid:\n{yaml}"),
        Err(errors) => errors,
    };
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    };
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&prefix) && e.contains(fragment)),
        "expected an error at {path:?} containing {fragment:?}, got {errors:#?}"
    );
}

#[test]
fn the_base_spec_is_valid_and_gets_awss_defaults() {
    let campaign = valid(&[]);
    assert_eq!(campaign.version, 1);
    assert_eq!(campaign.role.name, "FlotillaExecutionRole");
    assert_eq!(campaign.role.session_duration, Duration::from_secs(3600));
    assert_eq!(campaign.steps[0].timeout, Duration::from_secs(3600));
    assert_eq!(
        campaign.rate_control.location_concurrency,
        RateValue::Count(1)
    );
    assert_eq!(
        campaign.rate_control.location_max_errors,
        RateValue::Count(0)
    );
    assert_eq!(campaign.rate_control.max_concurrency, RateValue::Count(50));
    assert_eq!(campaign.rate_control.max_errors, RateValue::Count(0));
    assert_eq!(campaign.api_rate_limits.send_command, 5.0);
    assert!(campaign.targets.online_only);
    assert_eq!(
        campaign.output,
        OutputLocation::Local("flotilla-results".into())
    );
    assert!(campaign.schedule.is_none());
}

#[test]
fn name_description_and_version() {
    rejects(
        &[("name", "\"has space\"")],
        "name",
        "must be 1-128 letters",
    );
    rejects(
        &[("name", "-leading-dash")],
        "name",
        "starting with a letter or digit",
    );
    rejects(&[("name", &"a".repeat(129))], "name", "1-128");
    valid(&[("name", &"a".repeat(128))]);
    rejects(
        &[("description", &"d".repeat(1025))],
        "description",
        "at most 1024",
    );
    rejects(&[("version", "0")], "version", "at least 1");
    assert_eq!(valid(&[("version", "7")]).version, 7);
    rejects(&[("name", "DELETE")], "name", "is required");
}

#[test]
fn missing_required_fields_are_all_reported_with_the_rest() {
    let errors = parse(
        "description: no name, no steps
rate_control:
  max_errors: lots
",
    )
    .unwrap_err();
    for expected in [
        "name: is required",
        "steps: must list at least one step",
        "accounts: must list account ids",
        "regions: must list at least one region",
        "rate_control.max_errors:",
    ] {
        assert!(
            errors.iter().any(|error| error.starts_with(expected)),
            "{expected:?} missing from {errors:#?}"
        );
    }
    let errors = parse(&spec_with(&[("steps", "\n  - name: only-a-name")])).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|error| error.starts_with("steps[0].document:")),
        "{errors:#?}"
    );
}

#[test]
fn a_step_names_its_document_version_as_ssm_takes_it() {
    for version in ["'$DEFAULT'", "'$LATEST'", "3", "'12'"] {
        let steps = format!(
            "[{{ name: a, document: AWS-RunShellScript, document_version: {version}, parameters: {{ commands: [true] }} }}]"
        );
        let campaign = parse(&spec_with(&[("steps", &steps)])).expect(&steps);
        assert_eq!(
            campaign.steps[0].document_version.as_deref(),
            Some(version.trim_matches('\'')),
        );
    }
    let campaign = parse(&spec_with(&[])).unwrap();
    assert_eq!(campaign.steps[0].document_version, None, "SSM's default");
    for version in ["0", "'v2'", "'$latest'", "'1.5'", "1234567890"] {
        rejects(
            &[(
                "steps",
                &format!(
                    "[{{ name: a, document: AWS-RunShellScript, document_version: {version} }}]"
                ),
            )],
            "steps[0].document_version",
            "must be $DEFAULT, $LATEST or a version number",
        );
    }
}

#[test]
fn steps_need_names_documents_and_sane_timeouts() {
    rejects(&[("steps", "[]")], "steps", "at least one step");
    rejects(
        &[("steps", "[{ name: 'a b', document: AWS-RunShellScript }]")],
        "steps[0].name",
        "1-64 letters",
    );
    rejects(
        &[(
            "steps",
            "[{ name: a, document: AWS-RunShellScript }, { name: a, document: AWS-RunShellScript }]",
        )],
        "steps[1].name",
        "used by an earlier step",
    );
    rejects(
        &[("steps", "[{ name: a, document: 'x' }]")],
        "steps[0].document",
        "SSM document name",
    );
    rejects(
        &[(
            "steps",
            "[{ name: a, document: AWS-RunShellScript, parameters: { 'bad-name': x } }]",
        )],
        "steps[0].parameters.bad-name",
        "parameter names",
    );
    rejects(
        &[(
            "steps",
            "[{ name: a, document: AWS-RunShellScript, timeout: 29s }]",
        )],
        "steps[0].timeout",
        "must be between 30s and 30d",
    );
    rejects(
        &[(
            "steps",
            "[{ name: a, document: AWS-RunShellScript, timeout: 31d }]",
        )],
        "steps[0].timeout",
        "must be between 30s and 30d",
    );
    rejects(
        &[(
            "steps",
            "[{ name: a, document: AWS-RunShellScript, timeout: soon }]",
        )],
        "steps[0].timeout",
        "got \"soon\"",
    );
    rejects(
        &[(
            "steps",
            "[{ name: a, document: AWS-RunShellScript, timeout: 90.5 }]",
        )],
        "steps[0].timeout",
        "whole number of seconds",
    );
    rejects(
        &[(
            "steps",
            "[{ name: a, document: AWS-RunShellScript, colour: blue }]",
        )],
        "steps[0].colour",
        "unknown field `colour`",
    );
    let campaign = valid(&[(
        "steps",
        "[{ name: a, document: AWS-RunShellScript, timeout: 30 }, { name: b, document: 'arn:aws:ssm:us-east-1:111122223333:document/Mine', timeout: 30d }]",
    )]);
    assert_eq!(campaign.steps[0].timeout, Duration::from_secs(30));
    assert_eq!(campaign.steps[1].timeout, Duration::from_secs(30 * 86_400));
}

#[test]
fn parameters_are_strings_or_lists_of_strings() {
    let campaign = valid(&[(
        "steps",
        "[{ name: a, document: AWS-RunShellScript, parameters: { commands: [uptime, 'df -h'], workingDirectory: /tmp, retries: 3 } }]",
    )]);
    let parameters = &campaign.steps[0].parameters;
    assert_eq!(parameters["commands"], ["uptime", "df -h"]);
    assert_eq!(parameters["workingDirectory"], ["/tmp"]);
    assert_eq!(parameters["retries"], ["3"]);
    rejects(
        &[(
            "steps",
            "[{ name: a, document: AWS-RunShellScript, parameters: { commands: { nested: map } } }]",
        )],
        "steps[0].parameters.commands",
        "a string or a list of strings",
    );
}

#[test]
fn patch_baseline_steps_check_operation_and_reboot_option() {
    rejects(
        &[("steps", "[{ name: a, document: AWS-RunPatchBaseline }]")],
        "steps[0].parameters.Operation",
        "is required by AWS-RunPatchBaseline",
    );
    rejects(
        &[(
            "steps",
            "[{ name: a, document: AWS-RunPatchBaseline, parameters: { Operation: scan } }]",
        )],
        "steps[0].parameters.Operation",
        "one of Scan, Install",
    );
    rejects(
        &[(
            "steps",
            "[{ name: a, document: AWS-RunPatchBaseline, parameters: { Operation: Install, RebootOption: Always } }]",
        )],
        "steps[0].parameters.RebootOption",
        "one of RebootIfNeeded, NoReboot",
    );
    let campaign = valid(&[(
        "steps",
        "[{ name: a, document: AWS-RunPatchBaseline, parameters: { Operation: Install, RebootOption: NoReboot, InstallOverrideList: 's3://b/l.yaml', SnapshotId: abc } }]",
    )]);
    assert!(campaign.steps[0].is_patch_baseline());
}

#[test]
fn accounts_are_ids_and_or_organizational_units() {
    rejects(
        &[("accounts", "{}")],
        "accounts",
        "account ids, organizational_units, or both",
    );
    rejects(
        &[("accounts", "{ ids: ['12345678901'] }")],
        "accounts.ids[0]",
        "12-digit account id",
    );
    rejects(
        &[("accounts", "{ ids: [12345678901] }")],
        "accounts.ids[0]",
        "quote account ids in YAML",
    );
    rejects(
        &[("accounts", "{ ids: ['111122223333', '111122223333'] }")],
        "accounts.ids[1]",
        "listed twice",
    );
    rejects(
        &[("accounts", "{ organizational_units: ['ou-x'] }")],
        "accounts.organizational_units[0]",
        "OU id",
    );
    rejects(
        &[(
            "accounts",
            "{ ids: ['111122223333'], include_child_ous: true }",
        )],
        "accounts.include_child_ous",
        "needs organizational_units",
    );
    rejects(
        &[(
            "accounts",
            "{ ids: ['111122223333'], exclude_accounts: ['111122223333'] }",
        )],
        "accounts.exclude_accounts",
        "excludes every listed account",
    );
    rejects(
        &[(
            "accounts",
            "{ organizational_units: ['r-ab12'], exclude_accounts: ['1'] }",
        )],
        "accounts.exclude_accounts[0]",
        "12-digit",
    );
    let campaign = valid(&[(
        "accounts",
        "{ ids: ['012345678901'], organizational_units: ['ou-ab12-cdef3456', 'r-ab12'], include_child_ous: true, exclude_accounts: ['999988887777'] }",
    )]);
    assert_eq!(campaign.accounts.ids, ["012345678901"]);
    assert!(campaign.accounts.include_child_ous);
    assert_eq!(campaign.accounts.exclude_accounts, ["999988887777"]);
}

#[test]
fn regions_follow_the_aws_region_pattern() {
    rejects(&[("regions", "[]")], "regions", "at least one region");
    for bad in [
        "US-EAST-1",
        "useast1",
        "us-east",
        "us-east-1a",
        "mars-north-1x",
    ] {
        rejects(
            &[("regions", &format!("['{bad}']"))],
            "regions[0]",
            "AWS region name",
        );
    }
    rejects(
        &[("regions", "[us-east-1, us-east-1]")],
        "regions[1]",
        "listed twice",
    );
    let campaign = valid(&[(
        "regions",
        "[us-east-1, eu-central-2, ap-southeast-4, us-gov-west-1, cn-north-1, me-south-1]",
    )]);
    assert_eq!(campaign.regions.len(), 6);
}

#[test]
fn role_name_external_id_and_session_duration() {
    rejects(
        &[("role", "{ name: 'has space' }")],
        "role.name",
        "IAM role name",
    );
    rejects(
        &[("role", &format!("{{ name: {} }}", "r".repeat(65)))],
        "role.name",
        "1-64",
    );
    rejects(
        &[("role", "{ external_id: x }")],
        "role.external_id",
        "2-1224",
    );
    rejects(
        &[("role", &format!("{{ external_id: {} }}", "e".repeat(1225)))],
        "role.external_id",
        "2-1224",
    );
    rejects(
        &[("role", "{ external_id: 'a b' }")],
        "role.external_id",
        "2-1224",
    );
    rejects(
        &[("role", "{ session_duration: 899 }")],
        "role.session_duration",
        "between 15m and 1h",
    );
    rejects(
        &[("role", "{ session_duration: 2h }")],
        "role.session_duration",
        "between 15m and 1h",
    );
    let campaign = valid(&[(
        "role",
        &format!(
            "{{ name: Ops.Role-1, external_id: '{}', session_duration: 15m }}",
            "x+=,.@:/-_".repeat(122) + "ab"
        ),
    )]);
    assert_eq!(campaign.role.name, "Ops.Role-1");
    assert_eq!(campaign.role.external_id.as_ref().unwrap().len(), 1222);
    assert_eq!(campaign.role.session_duration, Duration::from_secs(900));
    assert_eq!(
        campaign.role.arn("111122223333"),
        "arn:aws:iam::111122223333:role/Ops.Role-1"
    );
}

#[test]
fn targets_choose_exactly_one_selector() {
    rejects(
        &[("targets", "{}")],
        "targets",
        "exactly one of all: true, instance_ids or tags, got none",
    );
    rejects(
        &[(
            "targets",
            "{ all: true, instance_ids: [i-0123456789abcdef0] }",
        )],
        "targets",
        "got all and instance_ids",
    );
    for bad in [
        "i-123",
        "i-0123456789ABCDEF0",
        "i-0123456789abcdef",
        "mi-01234567",
        "x-01234567",
    ] {
        rejects(
            &[("targets", &format!("{{ instance_ids: ['{bad}'] }}"))],
            "targets.instance_ids[0]",
            "instance id",
        );
    }
    rejects(
        &[("targets", "{ instance_ids: [i-01234567, i-01234567] }")],
        "targets.instance_ids[1]",
        "listed twice",
    );
    let campaign = valid(&[(
        "targets",
        "{ instance_ids: [i-01234567, i-0123456789abcdef0, mi-0123456789abcdef0], platform: Windows, online_only: false }",
    )]);
    assert_eq!(
        campaign.targets.selector,
        TargetSelector::InstanceIds(vec![
            "i-01234567".into(),
            "i-0123456789abcdef0".into(),
            "mi-0123456789abcdef0".into()
        ])
    );
    assert_eq!(campaign.targets.platform, Some(Platform::Windows));
    assert!(!campaign.targets.online_only);
    rejects(
        &[("targets", "{ all: true, platform: Solaris }")],
        "targets.platform",
        "unknown variant `Solaris`",
    );
}

#[test]
fn tag_filters_have_awss_limits() {
    rejects(
        &[(
            "targets",
            "{ tags: { a: '1', b: '2', c: '3', d: '4', e: '5', f: '6' } }",
        )],
        "targets.tags",
        "at most 5 tag keys",
    );
    rejects(
        &[("targets", "{ tags: { 'tag:PatchGroup': web } }")],
        "targets.tags.tag:PatchGroup",
        "without the \"tag:\" prefix",
    );
    rejects(
        &[("targets", "{ tags: { PatchGroup: [] } }")],
        "targets.tags.PatchGroup",
        "1-50 values",
    );
    rejects(
        &[(
            "targets",
            &format!("{{ tags: {{ PatchGroup: ['{}'] }} }}", "v".repeat(257)),
        )],
        "targets.tags.PatchGroup[0]",
        "at most 256",
    );
    let campaign = valid(&[(
        "targets",
        "{ tags: { PatchGroup: web, Environment: [prod, staging] } }",
    )]);
    let TargetSelector::Tags(tags) = campaign.targets.selector else {
        panic!("expected tags");
    };
    assert_eq!(tags["PatchGroup"], ["web"]);
    assert_eq!(tags["Environment"], ["prod", "staging"]);
}

#[test]
fn rate_control_uses_sendcommands_syntax_for_each_field() {
    for field in ["location_concurrency", "max_concurrency"] {
        rejects(
            &[("rate_control", &format!("{{ {field}: 0 }}"))],
            &format!("rate_control.{field}"),
            "at least 1",
        );
        rejects(
            &[("rate_control", &format!("{{ {field}: '0%' }}"))],
            &format!("rate_control.{field}"),
            "at least 1",
        );
    }
    for field in ["location_max_errors", "max_errors"] {
        rejects(
            &[("rate_control", &format!("{{ {field}: 101% }}"))],
            &format!("rate_control.{field}"),
            "0% to 100%",
        );
        rejects(
            &[("rate_control", &format!("{{ {field}: -1 }}"))],
            &format!("rate_control.{field}"),
            "at least 0",
        );
    }
    let campaign = valid(&[(
        "rate_control",
        "{ location_concurrency: 3, location_max_errors: 0%, max_concurrency: 10%, max_errors: '5' }",
    )]);
    assert_eq!(
        campaign.rate_control.location_concurrency,
        RateValue::Count(3)
    );
    assert_eq!(
        campaign.rate_control.location_max_errors,
        RateValue::Percent(0)
    );
    assert_eq!(
        campaign.rate_control.max_concurrency,
        RateValue::Percent(10)
    );
    assert_eq!(campaign.rate_control.max_errors, RateValue::Count(5));
}

#[test]
fn api_rate_limits_are_positive_requests_per_second() {
    for field in [
        "send_command",
        "list_command_invocations",
        "describe_instance_information",
        "describe_instance_patch_states",
        "assume_role",
    ] {
        for bad in ["0", "-2", "10001", ".nan"] {
            rejects(
                &[("api_rate_limits", &format!("{{ {field}: {bad} }}"))],
                &format!("api_rate_limits.{field}"),
                "above 0 and at most 10000",
            );
        }
    }
    let campaign = valid(&[("api_rate_limits", "{ send_command: 0.5, assume_role: 20 }")]);
    assert_eq!(campaign.api_rate_limits.send_command, 0.5);
    assert_eq!(campaign.api_rate_limits.assume_role, 20.0);
    assert_eq!(campaign.api_rate_limits.list_command_invocations, 10.0);
}

#[test]
fn schedule_expression_timezone_and_missed_occurrences() {
    rejects(
        &[("schedule", "{ expression: 'cron(0 2 * * * *)' }")],
        "schedule.expression",
        "exactly one of",
    );
    rejects(
        &[("schedule", "{ expression: 'daily' }")],
        "schedule.expression",
        "must be cron(",
    );
    rejects(
        &[(
            "schedule",
            "{ expression: 'rate(1 day)', timezone: Nowhere/Town }",
        )],
        "schedule.timezone",
        "unknown timezone",
    );
    rejects(
        &[(
            "schedule",
            "{ expression: 'rate(1 day)', on_missed: twice }",
        )],
        "schedule.on_missed",
        "unknown variant `twice`",
    );
    let campaign = valid(&[(
        "schedule",
        "{ expression: 'cron(0 2 ? * TUE#2 *)', timezone: America/New_York, on_missed: skip }",
    )]);
    let schedule = campaign.schedule.unwrap();
    assert_eq!(schedule.on_missed, MissedOccurrence::Skip);
    assert_eq!(schedule.schedule.timezone, chrono_tz::America::New_York);
    assert_eq!(
        schedule.schedule.expression.as_str(),
        "cron(0 2 ? * TUE#2 *)"
    );
}

#[test]
fn triggers_name_known_events_once() {
    let campaign = valid(&[(
        "triggers",
        "[{ event: ec2-instance-running, delay: 5m }, { event: ssm-instance-registered }]",
    )]);
    assert_eq!(campaign.triggers[0].event, TriggerEvent::Ec2InstanceRunning);
    assert_eq!(campaign.triggers[0].delay, Duration::from_secs(300));
    assert_eq!(campaign.triggers[1].delay, Duration::ZERO);
    rejects(
        &[("triggers", "[{ event: instance-exploded }]")],
        "triggers[0].event",
        "unknown variant",
    );
    rejects(
        &[("triggers", "[{ event: ec2-instance-running, delay: 2h }]")],
        "triggers[0].delay",
        "between 0s and 1h",
    );
    rejects(
        &[(
            "triggers",
            "[{ event: ec2-instance-running }, { event: ec2-instance-running }]",
        )],
        "triggers[1].event",
        "listed twice",
    );
}

#[test]
fn output_is_a_directory_or_an_s3_prefix() {
    assert_eq!(
        valid(&[("output", "s3://acme-results/runs/nightly/")]).output,
        OutputLocation::S3 {
            bucket: "acme-results".into(),
            prefix: "runs/nightly".into()
        }
    );
    assert_eq!(
        valid(&[("output", "/var/lib/flotilla")]).output,
        OutputLocation::Local(PathBuf::from("/var/lib/flotilla"))
    );
    rejects(&[("output", "s3://Bad_Bucket/x")], "output", "S3 bucket");
    rejects(&[("output", "s3://ab")], "output", "S3 bucket");
    rejects(
        &[("output", "gs://bucket/x")],
        "output",
        "local directory or s3://",
    );
    rejects(&[("output", "''")], "output", "empty");
}

#[test]
fn every_problem_is_reported_at_once() {
    let yaml = spec_with(&[
        ("name", "'bad name'"),
        ("regions", "[nowhere]"),
        ("rate_control", "{ max_errors: 'x' }"),
    ]);
    let errors = parse(&yaml).unwrap_err();
    assert_eq!(errors.len(), 3, "{errors:#?}");
}

#[test]
fn json_specs_read_like_yaml_ones() {
    let json = r#"{
        "name": "json-campaign",
        "steps": [{"name": "scan", "document": "AWS-RunPatchBaseline", "parameters": {"Operation": "Scan"}, "timeout": 600}],
        "accounts": {"ids": ["111122223333"]},
        "regions": ["us-east-1"],
        "targets": {"tags": {"PatchGroup": ["web", "db"]}},
        "rate_control": {"max_concurrency": "10%", "max_errors": 0}
    }"#;
    let campaign = Campaign::parse(json, SpecFormat::Json).unwrap();
    assert_eq!(campaign.steps[0].timeout, Duration::from_secs(600));
    assert_eq!(
        campaign.rate_control.max_concurrency,
        RateValue::Percent(10)
    );
    let error = Campaign::parse(r#"{"name": "x", "bogus": 1}"#, SpecFormat::Json).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("bogus: unknown field `bogus`"),
        "{error}"
    );
    let error = Campaign::parse(&format!("{json} trailing"), SpecFormat::Json).unwrap_err();
    assert!(error.to_string().contains("trailing characters"), "{error}");
}

#[test]
fn a_stored_spec_reads_back_as_the_same_campaign() {
    for path in example_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let campaign = Campaign::parse(&text, SpecFormat::Yaml).unwrap();
        let stored = serde_json::to_string(&campaign.spec).unwrap();
        let reread = Campaign::parse(&stored, SpecFormat::Json).unwrap();
        assert_eq!(reread.spec, campaign.spec, "{}", path.display());
        assert_eq!(reread.steps, campaign.steps);
        assert_eq!(reread.accounts, campaign.accounts);
        assert_eq!(reread.targets, campaign.targets);
        assert_eq!(reread.rate_control, campaign.rate_control);
    }
}

fn example_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "examples missing in {}", dir.display());
    files
}

#[test]
fn yaml_aliases_are_refused_before_they_are_expanded() {
    // A 100 KB anchored string aliased 2,000 times in a valid field: 200 MB once
    // expanded. Refused on sight of the first alias.
    let bomb = spec_with(&[(
        "steps",
        &format!(
            "\n  - name: s\n    document: AWS-RunShellScript\n    parameters:\n      commands: [&big \"{}\", {}]",
            "x".repeat(100_000),
            vec!["*big"; 2_000].join(", ")
        ),
    )]);
    let errors = parse(&bomb).unwrap_err();
    assert!(
        errors[0].contains("YAML aliases (`*name`) are not allowed") && errors[0].contains("line "),
        "{errors:?}"
    );
    // Even one small alias: a spec is written out, not composed.
    rejects(
        &[("regions", "&r [us-east-1]"), ("description", "*r")],
        "",
        "aliases",
    );
    // An anchor that is never used is harmless.
    valid(&[("regions", "&r [us-east-1]")]);
}

#[test]
fn deep_large_and_malformed_specs_are_refused_with_their_limit() {
    let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    rejects(
        &[("description", &deep)],
        "",
        "nested deeper than 16 levels",
    );
    let huge = spec_with(&[("description", &format!("\"{}\"", "x".repeat(600 * 1024)))]);
    let errors = parse(&huge).unwrap_err();
    assert!(errors[0].contains("at most 524288"), "{errors:?}");
    let errors = parse("name: [unclosed\n").unwrap_err();
    assert!(errors[0].contains("not valid YAML"), "{errors:?}");
}

#[test]
fn run_by_names_principals_and_roles() {
    assert_eq!(
        valid(&[("run_by", "[alice@example.com, role:operator]")])
            .spec
            .run_by,
        ["alice@example.com", "role:operator"]
    );
    rejects(
        &[("run_by", "[\"not a name\"]")],
        "run_by[0]",
        "principal name",
    );
}

#[test]
fn secrets_are_referenced_from_ssm_never_written_into_a_spec() {
    let step = |parameters: &str| {
        format!("\n  - name: s\n    document: AWS-RunShellScript\n    parameters: {{{parameters}}}")
    };
    rejects(
        &[("steps", &step("commands: [\"x\"], DbPassword: hunter2"))],
        "steps[0].parameters.DbPassword",
        "reference it from SSM Parameter Store",
    );
    rejects(
        &[("steps", &step("commands: [\"x\"], api_key: abc"))],
        "steps[0].parameters.api_key",
        "looks like a secret",
    );
    valid(&[(
        "steps",
        &step("commands: [\"x\"], DbPassword: \"{{ssm:/prod/db/password}}\""),
    )]);
    valid(&[(
        "steps",
        &step("commands: [\"x\"], ApiToken: \"{{ssm-secure:/prod/api}}\""),
    )]);
}

#[test]
fn a_rollout_reads_waves_bake_gates_and_approval() {
    use protocol::campaign::HealthGate;
    use protocol::spec::GateFailure;
    let campaign = valid(&[
        ("rate_control", "{ max_errors: \"5%\" }"),
        (
            "rollout",
            r#"
  waves: [1, 5, "10%", "100%"]
  canary_accounts: ["111122223333"]
  bake: 30m
  gates:
    - prometheus_url: http://prometheus:9090/
      query: 'sum(rate(flotilla_scheduler_target_results_total{status="Failed"}[5m])) > 0'
    - alertmanager_url: https://alertmanager.example:9093
      matchers: { campaign: base, severity: page }
  approve: true
  on_gate_failure: pause"#,
        ),
    ]);
    let rollout = campaign.rollout.unwrap();
    assert_eq!(
        rollout.waves,
        vec![
            RateValue::Count(1),
            RateValue::Count(5),
            RateValue::Percent(10),
            RateValue::Percent(100)
        ]
    );
    assert_eq!(rollout.canary_accounts, vec!["111122223333".to_string()]);
    assert_eq!(rollout.bake, Duration::from_secs(1800));
    assert_eq!(
        rollout.max_wave_errors,
        RateValue::Percent(5),
        "a wave may fail as much as the run may, unless told otherwise"
    );
    assert!(rollout.approve);
    assert_eq!(rollout.on_gate_failure, GateFailure::Pause);
    assert!(
        matches!(&rollout.gates[0], HealthGate::Prometheus { url, .. } if url == "http://prometheus:9090")
    );
    assert!(
        matches!(&rollout.gates[1], HealthGate::Alertmanager { matchers, .. } if matchers.len() == 2)
    );
    assert!(
        valid(&[]).rollout.is_none(),
        "no rollout: every target at once"
    );
}

#[test]
fn a_rollout_names_each_mistake() {
    rejects(
        &[("rollout", "{ bake: 1h }")],
        "rollout",
        "must list waves, canary_accounts",
    );
    rejects(
        &[("rollout", "{ waves: [0] }")],
        "rollout.waves[0]",
        "at least 1",
    );
    rejects(
        &[("rollout", "{ waves: [\"150%\"] }")],
        "rollout.waves[0]",
        "1% to 100%",
    );
    rejects(
        &[("rollout", "{ waves: [5, 2] }")],
        "rollout.waves[1]",
        "cumulative",
    );
    rejects(
        &[("rollout", "{ waves: [1], bake: 8d }")],
        "rollout.bake",
        "between 0s and 7d",
    );
    rejects(
        &[("rollout", "{ waves: [1], max_wave_errors: \"x\" }")],
        "rollout.max_wave_errors",
        "0% to 100%",
    );
    rejects(
        &[("rollout", "{ canary_accounts: [\"12\"] }")],
        "rollout.canary_accounts[0]",
        "12-digit account id",
    );
    rejects(
        &[(
            "rollout",
            "{ waves: [1], gates: [{ prometheus_url: http://p:9090 }] }",
        )],
        "rollout.gates[0].query",
        "is required",
    );
    rejects(
        &[("rollout", "{ waves: [1], gates: [{ query: up }] }")],
        "rollout.gates[0]",
        "exactly one of prometheus_url",
    );
    rejects(
        &[(
            "rollout",
            "{ waves: [1], gates: [{ prometheus_url: ftp://p, query: up }] }",
        )],
        "rollout.gates[0].prometheus_url",
        "http:// or https://",
    );
    rejects(
        &[(
            "rollout",
            "{ waves: [1], gates: [{ prometheus_url: \"http://u:pw@p\", query: up }] }",
        )],
        "rollout.gates[0].prometheus_url",
        "credentials",
    );
    rejects(
        &[(
            "rollout",
            "{ waves: [1], gates: [{ alertmanager_url: http://am }] }",
        )],
        "rollout.gates[0].matchers",
        "at least one label",
    );
    rejects(
        &[(
            "rollout",
            "{ waves: [1], gates: [{ alertmanager_url: http://am, matchers: { 1x: a } }] }",
        )],
        "rollout.gates[0].matchers.1x",
        "label names",
    );
    rejects(
        &[("rollout", "{ waves: [1], on_gate_failure: retry }")],
        "rollout.on_gate_failure",
        "expected `halt` or `pause`",
    );
}

#[test]
fn output_logging_names_an_s3_prefix_and_or_a_log_group() {
    let campaign = valid(&[(
        "output_logging",
        "{ s3: \"s3://flotilla-output/patch/\", cloudwatch_log_group: /flotilla/patch }",
    )]);
    let logging = campaign.output_logging.unwrap();
    assert_eq!(logging.s3_bucket.as_deref(), Some("flotilla-output"));
    assert_eq!(logging.s3_key_prefix.as_deref(), Some("patch"));
    assert_eq!(
        logging.cloudwatch_log_group.as_deref(),
        Some("/flotilla/patch")
    );
    assert_eq!(
        logging
            .s3_location("cmd-1", "i-0123456789abcdef0")
            .as_deref(),
        Some("s3://flotilla-output/patch/cmd-1/i-0123456789abcdef0/")
    );
    rejects(
        &[("output_logging", "{}")],
        "output_logging",
        "must name s3",
    );
    rejects(
        &[("output_logging", "{ s3: /tmp/out }")],
        "output_logging.s3",
        "must be s3://bucket/prefix",
    );
    rejects(
        &[("output_logging", "{ s3: \"s3://No_Such\" }")],
        "output_logging.s3",
        "S3 bucket",
    );
    rejects(
        &[("output_logging", "{ cloudwatch_log_group: \"bad group\" }")],
        "output_logging.cloudwatch_log_group",
        "CloudWatch Logs group",
    );
}

#[test]
fn notify_takes_https_webhooks_and_run_events() {
    use protocol::spec::{NotifyEvent, NotifyFormat};
    let campaign = valid(&[(
        "notify",
        "\n  - on: [halted, gate_failed]\n    webhook: https://hooks.slack.com/services/T/B/x\n    format: slack\n  - on: [completed]\n    webhook: http://127.0.0.1:9000/hook",
    )]);
    assert_eq!(campaign.notify.len(), 2);
    assert_eq!(campaign.notify[0].format, NotifyFormat::Slack);
    assert_eq!(campaign.notify[1].on, vec![NotifyEvent::Completed]);
    assert_eq!(
        campaign.notify[1].format,
        NotifyFormat::Json,
        "JSON unless told"
    );
    rejects(
        &[(
            "notify",
            "[{ on: [halted], webhook: \"http://hooks.example.com/x\" }]",
        )],
        "notify[0].webhook",
        "must be https://",
    );
    rejects(
        &[("notify", "[{ on: [], webhook: \"https://h.example\" }]")],
        "notify[0].on",
        "at least one event",
    );
    rejects(
        &[(
            "notify",
            "[{ on: [kill_switch], webhook: \"https://h.example\" }]",
        )],
        "notify[0].on",
        "deployment's default webhooks",
    );
    rejects(
        &[(
            "notify",
            "[{ on: [exploded], webhook: \"https://h.example\" }]",
        )],
        "notify[0].on[0]",
        "unknown variant",
    );
}

const TWO_WINDOWS: &str = r#"
  - name: sun-02
    schedule: cron(0 2 ? * SUN *)
    duration: 4h
  - name: wed-22
    schedule: cron(0 22 ? * WED *)
    duration: 2h
    timezone: Europe/Berlin"#;

#[test]
fn per_target_windows_name_each_window_by_a_tag_value() {
    let campaign = valid(&[
        ("window_tag", "PatchWindow"),
        ("windows", TWO_WINDOWS),
        ("rate_control", "{ location_concurrency: \"100%\" }"),
    ]);
    assert_eq!(campaign.window_tag.as_deref(), Some("PatchWindow"));
    let tag = campaign.window_tag().unwrap();
    assert_eq!(tag.names, vec!["sun-02".to_string(), "wed-22".to_string()]);
    // Sunday 2026-12-06 03:00 UTC: sun-02 open, wed-22 closed.
    let sunday = chrono::DateTime::parse_from_rfc3339("2026-12-06T03:00:00Z")
        .unwrap()
        .to_utc();
    assert_eq!(campaign.open_target_windows(sunday), vec![true, false]);
    // The last minute of sun-02 (it closes at 06:00) admits nothing new.
    let closing = chrono::DateTime::parse_from_rfc3339("2026-12-06T05:59:30Z")
        .unwrap()
        .to_utc();
    assert_eq!(campaign.open_target_windows(closing), vec![false, false]);
    // A window that never opens again admits at once: its instances are
    // reported not sent, and the run can end.
    let past = valid(&[
        ("window_tag", "PatchWindow"),
        (
            "windows",
            "\n  - name: once\n    schedule: cron(0 0 1 1 ? 2020)\n    duration: 1h",
        ),
        ("rate_control", "{ location_concurrency: \"100%\" }"),
    ]);
    assert_eq!(past.open_target_windows(sunday), vec![true]);
    assert!(
        past.target_window(Some(0))
            .unwrap()
            .state_at(sunday)
            .is_ok_and(|state| state == protocol::campaign::WindowState::Closed { opens: None })
    );
    let window = campaign.target_window(Some(1)).unwrap();
    assert!(
        matches!(&window, protocol::job::TargetWindow::Named { name, timezone, .. }
            if name == "wed-22" && timezone == "Europe/Berlin"),
        "{window:?}"
    );
    // What the worker reads back is what the scheduler meant: Wednesday
    // 22:00 Berlin is 21:00 UTC.
    let opens = window.state_at(sunday).unwrap().changes_at().unwrap();
    assert_eq!(opens.to_rfc3339(), "2026-12-09T21:00:00+00:00");
    assert!(
        campaign
            .target_window(None)
            .unwrap()
            .state_at(sunday)
            .is_err(),
        "an instance in no window is never sent"
    );
    // The next change of any window: sun-02 closes at 06:00.
    assert_eq!(
        campaign.next_window_change(sunday).unwrap().to_rfc3339(),
        "2026-12-06T06:00:00+00:00"
    );
    assert!(
        valid(&[("windows", TWO_WINDOWS)])
            .open_target_windows(sunday)
            .is_empty(),
        "names without window_tag are labels only"
    );
}

#[test]
fn per_target_windows_need_named_windows_every_location_and_no_waves() {
    let all_locations = ("rate_control", "{ location_concurrency: \"100%\" }");
    rejects(
        &[("window_tag", "PatchWindow"), all_locations],
        "window_tag",
        "needs windows",
    );
    rejects(
        &[
            ("window_tag", "PatchWindow"),
            ("windows", "\n  - schedule: rate(1 day)\n    duration: 1h"),
            all_locations,
        ],
        "windows[0].name",
        "is required with window_tag",
    );
    rejects(
        &[
            ("window_tag", "PatchWindow"),
            (
                "windows",
                "\n  - name: a\n    schedule: rate(1 day)\n    duration: 1h\n  - name: a\n    schedule: rate(2 days)\n    duration: 1h",
            ),
            all_locations,
        ],
        "windows[1].name",
        "\"a\" names two windows",
    );
    rejects(
        &[
            ("window_tag", "tag:PatchWindow"),
            ("windows", TWO_WINDOWS),
            all_locations,
        ],
        "window_tag",
        "without the \"tag:\" prefix",
    );
    rejects(
        &[("window_tag", "PatchWindow"), ("windows", TWO_WINDOWS)],
        "rate_control.location_concurrency",
        "must be 100% with window_tag, got 1 (the default)",
    );
    rejects(
        &[
            ("window_tag", "PatchWindow"),
            ("windows", TWO_WINDOWS),
            all_locations,
            ("rollout", "\n  waves: [1, \"100%\"]"),
        ],
        "window_tag",
        "cannot be combined with rollout",
    );
}
