//! Fetch a model's `config.json` from the Hugging Face Hub (or a mirror), with a timeout, an
//! optional token, and errors that say what to do.

use std::time::Duration;

use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The public Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// A config.json larger than this is not a config.json.
const MAX_CONFIG_BYTES: usize = 4 << 20;
const MAX_REDIRECTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("invalid Hub URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot reach {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("timed out after {0:?} fetching {1}")]
    Timeout(Duration, String),
    #[error(
        "{model}: the Hub refused access (HTTP {status}); the model is gated or private: set spec.model.hubTokenSecretRef or give spec.model.architecture"
    )]
    Forbidden { model: String, status: u16 },
    #[error("{model}: no such model or revision on the Hub (HTTP 404)")]
    NotFound { model: String },
    #[error("{model}: the Hub answered HTTP {status}")]
    Status { model: String, status: u16 },
    #[error("{model}: config.json is not valid JSON: {reason}")]
    Json { model: String, reason: String },
}

/// A Hub client: endpoint, optional bearer token and a per-request timeout.
#[derive(Clone, Debug)]
pub struct HubClient {
    pub endpoint: String,
    pub token: Option<String>,
    pub timeout: Duration,
}

impl Default for HubClient {
    fn default() -> Self {
        Self {
            endpoint: DEFAULT_ENDPOINT.into(),
            token: None,
            timeout: Duration::from_secs(10),
        }
    }
}

impl HubClient {
    /// `GET {endpoint}/{model}/resolve/{revision}/config.json`, following redirects.
    pub async fn fetch_config(&self, model: &str, revision: &str) -> Result<Value, HubError> {
        let url = format!(
            "{}/{model}/resolve/{revision}/config.json",
            self.endpoint.trim_end_matches('/')
        );
        match tokio::time::timeout(self.timeout, self.get_following(model, &url)).await {
            Ok(result) => result,
            Err(_) => Err(HubError::Timeout(self.timeout, url)),
        }
    }

    async fn get_following(&self, model: &str, url: &str) -> Result<Value, HubError> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
        let mut uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| HubError::Url {
                url: url.into(),
                reason: e.to_string(),
            })?;
        for _ in 0..=MAX_REDIRECTS {
            let mut req = Request::get(uri.clone()).header(header::USER_AGENT, "vllm-operator");
            if let Some(token) = &self.token {
                req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let req = req.body(Empty::new()).map_err(|e| HubError::Url {
                url: uri.to_string(),
                reason: e.to_string(),
            })?;
            let resp = client
                .request(req)
                .await
                .map_err(|e| HubError::Unreachable {
                    endpoint: self.endpoint.clone(),
                    reason: error_chain(&e),
                })?;
            let status = resp.status();
            if status.is_redirection() {
                let location = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| HubError::Status {
                        model: model.into(),
                        status: status.as_u16(),
                    })?;
                uri = resolve_location(&uri, location)?;
                continue;
            }
            match status {
                StatusCode::OK => {}
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(HubError::Forbidden {
                        model: model.into(),
                        status: status.as_u16(),
                    });
                }
                StatusCode::NOT_FOUND => {
                    return Err(HubError::NotFound {
                        model: model.into(),
                    });
                }
                _ => {
                    return Err(HubError::Status {
                        model: model.into(),
                        status: status.as_u16(),
                    });
                }
            }
            let body = Limited::new(resp.into_body(), MAX_CONFIG_BYTES)
                .collect()
                .await
                .map_err(|e| HubError::Unreachable {
                    endpoint: self.endpoint.clone(),
                    reason: e.to_string(),
                })?
                .to_bytes();
            return serde_json::from_slice(&body).map_err(|e| HubError::Json {
                model: model.into(),
                reason: e.to_string(),
            });
        }
        Err(HubError::Status {
            model: model.into(),
            status: 310,
        })
    }
}

/// A `Location` header may be absolute or relative to the request.
fn resolve_location(base: &Uri, location: &str) -> Result<Uri, HubError> {
    let bad = |reason: String| HubError::Url {
        url: location.into(),
        reason,
    };
    if location.starts_with("http://") || location.starts_with("https://") {
        return location
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(e.to_string()));
    }
    let scheme = base.scheme_str().unwrap_or("https");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
    format!("{scheme}://{authority}{location}")
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
