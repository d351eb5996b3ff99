//! Operating the daemon like the tools around it: a real Prometheus scrapes its metrics, and
//! systemd's notify protocol (readiness, status, watchdog) is checked on a test socket.

use std::{
    io::Write as _,
    net::IpAddr,
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use enforcer::{
    client::Client,
    protocol::{BatchItem, BatchRequest, Reply, Request},
};
use enforcer_tests::{
    ChildGuard, Lab, RECEIVER_IF, RECEIVER_V4, SENDER_V4,
    daemon::{Daemon, enforcer_bin, ok},
    require_root, wait_for,
};

/// GET `path` from `port` on the namespace's loopback: (status code, body).
fn http_get(lab: &Lab, port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    enforcer_tests::metrics::http_get(lab.receiver.name(), port, path)
}

/// A free TCP port on the namespace's loopback.
fn free_port(lab: &Lab) -> u16 {
    enforcer_tests::metrics::free_port(lab.receiver.name()).unwrap()
}

/// The value of the one sample whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn require_tool(name: &str) {
    assert!(
        Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success()),
        "{name} is not installed: run `cargo xtask setup` (it installs the Debian package)"
    );
}

#[test]
fn prometheus_scrapes_the_drops_of_a_blocked_source_and_promtool_accepts_the_exposition() {
    require_root();
    require_tool("prometheus");
    require_tool("promtool");
    let lab = Lab::new().unwrap();
    lab.receiver.ip(&["link", "set", "lo", "up"]).unwrap();
    let port = free_port(&lab);
    let d = Daemon::start(&lab, &["--metrics-listen", &format!("127.0.0.1:{port}")]).unwrap();

    ok(&d.cli(&["block", SENDER_V4[1], "--ttl", "10m", "--source", "wazuh"]));
    let refused = d.cli(&["block", "198.51.100.0/8", "--source", "wazuh"]);
    assert!(
        !refused.status.success(),
        "a /8 is refused by the scope rule"
    );
    let rx = lab.udp_listener(RECEIVER_V4).unwrap();
    let through = lab
        .exchange(&lab.udp_sender(SENDER_V4[1]).unwrap(), &rx, 300)
        .unwrap();
    assert_eq!(through, 0, "the blocked source's flood is dropped");

    let (code, text) = http_get(&lab, port, "/metrics").unwrap();
    assert_eq!(code, 200, "{text}");
    let dropped = sample(
        &text,
        &format!("enforcer_packets_total{{action=\"dropped\",interface=\"{RECEIVER_IF}\"}}"),
    )
    .unwrap();
    assert!(dropped >= 300.0, "dropped {dropped}:\n{text}");
    assert_eq!(
        sample(&text, "enforcer_blocks{source=\"wazuh\",mode=\"enforce\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "enforcer_map_entries{map=\"BLOCK_V4\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "enforcer_map_capacity{map=\"BLOCK_V4\"}"),
        Some(65536.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "enforcer_policy_refusals_total{rule=\"scope\",source=\"wazuh\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "enforcer_requests_total{op=\"block\",result=\"ok\"}")
            .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        sample(&text, "enforcer_store_commit_seconds_count").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_no_address_labels(&text);
    assert_eq!(http_get(&lab, port, "/nope").unwrap().0, 404);

    // promtool reads the exposition from stdin and reports naming or format problems.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A real Prometheus in the same namespace scrapes it; its query API shows the drops.
    let (_prom, _prom_dir, prom_port) = start_prometheus(&lab, port);
    let query = "/api/v1/query?query=sum(enforcer_packets_total%7Baction%3D%22dropped%22%7D)";
    let seen = wait_for(
        "Prometheus to have scraped the drop counter",
        Duration::from_secs(90),
        || {
            let Ok((200, body)) = http_get(&lab, prom_port, query) else {
                return Ok(None);
            };
            let v: serde_json::Value = serde_json::from_str(&body)?;
            let value = v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok());
            Ok(value.filter(|n| *n >= 300.0))
        },
    )
    .unwrap();
    assert!(seen >= 300.0);

    // Every query of the Grafana dashboard names metrics the daemon exposes, and Prometheus
    // evaluates it.
    for expr in dashboard_queries() {
        for name in metric_names(&expr) {
            let family = name.strip_suffix("_bucket").unwrap_or(&name);
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "the dashboard queries {name}, which the daemon does not expose: {expr}"
            );
        }
        let q = expr
            .replace("$instance", ".*")
            .replace("$__rate_interval", "1m");
        let (code, body) = http_get(
            &lab,
            prom_port,
            &format!("/api/v1/query?query={}", url_encode(&q)),
        )
        .unwrap();
        assert_eq!(
            code, 200,
            "Prometheus rejected the dashboard query {q}: {body}"
        );
    }
}

/// The PromQL of every panel target in dist/grafana/enforcer.json.
fn dashboard_queries() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/grafana/enforcer.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(exprs.len() >= 10, "the dashboard has its panels: {exprs:?}");
    exprs
}

/// The `enforcer_*` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("enforcer_"))
        .map(str::to_owned)
        .collect()
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Starts Prometheus in the lab's receiver namespace, scraping the daemon every second; returns
/// it, its directory and its port.
fn start_prometheus(lab: &Lab, target_port: u16) -> (ChildGuard, tempfile::TempDir, u16) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: enforcer\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        ),
    )
    .unwrap();
    let port = free_port(lab);
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let child = lab
        .receiver
        .command("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    (ChildGuard(child), dir, port)
}

