//! The HTTP effect: provider calls with ureq (SPEC §7, "HTTP").
//!
//! [`HttpClient::execute`] performs one [`HttpRequest`] and blocks, so the
//! driver runs it on smol's blocking pool. The rules:
//!
//! - only `https://` URLs, or `http://` to a loopback host
//!   ([`endpoint_allowed`]); anything else is refused as
//!   [`TransportError::Other`] before any network I/O;
//! - no redirect is followed: a 3xx comes back as a response like any other
//!   status, and every status is a [`HttpOutcome::Response`] (a 400 with an
//!   OAuth error body is an answer, not a transport failure);
//! - one global deadline of `timeout_ms` covers connecting, TLS, sending and
//!   reading the whole body;
//! - the body is read up to [`MAX_BODY`] bytes; a longer one is
//!   [`TransportError::Other`];
//! - no proxy is taken from the environment (`HTTPS_PROXY` and friends are
//!   ignored): a variable inherited by the proxy process must not be able to
//!   route refresh tokens and authorization codes through a third party.
//!   A configured, explicit proxy can be added later if users need one;
//! - TLS is rustls with the webpki roots; no gzip (bodies are small JSON).
//!
//! Request and response bodies hold secrets: nothing here logs them, and
//! errors are reduced to a [`TransportError`] kind.

use std::io;
use std::time::Duration;

use credproxy_core::http::{HttpOutcome, HttpRequest, MAX_BODY, Method, TransportError};
use credproxy_core::provider::endpoint_allowed;

/// How std's resolver (`ToSocketAddrs`) words a failed lookup.
const LOOKUP_FAILED: &str = "failed to lookup address information";

/// The `User-Agent` of provider calls (unless the request sets one).
const USER_AGENT: &str = concat!("credproxy/", env!("CARGO_PKG_VERSION"));

/// Performs the engine's HTTP effects. Cheap to clone (the agent and its
/// connection pool are shared).
#[derive(Debug, Clone)]
pub struct HttpClient {
    agent: ureq::Agent,
}

impl Default for HttpClient {
    fn default() -> HttpClient {
        HttpClient::new()
    }
}

impl HttpClient {
    /// A client with the rules of the module docs. The per-request deadline
    /// comes from each [`HttpRequest::timeout_ms`].
    #[must_use]
    pub fn new() -> HttpClient {
        let agent = ureq::Agent::config_builder()
            .max_redirects(0)
            .http_status_as_error(false)
            .proxy(None)
            .user_agent(USER_AGENT)
            .build()
            .new_agent();
        HttpClient { agent }
    }

    /// Performs `request` (blocks up to its timeout).
    #[must_use]
    pub fn execute(&self, request: &HttpRequest) -> HttpOutcome {
        if !endpoint_allowed(&request.url) {
            return HttpOutcome::Failed(TransportError::Other);
        }
        match self.perform(request) {
            Ok((status, body)) => HttpOutcome::Response { status, body },
            Err(e) => HttpOutcome::Failed(classify(&e)),
        }
    }

    fn perform(&self, request: &HttpRequest) -> Result<(u16, Vec<u8>), ureq::Error> {
        // Zero would mean "no deadline" to some layers: never that.
        let timeout = Duration::from_millis(request.timeout_ms.max(1));
        let url = request.url.as_str();
        let mut response = match request.method {
            Method::Get => {
                let mut builder = self.agent.get(url);
                for (name, value) in &request.headers {
                    builder = builder.header(name.as_str(), value.as_str());
                }
                builder
                    .config()
                    .timeout_global(Some(timeout))
                    .build()
                    .call()?
            }
            Method::Post => {
                let mut builder = self.agent.post(url);
                for (name, value) in &request.headers {
                    builder = builder.header(name.as_str(), value.as_str());
                }
                let builder = builder.config().timeout_global(Some(timeout)).build();
                match &request.body {
                    Some(body) => builder.send(body.expose())?,
                    None => builder.send_empty()?,
                }
            }
        };
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY as u64)
            .read_to_vec()?;
        Ok((status, body))
    }
}

/// The transport error kind of a ureq failure.
#[must_use]
pub fn classify(error: &ureq::Error) -> TransportError {
    match error {
        ureq::Error::Timeout(_) => TransportError::Timeout,
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => TransportError::Connect,
        ureq::Error::Tls(_) | ureq::Error::Pem(_) | ureq::Error::Rustls(_) => TransportError::Tls,
        ureq::Error::TlsRequired => TransportError::Tls,
        ureq::Error::Io(e) => classify_io(e),
        _ => TransportError::Other,
    }
}

/// The kind of an I/O error: connect failures by their `ErrorKind`, TLS
/// failures by the `rustls::Error` the TLS layer wraps in an `io::Error`,
/// and name resolution failures (which std reports with an uncategorized
/// kind) by std's message.
fn classify_io(e: &io::Error) -> TransportError {
    if wraps_rustls(e) {
        return TransportError::Tls;
    }
    if e.get_ref().is_none_or(|inner| !inner.is::<ureq::Error>())
        && e.to_string().starts_with(LOOKUP_FAILED)
    {
        return TransportError::Connect;
    }
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => TransportError::Timeout,
        io::ErrorKind::ConnectionRefused
        | io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable
        | io::ErrorKind::NetworkDown
        | io::ErrorKind::AddrNotAvailable => TransportError::Connect,
        _ => TransportError::Other,
    }
}

/// Whether a `rustls::Error` is anywhere in the chain of `e`.
fn wraps_rustls(e: &io::Error) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|inner| {
        let inner: &(dyn std::error::Error + 'static) = inner;
        inner
    });
    while let Some(err) = next {
        if err.is::<rustls::Error>() {
            return true;
        }
        if let Some(ureq_err) = err.downcast_ref::<ureq::Error>() {
            return classify(ureq_err) == TransportError::Tls;
        }
        next = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds() {
        let io_err = |k| ureq::Error::Io(io::Error::from(k));
        assert_eq!(
            classify(&io_err(io::ErrorKind::ConnectionRefused)),
            TransportError::Connect
        );
        assert_eq!(
            classify(&io_err(io::ErrorKind::TimedOut)),
            TransportError::Timeout
        );
        assert_eq!(
            classify(&io_err(io::ErrorKind::ConnectionReset)),
            TransportError::Other
        );
        assert_eq!(
            classify(&ureq::Error::HostNotFound),
            TransportError::Connect
        );
        let dns = io::Error::other(format!("{LOOKUP_FAILED}: Name or service not known"));
        assert_eq!(classify(&ureq::Error::Io(dns)), TransportError::Connect);
        assert_eq!(
            classify(&ureq::Error::BodyExceedsLimit(1)),
            TransportError::Other
        );
        let tls = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(classify(&ureq::Error::Io(tls)), TransportError::Tls);
        assert_eq!(
            classify(&ureq::Error::Rustls(rustls::Error::DecryptError)),
            TransportError::Tls
        );
    }

    #[test]
    fn refuses_plain_http_to_remote_hosts_and_other_schemes() {
        let client = HttpClient::new();
        for url in [
            "http://example.com/token",
            "ftp://127.0.0.1/x",
            "file:///etc/passwd",
            "not a url",
        ] {
            let r = credproxy_core::http::get(url, 10);
            assert_eq!(
                client.execute(&r),
                HttpOutcome::Failed(TransportError::Other),
                "{url}"
            );
        }
    }
}
