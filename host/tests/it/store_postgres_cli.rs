//! The command line against the `postgres` backend and a real PostgreSQL
//! ([`TestPostgres`]), through the binary with `CREDPROXY_POSTGRES_URL` in
//! its environment: `store migrate` from a directory store into the
//! database and back out (every entry compared, the source removed or
//! kept, a dump without secrets, `--dry-run` writing nothing), an
//! interrupted migration rerun without loss, `migrate --check`, and
//! `status`, `key` and `logout` on the shared store. No output ever shows
//! the connection string.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use credproxy::store::postgres::{PgOptions, PgStore};
use credproxy::store::{FileStore, KeyMeta, key};
use credproxy_core::{Secret, Token};
use serde_json::{Value, json};

use crate::support::keyring::{TestKeyring, require_tool};
use crate::support::postgres::TestPostgres;
use crate::support::{self, Ran, Scratch, run_bounded};

const SECRET: &str = "at-PGCLI-SENTINEL-51d2";
const REFRESH: &str = "rt-PGCLI-SENTINEL-0b7e";
const SECRET_KEY: &str = "sk-PGCLI-SENTINEL-c3a9";

/// A scratch tree, a database and a fleet key file.
struct Fleet {
    s: Scratch,
    pg: TestPostgres,
    key: PathBuf,
}

impl Fleet {
    fn new() -> Fleet {
        let s = Scratch::new();
        let pg = TestPostgres::start_new();
        let key = s.root().join("fleet.key");
        let key_arg = key.display().to_string();
        s.run(&["store", "init-key", "--key-file", &key_arg], b"")
            .assert_code(0);
        Fleet { s, pg, key }
    }

    fn store(&self) -> String {
        self.s.store_arg()
    }

    fn key_arg(&self) -> String {
        self.key.display().to_string()
    }

    /// The binary with `args`, the database in its environment; asserts
    /// that nothing it printed holds the connection string.
    fn run(&self, args: &[&str], stdin: &[u8]) -> Ran {
        let mut cmd = self.s.command(args);
        cmd.env("CREDPROXY_POSTGRES_URL", self.pg.url())
            .stdin(Stdio::piped());
        let ran = run_bounded(cmd, stdin);
        let url = self.pg.url();
        let host = url.split_whitespace().next().expect("host=…");
        let socket_dir = host.trim_start_matches("host=");
        for out in [&ran.stdout, &ran.stderr] {
            assert!(
                !out.contains(&url) && !out.contains(socket_dir),
                "the connection string in the output:\n{out}"
            );
        }
        ran
    }

    /// [`Fleet::run`] on `kr`'s session bus (a keyring store).
    fn run_keyring(&self, kr: &TestKeyring, args: &[&str], stdin: &[u8]) -> Ran {
        let mut cmd = self.s.command(args);
        kr.apply(&mut cmd);
        cmd.env("CREDPROXY_POSTGRES_URL", self.pg.url())
            .stdin(Stdio::piped());
        run_bounded(cmd, stdin)
    }

    /// `run` with `--store-backend postgres --store-key-file KEY` after
    /// `args`.
    fn run_pg(&self, args: &[&str], stdin: &[u8]) -> Ran {
        let key = self.key_arg();
        let mut all = args.to_vec();
        all.extend(["--store-backend", "postgres", "--store-key-file", &key]);
        self.run(&all, stdin)
    }

    /// The database through the library, with the fleet key.
    fn db(&self) -> PgStore {
        let key = key::load_file(&self.key).expect("key");
        PgStore::connect(&self.pg.url(), key, PgOptions::default()).expect("connect")
    }

    /// One number from `psql`.
    fn count(&self, sql: &str) -> String {
        self.pg.psql(sql).trim().to_owned()
    }

    /// Live (not deleted) rows: tokens, API keys.
    fn live_rows(&self) -> (String, String) {
        (
            self.count("SELECT count(*) FROM credproxy_tokens WHERE ciphertext IS NOT NULL"),
            self.count("SELECT count(*) FROM credproxy_api_keys WHERE ciphertext IS NOT NULL"),
        )
    }
}

fn token(access: &str, refresh: Option<&str>) -> Value {
    let mut t = support::token_json(access);
    if let Some(r) = refresh {
        t["refresh_token"] = json!(r);
    }
    t
}

