use super::*;

/// Out of descriptors, a request id is still 128 random bits, not the time and pid (which
/// another caller could predict and send first). Runs in a child process (the descriptors
/// are the process's, and other tests run beside it).
#[test]
fn a_request_id_made_without_a_free_descriptor_is_still_random() {
    const CHILD: &str = "ENFORCER_REQUEST_ID_EMFILE";
    if std::env::var_os(CHILD).is_none() {
        crate::test_support::run_in_child(
            "protocol::tests::a_request_id_made_without_a_free_descriptor_is_still_random",
            CHILD,
            "1".as_ref(),
        );
        return;
    }
    let mut taken = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        taken.push(f);
    }
    let ids = [RequestId::generate(), RequestId::generate()];
    drop(taken);
    for id in &ids {
        assert!(
            id.as_str().len() == 32 && id.as_str().bytes().all(|b| b.is_ascii_hexdigit()),
            "a predictable id: {}",
            id.as_str()
        );
    }
    assert_ne!(ids[0], ids[1]);
}

#[test]
fn request_lines_are_checked_as_json_then_version_then_fields() {
    let err = |line: &[u8]| parse_request(line).unwrap_err();
    assert_eq!(err(b"{\"v\":1,").code, ErrorCode::InvalidRequest);
    assert!(err(b"{\"v\":1,").message.starts_with("not JSON"));
    let e = err(br#"{"v":2,"op":"nonsense"}"#);
    assert_eq!(
        e.code,
        ErrorCode::UnsupportedVersion,
        "the version is checked first: {e:?}"
    );
    assert!(err(br#"{"op":"ping"}"#).message.contains("`v`"));
    let e = err(br#"{"v":1,"op":"block","source":"cli"}"#);
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    assert!(e.message.contains("target"), "{e:?}");
    assert!(matches!(
        parse_request(br#"{"v":1,"op":"ping","new_field":true}"#),
        Ok((Request::Ping, None))
    ));
    assert!(
        err(br#"{"v":1,"op":"ping","request_id":7}"#)
            .message
            .contains("request_id")
    );
}

#[test]
fn a_block_carries_its_scope_and_a_bad_scope_is_one_line_naming_the_fix() {
    let (request, _) = parse_request(
        br#"{"v":1,"op":"block","target":"192.0.2.7","source":"cli","proto":"tcp","ports":"22,2222"}"#,
    )
    .unwrap();
    let Request::Block(b) = request else {
        panic!("not a block: {request:?}")
    };
    assert_eq!(b.scope.to_string(), "tcp/22,2222");
    let line = serde_json::to_string(&Request::Block(b)).unwrap();
    assert!(
        line.contains(r#""proto":"tcp","ports":"22,2222""#),
        "{line}"
    );
    let (plain, _) =
        parse_request(br#"{"v":1,"op":"block","target":"192.0.2.7","source":"cli"}"#).unwrap();
    let Request::Block(b) = plain else { panic!() };
    assert!(b.scope.is_whole());
    for (bad, says) in [
        (r#""proto":"tcp","ports":"0""#, "port 0"),
        (r#""proto":"tcp","ports":"70000""#, "out of range"),
        (r#""proto":"tcp","ports":"2000-1000""#, "reversed"),
        (r#""proto":"sctp""#, "unknown protocol"),
        (r#""proto":"icmp","ports":"22""#, "tcp and udp only"),
    ] {
        let line = format!(r#"{{"v":1,"op":"block","target":"192.0.2.7","source":"cli",{bad}}}"#);
        let e = parse_request(line.as_bytes()).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest, "{bad}");
        assert!(e.message.contains(says), "{bad}: {}", e.message);
        assert!(!e.message.contains('\n'), "{}", e.message);
    }
}

#[test]
fn the_daemons_internal_requests_cannot_be_sent_over_the_socket() {
    for op in ["links_changed", "refresh_host", "host_changed"] {
        let line = format!("{{\"v\":1,\"op\":\"{op}\"}}");
        assert!(
            serde_json::from_str::<Envelope<Request>>(&line).is_err(),
            "`{op}` was accepted from the wire"
        );
    }
    let ping = serde_json::from_str::<Envelope<Request>>("{\"v\":1,\"op\":\"ping\"}").unwrap();
    assert!(matches!(ping.body, Request::Ping));
}

#[test]
fn request_ids_are_short_plain_tokens_and_generated_ones_differ() {
    for ok in [
        "a",
        "wazuh-7f3a9c1e",
        "spool:00000001764262800000-0000004242-0.json",
        &"x".repeat(MAX_REQUEST_ID),
    ] {
        assert_eq!(ok.parse::<RequestId>().unwrap().as_str(), ok);
    }
    assert_eq!("".parse::<RequestId>(), Err(RequestIdError::Length(0)));
    assert_eq!(
        "x".repeat(MAX_REQUEST_ID + 1).parse::<RequestId>(),
        Err(RequestIdError::Length(MAX_REQUEST_ID + 1))
    );
    assert_eq!(
        "no spaces".parse::<RequestId>(),
        Err(RequestIdError::Character(' '))
    );
    assert_eq!(
        "quote\"".parse::<RequestId>(),
        Err(RequestIdError::Character('"'))
    );
    let (a, b) = (RequestId::generate(), RequestId::generate());
    assert_ne!(a, b);
    assert_eq!(a.as_str().len(), 32);
    // On the wire: an optional field beside `v`; a bad one does not parse.
    let line = serde_json::to_string(&Envelope {
        v: 1,
        id: Some(a.clone()),
        body: Request::Ping,
    })
    .unwrap();
    let back: Envelope<Request> = serde_json::from_str(&line).unwrap();
    assert_eq!(back.id, Some(a));
    assert!(line.contains("\"request_id\""), "{line}");
    assert!(
        serde_json::from_str::<Envelope<Request>>(
            "{\"v\":1,\"request_id\":\"a b\",\"op\":\"ping\"}"
        )
        .is_err()
    );
    // `id` stays the pending id of approve.
    let approve: Envelope<Request> =
        serde_json::from_str("{\"v\":1,\"request_id\":\"r1\",\"op\":\"approve\",\"id\":7}")
            .unwrap();
    assert!(matches!(approve.body, Request::Approve { id: 7 }));
    assert_eq!(approve.id.unwrap().as_str(), "r1");
}
