use std::path::PathBuf;

use anyhow::Context as _;

use crate::{
    config::{Config, DEFAULT_CONFIG},
    datapath::XdpModeRequest,
    duration::HumanDuration,
};

/// `enforcer daemon`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (optional when it does not exist at the default path).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Exit 0 if the configuration names an interface to protect, 1 (with a hint) if not: the
    /// systemd unit's start condition, so an installed but unconfigured daemon stays stopped.
    #[arg(long)]
    pub check_interfaces: bool,
    /// Interface to protect: a name, or a pattern (`*` any run of characters, `?` one
    /// character; never the loopback). Repeatable; replaces the file's list.
    #[arg(long = "iface")]
    pub ifaces: Vec<crate::interfaces::InterfaceSpec>,
    /// Refuse to start while a named interface does not exist (default: protect those that
    /// exist and wait for the others).
    #[arg(long)]
    pub require_all_interfaces: bool,
    /// XDP mode: auto (native, else skb), native, skb.
    #[arg(long)]
    pub xdp_mode: Option<XdpModeRequest>,
    /// State directory (store, audit log, spool).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// bpffs directory for pins.
    #[arg(long)]
    pub bpffs_dir: Option<PathBuf>,
    /// Group allowed to use the control socket.
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Default TTL.
    #[arg(long)]
    pub default_ttl: Option<HumanDuration>,
    /// Capacity of each single-address map (per family).
    #[arg(long)]
    pub max_addresses: Option<u32>,
    /// Capacity of each prefix map (per family).
    #[arg(long)]
    pub max_prefixes: Option<u32>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9466); off unless set here or
    /// in `[metrics] listen`.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Most control socket connections at once (`[control_socket] max_connections`).
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Close a control connection without a complete request for this long
    /// (`[control_socket] idle_timeout`).
    #[arg(long)]
    pub idle_timeout: Option<HumanDuration>,
    /// Run in this network namespace (a name under /run/netns), e.g. to protect the interfaces
    /// of a container host's namespace. Unlike `ip netns exec`, this keeps the host's
    /// /sys/fs/bpf, so pins outlive the process.
    #[arg(long)]
    pub netns: Option<String>,
}

/// Moves the process into a named network namespace. Called before any thread exists, so every
/// thread the daemon starts inherits it.
fn enter_netns(name: &str) -> anyhow::Result<()> {
    let path = std::path::Path::new("/run/netns").join(name);
    let file = std::fs::File::open(&path)
        .with_context(|| format!("opening network namespace {}", path.display()))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(std::io::Error::from)
        .with_context(|| format!("entering network namespace {name}"))
}

pub(super) fn run(a: Args, socket: Option<PathBuf>) -> anyhow::Result<()> {
    let path = a
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let mut config = if a.config.is_some() || path.exists() {
        Config::load(&path)?
    } else {
        Config::default()
    };
    if a.check_config {
        println!("{}: ok", path.display());
        return Ok(());
    }
    if a.check_interfaces {
        if config.interfaces.is_empty() && a.ifaces.is_empty() {
            anyhow::bail!(
                "{} names no interface: set `interfaces = [\"eth0\"]` (your interfaces), then `systemctl start enforcer`",
                path.display()
            );
        }
        let ifaces = if a.ifaces.is_empty() {
            &config.interfaces
        } else {
            &a.ifaces
        };
        let names: Vec<&str> = ifaces
            .iter()
            .map(crate::interfaces::InterfaceSpec::as_str)
            .collect();
        println!("{}: protects {}", path.display(), names.join(", "));
        return Ok(());
    }
    if let Some(ns) = &a.netns {
        enter_netns(ns)?;
    }
    // The global --socket / ENFORCER_SOCKET wins over the file.
    if let Some(s) = socket {
        config.socket = s;
    }
    if !a.ifaces.is_empty() {
        config.interfaces = a.ifaces;
    }
    if a.require_all_interfaces {
        config.require_all_interfaces = true;
    }
    if let Some(m) = a.xdp_mode {
        config.xdp_mode = m;
    }
    if let Some(d) = a.state_dir {
        config.state_dir = d;
    }
    if let Some(d) = a.bpffs_dir {
        config.bpffs_dir = d;
    }
    if let Some(g) = a.socket_group {
        config.socket_group = Some(g);
    }
    if let Some(t) = a.default_ttl {
        config.default_ttl = t;
    }
    if let Some(n) = a.max_addresses {
        config.capacity.addresses = n;
    }
    if let Some(n) = a.max_prefixes {
        config.capacity.prefixes = n;
    }
    if let Some(addr) = a.metrics_listen {
        config.metrics.listen = Some(addr);
    }
    if let Some(n) = a.max_connections {
        anyhow::ensure!(n > 0, "--max-connections must be at least 1");
        config.control_socket.max_connections = n;
    }
    if let Some(t) = a.idle_timeout {
        anyhow::ensure!(
            t.0 >= std::time::Duration::from_millis(100),
            "--idle-timeout must be at least 100ms"
        );
        config.control_socket.idle_timeout = t;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ENFORCER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    crate::daemon::run(config).context("the daemon stopped")
}
