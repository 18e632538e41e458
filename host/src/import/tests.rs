//! [`run`] with a keyring in memory ([`FakeKeyring`]) and the fixture
//! trees llxprt wrote: the order of the sources, the machine secrets, and
//! what counts as skipped.

use std::path::{Path, PathBuf};

use super::from_keyring::fake::FakeKeyring;
use super::*;

const FIXTURE_SECRET_B64: &str = "Y3JlZHByb3h5LWZpeHR1cmUtbWFjaGluZS1zZWNyZXQ=";
/// Base64 of 32 other bytes: a machine secret that opens none of the files.
const OTHER_SECRET_B64: &str = "b3RoZXItbWFjaGluZS1zZWNyZXQtb2YtMzItYnl0ZXM=";

fn fixture(tree: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llxprt-store")
        .join(tree)
}

fn options(data: Option<PathBuf>, keyring_explicit: bool) -> Options {
    Options {
        data,
        keyring_explicit,
        dry_run: true,
        only: None,
        overwrite: false,
        hostname: "fixture-host".into(),
        users: vec!["fixture-user".into()],
    }
}

/// A copy of `tree` in a temp dir, without its `machine_secret`.
fn without_machine_secret(tree: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["secure-store/llxprt-code-oauth", "provider-keys"] {
        let from = fixture(tree).join(sub);
        let to = dir.path().join(sub);
        fs::create_dir_all(&to).unwrap();
        for e in fs::read_dir(&from).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
    dir
}

fn would_import_v2(report: &Report) -> usize {
    report
        .rows
        .iter()
        .filter(|r| {
            matches!(
                r.outcome,
                Outcome::WouldImport {
                    version: Some(2),
                    ..
                }
            )
        })
        .count()
}

#[test]
fn the_keyring_machine_secret_opens_v2_files_without_the_file() {
    assert_eq!(OTHER_SECRET_B64.len(), FIXTURE_SECRET_B64.len());
    let data = without_machine_secret("v2");
    let k = FakeKeyring::default().with(MACHINE_SECRET_SERVICE, "default", FIXTURE_SECRET_B64);
    let opts = options(Some(data.path().to_path_buf()), false);
    let report = run(&opts, None, KeyringInput::Open(&k)).unwrap();
    assert_eq!(would_import_v2(&report), 7, "{:?}", report.rows);
    assert!(!report.anything_skipped());
    // Read once for all seven files.
    let reads = k
        .calls
        .borrow()
        .iter()
        .filter(|c| c.contains(MACHINE_SECRET_SERVICE))
        .count();
    assert_eq!(reads, 1);
    let text = report.to_text(std::time::SystemTime::now());
    assert!(!text.contains(FIXTURE_SECRET_B64), "{text}");
}

#[test]
fn a_wrong_keyring_secret_falls_back_to_the_file_and_a_bad_one_is_a_note() {
    let k = FakeKeyring::default().with(MACHINE_SECRET_SERVICE, "default", OTHER_SECRET_B64);
    let opts = options(Some(fixture("v2")), false);
    let report = run(&opts, None, KeyringInput::Open(&k)).unwrap();
    assert_eq!(would_import_v2(&report), 7);
    assert!(report.notes.is_empty(), "{:?}", report.notes);

    let k = FakeKeyring::default().with(MACHINE_SECRET_SERVICE, "default", "not base64 !");
    let report = run(&opts, None, KeyringInput::Open(&k)).unwrap();
    assert_eq!(would_import_v2(&report), 7);
    assert_eq!(report.notes.len(), 1);
    assert!(
        report.notes[0].contains("llxprt-code-machine-secret"),
        "{:?}",
        report.notes
    );

    // Neither secret opens a file: both are named in the reason.
    let data = without_machine_secret("v2");
    let k = FakeKeyring::default().with(MACHINE_SECRET_SERVICE, "default", OTHER_SECRET_B64);
    let opts = options(Some(data.path().to_path_buf()), false);
    let report = run(&opts, None, KeyringInput::Open(&k)).unwrap();
    assert_eq!(report.failures(), 7);
    let Outcome::Failed(reason) = &report.rows[0].outcome else {
        panic!("{:?}", report.rows[0]);
    };
    assert!(
        reason.contains("the keyring entry llxprt-code-machine-secret/default"),
        "{reason}"
    );
}

#[test]
fn an_unreachable_keyring_is_a_note_unless_asked_for() {
    let why = || KeyringError::Unavailable("no D-Bus session bus".into());
    let report = run(
        &options(Some(fixture("v1")), false),
        None,
        KeyringInput::Unreachable(why()),
    )
    .unwrap();
    assert!(!report.keyring_skipped());
    assert!(!report.anything_skipped());
    let text = report.to_text(std::time::SystemTime::now());
    assert!(
        text.contains("llxprt keyring: none reachable, nothing read (note:"),
        "{text}"
    );
    assert!(text.contains("7 would be imported"), "{text}");

    let report = run(&options(None, true), None, KeyringInput::Unreachable(why())).unwrap();
    assert!(report.keyring_skipped());
    let text = report.to_text(std::time::SystemTime::now());
    assert!(
        text.contains("llxprt keyring: skipped: no OS keyring"),
        "{text}"
    );
    assert!(text.contains("; the keyring was skipped"), "{text}");
    assert_eq!(report.to_json()["keyring"]["skipped"], true);
}

#[test]
fn a_keyring_entry_that_does_not_convert_still_shadows_its_file() {
    let k = FakeKeyring::default()
        .with(OAUTH_SERVICE, "qwen:default", "SECRET-not-json")
        .with(KEYS_SERVICE, "openai", "sk-from-the-keyring");
    let mut opts = options(Some(fixture("v1")), false);
    opts.only = Some(vec!["qwen".into(), "openai".into()]);
    let report = run(&opts, None, KeyringInput::Open(&k)).unwrap();
    let outcome = |account: &str, keyring: bool| {
        report
            .rows
            .iter()
            .find(|r| r.account == account && matches!(r.origin, Origin::Keyring(_)) == keyring)
            .map(|r| r.outcome.clone())
            .unwrap_or_else(|| panic!("{account} {keyring}: {:?}", report.rows))
    };
    assert!(matches!(outcome("qwen:default", true), Outcome::Failed(r) if !r.contains("SECRET")));
    assert!(matches!(
        outcome("qwen:default", false),
        Outcome::Shadowed(Origin::Keyring(_))
    ));
    assert!(matches!(
        outcome("openai", true),
        Outcome::WouldImport {
            version: None,
            refresh: None,
            ..
        }
    ));
    assert_eq!(report.rows.len(), 4, "{:?}", report.rows);
    assert!(report.anything_skipped());
    let text = report.to_text(std::time::SystemTime::now());
    assert!(
        !text.contains("SECRET") && !text.contains("sk-from"),
        "{text}"
    );
}
