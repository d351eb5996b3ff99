//! An upgrade from the previous map layout (5: prefixes in LPM tries) with traffic flowing.
//!
//! The lab recreates what a layout-5 release leaves behind: its program (the object built from
//! 5f24d60, the last commit of layout 5, kept in `tests/fixtures`) on the interface's pinned
//! link, its maps in `maps-v5` holding the blocks with their counters, and the store. Then this
//! build's daemon starts while blocked sources keep sending.

use std::{
    path::Path,
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, lpm_trie::Key},
    programs::{
        Xdp,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use enforcer::{
    Target,
    datapath::{BlockMaps, PinLayout},
};
use enforcer_common::{BlockEntry, BlockValue, PROGRAM_NAME, map_names};
use enforcer_tests::{
    Lab, RECEIVER_IF, RECEIVER_V4, RECEIVER_V6, SENDER_V4, SENDER_V6,
    daemon::{Daemon, entry, ok},
    require_root,
};
use ipnet::IpNet;

/// The layout-5 XDP object (see the module docs).
const LAYOUT5_OBJECT: &[u8] = include_bytes!("../../fixtures/enforcer-xdp-layout5.o");

/// The blocked sources: an exact address, and an IPv4 and an IPv6 prefix.
const EXACT: &str = SENDER_V4[1];
const PREFIX_V4: &str = "192.0.2.8/30";
const IN_PREFIX_V4: &str = SENDER_V4[2];
const PREFIX_V6: &str = "2001:db8::10/124";
const IN_PREFIX_V6: &str = SENDER_V6[1];

#[test]
fn an_upgrade_from_layout_5_carries_prefixes_and_counters_over_while_blocked_sources_send() {
    require_root();
    let lab = Lab::new().unwrap();
    let mut d = Daemon::start(&lab, &[]).unwrap();
    for target in [EXACT, PREFIX_V4, PREFIX_V6] {
        ok(&d.cli(&["block", target, "--ttl", "1h"]));
    }
    d.stop().unwrap();
    let layout = PinLayout::new(lab.pins.path());
    let old = install_layout5(&lab, &layout);
    assert_eq!(lab.passes_to(EXACT, RECEIVER_V4), 0, "layout 5 enforces");
    assert_eq!(lab.passes_to(IN_PREFIX_V4, RECEIVER_V4), 0);
    assert_eq!(lab.passes_to(IN_PREFIX_V6, RECEIVER_V6), 0);
    drop(old);

    let (passed, rounds) = flood_while(&lab, || d.spawn().unwrap());
    assert_eq!(
        passed, 0,
        "a blocked packet passed during the upgrade ({rounds} rounds)"
    );
    assert!(
        rounds >= 2,
        "the senders kept sending through the upgrade: {rounds} rounds"
    );
    let maps_dir = layout.maps_dir();
    assert!(maps_dir.exists(), "the new layout's maps are pinned");
    assert!(
        !lab.pins.path().join("maps-v5").exists(),
        "the old pins are gone"
    );
    let log = plain(&d.log());
    assert!(log.contains("replaced the program in place"), "{log}");
    assert!(log.contains("from the maps of an older layout"), "{log}");
    assert!(log.contains("copied=3"), "{log}");
    assert_eq!(
        lab.passes_to(IN_PREFIX_V4, RECEIVER_V4),
        0,
        "in force after"
    );
    // Counters: what layout 5 held in each entry and counted in its CPUs' hit slots (the 10
    // datagrams of each check above) came along; the flood adds more.
    let list = d.list(&[]);
    for target in [EXACT, PREFIX_V4, PREFIX_V6] {
        let now = entry(&list, target).packets;
        assert!(
            now >= OLD_COUNT + 10,
            "{target}: {now} packets after the upgrade"
        );
    }
}

/// What each block's entry had counted under layout 5 before the lab's checks.
const OLD_COUNT: u64 = 1000;

/// Layout 5's state for the blocks this build's maps hold: its maps (in `maps-v5`, with each
/// block's counters), its program swapped into the pinned link, this build's maps removed.
fn install_layout5(lab: &Lab, layout: &PinLayout) -> Ebpf {
    let current = layout.maps_dir();
    let blocks = BlockMaps::open_pinned(&current).unwrap().blocks().unwrap();
    assert_eq!(blocks.len(), 3, "{blocks:?}");
    let v5 = lab.pins.path().join("maps-v5");
    std::fs::create_dir(&v5).unwrap();
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&v5)
        .load(LAYOUT5_OBJECT)
        .expect("loading the layout-5 object");
    for (target, value) in &blocks {
        write_v5(&mut ebpf, target, value);
    }
    // Layout 5's prefilter: a set bit only makes its program look in the trie.
    let mut filter: Array<_, u64> =
        Array::try_from(ebpf.map_mut("PREFIX_FILTER").unwrap()).unwrap();
    for i in 0..filter.len() {
        filter.set(i, u64::MAX, 0).unwrap();
    }
    let program: &mut Xdp = ebpf.program_mut(PROGRAM_NAME).unwrap().try_into().unwrap();
    program.load().unwrap();
    let pinned = PinnedLink::from_pin(layout.link_path(RECEIVER_IF)).unwrap();
    let link = XdpLink::try_from(FdLink::from(pinned)).unwrap();
    program.attach_to_link(link).unwrap();
    remove_dir(&current);
    ebpf
}

