//! Installers: put enforcer where other security tools look for it.
//!
//! - [`wazuh`]: copies the running binary into Wazuh's `active-response/bin/` under a hook name
//!   (the binary runs the Wazuh hook when started under that name, see [`crate::hooks`]);
//! - [`fail2ban`]: writes a fail2ban action file that calls `enforcer block --spool-if-down`.
//!
//! Both are idempotent, refuse to clobber a different file without `--force`, and say what to
//! add to the tool's own configuration.

pub mod fail2ban;
pub mod wazuh;
