//! The CLI's client of the scheduler's HTTP API (blocking; one request at a time).

use std::time::Duration;

use anyhow::{Context, bail};
use serde::de::DeserializeOwned;

pub struct ApiClient {
    base: String,
    agent: ureq::Agent,
    /// `Authorization` header value; never logged or shown.
    authorization: Option<String>,
}

/// The caller's API token: `FLOTILLA_TOKEN`, or the first line of the file
/// `FLOTILLA_TOKEN_FILE` names.
fn token_from_environment() -> anyhow::Result<Option<String>> {
    if let Ok(token) = std::env::var("FLOTILLA_TOKEN") {
        let token = token.trim().to_string();
        return Ok((!token.is_empty()).then_some(token));
    }
    let Ok(path) = std::env::var("FLOTILLA_TOKEN_FILE") else {
        return Ok(None);
    };
    let metadata =
        std::fs::metadata(&path).with_context(|| format!("FLOTILLA_TOKEN_FILE {path}"))?;
    if metadata.len() > 4096 {
        bail!("FLOTILLA_TOKEN_FILE {path} is larger than a token (4096 bytes)");
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("FLOTILLA_TOKEN_FILE {path}"))?;
    Ok(text
        .lines()
        .next()
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .map(String::from))
}

impl ApiClient {
    /// A client of the API at `base`, authenticating with the token of the
    /// environment (`FLOTILLA_TOKEN` or `FLOTILLA_TOKEN_FILE`) if there is one.
    pub fn new(base: &str) -> Self {
        let mut client = Self::anonymous(base);
        match token_from_environment() {
            Ok(token) => client.authorization = token.map(|token| format!("Bearer {token}")),
            Err(error) => eprintln!("warning: {error:#}; calling the API without a token"),
        }
        client
    }

    /// A client that sends no token.
    pub fn anonymous(base: &str) -> Self {
        Self::build(base, None)
    }

    /// The client the API arguments describe: its URL, the CA of an https
    /// API (`--ca-file` / FLOTILLA_CA_FILE) and the token of the environment.
    pub fn from_args(api: &crate::commands::ApiArgs) -> anyhow::Result<Self> {
        let ca = match &api.ca_file {
            Some(path) => {
                let pem =
                    std::fs::read(path).with_context(|| format!("--ca-file {}", path.display()))?;
                Some(
                    ureq::tls::Certificate::from_pem(&pem)
                        .with_context(|| format!("--ca-file {}", path.display()))?,
                )
            }
            None => None,
        };
        let mut client = Self::build(&api.api, ca);
        client.authorization = token_from_environment()?.map(|token| format!("Bearer {token}"));
        Ok(client)
    }

    fn build(base: &str, ca: Option<ureq::tls::Certificate<'static>>) -> Self {
        let mut tls = scheduler::ureq_tls();
        if let Some(certificate) = ca {
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&[certificate]));
        }
        let config = ureq::Agent::config_builder().tls_config(tls.build());
        let config = config
            // API errors carry a JSON message worth showing; read them as responses.
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build();
        Self {
            base: base.trim_end_matches('/').to_string(),
            agent: config.into(),
            authorization: None,
        }
    }

    fn authorize<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.authorization {
            Some(value) => request.header("Authorization", value),
            None => request,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn finish<T: DeserializeOwned>(
        &self,
        path: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<T> {
        let mut response = response.with_context(|| {
            format!(
                "cannot reach the flotilla API at {}; is `flotilla scheduler` running (its --listen address), or is --api / FLOTILLA_API_URL wrong?",
                self.base
            )
        })?;
        let status = response.status();
        let body = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the answer to {path}"))?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .map(|value| {
                    let mut message = value["error"].as_str().unwrap_or(&body).to_string();
                    if let Some(problems) = value["problems"].as_array() {
                        for problem in problems {
                            message
                                .push_str(&format!("\n  {}", problem.as_str().unwrap_or_default()));
                        }
                    }
                    message
                })
                .unwrap_or(body);
            bail!("{message} (HTTP {})", status.as_u16());
        }
        let body = if body.trim().is_empty() {
            "null".to_string()
        } else {
            body
        };
        serde_json::from_str(&body).with_context(|| {
            format!("the API's answer to {path} is not what this flotilla expects")
        })
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.finish(path, self.authorize(self.agent.get(&self.url(path))).call())
    }

    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: String,
    ) -> anyhow::Result<T> {
        self.finish(
            path,
            self.authorize(self.agent.post(&self.url(path)))
                .header("Content-Type", content_type)
                .send(body),
        )
    }

    pub fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<T> {
        self.post(path, "application/json", body.to_string())
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.finish(
            path,
            self.authorize(self.agent.delete(&self.url(path))).call(),
        )
    }
}
