//! Section 7, reads against writes: does inspecting the blocks delay enforcing them?
//!
//! A daemon holds `blocks` blocks (one `enforcer import`). Trigger → drop (as in the control
//! section: a source probing every ~0.2 ms, `enforcer block` spawned, the send time of its last
//! probe that got through) is timed twice in the same run: idle, and while clients list every
//! block without pause (`enforcer list --json`, each a full walk of every page, `listers` at
//! once). The ratio of the p99s is what a monitoring script listing everything costs a block.
//! With `--baseline-enforcer PATH` the same is measured with that build too (its daemon and its
//! CLI), in the same run, one after the other.

use std::{
    path::Path,
    process::Stdio,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Instant,
};

use anyhow::{Context as _, Result, ensure};
use enforcer_tests::{
    Lab,
    daemon::{Daemon, enforcer_bin},
};
use serde::Serialize;

use crate::{
    control::{cli_of, trigger_to_drop_with},
    firewall,
    stats::Summary,
};

/// How many of everything.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Settings {
    /// Blocks the daemon holds.
    pub blocks: usize,
    /// Blocks timed on traffic, idle and under lists (each).
    pub trials: usize,
    /// Clients listing every block at once.
    pub listers: usize,
}

impl Settings {
    pub(crate) const FULL: Self = Self {
        blocks: 1_000_000,
        trials: 50,
        listers: 4,
    };
    pub(crate) const QUICK: Self = Self {
        blocks: 100_000,
        trials: 20,
        listers: 2,
    };
}

/// One build's figures.
#[derive(Debug, Serialize)]
pub(crate) struct Phases {
    /// Seconds the import of the blocks took.
    pub import_seconds: f64,
    /// Trigger → drop with no other client.
    pub idle: Summary,
    /// Trigger → drop while `listers` clients list every block.
    pub listing: Summary,
    /// Full lists finished during the second run, and their mean seconds.
    pub lists: u64,
    pub list_seconds: f64,
}

impl Phases {
    /// p99 under lists over idle p99.
    pub(crate) fn p99_ratio(&self) -> f64 {
        self.listing.p99 / self.idle.p99
    }
}

/// The same measured with another build (`--baseline-enforcer`), in the same run.
#[derive(Debug, Serialize)]
pub(crate) struct Baseline {
    /// The baseline binary's path.
    pub build: String,
    #[serde(flatten)]
    pub phases: Phases,
}

#[derive(Debug, Serialize)]
pub(crate) struct Results {
    pub settings: Settings,
    /// This build.
    #[serde(flatten)]
    pub phases: Phases,
    pub baseline: Option<Baseline>,
}

/// Both builds, one after the other (each its own lab and daemon).
pub(crate) fn run(s: &Settings, baseline: Option<&Path>) -> Result<Results> {
    let phases = measure(s, &enforcer_bin(), "")?;
    let baseline = match baseline {
        Some(b) => Some(Baseline {
            build: b.display().to_string(),
            phases: measure(s, b, ", baseline build")?,
        }),
        None => None,
    };
    Ok(Results {
        settings: *s,
        phases,
        baseline,
    })
}

/// Imports the blocks into a daemon of the build `bin`, then times trigger → drop idle and
/// under lists (with that build's CLI).
fn measure(s: &Settings, bin: &Path, which: &str) -> Result<Phases> {
    let lab = Lab::new()?;
    let capacity = (s.blocks + 1024).to_string();
    let d = Daemon::start_bin(bin, &lab, &["--max-addresses", &capacity])?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("targets.txt");
    let mut text = String::with_capacity(s.blocks * 14);
    for a in firewall::filler(s.blocks) {
        text.push_str(&a.to_string());
        text.push('\n');
    }
    std::fs::write(&file, text)?;
    eprintln!("reads: importing {} blocks{which}", s.blocks);
    let started = Instant::now();
    crate::control::check(
        cli_of(bin, &d.socket)
            .arg("import")
            .arg(&file)
            .args(["--ttl", "1h", "--json"])
            .output()?,
    )
    .context("enforcer import")?;
    let import_seconds = started.elapsed().as_secs_f64();
    eprintln!("reads: trigger → drop, idle{which}");
    let (idle, _) = trigger_to_drop_with(&lab, &d, bin, s.trials, 100)?;
    eprintln!(
        "reads: trigger → drop while {} clients list every block{which}",
        s.listers
    );
    let stop = AtomicBool::new(false);
    let lists = AtomicU64::new(0);
    let list_ns = AtomicU64::new(0);
    let listing = std::thread::scope(|scope| -> Result<Summary> {
        let listers: Vec<_> = (0..s.listers)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    while !stop.load(Ordering::Relaxed) {
                        let t = Instant::now();
                        let status = cli_of(bin, &d.socket)
                            .args(["list", "--json"])
                            .stdout(Stdio::null())
                            .status()?;
                        ensure!(status.success(), "enforcer list failed: {status}");
                        lists.fetch_add(1, Ordering::Relaxed);
                        list_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        // Let every lister get going (the first pages are under way).
        std::thread::sleep(std::time::Duration::from_millis(500));
        let result = trigger_to_drop_with(&lab, &d, bin, s.trials, 160);
        stop.store(true, Ordering::Relaxed);
        for l in listers {
            l.join()
                .map_err(|_| anyhow::anyhow!("a lister panicked"))??;
        }
        Ok(result?.0)
    })?;
    let lists = lists.load(Ordering::Relaxed);
    Ok(Phases {
        import_seconds,
        idle,
        listing,
        lists,
        list_seconds: list_ns.load(Ordering::Relaxed) as f64 / 1e9 / lists.max(1) as f64,
    })
}

#[expect(
    clippy::let_underscore_must_use,
    reason = "writing to a String cannot fail"
)]
pub(crate) fn markdown(w: &mut String, r: &Results) {
    use std::fmt::Write as _;
    let p = &r.phases;
    let _ = writeln!(
        w,
        "\n## Reads against writes\n\n{} blocks (imported in {:.1} s). Trigger → drop, idle and \
         while {} clients list every block without pause (`enforcer list --json`: {} full lists \
         finished meanwhile, {:.1} s each), {} blocks each:\n",
        r.settings.blocks,
        p.import_seconds,
        r.settings.listers,
        p.lists,
        p.list_seconds,
        r.settings.trials
    );
    let _ = writeln!(
        w,
        "| build | | p50 ms | p99 ms | max ms |\n|---|---|---:|---:|---:|"
    );
    let mut builds = vec![("this build".to_owned(), p)];
    if let Some(b) = &r.baseline {
        builds.push((format!("baseline `{}`", b.build), &b.phases));
    }
    for (build, p) in &builds {
        for (what, s) in [("idle", &p.idle), ("while listing", &p.listing)] {
            let _ = writeln!(
                w,
                "| {build} | {what} | {:.1} | {:.1} | {:.1} |",
                s.p50, s.p99, s.max
            );
        }
    }
    let _ = writeln!(w, "\np99 while listing / idle p99: {:.2}×", p.p99_ratio());
    if let Some(b) = &r.baseline {
        let _ = writeln!(
            w,
            "; the baseline build: {:.2}× ({} full lists, {:.1} s each). While listing, this \
             build's p99 / the baseline's: {:.2}×",
            b.phases.p99_ratio(),
            b.phases.lists,
            b.phases.list_seconds,
            p.listing.p99 / b.phases.listing.p99
        );
    }
}
