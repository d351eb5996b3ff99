//! The control socket's request parser ([`enforcer::protocol::parse_request`]), fed any bytes.
//!
//! Properties: it never panics; a failure is `invalid_request` or `unsupported_version` with a
//! message; an accepted request, serialised as a client sends it, parses back to the same
//! request and request id (its serialisation is a fixed point). The daemon's internal asks are
//! not `Request`s at all (daemon::engine::Ask), so no line can carry one.
#![no_main]

use enforcer::protocol::{
    Envelope, ErrorCode, PROTOCOL_VERSION, Request, RequestId, parse_request,
};
use libfuzzer_sys::fuzz_target;

fn line(request: &Request, id: &Option<RequestId>) -> Vec<u8> {
    serde_json::to_vec(&Envelope {
        v: PROTOCOL_VERSION,
        id: id.clone(),
        body: request.clone(),
    })
    .expect("every request that parses serialises")
}

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Ok((request, id)) => {
            let op = request.op();
            let first = line(&request, &id);
            let (again, again_id) = parse_request(&first).unwrap_or_else(|e| {
                panic!(
                    "`{op}` serialised as {} does not parse back: {e:?}",
                    String::from_utf8_lossy(&first)
                )
            });
            assert_eq!((again.op(), &again_id), (op, &id));
            let second = line(&again, &again_id);
            assert_eq!(
                String::from_utf8_lossy(&first),
                String::from_utf8_lossy(&second),
                "a parsed request does not serialise to a fixed point"
            );
        }
        Err(e) => {
            assert!(
                matches!(
                    e.code,
                    ErrorCode::InvalidRequest | ErrorCode::UnsupportedVersion
                ),
                "parse error with code {:?}",
                e.code
            );
            assert!(!e.message.is_empty(), "parse error without a message");
        }
    }
});
