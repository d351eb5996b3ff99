//! IPv6 networks in the ledger (the rules are the policy's: [`crate::policy::networks`]): a
//! block the policy widened keeps the address asked for in its reply and audit lines and may
//! escalate to a broader network; an unblock of the address lifts its network's block.

use std::sync::Arc;

use super::{Change, Ledger};
use crate::{
    audit::{Action, Event},
    block::{Reason, Source},
    daemon::refusal::Refusal,
    policy::networks::network,
    protocol::{BlockReply, BlockRequest, Outcome},
    target::Target,
    time::WallMs,
};

impl Ledger {
    /// A block request from a client, a hook, the spool or an import: widened when its source's
    /// policy says so, then escalated when `[policy.ipv6_escalate]` says so. (A feed's items
    /// and approved requests go to [`Ledger::block_until`] as they are.)
    pub(super) fn block_widened(
        &mut self,
        c: &mut Change,
        mut req: BlockRequest,
        reason: Arc<Reason>,
        now: WallMs,
    ) -> Result<BlockReply, Refusal> {
        let widened = self.policy.widen(req.target, &req.source, &self.allow);
        req.target = widened.target;
        let template = req.clone();
        let first = c.events.len();
        let result = self.block_until(c, req, reason.clone(), false, now, None);
        for e in &mut c.events[first..] {
            e.requested = widened.requested;
            if let Some(note) = &widened.note {
                prepend(e, note);
            }
        }
        let mut reply = result?;
        reply.requested = widened.requested;
        if let Some(note) = widened.note {
            reply.notes.insert(0, note);
        }
        if widened.requested.is_some()
            && reply.outcome != Outcome::Pending
            && let Some(note) = self.escalate(c, template, reason, now)
        {
            reply.notes.push(note);
        }
        Ok(reply)
    }

    /// Blocks the broader network the policy escalates `req`'s widened network to, if it does,
    /// through the whole policy (the scope guard may refuse it, approval may hold it); returns
    /// what became of it.
    fn escalate(
        &mut self,
        c: &mut Change,
        mut req: BlockRequest,
        reason: Arc<Reason>,
        now: WallMs,
    ) -> Option<String> {
        let e = self.policy.escalation(req.target, now)?;
        let to = e.target;
        if let Some(p) = self
            .pending
            .values()
            .find(|p| p.request.target == to && p.request.source == req.source)
        {
            return Some(format!(
                "{}: the escalation to {to} already waits for approval (id {})",
                e.why, p.id
            ));
        }
        req.target = to;
        req.force = false;
        let first = c.events.len();
        let result = self.block_until(c, req, reason, false, now, None);
        for ev in &mut c.events[first..] {
            prepend(ev, &e.why);
        }
        Some(match result {
            Ok(r) if r.outcome == Outcome::Pending => format!(
                "{}: the escalation to {to} waits for approval (id {})",
                e.why,
                r.pending_id.unwrap_or_default()
            ),
            Ok(_) => format!("{}: escalated to {to}", e.why),
            Err(refusal) => format!("{}: the escalation to {to} was refused: {refusal}", e.why),
        })
    }

    /// What an unblock of `target` lifts: `target` itself, or, for a single IPv6 address not
    /// blocked itself (by the source named, or by any with `all`), the network a widening
    /// source blocked in its place (the narrowest, if several did), with the address.
    pub(super) fn unblock_target(
        &self,
        target: Target,
        source: Option<&Source>,
        all: bool,
    ) -> (Target, Option<Target>) {
        if target.is_v4() || !target.is_host() {
            return (target, None);
        }
        let named = source.cloned().unwrap_or_else(Source::cli);
        let blocked_itself = self
            .blocks
            .get(&target)
            .is_some_and(|b| all || b.by_source.contains_key(&named));
        if blocked_itself {
            return (target, None);
        }
        self.widened_blocks(target)
            .into_iter()
            .filter(|(s, _)| all || *s == named)
            .map(|(_, net)| net)
            .max_by_key(Target::prefix_len)
            .map_or((target, None), |net| (net, Some(target)))
    }