/// Writes one block into layout 5's maps, its counts in the entry itself.
fn write_v5(ebpf: &mut Ebpf, target: &Target, value: &BlockValue) {
    let entry = BlockEntry {
        expires_ns: value.expires_ns,
        hit_packets: OLD_COUNT + value.hit_packets,
        hit_bytes: value.hit_bytes,
        mode: value.mode as u8,
        prefix_len: target.prefix_len(),
        generation: 1,
        ..BlockEntry::default()
    };
    match (target.net(), target.is_host()) {
        (IpNet::V4(n), true) => {
            let mut m: HashMap<_, [u8; 4], BlockEntry> =
                HashMap::try_from(ebpf.map_mut(map_names::BLOCK_V4).unwrap()).unwrap();
            m.insert(n.addr().octets(), entry, 0).unwrap();
        }
        (IpNet::V4(n), false) => {
            let mut m: LpmTrie<_, [u8; 8], BlockEntry> =
                LpmTrie::try_from(ebpf.map_mut(map_names::BLOCK_NET_V4).unwrap()).unwrap();
            let o = n.network().octets();
            let key = Key::new(
                u32::from(n.prefix_len()),
                [o[0], o[1], o[2], o[3], 0, 0, 0, 0],
            );
            m.insert(&key, entry, 0).unwrap();
        }
        (IpNet::V6(n), _) => {
            let mut m: LpmTrie<_, [u8; 16], BlockEntry> =
                LpmTrie::try_from(ebpf.map_mut(map_names::BLOCK_NET_V6).unwrap()).unwrap();
            let key = Key::new(u32::from(n.prefix_len()), n.network().octets());
            m.insert(&key, entry, 0).unwrap();
        }
    }
}

/// Runs `upgrade` while the blocked sources send 10 datagrams at a time, back to back; returns
/// how many arrived and how many rounds were sent.
fn flood_while(lab: &Lab, upgrade: impl FnOnce()) -> (u32, u32) {
    let stop = AtomicBool::new(false);
    let (passed, rounds) = (AtomicU32::new(0), AtomicU32::new(0));
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut after_stop = 0;
            while after_stop < 2 {
                if stop.load(Ordering::SeqCst) {
                    after_stop += 1;
                }
                let got = lab.passes_to(EXACT, RECEIVER_V4)
                    + lab.passes_to(IN_PREFIX_V4, RECEIVER_V4)
                    + lab.passes_to(IN_PREFIX_V6, RECEIVER_V6);
                passed.fetch_add(got, Ordering::SeqCst);
                rounds.fetch_add(1, Ordering::SeqCst);
            }
        });
        std::thread::sleep(Duration::ZERO);
        upgrade();
        stop.store(true, Ordering::SeqCst);
    });
    (passed.into_inner(), rounds.into_inner())
}

fn remove_dir(dir: &Path) {
    for f in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    std::fs::remove_dir(dir).unwrap();
}

/// The log without its colour escapes (`ESC [ ... m`).
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}