/// No label value in the exposition is an IP address or prefix (they are unbounded).
fn assert_no_address_labels(text: &str) {
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(labels) = line
            .split_once('{')
            .and_then(|(_, r)| r.split_once('}'))
            .map(|(l, _)| l)
        else {
            continue;
        };
        for pair in labels.split(',') {
            let value = pair
                .split_once('=')
                .map(|(_, v)| v.trim_matches('"'))
                .unwrap_or("");
            let addr = value.split('/').next().unwrap_or("");
            assert!(
                addr.parse::<IpAddr>().is_err(),
                "address as a label value: {line}"
            );
        }
    }
}

/// Collects notify datagrams on a test `NOTIFY_SOCKET`, with the time each arrived.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    got: Vec<(Instant, String)>,
}

impl NotifySocket {
    fn new(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        Self {
            socket,
            path,
            got: Vec::new(),
        }
    }

    /// Reads what arrived; returns the new messages.
    fn poll(&mut self) -> Vec<String> {
        let mut buf = [0u8; 4096];
        let mut new = Vec::new();
        while let Ok(n) = self.socket.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.got.push((Instant::now(), m.clone()));
            new.push(m);
        }
        new
    }

    /// Watchdog pings received after `since`.
    fn pings_since(&self, since: Instant) -> usize {
        self.got
            .iter()
            .filter(|(t, m)| *t >= since && m.contains("WATCHDOG=1"))
            .count()
    }
}

const BLOCKS: usize = 20_000;

fn v6_host(i: usize) -> String {
    format!("2001:db8:7::{:x}:{:x}", i >> 16, i & 0xffff)
}