fn as_token(v: &Value) -> Token {
    let Value::Object(map) = v.clone() else {
        panic!("not an object")
    };
    Token::from_map(map)
}

/// A plaintext store with two tokens (one marked refresh-unusable) and
/// an API key.
fn seed_plain(s: &Scratch) {
    s.seed_plain_token("anthropic", "default", &token(SECRET, Some(REFRESH)));
    s.seed_plain_token("codex", "work", &token("at-codex", None));
    let store = s.open_plain_store();
    store
        .put_meta(
            "codex",
            "work",
            &KeyMeta {
                refresh_unusable: true,
            },
        )
        .expect("meta");
    store
        .set_api_key("OPENAI", &Secret::new(SECRET_KEY))
        .expect("key");
}

/// `status --json`'s tokens (expiries, refreshable, unusable marks).
fn tokens_of(ran: &Ran) -> Value {
    ran.assert_code(0);
    let v: Value = serde_json::from_str(&ran.stdout).expect("status json");
    v["tokens"].clone()
}

fn assert_no_secret_in(bytes: &[u8]) {
    for secret in [SECRET, REFRESH, SECRET_KEY, "at-codex"] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} in the dump"
        );
    }
}

#[test]
fn a_file_store_moves_into_postgres_and_back_out_unchanged() {
    let f = Fleet::new();
    seed_plain(&f.s);
    let store = f.store();
    let before = tokens_of(&f.run(&["status", "--json", "--store", &store], b""));

    let dry = f.run_pg(
        &[
            "store",
            "migrate",
            "--from",
            "file",
            "--to",
            "postgres",
            "--dry-run",
            "--store",
            &store,
        ],
        b"",
    );
    support::assert_dry_run_lists_the_seed(&dry);
    assert_eq!(
        f.count("SELECT to_regclass('credproxy_tokens') IS NULL"),
        "t",
        "the dry run did not even create the schema"
    );

    let ran = f.run_pg(
        &[
            "store", "migrate", "--from", "file", "--to", "postgres", "--store", &store,
        ],
        b"",
    );
    ran.assert_code(0);
    ran.assert_stdout_has(&[
        "moved 2 tokens and 1 API keys from file to postgres",
        &format!("(key file {})", f.key_arg()),
    ]);
    assert!(!ran.stdout.contains("SENTINEL") && !ran.stderr.contains("SENTINEL"));
    assert!(
        !support::exists(&f.s.store()),
        "the source store was removed"
    );
    assert!(!support::exists(&f.s.root().join("store.migrate-old")));
    assert_eq!(f.live_rows(), ("2".to_owned(), "1".to_owned()));
    let db = f.db();
    let got = db.get_token("anthropic", "default", true).expect("read");
    assert_eq!(got, Some(as_token(&token(SECRET, Some(REFRESH)))));
    assert_eq!(
        db.get_token("codex", "work", true).expect("read"),
        Some(as_token(&token("at-codex", None)))
    );
    assert!(db.get_meta("codex", "work").expect("meta").refresh_unusable);
    assert_eq!(
        db.get_api_key("OPENAI")
            .expect("key")
            .map(|k| k.expose().to_owned()),
        Some(SECRET_KEY.to_owned())
    );
    drop(db);
    assert_no_secret_in(&f.pg.dump());

    // The same logins through the CLI on the postgres backend.
    let on_pg = f.run_pg(&["status", "--json"], b"");
    assert_eq!(tokens_of(&on_pg), before, "{}", on_pg.stdout);
    let v: Value = serde_json::from_str(&on_pg.stdout).expect("json");
    assert_eq!(v["backend"], "postgres");
    f.run_pg(&["key", "list"], b"")
        .assert_code(0)
        .assert_stdout_has(&["OPENAI"]);

    // Out again: a dry run writes nothing, then the move.
    let dry = f.run_pg(
        &[
            "store",
            "migrate",
            "--to",
            "file",
            "--dry-run",
            "--store",
            &store,
        ],
        b"",
    );
    dry.assert_code(0);
    dry.assert_stdout_has(&["token anthropic/default", "API key OPENAI", "dry run"]);
    assert!(!support::exists(&f.s.store()));
    assert!(!support::exists(&f.s.root().join("store.migrate-new")));
    assert_eq!(f.live_rows(), ("2".to_owned(), "1".to_owned()));

    let back = f.run_pg(
        &["store", "migrate", "--to", "file", "--store", &store],
        b"",
    );
    back.assert_code(0);
    back.assert_stdout_has(&["moved 2 tokens and 1 API keys from postgres to file"]);
    assert!(!support::exists(&f.s.root().join("store.migrate-new")));
    assert_eq!(
        f.live_rows(),
        ("0".to_owned(), "0".to_owned()),
        "rows deleted"
    );
    let after = tokens_of(&f.run(
        &[
            "status",
            "--json",
            "--store",
            &store,
            "--store-backend",
            "file",
        ],
        b"",
    ));
    assert_eq!(after, before, "every token, expiry and mark came back");
    let files = FileStore::open(&f.s.store()).expect("open");
    assert_eq!(
        files.get_token("anthropic", "default", true).expect("read"),
        Some(as_token(&token(SECRET, Some(REFRESH))))
    );
    assert_eq!(
        files
            .get_api_key("OPENAI")
            .expect("key")
            .map(|k| k.expose().to_owned()),
        Some(SECRET_KEY.to_owned())
    );
    assert!(
        files
            .get_meta("codex", "work")
            .expect("meta")
            .refresh_unusable
    );
    // The unusable mark left the database with its token.
    assert!(
        !f.db()
            .get_meta("codex", "work")
            .expect("meta")
            .refresh_unusable
    );
}

