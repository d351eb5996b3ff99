//! The `enforcer` command line: one file per subcommand; each parses and prints, the library
//! does the work. Human output is an aligned table; `--json` is the stable format for scripts.

mod allow;
mod block;
mod breaker;
mod daemon;
mod detach;
mod fast;
mod generate;
mod import;
pub use import::ImportOutput;
mod install_fail2ban_action;
mod install_wazuh_hook;
pub mod list;
mod output;
mod pending;
mod promote;
mod show;
mod stats;
mod status;
mod unblock;
use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
pub use unblock::UnblockOutput;

use crate::{
    client::{Client, ClientError},
    protocol::{DEFAULT_SOCKET, Reply, Request},
};

/// Block attacking IP addresses in the kernel (XDP), with expiry, allowlist and audit.
#[derive(Debug, Parser)]
#[command(name = "enforcer", version, about, max_term_width = 100)]
pub struct Cli {
    /// The daemon's control socket [default: /run/enforcer/enforcer.sock, or the daemon's
    /// configuration].
    #[arg(long, global = true, env = "ENFORCER_SOCKET")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (owns the kernel maps).
    Daemon(daemon::Args),
    /// Block an address or prefix.
    Block(block::Args),
    /// Remove a block (one source's, or every source's with --all).
    Unblock(unblock::Args),
    /// List blocks with their sources, time left and counters.
    List(list::Args),
    /// Everything that covers an address, and the verdict its packets get now.
    Show(show::Args),
    /// Data path counters.
    Stats(stats::Args),
    /// Daemon status: interfaces, XDP mode, map use, store.
    Status(status::Args),
    /// Block many targets from a file (one per line, optional TTL) or stdin (-).
    Import(import::Args),
    /// Detach from every interface and remove all pinned state (deliberate switch-off).
    Detach(detach::Args),
    /// Install this binary as a Wazuh active-response program (replaces firewall-drop).
    InstallWazuhHook(install_wazuh_hook::Args),
    /// Install the fail2ban action that bans through enforcer (`banaction = enforcer`).
    InstallFail2banAction(install_fail2ban_action::Args),
    /// Manage the allowlist (never-block prefixes).
    Allow(allow::Args),
    /// Turn shadow blocks into enforced ones.
    Promote(promote::Args),
    /// Circuit breakers.
    Breaker(breaker::Args),
    /// Blocks waiting for approval.
    Pending(pending::Args),
    /// Approve a pending block.
    Approve(pending::IdArgs),
    /// Reject a pending block.
    Reject(pending::IdArgs),
    /// Man pages and shell completions (for packagers).
    #[command(hide = true)]
    Generate(generate::Args),
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> i32 {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let Some(cli) = fast_path(&args) {
        return run(cli);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version: print as clap does.
        Err(e) if !e.use_stderr() => {
            // Nowhere to report a stdout that cannot be written (a closed pipe).
            e.print().ok();
            return 0;
        }
        Err(e) => {
            eprintln!("enforcer: {} (see `enforcer --help`)", usage_error_line(&e));
            return 2;
        }
    };
    run(cli)
}

/// The trigger commands read without clap when they take the simple forms ([`fast`]).
///
/// Debug builds: `ENFORCER_TEST_CLI_PATH=full` never takes the fast path and `=fast` ends a
/// command line the fast path does not take with exit 70, so a lab runs one command line both
/// ways and knows which path ran (release builds never read it).
fn fast_path(args: &[std::ffi::OsString]) -> Option<Cli> {
    let env = |name: &str| std::env::var_os(name);
    #[cfg(debug_assertions)]
    match std::env::var("ENFORCER_TEST_CLI_PATH").as_deref() {
        Ok("full") => return None,
        Ok("fast") => {
            return Some(fast::parse(args, env).unwrap_or_else(|| {
                eprintln!("enforcer: ENFORCER_TEST_CLI_PATH=fast: not a fast-path command line");
                std::process::exit(70)
            }));
        }
        _ => {}
    }
    fast::parse(args, env)
}

/// Runs a parsed command line; returns the process exit code.
fn run(cli: Cli) -> i32 {
    if !matches!(cli.command, Command::Daemon(_)) {
        die_quietly_on_closed_stdout();
    }
    let socket = cli.socket.clone().unwrap_or_else(|| DEFAULT_SOCKET.into());
    let result = match cli.command {
        Command::Daemon(a) => daemon::run(a, cli.socket),
        Command::Detach(a) => detach::run(a),
        Command::Block(a) => block::run(&socket, a),
        Command::Unblock(a) => unblock::run(&socket, a),
        Command::List(a) => list::run(&socket, a),
        Command::Show(a) => show::run(&socket, a),
        Command::Stats(a) => stats::run(&socket, a),
        Command::Status(a) => status::run(&socket, a),
        Command::Import(a) => import::run(&socket, a),
        Command::InstallWazuhHook(a) => install_wazuh_hook::run(a, cli.socket.as_deref()),
        Command::InstallFail2banAction(a) => install_fail2ban_action::run(a, cli.socket.as_deref()),
        Command::Allow(a) => allow::run(&socket, a),
        Command::Promote(a) => promote::run(&socket, a),
        Command::Breaker(a) => breaker::run(&socket, a),
        Command::Pending(a) => pending::list(&socket, a),
        Command::Approve(a) => pending::approve(&socket, a),
        Command::Reject(a) => pending::reject(&socket, a),
        Command::Generate(a) => generate::run(a),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            let code = e
                .downcast_ref::<ClientError>()
                .map(ClientError::exit_code)
                .or_else(|| {
                    e.downcast_ref::<status::Unprotected>()
                        .map(|_| status::EXIT_UNPROTECTED)
                })
                // A bad --proto/--port is a usage mistake, as an invalid request is.
                .or_else(|| e.downcast_ref::<crate::scope::ScopeError>().map(|_| 2))
                .unwrap_or(1);
            eprintln!("enforcer: {e:#}");
            code
        }
    }
}

