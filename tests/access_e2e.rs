//! Trust I, end to end: every API route answered for every kind of caller —
//! no token, a viewer, an operator, an approver, an admin, an expired token, a
//! forged one, and the machine principals — and every act in the audit trail
//! exactly once, in Redis and in the audit files, with the right principal.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;

use api::auth::{AuthSettings, TokensFile};
use api::oidc::{OidcVerifier, TestIssuer};
use scheduler::audit::AuditRecord;
use scheduler::auth::{Role, new_token};
use support::{Backend, Stack};
use test_support::pki::Pki;

/// A caller of the walk: a name for messages, a token (or none), and the role
/// it authenticates as (`None`: it does not authenticate).
struct Caller {
    name: &'static str,
    token: Option<String>,
    role: Option<Role>,
}

use support::add_token;

/// Serves the stack's API with tokens for otto (operator), ada (admin) and
/// anna (approver); returns the port, their tokens, and the tokens file's
/// directory (removed when dropped).
async fn serve_with_three_principals(stack: &mut Stack) -> (u16, [String; 3], tempfile::TempDir) {
    let secrets = tempfile::tempdir().unwrap();
    let tokens_path = secrets.path().join("tokens");
    let tokens = [
        add_token(&tokens_path, "otto", Role::Operator, None),
        add_token(&tokens_path, "ada", Role::Admin, None),
        add_token(&tokens_path, "anna", Role::Approver, None),
    ];
    stack.api_config_mut().auth = AuthSettings {
        tokens_file: Some(TokensFile::open(tokens_path).unwrap()),
        metrics_open: true,
        ..AuthSettings::default()
    };
    let port = stack.serve_api().await;
    (port, tokens, secrets)
}

/// Reads every audit file under `dir`.
fn audit_files(dir: &std::path::Path) -> Vec<AuditRecord> {
    let mut records = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "gz") {
                let file = std::fs::File::open(&path).unwrap();
                let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(file));
                for line in std::io::BufRead::lines(reader) {
                    records.push(serde_json::from_str(&line.unwrap()).unwrap());
                }
            }
        }
    }
    records
}

/// How many files are under `dir`.
fn walkdir_count(dir: &std::path::Path) -> usize {
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else {
                count += 1;
            }
        }
    }
    count
}

