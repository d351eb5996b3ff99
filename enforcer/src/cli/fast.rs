//! The trigger fast path: `enforcer block` and `enforcer unblock` in the forms the triggers use
//! (fail2ban's action, scripts, one process per block), read without clap.
//!
//! A trigger pays the whole process start for one block, and clap builds the tree of every
//! subcommand and flag before it looks at the first argument: in a release build that, and the
//! allocations and page faults it brings, is about a third of the CLI's own start.
//!
//! The fast path takes only a command line it can read whole: `block` or `unblock`, one
//! target, each of the command's flags at most once (`--flag value` or `--flag=value`), and
//! `--socket` before or after the command. Anything else goes to clap untouched: another
//! command, `--help`, `--`, a short flag, a flag twice or two that conflict, an empty value or one
//! that starts with `-`, a value that does not parse (a bad address, duration or source). So
//! every mistake is reported by clap, as before. What the fast path reads is the [`Cli`] clap
//! would have made (the tests below compare them), and it runs through the same
//! [`super::run`]: the request, the spool, the output and the exit codes are the full parser's,
//! and the daemon checks the caller's grants as for any other request.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    path::PathBuf,
};

use super::{BlockFlags, Cli, Command, ScopeFlags, SpoolFlags, block, unblock};
use crate::block::Source;

/// What a flag takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A value (`--ttl 1h`, `--ttl=1h`).
    Value,
    /// Nothing (`--shadow`).
    Switch,
}

/// The flags each command takes (besides `--socket`, which every command takes).
fn kind(command: &str, flag: &str) -> Option<Kind> {
    use Kind::{Switch, Value};
    let kind = match (command, flag) {
        (_, "socket" | "source" | "proto" | "port" | "state-dir") => Value,
        (_, "spool-if-down" | "json") => Switch,
        ("block", "ttl" | "reason") => Value,
        ("block", "permanent" | "shadow" | "force") => Switch,
        ("unblock", "all") => Switch,
        _ => return None,
    };
    Some(kind)
}

/// The words of a command line, checked: the command, its one target, and each flag's value.
#[derive(Default)]
struct Words<'a> {
    command: Option<&'a str>,
    target: Option<&'a str>,
    values: BTreeMap<&'a str, &'a str>,
    switches: BTreeSet<&'a str>,
}

impl<'a> Words<'a> {
    /// `None` for anything but the simple forms (see the module's documentation).
    fn read(args: &'a [OsString]) -> Option<Self> {
        let mut words = Self::default();
        let mut args = args.iter().map(|a| a.to_str());
        while let Some(arg) = args.next() {
            let arg = arg?;
            let Some(flag) = arg.strip_prefix("--") else {
                words.positional(arg)?;
                continue;
            };
            let (name, inline) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (flag, None),
            };
            // Before the command, only the global --socket.
            let command = words.command.unwrap_or("");
            let kind = if command.is_empty() && name != "socket" {
                None
            } else {
                kind(command, name)
            };
            match (kind?, inline) {
                (Kind::Switch, None) => words.switches.insert(name).then_some(())?,
                (Kind::Switch, Some(_)) => return None,
                (Kind::Value, inline) => {
                    let value = match inline {
                        Some(v) => v,
                        None => args.next()??,
                    };
                    if value.is_empty() || value.starts_with('-') {
                        return None;
                    }
                    words.values.insert(name, value).is_none().then_some(())?
                }
            }
        }
        words.target?;
        Some(words)
    }

    /// The command, then its one target; nothing that looks like a short flag.
    fn positional(&mut self, arg: &'a str) -> Option<()> {
        if arg.starts_with('-') || arg.is_empty() {
            return None;
        }
        match (self.command, self.target) {
            (None, _) if arg == "block" || arg == "unblock" => self.command = Some(arg),
            (Some(_), None) => self.target = Some(arg),
            _ => return None,
        }
        Some(())
    }

    fn value(&self, name: &str) -> Option<&'a str> {
        self.values.get(name).copied()
    }

    fn switch(&self, name: &str) -> bool {
        self.switches.contains(name)
    }

    /// The flag's value parsed, `Some(None)` when absent, `None` when it does not parse.
    fn parsed<T: std::str::FromStr>(&self, name: &str) -> Option<Option<T>> {
        self.value(name)
            .map(|v| v.parse().ok())
            .map_or(Some(None), |v| v.map(Some))
    }

    fn scope(&self) -> ScopeFlags {
        ScopeFlags {
            proto: self.value("proto").map(str::to_owned),
            ports: self.value("port").map(str::to_owned),
        }
    }
}

