//! Whether a connection to the database uses TLS: the decision, made
//! before anything is sent.
//!
//! A Unix socket or a loopback address never leaves the machine; any other
//! server would carry the connection (and its password) over a network, so
//! it gets TLS with certificate chain and host name verification (libpq's
//! `sslmode=verify-full`) whatever the string says: `require` and
//! `verify-ca` (weaker checks in libpq) are upgraded to full verification,
//! and `disable`, `allow` or `prefer` (which would allow clear text) are
//! refused with an error saying so. Nothing weaker than full verification
//! is ever done: a TLS connection that does not check who answers stops
//! only a passive eavesdropper.
//!
//! A local server is reached without TLS unless the string asks for it
//! (`require`, `verify-ca`, `verify-full`), and then with full
//! verification too. Unix sockets never use TLS (PostgreSQL offers none on
//! them, and libpq ignores `sslmode` there), and since the client applies
//! one mode to every host of a string, a socket cannot be listed together
//! with a server reached over TLS.

use std::fmt;
use std::net::IpAddr;

use postgres::Config;
use postgres::config::Host;

use super::sslparams::SslMode;

/// Where one host of a connection string is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// A Unix socket directory.
    Socket,
    /// A TCP server on this machine (a loopback address or `localhost`).
    Loopback,
    /// Any other TCP server.
    Remote,
}

/// What a connection does about TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No TLS: every host is local and the string asks for none, or every
    /// host is a Unix socket.
    Plain,
    /// TLS with chain and host name verification, for every host.
    VerifyFull,
    /// No connection is attempted, for this reason.
    Refused(Refusal),
}

/// Why a connection string is refused before connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No host at all (libpq's default socket is not guessed).
    NoHost,
    /// A remote host with an `sslmode` that allows clear text.
    WeakMode {
        /// The remote host.
        host: String,
        /// The mode given.
        mode: SslMode,
    },
    /// A TCP server reached by `hostaddr` alone: there is no name to check
    /// its certificate against.
    NoServerName {
        /// The address.
        addr: IpAddr,
    },
    /// A Unix socket listed with a server that needs TLS.
    SocketWithTls,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoHost => f.write_str(
                "the connection string names no host; give host=/path/to/socket/dir, a \
                 loopback address, or a server name (reached with TLS)",
            ),
            Refusal::WeakMode { host, mode } => write!(
                f,
                "host {host:?} is not a Unix socket or loopback address, so it is reached only \
                 with TLS and full certificate verification; sslmode={} would allow clear \
                 text: use sslmode=verify-full (or leave sslmode out)",
                mode.as_str()
            ),
            Refusal::NoServerName { addr } => write!(
                f,
                "hostaddr {addr} needs TLS with host name verification, but no host name is \
                 given to verify its certificate against: add host=NAME (the name in the \
                 server's certificate)"
            ),
            Refusal::SocketWithTls => f.write_str(
                "a Unix socket host cannot be listed together with a host reached over TLS \
                 (PostgreSQL has no TLS on Unix sockets, and one sslmode applies to every \
                 host): use separate connection strings",
            ),
        }
    }
}

