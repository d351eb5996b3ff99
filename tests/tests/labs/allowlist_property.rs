//! Property: whatever the allowlist and whatever blocks are asked (any family, any prefix length,
//! forced or not), no allowlisted address is ever dropped, and every block the policy accepted
//! drops its addresses that are not allowlisted. Checked on the real XDP program with
//! `BPF_PROG_TEST_RUN`, after the blocks went through the real policy.
//!
//! Each allowlisted address is protected either by the policy (it refused, or held for
//! approval, every block over the address) or by the kernel (a block over it was accepted, and
//! the data path's allowlist check let it pass). Each case reports which, and the run must see
//! both, and must see accepted blocks drop: a policy that refuses everything, or a data path that
//! never drops, fails it.

use std::{
    cell::{Cell, RefCell},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::programs::{TestRun as _, TestRunOptions};
use enforcer::{
    Target,
    block::{Mode, Source},
    datapath::Datapath,
    policy::{AllowOrigin, Allowlist, Ask, Decision, Policy, PolicyConfig},
};
use enforcer_common::BlockValue;
use enforcer_tests::{LoadedDatapath, frame, require_root};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::{
    prelude::*,
    test_runner::{TestCaseError, TestRunner},
};

const XDP_DROP: u32 = 1;

fn net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<u32>(), 0u8..=32)
            .prop_map(|(a, l)| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), l).unwrap().trunc())),
        (any::<u128>(), 0u8..=128)
            .prop_map(|(a, l)| IpNet::V6(Ipv6Net::new(Ipv6Addr::from(a), l).unwrap().trunc())),
    ]
}

/// Addresses inside a prefix: its first and last, and some in between.
fn samples(net: &IpNet, seeds: &[u128]) -> Vec<IpAddr> {
    let mut out = vec![net.network(), net.broadcast()];
    for s in seeds {
        out.push(match net {
            IpNet::V4(n) => {
                let host = (*s as u32) & !u32::from(n.netmask());
                IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | host))
            }
            IpNet::V6(n) => {
                let host = s & !u128::from(n.netmask());
                IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | host))
            }
        });
    }
    out
}

/// Who kept the allowlisted addresses of one case reachable, and what the accepted blocks did.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    /// Allowlisted addresses under an accepted, enforced block: the kernel let them pass.
    kernel: usize,
    /// Allowlisted addresses that some block asked for, but the policy refused or held every
    /// such block (or accepted it only in shadow mode).
    policy: usize,
    /// Allowlisted addresses no block asked for.
    unasked: usize,
    /// Addresses of accepted, enforced blocks, outside the allowlist, that were dropped.
    dropped: usize,
    /// Blocks the policy accepted (enforced).
    accepted: usize,
    /// Blocks the policy refused or held for approval.
    refused: usize,
}

impl Tally {
    fn add(&mut self, o: &Self) {
        self.kernel += o.kernel;
        self.policy += o.policy;
        self.unasked += o.unasked;
        self.dropped += o.dropped;
        self.accepted += o.accepted;
        self.refused += o.refused;
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} blocks accepted, {} refused; allowlisted addresses protected by the kernel: {}, by the policy: {}, \
             under no block: {}; addresses of accepted blocks dropped: {}",
            self.accepted, self.refused, self.kernel, self.policy, self.unasked, self.dropped
        )
    }
}

