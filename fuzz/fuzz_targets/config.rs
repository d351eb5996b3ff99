//! The daemon's configuration file ([`enforcer::config::Config::parse`]), fed any text.
//!
//! Properties: it never panics; an error names the file and a line and column inside the text,
//! with a message; an accepted configuration builds the policy and the access model the daemon
//! builds from it, and its durations and interface patterns print in a form that parses back.
#![no_main]

use std::time::Duration;

use enforcer::{
    access::AccessPolicy, config::Config, duration::HumanDuration, interfaces::InterfaceSpec,
    policy::Policy,
};
use libfuzzer_sys::fuzz_target;

const NAME: &str = "fuzz.toml";

fn accepted(config: Config) {
    let ttl = config.default_ttl;
    assert!(ttl.0 > Duration::ZERO);
    assert_eq!(ttl.to_string().parse::<HumanDuration>(), Ok(ttl));
    for spec in &config.interfaces {
        assert_eq!(spec.to_string().parse::<InterfaceSpec>().as_ref(), Ok(spec));
    }
    assert!(
        config.capacity.addresses > 0 && config.capacity.prefixes > 0 && config.capacity.allow > 0
    );
    let _ = AccessPolicy::new(config.access.clone(), Some(0));
    let _ = Policy::new(config.policy, ttl.0);
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, NAME) {
        Ok(config) => accepted(config),
        Err(e) => {
            let lines = text.split('\n').count();
            assert_eq!(e.path, NAME);
            assert!(
                (1..=lines).contains(&e.line),
                "line {} of {lines}: {e}",
                e.line
            );
            let line = text.split('\n').nth(e.line - 1).unwrap_or("");
            assert!(
                (1..=line.len() + 1).contains(&e.column),
                "column {} of {}: {e}",
                e.column,
                line.len()
            );
            assert!(!e.message.is_empty());
            assert!(e.to_string().starts_with("fuzz.toml:"));
        }
    }
});
