//! Property: whatever the allowlist and whatever blocks are asked (any family, any prefix length,
//! forced or not), no allowlisted address is ever dropped. Checked on the real XDP program with
//! `BPF_PROG_TEST_RUN`, after the blocks went through the real policy.

use std::{
    cell::RefCell,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::programs::{TestRun as _, TestRunOptions};
use enforcer::{
    Target,
    block::Source,
    datapath::{Capacity, Datapath, DatapathOptions},
    policy::{AllowOrigin, Allowlist, Ask, Decision, Policy, PolicyConfig},
};
use enforcer_common::{BlockValue, MODE_ENFORCE};
use enforcer_tests::{PinDir, frame, require_root};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::{
    prelude::*,
    test_runner::{TestCaseError, TestRunner},
};

const XDP_DROP: u32 = 1;

fn net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<u32>(), 0u8..=32).prop_map(|(a, l)| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), l).unwrap().trunc())),
        (any::<u128>(), 0u8..=128).prop_map(|(a, l)| IpNet::V6(Ipv6Net::new(Ipv6Addr::from(a), l).unwrap().trunc())),
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

#[test]
fn no_allowlisted_address_is_ever_dropped() {
    require_root();
    // One program and one set of maps for every case (emptied between cases); dropped, with
    // its pins, when the test ends.
    let pins = PinDir::new().unwrap();
    let dp = Datapath::open(&DatapathOptions {
        bpffs_dir: pins.path().to_owned(),
        capacity: Capacity { addresses: 1024, prefixes: 1024, allow: 64 },
        count_block_hits: true,
    })
    .unwrap();
    let dp = RefCell::new(dp);
    let strategy = (
        prop::collection::vec(net(), 1..6),
        prop::collection::vec((net(), any::<bool>(), any::<bool>()), 0..8),
        // Blocks built around allowlisted prefixes: wider ones (covering them) and narrower
        // ones (inside them), which is where a mistake would show.
        prop::collection::vec((any::<prop::sample::Index>(), 0u8..=128, any::<bool>(), any::<bool>()), 1..16),
        prop::collection::vec(any::<u128>(), 4),
    );
    let mut runner = TestRunner::new(ProptestConfig { cases: 96, ..ProptestConfig::default() });
    let result = runner.run(&strategy, |(allow, random_blocks, related, seeds)| {
        let mut dp = dp.borrow_mut();
        check(&mut dp, &allow, &random_blocks, &related, &seeds)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn check(
    dp: &mut Datapath,
    allow: &[IpNet],
    random_blocks: &[(IpNet, bool, bool)],
    related: &[(prop::sample::Index, u8, bool, bool)],
    seeds: &[u128],
) -> Result<(), TestCaseError> {
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
        };
        if let (Decision::Apply { .. }, _) = policy.decide(&ask, &allowlist, 0, 0) {
            dp.maps_mut().insert_block(&target, &BlockValue::new(0, MODE_ENFORCE)).unwrap();
        }
    }
    for a in allow {
        for addr in samples(a, seeds) {
            let data = frame::udp_from(&[], addr);
            let verdict = dp
                .program()
                .test_run(TestRunOptions { data_in: Some(&data), ..TestRunOptions::default() })
                .unwrap()
                .return_value;
            prop_assert_ne!(verdict, XDP_DROP, "allowlisted {} (in {}) was dropped", addr, a);
        }
    }
    Ok(())
}