/// `enforcer status | head`: a reader that closes the pipe early ends the command as it ends
/// other Unix tools (killed by SIGPIPE, no message), not with a panic about a failed print. Rust
/// ignores SIGPIPE, so every print would otherwise fail with EPIPE. Only the short-lived client
/// commands: the daemon keeps ignoring it (a peer closing its socket is an error, not its end),
/// and the client's own socket writes use MSG_NOSIGNAL ([`crate::client`]), so a daemon that
/// goes away mid-request is still reported (and a trigger spooled).
fn die_quietly_on_closed_stdout() {
    // SAFETY: SIG_DFL is a valid disposition for SIGPIPE; no handler runs, and this happens
    // before the command starts any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// A command-line mistake as one line: clap's first paragraph (the error itself, with its
/// indented continuation lines such as missing argument names), without the `error: ` prefix,
/// the usage and the hints that follow; every error is one line on stderr.
fn usage_error_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect();
    first.join(" ").trim_start_matches("error: ").to_owned()
}

/// Flags every block-making command shares.
#[derive(Debug, clap::Args)]
pub struct BlockFlags {
    /// Who is blocking.
    #[arg(long, default_value = "cli")]
    pub source: crate::block::Source,
    /// Why (shown in `list` and the audit log).
    #[arg(long)]
    pub reason: Option<String>,
    /// Count matching packets but let them pass (alert-only).
    #[arg(long)]
    pub shadow: bool,
}

impl BlockFlags {
    /// The reason as the protocol carries it.
    pub fn reason(&self) -> crate::block::Reason {
        self.reason
            .clone()
            .map(crate::block::Reason::text)
            .unwrap_or_default()
    }
}

/// What of a target's traffic a block covers (`block`, `unblock`, `import`).
#[derive(Debug, Default, clap::Args)]
pub struct ScopeFlags {
    /// Only this protocol: tcp, udp, icmp or any (default: the whole address).
    #[arg(long, value_name = "PROTO")]
    pub proto: Option<String>,
    /// Only these destination ports, with --proto tcp or udp: 22, 22,2222, 8000-8080 (or
    /// 8000:8080), service names from /etc/services (ssh); every port (0:65535) is no limit.
    #[arg(long = "port", value_name = "PORTS")]
    pub ports: Option<String>,
}

impl ScopeFlags {
    /// The scope, checked: a bad one is a one-line error naming what to write instead.
    pub fn scope(&self) -> Result<crate::scope::Scope, crate::scope::ScopeError> {
        let proto: crate::scope::Proto = self
            .proto
            .as_deref()
            .map(str::parse)
            .transpose()?
            .unwrap_or_default();
        let service = move |name: &str| crate::scope::service_port(name, proto);
        crate::scope::Scope::parse(self.proto.as_deref(), self.ports.as_deref(), Some(&service))
    }
}

/// One request to the daemon.
pub(crate) fn call(socket: &std::path::Path, request: &Request) -> Result<Reply, ClientError> {
    Client::connect(socket, Duration::from_secs(30))?.call(request)
}

/// For triggers that must not be lost when the daemon is down (fail2ban, scripts).
#[derive(Debug, clap::Args)]
pub struct SpoolFlags {
    /// If the daemon is not running (or answers `unavailable`: stopping, or at its connection
    /// cap), spool the request in the daemon's state directory instead of failing; the daemon applies it when it starts (a block's TTL counts from now).
    #[arg(long)]
    pub spool_if_down: bool,
    /// The daemon's state directory (for --spool-if-down).
    #[arg(long, env = "ENFORCER_STATE_DIR", default_value = "/var/lib/enforcer")]
    pub state_dir: PathBuf,
}

/// Sends a write request, or spools it when it never reached the daemon and `spool` allows
/// (the same path the hooks take: [`crate::client::deliver`]). Returns `None` when spooled.
pub(crate) fn call_or_spool(
    socket: &std::path::Path,
    request: &Request,
    spool: &SpoolFlags,
) -> anyhow::Result<Option<Reply>> {
    let spool_to = spool.spool_if_down.then_some(spool.state_dir.as_path());
    match crate::client::deliver(socket, request, Duration::from_secs(30), spool_to) {
        crate::client::Delivery::Reply(reply) => Ok(Some(reply)),
        crate::client::Delivery::Refused(e) => Err(ClientError::Daemon(e).into()),
        crate::client::Delivery::Spooled { file, why } => {
            println!(
                "{}; spooled to {} (applied when the daemon starts or next drains its spool)",
                why.spool_reason(),
                file.display()
            );
            Ok(None)
        }
        crate::client::Delivery::Unreachable {
            why,
            spool_error: Some(e),
        } => Err(anyhow::Error::new(why).context(format!(
            "the daemon is not running and spooling to {} failed: {}",
            spool.state_dir.display(),
            crate::error::Chain(&e)
        ))),
        crate::client::Delivery::Unreachable {
            why,
            spool_error: None,
        }
        | crate::client::Delivery::Failed(why) => Err(why.into()),
    }
}
