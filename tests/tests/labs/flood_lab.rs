//! Flood detection (issue 23). First the data path alone, through `BPF_PROG_TEST_RUN` on
//! crafted frames: who is reported, what the hold drops, what a spread-thin flood costs. Then
//! the daemon in the namespace lab with real floods over the veth pair: the reports become
//! blocks of source `flood` through the policy (allowlist, shadow), and a legitimate source
//! loses nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun as _, TestRunOptions};
use enforcer::{
    Target,
    datapath::{Datapath, DatapathOptions, FloodMaps},
};
use enforcer_common::{
    ALLOW_ORIGIN_CONFIG, BlockValue, MODE_ENFORCE,
    flood::{FloodConfig, FloodReport, LIMITS, class},
    scope::{ScopeValue, Scopes},
};
use enforcer_tests::{PinDir, frame, require_root};

const XDP_PASS: u32 = 2;

/// A long window, so that a test's frames all fall in one (frames run in microseconds).
const WINDOW_NS: u64 = 30_000_000_000;

/// Detection with these IPv4 limits (packets, syn, icmp per window); IPv6 the same.
fn detector(limits: [u32; 3], hold: bool) -> FloodConfig {
    let mut limit = [0; LIMITS];
    limit[..3].copy_from_slice(&limits);
    limit[3..].copy_from_slice(&limits);
    FloodConfig {
        enabled: 1,
        hold: u32::from(hold),
        window_ns: WINDOW_NS,
        limit,
        // One CPU runs the test: it must see the whole count.
        suspect: limit.map(|l| (l / 2).max(1)),
        reports_per_window: 8,
        pad: 0,
    }
}

struct Fixture {
    dp: Datapath,
    flood: FloodMaps,
    _pins: PinDir,
}

impl Fixture {
    fn new(flood: FloodConfig) -> Self {
        require_root();
        let pins = PinDir::new().expect("pin dir");
        let mut dp = Datapath::open(&DatapathOptions {
            bpffs_dir: pins.path().to_owned(),
            flood,
            ..Default::default()
        })
        .expect("load the XDP program with flood detection");
        let flood = dp.take_flood().expect("the flood maps");
        Self {
            dp,
            flood,
            _pins: pins,
        }
    }

    /// Runs `frame` `n` times; returns the last verdict.
    fn run(&mut self, frame: &[u8], n: u32) -> u32 {
        let mut last = 0;
        for _ in 0..n {
            let opts = TestRunOptions {
                data_in: Some(frame),
                repeat: 1,
                ..TestRunOptions::default()
            };
            last = self
                .dp
                .program()
                .test_run(opts)
                .expect("BPF_PROG_TEST_RUN")
                .return_value;
        }
        last
    }

    /// How many of `n` runs of `frame` pass.
    fn passes(&mut self, frame: &[u8], n: u32) -> u32 {
        (0..n).filter(|_| self.run(frame, 1) == XDP_PASS).count() as u32
    }

    fn reports(&mut self) -> Vec<FloodReport> {
        self.flood.drain()
    }
}

fn udp(src: &str) -> Vec<u8> {
    frame::udp_from(&[], src.parse().expect("address"))
}

/// An IPv4 frame from `src` of protocol `proto`, its first transport byte 13 set to `flags`
/// (TCP's flags).
fn ipv4_proto(src: &str, proto: u8, flags: u8) -> Vec<u8> {
    let mut f = udp(src);
    f[14 + 9] = proto;
    f[14 + 20 + 13] = flags;
    f
}

