//! Where llxprt-code keeps its data directory (`<data>`) and the files in it.
//!
//! llxprt's `Storage.getGlobalDataDir()`: `LLXPRT_DATA_HOME`, then
//! `LLXPRT_CONFIG_HOME` (each only when, trimmed, it is non-empty and
//! absolute), then the env-paths default for `llxprt-code`. The environment
//! is a parameter ([`DataEnv`]) so tests never touch the process's own.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The keyring service (and directory name) of llxprt's OAuth tokens.
pub const OAUTH_SERVICE: &str = "llxprt-code-oauth";
/// The keyring service of llxprt's provider API keys.
pub const KEYS_SERVICE: &str = "llxprt-code-provider-keys";
/// The keyring service of llxprt's machine secret (account `default`).
pub const MACHINE_SECRET_SERVICE: &str = "llxprt-code-machine-secret";

/// The variables the data directory depends on.
#[derive(Debug, Clone, Default)]
pub struct DataEnv {
    /// `LLXPRT_DATA_HOME`.
    pub llxprt_data_home: Option<OsString>,
    /// `LLXPRT_CONFIG_HOME`.
    pub llxprt_config_home: Option<OsString>,
    /// `XDG_DATA_HOME` (Linux and other Unix systems but macOS).
    pub xdg_data_home: Option<OsString>,
    /// `HOME`.
    pub home: Option<OsString>,
}

impl DataEnv {
    /// The variables of this process.
    #[must_use]
    pub fn from_process() -> DataEnv {
        DataEnv {
            llxprt_data_home: std::env::var_os("LLXPRT_DATA_HOME"),
            llxprt_config_home: std::env::var_os("LLXPRT_CONFIG_HOME"),
            xdg_data_home: std::env::var_os("XDG_DATA_HOME"),
            home: std::env::var_os("HOME"),
        }
    }
}

/// Why no data directory could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cannot locate llxprt's data directory: LLXPRT_DATA_HOME, LLXPRT_CONFIG_HOME and HOME \
     give no absolute path; name it with --from DIR"
)]
pub struct NoDataDir;

/// llxprt's data directory for `env`, as llxprt itself would choose it.
pub fn data_dir(env: &DataEnv) -> Result<PathBuf, NoDataDir> {
    for var in [&env.llxprt_data_home, &env.llxprt_config_home] {
        if let Some(dir) = var.as_deref().and_then(override_dir) {
            return Ok(dir);
        }
    }
    platform_default(env).ok_or(NoDataDir)
}

/// An override counts only if, trimmed, it is non-empty and absolute.
fn override_dir(value: &std::ffi::OsStr) -> Option<PathBuf> {
    let trimmed = value.to_str()?.trim();
    let path = Path::new(trimmed);
    (!trimmed.is_empty() && path.is_absolute()).then(|| path.to_path_buf())
}

/// env-paths' data directory for `llxprt-code` (no suffix).
#[cfg(not(target_os = "macos"))]
fn platform_default(env: &DataEnv) -> Option<PathBuf> {
    // env-paths takes XDG_DATA_HOME as given when set and non-empty.
    if let Some(xdg) = env.xdg_data_home.as_deref().filter(|v| !v.is_empty()) {
        return Some(Path::new(xdg).join("llxprt-code"));
    }
    let home = absolute(env.home.as_deref())?;
    Some(home.join(".local/share/llxprt-code"))
}

/// env-paths' data directory for `llxprt-code` on macOS.
#[cfg(target_os = "macos")]
fn platform_default(env: &DataEnv) -> Option<PathBuf> {
    let home = absolute(env.home.as_deref())?;
    Some(home.join("Library/Application Support/llxprt-code"))
}

fn absolute(value: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    let path = Path::new(value?);
    path.is_absolute().then(|| path.to_path_buf())
}

/// The files of one data directory that the importer reads.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `<data>` itself.
    pub data: PathBuf,
}

impl Layout {
    /// The layout under `data`.
    #[must_use]
    pub fn new(data: PathBuf) -> Layout {
        Layout { data }
    }

