//! libpq's TLS parameters that the `postgres` crate's connection string
//! parser refuses: the `sslmode` values `allow`, `verify-ca` and
//! `verify-full` (it knows `disable`, `prefer` and `require` only) and
//! `sslrootcert` (an unknown option to it). Both are taken out of the
//! string here; the rest goes, unchanged, to the crate's parser, so every
//! other parameter keeps exactly the crate's (libpq's) meaning.
//!
//! The crate's own parsers are private, so the two forms are split here
//! the way it splits them: the key=value form by libpq's grammar
//! (whitespace-separated `key = value`, a value bare or in single quotes,
//! a backslash escaping the next character), the URL form at the first
//! `?` into `&`-separated `key=value` pairs, percent-decoded (no `+` for
//! space: libpq does not decode it either). The `url` crate cannot be used
//! for the URL form: it rejects valid libpq URLs with several hosts and
//! ports (`postgresql://h1:5432,h2:5433/db`).
//!
//! Errors never quote the string, a key or a value (a mistyped one may be
//! a password); they give byte offsets.

use std::borrow::Cow;
use std::ops::Range;
use std::path::PathBuf;

use zeroize::Zeroizing;

use super::super::error::StoreError;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// `disable`: no TLS.
    Disable,
    /// `allow`: TLS only if the server insists.
    Allow,
    /// `prefer` (libpq's default): TLS if the server offers it, unverified.
    Prefer,
    /// `require`: TLS, unverified (libpq verifies the chain if a root
    /// certificate file exists).
    Require,
    /// `verify-ca`: TLS, chain verified, host name not.
    VerifyCa,
    /// `verify-full`: TLS, chain and host name verified.
    VerifyFull,
}

impl SslMode {
    /// The value as written in a connection string.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Result<SslMode, StoreError> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(malformed(
                    "sslmode must be one of disable, allow, prefer, require, verify-ca, \
                     verify-full"
                        .to_owned(),
                ));
            }
        })
    }
}

/// Where the trusted root certificates come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// `sslrootcert=system`: the operating system's trust store.
    System,
}

/// The TLS parameters found in a connection string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SslParams {
    /// `sslmode`, if given.
    pub mode: Option<SslMode>,
    /// `sslrootcert`, if given.
    pub root_cert: Option<RootCert>,
}

impl SslParams {
    fn take(&mut self, key: &str, value: &str) -> Result<bool, StoreError> {
        match key {
            "sslmode" => self.mode = Some(SslMode::parse(value)?),
            "sslrootcert" => {
                self.root_cert = Some(match value {
                    "" => return Err(malformed("sslrootcert is empty".to_owned())),
                    "system" => RootCert::System,
                    path => RootCert::File(PathBuf::from(path)),
                });
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

fn malformed(detail: String) -> StoreError {
    StoreError::Database {
        op: "parse the connection string",
        detail,
    }
}

/// Splits `conn` into the string for `postgres::Config` (without
/// `sslmode` and `sslrootcert`) and those two parameters. A parameter given
/// twice: the last one counts, as in libpq.
///
/// # Errors
///
/// The string is malformed where these two are looked for, or one of them
/// has a value libpq would refuse.
pub fn split(conn: &str) -> Result<(Zeroizing<String>, SslParams), StoreError> {
    if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        split_url(conn)
    } else {
        split_key_value(conn)
    }
}

fn split_url(conn: &str) -> Result<(Zeroizing<String>, SslParams), StoreError> {
    let mut params = SslParams::default();
    let Some((head, query)) = conn.split_once('?') else {
        return Ok((Zeroizing::new(conn.to_owned()), params));
    };
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&') {
        let ours = match pair.split_once('=') {
            Some((key, value)) => params.take(&decode(key)?, &decode(value)?)?,
            None => false,
        };
        if !ours {
            kept.push(pair);
        }
    }
    let mut rest = Zeroizing::new(String::with_capacity(conn.len()));
    rest.push_str(head);
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok((rest, params))
}

fn decode(s: &str) -> Result<Cow<'_, str>, StoreError> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map_err(|_| malformed("a URL parameter is not valid UTF-8 once decoded".to_owned()))
}

fn split_key_value(conn: &str) -> Result<(Zeroizing<String>, SslParams), StoreError> {
    let mut params = SslParams::default();
    let mut cut: Vec<Range<usize>> = Vec::new();
    let mut lexer = Lexer {
        s: conn,
        it: conn.char_indices().peekable(),
    };
    while let Some(param) = lexer.parameter()? {
        if params.take(param.key, &param.value)? {
            cut.push(param.span);
        }
    }
    let mut rest = Zeroizing::new(String::with_capacity(conn.len()));
    let mut at = 0;
    for span in cut {
        rest.push_str(&conn[at..span.start]);
        at = span.end;
    }
    rest.push_str(&conn[at..]);
    Ok((rest, params))
}

/// One `key = value` of the key=value form.
struct Param<'a> {
    key: &'a str,
    /// Unquoted and unescaped.
    value: Zeroizing<String>,
    /// The whole parameter in the string.
    span: Range<usize>,
}

/// libpq's key=value grammar, keeping where each parameter starts and
/// ends so that one can be cut out of the string.
struct Lexer<'a> {
    s: &'a str,
    it: std::iter::Peekable<std::str::CharIndices<'a>>,
}

impl<'a> Lexer<'a> {
    /// Where the next character is (the end of the string at the end).
    fn pos(&mut self) -> usize {
        self.it.peek().map_or(self.s.len(), |&(i, _)| i)
    }

    fn skip_ws(&mut self) {
        while self.it.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
    }