fn addr_of(r: &FloodReport) -> IpAddr {
    if r.family == 0 {
        IpAddr::V4(Ipv4Addr::new(r.addr[0], r.addr[1], r.addr[2], r.addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(r.addr))
    }
}

#[test]
fn a_source_over_its_limit_is_reported_once_and_held_while_one_under_it_loses_nothing() {
    let mut f = Fixture::new(detector([100, 0, 0], true));
    let legit = udp("198.51.100.1");
    let attacker = udp("198.51.100.7");
    assert_eq!(f.passes(&legit, 90), 90, "under the limit: all pass");
    assert_eq!(f.passes(&attacker, 100), 100, "up to the limit: all pass");
    assert_eq!(
        f.passes(&attacker, 50),
        0,
        "over it, the hold drops every packet"
    );
    assert_eq!(
        f.passes(&legit, 10),
        10,
        "the legitimate source is not held"
    );
    let reports = f.reports();
    assert_eq!(
        reports.len(),
        1,
        "one report per source per window: {reports:?}"
    );
    let r = reports[0];
    assert_eq!(addr_of(&r), "198.51.100.7".parse::<IpAddr>().unwrap());
    assert_eq!((r.class, r.count, r.limit), (class::PACKETS, 101, 100));
    assert_eq!(r.window_ns, WINDOW_NS);
    let stats = f.flood.stats_total().unwrap();
    assert_eq!(stats.reports, 1);
    assert_eq!(stats.held, 50);
    let dp_stats = f.dp.maps().stats_total().unwrap();
    assert_eq!(dp_stats.dropped.packets, 50, "held frames count as dropped");
}

/// A report's time is when its source passed the limit, on the precise boot clock (the daemon
/// measures the time to the block from it), not the data path's coarse clock, which trails it
/// by up to a tick.
#[test]
fn a_report_is_timed_by_the_precise_boot_clock_at_the_crossing() {
    let mut f = Fixture::new(detector([20, 0, 0], false));
    let attacker = udp("198.51.100.9");
    assert_eq!(f.passes(&attacker, 20), 20);
    let before = enforcer::datapath::clock::boottime_ns();
    f.run(&attacker, 1);
    let after = enforcer::datapath::clock::boottime_ns();
    let reports = f.reports();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let at = reports[0].at_ns;
    assert!(
        (before..=after).contains(&at),
        "the report's time {at} is outside the crossing packet's run [{before}, {after}] ({} ns before it)",
        before.saturating_sub(at)
    );
}

/// Sleeps until `margin` into the next window of `window_ns` on the boot clock (the data
/// path's, which trails by at most a tick: far less than the margin).
fn into_next_window(window_ns: u64, margin_ns: u64) {
    let now = enforcer::datapath::clock::boottime_ns();
    let next = now - now % window_ns + window_ns + margin_ns;
    std::thread::sleep(std::time::Duration::from_nanos(next - now));
}

/// Counts are per window: a source that used its whole limit in one window starts from zero
/// in the next (its sketch cells and its exact count), so it is neither held nor reported
/// there until it passes the limit again.
#[test]
fn a_source_at_its_limit_in_one_window_starts_from_zero_in_the_next() {
    const WINDOW: u64 = 500_000_000;
    let mut f = Fixture::new(FloodConfig {
        window_ns: WINDOW,
        ..detector([100, 0, 0], true)
    });
    let attacker = udp("198.51.100.8");
    into_next_window(WINDOW, WINDOW / 5);
    assert_eq!(
        f.passes(&attacker, 100),
        100,
        "the first window: up to the limit"
    );
    into_next_window(WINDOW, WINDOW / 5);
    assert_eq!(
        f.passes(&attacker, 100),
        100,
        "the next window counts from zero: up to the limit again"
    );
    assert!(
        f.reports().is_empty(),
        "nobody passed the limit in a window"
    );
    assert_eq!(f.passes(&attacker, 1), 0, "past it, held");
    let reports = f.reports();
    assert_eq!(
        reports.iter().map(|r| r.count).collect::<Vec<_>>(),
        [101],
        "{reports:?}"
    );
    assert!(
        (1..WINDOW).contains(&reports[0].elapsed_ns),
        "passed within its window: {reports:?}"
    );
}

#[test]
fn syn_and_icmp_are_limited_apart_from_other_packets_in_both_families() {
    let mut f = Fixture::new(detector([1000, 20, 10], false));
    let syn = ipv4_proto("198.51.100.20", 6, 0x02);
    let syn_ack = ipv4_proto("198.51.100.21", 6, 0x12);
    let icmp = ipv4_proto("198.51.100.22", 1, 0);
    assert_eq!(f.passes(&syn, 30), 30, "hold off: nothing dropped");
    assert_eq!(f.passes(&syn_ack, 30), 30);
    assert_eq!(f.passes(&icmp, 30), 30);
    let mut v6 = frame::udp_from(&[], "2001:db8::66".parse().unwrap());
    v6[14 + 6] = 58; // ICMPv6
    assert_eq!(f.passes(&v6, 30), 30);
    let mut got: Vec<(IpAddr, u32, u32)> = f
        .reports()
        .iter()
        .map(|r| (addr_of(r), r.class, r.count))
        .collect();
    got.sort();
    let a = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        got,
        vec![
            (a("198.51.100.20"), class::SYN, 21),
            (a("198.51.100.22"), class::ICMP, 11),
            (a("2001:db8::66"), class::ICMP, 11),
        ],
        "a SYN-ACK is no SYN; nobody passed the packet limit"
    );
    // Over: the SYN source's last 10 packets, each ICMP source's last 20.
    assert_eq!(f.flood.stats_total().unwrap().over, 10 + 20 + 20);
}