/// A path from a flag, else from the environment as clap reads it (an empty value is clap's
/// error to report: `None`), else `default`.
fn path(
    flag: Option<&str>,
    env: &impl Fn(&str) -> Option<OsString>,
    var: &str,
    default: Option<&str>,
) -> Option<Option<PathBuf>> {
    if let Some(v) = flag {
        return Some(Some(v.into()));
    }
    match env(var) {
        Some(v) if v.is_empty() => None,
        Some(v) => Some(Some(v.into())),
        None => Some(default.map(PathBuf::from)),
    }
}

/// The command line `args` (without argv[0]) as clap would read it, if it is a trigger in one
/// of the simple forms; `None` sends it to clap. `env` looks up an environment variable.
pub(super) fn parse(args: &[OsString], env: impl Fn(&str) -> Option<OsString>) -> Option<Cli> {
    let words = Words::read(args)?;
    let socket = path(words.value("socket"), &env, "ENFORCER_SOCKET", None)?;
    let spool = SpoolFlags {
        spool_if_down: words.switch("spool-if-down"),
        state_dir: path(
            words.value("state-dir"),
            &env,
            "ENFORCER_STATE_DIR",
            Some("/var/lib/enforcer"),
        )??,
    };
    let target = words.target?.parse().ok()?;
    let command = if words.command? == "block" {
        if words.value("ttl").is_some() && words.switch("permanent") {
            return None;
        }
        Command::Block(block::Args {
            target,
            ttl: words.parsed("ttl")?,
            permanent: words.switch("permanent"),
            flags: BlockFlags {
                source: words.parsed("source")?.unwrap_or_else(Source::cli),
                reason: words.value("reason").map(str::to_owned),
                shadow: words.switch("shadow"),
            },
            scope: words.scope(),
            force: words.switch("force"),
            spool,
            json: words.switch("json"),
        })
    } else {
        if words.value("source").is_some() && words.switch("all") {
            return None;
        }
        Command::Unblock(unblock::Args {
            target,
            source: words.parsed("source")?,
            all: words.switch("all"),
            scope: words.scope(),
            spool,
            json: words.switch("json"),
        })
    };
    Some(Cli { socket, command })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use proptest::prelude::*;

    use super::*;

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    /// What clap makes of `args`: the command line, or its error's kind.
    fn clap(args: &[&str]) -> Result<String, clap::error::ErrorKind> {
        Cli::try_parse_from(std::iter::once("enforcer").chain(args.iter().copied()))
            .map(|cli| format!("{cli:?}"))
            .map_err(|e| e.kind())
    }

    /// The fast path takes `args` and reads them as clap does.
    fn same_as_clap(args: &[&str]) {
        let fast = parse(&os(args), no_env).unwrap_or_else(|| panic!("not taken: {args:?}"));
        assert_eq!(Ok(format!("{fast:?}")), clap(args), "{args:?}");
    }

    #[test]
    fn the_triggers_command_lines_are_read_as_clap_reads_them() {
        assert!(std::env::var_os("ENFORCER_SOCKET").is_none());
        assert!(std::env::var_os("ENFORCER_STATE_DIR").is_none());
        // The benchmark's and a script's.
        same_as_clap(&[
            "--socket",
            "/run/e.sock",
            "block",
            "192.0.2.7",
            "--ttl",
            "1h",
        ]);
        same_as_clap(&["block", "2001:db8::/48"]);
        same_as_clap(&["unblock", "192.0.2.7"]);
        // fail2ban's actionban and actionunban (dist/fail2ban/action.d/enforcer.conf).
        same_as_clap(&[
            "--socket",
            "/run/enforcer/enforcer.sock",
            "block",
            "198.51.100.4",
            "--ttl",
            "600s",
            "--source",
            "fail2ban",
            "--reason",
            "fail2ban sshd: 5 failures",
            "--spool-if-down",
        ]);
        same_as_clap(&[
            "--socket=/s",
            "block",
            "198.51.100.4",
            "--permanent",
            "--source=fail2ban",
            "--spool-if-down",
        ]);
        same_as_clap(&[
            "unblock",
            "198.51.100.4",
            "--source",
            "fail2ban",
            "--spool-if-down",
            "--socket",
            "/s",
        ]);
        // Every flag, in both forms.
        same_as_clap(&[
            "block",
            "--shadow",
            "--force",
            "--json",
            "--proto=tcp",
            "--port",
            "22,2222",
            "--state-dir",
            "/tmp/x",
            "198.51.100.0/24",
            "--reason=a=b",
        ]);
        same_as_clap(&[
            "unblock",
            "192.0.2.7",
            "--all",
            "--proto",
            "udp",
            "--port=53",
        ]);
        // A bad scope is read here and refused by the command, as after clap.
        same_as_clap(&["block", "192.0.2.7", "--proto", "bogus"]);
    }

    #[test]
    fn anything_else_goes_to_clap() {
        for args in [
            &["--help"][..],
            &["block", "--help"],
            &["block", "-h"],
            &["--version"],
            &["list"],
            &["block"],
            &["block", "192.0.2.300"],
            &["block", "example.com"],
            &["block", "192.0.2.7", "192.0.2.8"],
            &["block", "192.0.2.7", "--ttl", "10 minutes"],
            &["block", "192.0.2.7", "--ttl", "1h", "--ttl", "2h"],
            &["block", "192.0.2.7", "--ttl", "1h", "--permanent"],
            &["block", "192.0.2.7", "--ttl"],
            &["block", "192.0.2.7", "--reason", "-x"],
            &["block", "192.0.2.7", "--reason="],
            &["block", "192.0.2.7", "--source", "Bad Name"],
            &["block", "192.0.2.7", "--shadow=true"],
            &["block", "192.0.2.7", "--all"],
            &["block", "192.0.2.7", "--no-such-flag"],
            &["block", "--", "192.0.2.7"],
            &["--ttl", "1h", "block", "192.0.2.7"],
            &["unblock", "192.0.2.7", "--source", "cli", "--all"],
            &["unblock", "192.0.2.7", "--ttl", "1h"],
            &["--socket", "/a", "block", "192.0.2.7", "--socket", "/b"],
        ] {
            assert!(parse(&os(args), no_env).is_none(), "taken: {args:?}");
        }
    }

    #[test]
    fn the_environment_is_read_as_clap_reads_it() {
        let env = |name: &str| match name {
            "ENFORCER_SOCKET" => Some(OsString::from("/env.sock")),
            "ENFORCER_STATE_DIR" => Some(OsString::from("/env/state")),
            _ => None,
        };
        let Some(cli) = parse(&os(&["block", "192.0.2.7"]), env) else {
            panic!("not taken");
        };
        assert_eq!(cli.socket, Some(PathBuf::from("/env.sock")));
        let Command::Block(args) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(args.spool.state_dir, PathBuf::from("/env/state"));
        let flag_wins = parse(
            &os(&["--socket", "/flag.sock", "unblock", "192.0.2.7"]),
            env,
        );
        assert_eq!(
            flag_wins.and_then(|c| c.socket),
            Some(PathBuf::from("/flag.sock"))
        );
        let empty = |name: &str| (name == "ENFORCER_SOCKET").then(OsString::new);
        assert!(parse(&os(&["block", "192.0.2.7"]), empty).is_none());
    }

    /// Words a command line is made of, right and wrong.
    fn word() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "block",
            "unblock",
            "list",
            "192.0.2.7",
            "2001:db8::/64",
            "192.0.2.300",
            "--socket",
            "/s",
            "--ttl",
            "1h",
            "0s",
            "--ttl=10m",
            "--permanent",
            "--source",
            "fail2ban",
            "--source=Bad",
            "--reason",
            "why not",
            "--reason=",
            "--shadow",
            "--force",
            "--all",
            "--proto",
            "tcp",
            "--port=22",
            "--spool-if-down",
            "--state-dir",
            "--json",
            "--help",
            "-h",
            "--",
            "-x",
            "",
        ])
        .prop_map(str::to_owned)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        /// Whatever the fast path takes, clap takes, and reads the same: a command and a
        /// target somewhere among words right and wrong.
        #[test]
        fn what_the_fast_path_takes_clap_reads_the_same(
            command in prop::sample::select(vec!["block", "unblock"]),
            target in prop::sample::select(vec!["192.0.2.7", "2001:db8::/64", "::ffff:192.0.2.1"]),
            mut words in prop::collection::vec(word(), 0..8),
            at in any::<prop::sample::Index>(),
            after in any::<prop::sample::Index>(),
        ) {
            let command_at = at.index(words.len() + 1);
            words.insert(command_at, command.to_owned());
            let target_at = command_at + 1 + after.index(words.len() - command_at);
            words.insert(target_at, target.to_owned());
            let args: Vec<&str> = words.iter().map(String::as_str).collect();
            if let Some(fast) = parse(&os(&args), no_env) {
                prop_assert_eq!(Ok(format!("{fast:?}")), clap(&args), "{:?}", args);
            }
        }
    }
}