#[test]
fn no_allowlisted_address_is_ever_dropped_and_accepted_blocks_drop_the_rest() {
    require_root();
    // One program and one set of maps for every case (emptied between cases); dropped, with
    // its pins, when the test ends.
    let dp = RefCell::new(LoadedDatapath::small().unwrap());
    let strategy = (
        prop::collection::vec(net(), 1..6),
        prop::collection::vec((net(), any::<bool>(), any::<bool>()), 0..8),
        // Blocks built around allowlisted prefixes: wider ones (covering them) and narrower
        // ones (inside them), which is where a mistake would show.
        prop::collection::vec(
            (
                any::<prop::sample::Index>(),
                0u8..=128,
                any::<bool>(),
                any::<bool>(),
            ),
            1..16,
        ),
        prop::collection::vec(any::<u128>(), 4),
    );
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    });
    let total = Cell::new(Tally::default());
    let case = Cell::new(0usize);
    let result = runner.run(&strategy, |(allow, random_blocks, related, seeds)| {
        let mut loaded = dp.borrow_mut();
        let dp = &mut loaded.dp;
        let tally = check(dp, &allow, &random_blocks, &related, &seeds)?;
        case.set(case.get() + 1);
        eprintln!("case {}: {tally}", case.get());
        let mut t = total.get();
        t.add(&tally);
        total.set(t);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let total = total.get();
    eprintln!("all cases: {total}");
    // Without these the property would hold vacuously.
    assert!(
        total.kernel > 0,
        "no allowlisted address was ever under an accepted block: {total}"
    );
    assert!(
        total.policy > 0,
        "the policy never refused a block over an allowlisted address: {total}"
    );
    assert!(
        total.dropped > 0,
        "no accepted block was ever seen dropping: {total}"
    );
}

/// Property: allowlist entries added after blocks exist (no policy stood in the way of those
/// blocks) protect their addresses at once, whatever the blocks were: the data path only looks
/// the allowlist up for blocks flagged as overlapping it, and adding an allowlist entry must flag
/// every block it overlaps before it returns.
#[test]
fn an_allowlist_added_after_the_blocks_wins_at_once() {
    require_root();
    let dp = RefCell::new(LoadedDatapath::small().unwrap());
    let strategy = (
        prop::collection::vec(net(), 1..6),
        prop::collection::vec(net(), 0..8),
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..=128), 1..16),
        prop::collection::vec(any::<u128>(), 4),
    );
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    });
    let result = runner.run(&strategy, |(allow, random_blocks, related, seeds)| {
        let mut loaded = dp.borrow_mut();
        let dp = &mut loaded.dp;
        check_allow_after_blocks(dp, &allow, &random_blocks, &related, &seeds)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn check_allow_after_blocks(
    dp: &mut Datapath,
    allow: &[IpNet],
    random_blocks: &[IpNet],
    related: &[(prop::sample::Index, u8)],
    seeds: &[u128],
) -> Result<(), TestCaseError> {
    for (t, _) in dp.maps().blocks().unwrap() {
        dp.maps_mut().remove_block(&t).unwrap();
    }
    for (t, _) in dp.maps().allows().unwrap() {
        dp.maps_mut().remove_allow(&t).unwrap();
    }
    // Blocks first: around the future allowlist (wider, narrower, equal) and random ones.
    let mut blocks = random_blocks.to_vec();
    for (i, len) in related {
        blocks.push(match allow[i.index(allow.len())] {
            IpNet::V4(n) => IpNet::V4(Ipv4Net::new(n.network(), len % 33).unwrap().trunc()),
            IpNet::V6(n) => IpNet::V6(Ipv6Net::new(n.network(), *len).unwrap().trunc()),
        });
    }
    for net in &blocks {
        dp.maps_mut()
            .insert_block(
                &Target::new(*net),
                &BlockValue::new(0, enforcer_common::MODE_ENFORCE),
            )
            .unwrap();
    }
    // Then the allowlist.
    for a in allow {
        dp.maps_mut().insert_allow(&Target::new(*a), 0).unwrap();
    }
    for a in allow {
        for addr in samples(a, seeds) {
            let data = frame::udp_from(&[], addr);
            let verdict = dp
                .program()
                .test_run(TestRunOptions {
                    data_in: Some(&data),
                    ..TestRunOptions::default()
                })
                .unwrap()
                .return_value;
            prop_assert_ne!(
                verdict,
                XDP_DROP,
                "allowlisted {} (in {}, added after the blocks) was dropped",
                addr,
                a
            );
        }
    }
    Ok(())
}

/// Decides every block with the real policy, writes the accepted ones to the kernel maps as the
/// daemon would, then checks the verdicts of allowlisted addresses and of accepted blocks.
fn check(
    dp: &mut Datapath,
    allow: &[IpNet],
    random_blocks: &[(IpNet, bool, bool)],
    related: &[(prop::sample::Index, u8, bool, bool)],
    seeds: &[u128],
) -> Result<Tally, TestCaseError> {
    // Start from empty maps.
    for (t, _) in dp.maps().blocks().unwrap() {
        dp.maps_mut().remove_block(&t).unwrap();
    }
    for (t, _) in dp.maps().allows().unwrap() {
        dp.maps_mut().remove_allow(&t).unwrap();
    }
    let mut allowlist = Allowlist::default();
    for a in allow {
        let t = Target::new(*a);
        allowlist.insert(t, AllowOrigin::Config);
        dp.maps_mut().insert_allow(&t, 0).unwrap();
    }
    let mut policy = Policy::new(PolicyConfig::default(), Duration::from_secs(600));
    let cli = Source::cli();
    let wazuh: Source = "wazuh".parse().unwrap();
    let mut blocks = random_blocks.to_vec();
    for (i, len, force, from_cli) in related {
        let base = allow[i.index(allow.len())];
        let net = match base {
            IpNet::V4(n) => IpNet::V4(Ipv4Net::new(n.network(), len % 33).unwrap().trunc()),
            IpNet::V6(n) => IpNet::V6(Ipv6Net::new(n.network(), *len).unwrap().trunc()),
        };
        blocks.push((net, *force, *from_cli));
    }
    let mut tally = Tally::default();
    // Enforced blocks in the kernel, and every block asked for (whatever the policy said).
    let mut enforced = Vec::new();
    for (net, force, from_cli) in &blocks {
        let target = Target::new(*net);
        let ask = Ask {
            target,
            source: if *from_cli { &cli } else { &wazuh },
            ttl: None,
            permanent: false,
            shadow: false,
            force: *force,
            approved: false,
            existing: false,
            at: enforcer::time::WallMs::EPOCH,
        };
        match policy.decide(&ask, &allowlist, 0).0 {
            Decision::Apply { mode, .. } => {
                dp.maps_mut()
                    .insert_block(&target, &BlockValue::new(0, mode.to_kernel()))
                    .unwrap();
                if mode == Mode::Enforce {
                    enforced.push(*net);
                    tally.accepted += 1;
                }
            }
            Decision::Pending { .. } | Decision::Refuse { .. } => tally.refused += 1,
        }
    }
    let verdict = |dp: &mut Datapath, addr: IpAddr| {
        let data = frame::udp_from(&[], addr);
        dp.program()
            .test_run(TestRunOptions {
                data_in: Some(&data),
                ..TestRunOptions::default()
            })
            .unwrap()
            .return_value
    };
    for a in allow {
        for addr in samples(a, seeds) {
            let under_enforced = enforced.iter().find(|b| b.contains(&addr));
            let asked = blocks.iter().any(|(b, _, _)| b.contains(&addr));
            match (under_enforced, asked) {
                (Some(_), _) => tally.kernel += 1,
                (None, true) => tally.policy += 1,
                (None, false) => tally.unasked += 1,
            }
            prop_assert_ne!(
                verdict(dp, addr),
                XDP_DROP,
                "allowlisted {} (in {}) was dropped; accepted block over it: {:?}",
                addr,
                a,
                under_enforced
            );
        }
    }
    for b in &enforced {
        for addr in samples(b, seeds) {
            if allow.iter().any(|a| a.contains(&addr)) {
                continue;
            }
            prop_assert_eq!(
                verdict(dp, addr),
                XDP_DROP,
                "{} is inside {}, which the policy accepted, and on no allowlist, yet it passed",
                addr,
                b
            );
            tally.dropped += 1;
        }
    }
    Ok(tally)
}

/// How a block in [`nested_blocks_get_the_verdict_of_their_live_enforced_prefixes`] is written.
fn kind_of(k: u8) -> (&'static str, u64, u32) {
    let past = enforcer::datapath::clock::boottime_ns() - 1_000_000_000;
    match k % 3 {
        0 => ("enforced", 0, enforcer_common::MODE_ENFORCE),
        1 => ("shadow", 0, enforcer_common::MODE_SHADOW),
        _ => ("expired", past, enforcer_common::MODE_ENFORCE),
    }
}

/// Property: with blocks nested in each other and around the allowlist (wider, narrower, equal,
/// any length, each enforced, shadow or expired), an allowlisted address is never dropped, and
/// any other address is dropped exactly when a live enforced block covers it: however many
/// shadow or expired blocks lie between it and that block, and whatever other lengths share its
/// /16 (or /32).
#[test]
fn nested_blocks_get_the_verdict_of_their_live_enforced_prefixes() {
    require_root();
    let dp = RefCell::new(LoadedDatapath::small().unwrap());
    let related =
        || prop::collection::vec((any::<prop::sample::Index>(), 0u8..=128, 0u8..3), 1..16);
    let strategy = (
        prop::collection::vec(net(), 1..4),
        prop::collection::vec((net(), 0u8..3), 0..6),
        related(),
        related(),
        prop::collection::vec(any::<u128>(), 4),
    );
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    });
    let dropped = Cell::new(0usize);
    let result = runner.run(&strategy, |(allow, random, around_allow, nested, seeds)| {
        let mut loaded = dp.borrow_mut();
        let dp = &mut loaded.dp;
        let mut blocks: Vec<(IpNet, u8)> = random;
        blocks.extend(derived(&allow, &around_allow));
        let bases: Vec<IpNet> = blocks.iter().map(|(n, _)| *n).collect();
        blocks.extend(derived(&bases, &nested));
        let n = check_nested(dp, &allow, &blocks, &seeds)?;
        dropped.set(dropped.get() + n);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(dropped.get() > 0, "no address was ever dropped");
}

/// Prefixes of other lengths on the networks of `bases` (none when `bases` is empty).
fn derived(bases: &[IpNet], picks: &[(prop::sample::Index, u8, u8)]) -> Vec<(IpNet, u8)> {
    if bases.is_empty() {
        return Vec::new();
    }
    picks
        .iter()
        .map(|(i, len, kind)| {
            let net = match bases[i.index(bases.len())] {
                IpNet::V4(n) => IpNet::V4(Ipv4Net::new(n.network(), len % 33).unwrap().trunc()),
                IpNet::V6(n) => IpNet::V6(Ipv6Net::new(n.network(), *len).unwrap().trunc()),
            };
            (net, *kind)
        })
        .collect()
}

/// Writes the allowlist and the blocks (a later one replaces an earlier one for the same
/// target), then checks every sample address of each against the model. Returns how many
/// addresses were dropped.
fn check_nested(
    dp: &mut Datapath,
    allow: &[IpNet],
    blocks: &[(IpNet, u8)],
    seeds: &[u128],
) -> Result<usize, TestCaseError> {
    for (t, _) in dp.maps().blocks().unwrap() {
        dp.maps_mut().remove_block(&t).unwrap();
    }
    for (t, _) in dp.maps().allows().unwrap() {
        dp.maps_mut().remove_allow(&t).unwrap();
    }
    for a in allow {
        dp.maps_mut().insert_allow(&Target::new(*a), 0).unwrap();
    }
    let mut model = std::collections::HashMap::new();
    for (net, kind) in blocks {
        let (_, expires, mode) = kind_of(*kind);
        let target = Target::new(*net);
        dp.maps_mut()
            .insert_block(&target, &BlockValue::new(expires, mode))
            .unwrap();
        model.insert(*net, kind % 3);
    }
    let mut dropped = 0;
    let nets = allow.iter().chain(model.keys());
    for addr in nets.flat_map(|n| samples(n, seeds)) {
        let data = frame::udp_from(&[], addr);
        let verdict = dp
            .program()
            .test_run(TestRunOptions {
                data_in: Some(&data),
                ..TestRunOptions::default()
            })
            .unwrap()
            .return_value;
        // The data path judges a v4-mapped source (`::ffff:a.b.c.d`) as its IPv4 address
        // (docs/architecture.md): IPv6 prefixes over `::ffff:0:0/96` do not cover it.
        let judged = match addr {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        let allowlisted = allow.iter().any(|a| a.contains(&judged));
        let enforced = model.iter().find(|(n, k)| **k == 0 && n.contains(&judged));
        let covering: Vec<String> = model
            .iter()
            .filter(|(n, _)| n.contains(&judged))
            .map(|(n, k)| format!("{n} {}", kind_of(*k).0))
            .collect();
        let want_drop = !allowlisted && enforced.is_some();
        prop_assert_eq!(
            verdict == XDP_DROP,
            want_drop,
            "{} (allowlisted: {}) under {:?}: verdict {}",
            addr,
            allowlisted,
            covering,
            verdict
        );
        dropped += usize::from(want_drop);
    }
    Ok(dropped)
}