/// (principal, action, outcome) → how many, the shape the assertions compare.
fn tally<'a>(
    records: impl IntoIterator<Item = &'a AuditRecord>,
) -> BTreeMap<(String, String, String), usize> {
    let mut tally = BTreeMap::new();
    for record in records {
        let outcome = if record.outcome.starts_with("error") {
            "error".to_string()
        } else {
            record.outcome.clone()
        };
        *tally
            .entry((record.principal.clone(), record.action.clone(), outcome))
            .or_default() += 1;
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_role_and_every_act_is_audited_once_on_redis() {
    walk_every_route(Backend::Real).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_role_and_every_act_is_audited_once_in_memory() {
    walk_every_route(Backend::Memory).await;
}

async fn walk_every_route(backend: Backend) {
    let mut stack = Stack::start_on(support::single_location(5, false), backend).await;
    let secrets = tempfile::tempdir().unwrap();
    let tokens_path = secrets.path().join("tokens");
    let audit_dir = tempfile::tempdir().unwrap();
    let sso = TestIssuer::new("https://sso.example", "k1").unwrap();
    let foreign = TestIssuer::new("https://sso.example", "k1").unwrap();
    let in_an_hour = support::now_unix_ms() / 1000 + 3600;
    let sso_claims = serde_json::json!({"sub": "sam@example.com", "aud": "flotilla", "exp": in_an_hour, "flotilla_role": "operator"});
    let callers = vec![
        Caller {
            name: "sso-operator",
            token: Some(sso.sign(sso_claims.clone()).unwrap()),
            role: Some(Role::Operator),
        },
        Caller {
            name: "sso-foreign-key",
            token: Some(foreign.sign(sso_claims).unwrap()),
            role: None,
        },
        Caller {
            name: "nobody",
            token: None,
            role: None,
        },
        Caller {
            name: "forged",
            token: Some(new_token().unwrap()),
            role: None,
        },
        Caller {
            name: "expired",
            token: Some(add_token(&tokens_path, "old-admin", Role::Admin, Some(1))),
            role: None,
        },
        Caller {
            name: "viewer",
            token: Some(add_token(&tokens_path, "vera", Role::Viewer, None)),
            role: Some(Role::Viewer),
        },
        Caller {
            name: "operator",
            token: Some(add_token(&tokens_path, "otto", Role::Operator, None)),
            role: Some(Role::Operator),
        },
        Caller {
            name: "approver",
            token: Some(add_token(&tokens_path, "anna", Role::Approver, None)),
            role: Some(Role::Approver),
        },
        Caller {
            name: "admin",
            token: Some(add_token(&tokens_path, "ada", Role::Admin, None)),
            role: Some(Role::Admin),
        },
        Caller {
            name: "alertmanager",
            token: Some(add_token(&tokens_path, "am", Role::Alertmanager, None)),
            role: Some(Role::Alertmanager),
        },
        Caller {
            name: "eventbridge",
            token: Some(add_token(&tokens_path, "eb", Role::Eventbridge, None)),
            role: Some(Role::Eventbridge),
        },
    ];
    let principal_of = |caller: &Caller| match caller.name {
        "sso-operator" => "sam@example.com",
        "viewer" => "vera",
        "operator" => "otto",
        "approver" => "anna",
        "admin" => "ada",
        "alertmanager" => "am",
        "eventbridge" => "eb",
        _ => "unknown",
    };
    stack.api_config_mut().auth = AuthSettings {
        tokens_file: Some(TokensFile::open(tokens_path.clone()).unwrap()),
        oidc: Some(
            OidcVerifier::new(&sso.issuer, "flotilla", &sso.jwks(), "flotilla_role", "sub")
                .unwrap(),
        ),
        metrics_open: true,
        client_certificates: false,
    };
    stack.scheduler_config_mut().audit_output = Some(protocol::campaign::OutputLocation::Local(
        audit_dir.path().to_path_buf(),
    ));
    let port = stack.serve_api().await;
    let admin = callers[8].token.clone().unwrap();

    // A stored campaign and a run to act on, made by the admin.
    let spec = serde_json::to_string(
        &stack
            .campaign("guarded", support::one_step("  max_errors: 0\n"))
            .spec,
    )
    .unwrap();
    let (status, body) = support::http_as(
        port,
        Some(&admin),
        "POST",
        "/campaigns",
        "application/json",
        &spec,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // It changes hosts: another principal approves it before it runs.
    let approver = callers[7].token.clone().unwrap();
    let (status, body) = support::http_as(
        port,
        Some(&approver),
        "POST",
        "/campaigns/guarded/versions/1/approve",
        "application/json",
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = support::http_as(
        port,
        Some(&admin),
        "POST",
        "/campaigns/guarded/runs",
        "application/json",
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let run_id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut expected: Vec<AuditRecord> = Vec::new();
    let record = |principal: &str, action: &str, outcome: &str| AuditRecord {
        time_ms: 0,
        principal: principal.into(),
        role: String::new(),
        source: String::new(),
        action: action.into(),
        object: String::new(),
        reason: String::new(),
        request_id: String::new(),
        outcome: outcome.into(),
    };
    // The stack's setup armed the new deployment: an audited act too.
    expected.push(record("test-setup", "kill:arm", "ok"));
    expected.push(record("ada", "campaigns:apply", "ok"));
    expected.push(record("anna", "campaigns:approve", "ok"));
    expected.push(record("ada", "runs:start", "ok"));

    let event = r#"{"source":"aws.ec2","detail-type":"EC2 Instance State-change Notification","account":"123456789012","region":"us-east-1","detail":{"instance-id":"i-0123456789abcdef0","state":"stopped"}}"#;
    let alert = r#"{"alerts":[{"status":"resolved","labels":{"alertname":"Quiet"}}]}"#;
    let run_path = format!("/runs/{run_id}");
    let pause_path = format!("/runs/{run_id}/pause");
    let approve_path = format!("/runs/{run_id}/approve");
    // A freeze in the future: it changes nothing the walk does.
    let tomorrow = chrono::Utc::now() + chrono::Duration::days(1);
    let freeze = serde_json::json!({
        "from": tomorrow.to_rfc3339(),
        "to": (tomorrow + chrono::Duration::hours(1)).to_rfc3339(),
        "reason": "walk",
    })
    .to_string();
    // (method, path, body, action for the audit, roles allowed)
    use Role::*;
    let readers = [Viewer, Operator, Approver, Admin];
    let routes: Vec<(&str, &str, &str, &str, Vec<Role>)> = vec![
        ("GET", "/campaigns", "", "read", readers.to_vec()),
        ("GET", "/campaigns/guarded", "", "read", readers.to_vec()),
        (
            "POST",
            "/campaigns",
            spec.as_str(),
            "campaigns:apply",
            vec![Operator, Admin],
        ),
        (
            "POST",
            "/campaigns/guarded/runs",
            "{\"plan_only\": true}",
            "runs:start",
            vec![Operator, Admin],
        ),
        (
            "POST",
            "/campaigns/guarded/versions/1/approve",
            "",
            "campaigns:approve",
            vec![Approver, Admin],
        ),
        ("GET", "/runs", "", "read", readers.to_vec()),
        ("GET", run_path.as_str(), "", "read", readers.to_vec()),
        (
            "POST",
            pause_path.as_str(),
            "{\"reason\":\"walk\"}",
            "runs:pause",
            vec![Operator, Admin],
        ),
        (
            "POST",
            approve_path.as_str(),
            "{\"reason\":\"walk\"}",
            "runs:approve",
            vec![Approver, Admin],
        ),
        ("GET", "/kill", "", "read", readers.to_vec()),
        ("GET", "/calendar", "", "read", readers.to_vec()),
        (
            "POST",
            "/calendar",
            freeze.as_str(),
            "calendar:manage",
            vec![Approver, Admin],
        ),
        (
            "POST",
            "/kill?campaign=guarded",
            "{\"reason\":\"walk\"}",
            "kill:engage",
            vec![Operator, Admin],
        ),
        (
            "DELETE",
            "/kill?campaign=guarded",
            "",
            "kill:release",
            vec![Admin],
        ),
        ("POST", "/events", event, "events:post", vec![Eventbridge]),
        ("POST", "/alerts", alert, "alerts:post", vec![Alertmanager]),
        ("GET", "/audit?limit=1", "", "audit:read", readers.to_vec()),
        ("GET", "/tokens", "", "tokens:manage", vec![Admin]),
    ];
    for (method, path, body, action, allowed) in &routes {
        for caller in &callers {
            let (status, answer) = support::http_as(
                port,
                caller.token.as_deref(),
                method,
                path,
                "application/json",
                body,
            )
            .await;
            let mutating = *method != "GET";
            match caller.role {
                None => {
                    assert_eq!(status, 401, "{} {method} {path}: {answer}", caller.name);
                    expected.push(record("unknown", "auth:refused", "unauthenticated"));
                }
                Some(role) if allowed.contains(&role) => {
                    assert!(
                        status != 401 && status != 403 && status < 500,
                        "{} {method} {path} should be allowed: {status} {answer}",
                        caller.name
                    );
                    if mutating {
                        let outcome = if (200..300).contains(&status) {
                            "ok"
                        } else {
                            "error"
                        };
                        expected.push(record(principal_of(caller), action, outcome));
                    }
                }
                Some(role) => {
                    assert_eq!(status, 403, "{} {method} {path}: {answer}", caller.name);
                    let permission_named =
                        answer.contains("lacks the permission") && answer.contains(role.as_str());
                    assert!(permission_named, "the 403 names what is missing: {answer}");
                    expected.push(record(principal_of(caller), action, "denied"));
                }
            }
        }
    }
    // The public routes need nothing.
    assert_eq!(
        support::http(port, "GET", "/healthz", "text/plain", "")
            .await
            .0,
        200
    );
    assert_eq!(
        support::http(port, "GET", "/metrics", "text/plain", "")
            .await
            .0,
        200
    );
    // An admin makes and revokes a token through the API; the new token works.
    let (status, body) = support::http_as(
        port,
        Some(&admin),
        "POST",
        "/tokens",
        "application/json",
        r#"{"name":"vic","role":"viewer","expires_in":"1h"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    expected.push(record("ada", "tokens:manage", "ok"));
    let vic = serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        support::http_as(port, Some(&vic), "GET", "/runs", "", "")
            .await
            .0,
        200
    );
    let (status, _) = support::http_as(
        port,
        Some(&admin),
        "DELETE",
        "/tokens/vic",
        "application/json",
        "",
    )
    .await;
    assert_eq!(status, 200);
    expected.push(record("ada", "tokens:manage", "ok"));
    assert_eq!(
        support::http_as(port, Some(&vic), "GET", "/runs", "", "")
            .await
            .0,
        401
    );
    expected.push(record("unknown", "auth:refused", "unauthenticated"));

    // The run records who started it.
    let (_, body) = support::http_as(port, Some(&admin), "GET", &run_path, "", "").await;
    let shown: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(shown["progress"]["started_by"], "ada", "{body}");

    // Everything above is in the trail exactly once, and nothing else is.
    let (status, body) =
        support::http_as(port, Some(&admin), "GET", "/audit?limit=1000", "", "").await;
    assert_eq!(status, 200, "{body}");
    let trail: Vec<AuditRecord> = serde_json::from_str(&body).unwrap();
    assert_eq!(tally(&trail), tally(&expected), "the audit stream");
    assert!(
        trail
            .iter()
            // Arming was done from the command line, not over HTTP.
            .filter(|record| record.action != "kill:arm")
            .all(|record| record.source == "127.0.0.1" && !record.request_id.is_empty())
    );
    assert!(
        trail
            .iter()
            .filter(|record| record.action == "runs:pause" && record.outcome == "ok")
            .all(|record| record.reason == "walk" && record.object.ends_with("/pause")),
        "the reason and object of an act are recorded"
    );
    // The files follow the stream in batches, written by the scheduler's
    // tick: everything is there within seconds, in a few files, not one each.
    let mut files = Vec::new();
    for _ in 0..100 {
        files = audit_files(audit_dir.path());
        if files.len() >= expected.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(tally(&files), tally(&expected), "the audit files");
    let file_count = walkdir_count(audit_dir.path());
    assert!(
        file_count * 4 < expected.len(),
        "{file_count} audit files for {} records",
        expected.len()
    );
    // Filters.
    let (_, body) = support::http_as(
        port,
        Some(&admin),
        "GET",
        "/audit?principal=otto&action=runs:pause",
        "",
        "",
    )
    .await;
    let otto: Vec<AuditRecord> = serde_json::from_str(&body).unwrap();
    assert_eq!(otto.len(), 1, "{body}");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_credential_gets_a_bearer_challenge() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stack = Stack::start(support::single_location(1, false)).await;
    let secrets = tempfile::tempdir().unwrap();
    let tokens_path = secrets.path().join("tokens");
    add_token(&tokens_path, "ada", Role::Admin, None);
    stack.api_config_mut().auth = AuthSettings {
        tokens_file: Some(TokensFile::open(tokens_path).unwrap()),
        metrics_open: false,
        ..AuthSettings::default()
    };
    let port = stack.serve_api().await;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(
            b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer flt_nope\r\n\r\n",
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.0 401"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer realm=\"flotilla\", error=\"invalid_token\""),
        "{response}"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rs256_sso_token_of_a_2048_bit_key_is_accepted_by_the_api() {
    let mut stack = Stack::start(support::single_location(1, false)).await;
    let sso = TestIssuer::new_rsa("https://sso.example", "rsa-1").unwrap();
    stack.api_config_mut().auth = AuthSettings {
        oidc: Some(
            OidcVerifier::new(&sso.issuer, "flotilla", &sso.jwks(), "flotilla_role", "sub")
                .unwrap(),
        ),
        metrics_open: false,
        ..AuthSettings::default()
    };
    let port = stack.serve_api().await;
    let in_an_hour = support::now_unix_ms() / 1000 + 3600;
    let token = sso
        .sign(serde_json::json!({"sub": "rita@example.com", "aud": "flotilla", "exp": in_an_hour, "flotilla_role": "viewer"}))
        .unwrap();
    assert!(token.len() > 512, "{} characters", token.len());
    let (status, body) =
        support::http_as(port, Some(&token), "GET", "/runs", "text/plain", "").await;
    assert_eq!(status, 200, "{body}");
    // Past the bound, still refused before it is parsed.
    let oversized = format!("{token}{}", "A".repeat(4096));
    let (status, _) =
        support::http_as(port, Some(&oversized), "GET", "/runs", "text/plain", "").await;
    assert_eq!(status, 401);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_the_token_of_its_environment() {
    let mut stack = Stack::start_on(support::single_location(1, false), Backend::Memory).await;
    let secrets = tempfile::tempdir().unwrap();
    let tokens_path = secrets.path().join("tokens");
    let token = add_token(&tokens_path, "vera", Role::Viewer, None);
    let token_file = secrets.path().join("my-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    stack.api_config_mut().auth = AuthSettings {
        tokens_file: Some(TokensFile::open(tokens_path).unwrap()),
        metrics_open: true,
        ..AuthSettings::default()
    };
    let port = stack.serve_api().await;
    let api = format!("http://127.0.0.1:{port}");
    let cli = |env: Vec<(&'static str, String)>| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
        command
            .args(["run", "list", "--format", "json"])
            .env("FLOTILLA_API_URL", &api)
            .env_remove("FLOTILLA_TOKEN")
            .env_remove("FLOTILLA_TOKEN_FILE");
        for (key, value) in env {
            command.env(key, value);
        }
        command.output()
    };
    let with_token = cli(vec![("FLOTILLA_TOKEN", token.clone())]).await.unwrap();
    assert!(with_token.status.success(), "{with_token:?}");
    let with_file = cli(vec![(
        "FLOTILLA_TOKEN_FILE",
        token_file.display().to_string(),
    )])
    .await
    .unwrap();
    assert!(with_file.status.success(), "{with_file:?}");
    let without = cli(Vec::new()).await.unwrap();
    assert!(!without.status.success());
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(
        stderr.contains("authentication required") && stderr.contains("401"),
        "{stderr}"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_that_changes_hosts_runs_only_once_someone_else_approves_it() {
    let mut stack = Stack::start(support::single_location(3, false)).await;
    let (port, [otto, ada, anna], _secrets) = serve_with_three_principals(&mut stack).await;
    let post = |token: &str, path: &str, body: &str| {
        let (token, path, body) = (token.to_string(), path.to_string(), body.to_string());
        async move {
            support::http_as(port, Some(&token), "POST", &path, "application/json", &body).await
        }
    };
    let install = serde_json::to_string(
        &stack
            .campaign("install", support::one_step("  max_errors: 0\n"))
            .spec,
    )
    .unwrap();
    let (status, body) = post(&otto, "/campaigns", &install).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"needs_approval\":true"), "{body}");

    let (status, body) = post(&otto, "/campaigns/install/runs", "").await;
    assert_eq!(status, 409, "no run before an approval: {body}");
    assert!(
        body.contains("flotilla campaign approve install --version 1"),
        "{body}"
    );
    let (status, _) = post(&otto, "/campaigns/install/versions/1/approve", "").await;
    assert_eq!(status, 403, "an operator does not approve");

    // The admin writes version 2 and cannot approve it itself.
    let changed = install.replace("echo hi", "echo hello");
    let (status, body) = post(&ada, "/campaigns", &changed).await;
    assert!(status == 200 && body.contains("\"version\":2"), "{body}");
    let (status, body) = post(&ada, "/campaigns/install/versions/2/approve", "").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("two-person rule") && body.contains("ada wrote install v2"),
        "{body}"
    );
    // Nor through a second name: an approver token ada makes for someone
    // approves nothing ada wrote, and the trail says whom it was made for.
    let (status, body) = post(
        &ada,
        "/tokens",
        r#"{"name": "mallory", "role": "approver"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mallory = serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = post(&mallory, "/campaigns/install/versions/2/approve", "").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("made the token mallory approves with"),
        "{body}"
    );
    let (_, body) = support::http_as(
        port,
        Some(&ada),
        "GET",
        "/audit?action=tokens:manage",
        "",
        "",
    )
    .await;
    let made: Vec<AuditRecord> = serde_json::from_str(&body).unwrap();
    assert!(
        made.iter().any(|record| record
            .reason
            .contains("token for mallory (role approver) made by ada")),
        "{made:?}"
    );
    let (status, body) = post(&anna, "/campaigns/install/versions/2/approve", "").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(&anna, "/campaigns/install/versions/9/approve", "").await;
    assert_eq!(status, 404, "{body}");

    let (status, body) = post(&otto, "/campaigns/install/runs", "").await;
    assert_eq!(status, 200, "{body}");
    let run_id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();

    // The change, its author, its approver and its run, linked in the trail.
    let (_, body) = support::http_as(port, Some(&ada), "GET", "/audit", "", "").await;
    let trail: Vec<AuditRecord> = serde_json::from_str(&body).unwrap();
    let applied = trail
        .iter()
        .find(|record| record.action == "campaigns:apply" && record.principal == "ada")
        .unwrap();
    assert!(
        applied
            .reason
            .contains("install v2 (new version), changes hosts"),
        "{applied:?}"
    );
    let approved = trail
        .iter()
        .find(|record| record.action == "campaigns:approve" && record.outcome == "ok")
        .unwrap();
    assert_eq!(approved.principal, "anna");
    assert!(
        approved
            .reason
            .contains("install v2 written by ada, approved by anna"),
        "{approved:?}"
    );
    let started = trail
        .iter()
        .find(|record| record.action == "runs:start" && record.outcome == "ok")
        .unwrap();
    assert_eq!(started.principal, "otto");
    assert!(
        started.reason.contains(&format!(
            "run {run_id} of install v2 written by ada, approved by anna"
        )),
        "{started:?}"
    );

    // Deleting retires the name, not the history.
    let (status, _) =
        support::http_as(port, Some(&ada), "DELETE", "/campaigns/install", "", "").await;
    assert_eq!(status, 204);
    let (status, _) =
        support::http_as(port, Some(&otto), "GET", "/campaigns/install", "", "").await;
    assert_eq!(status, 404);
    let (status, _) = post(&otto, "/campaigns/install/runs", "").await;
    assert_eq!(status, 404, "a deleted campaign starts nothing");
    let (status, body) = support::http_as(
        port,
        Some(&otto),
        "GET",
        "/campaigns/install/versions/2",
        "",
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let version: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (version["author"].as_str(), version["approver"].as_str()),
        (Some("ada"), Some("anna"))
    );
    assert_eq!(version["spec"]["name"], "install");
    stack.teardown().await;
}

/// One HTTP/1.0 request over TLS with a client certificate; the status, or
/// `None` when the handshake failed.
async fn https_with_client_certificate(
    port: u16,
    ca: &std::path::Path,
    client: (&std::path::Path, &std::path::Path),
    request: &str,
) -> Option<u16> {
    let response = https_exchange(port, ca, Some(client), request).await?;
    response.split(' ').nth(1)?.parse().ok()
}

/// One request over TLS (with `client`'s certificate, if any): the whole
/// response, or `None` if the handshake or the exchange failed.
async fn https_exchange(
    port: u16,
    ca: &std::path::Path,
    client: Option<(&std::path::Path, &std::path::Path)>,
    request: &str,
) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((certificate, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(certificate).unwrap()],
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut stream = connector.connect(name, tcp).await.ok()?;
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    Some(response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_the_api_over_https_and_client_certificates_are_principals() {
    let mut stack = Stack::start_on(support::single_location(1, false), Backend::Memory).await;
    let pki = Pki::new();
    pki.issue("server", &["127.0.0.1"], "flotilla-scheduler", "server");
    pki.issue("ci-bot", &[], "ci-bot", "operator");
    let foreign = Pki::new();
    foreign.issue("mallory", &[], "mallory", "admin");
    let secrets = tempfile::tempdir().unwrap();
    let tokens_path = secrets.path().join("tokens");
    let viewer = add_token(&tokens_path, "vera", Role::Viewer, None);
    {
        let config = stack.api_config_mut();
        config.auth = AuthSettings {
            tokens_file: Some(TokensFile::open(tokens_path).unwrap()),
            client_certificates: true,
            ..AuthSettings::default()
        };
        config.tls = Some(
            api::tls::ApiTls::from_files(
                &pki.path("server.pem"),
                &pki.path("server.key"),
                Some(&pki.path("ca.pem")),
            )
            .unwrap(),
        );
    }
    stack.kill_scheduler();
    let port = support::free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    stack.start_scheduler_with_api(Some(listener));
    let api = format!("https://127.0.0.1:{port}");
    let ca = pki.path("ca.pem");
    let cli = |with_ca: bool| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
        command
            .args(["run", "list", "--format", "json"])
            .env("FLOTILLA_API_URL", &api)
            .env("FLOTILLA_TOKEN", &viewer)
            .env_remove("FLOTILLA_TOKEN_FILE")
            .env_remove("FLOTILLA_CA_FILE");
        if with_ca {
            command.arg("--ca-file").arg(&ca);
        }
        command.output()
    };
    let mut listed = cli(true).await.unwrap();
    for _ in 0..50 {
        if listed.status.success() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        listed = cli(true).await.unwrap();
    }
    assert!(listed.status.success(), "the CLI over https: {listed:?}");
    let untrusted = cli(false).await.unwrap();
    assert!(
        !untrusted.status.success(),
        "a certificate of an unknown CA was accepted"
    );

    // A client certificate of the client CA is the principal (CN) with the
    // role of its OU; one of another CA gets no connection at all.
    let body = r#"{"reason":"mtls"}"#;
    let post_kill = format!(
        "POST /kill?campaign=x HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let ci_bot = (pki.path("ci-bot.pem"), pki.path("ci-bot.key"));
    let status = https_with_client_certificate(port, &ca, (&ci_bot.0, &ci_bot.1), &post_kill).await;
    assert_eq!(
        status,
        Some(200),
        "an operator's certificate engages a campaign kill switch"
    );
    let release = "DELETE /kill?campaign=x HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    let status = https_with_client_certificate(port, &ca, (&ci_bot.0, &ci_bot.1), release).await;
    assert_eq!(status, Some(403), "an operator may not release it");
    let mallory = (foreign.path("mallory.pem"), foreign.path("mallory.key"));
    let status = https_with_client_certificate(port, &ca, (&mallory.0, &mallory.1), release).await;
    assert!(
        status.is_none(),
        "a foreign client certificate is refused in the handshake"
    );

    let audit = "GET /audit?principal=ci-bot HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    let status = https_with_client_certificate(port, &ca, (&ci_bot.0, &ci_bot.1), audit).await;
    assert_eq!(status, Some(200));
    let store_view = stack.scheduler.audit().unwrap();
    let records = store_view
        .query(&scheduler::audit::AuditQuery {
            principal: Some("ci-bot".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<(&str, &str)> = records
        .iter()
        .map(|record| (record.action.as_str(), record.outcome.as_str()))
        .collect();
    assert_eq!(actions, [("kill:engage", "ok"), ("kill:release", "denied")]);

    // The console: a client certificate signs in without a token, from
    // the sign-in page's own form.
    let certificate = Some((ci_bot.0.as_path(), ci_bot.1.as_path()));
    let page = https_exchange(
        port,
        &ca,
        certificate,
        &support::console::get("/ui/login", None),
    )
    .await
    .unwrap();
    let nonce = support::console::set_cookie(&page, "flotilla_login").unwrap();
    let body = format!("login_csrf={nonce}");
    let login = format!(
        "POST /ui/login HTTP/1.0\r\nHost: 127.0.0.1\r\nCookie: flotilla_login={nonce}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = https_exchange(port, &ca, certificate, &login)
        .await
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.0 303"),
        "a certificate's session is made: {answer}"
    );
    let session = support::console::set_cookie(&answer, "flotilla_session").unwrap();
    let runs = support::console::get("/ui/runs", Some(&session));
    let answer = https_exchange(port, &ca, certificate, &runs).await.unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    // The session holds only with the certificate it was made with: the
    // same cookie on a connection without it is sent to sign in again.
    let answer = https_exchange(port, &ca, None, &runs).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.0 303") && answer.contains("location: /ui/login"),
        "{answer}"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_names_who_may_run_it() {
    let mut stack = Stack::start_on(support::single_location(2, false), Backend::Memory).await;
    let secrets = tempfile::tempdir().unwrap();
    let tokens_path = secrets.path().join("tokens");
    let otto = add_token(&tokens_path, "otto", Role::Operator, None);
    let olga = add_token(&tokens_path, "olga", Role::Operator, None);
    let anna = add_token(&tokens_path, "anna", Role::Approver, None);
    stack.api_config_mut().auth = AuthSettings {
        tokens_file: Some(TokensFile::open(tokens_path).unwrap()),
        ..AuthSettings::default()
    };
    let port = stack.serve_api().await;
    // A read-only scan that only olga may run (approved because it names
    // where its results go).
    let scan = serde_json::to_string(
        &stack
            .campaign(
                "olgas-scan",
                "steps:\n  - name: scan\n    document: AWS-RunPatchBaseline\n    parameters: {Operation: Scan}\nrun_by: [olga, role:admin]\n",
            )
            .spec,
    )
    .unwrap();
    let post = |token: &str, path: &str, body: &str| {
        let (token, path, body) = (token.to_string(), path.to_string(), body.to_string());
        async move {
            support::http_as(port, Some(&token), "POST", &path, "application/json", &body).await
        }
    };
    assert_eq!(post(&otto, "/campaigns", &scan).await.0, 200);
    let (status, body) = post(&anna, "/campaigns/olgas-scan/versions/1/approve", "").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(&otto, "/campaigns/olgas-scan/runs", "").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("otto (role operator) may not run olgas-scan"),
        "{body}"
    );
    let (status, body) = post(&olga, "/campaigns/olgas-scan/runs", "").await;
    assert_eq!(status, 200, "{body}");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_requests_are_refused_and_recorded() {
    let mut stack = Stack::start_on(support::single_location(1, false), Backend::Memory).await;
    let secrets = tempfile::tempdir().unwrap();
    let tokens_path = secrets.path().join("tokens");
    let ada = add_token(&tokens_path, "ada", Role::Admin, None);
    stack.api_config_mut().auth = AuthSettings {
        tokens_file: Some(TokensFile::open(tokens_path).unwrap()),
        ..AuthSettings::default()
    };
    let port = stack.serve_api().await;
    let huge = "x".repeat(api::access::credentials::MAX_REQUEST_BYTES + 1);
    let (status, body) = support::http_as(
        port,
        Some(&ada),
        "POST",
        "/campaigns",
        "application/yaml",
        &huge,
    )
    .await;
    assert_eq!(status, 413, "{body}");
    // A deployment's own cap (--max-request-bytes) applies the same way.
    stack.api_config_mut().max_request_bytes = 4_096;
    let port = stack.serve_api().await;
    let (status, body) = support::http_as(
        port,
        Some(&ada),
        "POST",
        "/campaigns",
        "application/yaml",
        &"x".repeat(5_000),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("larger than 4096 bytes"), "{body}");
    let (status, body) = support::http_as(
        port,
        Some(&ada),
        "POST",
        "/campaigns/x/versions/latest/approve",
        "application/json",
        "",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("latest") && body.contains("is not a version number"),
        "{body}"
    );
    let (status, _) = support::http_as(
        port,
        Some(&format!("{ada}{}", "0".repeat(600))),
        "GET",
        "/runs",
        "",
        "",
    )
    .await;
    assert_eq!(status, 401, "an oversized token is refused unread");
    let trail = stack
        .scheduler
        .audit()
        .unwrap()
        .query(&Default::default())
        .await
        .unwrap();
    let outcomes: Vec<(&str, &str)> = trail
        .iter()
        .map(|record| (record.action.as_str(), record.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("kill:arm", "ok"),
            ("campaigns:apply", "error: 413"),
            ("campaigns:apply", "error: 413"),
            ("campaigns:approve", "error: 400"),
            ("auth:refused", "unauthenticated")
        ]
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_freeze_stops_runs_that_change_hosts_but_not_scans_and_an_override_is_recorded() {
    let mut stack = Stack::start(support::slow_single_location(16)).await;
    stack.spawn_worker("worker-a", 4);
    let (port, [otto, ada, anna], _secrets) = serve_with_three_principals(&mut stack).await;
    let run_of = |body: &str| -> uuid::Uuid {
        serde_json::from_str::<serde_json::Value>(body).unwrap()["run_id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    // A campaign that changes hosts (approved), and a read-only scan.
    let install = stack.campaign(
        "install",
        support::one_step("  max_concurrency: 4\n  max_errors: 0\n"),
    );
    let scan = stack.campaign(
        "scan",
        "steps:\n  - name: scan\n    document: AWS-RunPatchBaseline\n    parameters: { Operation: Scan }\nrate_control:\n  max_errors: 100%\n",
    );
    for campaign in [&install, &scan] {
        let (status, body) = support::call(
            port,
            &ada,
            "POST",
            "/campaigns",
            &serde_json::to_string(&campaign.spec).unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    // Both need anna's approval: the install changes hosts, the scan names
    // where its results go.
    for path in [
        "/campaigns/install/versions/1/approve",
        "/campaigns/scan/versions/1/approve",
    ] {
        let (status, body) = support::call(port, &anna, "POST", path, "").await;
        assert_eq!(status, 200, "{body}");
    }
    // A run already going when the freeze begins.
    let (status, body) = support::call(port, &otto, "POST", "/campaigns/install/runs", "").await;
    assert_eq!(status, 200, "{body}");
    let running = run_of(&body);
    stack.wait_for_commands(1).await;

    // Only those who may approve changes manage the calendar.
    let now = chrono::Utc::now();
    let freeze = serde_json::json!({
        "from": (now - chrono::Duration::minutes(1)).to_rfc3339(),
        "to": (now + chrono::Duration::hours(1)).to_rfc3339(),
        "reason": "year-end change freeze",
    })
    .to_string();
    let (status, _) = support::call(port, &otto, "POST", "/calendar", &freeze).await;
    assert_eq!(status, 403, "an operator does not freeze changes");
    let bad = freeze.replace(&(now + chrono::Duration::hours(1)).to_rfc3339(), "tomorrow");
    let (status, body) = support::call(port, &anna, "POST", "/calendar", &bad).await;
    assert!(
        status == 400 && body.contains("to: \\\"tomorrow\\\" is not an RFC 3339 time"),
        "{status} {body}"
    );
    for (hostile, says) in [
        ("{\"from\": ", "request body"),
        (
            "{\"from\": \"x\", \"to\": \"y\", \"reason\": \"r\", \"extra\": 1}",
            "unknown field",
        ),
        (
            "{\"to\": \"2027-01-01T00:00:00Z\", \"reason\": \"r\"}",
            "missing field `from`",
        ),
    ] {
        let (status, body) = support::call(port, &anna, "POST", "/calendar", hostile).await;
        assert!(
            status == 400 && body.contains(says),
            "{hostile}: {status} {body}"
        );
    }
    let long = freeze.replace("year-end change freeze", &"x".repeat(1025));
    let (status, body) = support::call(port, &anna, "POST", "/calendar", &long).await;
    assert!(
        status == 400 && body.contains("reason: is required, at most 1024"),
        "{body}"
    );
    let (status, body) = support::call(port, &anna, "POST", "/calendar", &freeze).await;
    assert_eq!(status, 200, "{body}");
    let freeze_id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, body) = support::call(port, &otto, "GET", "/calendar?campaign=install", "").await;
    assert!(body.contains("\"state\":\"CLOSED\""), "{body}");

    // The live run pauses (within the scheduler's tick); nothing new starts.
    let mut paused = stack.scheduler.progress(running).await.unwrap();
    for _ in 0..50 {
        if paused.state == protocol::run::RunState::Paused {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        paused = stack.scheduler.progress(running).await.unwrap();
    }
    assert_eq!(paused.state, protocol::run::RunState::Paused, "{paused:#?}");
    assert!(
        paused.reason.starts_with("change freeze"),
        "{}",
        paused.reason
    );
    let (status, body) = support::call(port, &otto, "POST", "/campaigns/install/runs", "").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("calendar is CLOSED") && body.contains("year-end change freeze"),
        "{body}"
    );
    let (status, body) = support::call(
        port,
        &otto,
        "POST",
        "/campaigns/install/runs",
        "{\"override_freeze\": \"CVE\"}",
    )
    .await;
    assert_eq!(
        status, 403,
        "an operator does not override a freeze: {body}"
    );
    // A scan changes nothing: it runs.
    let (status, body) = support::call(port, &otto, "POST", "/campaigns/scan/runs", "").await;
    assert_eq!(status, 200, "{body}");
    let scan_run = run_of(&body);
    // An admin overrides, with a reason, and the trail says so (beside the
    // paused run: a second live run is asked for by name).
    let (status, body) = support::call(
        port,
        &ada,
        "POST",
        "/campaigns/install/runs",
        "{\"override_freeze\": \"CVE-2026-0001 emergency\"}",
    )
    .await;
    assert!(
        status == 409 && body.contains("already has a live run"),
        "{status} {body}"
    );
    let (status, body) = support::call(
        port,
        &ada,
        "POST",
        "/campaigns/install/runs",
        "{\"override_freeze\": \"CVE-2026-0001 emergency\", \"allow_concurrent\": true}",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let overridden = run_of(&body);
    let (_, body) = support::call(port, &ada, "GET", "/audit?action=runs:start", "").await;
    let trail: Vec<AuditRecord> = serde_json::from_str(&body).unwrap();
    assert!(
        trail.iter().any(|record| record.principal == "ada"
            && record
                .reason
                .contains("change freeze overridden by ada: CVE-2026-0001 emergency")),
        "{trail:#?}"
    );
    for run_id in [scan_run, overridden] {
        let progress = stack
            .wait_until_final(run_id, std::time::Duration::from_secs(90))
            .await;
        assert_eq!(
            progress.state,
            protocol::run::RunState::Completed,
            "{progress:#?}"
        );
    }
    assert_eq!(
        stack.scheduler.progress(running).await.unwrap().state,
        protocol::run::RunState::Paused,
        "still frozen"
    );
    // The freeze is lifted: the paused run goes on by itself.
    let (status, body) =
        support::call(port, &anna, "DELETE", &format!("/calendar/{freeze_id}"), "").await;
    assert_eq!(status, 200, "{body}");
    let progress = stack
        .wait_until_final(running, std::time::Duration::from_secs(90))
        .await;
    assert_eq!(
        progress.state,
        protocol::run::RunState::Completed,
        "{progress:#?}"
    );
    stack.teardown().await;
}

/// Trust III, finding 7: a console session records how it was made and is
/// checked against the rules on every request. One made while the API ran
/// without authentication dies when it runs with tokens; one made from an
/// SSO token dies when the issuer's key that signed it is rotated out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_when_the_rules_they_were_made_under_change() {
    use support::console::{exchange, get, login_post, set_cookie};
    let mut stack = Stack::start(support::single_location(1, false)).await;
    // Without authentication (loopback): everyone is anonymous, and the
    // console enters at once, no sign-in click (issue 33).
    let port = stack.serve_api().await;
    // (A page that moves on by itself, not a redirect: a SameSite=Strict
    // cookie set on a redirect of a cross-site navigation would not be sent.)
    let (status, head, page) = exchange(port, get("/ui/login?next=/ui/runs", None)).await;
    assert_eq!(status, 200, "{head}");
    assert!(
        page.contains("http-equiv=\"refresh\" content=\"0; url=/ui/runs\""),
        "{page}"
    );
    let anonymous = set_cookie(&head, "flotilla_session").unwrap();
    assert_eq!(
        exchange(port, get("/ui/runs", Some(&anonymous))).await.0,
        200
    );

    // The scheduler comes back with tokens and SSO: that session is over.
    let secrets = tempfile::tempdir().unwrap();
    let tokens_path = secrets.path().join("tokens");
    add_token(&tokens_path, "ada", Role::Admin, None);
    let sso = TestIssuer::new("https://sso.example", "k1").unwrap();
    let verifier =
        OidcVerifier::new(&sso.issuer, "flotilla", &sso.jwks(), "flotilla_role", "sub").unwrap();
    stack.api_config_mut().auth = AuthSettings {
        tokens_file: Some(TokensFile::open(tokens_path).unwrap()),
        oidc: Some(verifier.clone()),
        ..AuthSettings::default()
    };
    let port = stack.serve_api().await;
    let (status, head, _) = exchange(port, get("/ui/runs", Some(&anonymous))).await;
    assert_eq!(
        status, 303,
        "an anonymous session ends under authentication: {head}"
    );
    assert!(head.contains("location: /ui/login"), "{head}");
    let (status, _, _) = exchange(port, login_post(port, &[]).await).await;
    assert_eq!(status, 401, "and nobody signs in without a credential now");

    // An SSO session lasts while the key that signed its token is trusted.
    let in_an_hour = support::now_unix_ms() / 1000 + 3600;
    let jwt = sso
        .sign(serde_json::json!({"sub": "sam@example.com", "aud": "flotilla", "exp": in_an_hour, "flotilla_role": "operator"}))
        .unwrap();
    let (status, head, _) = exchange(port, login_post(port, &[("token", &jwt)]).await).await;
    assert_eq!(status, 303, "{head}");
    let sam = set_cookie(&head, "flotilla_session").unwrap();
    assert_eq!(exchange(port, get("/ui/runs", Some(&sam))).await.0, 200);
    let rotated = TestIssuer::new("https://sso.example", "k2").unwrap();
    verifier.replace_keys(&rotated.jwks()).unwrap();
    let (status, head, _) = exchange(port, get("/ui/runs", Some(&sam))).await;
    assert_eq!(status, 303, "a session of a rotated-out key ends: {head}");
    stack.teardown().await;
}
