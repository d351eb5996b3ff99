//! The data path on real traffic: two network namespaces joined by a veth pair, the XDP program
//! on the receiving end, packets from the sender's sockets.
//!
//! Needs root, network namespaces, veth and XDP.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use enforcer::{
    Target,
    datapath::{
        AttachedMode, BlockMaps, Capacity, Datapath, DatapathError, DatapathOptions, Parse,
        XdpModeRequest, clock,
    },
};
use enforcer_common::{ALLOW_ORIGIN_CONFIG, BlockValue, MODE_ENFORCE, MODE_SHADOW};
use enforcer_tests::{
    Lab, PinDir, RECEIVER_IF, RECEIVER_V4, RECEIVER_V6, SENDER_IF, SENDER_V4, SENDER_V6,
    require_root,
};

const CONNECT: Duration = Duration::from_millis(500);

fn options(pins: &std::path::Path) -> DatapathOptions {
    DatapathOptions {
        bpffs_dir: pins.to_owned(),
        capacity: Capacity {
            addresses: 4096,
            prefixes: 1024,
            allow: 64,
        },
        count_block_hits: true,
        ..Default::default()
    }
}

/// Loads the program and attaches it to the receiver's interface, inside its namespace.
fn attach(lab: &Lab, mode: XdpModeRequest) -> Datapath {
    let opts = options(lab.pins.path());
    lab.receiver
        .run(move || {
            let mut dp = Datapath::open(&opts)?;
            dp.attach(RECEIVER_IF, mode)?;
            Ok::<_, DatapathError>(dp)
        })
        .expect("enter namespace")
        .expect("attach")
}

/// Loads and attaches from the receiver's namespace, dropping the process's handles at once
/// (the pins keep the program attached), and reports the attachment.
fn attach_only(
    lab: &Lab,
    pins: &std::path::Path,
    mode: XdpModeRequest,
) -> Result<enforcer::datapath::Attachment, DatapathError> {
    attach_only_with(lab, options(pins), mode)
}

/// [`attach_only`] with other options.
fn attach_only_with(
    lab: &Lab,
    opts: DatapathOptions,
    mode: XdpModeRequest,
) -> Result<enforcer::datapath::Attachment, DatapathError> {
    lab.receiver
        .run(move || Datapath::open(&opts).and_then(|mut dp| dp.attach(RECEIVER_IF, mode)))
        .expect("enter namespace")
}

fn block(dp: &mut Datapath, target: &str, expires_ns: u64, mode: u32) {
    let t: Target = target.parse().unwrap();
    dp.maps_mut()
        .insert_block(&t, &BlockValue::new(expires_ns, mode))
        .unwrap();
}

fn pinned_maps(lab: &Lab) -> BlockMaps {
    BlockMaps::open_pinned(&enforcer::datapath::PinLayout::new(lab.pins.path()).maps_dir()).unwrap()
}

