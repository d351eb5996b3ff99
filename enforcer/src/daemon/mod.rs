//! `enforcer daemon`: owns the maps, serves the control socket, reaps expired blocks.
//!
//! Start-up order matters for safety: the maps are reconciled with the store *before* the
//! program is attached or swapped in, so a new build never enforces a half-filled map.
//! SIGTERM stops the daemon and leaves the program attached and every block in force.

pub mod backlog;
pub mod control_socket;
pub mod critical;
pub mod engine;
pub mod flood_watch;
pub mod kernel_sync;
pub mod ledger;
pub mod link_watch;
pub mod origins;
pub mod queries;
pub mod reads;
pub mod refusal;
pub mod round;
pub mod spool_drain;
pub mod systemd;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    access::AccessPolicy,
    audit::AuditLog,
    config::Config,
    datapath::{Datapath, DatapathOptions},
    spool,
    store::Store,
};

/// Hands a request from a part of the daemon itself (`what`: `crowdsec`...) to the engine; it
/// passes the same access check as a socket request, as the daemon.
async fn ask_engine(
    what: &'static str,
    request: crate::protocol::Request,
    engine: &mpsc::SyncSender<engine::Command>,
) -> crate::protocol::Response {
    control_socket::run(request, crate::access::Caller::internal(what), engine).await
}

/// The CrowdSec bouncer's way to the engine: [`ask_engine`] as `crowdsec`; its reads (the
/// `stats` before a usage-metrics push) go to the reader once it runs (it starts after the
/// bouncer).
struct BouncerEngine {
    engine: mpsc::SyncSender<engine::Command>,
    reader: Arc<std::sync::OnceLock<reads::Reader>>,
}

impl crate::crowdsec::Engine for BouncerEngine {
    async fn ask(&self, request: crate::protocol::Request) -> crate::protocol::Response {
        if queries::is_read(&request)
            && let Some(reader) = self.reader.get()
            && let Some(answer) = reader.answer(request.clone()).await
        {
            return control_socket::response(answer);
        }
        ask_engine(crate::crowdsec::SOURCE, request, &self.engine).await
    }

