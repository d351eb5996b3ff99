//! Reads never hold up blocks, and clients cannot make the daemon hold unbounded memory: a
//! `list` or `show` answer is one page at most (the CLI pages through everything), and the
//! request bytes held at once over every connection are bounded. With the real daemon and CLI.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    time::Duration,
};

use enforcer_tests::{
    Lab,
    daemon::{Daemon, ok},
    require_root,
};
use serde_json::Value;

/// One request line on a fresh connection; its answer.
fn ask(d: &Daemon, line: &str) -> Value {
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(line.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap()
}

/// 2,500 blocks: a `list` without a limit (what `enforcer list --json` in a script asked for,
/// and got in one answer built on the engine thread) is one page of 1,000 and says where the
/// next starts; `show 0.0.0.0/0` lists a page and counts the rest; the CLI still lists all.
#[test]
fn list_and_show_answer_one_page_and_the_cli_pages_through_everything() {
    require_root();
    const N: usize = 2500;
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("targets.txt");
    let text: String = (0..N)
        .map(|i| format!("198.51.{}.{}\n", 100 + i / 250, 1 + i % 250))
        .collect();
    std::fs::write(&file, text).unwrap();
    ok(&d.cli(&["import", file.to_str().unwrap(), "--ttl", "1h"]));
    let page = ask(&d, r#"{"v":1,"op":"list"}"#);
    let blocks = page["result"]["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 1000, "one page");
    assert_eq!(
        page["result"]["next"], blocks[999]["target"],
        "the next page starts after the last one shown"
    );
    let big = ask(&d, r#"{"v":1,"op":"list","limit":100000}"#);
    assert_eq!(big["result"]["blocks"].as_array().unwrap().len(), 1000);
    let show = ask(&d, r#"{"v":1,"op":"show","target":"0.0.0.0/0"}"#);
    assert_eq!(show["result"]["blocks"].as_array().unwrap().len(), 1000);
    assert_eq!(show["result"]["more"], N - 1000);
    assert_eq!(d.list(&[]).len(), N, "the CLI pages through every block");
    assert_eq!(d.list(&["--limit", "1500"]).len(), 1500);
}

/// Three connections each send most of a 1 MiB line (without its end): the third would pass the
/// 2 MiB the daemon holds at once and is answered `unavailable`; the others go on, and once
/// they are answered the bytes are free again.
#[test]
fn the_request_bytes_held_over_every_connection_are_bounded() {
    require_root();
    let lab = Lab::new().unwrap();
    let (d, _dir) = Daemon::with_config(
        &lab,
        "[control_socket]\nmax_request_bytes = 1048576\nmax_buffered_bytes = 2097152\n",
    )
    .unwrap();
    let chunk = vec![b' '; 900 * 1024];
    let open = || {
        let s = UnixStream::connect(&d.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    };
    let (mut a, mut b, mut c) = (open(), open(), open());
    a.write_all(&chunk).unwrap();
    b.write_all(&chunk).unwrap();
    // Give the daemon time to read both (it holds them; nothing is answered yet).
    std::thread::sleep(Duration::from_millis(500));
    let _ = c.write_all(&chunk);
    let mut answer = String::new();
    BufReader::new(&c).read_line(&mut answer).unwrap();
    let v: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["error"]["code"], "unavailable", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_buffered_bytes"),
        "{v}"
    );
    // The two held lines end as pings (JSON allows the leading spaces): both answered.
    for s in [&mut a, &mut b] {
        s.write_all(b"{\"v\":1,\"op\":\"ping\"}\n").unwrap();
        let mut answer = String::new();
        BufReader::new(&*s).read_line(&mut answer).unwrap();
        assert!(answer.contains("\"ok\":true"), "{answer}");
    }
    drop((a, b, c));
    let v = ask(&d, r#"{"v":1,"op":"ping"}"#);
    assert_eq!(v["ok"], true, "{v}");
}