#[test]
fn an_encrypted_store_moves_in_and_out_keeping_the_source_with_keep() {
    let f = Fleet::new();
    let store = f.store();
    let key = f.key_arg();
    let opened = FileStore::open_encrypted(&f.s.store(), key::load_file(&f.key).expect("key"))
        .expect("encrypted store");
    opened
        .put_token(
            "anthropic",
            "default",
            &as_token(&token(SECRET, Some(REFRESH))),
        )
        .expect("seed");
    opened
        .set_api_key("OPENAI", &Secret::new(SECRET_KEY))
        .expect("key");
    drop(opened);

    let keep_in: [&str; 11] = [
        "store",
        "migrate",
        "--from",
        "encrypted-file",
        "--to",
        "postgres",
        "--keep",
        "--store",
        &store,
        "--store-key-file",
        &key,
    ];
    let ran = f.run(&keep_in, b"");
    ran.assert_code(0);
    ran.assert_stdout_has(&["kept at", "from encrypted-file to postgres"]);
    let kept = f.s.root().join("store.migrate-old");
    assert!(support::exists(&kept.join("encrypted.check")));
    assert!(!support::exists(&f.s.store()));
    assert_eq!(f.live_rows(), ("1".to_owned(), "1".to_owned()));
    assert_no_secret_in(&f.pg.dump());

    // A second --keep cannot overwrite the kept store: a clear error after
    // copying again (nothing lost, the database as it was).
    support::mkdir(&f.s.store(), 0o700);
    let again = f.run(&keep_in, b"");
    again.assert_code(1).assert_stderr_has(&["move it away"]);
    assert_eq!(f.live_rows(), ("1".to_owned(), "1".to_owned()));
    std::fs::remove_dir_all(f.s.store()).expect("rm the empty store");

    // Out into a new encrypted store, keeping the rows.
    let out = f.run_pg(
        &[
            "store",
            "migrate",
            "--to",
            "encrypted-file",
            "--keep",
            "--store",
            &store,
        ],
        b"",
    );
    out.assert_code(0);
    out.assert_stdout_has(&["rows are kept", "from postgres to encrypted-file"]);
    assert!(support::exists(&f.s.store().join("encrypted.check")));
    for secret in [SECRET, REFRESH, SECRET_KEY] {
        assert!(support::files_containing(&f.s.store(), secret).is_empty());
    }
    assert_eq!(f.live_rows(), ("1".to_owned(), "1".to_owned()), "kept");
    let back = FileStore::open_encrypted(&f.s.store(), key::load_file(&f.key).expect("key"))
        .expect("open");
    assert_eq!(
        back.get_token("anthropic", "default", true).expect("read"),
        Some(as_token(&token(SECRET, Some(REFRESH))))
    );

    // A store already at <store> is never merged into.
    let refused = f.run_pg(
        &["store", "migrate", "--to", "file", "--store", &store],
        b"",
    );
    refused.assert_stderr(1, &["already holds a store"]);
    assert_eq!(f.live_rows(), ("1".to_owned(), "1".to_owned()));
}

