//! The HTTP client the `oauth2`/`openidconnect` crates call providers with: the
//! workspace's reqwest on rustls (ring, the system's trust roots), a timeout on every
//! call, and no redirects (the crates' advice: a redirect could send the code or the
//! client secret somewhere else).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use oauth2::{AsyncHttpClient, HttpRequest, HttpResponse};
use rustls_platform_verifier::BuilderVerifierExt as _;

/// Why a call to a provider failed, in words fit for a log (never a secret: request
/// bodies are not part of reqwest's errors).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

#[derive(Clone)]
pub struct ProviderHttp {
    client: reqwest::Client,
}

impl ProviderHttp {
    pub fn new(timeout: Duration) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS settings: {e}"))?
            .with_platform_verifier()
            .map_err(|e| format!("TLS trust roots: {e}"))?
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .user_agent("messenger-auth")
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self { client })
    }

    /// A GET with a bearer token, its JSON answer (the userinfo call of plain OAuth 2.0).
    pub async fn get_json(
        &self,
        url: &url::Url,
        bearer: &str,
    ) -> Result<serde_json::Value, HttpError> {
        let response = self
            .client
            .get(url.as_str())
            .bearer_auth(bearer)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| HttpError(describe(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(HttpError(format!("answered {status}")));
        }
        response
            .json()
            .await
            .map_err(|e| HttpError(format!("answered something that is not JSON: {e}")))
    }

    async fn execute(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let request = reqwest::Request::try_from(request)
            .map_err(|e| HttpError(format!("cannot build the request: {e}")))?;
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|e| HttpError(describe(&e)))?;
        let mut builder = http::Response::builder().status(response.status());
        for (name, value) in response.headers() {
            builder = builder.header(name, value);
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| HttpError(describe(&e)))?;
        builder
            .body(body.to_vec())
            .map_err(|e| HttpError(e.to_string()))
    }
}

/// reqwest's message plus its causes ("error sending request" alone says little).
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl<'c> AsyncHttpClient<'c> for ProviderHttp {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.execute(request))
    }
}
