//! flotilla's doors: the only crate that speaks HTTP. Every request is
//! parsed here, handed to one function of the run engine (the `scheduler`
//! crate), and its answer rendered; nothing about a run is decided here.
//!
//! - [`access`]: the one door around every route — who is calling
//!   (credentials, the console's session cookie), may their role take the
//!   route, and the audit record of it. It renders nothing.
//! - [`auth`]: the permission each route needs, the tokens file, the
//!   deployment's authentication settings.
//! - [`oidc`]: SSO bearer tokens (JWTs of an OIDC issuer, RS256/ES256).
//! - [`tls`]: HTTPS, and client certificates as principals (mTLS).
//! - [`listen`]: serving connections, with the connection cap and deadlines.
//! - [`json`]: the JSON API the CLI talks to (the route table is there).
//! - [`console`]: the web console, HTML rendered with maud.
//! - [`state`]: what handlers share (the connected engine, metrics).
//! - [`error`]: errors as answers (400/403/404/409/503; 500 leaks nothing).
//! - [`parse`]: run ids, versions and filters read from requests.
//! - [`form`]: form bodies.
//!
//! Here: the one router joining the doors, and [`run`], the scheduler
//! service — the engine and, on a listener, its API.

pub mod access;
pub mod auth;
pub mod console;
pub mod error;
pub mod form;
pub mod json;
pub mod listen;
pub mod oidc;
pub mod parse;
pub mod state;
pub mod tls;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use scheduler::{Scheduler, SchedulerConfig, SchedulerError};

use crate::access::ConsoleRefusal;
use crate::state::ApiState;

/// How the API is served: who may call it, over what, how much.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// How callers authenticate; open (everyone is `anonymous`) unless a
    /// tokens file, SSO or client certificates are set.
    pub auth: crate::auth::AuthSettings,
    /// HTTPS for the API (and client certificates, with a client CA).
    pub tls: Option<crate::tls::ApiTls>,
    /// The largest request body read; larger ones are refused (413) before
    /// they are parsed.
    pub max_request_bytes: usize,
    /// Open connections, header and request deadlines.
    pub limits: crate::listen::ConnectionLimits,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            auth: crate::auth::AuthSettings::default(),
            tls: None,
            max_request_bytes: crate::access::credentials::MAX_REQUEST_BYTES,
            limits: crate::listen::ConnectionLimits::default(),
        }
    }
}

/// The whole API: the JSON routes and the console's, behind the one door,
/// with the body limit, and console refusals rendered as pages.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .merge(crate::json::routes())
        .merge(crate::console::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::access::guard,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(
            state.max_request_bytes,
        ))
        .layer(axum::middleware::from_fn(console_refusals))
        .layer(axum::middleware::from_fn({
            let limit = state.limits.request_timeout;
            move |request, next| crate::listen::request_deadline(limit, request, next)
        }))
        .with_state(state)
}

/// A console request the door refused becomes the console's page: the
/// sign-in redirect, or its error page.
async fn console_refusals(request: Request, next: Next) -> Response {
    let uri = request.uri().clone();
    let response = next.run(request).await;
    match response.extensions().get::<ConsoleRefusal>() {
        Some(refusal) if refusal.sign_in => crate::console::to_login(&uri),
        Some(refusal) => crate::console::error_page(refusal.status, &refusal.message),
        None => response,
    }
}

/// Serves the API until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (tls, limits) = (state.tls.clone(), state.limits);
    crate::listen::serve(listener, router(state), tls, limits, shutdown).await
}

/// Runs the scheduler service until `shutdown`: the run engine
/// ([`scheduler::run_with`]) and, on `listener`, its API, which answers 503
/// while the engine reconnects to RabbitMQ or Redis.
pub async fn run(
    mut engine: SchedulerConfig,
    api: ApiConfig,
    listener: Option<tokio::net::TcpListener>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), SchedulerError> {
    // The engine's two-person rule binds only where callers are told apart.
    engine.authenticated = !api.auth.is_open();
    let metrics = scheduler::metrics::SchedulerMetrics::new()
        .map_err(|error| SchedulerError::Internal(format!("metrics: {error}")))?;
    metrics.set_insecure(api.auth.is_open());
    let (current, current_receiver) = tokio::sync::watch::channel(None::<Scheduler>);
    let stop = tokio_util::sync::CancellationToken::new();
    let server = listener.map(|listener| {
        let state = ApiState {
            current: current_receiver,
            metrics: metrics.clone(),
            auth: api.auth.clone(),
            tls: api.tls.clone(),
            refusals: Arc::default(),
            max_request_bytes: api.max_request_bytes,
            limits: api.limits,
        };
        let stopped = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            if let Err(error) = serve(listener, state, stopped).await {
                tracing::error!(error = %error, "the HTTP API stopped");
            }
        })
    });
    let result = scheduler::run_with(engine, metrics, current, shutdown).await;
    stop.cancel();
    if let Some(server) = server {
        let _ = server.await;
    }
    result
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    protocol::job::UnixMillis::now().0
}
