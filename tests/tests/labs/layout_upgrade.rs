//! An upgrade from the previous release, whose map layout (5: prefixes in LPM tries) this build
//! converts, while the blocked sources flood the protected interface.
//!
//! The previous release is built from git ([`enforcer_tests::previous`]): its daemon creates
//! the blocks through its own CLI and its own program counts their drops. Then it is stopped
//! and this build's daemon started on the same state and pins, with every blocked source and
//! two unblocked ones sending throughout. Every datagram of the blocked sources that reached
//! the receiver is counted (there must be none), and the blocks and counters must come over.

use std::{
    collections::BTreeMap,
    net::UdpSocket,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use enforcer::datapath::PinLayout;
use enforcer_tests::{
    Lab, RECEIVER_V4, RECEIVER_V6, SENDER_IF, SENDER_V4, SENDER_V6,
    daemon::{Daemon, ok},
    previous, require_root, wait_for,
};

/// The blocks, and the source that sends into each: an IPv4 and an IPv6 address, an IPv4 and
/// an IPv6 prefix (none of the four covers another's source).
const BLOCKS: [(&str, &str); 4] = [
    ("192.0.2.1", SENDER_V4[0]),
    ("192.0.2.8/30", SENDER_V4[1]),
    ("2001:db8::1", SENDER_V6[0]),
    ("2001:db8::10/124", SENDER_V6[1]),
];
/// Unblocked sources sending beside them: the receiver is delivering throughout.
const CONTROLS: [&str; 2] = ["192.0.2.20", "2001:db8::20"];
/// Datagrams each blocked source sends under the previous release before the upgrade: far
/// more than this build's program counts during the lab (about 1,000 a second per source for
/// a few seconds), so counters that did not come over cannot reach them.
const BEFORE: u32 = 50_000;
/// The pause between two rounds of the flood (one datagram from every source per round).
const ROUND_GAP: Duration = Duration::from_millis(1);

#[test]
fn an_upgrade_from_the_previous_release_under_a_flood_passes_no_blocked_packet_and_keeps_blocks_and_counters()
 {
    require_root();
    let old_bin = previous::enforcer_bin().unwrap();
    // This build's too, before anything runs (it is checked to be newer than its sources).
    enforcer_tests::daemon::enforcer_bin();
    let lab = Lab::new().unwrap();
    for control in CONTROLS {
        let mut args = vec!["addr", "add", control, "dev", SENDER_IF];
        if control.contains(':') {
            args.push("nodad");
        }
        lab.sender.ip(&args).unwrap();
    }
    let mut d = Daemon::start_build(&old_bin, &lab, &[]).unwrap();
    for (target, _) in BLOCKS {
        ok(&d.cli(&["block", target, "--ttl", "1h"]));
    }
    for (target, source) in BLOCKS {
        let rx = lab.udp_listener(receiver_of(source)).unwrap();
        let passed = lab
            .exchange(&lab.udp_sender(source).unwrap(), &rx, BEFORE)
            .unwrap();
        assert_eq!(passed, 0, "the previous release drops {target}'s source");
    }
    let old = blocks(&d);
    for (target, _) in BLOCKS {
        assert!(
            old[target].packets >= u64::from(BEFORE),
            "the previous release counted {target}: {:?}",
            old[target]
        );
    }

    let flood = Flood::new(&lab);
    let (at_stop, new_counting) = flood.during(|| {
        let at_stop = blocks(&d);
        d.stop().unwrap();
        d.use_this_build();
        d.spawn().unwrap();
        // This build's program counts the flood: the blocks are in its maps and it is attached.
        let first = blocks(&d);
        let counting = wait_for(
            "this build to count the flood",
            Duration::from_secs(20),
            || {
                let now = blocks(&d);
                Ok(BLOCKS
                    .iter()
                    .all(|(t, _)| now[*t].packets > first[*t].packets)
                    .then_some(now))
            },
        );
        (at_stop, counting)
    });
    new_counting.unwrap();
    println!("{flood:?}");
    assert_eq!(
        flood.blocked_arrived(),
        0,
        "blocked datagrams reached the receiver during the upgrade: {flood:?}"
    );
    for control in CONTROLS {
        assert!(
            flood.arrived(control) > 0,
            "the unblocked source {control} got nothing through: the receiver did not receive, \
             so no count of blocked datagrams means anything: {flood:?}"
        );
    }

    let layout = PinLayout::new(lab.pins.path());
    assert!(layout.maps_dir().exists(), "this build's maps are pinned");
    assert!(
        !lab.pins.path().join("maps-v5").exists(),
        "the previous release's pins are gone"
    );
    let new = blocks(&d);
    for (target, source) in BLOCKS {
        let (was, is) = (&at_stop[target], &new[target]);
        assert_eq!(
            (is.mode.as_str(), is.expires_ms),
            (was.mode.as_str(), was.expires_ms),
            "{target} came over as it was"
        );
        // Every drop counted before the previous daemon stopped came over, and none was
        // counted twice: no more than the source ever sent.
        let sent = u64::from(BEFORE) + flood.sent(source);
        assert!(
            (was.packets..=sent).contains(&is.packets),
            "{target}: {} packets counted by the previous release when it stopped, {} now, \
             {sent} sent",
            was.packets,
            is.packets
        );
        assert_eq!(
            lab.passes(source),
            0,
            "{target} is in force after the upgrade"
        );
    }
    for control in CONTROLS {
        assert_eq!(
            lab.passes(control),
            10,
            "{control} passes after the upgrade"
        );
    }
    // The program was replaced on its link (no moment without one) and the maps converted.
    let log = d.plain_log();
    assert!(log.contains("replaced the program in place"), "{log}");
    assert!(log.contains("from the maps of an older layout"), "{log}");
    assert!(log.contains("copied=4"), "{log}");
}

/// The receiver's address of `source`'s family.
fn receiver_of(source: &str) -> &'static str {
    if source.contains(':') {
        RECEIVER_V6
    } else {
        RECEIVER_V4
    }
}

