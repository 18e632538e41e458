//! TLS to the database: the connection string read into a
//! `postgres::Config` and the connector that [`target::decide`] calls for.
//!
//! TLS is rustls 0.23 with the ring provider, the stack ureq already
//! builds for provider calls, through tokio-postgres-rustls (the adapter
//! implementing the client's `MakeTlsConnect`; it also gives SCRAM's
//! `tls-server-end-point` channel binding). Verification is rustls'
//! WebPKI verifier: the chain up to a trusted root, and the certificate
//! valid for the connection's `host` (a DNS name, or an IP address SAN
//! for an address). That is libpq's `verify-full`, the only kind done.
//!
//! The roots are the PEM file named by libpq's `sslrootcert=PATH`, or the
//! operating system's store (rustls-native-certs) when `sslrootcert` is
//! `system` or not given. Unlike libpq, `~/.postgresql/root.crt` is not
//! looked for: a proxy's trust should not depend on its user's home.
//!
//! Client certificates (`sslcert`, `sslkey`) are not supported; the
//! client's parser refuses them as unknown options.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use postgres::config::SslMode as PgSslMode;
use postgres::{Client, Config, NoTls};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::super::error::StoreError;
use super::sslparams::{self, RootCert};
use super::target::{self, Decision};

/// Longest `sslrootcert` file read (a system bundle is a few hundred KiB).
const MAX_ROOTS_FILE: u64 = 4 * 1024 * 1024;

/// How connections are made: in clear text (local servers only, see
/// [`target`]) or with verified TLS.
#[derive(Clone)]
pub enum Connector {
    /// No TLS.
    Plain,
    /// TLS, chain and host name verified.
    VerifyFull(MakeRustlsConnect),
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Connector::Plain => "Connector::Plain",
            Connector::VerifyFull(_) => "Connector::VerifyFull",
        })
    }
}

impl Connector {
    /// Opens a connection for `config` (as returned with this connector by
    /// [`prepare`]).
    ///
    /// # Errors
    ///
    /// The client's connect error; [`handshake_error`] tells a refused
    /// certificate from an unreachable server.
    pub fn connect(&self, config: &Config) -> Result<Client, postgres::Error> {
        match self {
            Connector::Plain => config.connect(NoTls),
            Connector::VerifyFull(tls) => config.connect(tls.clone()),
        }
    }
}

fn config_error(detail: String) -> StoreError {
    StoreError::Database {
        op: "set up TLS to the database",
        detail,
    }
}

/// Reads `conn` (libpq URL or key=value form) into a configuration whose
/// `sslmode` is what [`target::decide`] decided, and the connector for it.
/// Nothing is sent to the server.
///
/// # Errors
///
/// The string does not parse, the decision is a refusal, or the roots
/// cannot be loaded.
pub fn prepare(conn: &str) -> Result<(Config, Connector), StoreError> {
    let (rest, params) = sslparams::split(conn)?;
    // The client's parse errors say "invalid connection string" and keep
    // the reason (an unknown option's name, the option with an invalid
    // value, a byte offset) in their source, never a value.
    let mut config: Config = rest
        .parse()
        .map_err(|e: postgres::Error| StoreError::Database {
            op: "parse the connection string",
            detail: match std::error::Error::source(&e) {
                Some(why) => format!("{e}: {why}"),
                None => e.to_string(),
            },
        })?;
    match target::decide(&config, params.mode) {
        Decision::Plain => {
            config.ssl_mode(PgSslMode::Disable);
            Ok((config, Connector::Plain))
        }
        Decision::VerifyFull => {
            let roots = roots(params.root_cert.as_ref())?;
            config.ssl_mode(PgSslMode::Require);
            Ok((
                config,
                Connector::VerifyFull(MakeRustlsConnect::new(client_config(roots)?)),
            ))
        }
        Decision::Refused(why) => Err(StoreError::Database {
            op: "connect",
            detail: why.to_string(),
        }),
    }
}

fn client_config(roots: RootCertStore) -> Result<ClientConfig, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The trusted roots: the `sslrootcert` file, else the system's.
fn roots(source: Option<&RootCert>) -> Result<RootCertStore, StoreError> {
    match source {
        Some(RootCert::File(path)) => file_roots(path),
        Some(RootCert::System) | None => system_roots(),
    }
}

