//! Batched map calls: an import and its expiry write the kernel maps with one
//! `BPF_MAP_UPDATE_BATCH` / `BPF_MAP_DELETE_BATCH` per hash map and round, not one system call
//! per entry; a full map still refuses exactly the entries that do not fit, and every entry
//! before and after them is written. Reading every block (the drops by origin) takes a few
//! `BPF_MAP_LOOKUP_BATCH` calls, not two calls per entry.

use std::time::Duration;

use enforcer::{
    Target,
    datapath::{Capacity, Datapath, DatapathOptions, MapsError},
};
use enforcer_common::{BlockValue, MODE_ENFORCE};
use enforcer_tests::{
    Lab, RECEIVER_V4, SENDER_V4, SENDER_V6,
    daemon::{Daemon, ok},
    require_root, wait_for,
};

/// `n` IPv6 documentation addresses, one a line, and the lab's blocked sources.
fn targets(n: u32) -> String {
    let mut text: String = (0..n).map(|i| format!("2001:db8:bb::{i:x}\n")).collect();
    text.push_str(&format!("{}\n{}\n", SENDER_V4[1], SENDER_V6[1]));
    text
}

#[test]
fn an_import_and_its_expiry_write_the_kernel_in_batches() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets.txt");
    let n = 3000;
    std::fs::write(&file, targets(n)).unwrap();
    let added = d.trace_bpf(|| {
        ok(&d.cli(&["import", file.to_str().unwrap(), "--ttl", "15s"]));
    });
    assert_eq!(d.list(&[]).len(), n as usize + 2);
    assert_eq!(lab.passes(SENDER_V4[1]), 0);
    assert_eq!(lab.passes(SENDER_V6[1]), 0);
    let reaped = d.trace_bpf(|| {
        wait_for("the reaper", Duration::from_secs(60), || {
            Ok(d.list(&[]).is_empty().then_some(()))
        })
        .unwrap();
    });
    // A few single writes are the clock offset's; per-entry writes would be thousands.
    let batched = |t: &enforcer_tests::daemon::BpfTrace, op: &str| {
        t.count(&format!("BPF_MAP_{op}_ELEM")) < 50 && t.count(&format!("BPF_MAP_{op}_BATCH")) >= 1
    };
    assert!(
        batched(&added, "UPDATE") && batched(&reaped, "DELETE"),
        "import: {added:?}; expiry: {reaped:?}"
    );
    assert_eq!(lab.passes(SENDER_V4[1]), 10);
    assert_eq!(lab.passes(SENDER_V6[1]), 10);
}

#[test]
fn counting_drops_by_origin_reads_every_block_in_a_few_batched_calls() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets.txt");
    // More than one lookup call holds (4,096 entries), so the walk resumes where it stopped.
    let n = 9000;
    std::fs::write(&file, targets(n)).unwrap();
    ok(&d.cli(&["import", file.to_str().unwrap(), "--ttl", "10m"]));
    assert_eq!(lab.passes(SENDER_V4[1]), 0);
    assert_eq!(lab.passes(SENDER_V6[1]), 0);
    let mut stats = None;
    // `stats` counts the drops by origin over every kernel block first.
    let read = d.trace_bpf(|| stats = Some(d.stats()));
    let cli_drops = stats
        .unwrap()
        .dropped_by_origin
        .into_iter()
        .find(|o| o.origin == "cli")
        .map_or(0, |o| o.packets);
    assert_eq!(
        cli_drops, 20,
        "both senders' drops were found among {n} blocks"
    );
    assert!(
        read.count("BPF_MAP_GET_NEXT_KEY") < 50 && read.count("BPF_MAP_LOOKUP_BATCH") >= 3,
        "reading {n} blocks: {read:?}"
    );
}

/// `n` addresses of 198.51.100.0/24 and 203.0.113.0/24 from `from` on.
fn hosts(from: u32, n: u32) -> Vec<Target> {
    (from..from + n)
        .map(|i| {
            let net = if i < 256 { "198.51.100" } else { "203.0.113" };
            format!("{net}.{}", i % 256).parse().unwrap()
        })
        .collect()
}

