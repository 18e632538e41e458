//! Running the proxy: on a Unix socket (`serve`, `exec`) or on stdio.

use std::io::Write as _;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use credproxy_core::{Config, Engine};
use credproxy_unix::{
    Instance, Listener, PeerPolicy, ShutdownSignal, ShutdownSignals, TokenMode, base_dir,
    remove_stale_instances,
};
use rand_core::UnwrapErr;
use smol::channel::{Sender, unbounded};
use smol::{LocalExecutor, Timer};

use crate::audit_log::AuditLog;
use crate::driver::{Driver, Event, Lifetime, OpenCount};
use crate::store::{Backend, Store, StoreSpec};
use crate::{accept, fd_limit};

/// Everything `serve`, `exec` and `stdio` share.
#[derive(Debug)]
pub struct ServeOptions {
    /// Engine configuration (limits, policy; the token is filled in here).
    pub config: Config,
    /// The store: directory, backend and key source.
    pub store: StoreSpec,
    /// Audit log destination.
    pub audit: AuditLog,
    /// Extra peer uids allowed on the socket besides ours and root.
    pub allowed_uids: Vec<u32>,
    /// Threads doing socket I/O.
    pub io_threads: NonZeroUsize,
}

/// Where to put the socket.
#[derive(Debug, Clone)]
pub enum Placement {
    /// A fresh per-instance directory under the private base directory.
    Instance,
    /// A fixed path (`--socket PATH`).
    Fixed(PathBuf),
}

/// A failure to start, with a message a person can act on.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

fn err(e: impl std::fmt::Display) -> StartError {
    StartError(e.to_string())
}

/// The socket, ready to accept, with the variables a client needs.
pub struct Bound {
    /// The instance (removed on drop).
    pub instance: Instance,
    listener: Listener,
}

impl Bound {
    /// `KEY=VALUE` lines for a client's environment.
    #[must_use]
    pub fn exports(&self) -> Vec<(String, String)> {
        let sock = self.instance.socket_path().display().to_string();
        let mut v = vec![
            ("CREDPROXY_SOCKET".to_owned(), sock.clone()),
            ("LLXPRT_CREDENTIAL_SOCKET".to_owned(), sock),
        ];
        if let Some(t) = self.instance.token_path() {
            v.push((
                "CREDPROXY_CAPABILITY_FILE".to_owned(),
                t.display().to_string(),
            ));
        }
        v
    }
}

/// Places and binds the socket (SPEC §6.1), with or without a token.
pub fn bind(
    placement: &Placement,
    with_token: bool,
    allowed_uids: Vec<u32>,
) -> Result<Bound, StartError> {
    let mode = if with_token {
        TokenMode::Generate
    } else {
        TokenMode::Disabled
    };
    let instance = match placement {
        Placement::Instance => {
            let base = base_dir().map_err(err)?;
            // `create` checks the socket path length before it creates
            // anything (the base directory included), then creates or
            // verifies the base directory. Stale instances are removed
            // after: ours has no socket yet, so it is never taken for one.
            let instance = Instance::create(&base, mode).map_err(err)?;
            remove_stale_instances(&base).map_err(err)?;
            instance
        }
        Placement::Fixed(path) => Instance::fixed(path, mode).map_err(err)?,
    };
    let listener = Listener::bind(&instance, PeerPolicy::new(allowed_uids)).map_err(err)?;
    Ok(Bound { instance, listener })
}

/// The engine with the production RNG.
pub fn engine(config: Config) -> Result<Engine<UnwrapErr<getrandom::SysRng>>, StartError> {
    Engine::new(config, UnwrapErr(getrandom::SysRng)).map_err(err)
}