    /// The next `key = value`: the key, the unescaped value and the span
    /// of the whole parameter in the string; `None` at the end.
    fn parameter(&mut self) -> Result<Option<Param<'a>>, StoreError> {
        self.skip_ws();
        let start = self.pos();
        while self
            .it
            .next_if(|&(_, c)| !c.is_whitespace() && c != '=')
            .is_some()
        {}
        let key = &self.s[start..self.pos()];
        if key.is_empty() {
            if self.it.peek().is_none() {
                return Ok(None);
            }
            return Err(malformed(format!(
                "a parameter without a name at byte {start}"
            )));
        }
        self.skip_ws();
        if self.it.next_if(|&(_, c)| c == '=').is_none() {
            return Err(malformed(format!(
                "the parameter at byte {start} is not followed by \"=\""
            )));
        }
        self.skip_ws();
        let value = if self.it.next_if(|&(_, c)| c == '\'').is_some() {
            self.quoted(start)?
        } else {
            self.bare(start)?
        };
        Ok(Some(Param {
            key,
            value,
            span: start..self.pos(),
        }))
    }

    fn quoted(&mut self, param: usize) -> Result<Zeroizing<String>, StoreError> {
        let mut value = Zeroizing::new(String::new());
        loop {
            match self.it.next() {
                Some((_, '\'')) => return Ok(value),
                Some((_, '\\')) => {
                    if let Some((_, c)) = self.it.next() {
                        value.push(c);
                    }
                }
                Some((_, c)) => value.push(c),
                None => {
                    return Err(malformed(format!(
                        "the quoted value of the parameter at byte {param} is not terminated"
                    )));
                }
            }
        }
    }

    fn bare(&mut self, param: usize) -> Result<Zeroizing<String>, StoreError> {
        let mut value = Zeroizing::new(String::new());
        let start = self.pos();
        while let Some((_, c)) = self.it.next_if(|&(_, c)| !c.is_whitespace()) {
            if c == '\\' {
                if let Some((_, c)) = self.it.next() {
                    value.push(c);
                }
            } else {
                value.push(c);
            }
        }
        if self.pos() == start {
            return Err(malformed(format!(
                "the parameter at byte {param} has no value"
            )));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_ok(conn: &str) -> (String, SslParams) {
        let (rest, params) = split(conn).unwrap();
        (rest.as_str().to_owned(), params)
    }

    fn params(mode: Option<SslMode>, root: Option<RootCert>) -> SslParams {
        SslParams {
            mode,
            root_cert: root,
        }
    }

    #[test]
    fn key_value_form_loses_only_the_tls_parameters() {
        let (rest, p) = split_ok(
            "host=db.example.com sslmode=verify-full user=u sslrootcert = '/etc/my ca.pem' \
             password='p w\\'x'",
        );
        assert_eq!(rest, "host=db.example.com  user=u  password='p w\\'x'");
        assert_eq!(
            p,
            params(
                Some(SslMode::VerifyFull),
                Some(RootCert::File("/etc/my ca.pem".into()))
            )
        );
        let config: postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"p w'x"[..]));
        assert_eq!(config.get_user(), Some("u"));
    }

    #[test]
    fn the_last_of_a_repeated_parameter_counts() {
        let (rest, p) = split_ok("sslmode=disable host=h sslmode=verify-ca sslrootcert=system");
        assert_eq!(rest.trim(), "host=h");
        assert_eq!(p, params(Some(SslMode::VerifyCa), Some(RootCert::System)));
    }

    #[test]
    fn a_string_without_them_is_unchanged() {
        for conn in [
            "host=/run/pg user=u",
            "",
            "postgresql://u@h/db",
            "postgresql://u@h1:5432,h2:5433/db?connect_timeout=3",
        ] {
            let (rest, p) = split_ok(conn);
            assert_eq!(rest, conn);
            assert_eq!(p, SslParams::default());
        }
    }

    #[test]
    fn url_form_decodes_and_keeps_the_other_parameters_as_written() {
        let (rest, p) = split_ok(
            "postgresql://u:pw@h1:5432,h2:5433/db?application_name=a%20b&sslmode=verify-full\
             &sslrootcert=%2Fetc%2Fca+1.pem&connect_timeout=3",
        );
        assert_eq!(
            rest,
            "postgresql://u:pw@h1:5432,h2:5433/db?application_name=a%20b&connect_timeout=3"
        );
        assert_eq!(
            p,
            params(
                Some(SslMode::VerifyFull),
                Some(RootCert::File("/etc/ca+1.pem".into()))
            )
        );
        let (rest, p) = split_ok("postgres://h/db?sslmode=require");
        assert_eq!(rest, "postgres://h/db");
        assert_eq!(p, params(Some(SslMode::Require), None));
        rest.parse::<postgres::Config>().unwrap();
    }

    #[test]
    fn every_libpq_mode_is_known() {
        for mode in [
            SslMode::Disable,
            SslMode::Allow,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            let (_, p) = split_ok(&format!("host=h sslmode={}", mode.as_str()));
            assert_eq!(p.mode, Some(mode));
        }
    }

    #[test]
    fn refusals_never_quote_a_value() {
        for conn in [
            "host=h sslmode=SECRET-pw",
            "postgresql://h/db?sslmode=SECRET-pw",
            "host=h password='SECRET-pw",
            "host=h password",
            "host=h =SECRET-pw",
            "host=h sslrootcert=''",
            "host=h SECRET-pw",
            "postgresql://h/db?sslrootcert=%FF",
        ] {
            let err = split(conn).unwrap_err().to_string();
            assert!(!err.contains("SECRET"), "{conn}: {err}");
            assert!(err.contains("connection string"), "{conn}: {err}");
        }
    }
}
