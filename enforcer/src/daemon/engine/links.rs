//! The engine's side of interfaces that come and go: it owns the program, so it attaches; the
//! link watcher ([`crate::daemon::link_watch`]) only reads the kernel and sends what it saw.

use super::Engine;
use crate::{
    audit::{Action, Event},
    datapath::{DatapathError, XdpModeRequest},
    error::Chain,
    interfaces::{Interfaces, Step, Why},
    netlink::LinkState,
};

/// An attach that failed, with its cause.
#[derive(Debug)]
pub struct AttachFailure {
    /// The interface.
    pub iface: String,
    /// What the loader said.
    pub error: DatapathError,
}

impl Engine {
    /// Sets which interfaces to protect and in which mode, before the first [`Self::follow_links`].
    pub fn set_interfaces(
        &mut self,
        interfaces: Interfaces,
        mode: XdpModeRequest,
    ) -> anyhow::Result<()> {
        self.interfaces = interfaces;
        self.xdp_mode = mode;
        self.programs = self.dp.programs()?;
        Ok(())
    }

    /// The configured interfaces and what is known of each.
    pub fn interfaces(&self) -> &Interfaces {
        &self.interfaces
    }

    /// Makes protection follow a dump of the links: attaches where our program should run and
    /// does not, releases the pins of interfaces that went away, and reports every change
    /// (warning, audit event, metric). Returns the attaches that failed (fatal at start; at run
    /// time they are retried with every dump, twice a second).
    pub fn follow_links(&mut self, links: &[LinkState]) -> Vec<AttachFailure> {
        let steps = self.interfaces.plan(links, self.programs);
        let mut failures = Vec::new();
        for step in steps {
            match step {
                Step::Attach { iface, why } => {
                    let ifindex = links
                        .iter()
                        .find(|l| l.name == iface)
                        .map_or(0, |l| l.index);
                    if why == Why::DetachedBehindOurBack && self.runs_ours(ifindex) {
                        // A dump taken before our own attach (queued while it ran): nothing
                        // was detached.
                        continue;
                    }
                    if let Err(error) = self.attach_one(&iface, why) {
                        let error_text = Chain(&error).to_string();
                        if self.interfaces.failed(&iface, ifindex, error_text.clone()) {
                            tracing::error!(%iface, error = %error_text, "{why}, but attaching failed: the interface is NOT protected (retrying twice a second)");
                            self.interface_changed(
                                Action::InterfaceUnprotected,
                                &iface,
                                format!("{why}; attach failed: {error_text}"),
                            );
                        }
                        failures.push(AttachFailure { iface, error });
                    }
                }
                Step::Release { iface, was, listed } => self.release(&iface, was, listed),
                Step::Confirmed { iface, ifindex } => {
                    tracing::info!(%iface, ifindex, "protected: the program already runs there");
                    self.interface_changed(
                        Action::InterfaceProtected,
                        &iface,
                        "the program already runs there".to_owned(),
                    );
                }
            }
        }
        self.links_followed = true;
        failures
    }

    /// Whether one of our programs runs on `ifindex` now, asked of the kernel (not of a dump).
    fn runs_ours(&self, ifindex: u32) -> bool {
        crate::netlink::query_link(ifindex)
            .is_ok_and(|(xdp, link_type)| self.programs.protects(link_type, xdp.prog_id))
    }

    fn attach_one(&mut self, iface: &str, why: Why) -> Result<(), DatapathError> {
        let a = self.dp.attach(iface, self.xdp_mode)?;
        // The first link of its type loads its program: what counts as protected grows.
        self.programs = self.dp.programs()?;
        self.interfaces.attached(iface, a.ifindex);
        if !a.replaced {
            self.interfaces
                .set_native_refused(iface, a.native_refused.clone());
        }
        let how = if a.replaced {
            "replaced the program in place"
        } else {
            "attached"
        };
        let refused = a
            .native_refused
            .as_ref()
            .map(|r| format!(" (native refused: {r})"))
            .unwrap_or_default();
        let detail = format!(
            "{why}: {how} in {}{refused} mode (ifindex {}, program {}, link {}, {} parse)",
            a.mode, a.ifindex, a.prog_id, a.link_type, a.parse
        );
        match why {
            // Protection lost and restored is what an operator must hear about.
            Why::DetachedBehindOurBack | Why::Reappeared | Why::Retry => {
                tracing::warn!(%iface, ifindex = a.ifindex, mode = %a.mode, prog_id = a.prog_id, "protected again: {detail}");
            }
            Why::Appeared if self.links_followed => {
                tracing::warn!(%iface, ifindex = a.ifindex, mode = %a.mode, prog_id = a.prog_id, "protected: {detail}");
            }
            // At start: what every start does.
            // A fallback to skb mode is worth a warning: the operator may be able to fix it.
            Why::Appeared if a.native_refused.is_some() => {
                tracing::warn!(%iface, ifindex = a.ifindex, mode = %a.mode, prog_id = a.prog_id, "{detail}");
            }
            Why::Appeared => {
                tracing::info!(%iface, ifindex = a.ifindex, mode = %a.mode, prog_id = a.prog_id, replaced = a.replaced, "{how}")
            }
        }
        self.interface_changed(Action::InterfaceProtected, iface, detail);
        Ok(())
    }

    /// An interface went away: it is unprotected from now on; its pin (a defunct link, or one
    /// on a link renamed away) is released so the name is attached afresh when it returns.
    fn release(&mut self, iface: &str, was: &'static str, listed: bool) {
        let layout = self.dp.layout().clone();
        if let Err(e) = crate::datapath::detach_link(&layout, iface) {
            tracing::error!(%iface, error = %Chain(&e), "cannot release the pinned link of an interface that went away");
        }
        let detail = if listed {
            format!(
                "the interface went away (it was {was}); it is protected again within a second of coming back"
            )
        } else {
            format!("the interface went away or no longer matches its pattern (it was {was})")
        };
        tracing::warn!(%iface, "NOT protected: {detail}");
        self.interface_changed(Action::InterfaceGone, iface, detail);
    }

    /// Audit event and metric for one change (the caller logs it, with its context).
    fn interface_changed(&mut self, action: Action, iface: &str, detail: String) {
        self.audit
            .write(vec![Event::interface(action, iface, detail)]);
        self.metrics.interface_change(iface, action);
    }
}