/// One block as `enforcer list --json` shows it (read as JSON values, as the previous
/// release's CLI prints them).
#[derive(Debug)]
struct Listed {
    mode: String,
    expires_ms: Option<u64>,
    packets: u64,
}

/// Every block the daemon lists, by target.
fn blocks(d: &Daemon) -> BTreeMap<String, Listed> {
    let list = d.json(&["list"]);
    let entries = list.as_array().expect("a list");
    assert_eq!(entries.len(), BLOCKS.len(), "{list}");
    entries
        .iter()
        .map(|e| {
            let listed = Listed {
                mode: e["mode"].as_str().expect("a mode").to_owned(),
                expires_ms: e["expires_ms"].as_u64(),
                packets: e["packets"].as_u64().expect("a packet count"),
            };
            (e["target"].as_str().expect("a target").to_owned(), listed)
        })
        .collect()
}

/// Datagrams from every blocked and control source, one each per round, each to a socket of
/// its own on the receiver (so a burst of one cannot crowd out another's), counted on both
/// ends.
struct Flood<'a> {
    lab: &'a Lab,
    /// (source, its sender socket, the receiver's socket for it).
    pairs: Vec<(&'static str, UdpSocket, UdpSocket)>,
    sent: Vec<AtomicU64>,
    arrived: Vec<AtomicU64>,
}

impl<'a> Flood<'a> {
    fn new(lab: &'a Lab) -> Self {
        let sources = BLOCKS.iter().map(|(_, s)| *s).chain(CONTROLS);
        let pairs: Vec<_> = sources
            .map(|s| {
                let rx = lab.udp_listener(receiver_of(s)).unwrap();
                (s, lab.udp_sender(s).unwrap(), rx)
            })
            .collect();
        let counters = || (0..pairs.len()).map(|_| AtomicU64::new(0)).collect();
        Self {
            lab,
            sent: counters(),
            arrived: counters(),
            pairs,
        }
    }

    /// Runs `f` with the flood going before it starts and until it returns, then waits until
    /// every datagram sent is either in or dropped (a control exchange on the same link).
    fn during<T>(&self, f: impl FnOnce() -> T) -> T {
        let (sending, receiving) = (AtomicBool::new(true), AtomicBool::new(true));
        std::thread::scope(|s| {
            for (i, (_, _, rx)) in self.pairs.iter().enumerate() {
                let receiving = &receiving;
                s.spawn(move || {
                    let mut buf = [0u8; 64];
                    while receiving.load(Ordering::SeqCst) {
                        if rx.recv(&mut buf).is_ok() {
                            self.arrived[i].fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
            s.spawn(|| {
                while sending.load(Ordering::SeqCst) {
                    for (i, (_, tx, rx)) in self.pairs.iter().enumerate() {
                        if tx.send_to(b"flood", rx.local_addr().unwrap()).is_ok() {
                            self.sent[i].fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    std::thread::sleep(ROUND_GAP);
                }
            });
            // Started: a round or more out before `f` begins.
            wait_for("the flood to start", Duration::from_secs(10), || {
                Ok((self.sent[0].load(Ordering::SeqCst) > 0).then_some(()))
            })
            .unwrap();
            // Stops every thread when `f` or a check panics, so that the scope can end.
            let _stop = Stop([&sending, &receiving]);
            let out = f();
            sending.store(false, Ordering::SeqCst);
            // What the flood sent before this exchange's control frame is in by its end.
            assert_eq!(self.lab.passes(CONTROLS[0]), 10, "the link delivers");
            out
        })
    }

    fn index(&self, source: &str) -> usize {
        self.pairs.iter().position(|(s, ..)| *s == source).unwrap()
    }

    fn sent(&self, source: &str) -> u64 {
        self.sent[self.index(source)].load(Ordering::SeqCst)
    }

    fn arrived(&self, source: &str) -> u64 {
        self.arrived[self.index(source)].load(Ordering::SeqCst)
    }

    fn blocked_arrived(&self) -> u64 {
        BLOCKS.iter().map(|(_, s)| self.arrived(s)).sum()
    }
}

/// Clears its flags when dropped.
struct Stop<'a>([&'a AtomicBool; 2]);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        for flag in self.0 {
            flag.store(false, Ordering::SeqCst);
        }
    }
}

impl std::fmt::Debug for Flood<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (source, ..) in &self.pairs {
            write!(
                f,
                "{source}: {} sent, {} arrived; ",
                self.sent(source),
                self.arrived(source)
            )?;
        }
        Ok(())
    }
}
