//! The integration suite: one test binary with a module per lab (as ripgrep and aya do), so
//! aya, tokio and the fixtures are linked once. Needs root (see `enforcer_tests::require_root`).

mod access_lab;
mod allowlist_property;
mod batch_lab;
mod bounds_lab;
mod clock_lab;
mod crowdsec;
mod daemon_lab;
mod datapath_lab;
mod enforce_first;
mod fail2ban;
mod files_as_root;
mod fleet;
mod flood_lab;
mod fragments_lab;
mod hardening_lab;
mod interfaces_lab;
mod ipv6_networks;
mod layout_upgrade;
mod link_events;
mod links_lab;
mod metrics_lab;
mod mount_namespace_lab;
mod operability;
mod package;
mod policy_lab;
mod quota_lab;
mod reads_lab;
mod replies_lab;
mod sandbox_lab;
mod scoped_blocks;
mod spool_lab;
mod trigger_fast_path;
mod verdicts;
mod wazuh_hook;
