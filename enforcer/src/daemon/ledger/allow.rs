//! The allowlist's entries in the ledger: from the configuration, the CLI and the host.

use std::collections::{BTreeMap, BTreeSet};

use super::{Change, Ledger, Refusal};
use crate::{
    audit::{Action, Event},
    policy::{AllowOrigin, Rule},
    protocol::Reply,
    store::StoreOp,
    target::Target,
};

fn is_cli(o: &AllowOrigin) -> bool {
    matches!(o, AllowOrigin::Cli { .. })
}

fn is_builtin(o: &AllowOrigin) -> bool {
    matches!(o, AllowOrigin::Builtin { .. })
}

impl Ledger {
    /// Adds an entry at start-up (configuration, stored CLI entries, the host).
    pub fn init_allow(&mut self, target: Target, origin: AllowOrigin) {
        self.allow.insert(target, origin);
        self.capacity.set_allow(&self.allow);
    }

    fn remember_allow(&self, c: &mut Change) {
        c.allow_before.get_or_insert_with(|| self.allow.clone());
    }

    /// `allow add`: a durable CLI entry. A prefix broader than the scope guard (the policy's
    /// `min_prefix_v4`/`min_prefix_v6`) needs `force`: it would lift every block inside it, and
    /// `0.0.0.0/0` would disable them all.
    pub fn allow_add(
        &mut self,
        c: &mut Change,
        target: Target,
        comment: Option<String>,
        force: bool,
    ) -> Result<Reply, Refusal> {
        if !force && let Err(refusal) = self.allow_scope(&target) {
            c.refused
                .push((Rule::Scope.as_str(), crate::block::Source::cli()));
            c.events
                .push(Event::new(Action::Refuse, target).detail(refusal.to_string()));
            return Err(refusal);
        }
        let origins = self.allow.origins(&target);
        if origins.is_some_and(|o| o.iter().any(is_cli)) {
            return Ok(Reply::Allow {
                target,
                changed: false,
            });
        }
        if origins.is_none() {
            self.capacity.check_allow(&target)?;
        }
        self.remember_allow(c);
        let origin = AllowOrigin::Cli { comment };
        c.ops.push(StoreOp::PutAllow(target, origin.clone()));
        if self.allow.insert(target, origin.clone()) {
            c.allow_kernel.insert(target);
        }
        self.capacity.set_allow(&self.allow);
        c.events
            .push(Event::new(Action::AllowAdd, target).detail("allowlisted with the CLI"));
        Ok(Reply::Allow {
            target,
            changed: true,
        })
    }

    fn allow_scope(&self, target: &Target) -> Result<(), Refusal> {
        let config = &self.policy.config;
        let (min, key) = if target.is_v4() {
            (config.min_prefix_v4, "v4")
        } else {
            (config.min_prefix_v6, "v6")
        };
        if target.prefix_len() >= min {
            return Ok(());
        }
        Err(Refusal::Policy {
            rule: Rule::Scope,
            message: format!(
                "{target} is broader than /{min} (policy.min_prefix_{key}): allowlisting it would lift every block inside it; a narrower prefix, or --force from a caller allowed to force"
            ),
        })
    }

    /// `allow remove`: only entries the CLI added.
    pub fn allow_remove(&mut self, c: &mut Change, target: Target) -> Result<Reply, Refusal> {
        let Some(origins) = self.allow.origins(&target) else {
            return Err(Refusal::NotFound(format!(
                "{target} is not on the allowlist (see `enforcer allow list`)"
            )));
        };
        if !origins.iter().any(is_cli) {
            let from: Vec<String> = origins.iter().map(ToString::to_string).collect();
            return Err(Refusal::NotRemovable {
                target,
                origins: from.join(", "),
            });
        }
        self.remember_allow(c);
        c.ops.push(StoreOp::DeleteAllow(target));
        if self.allow.remove_where(&target, is_cli) {
            c.allow_kernel.insert(target);
        }
        self.capacity.set_allow(&self.allow);
        c.events.push(
            Event::new(Action::AllowRemove, target)
                .detail("removed from the allowlist with the CLI"),
        );
        Ok(Reply::Allow {
            target,
            changed: true,
        })
    }

    /// Makes the builtin entries match the host's addresses and gateways now (not stored:
    /// they are found again at every start).
    pub fn refresh_builtin(&mut self, c: &mut Change, wanted: &BTreeMap<Target, String>) {
        let current: BTreeSet<Target> = self
            .allow
            .iter()
            .filter(|(_, o)| o.iter().any(is_builtin))
            .map(|(t, _)| *t)
            .collect();
        self.remember_allow(c);
        for (t, what) in wanted.iter().filter(|(t, _)| !current.contains(t)) {
            let origin = AllowOrigin::Builtin { what: what.clone() };
            if self.allow.insert(*t, origin.clone()) {
                c.allow_kernel.insert(*t);
            }
            tracing::info!(target = %t, what, "allowlisted");
        }
        for t in current.iter().filter(|t| !wanted.contains_key(t)) {
            if self.allow.remove_where(t, is_builtin) {
                c.allow_kernel.insert(*t);
            }
            tracing::info!(target = %t, "no longer a host address or gateway: removed from the allowlist");
        }
        self.capacity.set_allow(&self.allow);
    }
}