#[test]
fn ready_comes_only_once_every_block_is_enforced_and_a_stalled_engine_stops_the_watchdog() {
    if !enforcer_tests::test_hooks_or_skip() {
        return;
    }
    require_root();
    let lab = Lab::new().unwrap();
    // A first run stores the blocks; `detach` then removes every pin, so the next start must
    // restore all of them from the store into fresh maps before it may say READY.
    let mut first = Daemon::start(&lab, &[]).unwrap();
    let mut c = Client::connect(&first.socket, Duration::from_secs(30)).unwrap();
    for chunk in (0..BLOCKS).collect::<Vec<_>>().chunks(2000) {
        let req = Request::BlockBatch(BatchRequest {
            items: chunk
                .iter()
                .map(|i| BatchItem {
                    target: v6_host(*i).parse().unwrap(),
                    ttl_secs: None,
                })
                .collect(),
            ttl_secs: Some(3600),
            source: "import".parse().unwrap(),
            reason: Default::default(),
            shadow: false,
            scope: Default::default(),
        });
        assert!(
            matches!(c.call(&req).unwrap(), Reply::BlockBatch { applied, .. } if applied == chunk.len())
        );
    }
    ok(&first.cli(&["block", SENDER_V4[1], "--ttl", "1h"]));
    first.stop().unwrap();
    let state_dir = first.state_dir.clone();
    ok(&Command::new(enforcer_bin())
        .args(["detach", "--bpffs-dir"])
        .arg(lab.pins.path())
        .output()
        .unwrap());

    let tmp = tempfile::tempdir().unwrap();
    let mut notify = NotifySocket::new(tmp.path());
    let stall = tmp.path().join("stall");
    // The engine (the maps' one writer) is held from its first round until the READY checks
    // are done, so the maps cannot change between READY=1 and reading them: what they hold
    // then is what they held when READY was sent (the restore must not wait for the engine's
    // loop, and READY must not wait for it either).
    std::fs::write(&stall, b"").unwrap();
    let mut daemon = Daemon::builder(&lab)
        .state_dir(&state_dir)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "400000")
        .env("ENFORCER_TEST_STALL_ENGINE", &stall)
        .spawn()
        .unwrap();

    // The moment READY=1 arrives, everything it promises already holds, and nothing changes
    // while the engine is held.
    let t_start = Instant::now();
    let deadline = t_start + Duration::from_secs(60);
    let ready = loop {
        assert!(Instant::now() < deadline, "no READY=1: {}", daemon.log());
        assert!(daemon.runs(), "the daemon exited: {}", daemon.log());
        if let Some(m) = notify.poll().into_iter().find(|m| m.contains("READY=1")) {
            break m;
        }
    };
    let maps = enforcer::datapath::BlockMaps::open_pinned(
        &enforcer::datapath::PinLayout::new(lab.pins.path()).maps_dir(),
    )
    .unwrap();
    assert_eq!(
        maps.blocks().unwrap().len(),
        BLOCKS + 1,
        "every stored block is in the kernel at READY"
    );
    let rx = lab.udp_listener(RECEIVER_V4).unwrap();
    assert_eq!(
        lab.exchange(&lab.udp_sender(SENDER_V4[1]).unwrap(), &rx, 5)
            .unwrap(),
        0,
        "XDP drops at READY"
    );
    assert_eq!(
        notify.pings_since(t_start),
        0,
        "the engine was held: it cannot have pinged the watchdog"
    );
    std::fs::remove_file(&stall).unwrap();
    ok(&daemon.cli(&["status"]));
    assert!(
        ready.contains(&format!(
            "STATUS=enforcing {} blocks on {RECEIVER_IF}",
            BLOCKS + 1
        )),
        "{ready}"
    );

    // The engine loop pings every 200 ms (half of WATCHDOG_USEC).
    let t0 = Instant::now();
    wait_for("watchdog pings", Duration::from_secs(10), || {
        notify.poll();
        Ok((notify.pings_since(t0) >= 3).then_some(()))
    })
    .unwrap();

    // Hang the engine: the pings stop (systemd would restart the daemon after 400 ms).
    // A round already under way may still ping once; after that, silence for well over the
    // watchdog interval (a running engine pings every 200 ms, so a 1.5 s gap cannot happen).
    std::fs::write(&stall, b"").unwrap();
    let stalled = Instant::now();
    wait_for(
        "1.5 s without a watchdog ping",
        Duration::from_secs(5),
        || {
            notify.poll();
            let last = notify
                .got
                .iter()
                .rev()
                .find(|(_, m)| m.contains("WATCHDOG=1"))
                .map_or(stalled, |(t, _)| *t);
            Ok((last.max(stalled).elapsed() >= Duration::from_millis(1500)).then_some(()))
        },
    )
    .unwrap();
    assert!(
        notify.pings_since(stalled) <= 1,
        "a stalled engine must not keep pinging the watchdog"
    );

    // Unstuck, it pings again.
    std::fs::remove_file(&stall).unwrap();
    let resumed = Instant::now();
    wait_for("pings to resume", Duration::from_secs(10), || {
        notify.poll();
        Ok((notify.pings_since(resumed) >= 1).then_some(()))
    })
    .unwrap();

    // SIGTERM: STOPPING=1, and the blocks stay in force after the process is gone.
    daemon.stop().unwrap();
    notify.poll();
    assert!(notify.got.iter().any(|(_, m)| m.contains("STOPPING=1")));
    assert_eq!(
        lab.exchange(&lab.udp_sender(SENDER_V4[1]).unwrap(), &rx, 5)
            .unwrap(),
        0,
        "blocks stay in force after stop"
    );
}

/// The capabilities the shipped unit grants (`CapabilityBoundingSet=`), as setpriv names them.
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/enforcer.service"),
    )
    .unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds capabilities");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

#[test]
fn the_daemon_blocks_with_only_the_capabilities_its_unit_grants() {
    require_root();
    let caps = unit_capabilities();
    assert!(
        !caps.iter().any(|c| c == "sys_admin"),
        "the unit should not need CAP_SYS_ADMIN: {caps:?}"
    );
    let lab = Lab::new().unwrap();
    let bounding = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    // nsenter joins only the network namespace (the host's /sys/fs/bpf stays); setpriv then
    // drops every capability outside the unit's bounding set before the daemon starts.
    let daemon = Daemon::builder(&lab)
        .launched_by([
            "nsenter".into(),
            format!("--net=/run/netns/{}", lab.receiver.name()).into(),
            "setpriv".into(),
            format!("--bounding-set={bounding}").into(),
            "--inh-caps=-all".into(),
            "--".into(),
            enforcer_bin().into_os_string(),
        ])
        .args(&["--max-addresses", "1024", "--max-prefixes", "1024"])
        .start()
        .unwrap_or_else(|e| panic!("the daemon with only {caps:?}: {e}"));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", daemon.pid().unwrap())).unwrap();
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap()
        .trim()
        .to_owned();
    assert_ne!(bnd, "000001ffffffffff", "the bounding set was not narrowed");
    ok(&daemon.cli(&["block", SENDER_V4[1], "--ttl", "10m"]));
    let rx = lab.udp_listener(RECEIVER_V4).unwrap();
    assert_eq!(
        lab.exchange(&lab.udp_sender(SENDER_V4[1]).unwrap(), &rx, 5)
            .unwrap(),
        0,
        "{}",
        daemon.log()
    );
    assert_eq!(
        lab.exchange(&lab.udp_sender(SENDER_V4[2]).unwrap(), &rx, 5)
            .unwrap(),
        5
    );
}
