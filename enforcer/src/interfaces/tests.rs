use super::*;
use crate::{
    datapath::{LinkType, Programs},
    netlink::XdpState,
};

const OURS: u32 = 42;
const PROGRAMS: Programs = Programs {
    ethernet: OURS,
    raw_ip: OURS + 1,
};

fn link(index: u32, name: &str, prog: Option<u32>) -> LinkState {
    LinkState {
        index,
        name: name.to_owned(),
        loopback: name == "lo",
        xdp: XdpState {
            prog_id: prog,
            mode: None,
        },
        link_type: LinkType(1),
    }
}

fn specs(s: &[&str]) -> Vec<InterfaceSpec> {
    s.iter().map(|s| s.parse().unwrap()).collect()
}

fn attach(iface: &str, why: Why) -> Step {
    Step::Attach {
        iface: iface.into(),
        why,
    }
}

#[test]
fn star_matches_any_run_and_question_mark_one_character() {
    let p = |s: &str| s.parse::<InterfaceSpec>().unwrap();
    assert_eq!(p("eth0"), InterfaceSpec::Name("eth0".into()));
    assert_eq!(p("eth*"), InterfaceSpec::Pattern("eth*".into()));
    for (pattern, name, hit) in [
        ("eth*", "eth0", true),
        ("eth*", "eth", true),
        ("eth*", "eth0.100", true),
        ("eth*", "veth0", false),
        ("bond0.*", "bond0.100", true),
        ("bond0.*", "bond0", false),
        ("bond0.*", "bond01", false),
        ("eth?", "eth1", true),
        ("eth?", "eth10", false),
        ("eth?", "eth", false),
        ("*0", "eth0", true),
        ("e*h*0", "eth0", true),
        ("e*h*0", "eth01", false),
        ("*", "anything", true),
        ("v?p*x", "vapppx", true),
    ] {
        assert_eq!(p(pattern).matches(name, false), hit, "{pattern} vs {name}");
    }
}

#[test]
fn the_loopback_matches_only_by_name() {
    let star: InterfaceSpec = "*".parse().unwrap();
    assert!(!star.matches("lo", true));
    assert!(!"l?".parse::<InterfaceSpec>().unwrap().matches("lo", true));
    assert!("lo".parse::<InterfaceSpec>().unwrap().matches("lo", true));
}

#[test]
fn bad_names_and_patterns_are_refused_with_what_is_allowed() {
    for bad in ["", ".", "..", "eth 0", "eth/0", "eth:0", "a\tb"] {
        let e = bad.parse::<InterfaceSpec>().unwrap_err();
        assert!(matches!(e, SpecError::Invalid(_)), "{bad:?}: {e}");
        assert!(e.to_string().contains("1 to 15 characters"), "{e}");
    }
    assert!(matches!(
        "abcdefghijklmnop".parse::<InterfaceSpec>(),
        Err(SpecError::TooLong(_))
    ));
    assert!(matches!(
        "abcdefghijklmnop*".parse::<InterfaceSpec>(),
        Err(SpecError::TooLong(_))
    ));
    assert!(
        "abcdefghijklmno*".parse::<InterfaceSpec>().is_ok(),
        "`*` may match nothing"
    );
}

#[test]
fn named_interfaces_wait_until_they_appear_and_are_gone_when_deleted() {
    let mut i = Interfaces::new(specs(&["eth0", "eth1"]));
    let links = [link(1, "lo", None), link(2, "eth0", None)];
    assert_eq!(i.missing_names(&links).collect::<Vec<_>>(), ["eth1"]);
    assert_eq!(i.plan(&links, PROGRAMS), [attach("eth0", Why::Appeared)]);
    i.attached("eth0", 2);
    assert_eq!(
        i.tracked()
            .map(|(n, _, s)| (n, s.label()))
            .collect::<Vec<_>>(),
        [("eth0", "protected"), ("eth1", "waiting")]
    );
    // The next dump shows our program: nothing to do.
    assert_eq!(i.plan(&[link(2, "eth0", Some(OURS))], PROGRAMS), []);
    // Deleted: released, listed as gone; still gone on the next dump.
    assert_eq!(
        i.plan(&[], PROGRAMS),
        [Step::Release {
            iface: "eth0".into(),
            was: "protected",
            listed: true
        }]
    );
    assert_eq!(i.plan(&[], PROGRAMS), []);
    assert_eq!(i.protected().count(), 0);
    // Back with a new index.
    assert_eq!(
        i.plan(&[link(7, "eth0", None), link(8, "eth1", None)], PROGRAMS),
        [
            attach("eth0", Why::Reappeared),
            attach("eth1", Why::Appeared)
        ]
    );
}

