//! The documentation runs. Every ```toml block of the Markdown documents is
//! a configuration file that the real loader accepts and that `serve`
//! starts with; every ```sh block is valid shell whose `credproxy` commands
//! and flags exist; and every block marked ```sh runnable is executed, as
//! written, in a private XDG home with the binary on `PATH` and, in its
//! working directory, `llxprt-copy`: a copy of llxprt's v2 fixture tree for
//! the README's `credproxy import llxprt` example. A block marked
//! ```sh runnable postgres gets a throw-away PostgreSQL in
//! `CREDPROXY_POSTGRES_URL`; a toml block with `store_backend = "postgres"`
//! gets one behind the key and `postgres_url_file` it names.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;

use crate::support::postgres::TestPostgres;
use crate::support::{BIN, Scratch, run_bounded};

/// The documents whose blocks are checked, relative to the workspace.
const DOCS: &[&str] = &[
    "README.md",
    "SECURITY.md",
    "CONFORMANCE.md",
    "BENCHMARKS.md",
    "core/PROTOCOL.md",
    "ARCHITECTURE.md",
];

/// One fenced block.
#[derive(Debug)]
struct Block {
    /// Document and line of the opening fence, for messages.
    whence: String,
    /// The words of the info string (`sh runnable` → `["sh", "runnable"]`).
    info: Vec<String>,
    text: String,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Every document checked: the list above and anything under `docs/`.
fn documents() -> Vec<PathBuf> {
    let root = workspace();
    let mut docs: Vec<PathBuf> = DOCS.iter().map(|d| root.join(d)).collect();
    if let Ok(entries) = fs::read_dir(root.join("docs")) {
        let mut extra: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "md"))
            .collect();
        extra.sort();
        docs.extend(extra);
    }
    docs
}

fn blocks_of(path: &Path) -> Vec<Block> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let name = path
        .strip_prefix(workspace())
        .unwrap_or(path)
        .display()
        .to_string();
    let mut out = Vec::new();
    let mut open: Option<(usize, Vec<String>, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match &mut open {
            None => {
                if let Some(info) = line.strip_prefix("```") {
                    let info = info
                        .split([' ', ','])
                        .filter(|w| !w.is_empty())
                        .map(str::to_owned)
                        .collect();
                    open = Some((n + 1, info, String::new()));
                }
            }
            Some((start, info, body)) => {
                if line.starts_with("```") {
                    out.push(Block {
                        whence: format!("{name}:{start}"),
                        info: std::mem::take(info),
                        text: std::mem::take(body),
                    });
                    open = None;
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "{name}: a fence is not closed");
    out
}

fn piped(cmd: &mut Command) {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
}

/// The blocks of every document that satisfy `keep`.
fn blocks_where(keep: impl Fn(&Block) -> bool) -> Vec<Block> {
    let mut blocks = all_blocks();
    blocks.retain(keep);
    blocks
}

fn all_blocks() -> Vec<Block> {
    documents().iter().flat_map(|d| blocks_of(d)).collect()
}

fn language(b: &Block) -> &str {
    b.info.first().map_or("", String::as_str)
}

fn runnable(b: &Block) -> bool {
    b.info.iter().any(|w| w == "runnable")
}

/// Every ```toml block loads through the real configuration loader, with
/// no deprecation warning and no provider its own allow-list blocks, and
/// `serve` starts with it and stops cleanly.
#[test]
fn every_toml_block_is_a_configuration_that_serves() {
    let blocks = blocks_where(|b| language(b) == "toml");
    assert!(!blocks.is_empty(), "the README has a configuration example");
    let mut pg: Option<TestPostgres> = None;
    for b in &blocks {
        let s = Scratch::new();
        let cfg = s.root().join("config.toml");
        fs::write(&cfg, &b.text).expect("write config");
        let cfg_arg = cfg.display().to_string();
        let parsed = credproxy::config::FileConfig::parse(&b.text, &cfg)
            .unwrap_or_else(|e| panic!("{}: {e}", b.whence));
        if parsed.store_backend == Some(credproxy::store::BackendName::Postgres) {
            // The fleet's files as the block names them, for a throw-away
            // database: the key, and the connection string (mode 0600).
            let db = pg.get_or_insert_with(TestPostgres::start_new);
            let key = s
                .root()
                .join(parsed.store_key_file.as_ref().expect("store_key_file"));
            credproxy::store::key::create_file(&key, &s.root().join("no-store")).expect("key");
            let url = s.root().join(
                parsed
                    .postgres_url_file
                    .as_ref()
                    .expect("postgres_url_file"),
            );
            fs::write(&url, db.url()).expect("write the connection string");
            fs::set_permissions(&url, fs::Permissions::from_mode(0o600)).expect("chmod");
        }

        let ran = s.run(&["providers", "--json", "--config", &cfg_arg], b"");
        ran.assert_code(0);
        assert!(
            !ran.stderr.contains("warning"),
            "{}: {}",
            b.whence,
            ran.stderr
        );
        let file = credproxy::config::FileConfig::parse(&b.text, &cfg)
            .unwrap_or_else(|e| panic!("{}: {e}", b.whence));
        assert!(
            file.warnings.is_empty(),
            "{}: {:?}",
            b.whence,
            file.warnings
        );
        if let Some(allowed) = &file.policy.allow_provider {
            for name in file.providers.keys() {
                assert!(
                    allowed.contains(name),
                    "{}: [providers.{name}] is configured but allow_provider blocks it",
                    b.whence
                );
            }
        }

        let mut proxy = match s.try_serve(&["--config", &cfg_arg]) {
            Ok(p) => p,
            Err(ran) => panic!(
                "{}: serve did not start with this configuration: {:?}\n{}",
                b.whence, ran.status, ran.stderr
            ),
        };
        let status = proxy.stop(Signal::SIGTERM);
        assert!(status.success(), "{}: {status:?}", b.whence);
        let stderr = proxy.stderr();
        assert!(!stderr.contains("warning"), "{}: {stderr}", b.whence);
    }
}

/// A command line split into words, quotes removed (enough of the shell's
/// rules for documentation: single and double quotes, backslashes).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut has = false;
    let mut chars = line.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => cur.extend(chars.next()),
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                has = true;
            }
            (None, '\\') => cur.extend(chars.next()),
            (None, '#') if !has && cur.is_empty() => break,
            (None, c) if c.is_whitespace() => {
                if has || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            (None, ';' | '|' | '&' | '(' | ')' | '<' | '>') => {
                if has || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
                out.push(c.to_string());
            }
            (None, c) => cur.push(c),
        }
    }
    if has || !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The `credproxy` invocations of a block: the subcommand path and the