/// Opens the store, creating it if needed, as a proxy does (a keyring
/// store opens before its keyring answers, see [`Store::open_for_proxy`]);
/// the backend's one-time notice (a key file was created) or warning (no
/// keyring yet) goes to stderr.
pub fn open_store(spec: &StoreSpec) -> Result<(Arc<Store>, Backend), StartError> {
    let (store, backend) = Store::open_for_proxy(spec).map_err(err)?;
    if let Some(notice) = &backend.notice {
        let _ = writeln!(std::io::stderr(), "credproxy: notice: {notice}");
    }
    if let Some(warning) = &backend.warning {
        let _ = writeln!(std::io::stderr(), "credproxy: warning: {warning}");
    }
    Ok((Arc::new(store), backend))
}

/// Accepts connections until the driver is gone (see [`crate::accept`]),
/// warning on stderr when descriptors run out.
async fn accept_loop(listener: Listener, events: Sender<Event>, open: OpenCount) {
    let hooks = accept::Hooks {
        sleep: |wait| async move {
            Timer::after(wait).await;
        },
        warn: move |e: &std::io::Error| {
            let text = accept::warning_text(e, open(), fd_limit::current_nofile());
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        },
    };
    accept::run(listener, events, hooks).await;
}

/// Serves `bound` until a shutdown signal or until `until` completes;
/// returns the signal, if one ended it. `ready` runs once everything is
/// in place, just before serving (e.g. to print the socket's path).
pub fn run_socket<F>(
    opts: ServeOptions,
    store: Arc<Store>,
    bound: Bound,
    signals: ShutdownSignals,
    ready: impl FnOnce(&Bound),
    until: F,
) -> Result<Option<ShutdownSignal>, StartError>
where
    F: std::future::Future<Output = ()> + 'static,
{
    let mut config = opts.config;
    fd_limit::fit(&mut config.limits, opts.io_threads);
    config.capability_token = bound.instance.token().cloned();
    let engine = engine(config)?;
    let ex = LocalExecutor::new();
    let (tx, rx) = unbounded();
    let audit = Arc::new(opts.audit);
    let held = Arc::clone(&store);
    let mut driver = Driver::new(engine, store, audit, tx.clone()).io_threads(opts.io_threads);
    driver.start_io().map_err(err)?;
    ready(&bound);
    let signal_slot = std::rc::Rc::new(std::cell::Cell::new(None));
    let Bound { instance, listener } = bound;
    ex.spawn(accept_loop(listener, tx.clone(), driver.open_connections()))
        .detach();
    let slot = signal_slot.clone();
    let stop = tx.clone();
    ex.spawn(async move {
        let mut signals = signals;
        if let Ok(sig) = signals.recv().await {
            slot.set(Some(sig));
        }
        let _ = stop.send(Event::Shutdown).await;
    })
    .detach();
    ex.spawn(async move {
        until.await;
        let _ = tx.send(Event::Shutdown).await;
    })
    .detach();
    let served = smol::block_on(ex.run(driver.run(&ex, rx, Lifetime::UntilShutdown)));
    held.flush(RELEASE_FLUSH);
    instance.cleanup().map_err(err)?;
    served.map_err(err)?;
    Ok(signal_slot.get())
}

/// Serves one connection on stdin/stdout until it closes.
pub fn run_stdio(opts: ServeOptions, store: Arc<Store>) -> Result<(), StartError> {
    let engine = engine(opts.config)?;
    let ex = LocalExecutor::new();
    let (tx, rx) = unbounded();
    let held = Arc::clone(&store);
    // One connection: one I/O thread is plenty.
    let driver =
        Driver::new(engine, store, Arc::new(opts.audit), tx.clone()).io_threads(NonZeroUsize::MIN);
    let (reader, writer) = credproxy_stdio::streams();
    let open = Event::Open {
        reader: Box::pin(reader),
        writer: Box::pin(writer),
        on_close: Box::new(|| {}),
        peer: credproxy_stdio::parent_peer(),
    };
    let served = smol::block_on(ex.run(async {
        let _ = tx.send(open).await;
        driver.run(&ex, rx, Lifetime::SingleConnection).await
    }));
    held.flush(RELEASE_FLUSH);
    served.map_err(err)
}

/// How long a stopping proxy waits for its store to give back its refresh
/// leases (the postgres backend); a lease not given back expires by itself.
const RELEASE_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);
