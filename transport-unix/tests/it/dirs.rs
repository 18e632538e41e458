//! Private directory creation and refusals.

use std::os::unix::fs::symlink;

use credproxy_unix::{
    ModeProblem, PRIVATE_DIR_HINT, UnixError, ensure_private_dir, verify_private_dir,
};

use crate::common::{chmod, euid, mode_of, root_or_skip, short_tempdir};

/// A fresh directory of `mode` and the error `check` refuses it with; the
/// mode must be left as it was.
fn refused_at(
    mode: u32,
    check: fn(&std::path::Path) -> Result<(), UnixError>,
) -> (tempfile::TempDir, UnixError) {
    let tmp = short_tempdir();
    chmod(tmp.path(), mode);
    let err = check(tmp.path()).expect_err("refused");
    assert_eq!(mode_of(tmp.path()), mode, "mode must not be changed");
    (tmp, err)
}

#[test]
fn creates_a_missing_directory_with_mode_0700_and_accepts_it_again() {
    let tmp = short_tempdir();
    let dir = tmp.path().join("b");
    ensure_private_dir(&dir).expect("create");
    assert!(dir.is_dir());
    assert_eq!(mode_of(&dir), 0o700);
    ensure_private_dir(&dir).expect("existing private dir is accepted");
    verify_private_dir(&dir).expect("verify");
}

#[test]
fn creates_only_the_last_component() {
    let tmp = short_tempdir();
    let dir = tmp.path().join("missing").join("b");
    let err = ensure_private_dir(&dir).expect_err("parent is missing");
    assert!(matches!(err, UnixError::ParentMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!tmp.path().join("missing").exists());
}

#[test]
fn refuses_a_group_writable_directory_without_changing_it() {
    let (tmp, err) = refused_at(0o770, ensure_private_dir);
    let p = tmp.path().display();
    assert_eq!(
        err.to_string(),
        format!("socket directory {p} is group-writable; fix with chmod 700 {p}")
    );
    assert!(matches!(
        err,
        UnixError::TooOpen {
            problem: ModeProblem::GroupWritable,
            ..
        }
    ));
    assert_eq!(mode_of(tmp.path()), 0o770, "mode must not be changed");
}

#[test]
fn refuses_a_world_writable_directory() {
    // Was "fix with chmod 700": a world-writable directory is shared, and
    // changing its mode would break its other users.
    let (tmp, err) = refused_at(0o777, ensure_private_dir);
    let p = tmp.path().display();
    assert_eq!(
        err.to_string(),
        format!(
            "socket directory {p} is world-writable, a directory shared with other users; {PRIVATE_DIR_HINT}"
        )
    );
    assert!(!err.to_string().contains("chmod"), "{err}");
    assert_eq!(mode_of(tmp.path()), 0o777, "mode must not be changed");
}

#[test]
fn a_tmp_like_directory_gets_the_private_directory_hint_never_chmod() {
    for mode in [0o1777, 0o1770, 0o1755] {
        let tmp = short_tempdir();
        chmod(tmp.path(), mode);
        let err = verify_private_dir(tmp.path()).expect_err("shared");
        assert!(
            matches!(err, UnixError::SharedDir { sticky: true, .. }),
            "{mode:o}: {err:?}"
        );
        let text = err.to_string();
        assert!(!text.contains("chmod"), "{mode:o}: {text}");
        assert!(text.contains("mkdir -m 700 ~/.credproxy"), "{text}");
        assert!(text.contains("sticky"), "{text}");
    }
    // The real /tmp: shared (sticky, world-writable), or not ours.
    let err = verify_private_dir(std::path::Path::new("/tmp")).expect_err("/tmp");
    assert!(!err.to_string().contains("chmod"), "{err}");
    assert!(!err.to_string().contains("chown"), "{err}");
    assert!(err.to_string().contains(PRIVATE_DIR_HINT), "{err}");
}

#[test]
fn refuses_a_directory_readable_by_others() {
    let (tmp, err) = refused_at(0o755, verify_private_dir);
    let p = tmp.path().display();
    assert_eq!(
        err.to_string(),
        format!(
            "socket directory {p} is accessible to group or others (mode 0755); fix with chmod 700 {p}"
        )
    );
}

#[test]
fn refuses_a_symlink_even_to_a_private_directory() {
    let tmp = short_tempdir();
    let target = tmp.path().join("t");
    ensure_private_dir(&target).expect("target");
    let link = tmp.path().join("l");
    symlink(&target, &link).expect("symlink");
    let err = ensure_private_dir(&link).expect_err("symlink");
    assert_eq!(
        err.to_string(),
        format!(
            "socket directory {} is a symlink; remove it",
            link.display()
        )
    );
    assert!(
        link.symlink_metadata()
            .expect("lstat")
            .file_type()
            .is_symlink()
    );
}

#[test]
fn refuses_a_file_in_place_of_the_directory() {
    let tmp = short_tempdir();
    let file = tmp.path().join("f");
    std::fs::write(&file, b"x").expect("write");
    let err = ensure_private_dir(&file).expect_err("file");
    assert!(matches!(err, UnixError::NotADirectory { .. }), "{err:?}");
    assert_eq!(std::fs::read(&file).expect("kept"), b"x");
}

#[test]
fn refuses_a_directory_owned_by_someone_else() {
    if !root_or_skip("chown a directory to another uid") {
        return;
    }
    let tmp = short_tempdir();
    let dir = tmp.path().join("o");
    std::fs::create_dir(&dir).expect("mkdir");
    chmod(&dir, 0o700);
    nix::unistd::chown(&dir, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
    let err = ensure_private_dir(&dir).expect_err("foreign owner");
    let p = dir.display();
    let me = euid();
    assert_eq!(
        err.to_string(),
        // Was "fix with chown {me} {p}": another user's directory is not
        // ours to change; a private directory is the fix.
        format!("socket directory {p} is owned by uid 65534, not {me}; {PRIVATE_DIR_HINT}")
    );
    assert!(!err.to_string().contains("chown"), "{err}");
    assert!(matches!(err, UnixError::WrongOwner { owner: 65534, .. }));
}
