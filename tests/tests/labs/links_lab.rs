//! Every link a host has is protected, or the daemon says it is not (issue 21).
//!
//! Real packets through namespaces: IP packets written into a tun device (what WireGuard,
//! OpenVPN or a PPP daemon hand the kernel: no Ethernet header), jumbo datagrams across a veth
//! pair at MTU 9000 in native mode, frames deeper in VLAN tags than the parser goes, and a link
//! whose type the data path cannot parse.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use enforcer_tests::{
    Lab, SENDER_IF, SENDER_V4, SENDER_V6,
    daemon::{Daemon, EXIT_UNPROTECTED, ok},
    frame, require_root,
    tun::Tun,
    unique_name, wait_for,
};

const TUN: &str = "tn0";
/// The host's addresses on the tun link.
const TUN_LOCAL_V4: &str = "203.0.113.1";
const TUN_LOCAL_V6: &str = "2001:db8:77::1";
/// Sources behind the tun link: the first of each family is blocked.
const BLOCKED_V4: &str = "198.51.100.9";
const INNOCENT_V4: &str = "198.51.100.10";
const BLOCKED_V6: &str = "2001:db8:66::9";
const INNOCENT_V6: &str = "2001:db8:66::10";
/// `ARPHRD_PPP`: a tun device retyped with TUNSETLINK stands in for a PPP link (the kernel here
/// has no PPP device a test can drive); frames on both start with the IP header.
const ARPHRD_PPP: u16 = 512;
/// `ARPHRD_IEEE80211_RADIOTAP`: 802.11 monitor frames, which the data path cannot parse.
const ARPHRD_IEEE80211_RADIOTAP: u16 = 803;

/// A tun device `name` in the receiver namespace, of link type `arphrd` when given, with the
/// host's addresses and routes to the sources behind it, up.
fn tun_link(lab: &Lab, name: &str, arphrd: Option<u16>) -> Tun {
    let owned = name.to_owned();
    let tun = lab
        .receiver
        .run(move || Tun::create(&owned))
        .unwrap()
        .unwrap();
    if let Some(t) = arphrd {
        tun.set_link_type(t).unwrap();
    }
    let r = &lab.receiver;
    r.ip(&["addr", "add", &format!("{TUN_LOCAL_V4}/32"), "dev", name])
        .unwrap();
    r.ip(&[
        "addr",
        "add",
        &format!("{TUN_LOCAL_V6}/128"),
        "dev",
        name,
        "nodad",
    ])
    .unwrap();
    r.ip(&["link", "set", name, "up"]).unwrap();
    r.ip(&["route", "add", "198.51.100.0/24", "dev", name])
        .unwrap();
    r.ip(&["-6", "route", "add", "2001:db8:66::/64", "dev", name])
        .unwrap();
    tun
}

fn listener(lab: &Lab, addr: &str) -> UdpSocket {
    let addr: IpAddr = addr.parse().unwrap();
    let sock = lab
        .receiver
        .run(move || UdpSocket::bind(SocketAddr::new(addr, 0)))
        .unwrap()
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    sock
}

/// Reads datagrams until every one tagged with `wait_tag` arrived (`wait_count` of them, within
/// 10 s) and 300 ms more have passed; returns how many arrived per tag.
fn received(
    sock: &UdpSocket,
    wait_tag: &str,
    wait_count: u32,
    buf_len: usize,
) -> BTreeMap<String, u32> {
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    let mut buf = vec![0u8; buf_len];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut settle: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if settle.is_some_and(|s| now > s) || now > deadline {
            return counts;
        }
        if let Ok(n) = sock.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n.min(64)]).into_owned();
            let tag = text.split(':').next().unwrap_or_default().to_owned();
            *counts.entry(tag).or_default() += 1;
        }
        if settle.is_none() && counts.get(wait_tag).copied().unwrap_or(0) >= wait_count {
            settle = Some(Instant::now() + Duration::from_millis(300));
        }
    }
}

/// Writes 50 packets from the blocked source, then 50 from the innocent one, into the tun
/// device, and returns how many of each reached the socket on the host.
fn through_tun(tun: &Tun, sock: &UdpSocket, blocked: &str, innocent: &str) -> (u32, u32) {
    let dst = sock.local_addr().unwrap();
    let (b, i) = (unique_name("b"), unique_name("i"));
    for (tag, src) in [(&b, blocked), (&i, innocent)] {
        for n in 0..50 {
            let payload = format!("{tag}:{n}");
            let packet = frame::ip_udp(
                src.parse().unwrap(),
                dst.ip(),
                dst.port(),
                payload.as_bytes(),
            );
            tun.send(&packet).unwrap();
        }
    }
    let counts = received(sock, &i, 50, 2048);
    (
        counts.get(&b).copied().unwrap_or(0),
        counts.get(&i).copied().unwrap_or(0),
    )
}

