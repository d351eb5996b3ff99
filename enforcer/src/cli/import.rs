use std::{
    io::IsTerminal as _,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    client::Client,
    duration::HumanDuration,
    protocol::{BatchFailure, BatchItem, BatchRequest, Reply, Request},
    target::Target,
};

/// Items per request: big enough to amortise the fsync, small enough to show progress.
const CHUNK: usize = 5000;

/// What `enforcer import --json` prints.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ImportOutput {
    /// Targets read from the file.
    pub total: usize,
    /// Blocks applied (created, extended or unchanged).
    pub applied: usize,
    /// Blocks waiting for approval.
    pub pending: usize,
    /// Targets the daemon refused, with their line index (0-based) and why.
    pub failed: Vec<BatchFailure>,
    /// Wall time of the import.
    pub seconds: f64,
}

/// `enforcer import`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// File with one target per line, optionally followed by a TTL (`192.0.2.7 10m`); `-` for
    /// stdin. Blank lines and `#` comments are skipped.
    pub file: PathBuf,
    /// TTL for lines without one (default: the daemon's).
    #[arg(long)]
    pub ttl: Option<HumanDuration>,
    #[command(flatten)]
    pub flags: super::BlockFlags,
    #[command(flatten)]
    pub scope: super::ScopeFlags,
    /// JSON summary.
    #[arg(long)]
    pub json: bool,
}

/// Parses the whole input first: a bad line aborts the import before anything is sent.
fn parse(reader: impl std::io::BufRead, name: &str) -> anyhow::Result<Vec<BatchItem>> {
    let mut items = Vec::new();
    let mut errors = Vec::new();
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let target = fields.next().unwrap_or_default();
        let ttl = fields.next();
        let extra = fields.next();
        let parsed = (|| -> Result<BatchItem, String> {
            if extra.is_some() {
                return Err("expected `TARGET [TTL]`".into());
            }
            let target: Target = target
                .parse()
                .map_err(|e: crate::TargetError| e.to_string())?;
            let ttl_secs = ttl
                .map(|t| t.parse::<HumanDuration>().map(|d| d.0.as_secs()))
                .transpose()
                .map_err(|e| e.to_string())?;
            Ok(BatchItem { target, ttl_secs })
        })();
        match parsed {
            Ok(item) => items.push(item),
            Err(e) => errors.push(format!("{name}:{}: {e}", n + 1)),
        }
    }
    if !errors.is_empty() {
        // One line, like every error: the first ten problems, separated by semicolons.
        let shown = errors
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        anyhow::bail!(
            "{} invalid line(s), nothing was imported: {shown}{}",
            errors.len(),
            if errors.len() > 10 { "; ..." } else { "" }
        );
    }
    Ok(items)
}

pub(super) fn run(socket: &Path, a: Args) -> anyhow::Result<()> {
    let scope = a.scope.scope()?;
    let name = a.file.display().to_string();
    let items = if a.file.as_os_str() == "-" {
        parse(std::io::stdin().lock(), "stdin")?
    } else {
        let f =
            std::fs::File::open(&a.file).map_err(|e| anyhow::anyhow!("cannot read {name}: {e}"))?;
        parse(std::io::BufReader::new(f), &name)?
    };
    let total = items.len();
    let progress = progress_bar(total as u64, std::io::stderr().is_terminal() && !a.json);
    let mut client = Client::connect(socket, Duration::from_secs(120))?;
    let mut applied = 0usize;
    let mut pending = 0usize;
    let mut failed = Vec::new();
    let started = std::time::Instant::now();
    for (i, chunk) in items.chunks(CHUNK).enumerate() {
        let reply = client.call(&Request::BlockBatch(BatchRequest {
            items: chunk.to_vec(),
            ttl_secs: a.ttl.map(|d| d.0.as_secs()),
            source: a.flags.source.clone(),
            reason: a.flags.reason(),
            shadow: a.flags.shadow,
            scope: scope.clone(),
        }))?;
        let Reply::BlockBatch {
            applied: n,
            pending: p,
            failed: f,
        } = reply
        else {
            anyhow::bail!("unexpected reply from the daemon")
        };
        applied += n;
        pending += p;
        failed.extend(f.into_iter().map(|mut x| {
            x.index += i * CHUNK;
            x
        }));
        progress.inc(chunk.len() as u64);
    }
    progress.finish();
    let secs = started.elapsed().as_secs_f64();
    if a.json {
        super::output::json(&ImportOutput {
            total,
            applied,
            pending,
            failed: failed.clone(),
            seconds: secs,
        })?;
    } else {
        println!("imported {applied} of {total} targets in {secs:.2}s");
        if pending > 0 {
            println!("  {pending} wait for approval (`enforcer pending`)");
        }
        for f in failed.iter().take(20) {
            println!("  refused {}: {}", f.target, f.error.message);
        }
    }
    if !failed.is_empty() {
        let code = failed[0].error.code;
        return Err(
            crate::client::ClientError::Daemon(crate::protocol::ErrorBody {
                code,
                message: format!(
                    "{} of {total} targets were refused, the rest imported; first: {}: {}",
                    failed.len(),
                    failed[0].target,
                    failed[0].error.message
                ),
            })
            .into(),
        );
    }
    Ok(())
}

/// The progress bar of long operations, on stderr: drawn only when `shown` (a terminal, and no
/// `--json`), otherwise hidden, so logs and pipes get no control characters.
pub(crate) fn progress_bar(total: u64, shown: bool) -> indicatif::ProgressBar {
    if !shown {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("[{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("a valid template")
            .progress_chars("#> "),
    );
    bar
}