fn receiver_tcp(lab: &Lab, addr: &str) -> (std::net::TcpListener, SocketAddr) {
    let l = lab.tcp_listener(addr).unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

#[test]
fn a_blocked_source_cannot_connect_or_send_while_another_source_gets_through() {
    require_root();
    let lab = Lab::new().unwrap();
    let mut dp = attach(&lab, XdpModeRequest::Auto);
    block(&mut dp, SENDER_V4[1], 0, MODE_ENFORCE);

    let (_l, dst) = receiver_tcp(&lab, RECEIVER_V4);
    assert!(
        !lab.tcp_connect(SENDER_V4[1], dst, CONNECT).unwrap(),
        "blocked source connected"
    );
    assert!(
        lab.tcp_connect(SENDER_V4[2], dst, CONNECT).unwrap(),
        "other source could not connect"
    );

    let rx = lab.udp_listener(RECEIVER_V4).unwrap();
    let blocked = lab.udp_sender(SENDER_V4[1]).unwrap();
    let other = lab.udp_sender(SENDER_V4[2]).unwrap();
    assert_eq!(lab.exchange(&blocked, &rx, 20).unwrap(), 0);
    assert_eq!(lab.exchange(&other, &rx, 20).unwrap(), 20);
}

/// `Lab::passes` tells a drop from a delay: on a link slowed down so that ten datagrams take
/// far longer than a fixed receive window to cross (a token bucket of 4 kbit/s on the sender's
/// side), a source that is not blocked still counts all ten, and a blocked one none.
#[test]
fn on_a_slow_link_a_delayed_datagram_is_not_counted_as_dropped() {
    require_root();
    let lab = Lab::new().unwrap();
    let mut dp = attach(&lab, XdpModeRequest::Auto);
    block(&mut dp, SENDER_V4[1], 0, MODE_ENFORCE);
    let slow = "root tbf rate 4kbit burst 200 latency 30s";
    let mut args = vec!["qdisc", "replace", "dev", SENDER_IF];
    args.extend(slow.split(' '));
    lab.sender.exec("tc", &args).unwrap();
    let started = Instant::now();
    assert_eq!(
        lab.passes(SENDER_V4[2]),
        10,
        "a delayed datagram counted as dropped"
    );
    let took = started.elapsed();
    assert!(
        took > Duration::from_millis(500),
        "the link was not slow ({took:?}): the test proves nothing"
    );
    eprintln!("ten datagrams crossed the slowed link in {took:?}");
    assert_eq!(
        lab.passes(SENDER_V4[1]),
        0,
        "the blocked source got through"
    );
}

#[test]
fn native_mode_is_used_on_veth_and_reported() {
    require_root();
    let lab = Lab::new().unwrap();
    let att = attach_only(&lab, lab.pins.path(), XdpModeRequest::Auto).unwrap();
    assert_eq!(att.mode, AttachedMode::Native);
    assert!(!att.replaced);
    let lab2 = Lab::new().unwrap();
    let att = attach_only(&lab2, lab2.pins.path(), XdpModeRequest::Skb).unwrap();
    assert_eq!(att.mode, AttachedMode::Skb);
}

#[test]
fn a_block_lifts_on_time_with_no_userspace_process() {
    require_root();
    let lab = Lab::new().unwrap();
    let ttl = Duration::from_millis(1500);
    let deadline = {
        let mut dp = attach(&lab, XdpModeRequest::Auto);
        let deadline = clock::boottime_ns() + ttl.as_nanos() as u64;
        block(&mut dp, SENDER_V4[1], deadline, MODE_ENFORCE);
        deadline
        // The program, maps and links are dropped here: only the pins keep them alive.
    };
    let rx = lab.udp_listener(RECEIVER_V4).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    let tx = lab.udp_sender(SENDER_V4[1]).unwrap();
    let dst = rx.local_addr().unwrap();
    let give_up = Instant::now() + ttl + Duration::from_secs(2);
    let mut buf = [0u8; 64];
    let first_arrival = loop {
        assert!(Instant::now() < give_up, "the block never lifted");
        tx.send_to(b"probe", dst).unwrap();
        if rx.recv(&mut buf).is_ok() {
            break clock::boottime_ns();
        }
    };
    assert!(
        first_arrival >= deadline,
        "a packet passed {} ns before the deadline",
        deadline - first_arrival
    );
    let late = Duration::from_nanos(first_arrival - deadline);
    assert!(
        late <= Duration::from_millis(50),
        "first packet passed {late:?} after the deadline"
    );
    eprintln!("first packet after expiry: {late:?} late");
    let (_l, tcp) = receiver_tcp(&lab, RECEIVER_V4);
    assert!(lab.tcp_connect(SENDER_V4[1], tcp, CONNECT).unwrap());
    let stats = pinned_maps(&lab).stats_total().unwrap();
    assert!(stats.dropped.packets > 0);
}

#[test]
fn shadow_counts_without_dropping() {
    require_root();
    let lab = Lab::new().unwrap();
    let mut dp = attach(&lab, XdpModeRequest::Auto);
    block(&mut dp, SENDER_V4[1], 0, MODE_SHADOW);
    let rx = lab.udp_listener(RECEIVER_V4).unwrap();
    let tx = lab.udp_sender(SENDER_V4[1]).unwrap();
    assert_eq!(lab.exchange(&tx, &rx, 25).unwrap(), 25);
    let t: Target = SENDER_V4[1].parse().unwrap();
    let entry = dp.maps().get_block(&t).unwrap().unwrap();
    assert_eq!(entry.hit_packets, 25);
    let stats = dp.maps().stats_total().unwrap();
    assert_eq!(stats.shadow.packets, 25);
    assert_eq!(stats.dropped.packets, 0);
}

#[test]
fn the_allowlist_wins_over_a_covering_block() {
    require_root();
    let lab = Lab::new().unwrap();
    let mut dp = attach(&lab, XdpModeRequest::Auto);
    block(&mut dp, "192.0.2.0/24", 0, MODE_ENFORCE);
    let allowed: Target = SENDER_V4[2].parse().unwrap();
    dp.maps_mut()
        .insert_allow(&allowed, ALLOW_ORIGIN_CONFIG)
        .unwrap();
    let rx = lab.udp_listener(RECEIVER_V4).unwrap();
    let blocked = lab.udp_sender(SENDER_V4[1]).unwrap();
    let ok = lab.udp_sender(SENDER_V4[2]).unwrap();
    assert_eq!(lab.exchange(&blocked, &rx, 10).unwrap(), 0);
    assert_eq!(lab.exchange(&ok, &rx, 10).unwrap(), 10);
    assert_eq!(dp.maps().stats_total().unwrap().allowlisted.packets, 10);
}

#[test]
fn counters_equal_the_packets_sent() {
    require_root();
    let lab = Lab::new().unwrap();
    let mut dp = attach(&lab, XdpModeRequest::Auto);
    block(&mut dp, SENDER_V4[1], 0, MODE_ENFORCE);
    block(&mut dp, SENDER_V6[1], 0, MODE_ENFORCE);
    let rx4 = lab.udp_listener(RECEIVER_V4).unwrap();
    let rx6 = lab.udp_listener(RECEIVER_V6).unwrap();
    let b4 = lab.udp_sender(SENDER_V4[1]).unwrap();
    let b6 = lab.udp_sender(SENDER_V6[1]).unwrap();
    let before = dp.maps().stats_total().unwrap();
    let payload = [0u8; 100];
    for _ in 0..137 {
        b4.send_to(&payload, rx4.local_addr().unwrap()).unwrap();
    }
    for _ in 0..61 {
        b6.send_to(&payload, rx6.local_addr().unwrap()).unwrap();
    }
    // Wait for the last frames to cross the veth, then compare exactly.
    let hits = |a: &str| dp.maps().get_block(&a.parse().unwrap()).unwrap().unwrap();
    enforcer_tests::wait_for("all frames counted", Duration::from_secs(2), || {
        Ok(
            (hits(SENDER_V4[1]).hit_packets >= 137 && hits(SENDER_V6[1]).hit_packets >= 61)
                .then_some(()),
        )
    })
    .unwrap();
    let after = dp.maps().stats_total().unwrap();
    assert_eq!(after.dropped.packets - before.dropped.packets, 137 + 61);
    assert_eq!(hits(SENDER_V4[1]).hit_packets, 137);
    assert_eq!(hits(SENDER_V6[1]).hit_packets, 61);
    // Frame bytes as XDP sees them: Ethernet 14 + IP header + UDP 8 + payload.
    assert_eq!(hits(SENDER_V4[1]).hit_bytes, 137 * (14 + 20 + 8 + 100));
    assert_eq!(hits(SENDER_V6[1]).hit_bytes, 61 * (14 + 40 + 8 + 100));
    assert_eq!(
        after.dropped.bytes - before.dropped.bytes,
        137 * 142 + 61 * 162
    );
    assert!(hits(SENDER_V4[1]).last_hit_ns > 0);
    let mut buf = [0u8; 128];
    assert!(
        rx4.recv(&mut buf).is_err() && rx6.recv(&mut buf).is_err(),
        "a blocked datagram arrived"
    );
}

#[test]
fn ipv6_traffic_is_filtered() {
    require_root();
    let lab = Lab::new().unwrap();
    let mut dp = attach(&lab, XdpModeRequest::Auto);
    block(&mut dp, "2001:db8::10/127", 0, MODE_ENFORCE);
    let (_l, dst) = receiver_tcp(&lab, RECEIVER_V6);
    assert!(!lab.tcp_connect(SENDER_V6[1], dst, CONNECT).unwrap());
    // ::10/127 covers ::10 and ::11; ::1 is outside.
    assert!(!lab.tcp_connect(SENDER_V6[2], dst, CONNECT).unwrap());
    assert!(lab.tcp_connect(SENDER_V6[0], dst, CONNECT).unwrap());
    let rx = lab.udp_listener(RECEIVER_V6).unwrap();
    assert_eq!(
        lab.exchange(&lab.udp_sender(SENDER_V6[1]).unwrap(), &rx, 10)
            .unwrap(),
        0
    );
    assert_eq!(
        lab.exchange(&lab.udp_sender(SENDER_V6[0]).unwrap(), &rx, 10)
            .unwrap(),
        10
    );
}

/// This kernel has no 802.1Q support (CONFIG_VLAN_8021Q is off), so no VLAN sub-interface can
/// be made: the sender injects tagged frames on its veth with a packet socket instead. They
/// cross the veth as real frames and meet the attached program like any tagged traffic.
#[test]
fn vlan_tagged_traffic_is_filtered() {
    use enforcer_tests::frame::{dot1ad, dot1q, ipv4_udp, ipv6_udp};
    require_root();
    let lab = Lab::new().unwrap();
    let mut dp = attach(&lab, XdpModeRequest::Auto);
    block(&mut dp, "198.51.100.9", 0, MODE_ENFORCE);
    block(&mut dp, "2001:db8:9::/48", 0, MODE_ENFORCE);
    let dst4 = "198.51.100.2".parse().unwrap();
    let dst6 = "2001:db8:2::2".parse().unwrap();
    let blocked4 = "198.51.100.9".parse().unwrap();
    let other4 = "198.51.100.1".parse().unwrap();
    let blocked6 = "2001:db8:9::9".parse().unwrap();
    let mut frames = Vec::new();
    for tags in [vec![dot1q(100)], vec![dot1ad(100), dot1q(200)]] {
        frames.push((ipv4_udp(&tags, blocked4, dst4, 0, false), true));
        frames.push((ipv6_udp(&tags, blocked6, dst6), true));
        frames.push((ipv4_udp(&tags, other4, dst4, 0, false), false));
    }
    let before = dp.maps().stats_total().unwrap();
    let sent = lab
        .sender
        .run(|| enforcer_tests::inject(SENDER_IF, frames.iter().map(|(f, _)| f.as_slice())))
        .unwrap()
        .unwrap();
    assert_eq!(sent, frames.len());
    let hits = |a: &str| {
        dp.maps()
            .get_block(&a.parse().unwrap())
            .unwrap()
            .unwrap()
            .hit_packets
    };
    enforcer_tests::wait_for("tagged frames counted", Duration::from_secs(2), || {
        let s = dp.maps().stats_total().unwrap();
        Ok((s.seen.packets - before.seen.packets >= frames.len() as u64).then_some(()))
    })
    .unwrap();
    let after = dp.maps().stats_total().unwrap();
    assert_eq!(hits("198.51.100.9"), 2, "one per tagging");
    assert_eq!(hits("2001:db8:9::/48"), 2, "one per tagging");
    assert_eq!(after.dropped.packets - before.dropped.packets, 4);
    // The kernel's own IPv6 traffic on the veth (MLD, neighbour discovery) may pass in the same
    // window, so at least the unblocked source's two frames passed: none of them was dropped.
    let passed = after.passed.packets - before.passed.packets;
    assert!(
        passed >= 2,
        "the unblocked source's frames pass: {passed} passed"
    );
}

#[test]
fn another_program_replaces_the_running_one_without_letting_blocked_traffic_through() {
    require_root();
    let lab = Lab::new().unwrap();
    let first = {
        let mut dp = attach(&lab, XdpModeRequest::Auto);
        block(&mut dp, SENDER_V4[1], 0, MODE_ENFORCE);
        lab.receiver
            .run(|| enforcer::datapath::query_xdp(if_index(RECEIVER_IF)))
            .unwrap()
            .unwrap()
    };
    let rx = lab.udp_listener(RECEIVER_V4).unwrap();
    let tx = lab.udp_sender(SENDER_V4[1]).unwrap();
    let dst = rx.local_addr().unwrap();
    // Flood from the blocked source while a new process loads and swaps in another program
    // (another build's: here the same object with another load option, so that it is not the
    // pinned one a restart of the same build takes back): the flood must be running before the
    // swap starts and go on after it ends.
    let sent = std::sync::atomic::AtomicU64::new(0);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let count = || sent.load(std::sync::atomic::Ordering::Relaxed);
    let (replaced, before, during, total) = std::thread::scope(|s| {
        let flood = s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tx.send_to(b"x", dst).unwrap();
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let stop_flood = || stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let result = (|| {
            enforcer_tests::wait_for("the flood to start", Duration::from_secs(5), || {
                Ok((count() >= 100).then_some(()))
            })?;
            let before = count();
            let other = DatapathOptions {
                replies: false,
                ..options(lab.pins.path())
            };
            let att = attach_only_with(&lab, other, XdpModeRequest::Auto)?;
            let during = count();
            enforcer_tests::wait_for(
                "the flood to go on after the swap",
                Duration::from_secs(5),
                || Ok((count() >= during + 100).then_some(())),
            )?;
            anyhow::Ok((att, before, during))
        })();
        stop_flood();
        flood.join().unwrap();
        let (att, before, during) = result.unwrap();
        (att, before, during, count())
    });
    eprintln!(
        "flood: {before} packets before the swap began, {} while it ran, {} after",
        during - before,
        total - during
    );
    assert!(replaced.replaced, "the pinned link was not reused");
    assert_ne!(
        Some(replaced.prog_id),
        first.prog_id,
        "the program was not swapped"
    );
    assert!(
        before > 0 && total > during,
        "the flood did not overlap the swap"
    );
    let mut buf = [0u8; 8];
    assert!(
        rx.recv(&mut buf).is_err(),
        "a blocked packet got through during the swap"
    );
    // Every packet sent met one of the two programs and was dropped by it.
    let maps = pinned_maps(&lab);
    let t: Target = SENDER_V4[1].parse().unwrap();
    enforcer_tests::wait_for("every flood packet counted", Duration::from_secs(2), || {
        Ok((maps.get_block(&t).unwrap().unwrap().hit_packets >= total).then_some(()))
    })
    .unwrap();
    let after = lab
        .receiver
        .run(|| enforcer::datapath::query_xdp(if_index(RECEIVER_IF)))
        .unwrap()
        .unwrap();
    assert_eq!(after.prog_id, Some(replaced.prog_id));
    // The first program's pin went with it: one pinned program, the one running.
    let pinned: Vec<String> =
        std::fs::read_dir(enforcer::datapath::PinLayout::new(lab.pins.path()).maps_dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("prog-"))
            .collect();
    assert_eq!(pinned.len(), 1, "pinned programs: {pinned:?}");
}

/// `auto` falls back to generic (skb) XDP where the driver has no native XDP. A bridge has
/// none (no `ndo_bpf`), and a test can create one in a namespace (this kernel has no `dummy`
/// module; macvlan and vxlan would do too).
#[test]
fn auto_mode_falls_back_to_skb_where_native_xdp_is_missing() {
    require_root();
    let lab = Lab::new().unwrap();
    lab.receiver
        .ip(&["link", "add", "br0", "type", "bridge"])
        .unwrap();
    lab.receiver.ip(&["link", "set", "br0", "up"]).unwrap();
    let opts = options(lab.pins.path());
    let native = lab
        .receiver
        .run(|| Datapath::open(&opts).and_then(|mut dp| dp.attach("br0", XdpModeRequest::Native)))
        .unwrap();
    assert!(
        native.is_err(),
        "a bridge has no native XDP, yet native attach worked"
    );
    let att = lab
        .receiver
        .run(|| Datapath::open(&opts).and_then(|mut dp| dp.attach("br0", XdpModeRequest::Auto)))
        .unwrap()
        .unwrap();
    assert_eq!(
        att.mode,
        AttachedMode::Skb,
        "auto on a driver without native XDP"
    );
    let state = lab
        .receiver
        .run(|| enforcer::datapath::query_xdp(if_index("br0")))
        .unwrap()
        .unwrap();
    assert_eq!(state.prog_id, Some(att.prog_id), "attached");
}

#[test]
fn a_program_enforcer_did_not_attach_is_never_replaced_or_detached() {
    require_root();
    let lab = Lab::new().unwrap();
    // Someone else's program: attached from another pin directory, so not ours.
    let foreign_pins = PinDir::new().unwrap();
    let theirs = attach_only(&lab, foreign_pins.path(), XdpModeRequest::Auto).unwrap();
    let err = attach_only(&lab, lab.pins.path(), XdpModeRequest::Auto).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, DatapathError::ForeignProgram { prog_id, .. } if prog_id == theirs.prog_id),
        "{msg}"
    );
    assert!(
        msg.contains("enforcer_xdp") && msg.contains(&theirs.prog_id.to_string()),
        "{msg}"
    );
    let layout = enforcer::datapath::PinLayout::new(lab.pins.path());
    let err = lab
        .receiver
        .run(move || enforcer::datapath::detach_link(&layout, RECEIVER_IF))
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, DatapathError::ForeignProgram { .. }));
    let still = lab
        .receiver
        .run(|| enforcer::datapath::query_xdp(if_index(RECEIVER_IF)))
        .unwrap()
        .unwrap();
    assert_eq!(still.prog_id, Some(theirs.prog_id));
}