    async fn outbox(
        &self,
        request: crate::outbox::OutboxRequest,
    ) -> Result<crate::outbox::OutboxBatch, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let command =
            engine::Command::daemon(crate::crowdsec::SOURCE, engine::Ask::Outbox(request, tx));
        let engine = self.engine.clone();
        // The engine's queue is bounded: waiting for room is back-pressure, not an error.
        let sent = tokio::task::spawn_blocking(move || engine.send(command).is_ok()).await;
        if !matches!(sent, Ok(true)) {
            return Err(control_socket::SHUTTING_DOWN.to_owned());
        }
        match rx.await {
            Ok(answer) => answer.map_err(|refusal| refusal.to_body().message),
            Err(_) => Err(control_socket::STOPPED.to_owned()),
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT, or until a thread it cannot run without dies
/// (then it fails, so that its supervisor restarts it).
pub fn run(config: Config) -> anyhow::Result<()> {
    let socket_gid = socket_gid(&config)?;
    let access = Arc::new(AccessPolicy::new(config.access.clone(), socket_gid));
    for name in access.unknown_names() {
        tracing::warn!(
            "[[access]] names {name}, which this host does not know: the entry matches nobody"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (tx, rx) = mpsc::sync_channel(8192);
    // The first CrowdSec pull starts now, so that the LAPI's answer (a second for 100k
    // decisions) overlaps the start; it is applied once the engine is ready. Nothing here
    // waits for the LAPI.
    let publishing = Publishing::new(&config);
    let reader_slot = Arc::new(std::sync::OnceLock::new());
    let bouncer = start_bouncer(&config, &tx, &reader_slot, &runtime, &publishing)?;
    systemd::TestStall::named("ENFORCER_TEST_STALL_START").wait();
    let mut engine = open_engine(&config, &access, publishing.outbox)?;
    let flood = if config.flood.enabled {
        let Some(maps) = engine.take_flood() else {
            anyhow::bail!(
                "[flood] enabled = true, but the loaded data path has no flood detector: set enabled = false"
            );
        };
        Some(maps)
    } else {
        None
    };
    let layout = attach_interfaces(&mut engine, &config)?;
    let notifier = Arc::new(systemd::Notifier::from_env());
    engine.set_heartbeat(notifier.heartbeat());
    // Readers see the reconciled state from their first request on.
    engine.publish();
    let reader = reads::Reader::start(&layout.maps_dir(), engine.reads(), engine.metrics())
        .inspect_err(|e| tracing::warn!(error = %crate::error::Chain(e), "reads are answered on the engine thread"))
        .ok();
    if let Some(r) = &reader {
        // The slot is set here only, once.
        reader_slot.set(r.clone()).ok();
    }
    let shared = Shared {
        access,
        ready_status: engine.status_line(),
        metrics: engine.metrics(),
        maps_dir: layout.maps_dir(),
        notifier,
        reader,
        backlog: engine.backlog(),
        flood,
    };

    let (deaths, died) = tokio::sync::mpsc::unbounded_channel();
    if config.allowlist.builtin {
        spawn_host_watch(tx.clone(), &deaths)?;
    }
    link_watch::spawn(&tx, &deaths)?;
    let stop = Arc::new(AtomicBool::new(false));
    let engine_stop = stop.clone();
    let thread = critical::spawn("engine", &deaths, move || engine.run(rx, engine_stop))?;
    let engine = RunningEngine {
        stop,
        wake: tx.clone(),
        thread,
    };
    let result = runtime.block_on(serve(&config, tx, shared, engine, died, bouncer));
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

/// The engine's thread, and how to stop it.
struct RunningEngine {
    stop: Arc<AtomicBool>,
    wake: mpsc::SyncSender<engine::Command>,
    thread: std::thread::JoinHandle<()>,
}

impl RunningEngine {
    /// Lets the engine finish what it holds, then stops it (the watchers still have senders).
    fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let (reply, _) = tokio::sync::oneshot::channel();
        // An engine that already ended has nothing to finish: the join below says how it ended.
        self.wake
            .send(engine::Command::internal(
                "shutdown",
                crate::protocol::Request::Ping,
                reply,
            ))
            .ok();
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the engine thread panicked"))
    }
}

/// The CrowdSec bouncer's task, started before the engine, and what it waits for.
#[derive(Default)]
struct StartedBouncer {
    /// The bouncer's task, and the publisher's.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    status: Option<crate::crowdsec::StatusHandle>,
    /// Set once the engine takes requests (after the spool drain): the bouncer applies its
    /// first pull then.
    engine_ready: Option<tokio::sync::watch::Sender<bool>>,
}

/// What publishing blocks to the CrowdSec LAPI shares: the engine's queue, the set of this
/// host's own decisions (read by the bouncer) and the publisher's wake-up.
struct Publishing {
    outbox: ledger::Outbox,
    echo: Option<crate::outbox::SharedEcho>,
    wake: Arc<tokio::sync::Notify>,
}

impl Publishing {
    fn new(config: &Config) -> Self {
        let wake = Arc::new(tokio::sync::Notify::new());
        let Some(p) = config.crowdsec.as_ref().and_then(|c| c.publish.as_ref()) else {
            return Self {
                outbox: ledger::Outbox::default(),
                echo: None,
                wake,
            };
        };
        let echo = crate::outbox::SharedEcho::default();
        Self {
            outbox: ledger::Outbox::new(p.scenarios(), p.queue_max, echo.clone(), wake.clone()),
            echo: Some(echo),
            wake,
        }
    }
}

/// Starts the CrowdSec bouncer's task (and the publisher's), when configured. Fails only on
/// local setup (a bad TLS file, key or password file), never on the LAPI.
fn start_bouncer(
    config: &Config,
    tx: &mpsc::SyncSender<engine::Command>,
    reader: &Arc<std::sync::OnceLock<reads::Reader>>,
    runtime: &tokio::runtime::Runtime,
    publishing: &Publishing,
) -> anyhow::Result<StartedBouncer> {
    let Some(c) = &config.crowdsec else {
        return Ok(StartedBouncer::default());
    };
    let (ready, engine_ready) = tokio::sync::watch::channel(false);
    // The TLS setup may read files and start a blocking pool: inside the runtime.
    let _guard = runtime.enter();
    let mut bouncer = crate::crowdsec::Bouncer::new(
        c,
        BouncerEngine {
            engine: tx.clone(),
            reader: reader.clone(),
        },
        engine_ready,
    )
    .context("setting up the CrowdSec bouncer")?;
    let status = bouncer.status();
    let mut tasks = Vec::new();
    if let Some(echo) = &publishing.echo {
        bouncer.skip_own(echo.clone());
        let publisher = crate::crowdsec::publish::Publisher::new(
            c,
            BouncerEngine {
                engine: tx.clone(),
                reader: reader.clone(),
            },
            publishing.wake.clone(),
            status.clone(),
        )
        .context("setting up the CrowdSec publisher")?;
        tasks.push(runtime.spawn(publisher.run()));
    }
    tasks.push(runtime.spawn(bouncer.run()));
    Ok(StartedBouncer {
        tasks,
        status: Some(status),
        engine_ready: Some(ready),
    })
}

/// What the serving tasks share.
struct Shared {
    access: Arc<AccessPolicy>,
    ready_status: String,
    metrics: Arc<crate::metrics::Metrics>,
    maps_dir: std::path::PathBuf,
    notifier: Arc<systemd::Notifier>,
    /// Answers reads off the engine thread (`None`: the engine answers them).
    reader: Option<reads::Reader>,
    /// What the spool drain tells the engine of the triggers still to be judged.
    backlog: backlog::Backlog,
    /// The flood detector's maps, for its watcher (`None`: detection is off).
    flood: Option<crate::datapath::FloodMaps>,
}

/// Opens the state directory, the store, the audit log and the maps, and reconciles them.
fn open_engine(
    config: &Config,
    access: &AccessPolicy,
    outbox: ledger::Outbox,
) -> anyhow::Result<engine::Engine> {
    // Everything in it is written as root and trusted at the next start (the spool is root's
    // requests): a directory others may write, or another user owns, is refused.
    crate::safe_fs::private_dir(&config.state_dir, 0o750).context("the state directory")?;
    if std::fs::symlink_metadata(spool::spool_dir(&config.state_dir)).is_ok() {
        spool::check_dir(&config.state_dir).context("the spool directory")?;
    }
    let store = Store::open(&config.state_dir.join("blocks.redb"))?;
    let audit = AuditLog::open(&config.state_dir, config.audit.max_bytes, config.audit.keep)
        .with_context(|| format!("opening the audit log in {}", config.state_dir.display()))?;
    let dp = Datapath::open(&DatapathOptions {
        bpffs_dir: config.bpffs_dir.clone(),
        capacity: config.capacity.into(),
        count_block_hits: true,
        flood: config.flood.kernel(&config.policy),
        replies: config.replies == crate::config::Replies::Pass,
    })?;
    engine::Engine::start(
        store,
        dp,
        audit,
        engine::EngineConfig {
            default_ttl: config.default_ttl.0,
            policy: config.policy.clone(),
            allowlist: config.allowlist.prefixes.clone(),
            builtin_allowlist: config.allowlist.builtin,
            also_builtin: lapi_addresses(config),
            access: access.clone(),
            outbox,
            shares: ledger::Shares {
                source_percent: config.capacity.source_share,
                reserved_percent: config.capacity.reserved_share,
            },
        },
    )
}

/// Attaches every configured interface that exists (after reconciliation) and waits for the
/// others (or refuses to start without them, with `require_all_interfaces`), then releases the
/// pins of interfaces not protected now and drops older layouts once nothing uses them.
fn attach_interfaces(
    engine: &mut engine::Engine,
    config: &Config,
) -> anyhow::Result<crate::datapath::PinLayout> {
    let interfaces = crate::interfaces::Interfaces::new(config.interfaces.clone());
    let links = crate::netlink::link_states().context("reading the interfaces (RTM_GETLINK)")?;
    let missing: Vec<&str> = interfaces.missing_names(&links).collect();
    if !missing.is_empty() && config.require_all_interfaces {
        anyhow::bail!(
            "no interface named {} (see `ip link`); require_all_interfaces = true refuses to start without it (set it to false to protect the others and wait for it)",
            missing.join(", ")
        );
    }
    if !missing.is_empty() {
        tracing::warn!(missing = %missing.join(", "), "NOT protected yet: these interfaces do not exist; each is protected within a second of appearing");
    }
    if config.interfaces.is_empty() {
        tracing::warn!(
            "no interfaces configured: blocks are kept but nothing is filtered (use --iface)"
        );
    }
    engine.set_interfaces(interfaces, config.xdp_mode)?;
    // A named interface that cannot be protected stops the start. A pattern (`*`) may match
    // a link whose type the data path cannot parse: that one is refused (logged, `status`
    // shows it unprotected with the reason) and the others are protected.
    let fatal = engine.follow_links(&links).into_iter().find(|f| {
        let matched = engine
            .interfaces()
            .tracked()
            .any(|(n, o, _)| n == f.iface && *o != crate::interfaces::Origin::Named);
        !(matched
            && matches!(
                f.error,
                crate::datapath::DatapathError::UnsupportedLink { .. }
            ))
    });
    if let Some(f) = fatal {
        return Err(anyhow::Error::new(f.error).context(format!("attaching to {}", f.iface)));
    }
    let layout = engine.datapath().layout().clone();
    let protected: Vec<String> = engine
        .interfaces()
        .protected()
        .map(|(n, _)| n.to_owned())
        .collect();
    for iface in crate::datapath::pinned_interfaces(&layout) {
        if protected.contains(&iface) {
            continue;
        }
        // Not configured any more (it would keep an older program and maps), or configured
        // but absent (the pin holds a defunct link): either way the pin goes.
        let configured = config.interfaces.iter().any(|s| s.matches(&iface, false));
        match crate::datapath::detach_link(&layout, &iface) {
            Ok(()) if configured => {
                tracing::info!(%iface, "released the pin of an absent interface")
            }
            Ok(()) => {
                tracing::warn!(%iface, "detached: pinned by an earlier run but no longer configured")
            }
            Err(e) => {
                tracing::error!(%iface, error = %crate::error::Chain(&e), "cannot detach an interface that is no longer configured")
            }
        }
    }
    // Every remaining link now runs this build's program on this build's maps: pins of older
    // layouts are no longer referenced by anything we attached.
    if crate::datapath::pinned_interfaces(&layout)
        .iter()
        .all(|i| protected.contains(i))
    {
        engine.datapath().remove_stale_layouts();
    }
    Ok(layout)
}

/// The CrowdSec LAPI's addresses, for the builtin allowlist.
fn lapi_addresses(config: &Config) -> Vec<crate::policy::host::HostAddress> {
    config
        .crowdsec
        .as_ref()
        .map(|cs| cs.lapi_addresses())
        .unwrap_or_default()
        .into_iter()
        .map(|ip| crate::policy::host::HostAddress {
            target: crate::target::Target::host(ip),
            what: "crowdsec LAPI",
        })
        .collect()
}

/// Follows the host's addresses and gateways into the builtin allowlist.
fn spawn_host_watch(
    tx: mpsc::SyncSender<engine::Command>,
    deaths: &critical::Deaths,
) -> anyhow::Result<()> {
    critical::spawn("host-watch", deaths, move || {
        crate::policy::host::watch(|now| {
            tx.send(engine::Command::daemon(
                "host watcher",
                engine::Ask::HostChanged(now),
            ))
            .is_ok()
        });
    })?;
    Ok(())
}

/// The TTLs spooled requests without one get.
fn default_ttls(config: &Config) -> spool_drain::DefaultTtls {
    spool_drain::DefaultTtls {
        global: config.default_ttl.0,
        per_source: config
            .policy
            .sources
            .iter()
            .filter_map(|(s, p)| p.default_ttl.map(|d| (s.clone(), d.0)))
            .collect(),
    }
}

/// Serves the control socket (and metrics), drains the spool, until SIGTERM or SIGINT or a
/// critical thread's death; then stops in an order that leaves no client without an answer:
/// new requests are answered `unavailable` (triggers spool them), requests already taken are
/// answered, the socket goes away, and then the engine finishes and releases the store.
async fn serve(
    config: &Config,
    tx: mpsc::SyncSender<engine::Command>,
    mut shared: Shared,
    engine: RunningEngine,
    mut died: tokio::sync::mpsc::UnboundedReceiver<critical::Death>,
    bouncer: StartedBouncer,
) -> anyhow::Result<()> {
    let socket = config.socket.clone();
    let state_dir = config.state_dir.clone();
    let default_ttls = Arc::new(default_ttls(config));
    let listener = control_socket::bind(&socket, socket_gid(config)?).await?;
    // Triggers spooled while no daemon answered go first, before anyone is served.
    spool_drain::drain(&state_dir, &tx, &default_ttls, &shared.backlog).await;
    if let Some(ready) = &bouncer.engine_ready {
        // A bouncer that already ended (its error is reported by its task) waits for nothing.
        ready.send(true).ok();
    }
    tracing::info!(socket = %socket.display(), "listening");
    let mut tasks = background(config, &shared, &tx, default_ttls).await?;
    tasks.tasks.extend(bouncer.tasks);
    tasks
        .tasks
        .extend(start_flood_watch(config, &mut shared, &tx)?);
    tasks.crowdsec_status = bouncer.status;
    let limits = config.control_socket;
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let server = Arc::new(control_socket::Server {
        engine: tx,
        reader: shared.reader.clone(),
        access: shared.access.clone(),
        metrics: shared.metrics.clone(),
        crowdsec: tasks.crowdsec_status.take(),
        limits,
        permits: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
        buffered: Arc::new(tokio::sync::Semaphore::new(limits.max_buffered_bytes)),
        stopping,
    });
    let (close, closing) = tokio::sync::oneshot::channel();
    let accept = tokio::spawn(control_socket::serve(
        listener,
        server.clone(),
        socket.clone(),
        closing,
    ));
    // Blocks are reconciled and enforced, every interface attached, the socket serving.
    shared
        .notifier
        .notify(&format!("READY=1\nSTATUS={}\n", shared.ready_status));
    let death = wait_for_stop(&mut died).await?;
    shared.notifier.notify("STOPPING=1\n");
    // Nobody watching means nobody to tell.
    stopping_tx.send(true).ok();
    tasks.abort();
    // Requests the engine already took are answered (bounded: a wedged engine cannot hold the
    // stop forever; systemd's watchdog covers that case).
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    // Every permit back, or ten seconds gone: the stop goes on either way.
    tokio::time::timeout(Duration::from_secs(10), server.permits.acquire_many(all))
        .await
        .ok();
    // The socket goes before the engine lets go of the store's lock: a daemon started
    // meanwhile waits for that lock, then binds a socket of its own at the same path, which
    // this one must neither answer on nor remove. Whoever connects from now on finds no
    // daemon, and a trigger spools, as it does on `unavailable`. The accept loop may have
    // ended already (its task was aborted or failed); how it ended changes nothing now.
    close.send(()).ok();
    accept.await.ok();
    let stopped = tokio::task::spawn_blocking(move || engine.stop()).await?;
    match death {
        Some(d) => Err(anyhow::Error::new(d)),
        None => stopped,
    }
}

/// Waits for SIGTERM, SIGINT (`None`) or a critical thread's death.
async fn wait_for_stop(
    died: &mut tokio::sync::mpsc::UnboundedReceiver<critical::Death>,
) -> anyhow::Result<Option<critical::Death>> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let death = tokio::select! {
        _ = term.recv() => None,
        _ = tokio::signal::ctrl_c() => None,
        Some(d) = died.recv() => Some(d),
    };
    match &death {
        None => tracing::info!(
            "SIGTERM or SIGINT: shutting down; XDP stays attached, blocks stay in force"
        ),
        Some(d) => tracing::error!("{d}; XDP stays attached, blocks stay in force"),
    }
    Ok(death)
}

/// The daemon's background tasks: the spool drain, the metrics endpoint, the CrowdSec bouncer
/// (started earlier, see [`start_bouncer`]).
struct Background {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    crowdsec_status: Option<crate::crowdsec::StatusHandle>,
}

impl Background {
    fn abort(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn background(
    config: &Config,
    shared: &Shared,
    tx: &mpsc::SyncSender<engine::Command>,
    default_ttls: Arc<spool_drain::DefaultTtls>,
) -> anyhow::Result<Background> {
    // A hook that timed out against a busy daemon spools too: keep draining while running.
    let spool_tx = tx.clone();
    let spool_state = config.state_dir.clone();
    let backlog = shared.backlog.clone();
    let mut tasks = vec![tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            spool_drain::drain(&spool_state, &spool_tx, &default_ttls, &backlog).await;
        }
    })];
    tasks.extend(start_exporter(config, shared).await?);
    Ok(Background {
        tasks,
        crowdsec_status: None,
    })
}

fn socket_gid(config: &Config) -> anyhow::Result<Option<u32>> {
    config
        .socket_group
        .as_deref()
        .map(crate::access::group_id)
        .transpose()
        .map_err(Into::into)
}

/// Turns the flood detector's reports into block requests, when detection is on; else says
/// in status and metrics that it is off.
fn start_flood_watch(
    config: &Config,
    shared: &mut Shared,
    tx: &mpsc::SyncSender<engine::Command>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(maps) = shared.flood.take() else {
        flood_watch::publish_off(&config.flood, &shared.metrics);
        return Ok(None);
    };
    let hold = config.flood.kernel(&config.policy).hold != 0;
    let task = flood_watch::spawn(
        config.flood.clone(),
        hold,
        maps,
        tx.clone(),
        shared.metrics.clone(),
    )?;
    tracing::info!(hold, "flood detection on");
    Ok(Some(task))
}

/// Serves `/metrics` when configured.
async fn start_exporter(
    config: &Config,
    shared: &Shared,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = config.metrics.listen else {
        return Ok(None);
    };
    let listener = crate::metrics::http::bind(addr).await?;
    let stats = crate::datapath::StatsReader::open_pinned(&shared.maps_dir)
        .inspect_err(|e| tracing::warn!(error = %crate::error::Chain(e), "metrics: the data path's counters are unreadable"))
        .ok();
    let endpoint = Arc::new(crate::metrics::http::Endpoint {
        metrics: shared.metrics.clone(),
        stats,
        state_dir: config.state_dir.clone(),
    });
    tracing::info!(%addr, "serving metrics at /metrics");
    Ok(Some(tokio::spawn(crate::metrics::http::serve(
        listener, endpoint,
    ))))
}