/// The daemon's view of one interface in `enforcer status --json`.
fn status_of(d: &Daemon, iface: &str) -> serde_json::Value {
    // Exit 8 (an interface not protected) still prints the status.
    let out = d.cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {out:?}"));
    status["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["iface"] == iface)
        .unwrap_or_else(|| panic!("{iface} not in status: {status}"))
        .clone()
}

fn protects_a_tun_link(arphrd: Option<u16>) {
    require_root();
    let lab = Lab::new().unwrap();
    let tun = tun_link(&lab, TUN, arphrd);
    let d = Daemon::start(&lab, &["--iface", TUN]).unwrap();
    ok(&d.cli(&["block", BLOCKED_V4]));
    ok(&d.cli(&["block", BLOCKED_V6]));
    let v4 = listener(&lab, TUN_LOCAL_V4);
    let v6 = listener(&lab, TUN_LOCAL_V6);
    assert_eq!(
        through_tun(&tun, &v4, BLOCKED_V4, INNOCENT_V4),
        (0, 50),
        "IPv4 over {TUN} (blocked, innocent delivered)"
    );
    assert_eq!(
        through_tun(&tun, &v6, BLOCKED_V6, INNOCENT_V6),
        (0, 50),
        "IPv6 over {TUN} (blocked, innocent delivered)"
    );
    let row = status_of(&d, TUN);
    assert_eq!(row["state"], "protected", "{row}");
    assert_eq!(row["parse"], "raw-ip", "{row}");
    let stats = d.json(&["stats"]);
    let tun_counters = stats["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["iface"] == TUN)
        .unwrap_or_else(|| panic!("{TUN} not in stats: {stats}"))["counters"]
        .clone();
    assert_eq!(tun_counters["dropped"]["packets"], 100, "{tun_counters}");
}

#[test]
fn a_blocked_source_on_a_tun_link_is_dropped_and_innocent_traffic_passes() {
    protects_a_tun_link(None);
}

#[test]
fn a_ppp_typed_link_is_read_as_raw_ip_and_protected() {
    protects_a_tun_link(Some(ARPHRD_PPP));
}

#[test]
fn native_mode_attaches_at_mtu_9000_and_drops_a_blocked_sources_jumbo_datagrams() {
    require_root();
    let lab = Lab::new().unwrap();
    lab.sender
        .ip(&["link", "set", SENDER_IF, "mtu", "9000"])
        .unwrap();
    lab.receiver
        .ip(&["link", "set", enforcer_tests::RECEIVER_IF, "mtu", "9000"])
        .unwrap();
    let d = Daemon::start(&lab, &["--xdp-mode", "native"]).unwrap();
    let row = status_of(&d, enforcer_tests::RECEIVER_IF);
    assert_eq!(row["state"], "protected", "{row}");
    assert_eq!(row["mode"], "native", "{row}");
    ok(&d.cli(&["block", SENDER_V4[1]]));
    ok(&d.cli(&["block", SENDER_V6[1]]));
    for (blocked, innocent, dst) in [
        (SENDER_V4[1], SENDER_V4[0], enforcer_tests::RECEIVER_V4),
        (SENDER_V6[1], SENDER_V6[0], enforcer_tests::RECEIVER_V6),
    ] {
        let rx = listener(&lab, dst);
        let to = rx.local_addr().unwrap();
        let (b, i) = (unique_name("b"), unique_name("i"));
        let (tx_blocked, tx_innocent) = (
            lab.udp_sender(blocked).unwrap(),
            lab.udp_sender(innocent).unwrap(),
        );
        // Five rounds of ten each, read before the next round: fifty 8 kB datagrams at once
        // would overflow the socket's receive buffer.
        let (mut from_blocked, mut from_innocent) = (0, 0);
        for round in 0..5 {
            for (tag, tx) in [(&b, &tx_blocked), (&i, &tx_innocent)] {
                for n in 0..10 {
                    let mut payload = format!("{tag}:{round}:{n}:").into_bytes();
                    payload.resize(8000, b'j');
                    tx.send_to(&payload, to).unwrap();
                }
            }
            let counts = received(&rx, &i, 10, 9000);
            from_blocked += counts.get(&b).copied().unwrap_or(0);
            from_innocent += counts.get(&i).copied().unwrap_or(0);
        }
        assert_eq!(
            (from_blocked, from_innocent),
            (0, 50),
            "8,000-byte datagrams from {blocked} (blocked) and {innocent} (innocent)"
        );
    }
    // Dropped by the program (not lost on the way), and nothing left unjudged. Bytes count a
    // multi-buffer frame's first buffer only (docs/interfaces.md): not checked here.
    let stats = d.json(&["stats"]);
    assert_eq!(stats["total"]["dropped"]["packets"], 100, "{stats}");
    assert_eq!(stats["total"]["not_ip"]["packets"], 0, "{stats}");
}

#[test]
fn a_frame_with_three_vlan_tags_is_counted_as_unjudged_by_its_reason() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    ok(&d.cli(&["block", "198.51.100.9"]));
    let frames: Vec<Vec<u8>> = (0..5)
        .map(|_| frame::three_tags_from("198.51.100.9".parse().unwrap()))
        .collect();
    lab.sender
        .run(|| enforcer_tests::inject(SENDER_IF, frames.iter().map(Vec::as_slice)))
        .unwrap()
        .unwrap();
    let counted = wait_for(
        "the frames counted by reason",
        Duration::from_secs(5),
        || {
            let stats = d.json(&["stats"]);
            let vb = stats["interfaces"]
                .as_array()
                .and_then(|a| a.iter().find(|i| i["iface"] == enforcer_tests::RECEIVER_IF))
                .cloned()
                .unwrap_or_default();
            let n = vb["counters"]["unjudged"]["vlan_depth"]["packets"].as_u64();
            Ok(match n {
                Some(5) => Some(vb),
                Some(n) if n > 5 => panic!("more than 5 counted: {vb}"),
                _ => None,
            })
        },
    );
    let vb = counted.unwrap_or_else(|e| panic!("{e:#}: {}", d.json(&["stats"])));
    assert_eq!(vb["counters"]["dropped"]["packets"], 0, "{vb}");
    let text = ok(&d.cli(&["stats"]));
    assert!(
        text.lines()
            .any(|l| l.contains("vlan-depth") && l.split_whitespace().any(|w| w == "5")),
        "{text}"
    );
}

/// A link type the parser does not know, matched by a pattern: refused with one line naming the
/// type, shown as unprotected with the reason, never `protected`; the daemon protects the rest.
#[test]
fn a_link_the_data_path_cannot_parse_is_refused_in_one_line_and_never_reported_protected() {
    require_root();
    let lab = Lab::new().unwrap();
    let _odd = tun_link(&lab, "tx0", Some(ARPHRD_IEEE80211_RADIOTAP));
    let d = Daemon::start(&lab, &["--iface", "tx*"]).unwrap();
    let row = status_of(&d, "tx0");
    assert_eq!(row["state"], "unprotected", "{row}");
    let error = row["error"].as_str().unwrap_or_default();
    assert!(error.contains("ARPHRD 803"), "{row}");
    assert_eq!(
        d.cli(&["status"]).status.code(),
        Some(EXIT_UNPROTECTED),
        "status exits 8 while a configured link is not protected"
    );
    // The kernel runs nothing there.
    let link = lab.receiver.ip(&["-j", "link", "show", "tx0"]).unwrap();
    assert!(!link.contains("\"xdp\""), "{link}");
    // The daemon looks at the links twice a second and retries what failed: after a few
    // rounds (no event to poll for: what is checked is that nothing more is logged), the
    // refusal is still in the log once.
    std::thread::sleep(Duration::from_millis(1500));
    let log = d.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("tx0") && l.contains("ARPHRD 803"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    drop(d);
    // Named, it stops the start in one line.
    let err = Daemon::start(&lab, &["--iface", "tx0"])
        .err()
        .expect("a named link that cannot be protected stops the start");
    let err = format!("{err:#}");
    assert!(err.contains("ARPHRD 803"), "{err}");
}

/// The kernel's words for a bridge (no `ndo_bpf`): what `dev_xdp_attach` puts in the extended
/// ack when native XDP is asked of a driver that has none.
const NO_NATIVE: &str = "Underlying driver does not support XDP in native mode";

/// A Linux bridge in the receiver namespace, up: bridges have no native XDP.
fn bridge(lab: &Lab, name: &str) {
    lab.receiver
        .ip(&["link", "add", name, "type", "bridge"])
        .unwrap();
    lab.receiver.ip(&["link", "set", name, "up"]).unwrap();
}

/// Native mode refused: the start fails naming the kernel's reason and what to do.
#[test]
fn native_mode_refused_names_the_kernels_reason_and_what_to_do() {
    require_root();
    let lab = Lab::new().unwrap();
    bridge(&lab, "brn0");
    let err = Daemon::start(&lab, &["--iface", "brn0", "--xdp-mode", "native"])
        .err()
        .expect("native mode on a bridge stops the start");
    let err = format!("{err:#}");
    assert!(err.contains(NO_NATIVE), "{err}");
    assert!(err.contains("xdp_mode = \"skb\""), "{err}");
    let link = lab.receiver.ip(&["-j", "link", "show", "brn0"]).unwrap();
    assert!(
        !link.contains("\"xdp\""),
        "the probe left nothing attached: {link}"
    );
}

/// In `auto`, the fallback to skb mode is logged with the kernel's reason, and `status` shows it
/// beside the mode.
#[test]
fn auto_falls_back_to_skb_and_status_says_why_native_was_refused() {
    require_root();
    let lab = Lab::new().unwrap();
    bridge(&lab, "bra0");
    let d = Daemon::start(&lab, &["--iface", "bra0"]).unwrap();
    let row = status_of(&d, "bra0");
    assert_eq!(row["state"], "protected", "{row}");
    assert_eq!(row["mode"], "skb", "{row}");
    let refused = row["native_refused"].as_str().unwrap_or_default();
    assert!(refused.contains(NO_NATIVE), "{row}");
    let text = ok(&d.cli(&["status"]));
    let line = text
        .lines()
        .find(|l| l.starts_with("bra0"))
        .unwrap_or_else(|| panic!("bra0 not in status: {text}"));
    assert!(
        line.contains(&format!(
            "skb (native refused: the kernel says \"{NO_NATIVE}\""
        )),
        "{line}"
    );
    // The veth beside it runs natively and says nothing of a refusal.
    let veth = status_of(&d, enforcer_tests::RECEIVER_IF);
    assert_eq!(veth["mode"], "native", "{veth}");
    assert!(veth.get("native_refused").is_none(), "{veth}");
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.contains("bra0") && l.contains(NO_NATIVE) && l.contains("skb")),
        "{log}"
    );
}