    /// The blocks widening sources made of `addr`'s networks: (source, network).
    fn widened_blocks(&self, addr: Target) -> Vec<(Source, Target)> {
        self.policy
            .widening_sources()
            .map(|(s, len)| (s.clone(), network(addr, len)))
            .filter(|(s, net)| self.has_block(net, s))
            .collect()
    }

    /// For an unblock that found nothing: the widened network blocks holding `target`, named,
    /// with the flag that lifts them.
    pub(super) fn widened_hint(&self, target: Target) -> String {
        if target.is_v4() || !target.is_host() {
            return String::new();
        }
        self.widened_blocks(target)
            .into_iter()
            .map(|(s, net)| {
                format!(
                    "; it is inside {net}, blocked by source `{s}` in place of a single address: use --source {s}"
                )
            })
            .next()
            .unwrap_or_default()
    }
}

/// Puts `note` before the audit line's detail.
fn prepend(e: &mut Event, note: &str) {
    if e.action == Action::BreakerOpen {
        return;
    }
    e.detail = Some(match e.detail.take() {
        Some(d) => format!("{note}; {d}"),
        None => note.to_owned(),
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        daemon::ledger::Capacity,
        policy::{AllowOrigin, Policy, PolicyConfig, networks::WIDENING},
        protocol::{BatchItem, BatchRequest, Reply, SyncItem, SyncRequest},
        store::StoreOp,
        time::testing::{ms, wall},
    };

    const T0: WallMs = wall(1_000_000);

    fn t(s: &str) -> Target {
        s.parse().unwrap()
    }

    fn ledger(extra: &str) -> Ledger {
        let config: PolicyConfig = toml::from_str(&format!("{extra}\n{WIDENING}")).unwrap();
        config.validate().unwrap();
        Ledger::new(
            Policy::new(config, Duration::from_secs(600)),
            Capacity::uniform(1000),
        )
    }

    fn req(target: &str, source: &str) -> BlockRequest {
        BlockRequest {
            target: t(target),
            ttl_secs: Some(3600),
            permanent: false,
            source: source.parse().unwrap(),
            reason: Reason::default(),
            shadow: false,
            force: false,
            scope: Default::default(),
        }
    }

    fn blocked(l: &Ledger) -> Vec<String> {
        l.blocks().keys().map(ToString::to_string).collect()
    }

    #[test]
    fn a_widened_block_names_the_address_asked_for() {
        let mut l = ledger("");
        let mut c = Change::default();
        let r = l
            .block(&mut c, req("2001:db8:0:1::10", "wazuh"), T0)
            .unwrap();
        assert_eq!(r.target, t("2001:db8:0:1::/64"));
        assert_eq!(r.requested, Some(t("2001:db8:0:1::10")));
        assert!(
            r.notes[0].contains("widened to 2001:db8:0:1::/64"),
            "{:?}",
            r.notes
        );
        assert_eq!(blocked(&l), ["2001:db8:0:1::/64"]);
        let e = &c.events[0];
        assert_eq!(
            (e.action, e.target),
            (Action::Block, Some(t("2001:db8:0:1::/64")))
        );
        assert_eq!(e.requested, Some(t("2001:db8:0:1::10")));
        assert!(
            matches!(&c.ops[..], [StoreOp::Put(rec)] if rec.target == t("2001:db8:0:1::/64")),
            "{:?}",
            c.ops
        );
        // Another address of the /64 re-blocks the /64 (extends it): no new block.
        let r = l
            .block(
                &mut Change::default(),
                req("2001:db8:0:1::20", "wazuh"),
                T0 + ms(1),
            )
            .unwrap();
        assert_eq!(r.outcome, Outcome::Extended);
        assert_eq!(blocked(&l), ["2001:db8:0:1::/64"]);
    }

    #[test]
    fn cli_blocks_feeds_and_other_sources_are_not_widened() {
        let mut l = ledger("");
        for s in ["cli", "fail2ban", "crowdsec"] {
            l.block(&mut Change::default(), req("2001:db8:0:1::10", s), T0)
                .unwrap();
        }
        let feed = SyncRequest {
            source: "wazuh".parse().unwrap(),
            replace: false,
            items: vec![SyncItem {
                target: t("2001:db8:0:2::10"),
                ttl_ms: 60_000,
                reason: Arc::new(Reason::default()),
            }],
            remove: vec![],
        };
        l.sync_source(&mut Change::default(), feed, T0);
        assert_eq!(blocked(&l), ["2001:db8:0:1::10", "2001:db8:0:2::10"]);
    }

    #[test]
    fn an_import_is_widened_item_by_item() {
        let mut l = ledger("");
        let batch = BatchRequest {
            items: ["2001:db8:0:1::10", "2001:db8:0:1::20", "192.0.2.7"]
                .into_iter()
                .map(|a| BatchItem {
                    target: t(a),
                    ttl_secs: None,
                })
                .collect(),
            ttl_secs: Some(60),
            source: "wazuh".parse().unwrap(),
            reason: Reason::default(),
            shadow: false,
            scope: Default::default(),
        };
        l.block_batch(&mut Change::default(), batch, T0);
        assert_eq!(blocked(&l), ["192.0.2.7", "2001:db8:0:1::/64"]);
    }

    #[test]
    fn an_unblock_of_the_address_lifts_its_network() {
        let mut l = ledger("");
        l.block(&mut Change::default(), req("2001:db8:0:1::10", "wazuh"), T0)
            .unwrap();
        // The default source (cli) has no block: the answer says where the address is.
        let Err(Refusal::NotFound(why)) =
            l.unblock(&mut Change::default(), t("2001:db8:0:1::10"), None, false)
        else {
            panic!("expected not found")
        };
        assert!(
            why.contains("inside 2001:db8:0:1::/64") && why.contains("--source wazuh"),
            "{why}"
        );
        let mut c = Change::default();
        let reply = l
            .unblock(
                &mut c,
                t("2001:db8:0:1::99"),
                Some("wazuh".parse().unwrap()),
                false,
            )
            .unwrap();
        let Reply::Unblock {
            target,
            lifted,
            requested,
            ..
        } = reply
        else {
            panic!("{reply:?}")
        };
        assert_eq!(
            (target, lifted, requested),
            (t("2001:db8:0:1::/64"), true, Some(t("2001:db8:0:1::99")))
        );
        assert_eq!(c.events[0].requested, Some(t("2001:db8:0:1::99")));
        assert!(blocked(&l).is_empty());
        // --all finds it too, and the network itself can be named.
        for (target, source, all) in [
            ("2001:db8:0:1::10", None, true),
            ("2001:db8:0:1::/64", Some("wazuh".parse().unwrap()), false),
        ] {
            l.block(&mut Change::default(), req("2001:db8:0:1::10", "wazuh"), T0)
                .unwrap();
            l.unblock(&mut Change::default(), t(target), source, all)
                .unwrap();
            assert!(blocked(&l).is_empty(), "{target}");
        }
    }

    #[test]
    fn the_allowlist_wins_over_widening() {
        let mut l = ledger("");
        l.init_allow(t("2001:db8:0:1::30"), AllowOrigin::Config);
        let mut c = Change::default();
        let r = l
            .block(&mut c, req("2001:db8:0:1::10", "wazuh"), T0)
            .unwrap();
        assert_eq!((r.target, r.requested), (t("2001:db8:0:1::10"), None));
        assert!(r.notes[0].contains("not widened"), "{:?}", r.notes);
        assert!(
            c.events[0]
                .detail
                .as_deref()
                .unwrap()
                .contains("allowlisted 2001:db8:0:1::30"),
            "{:?}",
            c.events[0]
        );
        assert_eq!(blocked(&l), ["2001:db8:0:1::10"]);
    }

    #[test]
    fn repeat_offenders_escalate_per_widened_block() {
        let mut l = ledger("[repeat_offenders]\nwindow = \"1d\"\nttls = [\"10m\", \"2h\"]");
        let mut short = req("2001:db8:0:1::10", "wazuh");
        short.ttl_secs = Some(60);
        l.block(&mut Change::default(), short.clone(), T0).unwrap();
        l.unblock(
            &mut Change::default(),
            t("2001:db8:0:1::/64"),
            Some("wazuh".parse().unwrap()),
            false,
        )
        .unwrap();
        short.target = t("2001:db8:0:1::20");
        let r = l
            .block(&mut Change::default(), short, T0 + ms(1000))
            .unwrap();
        assert_eq!(
            r.expires_ms,
            Some(T0 + ms(1000) + ms(2 * 3_600_000)),
            "{:?}",
            r.notes
        );
    }

    fn rotate(l: &mut Ledger, c: &mut Change) -> BlockReply {
        let mut last = None;
        for (i, a) in ["2001:db8:1:1::10", "2001:db8:1:2::10", "2001:db8:1:3::10"]
            .into_iter()
            .enumerate()
        {
            last = Some(l.block(c, req(a, "wazuh"), T0 + ms(i as u64)).unwrap());
        }
        last.unwrap()
    }

    #[test]
    fn three_networks_of_one_48_escalate_to_the_48() {
        let mut l = ledger("");
        let mut c = Change::default();
        let r = rotate(&mut l, &mut c);
        assert_eq!(r.target, t("2001:db8:1:3::/64"), "the trigger's own block");
        assert!(
            r.notes
                .last()
                .unwrap()
                .ends_with("escalated to 2001:db8:1::/48"),
            "{:?}",
            r.notes
        );
        assert!(l.blocks().contains_key(&t("2001:db8:1::/48")));
        let e = c
            .events
            .iter()
            .find(|e| e.target == Some(t("2001:db8:1::/48")))
            .unwrap();
        assert_eq!(e.action, Action::Block);
        assert!(
            e.detail
                .as_deref()
                .unwrap()
                .contains("policy.ipv6_escalate")
        );
    }

    #[test]
    fn an_escalation_past_approval_waits_and_past_the_scope_guard_is_refused() {
        let mut l = ledger("[approval]\nbroader_than_v6 = 56");
        let r = rotate(&mut l, &mut Change::default());
        assert!(
            r.notes
                .last()
                .unwrap()
                .contains("waits for approval (id 1)"),
            "{:?}",
            r.notes
        );
        assert_eq!(l.pending()[&1].request.target, t("2001:db8:1::/48"));
        assert!(!l.blocks().contains_key(&t("2001:db8:1::/48")));
        assert!(l.blocks().contains_key(&t("2001:db8:1:3::/64")));
        // Three more: the escalation already waits, it is not asked twice.
        let again = ["2001:db8:1:4::10", "2001:db8:1:5::10", "2001:db8:1:6::10"];
        for a in again {
            l.block(&mut Change::default(), req(a, "wazuh"), T0 + ms(10))
                .unwrap();
        }
        assert_eq!(l.pending().len(), 1);

        let mut l = ledger("min_prefix_v6 = 56");
        let mut c = Change::default();
        let r = rotate(&mut l, &mut c);
        assert!(
            r.notes.last().unwrap().contains("was refused"),
            "{:?}",
            r.notes
        );
        let e = c
            .events
            .iter()
            .find(|e| e.action == Action::Refuse)
            .unwrap();
        assert_eq!(e.target, Some(t("2001:db8:1::/48")));
        assert!(
            e.detail.as_deref().unwrap().contains("min_prefix_v6"),
            "{e:?}"
        );
        assert_eq!(l.blocks().len(), 3, "the /64s stay blocked");
    }
}