/// flags given to it.
fn invocations(text: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let joined = text.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines() {
        let w = words(line);
        let mut i = 0;
        while i < w.len() {
            let is_bin = Path::new(&w[i])
                .file_name()
                .is_some_and(|n| n == "credproxy")
                && i + 1 < w.len()
                && !w[i + 1].starts_with('-')
                && !(i > 0 && w[i - 1] == "-p");
            if !is_bin {
                i += 1;
                continue;
            }
            let mut path = vec![w[i + 1].clone()];
            let mut j = i + 2;
            if ["key", "import", "store"].contains(&path[0].as_str()) && j < w.len() {
                path.push(w[j].clone());
                j += 1;
            }
            let mut flags = Vec::new();
            // `exec` stops at its command: the rest belongs to CMD.
            while j < w.len() && !["|", ";", "&", ")", ">", "<", "--"].contains(&w[j].as_str()) {
                if let Some(flag) = w[j].strip_prefix("--") {
                    flags.push(flag.split('=').next().unwrap_or(flag).to_owned());
                } else if path[0] == "exec" {
                    break;
                }
                j += 1;
            }
            out.push((path, flags));
            i = j;
        }
    }
    out
}

/// Every ```sh block is valid shell (`sh -n`), and each `credproxy`
/// command in it exists with the flags it is given.
#[test]
fn every_sh_block_parses_and_names_real_commands_and_flags() {
    let blocks = blocks_where(|b| language(b) == "sh");
    assert!(blocks.len() >= 4, "{blocks:?}");
    let s = Scratch::new();
    let mut helps: BTreeMap<Vec<String>, String> = BTreeMap::new();
    let mut checked = 0;
    for b in &blocks {
        let mut sh = Command::new("sh");
        sh.arg("-n").arg("-c").arg(&b.text);
        piped(&mut sh);
        let ran = run_bounded(sh, b"");
        assert_eq!(ran.code(), Some(0), "{}: sh -n: {}", b.whence, ran.stderr);
        for (path, flags) in invocations(&b.text) {
            let help = helps.entry(path.clone()).or_insert_with(|| {
                let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
                args.push("--help");
                let ran = s.run(&args, b"");
                assert_eq!(
                    ran.code(),
                    Some(0),
                    "{}: `credproxy {}` is not a command: {}",
                    b.whence,
                    path.join(" "),
                    ran.stderr
                );
                ran.stdout
            });
            for flag in flags {
                assert!(
                    help.contains(&format!("--{flag}")),
                    "{}: `credproxy {}` has no flag --{flag}",
                    b.whence,
                    path.join(" ")
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked} invocations checked");
}

/// The parser above finds what it should (so the test cannot pass by
/// finding nothing).
#[test]
fn invocation_parser_sees_commands_and_flags() {
    let found = invocations(
        "printf '%s' \"$K\" | credproxy key set K # c\n\
         target/release/credproxy bench --memory --runs 5\n\
         cargo run --release -p credproxy -- serve\n\
         credproxy exec -- sh -c 'credproxy call get_api_key \"{}\"'\n\
         credproxy exec sh -c 'x --not-ours'\n\
         credproxy import llxprt --dry-run --only a,b\n",
    );
    let want: Vec<(Vec<String>, Vec<String>)> = vec![
        (vec!["key".into(), "set".into()], vec![]),
        (vec!["bench".into()], vec!["memory".into(), "runs".into()]),
        (vec!["exec".into()], vec![]),
        (vec!["exec".into()], vec![]),
        (
            vec!["import".into(), "llxprt".into()],
            vec!["dry-run".into(), "only".into()],
        ),
    ];
    assert_eq!(found, want);
}

/// The blocks marked `sh runnable` run as written and exit 0, in a private
/// XDG home with `credproxy` first on `PATH`.
#[test]
fn runnable_sh_blocks_run() {
    let blocks = blocks_where(|b| language(b) == "sh" && runnable(b));
    assert!(!blocks.is_empty(), "no runnable block");
    let bin_dir = Path::new(BIN).parent().expect("binary directory");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let llxprt = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llxprt-store/v2");
    let mut pg: Option<TestPostgres> = None;
    for b in &blocks {
        let s = Scratch::new();
        copy_tree(&llxprt, &s.root().join("llxprt-copy"));
        let mut sh = Command::new("sh");
        s.isolate(sh.arg("-ec").arg(&b.text).current_dir(s.root()))
            .env("PATH", &path)
            // A stand-in for the user's own key in the README's example.
            .env("OPENAI_API_KEY", "sk-docs-example-0000");
        if b.info.iter().any(|w| w == "postgres") {
            // `sh runnable postgres`: the fleet's database, as the user
            // would have it in the environment.
            let db = pg.get_or_insert_with(TestPostgres::start_new);
            sh.env("CREDPROXY_POSTGRES_URL", db.url());
        }
        piped(&mut sh);
        let ran = run_bounded(sh, b"");
        assert_eq!(
            ran.code(),
            Some(0),
            "{}: exit {:?}\nstdout:\n{}\nstderr:\n{}",
            b.whence,
            ran.status,
            ran.stdout,
            ran.stderr
        );
    }
}

/// Copies the directory tree `src` to `dst`.
fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).expect("mkdir");
    for entry in fs::read_dir(src).expect("read fixture dir") {
        let entry = entry.expect("fixture entry");
        let to = dst.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &to);
        } else {
            fs::copy(entry.path(), &to).expect("copy fixture");
        }
    }
}

