//! Port-scoped blocks (issue 22) beside whole-address ones: what a scoped hit, a pass on
//! another port, and a legitimate packet while scoped blocks are loaded cost, against an address
//! hit and a plain miss of the same TCP frame shape, in the same rounds; and an address hit whose
//! port is ephemeral, which pays the reply check (a socket lookup that finds none).

use std::net::IpAddr;

use anyhow::Result;
use enforcer::Target;
use enforcer_common::{
    BlockValue, MODE_ENFORCE,
    scope::{PortRange, ScopeValue, Scopes},
};
use enforcer_tests::frame::{self, proto};

use super::{Case, CaseId, Family, Fixtures, Loaded, Packet, Probe, Settings, measure};

/// The scoped source of each family (outside every fixture block).
fn scoped_source(family: Family) -> IpAddr {
    match family {
        Family::Ipv4 => "198.51.100.77".parse().expect("valid"),
        Family::Ipv6 => "2001:db8:7::77".parse().expect("valid"),
    }
}

fn tcp_22() -> Scopes {
    let mut ports = ScopeValue {
        count: 1,
        ..ScopeValue::default()
    };
    ports.ranges[0] = PortRange { lo: 22, hi: 22 };
    Scopes {
        tcp: Some(ports),
        ..Scopes::default()
    }
}

/// A TCP frame from `src` to `port`.
fn tcp_frame(src: IpAddr, port: u16) -> Vec<u8> {
    let l4 = frame::transport(proto::TCP, port);
    match src {
        IpAddr::V4(s) => frame::ipv4(
            s,
            "203.0.113.1".parse().expect("valid"),
            proto::TCP,
            0,
            false,
            &l4,
        ),
        IpAddr::V6(s) => frame::ipv6(
            s,
            "2001:db8:ffff::1".parse().expect("valid"),
            proto::TCP,
            &l4,
        ),
    }
}

/// Two programs with the fixtures' whole-address blocks; the second also holds a tcp/22 block
/// for each family's scoped source.
pub(super) fn run(settings: &Settings) -> Result<Vec<Case>> {
    let mut loaded = [Loaded::new(true)?, Loaded::new(true)?];
    let mut probes = Vec::new();
    for family in [Family::Ipv4, Family::Ipv6] {
        let fixtures = Fixtures::of(family);
        for l in &mut loaded {
            fixtures.install(&mut l.dp)?;
        }
        let scoped = scoped_source(family);
        let value = BlockValue {
            scopes: Some(tcp_22()),
            ..BlockValue::new(0, MODE_ENFORCE)
        };
        loaded[1]
            .dp
            .maps_mut()
            .insert_block(&Target::host(scoped), &value)?;
        for (packet, src, port, program) in [
            (Packet::Miss, fixtures.source(Packet::Miss), 22, 0),
            (
                Packet::HitAddress,
                fixtures.source(Packet::HitAddress),
                22,
                0,
            ),
            (
                Packet::HitReplyChecked,
                fixtures.source(Packet::HitAddress),
                40000,
                0,
            ),
            (
                Packet::MissScopesLoaded,
                fixtures.source(Packet::Miss),
                22,
                1,
            ),
            (Packet::ScopedHit, scoped, 22, 1),
            (Packet::ScopedOtherPort, scoped, 80, 1),
        ] {
            let id = CaseId::plain(family, packet);
            probes.push(Probe {
                id,
                frame: tcp_frame(src, port),
                program,
            });
        }
    }
    eprintln!("port-scoped blocks: measuring");
    measure(&mut loaded, &probes, settings)
}