#[test]
fn an_interrupted_migration_removes_nothing_and_a_rerun_finishes_it() {
    let f = Fleet::new();
    seed_plain(&f.s);
    let store = f.store();
    let into = [
        "store", "migrate", "--from", "file", "--to", "postgres", "--store", &store,
    ];

    // The database is down: a clear error, the source untouched.
    f.pg.stop();
    let down = f.run_pg(&into, b"");
    assert_ne!(down.code(), Some(0), "{}", down.stderr);
    down.assert_stderr_has(&["PostgreSQL store"]);
    assert!(!down.stderr.contains("SENTINEL"));
    assert_eq!(support::files_containing(&f.s.store(), SECRET).len(), 1);
    assert_eq!(support::files_containing(&f.s.store(), SECRET_KEY).len(), 1);

    // A partial earlier copy (one token, an older value) is overwritten.
    f.pg.start();
    f.db()
        .put_token("anthropic", "default", &as_token(&token("at-old", None)))
        .expect("partial copy");
    f.run_pg(&into, b"")
        .assert_code(0)
        .assert_stdout_has(&["moved 2 tokens and 1 API keys"]);
    assert_eq!(
        f.db()
            .get_token("anthropic", "default", true)
            .expect("read"),
        Some(as_token(&token(SECRET, Some(REFRESH))))
    );

    // Out, with the database down: nothing created, nothing deleted.
    let out = ["store", "migrate", "--to", "file", "--store", &store];
    f.pg.stop();
    let down = f.run_pg(&out, b"");
    assert_ne!(down.code(), Some(0), "{}", down.stderr);
    down.assert_stderr_has(&["PostgreSQL store"]);
    assert!(!support::exists(&f.s.store()));
    assert!(!support::exists(&f.s.root().join("store.migrate-new")));
    f.pg.start();
    assert_eq!(f.live_rows(), ("2".to_owned(), "1".to_owned()));

    // Interrupted after copying and deleting part of the rows: the copy
    // is in <store>.migrate-new, one row already gone from the database.
    let elsewhere = f.s.root().join("copy").display().to_string();
    f.run_pg(
        &[
            "store", "migrate", "--to", "file", "--keep", "--store", &elsewhere,
        ],
        b"",
    )
    .assert_code(0);
    std::fs::rename(&elsewhere, f.s.root().join("store.migrate-new")).expect("staging");
    let db = f.db();
    db.get_token("codex", "work", true).expect("fresh read");
    db.delete_token("codex", "work")
        .expect("deleted by the first run");
    drop(db);
    let rerun = f.run_pg(&out, b"");
    rerun.assert_code(0);
    assert_eq!(f.live_rows(), ("0".to_owned(), "0".to_owned()));
    let files = FileStore::open(&f.s.store()).expect("open");
    assert_eq!(
        files.list_providers().expect("list"),
        ["anthropic", "codex"],
        "nothing lost"
    );
    assert_eq!(
        files.get_token("codex", "work", true).expect("read"),
        Some(as_token(&token("at-codex", None)))
    );
    assert!(
        files
            .get_meta("codex", "work")
            .expect("meta")
            .refresh_unusable
    );
    assert_eq!(
        files
            .get_api_key("OPENAI")
            .expect("key")
            .map(|k| k.expose().to_owned()),
        Some(SECRET_KEY.to_owned())
    );
}