/// Frames whose class only the transport header tells, one source each, and the class each must
/// be reported in (`None`: packets only, no report under these limits).
fn classed_frames() -> Vec<(Vec<u8>, IpAddr, Option<u32>)> {
    let v4 = |last: u8| Ipv4Addr::new(198, 51, 100, last);
    let v6 = |last: u16| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last);
    let dst4 = Ipv4Addr::new(203, 0, 113, 1);
    let dst6 = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);
    let p = frame::proto::TCP;
    let syn = frame::transport(p, 22);
    let icmp = frame::transport(frame::proto::ICMP, 0);
    let icmp6 = frame::transport(frame::proto::ICMPV6, 0);
    let ext = |next| frame::ipv6_ext(next);
    vec![
        // A SYN in a first fragment is a SYN; the same bytes in a later fragment are data.
        (
            frame::ipv4(v4(40), dst4, p, 0, true, &syn),
            v4(40).into(),
            Some(class::SYN),
        ),
        (
            frame::ipv4(v4(41), dst4, p, 3, true, &syn),
            v4(41).into(),
            None,
        ),
        // ICMP in a later fragment is not counted as ICMP (its header is in the first).
        (
            frame::ipv4(v4(42), dst4, 1, 3, false, &icmp),
            v4(42).into(),
            None,
        ),
        // A TCP header cut after the ports: no flags to read.
        (
            frame::ipv4(v4(43), dst4, p, 0, false, &syn[..4]),
            v4(43).into(),
            None,
        ),
        // IPv6 extension headers are walked to the SYN and the ICMPv6 header behind them.
        (
            frame::ipv6(
                v6(40),
                dst6,
                frame::proto::HOP_BY_HOP,
                &[ext(60), ext(p), syn.clone()].concat(),
            ),
            v6(40).into(),
            Some(class::SYN),
        ),
        (
            frame::ipv6(
                v6(41),
                dst6,
                frame::proto::DEST_OPTS,
                &[ext(58), icmp6.clone()].concat(),
            ),
            v6(41).into(),
            Some(class::ICMP),
        ),
        (
            frame::ipv6(
                v6(42),
                dst6,
                frame::proto::FRAGMENT,
                &[frame::ipv6_fragment(58, 3, false), icmp6].concat(),
            ),
            v6(42).into(),
            None,
        ),
    ]
}

#[test]
fn syn_and_icmp_are_told_through_fragments_cut_headers_and_ipv6_extension_headers_with_or_without_scoped_blocks()
 {
    for scoped in [false, true] {
        let mut f = Fixture::new(detector([1000, 20, 10], false));
        if scoped {
            // The program then parses the transport header before the block lookup; the
            // detector reads that parse.
            let value = BlockValue {
                scopes: Some(Scopes {
                    icmp: Some(ScopeValue {
                        all: 1,
                        ..ScopeValue::default()
                    }),
                    ..Scopes::default()
                }),
                ..BlockValue::new(0, MODE_ENFORCE)
            };
            f.dp.maps_mut()
                .insert_block(&"192.0.2.99".parse::<Target>().unwrap(), &value)
                .unwrap();
        }
        let frames = classed_frames();
        for (frame, _, _) in &frames {
            assert_eq!(f.passes(frame, 30), 30, "hold off: nothing dropped");
        }
        let mut got: Vec<(IpAddr, u32)> =
            f.reports().iter().map(|r| (addr_of(r), r.class)).collect();
        got.sort();
        let mut want: Vec<(IpAddr, u32)> = frames
            .iter()
            .filter_map(|(_, src, class)| class.map(|c| (*src, c)))
            .collect();
        want.sort();
        assert_eq!(got, want, "scoped blocks loaded: {scoped}");
    }
}

