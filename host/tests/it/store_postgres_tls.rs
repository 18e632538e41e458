//! The `postgres` store over TLS against a real PostgreSQL started by the
//! test ([`TestPostgres::start_new_tcp`]: 127.0.0.1 on a free port, a
//! server certificate for `localhost` from a throw-away CA, TCP clients
//! admitted only over TLS). Full verification (libpq's `verify-full`)
//! connects with the right CA; an unknown CA, a certificate for another
//! name, or a server without TLS are refused with a clear error, and
//! `require`/`verify-ca` are held to the same checks.

use credproxy::store::key::DataKey;
use credproxy::store::postgres::{Cas, PgOptions, PgStore};
use credproxy_core::Token;
use serde_json::json;

use crate::support::postgres::{TestPostgres, USER};

const ACCESS: &str = "at-PGTLS-SENTINEL-51c2";

fn key() -> DataKey {
    DataKey::from_bytes([0x24; 32])
}

fn token() -> Token {
    let serde_json::Value::Object(map) = json!({
        "access_token": ACCESS,
        "expiry": 4_000_000_000u64,
    }) else {
        unreachable!()
    };
    Token::from_map(map)
}

/// A key=value string to the TCP listener under the name `host`.
fn tcp_url(pg: &TestPostgres, host: &str, extra: &str) -> String {
    format!(
        "host={host} port={} user={USER} dbname=postgres {extra}",
        pg.port()
    )
}

fn connect(url: &str) -> Result<PgStore, String> {
    PgStore::connect(url, key(), PgOptions::default()).map_err(|e| e.to_string())
}

/// How many client connections to the server use TLS now.
fn tls_sessions(pg: &TestPostgres) -> u32 {
    pg.psql("SELECT count(*) FROM pg_stat_ssl WHERE ssl")
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn verify_full_with_the_right_ca_connects_over_tls_and_a_token_round_trips() {
    let pg = TestPostgres::start_new_tcp(true);
    let ca = pg.pki().ca.display().to_string();
    let a = connect(&tcp_url(
        &pg,
        "localhost",
        &format!("sslmode=verify-full sslrootcert={ca}"),
    ))
    .unwrap();
    assert_eq!(
        a.put_token_cas("anthropic", "default", 0, Some(&token()))
            .unwrap(),
        Cas::Written(1)
    );
    // Its pool connection and its notification listener.
    assert_eq!(tls_sessions(&pg), 2);

    // The URL form, percent-encoded root path, reads what the first wrote.
    let url = format!(
        "postgresql://{USER}@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg.port(),
        ca.replace('/', "%2F")
    );
    let b = connect(&url).unwrap();
    let read = b.read_token("anthropic", "default").unwrap().unwrap();
    let got = read.token.unwrap();
    assert_eq!(got.as_map()["access_token"], ACCESS);
    assert_eq!(tls_sessions(&pg), 4);
}

#[test]
fn a_wrong_ca_is_refused_with_a_clear_error() {
    let pg = TestPostgres::start_new_tcp(true);
    let other = pg.pki().other_ca.display().to_string();
    let err = connect(&tcp_url(
        &pg,
        "localhost",
        &format!("sslmode=verify-full sslrootcert={other} password=pw-PGTLS-SENTINEL"),
    ))
    .unwrap_err();
    assert!(err.contains("TLS with the database failed"), "{err}");
    assert!(err.contains("invalid peer certificate"), "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(!err.contains("SENTINEL"), "{err}");
    assert_eq!(tls_sessions(&pg), 0);

    // The system store (named, or by default) does not hold the test CA
    // either: refused by the handshake, or before it if the store is empty.
    for roots in ["sslrootcert=system", ""] {
        let err = connect(&tcp_url(
            &pg,
            "localhost",
            &format!("sslmode=verify-full {roots}"),
        ))
        .unwrap_err();
        assert!(
            err.contains("UnknownIssuer") || err.contains("no trusted root certificate"),
            "{roots}: {err}"
        );
    }
}

#[test]
fn a_certificate_for_another_host_name_is_refused() {
    let pg = TestPostgres::start_new_tcp(true);
    let ca = pg.pki().ca.display().to_string();
    // The certificate names localhost only: not 127.0.0.1, not a name
    // whose address is given by hostaddr.
    for url in [
        tcp_url(
            &pg,
            "127.0.0.1",
            &format!("sslmode=verify-full sslrootcert={ca}"),
        ),
        tcp_url(
            &pg,
            "db.example.com",
            &format!("hostaddr=127.0.0.1 sslmode=verify-full sslrootcert={ca}"),
        ),
    ] {
        let err = connect(&url).unwrap_err();
        assert!(err.contains("TLS with the database failed"), "{err}");
        assert!(err.contains("not valid for name"), "{err}");
    }
}

/// libpq's `require` would accept any certificate and `verify-ca` any
/// name; here both get the full checks.
#[test]
fn require_and_verify_ca_are_upgraded_to_full_verification() {
    let pg = TestPostgres::start_new_tcp(true);
    let ca = pg.pki().ca.display().to_string();
    for mode in ["require", "verify-ca"] {
        let err = connect(&tcp_url(
            &pg,
            "127.0.0.1",
            &format!("sslmode={mode} sslrootcert={ca}"),
        ))
        .unwrap_err();
        assert!(err.contains("not valid for name"), "{mode}: {err}");
        let other = pg.pki().other_ca.display().to_string();
        let err = connect(&tcp_url(
            &pg,
            "localhost",
            &format!("sslmode={mode} sslrootcert={other}"),
        ))
        .unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{mode}: {err}");
        connect(&tcp_url(
            &pg,
            "localhost",
            &format!("sslmode={mode} sslrootcert={ca}"),
        ))
        .unwrap();
    }
}

/// Loopback without an `sslmode` asking for TLS is plain TCP (that server
/// has TLS off); asking for TLS there fails clearly instead of falling
/// back to clear text.
#[test]
fn loopback_is_plain_unless_tls_is_asked_and_then_tls_is_required() {
    let pg = TestPostgres::start_new_tcp(false);
    let a = connect(&tcp_url(&pg, "127.0.0.1", "")).unwrap();
    assert!(a.read_token("anthropic", "default").unwrap().is_none());
    let ca = pg.pki().ca.display().to_string();
    let err = connect(&tcp_url(
        &pg,
        "localhost",
        &format!("sslmode=verify-full sslrootcert={ca}"),
    ))
    .unwrap_err();
    assert!(err.contains("TLS with the database failed"), "{err}");
    assert!(err.contains("server does not support TLS"), "{err}");
}