#[test]
fn status_key_and_logout_work_on_the_postgres_store() {
    let f = Fleet::new();
    let key = f.key_arg();
    f.run_pg(&["store", "migrate", "--to", "postgres"], b"")
        .assert_code(0)
        .assert_stdout_has(&["already postgres", "pass --from file"]);
    let no_key = f.run(&["status", "--store-backend", "postgres"], b"");
    no_key.assert_stderr(3, &["postgres backend needs the store key"]);

    f.run_pg(&["status"], b"")
        .assert_code(0)
        .assert_stdout_has(&[
            "no tokens stored",
            &format!("backend: postgres (key file {key})"),
        ]);
    f.run_pg(
        &["key", "set", "OPENAI"],
        format!("{SECRET_KEY}\n").as_bytes(),
    )
    .assert_code(0)
    .assert_stdout_has(&["stored API key OPENAI"]);
    let list = f.run_pg(&["key", "list", "--json"], b"");
    list.assert_code(0);
    assert_eq!(
        serde_json::from_str::<Value>(&list.stdout).expect("json"),
        json!({"keys": ["OPENAI"]})
    );
    assert_eq!(
        f.db()
            .get_api_key("OPENAI")
            .expect("key")
            .map(|k| k.expose().to_owned()),
        Some(SECRET_KEY.to_owned())
    );
    f.db()
        .put_token(
            "anthropic",
            "default",
            &as_token(&token(SECRET, Some(REFRESH))),
        )
        .expect("login");
    let status = f.run_pg(&["status"], b"");
    status
        .assert_code(0)
        .assert_stdout_has(&["anthropic/default\texpires 2100-01-01\trefreshable"]);
    assert!(!status.stdout.contains("SENTINEL"));
    let json = f.run_pg(&["status", "--json"], b"");
    let v: Value = serde_json::from_str(&json.stdout).expect("json");
    assert_eq!(v["backend"], "postgres");
    assert_eq!(v["key"], format!("key file {key}"));
    assert_eq!(v["tokens"][0]["provider"], "anthropic");

    f.run_pg(&["logout", "anthropic"], b"")
        .assert_code(0)
        .assert_stdout_has(&["removed the token of anthropic/default"]);
    f.run_pg(&["logout", "anthropic"], b"")
        .assert_stderr(1, &["no token stored for anthropic/default"]);
    assert_eq!(
        f.db()
            .get_token("anthropic", "default", true)
            .expect("read"),
        None
    );
    f.run_pg(&["key", "rm", "OPENAI"], b"")
        .assert_code(0)
        .assert_stdout_has(&["removed API key OPENAI"]);
    f.run_pg(&["key", "list"], b"")
        .assert_code(0)
        .assert_stdout_has(&["no API keys stored"]);
    f.run_pg(&["status"], b"")
        .assert_code(0)
        .assert_stdout_has(&["no tokens stored"]);
    assert_eq!(f.live_rows(), ("0".to_owned(), "0".to_owned()));
}

#[test]
fn migrate_check_reports_the_schema_version_and_changes_nothing() {
    let f = Fleet::new();
    let check = ["store", "migrate", "--check", "--store-backend", "postgres"];
    let fresh = f.run(&check, b"");
    fresh.assert_stderr(1, &["behind this build's", "1 migration(s)"]);
    fresh.assert_stdout_has(&[
        "database schema version: 0",
        "this build's schema version: 1",
    ]);
    assert_eq!(
        f.count("SELECT to_regclass('credproxy_schema_version') IS NULL"),
        "t",
        "the check created nothing"
    );

    // Opened once (any command on the store migrates it): current.
    f.run_pg(&["status"], b"").assert_code(0);
    let current = f.run(&check, b"");
    current.assert_code(0);
    current.assert_stdout_has(&[
        "database schema version: 1",
        "this build's schema version: 1",
        "the schema is current",
    ]);

    // A newer credproxy migrated it.
    f.pg.psql("INSERT INTO credproxy_schema_version (version) VALUES (2)");
    let newer = f.run(&check, b"");
    newer.assert_stderr(1, &["newer than this build's", "upgrade credproxy"]);
    newer.assert_stdout_has(&["database schema version: 2"]);
    f.run_pg(&["status"], b"")
        .assert_stderr(3, &["newer than this build's"]);

    // Only the postgres backend has a schema.
    f.run(
        &["store", "migrate", "--check", "--store-backend", "file"],
        b"",
    )
    .assert_stderr(2, &["--check reports the schema of the postgres backend"]);
}