#[test]
fn a_batch_into_a_full_map_refuses_exactly_the_entries_that_do_not_fit() {
    require_root();
    let lab = Lab::new().unwrap();
    // The daemon makes the maps (64 addresses) and attaches the program, which stays attached,
    // with the maps, once it stops.
    let mut d = Daemon::start(&lab, &["--max-addresses", "64"]).unwrap();
    d.stop().unwrap();
    let mut dp = Datapath::open(&DatapathOptions {
        bpffs_dir: lab.pins.path().to_owned(),
        // The lab daemon's prefix capacity (tests/src/daemon.rs).
        capacity: Capacity {
            addresses: 64,
            prefixes: 4096,
            ..Capacity::default()
        },
        count_block_hits: true,
        ..Default::default()
    })
    .unwrap();
    let maps = dp.maps_mut();
    let value = BlockValue::new(0, MODE_ENFORCE);
    let items = |targets: &[Target]| -> Vec<(Target, BlockValue)> {
        targets.iter().map(|t| (*t, value)).collect()
    };
    // 61 addresses (a sender's among them) and a prefix, which goes to its own map.
    let mut first = hosts(0, 60);
    first.push(SENDER_V4[1].parse().unwrap());
    first.push("203.0.113.128/25".parse().unwrap());
    assert!(maps.insert_blocks(&items(&first)).is_empty());
    // 10 more into the 3 free slots: a sender's first (it fits), another sender's last; then
    // a new deadline for an entry already there, which needs no room.
    let mut second: Vec<Target> = vec![SENDER_V4[0].parse().unwrap()];
    second.extend(hosts(60, 8));
    second.push(SENDER_V4[2].parse().unwrap());
    let mut writes = items(&second);
    let later = BlockValue::new(1 << 62, MODE_ENFORCE);
    writes.push((first[0], later));
    let failed = maps.insert_blocks(&writes);
    let refused: Vec<Target> = failed.iter().map(|(t, _)| *t).collect();
    assert_eq!(refused, second[3..], "exactly those 7 did not fit");
    assert_eq!(
        maps.get_block(&first[0]).unwrap().map(|v| v.expires_ns),
        Some(1 << 62),
        "the entry after them was written"
    );
    for (target, e) in &failed {
        assert!(
            matches!(e, MapsError::Full { capacity: 64, .. }),
            "{target}: {e:?}"
        );
    }
    let in_kernel: Vec<Target> = maps.blocks().unwrap().into_iter().map(|(t, _)| t).collect();
    for t in first.iter().chain(&second[..3]) {
        assert!(in_kernel.contains(t), "{t} is in the kernel");
    }
    assert_eq!(in_kernel.len(), 65, "64 addresses and the prefix");
    assert_eq!(lab.passes_to(SENDER_V4[1], RECEIVER_V4), 0, "written first");
    assert_eq!(lab.passes_to(SENDER_V4[0], RECEIVER_V4), 0, "fitted");
    assert_eq!(lab.passes_to(SENDER_V4[2], RECEIVER_V4), 10, "did not fit");
    // Replacing an entry needs no room: a full map still takes it.
    assert!(maps.insert_blocks(&items(&first[..5])).is_empty());
    // A batched removal goes past absent entries and removes the rest.
    let gone = [
        SENDER_V4[1].parse().unwrap(),
        SENDER_V4[2].parse().unwrap(),
        SENDER_V4[0].parse().unwrap(),
        "203.0.113.128/25".parse().unwrap(),
    ];
    assert!(maps.remove_blocks(&gone).is_empty());
    let left = maps.blocks().unwrap();
    assert_eq!(left.len(), 62);
    assert!(left.iter().all(|(t, _)| !gone.contains(t)));
    assert_eq!(lab.passes_to(SENDER_V4[1], RECEIVER_V4), 10);
    assert_eq!(lab.passes_to(SENDER_V4[0], RECEIVER_V4), 10);
}
