//! Interfaces that come and go, as the daemon sees them: rtnetlink link events in a namespace.

use std::{sync::mpsc, time::Duration};

use enforcer::netlink::{Link, LinkEvent, LinkWatch};
use enforcer_tests::{Netns, require_root};

/// Collects the watcher's events on a thread, so a missing event fails the test instead of
/// hanging it.
fn events_of(mut watch: LinkWatch) -> mpsc::Receiver<LinkEvent> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(events) = watch.next_events() {
            for e in events {
                if tx.send(e).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

fn next(rx: &mpsc::Receiver<LinkEvent>, what: &str) -> LinkEvent {
    rx.recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("no event within 5 s: expected {what}"))
}

#[test]
fn a_link_created_renamed_and_deleted_is_seen_appearing_renamed_and_gone() {
    require_root();
    let ns = Netns::new("enf-links").unwrap();
    // Each veth's peer lives in another namespace, so only our end shows up here.
    let peers = Netns::new("enf-peers").unwrap();
    let veth = |name: &str| {
        ns.ip(&[
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            "p0",
            "netns",
            peers.name(),
        ])
    };
    let watch = ns.run(LinkWatch::new).unwrap().unwrap();
    assert!(
        watch.links().any(|l| l.name == "lo"),
        "the current links are read at start"
    );
    assert!(!watch.links().any(|l| l.name == "up0"));
    let rx = events_of(watch);

    veth("up0").unwrap();
    let LinkEvent::Appeared(Link { index, name }) = next(&rx, "up0 appearing") else {
        panic!("expected an Appeared event")
    };
    assert_eq!(name, "up0");
    // Flag changes are not link events: bringing it up, then renaming it, gives one rename.
    ns.ip(&["link", "set", "up0", "up"]).unwrap();
    ns.ip(&["link", "set", "up0", "down"]).unwrap();
    ns.ip(&["link", "set", "up0", "name", "wan0"]).unwrap();
    assert_eq!(
        next(&rx, "the rename"),
        LinkEvent::Renamed {
            index,
            from: "up0".into(),
            to: "wan0".into()
        }
    );
    ns.ip(&["link", "del", "wan0"]).unwrap();
    assert_eq!(
        next(&rx, "wan0 gone"),
        LinkEvent::Gone(Link {
            index,
            name: "wan0".into()
        })
    );

    // Re-created with the same name: a new appearance, with a new index.
    veth("wan0").unwrap();
    let LinkEvent::Appeared(again) = next(&rx, "wan0 appearing again") else {
        panic!("expected an Appeared event")
    };
    assert_eq!(again.name, "wan0");
    assert_ne!(again.index, index);
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "no other event"
    );
}