#[test]
fn detach_removes_the_program_and_traffic_flows() {
    require_root();
    let lab = Lab::new().unwrap();
    let mut dp = attach(&lab, XdpModeRequest::Auto);
    block(&mut dp, SENDER_V4[1], 0, MODE_ENFORCE);
    drop(dp);
    let pins = lab.pins.path().to_owned();
    let detached = lab
        .receiver
        .run(move || enforcer::datapath::detach_all(&pins))
        .unwrap()
        .unwrap();
    assert_eq!(detached, vec![RECEIVER_IF.to_owned()]);
    assert!(!lab.pins.path().exists());
    let state = lab
        .receiver
        .run(|| enforcer::datapath::query_xdp(if_index(RECEIVER_IF)))
        .unwrap()
        .unwrap();
    assert_eq!(state.prog_id, None);
    let rx = lab.udp_listener(RECEIVER_V4).unwrap();
    assert_eq!(
        lab.exchange(&lab.udp_sender(SENDER_V4[1]).unwrap(), &rx, 5)
            .unwrap(),
        5
    );
}

fn if_index(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C string.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// LLVM turns zeroing stores of 16 bytes or more into a `memset` call, and an array compared
/// with a constant into a `memcmp`; the BPF target links both from compiler-builtins as byte
/// loops, whose byte stores then stall the word loads that follow. One such `memset` (a walk
/// state zeroed for every IPv4 source) was half of a legitimate IPv4 packet's cost. The
/// verifier's view of both programs, flood detection off as shipped (the detector's window
/// resets zero their counters with one, once a window), calls none.
#[test]
fn the_data_path_calls_no_byte_loop_memset_or_memcmp() {
    require_root();
    let pins = PinDir::new().expect("pin dir");
    let mut dp = Datapath::open(&options(pins.path())).expect("load");
    for parse in [Parse::Ethernet, Parse::RawIp] {
        let program = dp.program_for(parse).expect("load the program");
        let id = program.info().expect("program info").id().to_string();
        let xlated = enforcer_tests::run("bpftool", &["prog", "dump", "xlated", "id", &id])
            .expect("bpftool dumps the program");
        let calls: Vec<&str> = xlated
            .lines()
            .filter(|l| l.contains("call pc"))
            .map(str::trim_end)
            .collect();
        // Calls are named only when the program carries its BTF function info: without the
        // names this check could not see a `memset` call, so it would pass whatever the code.
        assert!(
            calls.iter().any(|l| l.ends_with("_in_scopes")),
            "bpftool names no subprogram call (no BTF function info?): {:?}",
            &calls[..calls.len().min(3)]
        );
        let byte_loops: Vec<&str> = calls
            .into_iter()
            .filter(|l| {
                ["memset", "memcmp", "memcpy", "memmove", "bcmp"]
                    .iter()
                    .any(|f| l.ends_with(&format!("_{f}")))
            })
            .collect();
        assert!(
            byte_loops.is_empty(),
            "the {parse:?} program calls byte-loop helpers: {byte_loops:#?}"
        );
    }
}
