//! Which database servers may be reached without TLS.
//!
//! A Unix socket or a loopback address never leaves the machine; any other
//! host would carry the connection (and its password) over a network, so
//! it needs TLS with certificate and host name verification
//! (`sslmode=verify-full` semantics). This build has no TLS connector for
//! the database yet, so such a host is refused with an error that says so,
//! instead of connecting in clear text.

use std::net::IpAddr;

use postgres::Config;
use postgres::config::Host;

use super::super::error::StoreError;

/// Whether `host` is reached without leaving the machine.
#[must_use]
pub fn is_local(host: &Host) -> bool {
    match host {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            let name = name.trim_start_matches('[').trim_end_matches(']');
            name.eq_ignore_ascii_case("localhost")
                || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
    }
}

/// Refuses a configuration with any host that is not local (see the module
/// documentation), or with no host at all (libpq's default socket).
///
/// # Errors
///
/// [`StoreError::Database`] naming the host.
pub fn check(config: &Config) -> Result<(), StoreError> {
    for host in config.get_hosts() {
        if !is_local(host) {
            let Host::Tcp(name) = host else { continue };
            return Err(StoreError::Database {
                op: "connect",
                detail: format!(
                    "host {name:?} is not a Unix socket or loopback address, and it would need \
                     TLS with full verification, which this build does not support yet; \
                     connect through a Unix socket or a loopback address (e.g. an SSH or \
                     stunnel tunnel)"
                ),
            });
        }
    }
    if config.get_hosts().is_empty() {
        return Err(StoreError::Database {
            op: "connect",
            detail: "the connection string names no host; give host=/path/to/socket/dir \
                     or a loopback address"
                .to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(url: &str) -> Result<(), String> {
        let config: Config = url.parse().unwrap();
        check(&config).map_err(|e| e.to_string())
    }

    #[test]
    fn sockets_and_loopback_need_no_tls() {
        checked("host=/run/postgresql user=a").unwrap();
        checked("postgresql://a@localhost/db").unwrap();
        checked("postgresql://a@127.0.0.1:5432/db").unwrap();
        checked("host=::1 user=a").unwrap();
        checked("postgresql://a@[::1]:5432/db").unwrap();
        checked("host=127.0.0.5 user=a").unwrap();
    }

    #[test]
    fn remote_hosts_are_refused_with_the_reason() {
        for url in [
            "postgresql://a@db.example.com/db",
            "host=10.0.0.7 user=a",
            "host=/run/postgresql,db.example.com user=a",
            "postgresql://a@localhost.example.com/db",
        ] {
            let err = checked(url).unwrap_err();
            assert!(err.contains("TLS"), "{url}: {err}");
            assert!(
                err.contains("is not a Unix socket or loopback"),
                "{url}: {err}"
            );
        }
    }

    #[test]
    fn no_host_is_refused() {
        let err = checked("user=a dbname=b").unwrap_err();
        assert!(err.contains("names no host"), "{err}");
    }
}