#[test]
fn a_program_detached_behind_our_back_is_attached_again() {
    let mut i = Interfaces::new(specs(&["eth0"]));
    i.plan(&[link(2, "eth0", None)], PROGRAMS);
    i.attached("eth0", 2);
    assert_eq!(
        i.plan(&[link(2, "eth0", None)], PROGRAMS),
        [attach("eth0", Why::DetachedBehindOurBack)]
    );
    // Someone else's program in its place is not ours either.
    assert_eq!(
        i.plan(&[link(2, "eth0", Some(7))], PROGRAMS),
        [attach("eth0", Why::DetachedBehindOurBack)]
    );
}

#[test]
fn our_program_found_at_start_is_confirmed_and_a_new_index_is_a_reappearance() {
    let mut i = Interfaces::new(specs(&["eth0"]));
    assert_eq!(
        i.plan(&[link(2, "eth0", Some(OURS))], PROGRAMS),
        [Step::Confirmed {
            iface: "eth0".into(),
            ifindex: 2
        }]
    );
    // Deleted and re-created between two dumps (events lost): a new index without our program.
    assert_eq!(
        i.plan(&[link(9, "eth0", None)], PROGRAMS),
        [attach("eth0", Why::Reappeared)]
    );
}

#[test]
fn failed_attaches_are_retried_and_logged_once_per_distinct_error() {
    let mut i = Interfaces::new(specs(&["eth0"]));
    i.plan(&[link(2, "eth0", None)], PROGRAMS);
    assert!(i.failed("eth0", 2, "busy".into()));
    assert!(!i.failed("eth0", 2, "busy".into()));
    assert_eq!(i.tracked().next().unwrap().2.label(), "unprotected");
    assert_eq!(
        i.plan(&[link(2, "eth0", None)], PROGRAMS),
        [attach("eth0", Why::Retry)]
    );
    assert!(i.failed("eth0", 2, "other".into()));
}

#[test]
fn patterns_follow_creation_renames_and_deletion_and_a_name_wins_over_a_pattern() {
    let mut i = Interfaces::new(specs(&["vlan*", "vlan7"]));
    assert_eq!(i.idle_patterns().collect::<Vec<_>>(), ["vlan*"]);
    let steps = i.plan(
        &[
            link(1, "lo", None),
            link(3, "vlan5", None),
            link(4, "vlan7", None),
            link(5, "eth0", None),
        ],
        PROGRAMS,
    );
    assert_eq!(
        steps,
        [
            attach("vlan5", Why::Appeared),
            attach("vlan7", Why::Appeared)
        ]
    );
    i.attached("vlan5", 3);
    i.attached("vlan7", 4);
    let origins: Vec<_> = i.tracked().map(|(n, o, _)| (n, o.clone())).collect();
    assert_eq!(
        origins,
        [
            ("vlan5", Origin::Pattern("vlan*".into())),
            ("vlan7", Origin::Named)
        ]
    );
    assert_eq!(i.idle_patterns().count(), 0);
    // vlan5 renamed away: released and forgotten; eth0 renamed to match: attached.
    let steps = i.plan(
        &[
            link(3, "wan", Some(OURS)),
            link(4, "vlan7", Some(OURS)),
            link(5, "vlan9", None),
        ],
        PROGRAMS,
    );
    assert_eq!(
        steps,
        [
            Step::Release {
                iface: "vlan5".into(),
                was: "protected",
                listed: false
            },
            attach("vlan9", Why::Appeared)
        ]
    );
    assert!(i.tracked().all(|(n, _, _)| n != "vlan5"));
    // The named one is listed as gone when deleted; the pattern then waits again.
    i.plan(&[], PROGRAMS);
    assert_eq!(
        i.tracked()
            .map(|(n, _, s)| (n, s.label()))
            .collect::<Vec<_>>(),
        [("vlan7", "gone")]
    );
    assert_eq!(i.idle_patterns().collect::<Vec<_>>(), ["vlan*"]);
}