    /// `<data>/secure-store/llxprt-code-oauth`: the token envelopes.
    #[must_use]
    pub fn oauth_dir(&self) -> PathBuf {
        self.data.join("secure-store").join(OAUTH_SERVICE)
    }

    /// `<data>/provider-keys`: the API key envelopes (ProviderKeyStorage
    /// passes its own directory, not `secure-store/`).
    #[must_use]
    pub fn keys_dir(&self) -> PathBuf {
        self.data.join("provider-keys")
    }

    /// `<data>/machine_secret`: the v2 machine secret, base64.
    #[must_use]
    pub fn machine_secret(&self) -> PathBuf {
        self.data.join("machine_secret")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> DataEnv {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| OsString::from(v))
        };
        DataEnv {
            llxprt_data_home: get("LLXPRT_DATA_HOME"),
            llxprt_config_home: get("LLXPRT_CONFIG_HOME"),
            xdg_data_home: get("XDG_DATA_HOME"),
            home: get("HOME"),
        }
    }

    #[test]
    fn data_home_wins_over_everything() {
        let e = env(&[
            ("LLXPRT_DATA_HOME", "/d"),
            ("LLXPRT_CONFIG_HOME", "/c"),
            ("XDG_DATA_HOME", "/x"),
            ("HOME", "/h"),
        ]);
        assert_eq!(data_dir(&e), Ok(PathBuf::from("/d")));
    }

    #[test]
    fn overrides_are_trimmed_and_must_be_absolute_and_non_empty() {
        let e = env(&[("LLXPRT_DATA_HOME", "  /d  "), ("HOME", "/h")]);
        assert_eq!(data_dir(&e), Ok(PathBuf::from("/d")));
        let e = env(&[
            ("LLXPRT_DATA_HOME", "relative/d"),
            ("LLXPRT_CONFIG_HOME", "/c"),
            ("HOME", "/h"),
        ]);
        assert_eq!(data_dir(&e), Ok(PathBuf::from("/c")));
        let e = env(&[
            ("LLXPRT_DATA_HOME", "   "),
            ("LLXPRT_CONFIG_HOME", ""),
            ("XDG_DATA_HOME", "/x"),
            ("HOME", "/h"),
        ]);
        #[cfg(not(target_os = "macos"))]
        assert_eq!(data_dir(&e), Ok(PathBuf::from("/x/llxprt-code")));
        #[cfg(target_os = "macos")]
        assert_eq!(
            data_dir(&e),
            Ok(PathBuf::from("/h/Library/Application Support/llxprt-code"))
        );
    }

    #[cfg(not(target_os = "macos"))]
    #[test]
    fn default_is_xdg_data_home_then_home_local_share() {
        let e = env(&[("XDG_DATA_HOME", "/x"), ("HOME", "/h")]);
        assert_eq!(data_dir(&e), Ok(PathBuf::from("/x/llxprt-code")));
        let e = env(&[("XDG_DATA_HOME", ""), ("HOME", "/h")]);
        assert_eq!(
            data_dir(&e),
            Ok(PathBuf::from("/h/.local/share/llxprt-code"))
        );
        let e = env(&[("HOME", "/h")]);
        assert_eq!(
            data_dir(&e),
            Ok(PathBuf::from("/h/.local/share/llxprt-code"))
        );
    }

    #[test]
    fn no_absolute_home_and_no_override_is_an_error() {
        assert_eq!(data_dir(&env(&[("HOME", "rel")])), Err(NoDataDir));
        assert_eq!(data_dir(&env(&[])), Err(NoDataDir));
    }

    #[test]
    fn layout_names_llxprt_files() {
        let l = Layout::new(PathBuf::from("/d"));
        assert_eq!(
            l.oauth_dir(),
            PathBuf::from("/d/secure-store/llxprt-code-oauth")
        );
        assert_eq!(l.keys_dir(), PathBuf::from("/d/provider-keys"));
        assert_eq!(l.machine_secret(), PathBuf::from("/d/machine_secret"));
    }
}