#[test]
fn the_hold_never_drops_an_allowlisted_source_and_detection_off_counts_nothing() {
    let mut f = Fixture::new(detector([50, 0, 0], true));
    f.dp.maps_mut()
        .insert_allow(
            &"198.51.100.30/32".parse::<Target>().unwrap(),
            ALLOW_ORIGIN_CONFIG,
        )
        .unwrap();
    let allowed = udp("198.51.100.30");
    assert_eq!(f.passes(&allowed, 200), 200);
    assert_eq!(
        f.reports().len(),
        1,
        "reported all the same: the daemon's policy refuses it"
    );

    let mut off = Fixture::new(FloodConfig::OFF);
    let attacker = udp("198.51.100.7");
    assert_eq!(off.passes(&attacker, 300), 300);
    assert!(off.reports().is_empty());
    assert_eq!(off.flood.stats_total().unwrap(), Default::default());
}

#[test]
fn a_flood_spread_over_many_sources_makes_no_report_and_no_suspect_and_an_attacker_among_them_is_still_seen()
 {
    let limit = 2000;
    let mut f = Fixture::new(detector([limit, 0, 0], true));
    // 100k distinct IPv6 sources in 2001:db8::/32, 2 frames each: 200k frames in the window,
    // 100 times the per-source limit, and every source far under it.
    let mut frames = 0;
    for i in 0..100_000u32 {
        let low = u128::from(i.wrapping_mul(2_654_435_761)) << 16 | u128::from(i);
        let src = Ipv6Addr::from(0x2001_0db8_u128 << 96 | low);
        frames += f.passes(&frame::udp_from(&[], IpAddr::V6(src)), 2);
    }
    assert_eq!(frames, 200_000, "nothing held");
    assert!(f.reports().is_empty());
    let stats = f.flood.stats_total().unwrap();
    assert_eq!(
        (stats.suspects, stats.reports, stats.capped),
        (0, 0, 0),
        "no source of a spread-thin flood is counted exactly: {stats:?}"
    );
    // A real attacker in the middle of it is reported by the time it passes its limit (the
    // sketch's collisions can only bring the report earlier, by their ~200k/8192 per cell).
    let attacker = udp("198.51.100.7");
    let mut sent = 0;
    while f.reports().is_empty() {
        assert!(
            sent <= limit,
            "not reported after {sent} packets over a limit of {limit}"
        );
        f.run(&attacker, 1);
        sent += 1;
    }
    assert!(sent > limit - 100, "reported after only {sent} packets");
}

// ---- The daemon: reports become blocks of source `flood` through the policy ----------------

mod daemon {
    use std::{
        net::IpAddr,
        time::{Duration, Instant},
    };

    use enforcer::{block::Mode, protocol::StatusReply, time::BootNs};
    use enforcer_tests::{
        Lab, RECEIVER_V4, SENDER_V4,
        daemon::Daemon,
        flood::{self, Flood, Frames},
        metrics::Scrape,
        wait_for,
    };

    /// The attacker's address (one of the lab sender's).
    const ATTACKER: &str = SENDER_V4[1];
    /// A legitimate source, sending well under the limit.
    const LEGIT: &str = SENDER_V4[0];
    /// The per-source limit in the lab (packets per second).
    const LIMIT: u64 = 2000;
    /// The attacker's rate: ten times the limit, well within what the shared machine sends.
    const FLOOD_RATE: u64 = 20_000;

    fn config(extra: &str) -> String {
        format!(
            "[flood]\nenabled = true\n[flood.ipv4]\npackets = {LIMIT}\n[flood.ipv6]\npackets = {LIMIT}\n{extra}"
        )
    }

    /// Sends datagrams from `LEGIT` to the receiver, 10 every 25 ms (at most 400 per second, a
    /// fifth of the limit), until `done` says so; returns (sent, received).
    fn legit_until(
        lab: &Lab,
        mut done: impl FnMut() -> anyhow::Result<bool>,
        deadline: Duration,
    ) -> anyhow::Result<(u32, u32)> {
        let rx = lab.udp_listener(RECEIVER_V4)?;
        let tx = lab.udp_sender(LEGIT)?;
        let end = Instant::now() + deadline;
        let (mut sent, mut got) = (0, 0);
        while !done()? {
            anyhow::ensure!(Instant::now() < end, "timed out after {deadline:?}");
            let round = Instant::now();
            got += lab.exchange(&tx, &rx, 10)?;
            sent += 10;
            std::thread::sleep(Duration::from_millis(25).saturating_sub(round.elapsed()));
        }
        Ok((sent, got))
    }

