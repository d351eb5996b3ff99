//! Text every trigger and the configuration carry: targets ([`enforcer::Target`]), human
//! durations ([`enforcer::duration::HumanDuration`], from the CLI, `--ttl` in Wazuh's
//! extra_args and the configuration), Go durations from the CrowdSec LAPI, source names and
//! interface names or patterns.
//!
//! Properties: nothing panics; every accepted value prints in a form that parses back to the
//! same value (and printing that is a fixed point); a target without `/` is one address and
//! contains itself; a duration is positive and its short form is a prefix of the full one; a
//! Go duration with a `-` in front is the negation.
#![no_main]

use enforcer::{
    Target,
    block::Source,
    crowdsec::go_duration::parse_millis,
    duration::{HumanDuration, format_secs, format_secs_short},
    interfaces::InterfaceSpec,
};
use libfuzzer_sys::fuzz_target;

fn target(s: &str) {
    let Ok(t) = s.parse::<Target>() else { return };
    let text = t.to_string();
    assert_eq!(
        text.parse::<Target>(),
        Ok(t),
        "`{s}` prints as `{text}`, which parses to something else"
    );
    let json = serde_json::to_string(&t).unwrap();
    assert_eq!(serde_json::from_str::<Target>(&json).unwrap(), t);
    if !s.contains('/') {
        assert!(
            t.is_host(),
            "`{s}` has no prefix length but is not one address"
        );
    }
    assert!(t.contains(t.addr()));
    let _ = t.not_a_block_target();
}

fn duration(s: &str) {
    let Ok(d) = s.parse::<HumanDuration>() else {
        return;
    };
    assert!(d.0.as_secs() > 0, "`{s}` parses to zero");
    let text = d.to_string();
    assert_eq!(
        text.parse::<HumanDuration>(),
        Ok(d),
        "`{s}` prints as `{text}`, which parses to something else"
    );
    let short = format_secs_short(d.0.as_secs());
    assert!(format_secs(d.0.as_secs()).starts_with(&short));
}

fn go_duration(s: &str) {
    let Ok(ms) = parse_millis(s) else { return };
    if !s.starts_with(['-', '+']) {
        assert_eq!(
            parse_millis(&format!("-{s}")),
            Ok(-ms),
            "`-{s}` is not the negation of `{s}`"
        );
    }
}

fn names(s: &str) {
    if let Ok(source) = s.parse::<Source>() {
        assert_eq!(source.as_str(), s);
        assert!((1..=32).contains(&s.len()));
    }
    if let Ok(spec) = s.parse::<InterfaceSpec>() {
        assert_eq!(spec.as_str(), s);
        assert_eq!(spec.to_string().parse::<InterfaceSpec>(), Ok(spec.clone()));
        let _ = spec.matches(s, false);
    }
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    target(&s);
    duration(&s);
    go_duration(&s);
    names(&s);
});
