//! The deployment files say what the code does: every manifest parses and has
//! what its kind needs, every flag they pass exists, KEDA scales the worker
//! Deployment on both work queues, Alertmanager posts to the scheduler's
//! /alerts, and every metric the alert rules and the dashboard use is one the
//! code exports. (`promtool` checks and unit-tests the rules in scripts/test;
//! `docker-compose config` checks the compose file there too.)

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use protocol::names::Names;
use serde::Deserialize;
use serde_norway::Value;

fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            Value::deserialize(document)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        })
        .collect()
}

fn manifests() -> Vec<(String, Value)> {
    let mut documents = Vec::new();
    for entry in std::fs::read_dir("deploy/k8s").unwrap() {
        let path = entry.unwrap().path();
        for document in yaml_documents(&path) {
            documents.push((path.display().to_string(), document));
        }
    }
    assert!(documents.len() >= 6, "deploy/k8s holds the manifests");
    documents
}

fn text<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    let mut current = value;
    for key in path {
        current = &current[*key];
    }
    current
        .as_str()
        .unwrap_or_else(|| panic!("{} is missing", path.join(".")))
}

/// `flotilla SUBCOMMAND --help` lists every `--flag` in `args`.
fn assert_flags_exist(args: &[String], origin: &str) {
    let help = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([args[0].as_str(), "--help"])
        .output()
        .unwrap();
    assert!(
        help.status.success(),
        "{origin}: `flotilla {}` is not a subcommand",
        args[0]
    );
    let help = String::from_utf8(help.stdout).unwrap();
    for flag in args.iter().filter(|arg| arg.starts_with("--")) {
        assert!(
            help.contains(flag.as_str()),
            "{origin}: `flotilla {}` has no {flag}",
            args[0]
        );
    }
}

#[test]
fn every_manifest_is_complete_and_passes_real_flags() {
    for (file, manifest) in manifests() {
        text(&manifest, &["apiVersion"]);
        let kind = text(&manifest, &["kind"]);
        text(&manifest, &["metadata", "name"]);
        if kind == "Deployment" {
            let containers = manifest["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .unwrap();
            for container in containers {
                assert!(
                    text(container, &["image"]).starts_with("flotilla"),
                    "{file}"
                );
                let args: Vec<String> = container["args"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|arg| arg.as_str().unwrap().to_string())
                    .collect();
                assert_flags_exist(&args, &file);
            }
        }
    }
}

#[test]
fn keda_scales_the_worker_deployment_on_both_work_queues_counting_unacked() {
    let manifests = manifests();
    let worker = manifests
        .iter()
        .find(|(_, m)| {
            m["kind"] == "Deployment" && text(m, &["metadata", "name"]).contains("worker")
        })
        .map(|(_, m)| text(m, &["metadata", "name"]).to_string())
        .unwrap();
    let (_, scaled) = manifests
        .iter()
        .find(|(_, m)| m["kind"] == "ScaledObject")
        .unwrap();
    assert_eq!(text(scaled, &["spec", "scaleTargetRef", "name"]), worker);
    let min = scaled["spec"]["minReplicaCount"].as_u64().unwrap();
    let max = scaled["spec"]["maxReplicaCount"].as_u64().unwrap();
    assert!(min >= 1 && max > min, "min {min}, max {max}");
    let names = Names::default();
    let mut queues = BTreeSet::new();
    for trigger in scaled["spec"]["triggers"].as_sequence().unwrap() {
        assert_eq!(text(trigger, &["type"]), "rabbitmq");
        // The management API's message count is ready + unacked.
        assert_eq!(text(trigger, &["metadata", "protocol"]), "http");
        assert_eq!(text(trigger, &["metadata", "mode"]), "QueueLength");
        queues.insert(text(trigger, &["metadata", "queueName"]).to_string());
        let auth = text(trigger, &["authenticationRef", "name"]);
        assert!(
            manifests
                .iter()
                .any(|(_, m)| m["kind"] == "TriggerAuthentication"
                    && text(m, &["metadata", "name"]) == auth),
            "trigger authentication {auth} exists"
        );
    }
    assert_eq!(
        queues,
        BTreeSet::from([names.bulk_queue(), names.urgent_queue()])
    );
}

#[test]
fn the_compose_stack_runs_every_service_with_real_flags_and_wires_alerts_to_the_scheduler() {
    let compose = &yaml_documents(Path::new("docker-compose.yml"))[0];
    let services = compose["services"].as_mapping().unwrap();
    for service in [
        "rabbitmq",
        "redis",
        "sim",
        "scheduler",
        "worker",
        "prometheus",
        "alertmanager",
        "grafana",
    ] {
        assert!(
            services.contains_key(service),
            "docker-compose.yml lacks {service}"
        );
    }
    assert!(
        compose["services"]["worker"]
            .get("container_name")
            .is_none(),
        "a named container cannot be scaled"
    );
    for service in ["sim", "scheduler", "worker"] {
        let args: Vec<String> = compose["services"][service]["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|arg| arg.as_str().unwrap().to_string())
            .collect();
        assert_flags_exist(&args, &format!("docker-compose.yml {service}"));
    }
    let alertmanager = &yaml_documents(Path::new("deploy/alertmanager/alertmanager.yml"))[0];
    let url = text(
        &alertmanager["receivers"][0]["webhook_configs"][0],
        &["url"],
    );
    assert_eq!(url, "http://scheduler:8080/alerts");
    // Alertmanager's groups fit in one request the scheduler takes.
    let max_alerts = alertmanager["receivers"][0]["webhook_configs"][0]["max_alerts"]
        .as_u64()
        .expect("the webhook sets max_alerts");
    assert!(
        max_alerts > 0 && max_alerts <= scheduler::triggers::MAX_ALERTS_PER_REQUEST as u64,
        "max_alerts {max_alerts}"
    );
    let prometheus = &yaml_documents(Path::new("deploy/prometheus/prometheus.yml"))[0];
    for rules in prometheus["rule_files"].as_sequence().unwrap() {
        assert!(
            Path::new("deploy/prometheus")
                .join(rules.as_str().unwrap())
                .exists()
        );
    }
}

#[test]
fn alert_rules_and_the_dashboard_use_only_metrics_the_code_exports() {
    let exported: String = ["worker/src/metrics.rs", "scheduler/src/metrics.rs"]
        .iter()
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect();
    let metric = regex::Regex::new(r"flotilla_[a-z_]+").unwrap();
    for file in [
        "deploy/prometheus/flotilla.rules.yml",
        "deploy/grafana/dashboards/flotilla.json",
    ] {
        let used: BTreeSet<String> = metric
            .find_iter(&std::fs::read_to_string(file).unwrap())
            .map(|found| {
                let name = found.as_str();
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(name)
                    .to_string()
            })
            .collect();
        assert!(used.len() >= 5, "{file} uses flotilla's metrics");
        for name in used {
            assert!(
                exported.contains(&format!("\"{name}\"")),
                "{file} uses {name}, which nothing exports"
            );
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("deploy/grafana/dashboards/flotilla.json").unwrap(),
    )
    .unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 8);
}