/// Every file of the workspace's crates, as paths relative to the root.
fn source_files() -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.filter_map(Result::ok) {
            let path = e.path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.display().to_string());
            }
        }
    }
    let root = workspace();
    let mut out = Vec::new();
    for krate in ["core", "host", "transport-unix", "transport-stdio"] {
        walk(&root.join(krate), &root, &mut out);
    }
    out
}

/// ARCHITECTURE.md names files and folders (`driver/state.rs::drive`,
/// `login/`, `host/src/locks.rs`): each must exist, as a path from the
/// root or as the tail of one, so the map cannot drift from the tree.
#[test]
fn architecture_names_only_files_that_exist() {
    let text = fs::read_to_string(workspace().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let files = source_files();
    let exists = |name: &str| {
        files.iter().any(|f| {
            f == name
                || f.ends_with(&format!("/{name}"))
                || (name.ends_with('/') && (f.starts_with(name) || f.contains(&format!("/{name}"))))
        })
    };
    let mut named = 0;
    let mut missing = Vec::new();
    for token in text.split(|c: char| !(c.is_ascii_alphanumeric() || "_./-:".contains(c))) {
        let token = token.split("::").next().unwrap_or_default();
        let token = token.trim_end_matches([':', '.']);
        let is_file = token.ends_with(".rs");
        let is_dir = token.ends_with('/') && token.len() > 1 && !token.starts_with("//");
        if !(is_file || is_dir) || token.contains("://") {
            continue;
        }
        named += 1;
        if !exists(token) {
            missing.push(token.to_owned());
        }
    }
    assert!(named > 40, "only {named} names found: the parser is broken");
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names what is not in the tree: {missing:?}"
    );
}
