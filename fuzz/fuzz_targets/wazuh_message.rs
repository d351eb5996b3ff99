//! The Wazuh active-response hook's input: execd's message line ([`parse_message`]), the
//! address and reason taken from its alert, `<extra_args>`, and execd's check_keys answer
//! ([`parse_reply`]).
//!
//! Properties: nothing panics; a parsed message written back in execd's shape parses to the
//! same message; the address is one canonical IP address whose text parses to it, and the
//! check_keys line carries exactly that text; reason fields stay within what the daemon
//! stores; `<extra_args>` can set the TTL but never the socket or the state directory.
#![no_main]

use std::path::PathBuf;

use enforcer::{
    Target,
    hooks::wazuh::{
        Command, Defaults, InputError, check_keys_line, find_address, parse_message, parse_options,
        parse_reply, reason_from_alert,
    },
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fn check_address(alert: &Value) {
    match find_address(alert) {
        Ok((field, text, target)) => {
            assert!(
                target.is_host(),
                "{field} `{text}` gave the prefix {target}"
            );
            assert_eq!(text.parse::<Target>(), Ok(target));
            let line: Value =
                serde_json::from_str(&check_keys_line("firewall-drop", &target)).unwrap();
            assert_eq!(
                line["parameters"]["keys"][0],
                Value::String(target.to_string())
            );
            assert!(
                parse_reply(line.to_string().as_bytes()).is_err(),
                "check_keys taken as an answer"
            );
        }
        Err(InputError::NoAddress | InputError::BadAddress { .. }) => {}
        Err(e) => panic!("find_address failed with {e:?}"),
    }
}

fn check_reason(alert: &Value) {
    let reason = reason_from_alert(alert);
    let within = |field: &Option<String>, max: usize| {
        field
            .as_ref()
            .is_none_or(|s| !s.is_empty() && s.len() <= max)
    };
    assert!(
        within(&reason.rule_id, 128)
            && within(&reason.alert_id, 128)
            && within(&reason.agent_id, 128)
    );
    assert!(within(&reason.rule_description, 512) && within(&reason.agent_name, 256));
    assert!(reason.text.is_some() || reason.rule_id.is_some() || reason.rule_description.is_some());
}

fn check_options(args: &[String]) {
    let defaults = Defaults {
        socket: PathBuf::from("/run/enforcer/enforcer.sock"),
        state_dir: PathBuf::from("/var/lib/enforcer"),
    };
    if let Ok(options) = parse_options(args, &defaults) {
        assert_eq!(
            (options.socket, options.state_dir),
            (defaults.socket, defaults.state_dir),
            "{args:?}"
        );
        assert!(options.ttl.is_none_or(|t| !t.is_zero()));
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = parse_reply(data);
    let message = match parse_message(data) {
        Ok(m) => m,
        Err(
            InputError::NotJson(_) | InputError::Missing { .. } | InputError::UnknownCommand(_),
        ) => return,
        Err(e) => panic!("parse_message failed with {e:?}"),
    };
    let command = match message.command {
        Command::Add => "add",
        Command::Delete => "delete",
    };
    let line = json!({
        "version": 1,
        "origin": {"name": "", "module": "wazuh-execd"},
        "command": command,
        "parameters": {"extra_args": message.extra_args, "alert": message.alert},
    });
    assert_eq!(
        parse_message(line.to_string().as_bytes()),
        Ok(message.clone()),
        "{line}"
    );
    check_address(&message.alert);
    check_reason(&message.alert);
    check_options(&message.extra_args);
});