/// The ids of the XDP programs the daemon holds open (`/proc/PID/fdinfo`: type 6 is XDP).
fn xdp_programs_held(d: &Daemon) -> std::collections::BTreeSet<u32> {
    let pid = d.pid().expect("the daemon runs");
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter(|info| info.lines().any(|l| l == "prog_type:\t6"))
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:\t"))
                .and_then(|id| id.parse().ok())
        })
        .collect()
}

#[test]
fn the_raw_ip_program_is_loaded_when_a_raw_ip_link_first_appears_and_it_is_protected() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &["--iface", TUN]).unwrap();
    let at_start = xdp_programs_held(&d);
    assert_eq!(
        at_start.len(),
        1,
        "XDP programs the daemon holds while only Ethernet links exist: {at_start:?} (the raw-IP one is verified when a link needs it)"
    );
    let tun = tun_link(&lab, TUN, None);
    // Protected as the status says it: the link runs a program the daemon counts as its own.
    wait_for(
        "the tun link to be protected",
        Duration::from_secs(10),
        || Ok((status_of(&d, TUN)["state"] == "protected").then_some(())),
    )
    .unwrap();
    let now = xdp_programs_held(&d);
    assert_eq!(
        now.len(),
        2,
        "XDP programs after the tun link appeared: {now:?}"
    );
    assert!(
        now.is_superset(&at_start),
        "the Ethernet program stays: {at_start:?} -> {now:?}"
    );
    ok(&d.cli(&["block", BLOCKED_V4]));
    let v4 = listener(&lab, TUN_LOCAL_V4);
    assert_eq!(
        through_tun(&tun, &v4, BLOCKED_V4, INNOCENT_V4),
        (0, 50),
        "IPv4 over {TUN} (blocked, innocent delivered)"
    );
    assert_eq!(
        status_of(&d, enforcer_tests::RECEIVER_IF)["state"],
        "protected"
    );
    // Attached once: the dumps taken while its program was being verified saw no program
    // there, and must not read as one detached behind the daemon's back.
    let attaches: Vec<_> = d
        .audit_events()
        .into_iter()
        .filter(|e| e["action"] == "interface_protected" && e["interface"] == TUN)
        .map(|e| e["detail"].clone())
        .collect();
    assert_eq!(
        attaches.len(),
        1,
        "attached {} times: {attaches:?}",
        attaches.len()
    );
}
