//! Shares of the kernel maps: no source other than `cli` may fill a map for everyone else.
//! With the real daemon and CLI, a map of 100 addresses, the default shares (each source at most
//! half of a map, the last 5% kept for `cli` and forced blocks).

use enforcer_tests::{
    Lab, SENDER_V4,
    daemon::{Daemon, ok},
    require_root,
};
use serde_json::Value;

/// Imports `198.51.100.{start..start + n}` (`n` at most 255) for `source`; the CLI's JSON summary.
fn import(d: &Daemon, source: &str, start: u32, n: u32) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets.txt");
    let text: String = (start..start + n)
        .map(|i| format!("198.51.100.{i}\n"))
        .collect();
    std::fs::write(&file, text).unwrap();
    let out = d.cli(&[
        "import",
        file.to_str().unwrap(),
        "--source",
        source,
        "--ttl",
        "1h",
        "--json",
    ]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "import's JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A `wazuh` flood takes its share and no more; a second source gets what is left outside the
/// reserve; then `cli` blocks still succeed, up to the map's real end.
#[test]
fn a_flood_from_one_source_leaves_room_for_others_and_for_cli() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &["--max-addresses", "100"]).unwrap();
    let wazuh = import(&d, "wazuh", 1, 100);
    assert_eq!(wazuh["applied"], 50, "wazuh holds half of the map: {wazuh}");
    let failure = &wazuh["failed"][0]["error"];
    assert_eq!(failure["code"], "map_full", "{wazuh}");
    let message = failure["message"].as_str().unwrap();
    assert!(
        message.contains("source `wazuh`") && message.contains("share"),
        "{message}"
    );
    let feed = import(&d, "feed", 101, 100);
    assert_eq!(
        feed["applied"], 45,
        "the rest outside the 5-entry reserve: {feed}"
    );
    for (i, addr) in SENDER_V4.iter().enumerate() {
        ok(&d.cli(&["block", addr, "--ttl", "1h"]));
        assert_eq!(lab.passes(addr), 0, "cli block {i} is enforced");
    }
    let status = d.status();
    let used = status
        .maps
        .iter()
        .find(|m| m.map == "BLOCK_V4")
        .map(|m| m.used)
        .unwrap();
    assert_eq!(used, 98, "{status:?}");
}
