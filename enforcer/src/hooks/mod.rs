//! Trigger hooks: programs that other security tools run to ask the daemon for a block.
//!
//! A hook is not a second binary. The `enforcer` binary looks at the name it was started under
//! (the basename of argv[0]): `enforcer` runs the command line; any other name, such as
//! `firewall-drop` or `enforcer-firewall-drop` in Wazuh's `active-response/bin/`, runs the Wazuh hook.
//! That way:
//!
//! - there is one file to install, and `enforcer install-wazuh-hook` puts a copy of the running
//!   binary where Wazuh expects its programs;
//! - the hook is always the same version as the daemon and the CLI it was installed with: it
//!   speaks the same control-socket protocol, parses addresses with the same [`Target`] rules,
//!   and writes the spool format the daemon reads;
//! - nothing else is built, packaged or kept in step.
//!
//! Wazuh cannot pass a subcommand (execd starts its programs with argv = the program's relative
//! path and nothing else), which is why the name, not an argument, selects the hook.
//!
//! [`Target`]: crate::target::Target

pub mod line_reader;
pub mod wazuh;

use std::{ffi::OsStr, path::Path};

/// The name the binary answers to as the command line.
pub const CLI_NAME: &str = "enforcer";

/// Which hook a process should run, judging by the name it was started under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hook {
    /// The Wazuh active-response program, run under this name (the basename of argv[0]).
    Wazuh {
        /// The basename of argv[0]: what execd calls the program (`firewall-drop`, ...).
        name: String,
    },
}

impl Hook {
    /// The hook for `argv0`, or `None` when the binary is started as `enforcer` (the CLI).
    pub fn from_argv0(argv0: Option<&OsStr>) -> Option<Self> {
        let name = Path::new(argv0?)
            .file_name()?
            .to_string_lossy()
            .into_owned();
        (name != CLI_NAME).then_some(Self::Wazuh { name })
    }

    /// Runs the hook; returns the process exit code.
    pub fn run(self) -> i32 {
        match self {
            Self::Wazuh { name } => wazuh::main(&name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(argv0: &str) -> Option<Hook> {
        Hook::from_argv0(Some(OsStr::new(argv0)))
    }

    #[test]
    fn the_name_selects_the_hook() {
        assert_eq!(hook("enforcer"), None);
        assert_eq!(hook("/usr/sbin/enforcer"), None);
        assert_eq!(hook("target/debug/enforcer"), None);
        assert_eq!(
            hook("active-response/bin/firewall-drop"),
            Some(Hook::Wazuh {
                name: "firewall-drop".into()
            })
        );
        assert_eq!(
            hook("enforcer-wazuh"),
            Some(Hook::Wazuh {
                name: "enforcer-wazuh".into()
            })
        );
        assert_eq!(Hook::from_argv0(None), None);
        assert_eq!(hook(""), None, "no name at all is not a hook name");
    }
}