/// Whether the TCP host `name` is this machine.
fn is_local_name(name: &str) -> bool {
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Where the `i`-th server of `config` is: its `hostaddr` (the address
/// actually connected to) if given, else its `host`.
fn reach(host: Option<&Host>, hostaddr: Option<IpAddr>) -> Reach {
    match (hostaddr, host) {
        (Some(addr), _) if addr.is_loopback() => Reach::Loopback,
        (Some(_), _) => Reach::Remote,
        (None, Some(Host::Unix(_))) => Reach::Socket,
        (None, Some(Host::Tcp(name))) if is_local_name(name) => Reach::Loopback,
        (None, _) => Reach::Remote,
    }
}

/// The decision for `config`, whose `sslmode` is `mode` (`None`: not
/// given). See the module documentation.
#[must_use]
pub fn decide(config: &Config, mode: Option<SslMode>) -> Decision {
    let hosts = config.get_hosts();
    let addrs = config.get_hostaddrs();
    let count = hosts.len().max(addrs.len());
    if count == 0 {
        return Decision::Refused(Refusal::NoHost);
    }
    let servers: Vec<(Option<&Host>, Option<IpAddr>, Reach)> = (0..count)
        .map(|i| {
            let (host, addr) = (hosts.get(i), addrs.get(i).copied());
            (host, addr, reach(host, addr))
        })
        .collect();
    let asked = matches!(
        mode,
        Some(SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull)
    );
    let first_remote = servers.iter().find(|s| s.2 == Reach::Remote);
    if let (
        Some((host, addr, _)),
        Some(weak @ (SslMode::Disable | SslMode::Allow | SslMode::Prefer)),
    ) = (first_remote, mode)
    {
        let host = match (host, addr) {
            (Some(Host::Tcp(name)), _) => name.clone(),
            (_, Some(addr)) => addr.to_string(),
            (_, None) => String::new(),
        };
        return Decision::Refused(Refusal::WeakMode { host, mode: weak });
    }
    if first_remote.is_none() && !asked {
        return Decision::Plain;
    }
    let sockets = servers.iter().filter(|s| s.2 == Reach::Socket).count();
    if sockets == count {
        return Decision::Plain;
    }
    for (host, addr, _) in &servers {
        match (host, addr) {
            (Some(Host::Tcp(_)), _) => {}
            (_, Some(addr)) => {
                return Decision::Refused(Refusal::NoServerName { addr: *addr });
            }
            (_, None) => return Decision::Refused(Refusal::SocketWithTls),
        }
    }
    Decision::VerifyFull
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::sslparams::split;

    fn decided(conn: &str) -> Decision {
        let (rest, params) = split(conn).unwrap();
        let config: Config = rest.parse().unwrap();
        decide(&config, params.mode)
    }

    fn refusal(conn: &str) -> String {
        match decided(conn) {
            Decision::Refused(r) => r.to_string(),
            other => panic!("{conn}: {other:?}"),
        }
    }

    #[test]
    fn sockets_and_loopback_are_plain_unless_tls_is_asked_for() {
        for conn in [
            "host=/run/postgresql user=a",
            "postgresql://a@localhost/db",
            "postgresql://a@127.0.0.1:5432/db",
            "host=::1 user=a",
            "postgresql://a@[::1]:5432/db",
            "host=127.0.0.5 user=a sslmode=prefer",
            "host=localhost sslmode=disable",
            "host=localhost sslmode=allow",
            "host=db.internal hostaddr=127.0.0.1",
            "host=/run/postgresql sslmode=verify-full",
            "host=/run/postgresql,/tmp sslmode=require",
        ] {
            assert_eq!(decided(conn), Decision::Plain, "{conn}");
        }
    }

    #[test]
    fn loopback_asking_for_tls_gets_full_verification() {
        for conn in [
            "host=localhost sslmode=require",
            "host=127.0.0.1 sslmode=verify-ca",
            "postgresql://a@localhost/db?sslmode=verify-full",
            "host=db.internal hostaddr=127.0.0.1 sslmode=verify-full",
        ] {
            assert_eq!(decided(conn), Decision::VerifyFull, "{conn}");
        }
    }

    #[test]
    fn remote_hosts_always_get_full_verification() {
        for conn in [
            "postgresql://a@db.example.com/db",
            "host=10.0.0.7 user=a",
            "host=db.example.com sslmode=require",
            "host=db.example.com sslmode=verify-ca",
            "host=db.example.com sslmode=verify-full",
            "postgresql://a@localhost.example.com/db",
            "host=localhost,db.example.com",
            "host=localhost hostaddr=192.0.2.7",
            "postgresql://a@h1:5432,h2:5433/db",
        ] {
            assert_eq!(decided(conn), Decision::VerifyFull, "{conn}");
        }
    }

    #[test]
    fn remote_hosts_with_a_clear_text_mode_are_refused() {
        for (conn, mode) in [
            ("host=db.example.com sslmode=disable", "disable"),
            ("postgresql://a@db.example.com/db?sslmode=allow", "allow"),
            ("host=localhost,10.0.0.7 sslmode=prefer", "prefer"),
        ] {
            let err = refusal(conn);
            assert!(err.contains(&format!("sslmode={mode}")), "{conn}: {err}");
            assert!(err.contains("verify-full"), "{conn}: {err}");
            assert!(
                err.contains("not a Unix socket or loopback"),
                "{conn}: {err}"
            );
        }
    }

    #[test]
    fn other_refusals_say_why() {
        assert!(refusal("user=a dbname=b").contains("names no host"));
        let err = refusal("hostaddr=192.0.2.7 user=a");
        assert!(
            err.contains("hostaddr 192.0.2.7") && err.contains("host=NAME"),
            "{err}"
        );
        let err = refusal("host=/run/postgresql hostaddr=127.0.0.1 sslmode=require");
        assert!(err.contains("hostaddr 127.0.0.1"), "{err}");
        let err = refusal("host=/run/postgresql,db.example.com user=a");
        assert!(err.contains("Unix socket"), "{err}");
        let err = refusal("host=/run/postgresql,localhost sslmode=verify-full");
        assert!(err.contains("Unix socket"), "{err}");
    }
}
