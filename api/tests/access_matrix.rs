//! The access matrix — every route × every kind of caller — against the
//! router alone (`tower::ServiceExt::oneshot`, no socket) on the in-memory
//! backends, so it runs in milliseconds. The end-to-end walk over HTTP on
//! RabbitMQ and Redis (`tests/access_e2e.rs`) checks the same rules with the
//! audit trail; this one checks every cell, and fails when a route is added
//! without a line here.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use api::auth::{AuthSettings, TokensFile, append_tokens_file, route_permission};
use api::state::ApiState;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use protocol::names::Names;
use scheduler::auth::{Principal, Role, TokenRecord, new_token, token_hash};
use scheduler::{Scheduler, SchedulerConfig};
use tower::ServiceExt;
use uuid::Uuid;

/// Every route: (method, route pattern, a concrete path for it).
fn routes(run: Uuid) -> Vec<(&'static str, &'static str, String)> {
    let run_path = |tail: &str| format!("/runs/{run}{tail}");
    let ui_run_path = |tail: &str| format!("/ui/runs/{run}{tail}");
    vec![
        ("GET", "/healthz", "/healthz".into()),
        ("GET", "/metrics", "/metrics".into()),
        ("GET", "/campaigns", "/campaigns".into()),
        ("POST", "/campaigns", "/campaigns".into()),
        ("GET", "/campaigns/{name}", "/campaigns/none".into()),
        ("DELETE", "/campaigns/{name}", "/campaigns/none".into()),
        (
            "POST",
            "/campaigns/{name}/runs",
            "/campaigns/none/runs".into(),
        ),
        (
            "GET",
            "/campaigns/{name}/versions/{version}",
            "/campaigns/none/versions/1".into(),
        ),
        (
            "POST",
            "/campaigns/{name}/versions/{version}/approve",
            "/campaigns/none/versions/1/approve".into(),
        ),
        ("GET", "/runs", "/runs".into()),
        ("GET", "/runs/{id}", run_path("")),
        ("POST", "/runs/{id}/approve", run_path("/approve")),
        ("POST", "/runs/{id}/{action}", run_path("/pause")),
        ("GET", "/kill", "/kill".into()),
        ("POST", "/kill", "/kill".into()),
        ("DELETE", "/kill", "/kill".into()),
        ("POST", "/events", "/events".into()),
        ("POST", "/alerts", "/alerts".into()),
        ("GET", "/calendar", "/calendar".into()),
        ("POST", "/calendar", "/calendar".into()),
        ("DELETE", "/calendar/{id}", "/calendar/none".into()),
        ("GET", "/compliance", "/compliance".into()),
        ("GET", "/audit", "/audit".into()),
        ("GET", "/tokens", "/tokens".into()),
        ("POST", "/tokens", "/tokens".into()),
        ("DELETE", "/tokens/{name}", "/tokens/nobody".into()),
        ("GET", "/ui", "/ui".into()),
        ("GET", "/ui/static/{file}", "/ui/static/console.css".into()),
        ("GET", "/ui/login", "/ui/login".into()),
        ("POST", "/ui/logout", "/ui/logout".into()),
        ("GET", "/ui/runs", "/ui/runs".into()),
        ("GET", "/ui/runs/{id}", ui_run_path("")),
        ("POST", "/ui/runs/{id}/approve", ui_run_path("/approve")),
        ("POST", "/ui/runs/{id}/{action}", ui_run_path("/pause")),
        ("POST", "/ui/kill", "/ui/kill".into()),
        ("POST", "/ui/kill/release", "/ui/kill/release".into()),
        ("GET", "/ui/campaigns", "/ui/campaigns".into()),
        ("GET", "/ui/campaigns/{name}", "/ui/campaigns/none".into()),
        (
            "POST",
            "/ui/campaigns/{name}/runs",
            "/ui/campaigns/none/runs".into(),
        ),
        ("GET", "/ui/compliance", "/ui/compliance".into()),
        ("GET", "/ui/compliance.csv", "/ui/compliance.csv".into()),
    ]
}

/// Who calls.
#[derive(Debug, Clone)]
enum Caller {
    Nobody,
    Forged,
    Token(Role, String),
}

struct Matrix {
    app: axum::Router,
    scheduler: Scheduler,
    _tokens: tempfile::TempDir,
    callers: Vec<Caller>,
}

async fn matrix() -> Matrix {
    let url = format!("memory://access-matrix-{}", Uuid::new_v4());
    let names = Names::new(format!("access-matrix-{}", Uuid::new_v4()));
    // The setup step (`flotilla admin arm`) declares the queues.
    broker::Broker::declare_topology(&url, &names, &Default::default())
        .await
        .unwrap();
    let mut config = SchedulerConfig::new(&url, &url, names);
    config.keys = protocol::signing::Keyring::ephemeral_deployment()
        .unwrap()
        .scheduler;
    config.authenticated = true;
    let scheduler = Scheduler::connect(config).await.unwrap();
    let tokens = tempfile::tempdir().unwrap();
    let path = tokens.path().join("tokens");
    let mut callers = vec![Caller::Nobody, Caller::Forged];
    for role in Role::ALL {
        let token = new_token().unwrap();
        append_tokens_file(
            &path,
            &TokenRecord {
                name: format!("the-{role}"),
                role,
                sha256: token_hash(&token),
                created_ms: 1,
                expires_ms: None,
                created_by: "test".into(),
            },
        )
        .unwrap();
        callers.push(Caller::Token(role, token));
    }
    let (_, current) = tokio::sync::watch::channel(Some(scheduler.clone()));
    let state = ApiState {
        current,
        metrics: scheduler::metrics::SchedulerMetrics::new().unwrap(),
        auth: AuthSettings {
            tokens_file: Some(TokensFile::open(path).unwrap()),
            metrics_open: false,
            ..AuthSettings::default()
        },
        tls: None,
        refusals: Arc::default(),
        max_request_bytes: 1 << 20,
        limits: api::listen::ConnectionLimits::default(),
    };
    Matrix {
        app: api::router(state),
        scheduler,
        _tokens: tokens,
        callers,
    }
}

