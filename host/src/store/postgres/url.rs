//! Where the connection string comes from: `CREDPROXY_POSTGRES_URL`, or the
//! file named by the `postgres_url_file` configuration key. Never a
//! command-line flag: a flag is visible to every local user in `ps` and
//! `/proc/<pid>/cmdline`, and the string may hold a password.
//!
//! The file gets the checks of a store file: opened without following a
//! symlink, a regular file, ours, mode 0600 or stricter (`dirs::open_private`).
//! Errors name the variable or the path, never the string.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Read;
use std::path::Path;

use zeroize::Zeroizing;

use super::super::dirs;
use super::super::error::StoreError;

/// The environment variable holding the connection string.
pub const ENV: &str = "CREDPROXY_POSTGRES_URL";

/// Longest connection string file read (a URL is far shorter).
const MAX_FILE: u64 = 16 * 1024;

fn missing(detail: String) -> StoreError {
    StoreError::Database {
        op: "find the connection string",
        detail,
    }
}

/// The connection string: `env(ENV)` if set and not empty, else the
/// contents of `file` (trimmed).
///
/// # Errors
///
/// Neither is given, the variable is not UTF-8, or the file is missing,
/// insecure, too long, not UTF-8 or empty.
pub fn resolve(
    env: &dyn Fn(&str) -> Option<OsString>,
    file: Option<&Path>,
) -> Result<Zeroizing<String>, StoreError> {
    if let Some(value) = env(ENV).filter(|v| !v.is_empty()) {
        let value = value
            .into_string()
            .map_err(|_| missing(format!("{ENV} is not valid UTF-8")))?;
        return Ok(Zeroizing::new(value.trim().to_owned()));
    }
    let Some(path) = file else {
        return Err(missing(format!(
            "the postgres backend needs a connection string: set {ENV} or the \
             configuration key postgres_url_file (a file of mode 0600)"
        )));
    };
    read_file(path)
}

fn read_file(path: &Path) -> Result<Zeroizing<String>, StoreError> {
    let shown = path.display();
    let cannot = |e: std::io::Error| missing(format!("cannot open postgres_url_file {shown}: {e}"));
    let (file, _) = dirs::open_private(OpenOptions::new().read(true), path, cannot)?
        .ok_or_else(|| cannot(std::io::Error::from(std::io::ErrorKind::NotFound)))?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| missing(format!("cannot read postgres_url_file {shown}: {e}")))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(missing(format!(
            "postgres_url_file {shown} is longer than {MAX_FILE} bytes"
        )));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| missing(format!("postgres_url_file {shown} is not valid UTF-8")))?
        .trim();
    if text.is_empty() {
        return Err(missing(format!("postgres_url_file {shown} is empty")));
    }
    Ok(Zeroizing::new(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const URL: &str = "host=/run/pg user=u password=pw-SENTINEL";

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    fn write(dir: &Path, text: &str, mode: u32) -> std::path::PathBuf {
        let p = dir.join("pg.url");
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn environment_wins_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "host=/other", 0o600);
        let env = |k: &str| (k == ENV).then(|| OsString::from(format!(" {URL}\n")));
        assert_eq!(resolve(&env, Some(&file)).unwrap().as_str(), URL);
    }

    #[test]
    fn a_private_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), &format!("{URL}\n"), 0o600);
        assert_eq!(resolve(&no_env, Some(&file)).unwrap().as_str(), URL);
        let empty = |k: &str| (k == ENV).then(OsString::new);
        assert_eq!(resolve(&empty, Some(&file)).unwrap().as_str(), URL);
    }

    #[test]
    fn refusals_name_the_source_never_the_string() {
        let dir = tempfile::tempdir().unwrap();
        let none = resolve(&no_env, None).unwrap_err().to_string();
        assert!(
            none.contains(ENV) && none.contains("postgres_url_file"),
            "{none}"
        );

        let open = write(dir.path(), URL, 0o644);
        let err = resolve(&no_env, Some(&open)).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(!err.contains("SENTINEL"), "{err}");

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        let err = resolve(&no_env, Some(&link)).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");

        let blank = write(dir.path(), " \n", 0o600);
        let err = resolve(&no_env, Some(&blank)).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");

        let gone = dir.path().join("missing");
        let err = resolve(&no_env, Some(&gone)).unwrap_err().to_string();
        assert!(err.contains("cannot open postgres_url_file"), "{err}");
    }
}