    fn flood_status(d: &Daemon) -> enforcer::protocol::FloodStatus {
        let s: StatusReply = d.status();
        s.flood.expect("status shows flood detection")
    }

    #[test]
    fn a_flooding_source_is_blocked_as_flood_with_its_rate_and_a_legitimate_one_loses_nothing() {
        enforcer_tests::require_root();
        let lab = Lab::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enforcer.toml");
        std::fs::write(&path, config("")).unwrap();
        let d = Daemon::start_with_metrics(&lab, &["--config", path.to_str().unwrap()], Vec::new())
            .unwrap();
        let attacker: IpAddr = ATTACKER.parse().unwrap();
        let flood =
            Flood::start(&lab, Frames::new(&lab).unwrap().udp(attacker), FLOOD_RATE).unwrap();
        let mut blocked_after = None;
        let (sent, got) = legit_until(
            &lab,
            || {
                if blocked_after.is_none()
                    && d.list(&[]).iter().any(|e| e.target.to_string() == ATTACKER)
                {
                    blocked_after = Some(flood.started().elapsed());
                }
                // Go on for a second after the block: the legitimate source still gets through.
                Ok(blocked_after.is_some_and(|_| {
                    flood.started().elapsed() > blocked_after.unwrap() + Duration::from_secs(1)
                }))
            },
            Duration::from_secs(30),
        )
        .unwrap();
        let during = flood.sent();
        assert_eq!(
            got, sent,
            "the legitimate source lost datagrams during the flood"
        );
        assert_eq!(
            lab.passes(ATTACKER),
            0,
            "the attacker's own datagrams are dropped"
        );
        let total = flood.stop().unwrap();
        eprintln!(
            "flood of {total} frames ({during} while legit ran) blocked {:?} after it began; legit {got}/{sent}",
            blocked_after.unwrap()
        );
        let list = d.list(&[]);
        assert_eq!(list.len(), 1, "only the attacker is blocked: {list:?}");
        let source = &list[0].sources[0];
        assert_eq!(source.source.as_str(), "flood");
        assert_eq!(source.mode, Mode::Enforce);
        let reason = source.reason.text.clone().unwrap_or_default();
        assert!(
            reason.starts_with("flood: ")
                && reason.contains(" packets/s, over the limit of 2000/s"),
            "{reason}"
        );
        let rate: u64 = reason["flood: ".len()..]
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no rate in {reason:?}"));
        assert!(rate > LIMIT, "the measured rate {rate} is over the limit");
        let audit = d.audit_events();
        let block = audit
            .iter()
            .find(|e| e["action"] == "block" && e["source"] == "flood")
            .unwrap_or_else(|| panic!("no flood block audited: {audit:?}"));
        assert!(block.to_string().contains("packets/s"), "{block}");
        let f = flood_status(&d);
        assert!(f.enabled && f.hold);
        assert_eq!((f.blocks, f.refused), (1, 0), "{f:?}");
        assert_eq!(f.kernel.capped + f.kernel.lost, 0, "{f:?}");
        let metrics = d.cli(&["status"]);
        assert!(String::from_utf8_lossy(&metrics.stdout).contains("flood detection: on"));
        flood_metrics_show(&d.scrape().unwrap(), &f);
    }