fn file_roots(path: &Path) -> Result<RootCertStore, StoreError> {
    let shown = path.display();
    let mut pem = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_ROOTS_FILE + 1).read_to_end(&mut pem))
        .map_err(|e| config_error(format!("cannot read sslrootcert file {shown}: {e}")))?;
    if pem.len() as u64 > MAX_ROOTS_FILE {
        return Err(config_error(format!(
            "sslrootcert file {shown} is longer than {MAX_ROOTS_FILE} bytes"
        )));
    }
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert
            .map_err(|e| config_error(format!("sslrootcert file {shown} is not valid PEM: {e}")))?;
        store.add(cert).map_err(|e| {
            config_error(format!(
                "sslrootcert file {shown} holds a certificate that cannot be a trust root: {e}"
            ))
        })?;
    }
    if store.is_empty() {
        return Err(config_error(format!(
            "sslrootcert file {shown} holds no certificate (no PEM \"BEGIN CERTIFICATE\" block)"
        )));
    }
    Ok(store)
}

fn system_roots() -> Result<RootCertStore, StoreError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(found.certs);
    if store.is_empty() {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(config_error(format!(
            "no trusted root certificate found in the system store{why}; name the CA of the \
             database's certificate with sslrootcert=/path/to/ca.pem in the connection string"
        )));
    }
    Ok(store)
}

/// The client's message for a failed TLS negotiation (its error kinds are
/// private; this text and the error's source are what it exposes).
const TLS_FAILED: &str = "error performing TLS handshake";

/// The TLS reason of a failed connect, if TLS is what failed: the server's
/// certificate was refused (unknown issuer, not valid for the host name,
/// expired), the server offers no TLS, or the handshake failed otherwise.
/// That is a configuration error to fix, not an outage to wait out.
/// `None`: not a TLS failure.
#[must_use]
pub fn handshake_error(e: &postgres::Error) -> Option<StoreError> {
    let mut rustls_error = None;
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        rustls_error = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if rustls_error.is_some() {
            break;
        }
        source = err.source();
    }
    let why = match rustls_error {
        Some(tls) => tls.to_string(),
        None if e.to_string() == TLS_FAILED => std::error::Error::source(e)
            .map_or_else(|| "no reason given".to_owned(), ToString::to_string),
        None => return None,
    };
    Some(StoreError::Database {
        op: "connect",
        detail: format!(
            "TLS with the database failed: {why}; the server must offer TLS, and its \
             certificate must chain to a root of sslrootcert (or of the system store) and be \
             valid for the host name of the connection string"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(conn: &str) -> String {
        prepare(conn).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn a_clear_text_mode_to_a_remote_host_is_refused_before_connecting() {
        // 192.0.2.0/24 is TEST-NET-1: nothing answers there, and nothing
        // is sent: prepare only decides.
        for conn in [
            "host=192.0.2.7 user=u password=SECRET-pw sslmode=disable",
            "postgresql://u:SECRET-pw@db.example.com/db?sslmode=prefer",
        ] {
            let err = refused(conn);
            assert!(err.contains("sslmode="), "{err}");
            assert!(err.contains("verify-full"), "{err}");
            assert!(!err.contains("SECRET"), "{err}");
        }
    }

    #[test]
    fn local_servers_get_no_tls_unless_asked() {
        let (config, connector) = prepare("host=127.0.0.1 user=u sslmode=prefer").unwrap();
        assert!(matches!(connector, Connector::Plain));
        assert_eq!(config.get_ssl_mode(), PgSslMode::Disable);
    }

    #[test]
    fn tls_is_required_with_the_given_roots() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let err = refused(&format!(
            "host=localhost sslmode=require sslrootcert={}",
            missing.display()
        ));
        assert!(err.contains("cannot read sslrootcert file"), "{err}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = refused(&format!(
            "host=db.example.com password=SECRET-pw sslrootcert={}",
            empty.display()
        ));
        assert!(err.contains("holds no certificate"), "{err}");
        assert!(!err.contains("SECRET"), "{err}");
    }

    #[test]
    fn unknown_tls_options_are_refused_by_name_only() {
        let err = refused("host=localhost sslcert=/SECRET/client.pem");
        assert!(err.contains("sslcert"), "{err}");
        assert!(!err.contains("SECRET"), "{err}");
    }

    #[test]
    fn the_connector_shows_no_configuration() {
        assert_eq!(format!("{:?}", Connector::Plain), "Connector::Plain");
    }
}
