//! An AWS-compatible fleet simulator on loopback: STS (query/XML), SSM and
//! Organizations (JSON 1.1), so flotilla's own aws-sdk clients talk to it unchanged
//! but for `endpoint_url`.
//!
//! - [`profile`]: fleet profiles (YAML) and the `tiny`, `demo`, `large` presets.
//! - [`fleet`]: accounts, OUs and instances derived from the seed, stored nowhere.
//! - [`state`]: simulated clock, sessions, commands, token buckets, counters.
//! - [`wire`]: AWS error shapes, caller identity from SigV4 headers, JSON helpers.
//! - [`sts`], [`ssm`], [`organizations`]: the operations.
//! - [`admin`]: fault injection and counters under `/_sim/`.
//! - [`s3`]: path-style PutObject, GetObject and ListObjectsV2 in memory, for
//!   results written to "S3".

pub mod admin;
pub mod fleet;
pub mod organizations;
pub mod profile;
pub mod s3;
pub mod ssm;
pub mod state;
pub mod sts;
pub mod wire;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use tokio::net::TcpListener;

pub use profile::FleetProfile;
pub use state::SimState;
use wire::{AwsError, json_response, signer, xml_response};

/// The HTTP routes: every AWS call is `POST /`; the admin surface is under `/_sim/`.
pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/", post(dispatch))
        .route("/_sim/stats", get(admin::stats))
        .route("/_sim/faults", post(admin::inject))
        .route("/_sim/executions", get(admin::executions))
        .route(
            "/_sim/executions/{instance_id}",
            get(admin::instance_executions),
        )
        .route("/_sim/fleet", get(admin::fleet))
        .route("/_sim/commands", get(admin::commands))
        .route("/{bucket}", get(s3::list_objects))
        .route("/{bucket}/{*key}", get(s3::get_object).put(s3::put_object))
        .with_state(state)
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: Arc<SimState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// A simulator running in this process, stopped when dropped.
pub struct SimServer {
    pub addr: SocketAddr,
    pub state: Arc<SimState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl SimServer {
    /// Binds `listen` (use port 0 for an ephemeral port) and serves in the background.
    pub async fn start(profile: FleetProfile, listen: SocketAddr) -> std::io::Result<Self> {
        profile.validate().map_err(std::io::Error::other)?;
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SimState::new(profile));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = state.clone();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(error) = serve(listener, served, shutdown).await {
                tracing::error!(%error, "simulator stopped");
            }
        });
        Ok(Self {
            addr,
            state,
            stop: Some(stop),
        })
    }

    /// `http://127.0.0.1:PORT`, for the SDK's `endpoint_url`.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn dispatch(State(state): State<Arc<SimState>>, headers: HeaderMap, body: Bytes) -> Response {
    let signer = signer(&headers);
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let dark = signer
        .as_ref()
        .is_some_and(|s| state.lock().dark_regions.contains(&s.region));
    match target {
        Some(target) => {
            let (service, operation) = target.split_once('.').unwrap_or((target.as_str(), ""));
            let result = count_and_fault(&state, operation, dark).and_then(|()| {
                let body: serde_json::Value = serde_json::from_slice(&body).map_err(|error| {
                    AwsError::bad_request(
                        "SerializationException",
                        format!("request body is not JSON: {error}"),
                    )
                })?;
                match service {
                    "AmazonSSM" => ssm::handle(&state, signer.as_ref(), operation, &body),
                    "AWSOrganizationsV20161128" => {
                        organizations::handle(&state, signer.as_ref(), operation, &body)
                            .map(|value| value.to_string())
                    }
                    other => Err(AwsError::bad_request(
                        "UnknownOperationException",
                        format!("unknown service {other}"),
                    )),
                }
            });
            let delay = state.lock().injected_delay(operation);
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            json_response(result)
        }
        None => {
            let form: HashMap<String, String> =
                serde_urlencoded::from_bytes(&body).unwrap_or_default();
            let action = form.get("Action").cloned().unwrap_or_default();
            let result = count_and_fault(&state, &action, dark)
                .and_then(|()| sts::handle(&state, signer.as_ref(), &form));
            xml_response(result)
        }
    }
}

/// Counts the call, then applies a dark region or an injected failure.
pub(crate) fn count_and_fault(
    state: &SimState,
    operation: &str,
    dark: bool,
) -> Result<(), AwsError> {
    let mut inner = state.lock();
    *inner.stats.calls.entry(operation.to_string()).or_default() += 1;
    if dark {
        return Err(AwsError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "The region is unavailable",
        ));
    }
    match inner.injected_failure(operation) {
        Some(code) => {
            let status = match code.as_str() {
                "InternalServerError" | "InternalFailure" => StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceUnavailable" => StatusCode::SERVICE_UNAVAILABLE,
                "AccessDenied" | "AccessDeniedException" => StatusCode::FORBIDDEN,
                _ => StatusCode::BAD_REQUEST,
            };
            Err(AwsError::new(status, &code, format!("injected {code}")))
        }
        None => Ok(()),
    }
}