#[test]
fn status_lists_a_tampered_row_as_corrupt_and_the_others_still() {
    let f = Fleet::new();
    let db = f.db();
    db.put_token(
        "anthropic",
        "default",
        &as_token(&token(SECRET, Some(REFRESH))),
    )
    .expect("login");
    db.put_token("codex", "work", &as_token(&token("at-codex", None)))
        .expect("login");
    drop(db);
    // codex's sealed value copied onto anthropic's row.
    f.pg.psql(
        "UPDATE credproxy_tokens SET ciphertext = (SELECT ciphertext FROM credproxy_tokens \
         WHERE provider = 'codex') WHERE provider = 'anthropic'",
    );
    let status = f.run_pg(&["status"], b"");
    status.assert_code(0).assert_stdout_has(&[
        "anthropic/default\tcorrupt: ",
        "codex/work\texpires 2100-01-01",
        "backend: postgres",
    ]);
    assert!(!status.stdout.contains("at-codex"), "{}", status.stdout);
    f.run_pg(&["status", "--strict"], b"").assert_code(1);

    // The database down: a clear error, no connection string.
    f.pg.stop();
    let down = f.run_pg(&["status"], b"");
    assert_ne!(down.code(), Some(0));
    down.assert_stderr_has(&["PostgreSQL store unavailable"]);
    f.run_pg(&["key", "list"], b"")
        .assert_stderr_has(&["PostgreSQL store unavailable"]);
}

/// The items of the service `credproxy` in `kr` (libsecret's view).
fn keyring_items(kr: &TestKeyring) -> usize {
    let tool = require_tool("secret-tool", "libsecret-tools");
    let mut cmd = Command::new(tool);
    cmd.args(["search", "--all", "service", "credproxy"]);
    let out = kr.apply(&mut cmd).output().expect("run secret-tool");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('['))
        .count()
}

#[test]
fn a_keyring_store_moves_into_postgres_and_its_items_leave_the_keyring() {
    let kr = TestKeyring::fresh();
    let f = Fleet::new();
    seed_plain(&f.s);
    let store = f.store();
    f.run_keyring(
        &kr,
        &["store", "migrate", "--to", "keyring", "--store", &store],
        b"",
    )
    .assert_code(0);
    assert_eq!(keyring_items(&kr), 3);
    let key = f.key_arg();
    let ran = f.run_keyring(
        &kr,
        &[
            "store",
            "migrate",
            "--from",
            "keyring",
            "--to",
            "postgres",
            "--store",
            &store,
            "--store-key-file",
            &key,
        ],
        b"",
    );
    ran.assert_code(0);
    ran.assert_stdout_has(&["moved 2 tokens and 1 API keys from keyring to postgres"]);
    assert_eq!(keyring_items(&kr), 0, "the items left with the store");
    assert!(!support::exists(&f.s.store()));
    assert_eq!(f.live_rows(), ("2".to_owned(), "1".to_owned()));
    let db = f.db();
    assert_eq!(
        db.get_token("anthropic", "default", true).expect("read"),
        Some(as_token(&token(SECRET, Some(REFRESH))))
    );
    assert!(db.get_meta("codex", "work").expect("meta").refresh_unusable);
    drop(db);

    // And out into a new keyring store, over an empty directory.
    support::mkdir(&f.s.store(), 0o700);
    let out = f.run_keyring(
        &kr,
        &[
            "store",
            "migrate",
            "--from",
            "postgres",
            "--to",
            "keyring",
            "--store",
            &store,
            "--store-key-file",
            &key,
        ],
        b"",
    );
    out.assert_code(0);
    out.assert_stdout_has(&["moved 2 tokens and 1 API keys from postgres to keyring"]);
    assert_eq!(keyring_items(&kr), 3);
    assert_eq!(f.live_rows(), ("0".to_owned(), "0".to_owned()));
    for secret in [SECRET, REFRESH, SECRET_KEY] {
        assert!(support::files_containing(&f.s.store(), secret).is_empty());
    }
    let status = f.run_keyring(&kr, &["status", "--store", &store], b"");
    status.assert_code(0).assert_stdout_has(&[
        "anthropic/default\texpires 2100-01-01\trefreshable",
        "codex/work\texpires 2100-01-01\trefresh token rejected",
        "backend: keyring",
    ]);
}