    /// Every `enforcer_flood_*` family on this running daemon says what its status says, and
    /// says that a flood was seen and blocked (metrics_lab counts these families as checked
    /// here).
    fn flood_metrics_show(m: &Scrape, f: &enforcer::protocol::FloodStatus) {
        let v = |series: &str| {
            m.value(series)
                .unwrap_or_else(|| panic!("no {series} in /metrics:\n{}", m.0))
        };
        assert_eq!(v("enforcer_flood_enabled"), 1.0);
        assert_eq!(
            v(r#"enforcer_flood_limit_packets_per_second{family="ipv4",class="packets"}"#),
            LIMIT as f64
        );
        assert_eq!(
            v(r#"enforcer_flood_limit_packets_per_second{family="ipv6",class="syn"}"#),
            f64::from(f.ipv6.syn),
            "a limit left at its default shows the default"
        );
        assert_eq!(
            v(r#"enforcer_flood_candidates_total{outcome="block"}"#),
            1.0
        );
        assert_eq!(
            v(r#"enforcer_flood_candidates_total{outcome="refused"}"#),
            0.0
        );
        assert_eq!(
            v(r#"enforcer_flood_reports_dropped_total{reason="cap"}"#),
            0.0
        );
        assert!(
            v(r#"enforcer_flood_packets_total{action="held"}"#) >= f.kernel.held as f64
                && f.kernel.held > 0,
            "the hold dropped the attacker's packets before its block: {f:?}"
        );
        assert!(v("enforcer_flood_suspects_total") >= 1.0, "{f:?}");
        let latency = v("enforcer_flood_last_block_latency_seconds");
        assert!(
            latency > 0.0 && latency < 5.0,
            "threshold-to-block latency {latency} s"
        );
        assert_eq!(
            v("enforcer_flood_report_to_block_seconds_count"),
            1.0,
            "the one block is in the histogram"
        );
        assert_eq!(
            v(r#"enforcer_flood_report_to_block_seconds_bucket{le="+Inf"}"#),
            1.0
        );
        let sum = v("enforcer_flood_report_to_block_seconds_sum");
        assert!(
            (sum - latency).abs() < 1e-5,
            "the histogram holds the one latency: sum {sum} s, last {latency} s"
        );
    }

    #[test]
    fn an_allowlisted_flooding_source_is_never_blocked_nor_held() {
        enforcer_tests::require_root();
        let lab = Lab::new().unwrap();
        let (d, _dir) = Daemon::with_config(
            &lab,
            &config(&format!("[allowlist]\nprefixes = [\"{ATTACKER}/32\"]\n")),
        )
        .unwrap();
        let attacker: IpAddr = ATTACKER.parse().unwrap();
        let flood =
            Flood::start(&lab, Frames::new(&lab).unwrap().udp(attacker), FLOOD_RATE).unwrap();
        let f = wait_for(
            "the allowlisted flooder's report refused",
            Duration::from_secs(20),
            || Ok(Some(flood_status(&d)).filter(|f| f.refused >= 1)),
        )
        .unwrap();
        // Still flooding, well past the limit: its own datagrams get through, none held.
        assert_eq!(lab.passes(ATTACKER), 10);
        flood.stop().unwrap();
        assert!(d.list(&[]).is_empty(), "an allowlisted source was blocked");
        let f2 = flood_status(&d);
        assert_eq!((f.blocks, f2.kernel.held), (0, 0), "{f2:?}");
        assert!(
            f2.kernel.over > 0,
            "its packets over the limit passed: {f2:?}"
        );
        let audit = d.audit_events();
        assert!(
            audit
                .iter()
                .any(|e| e["action"] == "refuse" && e["source"] == "flood"),
            "the refusal is audited: {audit:?}"
        );
    }

    #[test]
    fn in_shadow_mode_a_flood_blocks_nothing_and_the_would_be_block_is_audited() {
        enforcer_tests::require_root();
        let lab = Lab::new().unwrap();
        let (d, _dir) =
            Daemon::with_config(&lab, &config("[policy.sources.flood]\nmode = \"shadow\"\n"))
                .unwrap();
        let attacker: IpAddr = ATTACKER.parse().unwrap();
        let flood =
            Flood::start(&lab, Frames::new(&lab).unwrap().udp(attacker), FLOOD_RATE).unwrap();
        let list = wait_for("the shadow block", Duration::from_secs(20), || {
            Ok(Some(d.list(&[])).filter(|l| !l.is_empty()))
        })
        .unwrap();
        assert_eq!(list[0].mode, Mode::Shadow);
        assert_eq!(list[0].sources[0].source.as_str(), "flood");
        assert_eq!(
            lab.passes(ATTACKER),
            10,
            "shadow: the flooder still gets through"
        );
        flood.stop().unwrap();
        let f = flood_status(&d);
        assert!(!f.hold, "no hold in shadow mode");
        assert_eq!(f.kernel.held, 0);
        assert!(f.kernel.over > 0, "{f:?}");
        let audit = d.audit_events();
        assert!(
            audit.iter().any(|e| e["action"] == "block"
                && e["source"] == "flood"
                && e["mode"] == "shadow"
                && e.to_string().contains("packets/s")),
            "the would-be block is audited with its rate: {audit:?}"
        );
    }

    /// Issue 23's number: from a source passing its limit (the data path's own time of it, in
    /// the report) to its block's entry written into the kernel map, over 20 trials, each a
    /// fresh attacker address; printed beside the time to the engine's answer, which waits for
    /// the store's commit. Measured, not asserted (the machine's load decides the tail).
    #[test]
    fn threshold_to_block_latency_over_20_trials() {
        enforcer_tests::require_root();
        let lab = Lab::new().unwrap();
        let (d, _dir) = Daemon::with_config(&lab, &config("")).unwrap();
        let frames = Frames::new(&lab).unwrap();
        let load_before = load_average();
        for i in 0..20u8 {
            let attacker = IpAddr::from([203, 0, 113, 10 + i]);
            let flood = Flood::start(&lab, frames.udp(attacker), FLOOD_RATE).unwrap();
            let f = wait_for("the flood block", Duration::from_secs(10), || {
                Ok(Some(flood_status(&d)).filter(|f| f.blocks > u64::from(i)))
            })
            .unwrap();
            flood.stop().unwrap();
            assert!(f.last_latency_us > 0, "{f:?}");
        }
        assert_eq!(d.list(&[]).len(), 20);
        eprintln!(
            "20 trials, {}; load average {load_before} .. {}",
            BlockTimes::read(&d, 20),
            load_average()
        );
    }

    /// The same, for a flood from four sources at once (their frames in turn, 10,000 per
    /// second each, so they pass the limit together), five times: each source's time from its
    /// daemon log line ("flood: block requested"). A source must not wait for the store's
    /// commit of the blocks of the sources reported before it.
    #[test]
    fn threshold_to_block_latency_of_four_sources_at_once_over_5_trials() {
        enforcer_tests::require_root();
        let lab = Lab::new().unwrap();
        let (d, _dir) = Daemon::with_config(&lab, &config("")).unwrap();
        let frames = Frames::new(&lab).unwrap();
        let load_before = load_average();
        for trial in 0..5u8 {
            let sources =
                (0..4u8).map(|k| frames.udp(IpAddr::from([203, 0, 113, 40 + 4 * trial + k])));
            let flood = Flood::start_mixed(&lab, sources.collect(), 2 * FLOOD_RATE).unwrap();
            wait_for("the four flood blocks", Duration::from_secs(20), || {
                Ok(Some(flood_status(&d)).filter(|f| f.blocks >= 4 * u64::from(trial + 1)))
            })
            .unwrap();
            flood.stop().unwrap();
        }
        eprintln!(
            "4 sources at once (5 x 4 blocks), {}; load average {load_before} .. {}",
            BlockTimes::read(&d, 20),
            load_average()
        );
    }

    /// Each flood block's times, from the daemon's log lines ("flood: block requested"), in µs
    /// from its source passing its limit.
    struct BlockTimes {
        /// To its report read by the daemon (absent from builds that did not log it).
        read: Vec<u64>,
        /// To its entry written into the kernel map.
        in_kernel: Vec<u64>,
        /// To the engine's answer, after the store's commit.
        answered: Vec<u64>,
    }

    impl BlockTimes {
        /// The times of the daemon's `n` flood blocks.
        fn read(d: &Daemon, n: usize) -> Self {
            let log = d.plain_log();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("flood: block requested"))
                .collect();
            assert_eq!(lines.len(), n, "one line per block:\n{log}");
            let all =
                |name: &str| -> Vec<u64> { lines.iter().filter_map(|l| field(l, name)).collect() };
            let times = Self {
                read: all("read_us"),
                in_kernel: all("in_kernel_us"),
                answered: all("answered_us"),
            };
            assert_eq!(
                (times.in_kernel.len(), times.answered.len()),
                (n, n),
                "{lines:?}"
            );
            times
        }
    }

    impl std::fmt::Display for BlockTimes {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "threshold -> report read (µs): {}; -> block in the kernel map: {}; -> the engine's answer: {}",
                percentiles(&self.read),
                percentiles(&self.in_kernel),
                percentiles(&self.answered)
            )
        }
    }

    /// The number after `name=` in a log line.
    fn field(line: &str, name: &str) -> Option<u64> {
        let at = line.find(&format!(" {name}="))? + name.len() + 2;
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }

    /// "p50 .. p95 .. max" and every value, sorted ("none" for none).
    fn percentiles(v: &[u64]) -> String {
        if v.is_empty() {
            return "none".into();
        }
        let mut v = v.to_vec();
        v.sort_unstable();
        let p = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
        format!("p50 {} p95 {} max {} all {v:?}", p(0.5), p(0.95), p(1.0))
    }

    /// The one-minute load average, as /proc/loadavg has it.
    fn load_average() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split(' ').next().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The daemon's time of a flood block in the kernel, checked against the map itself: a
    /// reader polls the pinned block map on the boot clock while the flood runs. The entry
    /// cannot be written before the last lookup that missed it began, and the daemon reads the
    /// clock right after its write returns, so its time lies after that lookup and (but for a
    /// preemption) close to the first lookup that found the entry.
    #[test]
    fn the_time_a_flood_block_is_in_the_kernel_is_when_the_map_shows_its_entry() {
        enforcer_tests::require_root();
        let lab = Lab::new().unwrap();
        let (d, _dir) = Daemon::with_config(&lab, &config("")).unwrap();
        let maps = enforcer::datapath::BlockMaps::open_pinned(
            &enforcer::datapath::PinLayout::new(lab.pins.path()).maps_dir(),
        )
        .unwrap();
        let attacker: IpAddr = ATTACKER.parse().unwrap();
        let target = enforcer::Target::host(attacker);
        let watch = std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(20);
            let mut missed = BootNs::now();
            while Instant::now() < end {
                let began = BootNs::now();
                if maps.get_block(&target).unwrap().is_some() {
                    return Some((missed, BootNs::now()));
                }
                missed = began;
                std::thread::sleep(Duration::from_micros(200));
            }
            None
        });
        let flood =
            Flood::start(&lab, Frames::new(&lab).unwrap().udp(attacker), FLOOD_RATE).unwrap();
        let (missed, seen) = watch
            .join()
            .unwrap()
            .expect("the attacker's entry appeared in the block map");
        flood.stop().unwrap();
        let f = wait_for("the flood block", Duration::from_secs(10), || {
            Ok(Some(flood_status(&d)).filter(|f| f.blocks == 1))
        })
        .unwrap();
        let written = BootNs::from_kernel(f.last_in_kernel_ns);
        eprintln!(
            "the daemon's time of the write: {} µs after the last lookup that missed the entry, {} µs before the first that found it ({} µs between the two); its latency {} µs",
            written.kernel().saturating_sub(missed.kernel()) / 1000,
            seen.kernel().saturating_sub(written.kernel()) / 1000,
            (seen.kernel() - missed.kernel()) / 1000,
            f.last_latency_us
        );
        assert!(
            written > missed,
            "the daemon dates the write ({written:?}) before a lookup that did not find the entry yet ({missed:?})"
        );
        assert!(
            written.kernel() < seen.kernel() + 1_000_000_000,
            "the daemon dates the write ({written:?}) long after the map showed the entry ({seen:?})"
        );
    }

    #[test]
    fn a_burst_from_100k_spoofed_sources_makes_no_block_and_no_suspect() {
        enforcer_tests::require_root();
        let lab = Lab::new().unwrap();
        let (d, _dir) = Daemon::with_config(&lab, &config("")).unwrap();
        let frames = Frames::new(&lab).unwrap();
        let spoofed: Vec<Vec<u8>> = (0..100_000u128)
            .map(|i| {
                let low = (i * 2_654_435_761) << 20 | i;
                frames.udp(IpAddr::V6((0x2001_0db8_u128 << 96 | low).into()))
            })
            .collect();
        let before = d.stats();
        let started = Instant::now();
        let sent = flood::burst(&lab, &spoofed).unwrap();
        let took = started.elapsed();
        assert_eq!(sent, 100_000);
        // Every frame was judged (the data path's counters show them) before looking.
        wait_for("the burst judged", Duration::from_secs(20), || {
            let now = d.stats();
            Ok((now.total.seen.packets >= before.total.seen.packets + 100_000).then_some(()))
        })
        .unwrap();
        assert!(d.list(&[]).is_empty(), "a spoofed source was blocked");
        let f = flood_status(&d);
        eprintln!("100k spoofed sources in {took:?}: {f:?}");
        assert_eq!(f.candidates, 0, "{f:?}");
        assert_eq!(
            f.kernel.suspects, 0,
            "no spoofed source was counted exactly: {f:?}"
        );
    }
}
