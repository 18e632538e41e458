//! Throw-away certificates for the PostgreSQL TLS tests, made with the
//! `openssl` command (Debian's `openssl` package, which the `postgresql`
//! package already pulls in): a CA, a server certificate for `localhost`
//! (DNS name only, no IP address) signed by it, and a second, unrelated
//! CA. EC P-256 keys, valid for two days from now.
//!
//! `openssl` missing is a failure naming the package, never a skip.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The files made by [`TestPki::generate`].
pub struct TestPki {
    /// The CA that signed the server certificate (PEM).
    pub ca: PathBuf,
    /// A CA that signed nothing here (PEM).
    pub other_ca: PathBuf,
    /// The server certificate, for `localhost` only (PEM).
    pub server_cert: PathBuf,
    /// Its private key (PEM, unencrypted).
    pub server_key: PathBuf,
}

/// The extensions of each certificate, chosen by `-extensions`.
const CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = credproxy test
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run openssl ({e}); install the Debian package `openssl` (the \
                 PostgreSQL TLS tests never skip)"
            )
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn self_signed_ca(dir: &Path, name: &str, subject: &str) {
    let (key, cert) = (format!("{name}.key"), format!("{name}.crt"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-config",
            "pki.cnf",
            "-extensions",
            "ca",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "2",
            "-subj",
            subject,
        ],
    );
}

impl TestPki {
    /// Makes the certificates in `dir` (created if missing).
    pub fn generate(dir: &Path) -> TestPki {
        fs::create_dir_all(dir).expect("pki dir");
        fs::write(dir.join("pki.cnf"), CONFIG).expect("pki.cnf");
        self_signed_ca(dir, "ca", "/CN=credproxy test CA");
        self_signed_ca(dir, "other-ca", "/CN=credproxy unrelated CA");
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-config",
                "pki.cnf",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-set_serial",
                "2",
                "-days",
                "2",
                "-extfile",
                "pki.cnf",
                "-extensions",
                "server",
                "-out",
                "server.crt",
            ],
        );
        TestPki {
            ca: dir.join("ca.crt"),
            other_ca: dir.join("other-ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        }
    }
}
