//! The `/metrics` endpoint's request parser ([`enforcer::metrics::http::route`]), fed any
//! bytes as the endpoint reads them (at most `MAX_REQUEST` bytes, invalid UTF-8 replaced).
//!
//! Properties: it never panics; only a request line of exactly three fields whose method is
//! `GET`, whose version starts with `HTTP/1.` and whose path (before any `?`) is `/metrics`
//! routes to the metrics; `/` to the index; another `GET` path is not found; another method is
//! refused as such; anything else is a bad request. The headers never change the route.
#![no_main]

use enforcer::metrics::http::{MAX_REQUEST, Route, route};
use libfuzzer_sys::fuzz_target;

/// The route the request line calls for, written out independently of the parser.
fn expected(line: &str) -> Route {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 3 || !fields[2].starts_with("HTTP/1.") {
        return Route::Bad;
    }
    if fields[0] != "GET" {
        return Route::BadMethod;
    }
    match fields[1].split('?').next() {
        Some("/metrics") => Route::Metrics,
        Some("/") => Route::Index,
        _ => Route::NotFound,
    }
}

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_REQUEST)];
    let head = String::from_utf8_lossy(data);
    let got = route(&head);
    let line = head.lines().next().unwrap_or("");
    assert_eq!(got, expected(line), "request line {line:?}");
    // The headers do not matter: the same request line with other headers routes the same.
    let alone = format!("{line}\r\nX-Fuzz: 1\r\n\r\n");
    assert_eq!(route(&alone), got, "headers changed the route of {line:?}");
});
