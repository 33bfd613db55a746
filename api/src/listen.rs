//! Serving connections, over TLS or not: each request carries its peer's
//! address (and verified client certificate); open connections are capped,
//! a request's headers have a deadline — which is also how long a kept-alive
//! connection may sit idle before its next request —, HTTP/2 connections are
//! pinged and closed when the peer stops answering, and a whole request has a
//! deadline (the router's [`request_deadline`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower::ServiceExt;

use crate::tls::{ApiTls, ClientCertificate};

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The API's connection limits (`flotilla scheduler --api-*` flags).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections at most; one more is closed as it is accepted.
    pub max_connections: usize,
    /// A request's headers must have arrived this long after the request
    /// began, or after the previous response (idle keep-alive).
    pub header_timeout: Duration,
    /// A request must be answered within this (503 otherwise).
    pub request_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// Answers 503 to a request not answered within `limit`.
pub(crate) async fn request_deadline(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the request took longer than {} s", limit.as_secs()),
        )
            .into_response(),
    }
}

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<ApiTls>,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(error = %error, "accepting an API connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, max = limits.max_connections, "API connection closed at once: the connection cap is reached");
            drop(stream);
            continue;
        };
        let (tls, app) = (tls.clone(), app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let Some(tls) = tls else {
                // The first byte within the header deadline, or the
                // connection is closed: HTTP version detection would wait
                // for it forever.
                let mut first = [0u8; 1];
                match tokio::time::timeout(limits.header_timeout, stream.peek(&mut first)).await {
                    Ok(Ok(1..)) => {}
                    _ => return,
                }
                return connection(TokioIo::new(stream), peer, None, app, limits, None).await;
            };
            let stream = match tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                tls.acceptor().accept(stream),
            )
            .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::info!(%peer, error = %error, "TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let client = crate::tls::client_certificate(&stream, peer);
            // ALPN chose the version: no detection that could wait forever.
            let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            connection(TokioIo::new(stream), peer, client, app, limits, Some(http2)).await;
        });
    }
}

/// Serves one connection's requests with the limits: HTTP/2 if `http2` is
/// `Some(true)`, HTTP/1.1 if `Some(false)`, either (by its first bytes) if
/// `None`.
async fn connection<I>(
    io: I,
    peer: std::net::SocketAddr,
    client: Option<ClientCertificate>,
    app: Router,
    limits: ConnectionLimits,
    http2: Option<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            if let Some(client) = &client {
                request.extensions_mut().insert(client.clone());
            }
            app.clone().oneshot(request.map(axum::body::Body::new))
        });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder = match http2 {
        Some(true) => builder.http2_only(),
        Some(false) => builder.http1_only(),
        None => builder,
    };
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.header_timeout)
        .keep_alive_timeout(limits.header_timeout);
    if let Err(error) = builder.serve_connection(io, service).await {
        tracing::debug!(%peer, error = %error, "API connection ended");
    }
}
