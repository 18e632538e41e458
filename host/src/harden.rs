//! Process hardening: no core dumps, not dumpable (no ptrace by same-uid
//! processes on Linux), so a crash or a debugger cannot read tokens out of
//! memory. Through nix's safe wrappers, like every system call of the host.

use nix::sys::resource::{Resource, setrlimit};

/// Disables core dumps and, on Linux, marks the process not dumpable.
/// Failures are returned so the caller can warn; serving continues.
pub fn harden() -> std::io::Result<()> {
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(std::io::Error::from)?;
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_dumpable(false).map_err(std::io::Error::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use nix::sys::resource::{Resource, getrlimit};

    #[test]
    fn core_limit_is_zero_afterwards() {
        super::harden().unwrap();
        assert_eq!(getrlimit(Resource::RLIMIT_CORE).unwrap(), (0, 0));
        #[cfg(target_os = "linux")]
        assert!(!nix::sys::prctl::get_dumpable().unwrap());
    }
}
