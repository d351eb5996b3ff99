//! Writing the results: `results.json` for scripts, `results.md` for people, one SVG chart per
//! section for the README.
//!
//! Absolute numbers depend on the machine (a small VM, usually), so every figure is printed next
//! to the baseline measured in the same run and as a ratio to it: ratios carry over to other
//! machines, nanoseconds and packets per second do not. Each section has its own file here; the
//! targets the project set itself are judged in [`targets`].

mod control;
mod crowdsec;
mod datapath;
mod expiry;
mod memory;
mod svg;
mod targets;
mod traffic;

use std::{fmt::Write as _, fs, path::Path, process::Command};

use anyhow::{Context as _, Result};
use serde::Serialize;
pub(crate) use targets::Target;

/// Where the numbers were taken.
#[derive(Debug, Serialize)]
pub(crate) struct Machine {
    /// `uname -r`.
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_gib: f64,
    /// The 1-minute load average when the run started (other work on the machine skews it).
    pub load_at_start: f64,
    /// UTC, RFC 3339.
    pub date: String,
    /// `git describe --always --dirty` of the tree that was built, when known.
    pub commit: Option<String>,
}

impl Machine {
    pub(crate) fn detect(repo: &Path) -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let load_at_start = fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(f64::NAN);
        Self {
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned()),
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            memory_gib: mem_kib / 1024.0 / 1024.0,
            load_at_start,
            date: output(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))
                .unwrap_or_default(),
            commit: output(
                Command::new("git")
                    .args(["describe", "--always", "--dirty"])
                    .current_dir(repo),
            ),
        }
    }
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok().filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Everything one run produced. Sections left out with `--only` are `None`.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub machine: Machine,
    pub quick: bool,
    pub elapsed_seconds: f64,
    /// Seconds each section took, in the order they ran.
    pub section_seconds: Vec<(String, f64)>,
    pub targets: Vec<Target>,
    pub datapath: Option<crate::datapath::Results>,
    pub traffic: Option<crate::traffic::Results>,
    pub control: Option<crate::control::Results>,
    pub expiry: Option<crate::expiry::Results>,
    pub memory: Option<crate::memory::Results>,
    pub crowdsec: Option<crate::crowdsec::Results>,
    pub reads: Option<crate::reads::Results>,
    pub flood: Option<crate::flood::Results>,
}

impl Report {
    /// Judges the targets against whatever sections ran.
    pub(crate) fn judge(&mut self) {
        self.targets = targets::judge(self);
    }
}

/// Writes results.json, results.md and the charts into `dir`; returns the Markdown.
pub(crate) fn write(dir: &Path, report: &Report) -> Result<String> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let markdown = markdown(report);
    let mut files = vec![
        ("results.json", serde_json::to_string_pretty(report)? + "\n"),
        ("results.md", markdown.clone()),
    ];
    if let Some(d) = &report.datapath {
        files.push(("datapath.svg", datapath::svg(d)));
        files.push(("multicpu.svg", datapath::multi_cpu_svg(d)));
    }
    if let Some(t) = &report.traffic {
        files.push(("traffic.svg", traffic::svg(t)));
    }
    if let Some(c) = &report.control {
        files.push(("control.svg", control::svg(c)));
    }
    if let Some(e) = &report.expiry {
        files.push(("expiry.svg", expiry::svg(e)));
    }
    if let Some(m) = &report.memory {
        files.push(("memory.svg", memory::svg(m)));
    }
    if let Some(c) = &report.crowdsec {
        files.push(("crowdsec.svg", crowdsec::svg(c)));
    }
    for (name, text) in files {
        let path = dir.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(markdown)
}

#[expect(
    clippy::let_underscore_must_use,
    reason = "writing to a String cannot fail"
)]
fn markdown(r: &Report) -> String {
    let m = &r.machine;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# enforcer benchmarks\n");
    let _ = writeln!(
        w,
        "{} ({} CPUs, {:.0} GiB), kernel {}, {}, commit {}, load average {:.2} at the start. \
         A {} run (`cargo xtask bench{}`); it took {:.0} s ({}).\n",
        m.cpu_model,
        m.cpus,
        m.memory_gib,
        m.kernel,
        m.date,
        m.commit.as_deref().unwrap_or("unknown"),
        m.load_at_start,
        if r.quick { "quick" } else { "full" },
        if r.quick { " --quick" } else { "" },
        r.elapsed_seconds,
        r.section_seconds
            .iter()
            .map(|(name, s)| format!("{name} {s:.0} s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        w,
        "Every figure comes with the baseline it was measured against in the same run, and the \
         ratio to it: absolute figures describe this VM, ratios carry over.\n"
    );
    targets::markdown(w, &r.targets);
    if let Some(d) = &r.datapath {
        datapath::markdown(w, d);
    }
    if let Some(t) = &r.traffic {
        traffic::markdown(w, t);
    }
    if let Some(c) = &r.control {
        control::markdown(w, c);
    }
    if let Some(e) = &r.expiry {
        expiry::markdown(w, e);
    }
    if let Some(m) = &r.memory {
        memory::markdown(w, m);
    }
    if let Some(c) = &r.crowdsec {
        crowdsec::markdown(w, c);
    }
    if let Some(reads) = &r.reads {
        crate::reads::markdown(w, reads);
    }
    if let Some(f) = &r.flood {
        crate::flood::markdown(w, f);
    }
    out
}

/// Whole numbers stay whole; others get one decimal.
fn ns(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// 1000 → 1k, 1000000 → 1M.
fn count(n: usize) -> String {
    match n {
        0 => "0".to_owned(),
        n if n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// 1234567 → 1,234,567.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Milliseconds with precision that suits their size: 0.318, 2.41, 17.3, 1,032.
fn ms(v: f64) -> String {
    match v.abs() {
        x if x < 1.0 => format!("{v:.3}"),
        x if x < 10.0 => format!("{v:.2}"),
        x if x < 100.0 => format!("{v:.1}"),
        _ => thousands(v.round() as usize),
    }
}

/// Bytes as B, KiB, MiB or GiB.
fn bytes(v: f64) -> String {
    match v {
        x if x < 1024.0 => format!("{v:.0} B"),
        x if x < 1024.0 * 1024.0 => format!("{:.1} KiB", v / 1024.0),
        x if x < 1024.0 * 1024.0 * 1024.0 => format!("{:.1} MiB", v / 1024.0 / 1024.0),
        _ => format!("{:.2} GiB", v / 1024.0 / 1024.0 / 1024.0),
    }
}