async fn answer(app: &axum::Router, request: Request<Body>) -> (StatusCode, String) {
    let mut request = request;
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40_000))));
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let location = response
        .headers()
        .get(header::LOCATION)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, location)
}

#[tokio::test]
async fn every_route_of_the_router_is_in_the_matrix() {
    let listed: std::collections::BTreeSet<&str> = routes(Uuid::nil())
        .into_iter()
        .map(|(_, pattern, _)| pattern)
        .collect();
    for file in ["src/json/mod.rs", "src/console/mod.rs"] {
        let source =
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
                .unwrap();
        for pattern in test_support::routes::registered(&source) {
            assert!(
                listed.contains(pattern.as_str()),
                "{file} registers {pattern}, which the access matrix does not list"
            );
        }
    }
}

#[tokio::test]
async fn every_json_route_answers_every_caller_as_its_role_allows() {
    let matrix = matrix().await;
    let run = Uuid::new_v4();
    for (method, pattern, path) in routes(run) {
        if pattern.starts_with("/ui") {
            continue;
        }
        let needed = route_permission(method, pattern, false);
        for caller in &matrix.callers {
            let mut request = Request::builder().method(method).uri(path.as_str());
            match caller {
                Caller::Nobody => {}
                Caller::Forged => {
                    request = request.header(header::AUTHORIZATION, "Bearer flt_forged")
                }
                Caller::Token(_, token) => {
                    request = request.header(header::AUTHORIZATION, format!("Bearer {token}"))
                }
            }
            let request = request
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{}"))
                .unwrap();
            let (status, _) = answer(&matrix.app, request).await;
            let cell = format!("{method} {pattern} by {caller:?}: {status}");
            match (needed, caller) {
                (None, _) => assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{cell}: a public route"
                ),
                (Some(_), Caller::Nobody | Caller::Forged) => {
                    assert_eq!(status, StatusCode::UNAUTHORIZED, "{cell}")
                }
                (Some(permission), Caller::Token(role, _)) if role.allows(permission) => {
                    assert!(
                        status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                        "{cell}: {role} may {}",
                        permission.as_str()
                    )
                }
                (Some(_), Caller::Token(..)) => {
                    assert_eq!(status, StatusCode::FORBIDDEN, "{cell}")
                }
            }
        }
    }
}

#[tokio::test]
async fn every_console_route_answers_by_session_only_and_as_the_role_allows() {
    let matrix = matrix().await;
    let run = Uuid::new_v4();
    // A session per role and request, made as the sign-in form makes them
    // (`/ui/logout` ends the one it is sent with).
    let session_of = |role: Role| {
        let scheduler = matrix.scheduler.clone();
        // The session is made from the role's token, as signing in with it.
        let sha256 = matrix
            .callers
            .iter()
            .find_map(|caller| match caller {
                Caller::Token(of, token) if *of == role => Some(token_hash(token)),
                _ => None,
            })
            .unwrap();
        async move {
            let principal = Principal {
                name: format!("the-{role}"),
                role,
                issued_by: None,
            };
            let expires = protocol::job::UnixMillis::now().0 + 60_000;
            let (cookie, session) = scheduler
                .create_session(
                    &principal,
                    scheduler::sessions::SessionOrigin::Token { sha256 },
                    expires,
                )
                .await
                .unwrap();
            (cookie, session.csrf)
        }
    };
    for (method, pattern, path) in routes(run) {
        if !pattern.starts_with("/ui") {
            continue;
        }
        let needed = route_permission(method, pattern, false);
        // A bearer token is no console credential: to sign-in, whoever holds it.
        let bearer = matrix
            .callers
            .iter()
            .find_map(|caller| match caller {
                Caller::Token(Role::Admin, token) => Some(token.clone()),
                _ => None,
            })
            .unwrap();
        let request = Request::builder()
            .method(method)
            .uri(path.as_str())
            .header(header::AUTHORIZATION, format!("Bearer {bearer}"))
            .body(Body::empty())
            .unwrap();
        let (status, location) = answer(&matrix.app, request).await;
        if needed.is_some() {
            assert!(
                status == StatusCode::SEE_OTHER && location.starts_with("/ui/login"),
                "{method} {pattern} with a bearer token: {status} {location}"
            );
        }
        for role in Role::ALL {
            let (cookie, csrf) = session_of(role).await;
            let body = serde_urlencoded::to_string([("csrf", csrf.as_str())]).unwrap();
            let request = Request::builder()
                .method(method)
                .uri(path.as_str())
                .header(header::COOKIE, format!("flotilla_session={cookie}"))
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(body))
                .unwrap();
            let (status, _) = answer(&matrix.app, request).await;
            let cell = format!("{method} {pattern} by a {role} session: {status}");
            match needed {
                Some(permission) if !role.allows(permission) => {
                    assert_eq!(status, StatusCode::FORBIDDEN, "{cell}")
                }
                _ => assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{cell}"
                ),
            }
        }
    }
}
