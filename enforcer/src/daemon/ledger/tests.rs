//! The block rules, tested without root: the ledger alone, and rounds against an in-memory
//! store and a fake kernel map.

use std::{collections::BTreeMap, time::Duration};

use enforcer_common::{BlockValue, MODE_ENFORCE, MODE_SHADOW};
use proptest::prelude::*;

use super::*;
use crate::{
    access::Caller,
    daemon::{kernel_sync::KernelMap, round},
    datapath::{MapId, MapsError},
    policy::{AllowOrigin, BreakerAction, PolicyConfig, Rule, SourcePolicy},
    protocol::{BatchItem, ErrorCode},
    scope::Scope,
    store::StoreError,
    time::{
        WallMs,
        testing::{boot, ms, wall},
    },
};

const T0: WallMs = wall(1_000_000);
const MIN: u64 = 60_000;

fn t(s: &str) -> Target {
    s.parse().unwrap()
}

fn src(s: &str) -> Source {
    s.parse().unwrap()
}

fn ledger_with(config: PolicyConfig, capacity: u32) -> Ledger {
    Ledger::new(
        Policy::new(config, Duration::from_secs(600)),
        Capacity::uniform(capacity),
    )
}

fn ledger() -> Ledger {
    ledger_with(PolicyConfig::default(), 1000)
}

fn req(target: &str, source: &str, ttl_secs: Option<u64>) -> BlockRequest {
    BlockRequest {
        target: t(target),
        ttl_secs,
        permanent: false,
        source: src(source),
        reason: Reason::default(),
        shadow: false,
        force: false,
        scope: Default::default(),
    }
}

fn block(l: &mut Ledger, r: BlockRequest, now: WallMs) -> Result<BlockReply, Refusal> {
    l.block(&mut Change::default(), r, now)
}

fn source_block<'a>(l: &'a Ledger, target: &str, source: &str) -> Option<&'a SourceBlock> {
    l.blocks()
        .get(&t(target))
        .and_then(|b| b.by_source.get(&src(source)))
}

/// A store in memory; `fail` makes the next commits fail.
#[derive(Default)]
struct MemStore {
    commits: Vec<Vec<StoreOp>>,
    /// When each commit began (boot clock).
    began: Vec<crate::time::BootNs>,
    fail: bool,
}

impl round::BlockStore for MemStore {
    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        self.began.push(crate::time::BootNs::now());
        if self.fail {
            return Err(StoreError::Db {
                path: "/mem".into(),
                message: "disk full".into(),
            });
        }
        self.commits.push(ops.to_vec());
        Ok(())
    }
}

/// A kernel map in memory; `fail` makes block writes fail; `writes` counts them.
#[derive(Default)]
struct FakeKernel {
    blocks: BTreeMap<Target, BlockValue>,
    allows: BTreeMap<Target, u32>,
    fail: bool,
    writes: usize,
    /// Allowlist writes in order: `+prefix` inserted, `-prefix` removed.
    allow_log: Vec<String>,
}

impl KernelMap for FakeKernel {
    fn get_block(&self, target: &Target) -> Result<Option<BlockValue>, MapsError> {
        Ok(self.blocks.get(target).copied())
    }

    fn insert_block(&mut self, target: &Target, value: &BlockValue) -> Result<(), MapsError> {
        if self.fail {
            return Err(MapsError::Missing("BLOCK_V4"));
        }
        self.writes += 1;
        self.blocks.insert(*target, *value);
        Ok(())
    }

    fn remove_block(&mut self, target: &Target) -> Result<bool, MapsError> {
        self.writes += 1;
        Ok(self.blocks.remove(target).is_some())
    }

    fn insert_allow(&mut self, target: &Target, origin: u32) -> Result<(), MapsError> {
        self.allows.insert(*target, origin);
        self.allow_log.push(format!("+{target}"));
        Ok(())
    }

    fn remove_allow(&mut self, target: &Target) -> Result<bool, MapsError> {
        self.allow_log.push(format!("-{target}"));
        Ok(self.allows.remove(target).is_some())
    }
}

/// A ledger, store and kernel run together.
struct Rig {
    ledger: Ledger,
    store: MemStore,
    kernel: FakeKernel,
}

impl Rig {
    fn new(ledger: Ledger) -> Self {
        Self {
            ledger,
            store: MemStore::default(),
            kernel: FakeKernel::default(),
        }
    }

    fn round(&mut self, requests: Vec<Request>, now: WallMs) -> round::Answered {
        let requests = requests
            .into_iter()
            .map(|r| Write::new(r, Caller::internal("test")))
            .collect();
        round::run(
            &mut self.ledger,
            &mut self.store,
            &mut self.kernel,
            requests,
            now,
        )
    }

    fn one(&mut self, request: Request, now: WallMs) -> Result<Reply, Refusal> {
        self.round(vec![request], now).answers.remove(0)
    }

    /// One request from `caller`.
    fn one_as(&mut self, caller: Caller, request: Request, now: WallMs) -> Result<Reply, Refusal> {
        round::run(
            &mut self.ledger,
            &mut self.store,
            &mut self.kernel,
            vec![Write::new(request, caller)],
            now,
        )
        .answers
        .remove(0)
    }

    fn reap(&mut self, now: WallMs) -> usize {
        let mut c = Change::default();
        let n = self.ledger.expire(&mut c, now, usize::MAX);
        round::commit(&mut self.ledger, &mut self.store, &mut self.kernel, c).expect("commit");
        n
    }

    fn kernel_mode(&self, target: &str) -> Option<u32> {
        self.kernel.blocks.get(&t(target)).map(|v| v.mode)
    }
}

// --- merge rules -------------------------------------------------------------------------

#[test]
fn a_new_block_gets_the_default_ttl_and_enforces() {
    let mut l = ledger();
    let r = block(&mut l, req("192.0.2.1", "cli", None), T0).unwrap();
    assert_eq!(r.outcome, Outcome::Created);
    assert_eq!(r.expires_ms, Some(T0 + ms(600_000)));
    assert_eq!(r.mode, Mode::Enforce);
    assert_eq!(l.next_block_deadline(), Some(T0 + ms(600_000)));
}

#[test]
fn a_reblock_extends_to_the_later_end() {
    let mut l = ledger();
    block(&mut l, req("192.0.2.1", "cli", Some(60)), T0).unwrap();
    let r = block(&mut l, req("192.0.2.1", "cli", Some(120)), T0 + ms(1000)).unwrap();
    assert_eq!(r.outcome, Outcome::Extended);
    assert_eq!(r.expires_ms, Some(T0 + ms(1000) + ms(120_000)));
    assert_eq!(
        l.next_block_deadline(),
        Some(T0 + ms(121_000)),
        "the old deadline is unindexed"
    );
}

#[test]
fn a_shorter_reblock_never_shortens_the_block() {
    let mut l = ledger();
    block(&mut l, req("192.0.2.1", "cli", Some(3600)), T0).unwrap();
    let r = block(&mut l, req("192.0.2.1", "cli", Some(60)), T0 + ms(1000)).unwrap();
    assert_eq!(r.outcome, Outcome::Unchanged);
    assert_eq!(r.expires_ms, Some(T0 + ms(3_600_000)));
}

#[test]
fn a_reblock_without_a_reason_keeps_the_earlier_one_and_a_new_reason_replaces_it() {
    let mut l = ledger();
    let mut first = req("192.0.2.1", "wazuh", Some(60));
    first.reason = Reason::text("ssh brute force");
    block(&mut l, first, T0).unwrap();
    block(&mut l, req("192.0.2.1", "wazuh", Some(60)), T0 + ms(1)).unwrap();
    assert_eq!(
        source_block(&l, "192.0.2.1", "wazuh")
            .unwrap()
            .reason
            .text
            .as_deref(),
        Some("ssh brute force")
    );
    let mut third = req("192.0.2.1", "wazuh", Some(60));
    third.reason = Reason::text("web scan");
    block(&mut l, third, T0 + ms(2)).unwrap();
    assert_eq!(
        source_block(&l, "192.0.2.1", "wazuh")
            .unwrap()
            .reason
            .text
            .as_deref(),
        Some("web scan")
    );
}

#[test]
fn a_shadow_reblock_never_demotes_an_enforced_block() {
    let mut l = ledger();
    block(&mut l, req("192.0.2.1", "cli", Some(60)), T0).unwrap();
    let mut shadow = req("192.0.2.1", "cli", Some(120));
    shadow.shadow = true;
    let r = block(&mut l, shadow, T0).unwrap();
    assert_eq!(r.mode, Mode::Enforce);
    assert_eq!(l.kernel_entry(&t("192.0.2.1")).unwrap().mode, Mode::Enforce);
}

#[test]
fn a_permanent_reblock_makes_the_block_permanent() {
    let mut l = ledger();
    block(&mut l, req("192.0.2.1", "cli", Some(60)), T0).unwrap();
    let mut perm = req("192.0.2.1", "cli", None);
    perm.permanent = true;
    let r = block(&mut l, perm, T0).unwrap();
    assert_eq!((r.outcome, r.expires_ms), (Outcome::Extended, None));
    assert_eq!(l.next_block_deadline(), None);
}

#[test]
fn a_zero_ttl_is_invalid_and_changes_nothing() {
    let mut l = ledger();
    let e = block(&mut l, req("192.0.2.1", "cli", Some(0)), T0).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidRequest);
    assert!(l.blocks().is_empty());
}

#[test]
fn a_scoped_block_is_refused_until_the_data_path_enforces_scopes_and_changes_nothing() {
    let mut l = ledger();
    let mut r = req("192.0.2.1", "cli", None);
    r.scope = Scope::parse(Some("tcp"), Some("22"), None).unwrap();
    let e = block(&mut l, r, T0).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidRequest);
    assert!(e.to_string().contains("drop --proto/--port"), "{e}");
    assert!(l.blocks().is_empty());
}

fn scoped(target: &str, source: &str, proto: &str, ports: Option<&str>) -> BlockRequest {
    let mut r = req(target, source, None);
    r.scope = Scope::parse(Some(proto), ports, None).unwrap();
    r
}

fn scope_of(l: &Ledger, target: &str, source: &str) -> String {
    source_block(l, target, source).unwrap().scope.to_string()
}

fn kernel_scope(l: &Ledger, target: &str) -> String {
    l.blocks()[&t(target)].kernel_scope().to_string()
}

fn unblock_scope(
    l: &mut Ledger,
    target: &str,
    source: &str,
    proto: &str,
    ports: Option<&str>,
) -> Result<Reply, Refusal> {
    let scope = Scope::parse(Some(proto), ports, None).unwrap();
    l.unblock_scope(
        &mut Change::default(),
        t(target),
        Some(src(source)),
        false,
        &scope,
    )
}

#[test]
fn several_sources_scopes_on_one_address_add_up_and_unblocking_one_leaves_the_others() {
    let mut l = ledger();
    l.enforce_scopes(true);
    let r = block(&mut l, scoped("192.0.2.1", "f2b", "tcp", Some("22")), T0).unwrap();
    assert_eq!(r.outcome, Outcome::Created);
    block(&mut l, scoped("192.0.2.1", "wazuh", "udp", Some("53")), T0).unwrap();
    assert_eq!(kernel_scope(&l, "192.0.2.1"), "tcp/22 udp/53");
    // The same source adding a scope extends its block.
    let r = block(&mut l, scoped("192.0.2.1", "f2b", "tcp", Some("2222")), T0).unwrap();
    assert_eq!(r.outcome, Outcome::Extended);
    assert_eq!(scope_of(&l, "192.0.2.1", "f2b"), "tcp/22,2222");
    let r = block(&mut l, scoped("192.0.2.1", "f2b", "tcp", Some("22")), T0).unwrap();
    assert_eq!(r.outcome, Outcome::Unchanged);
    // Unblocking one scope leaves the source's others and the other sources'.
    unblock_scope(&mut l, "192.0.2.1", "f2b", "tcp", Some("22")).unwrap();
    assert_eq!(scope_of(&l, "192.0.2.1", "f2b"), "tcp/2222");
    assert_eq!(kernel_scope(&l, "192.0.2.1"), "tcp/2222 udp/53");
    let e = unblock_scope(&mut l, "192.0.2.1", "f2b", "tcp", Some("80")).unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound);
    assert!(e.to_string().contains("covers tcp/2222, not tcp/80"), "{e}");
    let Reply::Unblock { lifted, .. } =
        unblock_scope(&mut l, "192.0.2.1", "f2b", "tcp", Some("2222")).unwrap()
    else {
        panic!()
    };
    assert!(!lifted, "wazuh's udp/53 still holds it");
    assert!(source_block(&l, "192.0.2.1", "f2b").is_none());
    assert_eq!(kernel_scope(&l, "192.0.2.1"), "udp/53");
    // A whole-address block of another source makes the verdict the whole address.
    block(&mut l, req("192.0.2.1", "cli", None), T0).unwrap();
    assert_eq!(kernel_scope(&l, "192.0.2.1"), "all");
}

#[test]
fn a_whole_address_block_cannot_lose_one_scope_and_a_union_past_the_kernels_ranges_is_refused() {
    let mut l = ledger();
    l.enforce_scopes(true);
    block(&mut l, req("192.0.2.1", "cli", None), T0).unwrap();
    let e = unblock_scope(&mut l, "192.0.2.1", "cli", "tcp", Some("22")).unwrap_err();
    assert!(e.to_string().contains("covers the whole address"), "{e}");
    assert_eq!(scope_of(&l, "192.0.2.1", "cli"), "all");
    // Sixteen ranges from one source, a seventeenth from another: refused, nothing changed.
    let ports: Vec<String> = (1..=16).map(|i| (i * 10).to_string()).collect();
    block(
        &mut l,
        scoped("192.0.2.2", "a", "tcp", Some(&ports.join(","))),
        T0,
    )
    .unwrap();
    let e = block(&mut l, scoped("192.0.2.2", "b", "tcp", Some("1000")), T0).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidRequest);
    assert!(e.to_string().contains("at most 16"), "{e}");
    assert!(source_block(&l, "192.0.2.2", "b").is_none());
}

#[test]
fn a_scoped_block_meets_the_policy_as_any_block() {
    let mut l = ledger();
    l.enforce_scopes(true);
    let mut r = scoped("192.0.2.1", "f2b", "tcp", Some("22"));
    r.shadow = true;
    let reply = block(&mut l, r, T0).unwrap();
    assert_eq!(reply.mode, Mode::Shadow);
    l.init_allow(t("198.51.100.0/28"), AllowOrigin::Config);
    let e = block(&mut l, scoped("198.51.100.5", "f2b", "tcp", Some("22")), T0).unwrap_err();
    assert!(
        matches!(
            e,
            Refusal::Policy {
                rule: Rule::Allowlist,
                ..
            }
        ),
        "{e}"
    );
    assert!(l.blocks().get(&t("198.51.100.5")).is_none());
}

// --- several sources ---------------------------------------------------------------------

#[test]
fn a_target_blocked_by_two_sources_stays_blocked_until_the_last_unblocks() {
    let mut r = Rig::new(ledger());
    r.one(Request::Block(req("192.0.2.1", "cli", Some(60))), T0)
        .unwrap();
    r.one(Request::Block(req("192.0.2.1", "wazuh", Some(600))), T0)
        .unwrap();
    let unblock = |s: &str| Request::Unblock {
        target: t("192.0.2.1"),
        source: Some(src(s)),
        all: false,
        scope: Default::default(),
    };
    let Reply::Unblock { lifted, .. } = r.one(unblock("cli"), T0).unwrap() else {
        panic!()
    };
    assert!(!lifted);
    assert_eq!(r.kernel_mode("192.0.2.1"), Some(MODE_ENFORCE));
    let Reply::Unblock { lifted, .. } = r.one(unblock("wazuh"), T0).unwrap() else {
        panic!()
    };
    assert!(lifted);
    assert_eq!(r.kernel_mode("192.0.2.1"), None);
}

#[test]
fn the_kernel_entry_enforces_until_the_latest_enforcing_source_ends() {
    let mut r = Rig::new(ledger());
    r.one(Request::Block(req("192.0.2.1", "cli", Some(60))), T0)
        .unwrap();
    let mut shadow = req("192.0.2.1", "wazuh", Some(600));
    shadow.shadow = true;
    r.one(Request::Block(shadow), T0).unwrap();
    let entry = r.ledger.kernel_entry(&t("192.0.2.1")).unwrap();
    assert_eq!(
        (entry.mode, entry.expires_ms),
        (Mode::Enforce, Some(T0 + ms(60_000)))
    );
    // When the enforcing block expires, the shadow one is what remains in the kernel.
    assert_eq!(r.reap(T0 + ms(60_000)), 1);
    assert_eq!(r.kernel_mode("192.0.2.1"), Some(MODE_SHADOW));
}

#[test]
fn unblock_names_what_is_missing() {
    let mut l = ledger();
    let e = l
        .unblock(&mut Change::default(), t("192.0.2.1"), None, false)
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound);
    block(&mut l, req("192.0.2.1", "wazuh", Some(60)), T0).unwrap();
    let e = l
        .unblock(&mut Change::default(), t("192.0.2.1"), None, false)
        .unwrap_err();
    assert!(e.to_string().contains("blocked by: wazuh"), "{e}");
}

#[test]
fn unblock_all_removes_every_source() {
    let mut l = ledger();
    block(&mut l, req("192.0.2.1", "wazuh", Some(60)), T0).unwrap();
    block(&mut l, req("192.0.2.1", "cli", Some(60)), T0).unwrap();
    let Reply::Unblock {
        removed, lifted, ..
    } = l
        .unblock(&mut Change::default(), t("192.0.2.1"), None, true)
        .unwrap()
    else {
        panic!()
    };
    assert_eq!((removed.len(), lifted), (2, true));
    assert_eq!((l.blocks().len(), l.next_block_deadline()), (0, None));
}

// --- expiry ------------------------------------------------------------------------------

#[test]
fn expiry_after_an_extension_keeps_the_block() {
    let mut r = Rig::new(ledger());
    r.one(Request::Block(req("192.0.2.1", "wazuh", Some(60))), T0)
        .unwrap();
    r.one(
        Request::Block(req("192.0.2.1", "wazuh", Some(600))),
        T0 + ms(30_000),
    )
    .unwrap();
    assert_eq!(
        r.reap(T0 + ms(60_000)),
        0,
        "the first deadline no longer applies"
    );
    assert_eq!(r.kernel_mode("192.0.2.1"), Some(MODE_ENFORCE));
    assert_eq!(r.reap(T0 + ms(630_000)), 1);
    assert_eq!(r.kernel_mode("192.0.2.1"), None);
}

#[test]
fn expiry_takes_only_what_is_due_and_at_most_the_limit() {
    let mut l = ledger();
    for i in 1..=5 {
        block(
            &mut l,
            req(&format!("192.0.2.{i}"), "cli", Some(i * 60)),
            T0,
        )
        .unwrap();
    }
    let mut c = Change::default();
    assert_eq!(l.expire(&mut c, T0 + ms(3 * MIN), 2), 2);
    assert_eq!(l.expire(&mut c, T0 + ms(3 * MIN), 10), 1);
    assert_eq!(l.blocks().len(), 2);
    assert_eq!(
        c.events
            .iter()
            .filter(|e| e.action == Action::Expire)
            .count(),
        3
    );
}

/// One caller cannot take every slot of the approval queue: a user on the socket holds at most
/// its share (`caller_share` percent of `max_pending`, 25 by default), whatever sources it asks
/// for; root and the daemon's own parts act for every integration, so each source they block
/// for has a share of its own.
#[test]
fn one_caller_holds_at_most_its_share_of_the_approval_queue() {
    let mut cfg = PolicyConfig::default();
    cfg.approval.max_pending = 8;
    for name in ["feed", "other"] {
        cfg.sources.insert(
            src(name),
            SourcePolicy {
                require_approval: Some(true),
                ..SourcePolicy::default()
            },
        );
    }
    let mut r = Rig::new(ledger_with(cfg, 100));
    let block =
        |i: u8, source: &str| Request::Block(req(&format!("192.0.2.{i}"), source, Some(60)));
    let pending = |r: Result<Reply, Refusal>| match r {
        Ok(Reply::Block(b)) => b.outcome == Outcome::Pending,
        other => panic!("{other:?}"),
    };
    // Root (the hooks, the daemon's own parts): a share per source.
    let root = || Caller::peer(0, Some("root"), &[(0, "root")]);
    assert!(pending(r.one_as(root(), block(1, "feed"), T0)));
    assert!(pending(r.one_as(root(), block(2, "feed"), T0)));
    let e = r.one_as(root(), block(3, "feed"), T0).unwrap_err();
    assert_eq!(e.to_body().code, ErrorCode::Refused);
    assert!(
        e.to_string()
            .contains("source `feed` already has 2 requests waiting")
            && e.to_string().contains("caller_share"),
        "{e}"
    );
    assert!(
        pending(r.one_as(root(), block(4, "other"), T0)),
        "another source has its own share"
    );
    // A user: one share, whatever the source.
    let alice = || Caller::peer(1000, Some("alice"), &[(1000, "alice")]);
    assert!(pending(r.one_as(alice(), block(5, "feed"), T0)));
    assert!(pending(r.one_as(alice(), block(6, "other"), T0)));
    let e = r.one_as(alice(), block(7, "other"), T0).unwrap_err();
    assert!(
        e.to_string()
            .contains("uid 1000 (alice) already has 2 requests waiting"),
        "{e}"
    );
    assert_eq!(
        r.ledger.pending().len(),
        5,
        "the queue had room: only the shares refused"
    );
    // Refusals are audited; rejecting one of alice's makes room for her again.
    let refusals = r
        .ledger
        .pending()
        .values()
        .filter(|p| p.requested_by.as_ref().is_some_and(|c| c.uid == 1000))
        .map(|p| p.id)
        .collect::<Vec<_>>();
    r.one(Request::Reject { id: refusals[0] }, T0).unwrap();
    assert!(pending(r.one_as(alice(), block(7, "other"), T0)));
}

#[test]
fn the_approval_queue_is_bounded_and_a_request_past_it_is_refused_and_audited() {
    let mut cfg = PolicyConfig::default();
    cfg.approval.max_pending = 2;
    cfg.approval.caller_share = 100;
    cfg.sources.insert(
        src("feed"),
        SourcePolicy {
            require_approval: Some(true),
            ..SourcePolicy::default()
        },
    );
    let mut r = Rig::new(ledger_with(cfg, 100));
    for i in 1..=2 {
        r.one(
            Request::Block(req(&format!("192.0.2.{i}"), "feed", Some(60))),
            T0,
        )
        .unwrap();
    }
    let e = r
        .one(Request::Block(req("192.0.2.3", "feed", Some(60))), T0)
        .unwrap_err();
    assert!(matches!(e, Refusal::PendingFull { limit: 2 }), "{e:?}");
    assert_eq!(e.to_body().code, ErrorCode::Refused);
    assert!(e.to_string().contains("policy.approval.max_pending"), "{e}");
    assert_eq!(r.ledger.pending().len(), 2);
    // Rejecting one makes room again.
    r.one(Request::Reject { id: 1 }, T0).unwrap();
    r.one(Request::Block(req("192.0.2.3", "feed", Some(60))), T0)
        .unwrap();
    assert_eq!(r.ledger.pending().len(), 2);
}

#[test]
fn oversized_free_text_is_refused_whole_with_its_size_and_limit() {
    let mut r = Rig::new(ledger());
    let mut long = req("192.0.2.1", "cli", Some(60));
    long.reason = Reason::text("x".repeat(2000));
    let e = r.one(Request::Block(long), T0).unwrap_err();
    assert_eq!(e.to_body().code, ErrorCode::InvalidRequest);
    assert!(
        e.to_string()
            .contains("reason is 2000 bytes; the limit is 1024"),
        "{e}"
    );
    let comment = Some("c".repeat(crate::protocol::MAX_COMMENT + 1));
    let e = r
        .one(
            Request::AllowAdd {
                target: t("198.51.100.7"),
                comment,
                force: false,
            },
            T0,
        )
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("comment is 257 bytes; the limit is 256"),
        "{e}"
    );
    assert!(r.ledger.blocks().is_empty());
    assert!(r.ledger.allowlist().origins(&t("198.51.100.7")).is_none());
}

#[test]
fn pending_requests_expire_unapproved() {
    let mut cfg = PolicyConfig::default();
    cfg.sources.insert(
        src("feed"),
        SourcePolicy {
            require_approval: Some(true),
            ..SourcePolicy::default()
        },
    );
    let mut l = ledger_with(cfg, 100);
    let r = block(&mut l, req("192.0.2.1", "feed", Some(60)), T0).unwrap();
    assert_eq!(r.outcome, Outcome::Pending);
    assert_eq!(l.next_deadline(), Some(T0 + ms(3_600_000)));
    let mut c = Change::default();
    l.expire(&mut c, T0 + ms(3_600_000), 10);
    assert!(l.pending().is_empty());
    assert_eq!(c.events[0].action, Action::PendingExpire);
}

// --- rounds: commit, undo, kernel ---------------------------------------------------------

#[test]
fn an_accepted_block_says_when_its_entry_went_into_the_kernel_before_the_commit_and_a_refused_one_says_nothing()
 {
    let mut r = Rig::new(ledger());
    let answered = r.round(
        vec![
            Request::Block(req("192.0.2.1", "cli", Some(60))),
            Request::Block(req("198.51.0.0/16", "wazuh", Some(60))),
        ],
        T0,
    );
    assert!(answered.answers[0].is_ok() && answered.answers[1].is_err());
    let written = answered.in_kernel[0].expect("the block's entry was written");
    assert!(
        written <= r.store.began[0],
        "enforce first: the entry ({written:?}) is in before the commit ({:?})",
        r.store.began[0]
    );
    assert_eq!(answered.in_kernel[1], None, "a refusal wrote nothing");
    r.store.fail = true;
    let failed = r.round(vec![Request::Block(req("192.0.2.2", "cli", Some(60)))], T0);
    assert_eq!(
        failed.in_kernel,
        vec![None],
        "a block the store refused was taken out again"
    );
}

#[test]
fn a_failed_commit_rolls_the_ledger_back_and_fails_only_the_writes() {
    let cfg = PolicyConfig {
        repeat_offenders: Some(crate::policy::RepeatOffenders {
            window: "1d".parse().unwrap(),
            ttls: vec!["10m".parse().unwrap(), "1h".parse().unwrap()],
        }),
        ..PolicyConfig::default()
    };
    let mut r = Rig::new(ledger_with(cfg, 100));
    r.one(Request::Block(req("192.0.2.1", "cli", Some(60))), T0)
        .unwrap();
    r.store.fail = true;
    let answered = r.round(
        vec![
            Request::Block(req("192.0.2.1", "cli", Some(6000))),
            Request::Block(req("192.0.2.2", "cli", Some(60))),
            Request::Block(req("198.51.0.0/16", "wazuh", Some(60))),
        ],
        T0 + ms(1000),
    );
    assert!(matches!(answered.answers[0], Err(Refusal::Store(_))));
    assert!(matches!(answered.answers[1], Err(Refusal::Store(_))));
    assert!(
        matches!(
            answered.answers[2],
            Err(Refusal::Policy {
                rule: Rule::Scope,
                ..
            })
        ),
        "a refusal stays a refusal"
    );
    assert!(
        answered.events.iter().all(|e| e.action == Action::Refuse),
        "only refusals are audited"
    );
    // Everything is as before the round: blocks, deadlines, map use, offense history.
    assert_eq!(r.ledger.blocks().len(), 1);
    assert_eq!(
        source_block(&r.ledger, "192.0.2.1", "cli")
            .unwrap()
            .expires_ms,
        Some(T0 + ms(60_000))
    );
    assert_eq!(r.ledger.next_block_deadline(), Some(T0 + ms(60_000)));
    assert_eq!(r.ledger.capacity().used(MapId::BlockV4), 1);
    assert_eq!(r.ledger.offense_count(&t("192.0.2.2"), T0 + ms(1000)), 0);
    assert!(
        !r.kernel.blocks.contains_key(&t("192.0.2.2")),
        "nothing reached the kernel"
    );
    r.store.fail = false;
    let Reply::Block(b) = r
        .one(
            Request::Block(req("192.0.2.2", "cli", Some(60))),
            T0 + ms(2000),
        )
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(b.outcome, Outcome::Created);
}

/// A fake kernel shared with a store that looks at it (a large round commits on a thread of its
/// own, so the store must be `Send`).
#[derive(Clone, Default)]
struct SharedKernel(Arc<std::sync::Mutex<FakeKernel>>);

impl SharedKernel {
    fn borrow(&self) -> std::sync::MutexGuard<'_, FakeKernel> {
        self.0.lock().expect("the fake kernel's lock")
    }
}

impl KernelMap for SharedKernel {
    fn get_block(&self, target: &Target) -> Result<Option<BlockValue>, MapsError> {
        self.borrow().get_block(target)
    }

    fn insert_block(&mut self, target: &Target, value: &BlockValue) -> Result<(), MapsError> {
        self.borrow().insert_block(target, value)
    }

    fn remove_block(&mut self, target: &Target) -> Result<bool, MapsError> {
        self.borrow().remove_block(target)
    }

    fn insert_allow(&mut self, target: &Target, origin: u32) -> Result<(), MapsError> {
        self.borrow().insert_allow(target, origin)
    }

    fn remove_allow(&mut self, target: &Target) -> Result<bool, MapsError> {
        self.borrow().remove_allow(target)
    }
}

/// A store that notes, at each commit, the blocks the kernel holds at that moment.
struct WatchingStore {
    kernel: SharedKernel,
    seen: Vec<Vec<Target>>,
    fail: bool,
}

impl round::BlockStore for WatchingStore {
    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        self.seen
            .push(self.kernel.borrow().blocks.keys().copied().collect());
        let mut inner = MemStore {
            fail: self.fail,
            ..MemStore::default()
        };
        inner.commit(ops)
    }
}

#[test]
fn a_large_round_whose_commit_fails_leaves_none_of_its_blocks_in_the_kernel() {
    // Enough blocks that the round commits on a thread of its own while the kernel is written.
    let n: u32 = 600;
    let items: Vec<BatchItem> = ["192.0.2", "198.51.100", "203.0.113"]
        .iter()
        .flat_map(|net| (1..=n / 3).map(move |i| t(&format!("{net}.{i}"))))
        .map(|target| BatchItem {
            target,
            ttl_secs: None,
        })
        .collect();
    let batch = |items: Vec<BatchItem>| {
        Request::BlockBatch(BatchRequest {
            items,
            ttl_secs: Some(600),
            source: src("cli"),
            reason: Reason::text("feed"),
            shadow: false,
            scope: Default::default(),
        })
    };
    let kernel = SharedKernel::default();
    let mut store = WatchingStore {
        kernel: kernel.clone(),
        seen: Vec::new(),
        fail: true,
    };
    let mut l = ledger_with(PolicyConfig::default(), 1000);
    let mut k = kernel.clone();
    let w = |r| vec![Write::new(r, Caller::internal("test"))];
    let answered = round::run(&mut l, &mut store, &mut k, w(batch(items.clone())), T0);
    assert!(matches!(answered.answers[0], Err(Refusal::Store(_))));
    assert!(
        kernel.borrow().blocks.is_empty(),
        "every early entry taken out again"
    );
    assert!(l.blocks().is_empty(), "the ledger is as before");
    store.fail = false;
    let answered = round::run(&mut l, &mut store, &mut k, w(batch(items)), T0);
    assert!(answered.answers[0].is_ok(), "{:?}", answered.answers[0]);
    assert_eq!(
        kernel.borrow().blocks.len(),
        n as usize,
        "all in force after it"
    );
    assert_eq!(l.blocks().len(), n as usize);
}

#[test]
fn a_block_is_in_the_kernel_before_its_commit_and_an_unblock_leaves_after_its_commit() {
    let kernel = SharedKernel::default();
    let mut store = WatchingStore {
        kernel: kernel.clone(),
        seen: Vec::new(),
        fail: false,
    };
    let mut l = ledger();
    let mut run = |store: &mut WatchingStore, request| {
        let mut k = kernel.clone();
        let w = vec![Write::new(request, Caller::internal("test"))];
        round::run(&mut l, store, &mut k, w, T0).answers.remove(0)
    };
    let unblock = || Request::Unblock {
        target: t("192.0.2.1"),
        source: None,
        all: true,
        scope: Default::default(),
    };
    run(
        &mut store,
        Request::Block(req("192.0.2.1", "cli", Some(600))),
    )
    .unwrap();
    assert_eq!(
        store.seen[0],
        [t("192.0.2.1")],
        "in force before the commit"
    );
    // An unblock whose commit fails never took the block out of force.
    store.fail = true;
    run(&mut store, unblock()).unwrap_err();
    assert_eq!(store.seen[1], [t("192.0.2.1")]);
    assert_eq!(kernel.borrow().blocks.len(), 1, "the block stays in force");
    assert_eq!(
        kernel.borrow().writes,
        1,
        "nothing was removed and put back"
    );
    // One that commits: out of the kernel only after its commit.
    store.fail = false;
    run(&mut store, unblock()).unwrap();
    assert_eq!(store.seen[2], [t("192.0.2.1")]);
    assert!(kernel.borrow().blocks.is_empty());
    // A new block whose commit fails: in force during the commit, out again after it.
    store.fail = true;
    run(
        &mut store,
        Request::Block(req("192.0.2.2", "cli", Some(600))),
    )
    .unwrap_err();
    assert_eq!(store.seen[3], [t("192.0.2.2")]);
    assert!(kernel.borrow().blocks.is_empty(), "taken out again");
}

#[test]
fn a_failed_commit_puts_back_pending_requests() {
    let mut cfg = PolicyConfig::default();
    cfg.sources.insert(
        src("feed"),
        SourcePolicy {
            require_approval: Some(true),
            ..SourcePolicy::default()
        },
    );
    let mut r = Rig::new(ledger_with(cfg, 100));
    r.one(Request::Block(req("192.0.2.1", "feed", Some(60))), T0)
        .unwrap();
    r.store.fail = true;
    assert!(r.one(Request::Approve { id: 1 }, T0).is_err());
    assert!(
        r.one(Request::Block(req("192.0.2.2", "feed", Some(60))), T0)
            .is_err()
    );
    assert_eq!(
        r.ledger.pending().keys().copied().collect::<Vec<_>>(),
        vec![1]
    );
    assert!(r.ledger.blocks().is_empty());
    r.store.fail = false;
    let Reply::Block(b) = r
        .one(Request::Block(req("192.0.2.2", "feed", Some(60))), T0)
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(b.pending_id, Some(2), "ids are not reused after an undo");
}

#[test]
fn a_kernel_failure_is_an_internal_error_but_the_block_is_stored() {
    let mut r = Rig::new(ledger());
    r.kernel.fail = true;
    let e = r
        .one(Request::Block(req("192.0.2.1", "cli", Some(60))), T0)
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Internal);
    assert!(
        e.to_body().message.contains("retried at the next start"),
        "{}",
        e.to_body().message
    );
    assert_eq!(r.store.commits.len(), 1);
    assert_eq!(r.ledger.blocks().len(), 1);
}

#[test]
fn a_round_shares_one_commit_and_skips_kernel_writes_that_are_current() {
    let mut r = Rig::new(ledger());
    let answered = r.round(
        vec![
            Request::Block(req("192.0.2.1", "cli", Some(600))),
            Request::Block(req("192.0.2.2", "cli", Some(600))),
        ],
        T0,
    );
    assert!(answered.answers.iter().all(Result::is_ok));
    assert_eq!((r.store.commits.len(), r.kernel.writes), (1, 2));
    // Same deadline again: stored (updated_ms), but the kernel entry is already right.
    r.one(Request::Block(req("192.0.2.1", "cli", Some(600))), T0)
        .unwrap();
    assert_eq!((r.store.commits.len(), r.kernel.writes), (2, 2));
}

// --- capacity ----------------------------------------------------------------------------

#[test]
fn a_full_map_refuses_new_targets_but_still_extends_existing_ones() {
    let mut r = Rig::new(ledger_with(PolicyConfig::default(), 2));
    r.one(Request::Block(req("192.0.2.1", "cli", Some(60))), T0)
        .unwrap();
    r.one(Request::Block(req("192.0.2.2", "cli", Some(60))), T0)
        .unwrap();
    let e = r
        .one(Request::Block(req("192.0.2.3", "cli", Some(60))), T0)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Refusal::MapFull {
                map: MapId::BlockV4,
                capacity: 2
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.code(), ErrorCode::MapFull);
    assert!(
        r.one(Request::Block(req("192.0.2.1", "wazuh", Some(60))), T0)
            .is_ok(),
        "another source of a blocked target fits"
    );
    assert!(
        r.one(Request::Block(req("2001:db8::1", "cli", Some(60))), T0)
            .is_ok(),
        "other maps have room"
    );
    r.one(
        Request::Unblock {
            target: t("192.0.2.2"),
            source: None,
            all: true,
            scope: Default::default(),
        },
        T0,
    )
    .unwrap();
    assert!(
        r.one(Request::Block(req("192.0.2.3", "cli", Some(60))), T0)
            .is_ok(),
        "room again after an unblock"
    );
}

// --- policy through the ledger -------------------------------------------------------------

#[test]
fn a_refusal_names_its_rule_and_is_audited() {
    let mut l = ledger();
    l.init_allow(t("192.0.2.0/28"), AllowOrigin::Config);
    let mut c = Change::default();
    let e = l
        .block(&mut c, req("192.0.2.5", "wazuh", Some(60)), T0)
        .unwrap_err();
    assert!(matches!(
        e,
        Refusal::Policy {
            rule: Rule::Allowlist,
            ..
        }
    ));
    assert_eq!(e.code(), ErrorCode::Refused);
    assert!(c.ops.is_empty());
    assert_eq!(c.events[0].action, Action::Refuse);
}

#[test]
fn an_open_breaker_holds_under_reblocks() {
    // Issue 10, item 1: re-blocks by a source whose breaker is open must not enforce.
    let mut cfg = PolicyConfig::default();
    cfg.sources.insert(
        src("noisy"),
        SourcePolicy {
            rate_limit: Some(2),
            on_rate_limit: Some(BreakerAction::Shadow),
            ..SourcePolicy::default()
        },
    );
    let mut r = Rig::new(ledger_with(cfg, 100));
    for i in 1..=3 {
        r.one(
            Request::Block(req(&format!("203.0.113.{i}"), "noisy", Some(600))),
            T0,
        )
        .unwrap();
    }
    assert_eq!(r.kernel_mode("203.0.113.3"), Some(MODE_SHADOW));
    let Reply::Block(again) = r
        .one(
            Request::Block(req("203.0.113.3", "noisy", Some(1200))),
            T0 + ms(1000),
        )
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (again.outcome, again.mode),
        (Outcome::Extended, Mode::Shadow)
    );
    assert_eq!(r.kernel_mode("203.0.113.3"), Some(MODE_SHADOW));
    // Blocks made before the breaker opened stay enforced (never demoted).
    r.one(
        Request::Block(req("203.0.113.1", "noisy", Some(1200))),
        T0 + ms(1000),
    )
    .unwrap();
    assert_eq!(r.kernel_mode("203.0.113.1"), Some(MODE_ENFORCE));
}

#[test]
fn an_open_refusing_breaker_refuses_reblocks_too() {
    let mut cfg = PolicyConfig::default();
    cfg.sources.insert(
        src("noisy"),
        SourcePolicy {
            rate_limit: Some(1),
            on_rate_limit: Some(BreakerAction::Refuse),
            ..SourcePolicy::default()
        },
    );
    let mut l = ledger_with(cfg, 100);
    block(&mut l, req("203.0.113.1", "noisy", Some(600)), T0).unwrap();
    let e = block(&mut l, req("203.0.113.2", "noisy", Some(600)), T0).unwrap_err();
    assert!(matches!(
        e,
        Refusal::Policy {
            rule: Rule::Breaker,
            ..
        }
    ));
    let e = block(&mut l, req("203.0.113.1", "noisy", Some(6000)), T0).unwrap_err();
    assert!(matches!(
        e,
        Refusal::Policy {
            rule: Rule::Breaker,
            ..
        }
    ));
    assert_eq!(
        source_block(&l, "203.0.113.1", "noisy").unwrap().expires_ms,
        Some(T0 + ms(600_000))
    );
}

#[test]
fn repeat_offenders_get_an_escalated_ttl() {
    let cfg = PolicyConfig {
        repeat_offenders: Some(crate::policy::RepeatOffenders {
            window: "1d".parse().unwrap(),
            ttls: vec!["10m".parse().unwrap(), "1h".parse().unwrap()],
        }),
        ..PolicyConfig::default()
    };
    let mut l = ledger_with(cfg, 100);
    block(&mut l, req("192.0.2.1", "wazuh", Some(60)), T0).unwrap();
    l.unblock(
        &mut Change::default(),
        t("192.0.2.1"),
        Some(src("wazuh")),
        false,
    )
    .unwrap();
    let r = block(&mut l, req("192.0.2.1", "wazuh", Some(60)), T0 + ms(1000)).unwrap();
    assert_eq!(r.expires_ms, Some(T0 + ms(1000) + ms(3_600_000)));
    assert!(r.notes[0].contains("repeat offender"), "{:?}", r.notes);
}

// --- approval, promotion, batches, allowlist ---------------------------------------------

#[test]
fn an_approved_block_applies_and_leaves_the_pending_list() {
    let mut cfg = PolicyConfig::default();
    cfg.approval.broader_than_v4 = Some(28);
    let mut r = Rig::new(ledger_with(cfg, 100));
    let Reply::Block(p) = r
        .one(Request::Block(req("198.51.100.0/24", "cli", Some(60))), T0)
        .unwrap()
    else {
        panic!()
    };
    assert_eq!((p.outcome, p.pending_id), (Outcome::Pending, Some(1)));
    assert!(r.kernel.blocks.is_empty());
    let Reply::Block(b) = r.one(Request::Approve { id: 1 }, T0 + ms(10)).unwrap() else {
        panic!()
    };
    assert_eq!(b.outcome, Outcome::Created);
    assert!(r.ledger.pending().is_empty());
    assert_eq!(r.kernel_mode("198.51.100.0/24"), Some(MODE_ENFORCE));
    assert_eq!(
        r.one(Request::Approve { id: 1 }, T0).unwrap_err().code(),
        ErrorCode::NotFound
    );
}

#[test]
fn a_rejected_block_is_dropped_and_a_refused_approval_stays_pending() {
    let mut cfg = PolicyConfig::default();
    cfg.approval.broader_than_v4 = Some(28);
    let mut l = ledger_with(cfg, 100);
    block(&mut l, req("198.51.100.0/24", "cli", Some(60)), T0).unwrap();
    block(&mut l, req("203.0.113.0/24", "cli", Some(60)), T0).unwrap();
    assert!(matches!(
        l.reject(&mut Change::default(), 1),
        Ok(Reply::Rejected { id: 1 })
    ));
    l.init_allow(t("203.0.113.9"), AllowOrigin::Config);
    let e = l.approve(&mut Change::default(), 2, T0).unwrap_err();
    assert!(matches!(
        e,
        Refusal::Policy {
            rule: Rule::Allowlist,
            ..
        }
    ));
    assert_eq!(l.pending().keys().copied().collect::<Vec<_>>(), vec![2]);
}

#[test]
fn promote_enforces_shadow_blocks_and_says_when_there_are_none() {
    let mut r = Rig::new(ledger());
    let mut shadow = req("192.0.2.1", "wazuh", Some(60));
    shadow.shadow = true;
    r.one(Request::Block(shadow), T0).unwrap();
    assert_eq!(r.kernel_mode("192.0.2.1"), Some(MODE_SHADOW));
    let promote = Request::Promote {
        target: None,
        source: Some(src("wazuh")),
    };
    let Reply::Promote { promoted } = r.one(promote.clone(), T0).unwrap() else {
        panic!()
    };
    assert_eq!(promoted, vec![(t("192.0.2.1"), src("wazuh"))]);
    assert_eq!(r.kernel_mode("192.0.2.1"), Some(MODE_ENFORCE));
    assert_eq!(r.one(promote, T0).unwrap_err().code(), ErrorCode::NotFound);
}

#[test]
fn a_batch_reports_applied_pending_and_failed_items() {
    let mut cfg = PolicyConfig::default();
    cfg.approval.broader_than_v4 = Some(28);
    let mut r = Rig::new(ledger_with(cfg, 100));
    let item = |s: &str| BatchItem {
        target: t(s),
        ttl_secs: None,
    };
    let batch = BatchRequest {
        items: vec![
            item("192.0.2.1"),
            item("198.51.0.0/16"),
            item("192.0.2.2"),
            item("203.0.113.0/24"),
        ],
        ttl_secs: Some(60),
        source: src("cli"),
        reason: Reason::text("feed"),
        shadow: false,
        scope: Default::default(),
    };
    let Reply::BlockBatch {
        applied,
        pending,
        failed,
    } = r.one(Request::BlockBatch(batch), T0).unwrap()
    else {
        panic!()
    };
    assert_eq!((applied, pending), (2, 1));
    assert_eq!(
        (failed.len(), failed[0].index, failed[0].error.code),
        (1, 1, ErrorCode::Refused)
    );
    assert_eq!(r.kernel.blocks.len(), 2);
    assert_eq!(r.store.commits.len(), 1, "one commit for the whole batch");
}

#[test]
fn the_allowlist_goes_to_the_kernel_and_config_entries_cannot_be_removed() {
    let mut r = Rig::new(ledger());
    r.ledger.init_allow(t("192.0.2.0/24"), AllowOrigin::Config);
    r.one(
        Request::AllowAdd {
            target: t("198.51.100.7"),
            comment: None,
            force: false,
        },
        T0,
    )
    .unwrap();
    assert!(r.kernel.allows.contains_key(&t("198.51.100.7")));
    assert!(
        r.one(Request::Block(req("198.51.100.7", "cli", Some(60))), T0)
            .is_err()
    );
    let e = r
        .one(
            Request::AllowRemove {
                target: t("192.0.2.0/24"),
            },
            T0,
        )
        .unwrap_err();
    assert!(matches!(e, Refusal::NotRemovable { .. }));
    assert_eq!(e.code(), ErrorCode::Refused);
    r.one(
        Request::AllowRemove {
            target: t("198.51.100.7"),
        },
        T0,
    )
    .unwrap();
    assert!(r.kernel.allows.is_empty());
}

#[test]
fn allowlist_changes_insert_before_they_remove_so_nothing_protected_is_ever_unprotected() {
    let mut r = Rig::new(ledger());
    let (wide, narrow) = ("198.51.100.0/24", "198.51.100.0/25");
    r.one(
        Request::AllowAdd {
            target: t(wide),
            comment: None,
            force: false,
        },
        T0,
    )
    .unwrap();
    r.kernel.allow_log.clear();
    // Narrowing the allowlist in one round: the /25 must be in before the /24 goes.
    let answers = r.round(
        vec![
            Request::AllowRemove { target: t(wide) },
            Request::AllowAdd {
                target: t(narrow),
                comment: None,
                force: false,
            },
        ],
        T0,
    );
    assert!(answers.answers.iter().all(Result::is_ok));
    assert_eq!(
        r.kernel.allow_log,
        [format!("+{narrow}"), format!("-{wide}")]
    );
    // Removed and added again in one round: the prefix is never out of the kernel.
    r.kernel.allow_log.clear();
    r.round(
        vec![
            Request::AllowRemove { target: t(narrow) },
            Request::AllowAdd {
                target: t(narrow),
                comment: None,
                force: false,
            },
        ],
        T0,
    );
    assert!(
        !r.kernel.allow_log.iter().any(|op| op.starts_with('-')),
        "{:?}",
        r.kernel.allow_log
    );
    assert!(r.kernel.allows.contains_key(&t(narrow)));
}

#[test]
fn allowlisting_a_prefix_broader_than_the_scope_guard_needs_force() {
    let mut r = Rig::new(ledger());
    r.one(Request::Block(req("198.51.100.7", "cli", Some(60))), T0)
        .unwrap();
    for broad in ["0.0.0.0/0", "198.51.0.0/16", "::/0", "2001:db8::/32"] {
        let e = r
            .one(
                Request::AllowAdd {
                    target: t(broad),
                    comment: None,
                    force: false,
                },
                T0,
            )
            .unwrap_err();
        assert!(
            matches!(
                e,
                Refusal::Policy {
                    rule: Rule::Scope,
                    ..
                }
            ),
            "{broad}: {e}"
        );
        assert!(e.to_string().contains("--force"), "{e}");
    }
    assert!(
        r.kernel.allows.is_empty() && r.ledger.allowlist().is_empty(),
        "nothing changed"
    );
    assert!(
        r.store
            .commits
            .iter()
            .all(|ops| !ops.iter().any(|op| matches!(op, StoreOp::PutAllow(..))))
    );
    r.one(
        Request::AllowAdd {
            target: t("198.51.100.0/24"),
            comment: None,
            force: false,
        },
        T0,
    )
    .unwrap();
    r.one(
        Request::AllowAdd {
            target: t("0.0.0.0/0"),
            comment: None,
            force: true,
        },
        T0,
    )
    .unwrap();
    assert!(r.kernel.allows.contains_key(&t("0.0.0.0/0")));
}

#[test]
fn unspecified_and_multicast_targets_are_refused_as_invalid() {
    let mut r = Rig::new(ledger());
    for bad in ["0.0.0.0", "::", "224.0.0.1", "255.255.255.255"] {
        let e = r
            .one(Request::Block(req(bad, "cli", Some(60))), T0)
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidRequest, "{bad}");
        assert!(e.to_string().contains("is not a block target"), "{e}");
    }
    assert!(r.ledger.blocks().is_empty());
}

fn with_id(request: Request, id: &str) -> Write {
    Write {
        id: Some(id.parse().unwrap()),
        ..Write::new(request, Caller::internal("test"))
    }
}

fn replayed(request: Request, id: &str, spooled_ms: WallMs, file: &str) -> Write {
    Write {
        replay: Some(Replay {
            spooled_ms,
            file: file.to_owned(),
        }),
        ..with_id(request, id)
    }
}

impl Rig {
    fn writes(&mut self, writes: Vec<Write>, now: WallMs) -> round::Answered {
        round::run(
            &mut self.ledger,
            &mut self.store,
            &mut self.kernel,
            writes,
            now,
        )
    }
}

fn expires(answer: &Result<Reply, Refusal>) -> Option<WallMs> {
    match answer {
        Ok(Reply::Block(b)) => b.expires_ms,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_request_id_is_applied_once_and_its_duplicates_get_the_first_answer() {
    let mut r = Rig::new(ledger());
    let first = r.writes(
        vec![with_id(
            Request::Block(req("192.0.2.1", "wazuh", Some(60))),
            "a",
        )],
        T0,
    );
    // The same id again, in a later round and twice within one round, with another TTL.
    let again = r.writes(
        vec![
            with_id(Request::Block(req("192.0.2.1", "wazuh", Some(6000))), "a"),
            with_id(Request::Block(req("192.0.2.1", "wazuh", Some(6000))), "a"),
        ],
        T0 + ms(1000),
    );
    assert_eq!(expires(&again.answers[0]), expires(&first.answers[0]));
    assert_eq!(expires(&again.answers[1]), Some(T0 + ms(60_000)));
    assert!(
        again.events.is_empty(),
        "a duplicate is not audited as a block"
    );
    assert_eq!(
        source_block(&r.ledger, "192.0.2.1", "wazuh")
            .unwrap()
            .expires_ms,
        Some(T0 + ms(60_000))
    );
    // The id went to the store with the block, in one commit.
    assert!(
        r.store.commits[0]
            .iter()
            .any(|op| matches!(op, StoreOp::PutRequest(a) if a.id.as_str() == "a"))
    );
    assert!(
        r.store.commits[0]
            .iter()
            .any(|op| matches!(op, StoreOp::Put(_)))
    );
    // Another id is another request; no id is never a duplicate.
    let other = r.writes(
        vec![with_id(
            Request::Block(req("192.0.2.1", "wazuh", Some(6000))),
            "b",
        )],
        T0 + ms(2000),
    );
    assert_eq!(
        expires(&other.answers[0]),
        Some(T0 + ms(2000) + ms(6_000_000))
    );
    assert_eq!(r.ledger.applied_ids().len(), 2);
    // A refused request is not remembered: sent again, it meets the rules again.
    let refused = r.writes(
        vec![with_id(
            Request::Block(req("198.51.0.0/16", "wazuh", Some(60))),
            "c",
        )],
        T0,
    );
    assert!(refused.answers[0].is_err());
    assert_eq!(r.ledger.applied_ids().len(), 2);
}

/// Ids are each caller's own: a second caller sending an id the first one used is another
/// request (applied, with its own answer), not a duplicate answered with the first caller's
/// reply; each caller's own resend is still a duplicate.
#[test]
fn a_request_id_is_a_duplicate_only_for_the_caller_that_used_it() {
    let mut r = Rig::new(ledger());
    let as_caller = |request: Request, uid: u32| Write {
        id: Some("same-id".parse().unwrap()),
        ..Write::new(request, Caller::peer(uid, None, &[]))
    };
    let first = r.writes(
        vec![as_caller(
            Request::Block(req("192.0.2.1", "wazuh", Some(60))),
            998,
        )],
        T0,
    );
    assert!(first.answers[0].is_ok());
    let other = r.writes(
        vec![as_caller(
            Request::Block(req("192.0.2.2", "wazuh", Some(60))),
            1001,
        )],
        T0 + ms(1000),
    );
    assert!(
        matches!(&other.answers[0], Ok(Reply::Block(b)) if b.target.to_string() == "192.0.2.2"),
        "another caller's id is not a replay of the first: {:?}",
        other.answers[0]
    );
    assert!(
        source_block(&r.ledger, "192.0.2.2", "wazuh").is_some(),
        "the second caller's block was applied"
    );
    let resent = r.writes(
        vec![as_caller(
            Request::Block(req("192.0.2.1", "wazuh", Some(6000))),
            998,
        )],
        T0 + ms(2000),
    );
    assert_eq!(
        expires(&resent.answers[0]),
        Some(T0 + ms(60_000)),
        "the first caller's resend is a duplicate"
    );
    assert_eq!(r.ledger.applied_ids().len(), 2);
}

#[test]
fn a_failed_commit_forgets_the_ids_of_its_round() {
    let mut r = Rig::new(ledger());
    r.store.fail = true;
    let failed = r.writes(
        vec![with_id(
            Request::Block(req("192.0.2.1", "wazuh", Some(60))),
            "a",
        )],
        T0,
    );
    assert!(matches!(failed.answers[0], Err(Refusal::Store(_))));
    assert!(r.ledger.applied_ids().is_empty());
    r.store.fail = false;
    let applied = r.writes(
        vec![with_id(
            Request::Block(req("192.0.2.1", "wazuh", Some(60))),
            "a",
        )],
        T0 + ms(1000),
    );
    assert_eq!(
        expires(&applied.answers[0]),
        Some(T0 + ms(1000) + ms(60_000)),
        "applied now, not answered from the failed round"
    );
}

#[test]
fn ids_are_forgotten_after_their_retention_and_loaded_back_until_then() {
    let mut r = Rig::new(ledger());
    r.writes(
        vec![with_id(
            Request::Block(req("192.0.2.1", "wazuh", Some(60))),
            "old",
        )],
        T0,
    );
    let week = REQUEST_ID_RETENTION.as_millis() as u64;
    r.writes(
        vec![with_id(
            Request::Block(req("192.0.2.2", "wazuh", Some(60))),
            "new",
        )],
        T0 + ms(week),
    );
    assert_eq!(r.ledger.applied_ids().len(), 1, "the week-old id went");
    assert!(
        r.store.commits[1]
            .iter()
            .any(|op| matches!(op, StoreOp::DeleteRequest(k) if k.id.as_str() == "old"))
    );
    // Loaded from the store at start: what is past its retention is handed back to delete.
    let stored: Vec<crate::store::AppliedRequest> = ["x", "y"]
        .iter()
        .zip([T0, T0 + ms(week)])
        .map(|(id, at)| crate::store::AppliedRequest {
            id: id.parse().unwrap(),
            uid: 0,
            applied_ms: at,
            reply: Reply::Rejected { id: 1 },
        })
        .collect();
    let mut fresh = ledger();
    let forgotten = fresh.load_requests(stored, T0 + ms(week) + ms(1));
    assert_eq!(
        forgotten.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        ["x"]
    );
    assert_eq!(fresh.applied_ids().len(), 1);
}

#[test]
fn a_spooled_backlog_is_charged_at_its_spool_times_and_each_refused_replay_names_its_file() {
    let mut cfg = PolicyConfig::default();
    cfg.sources.insert(
        src("wazuh"),
        SourcePolicy {
            rate_limit: Some(3),
            on_rate_limit: Some(BreakerAction::Refuse),
            ..SourcePolicy::default()
        },
    );
    let now = T0 + ms(20 * MIN);
    // Eight triggers spooled over ten minutes, replayed in one round now: all applied.
    let mut r = Rig::new(ledger_with(cfg.clone(), 100));
    let spread: Vec<Write> = (0..8u64)
        .map(|i| {
            replayed(
                Request::Block(req(&format!("192.0.2.{i}"), "wazuh", Some(3600))),
                &format!("s{i}"),
                T0 + ms(i * 75_000),
                &format!("f{i}"),
            )
        })
        .collect();
    let answered = r.writes(spread, now);
    assert!(
        answered.answers.iter().all(Result::is_ok),
        "{:?}",
        answered.answers
    );
    assert!(r.ledger.policy_mut().open_breakers(now, now).is_empty());
    assert!(
        answered
            .events
            .iter()
            .all(|e| e.spool_file.is_some() && e.spooled_ms.is_some()),
        "every line names its file"
    );
    // Six within five seconds: three applied, three refused, each refusal audited with its
    // file, spool time and reason.
    let mut r = Rig::new(ledger_with(cfg, 100));
    let burst: Vec<Write> = (0..6u64)
        .map(|i| {
            let mut b = req(&format!("198.51.100.{i}"), "wazuh", Some(3600));
            b.reason = Reason::text(format!("alert {i}"));
            replayed(
                Request::Block(b),
                &format!("b{i}"),
                T0 + ms(i * 1000),
                &format!("file{i}.json"),
            )
        })
        .collect();
    let answered = r.writes(burst, now);
    assert!(answered.answers[..3].iter().all(Result::is_ok));
    assert!(answered.answers[3..].iter().all(|a| matches!(
        a,
        Err(Refusal::Policy {
            rule: Rule::Breaker,
            ..
        })
    )));
    let refusals: Vec<&Event> = answered
        .events
        .iter()
        .filter(|e| e.action == Action::Refuse)
        .collect();
    assert_eq!(refusals.len(), 3);
    for (i, e) in (3..6u64).zip(refusals) {
        assert_eq!(
            e.spool_file.as_deref(),
            Some(format!("file{i}.json").as_str())
        );
        assert_eq!(e.spooled_ms, Some(T0 + ms(i * 1000)));
        assert_eq!(
            e.reason.as_ref().unwrap().text.as_deref(),
            Some(format!("alert {i}").as_str())
        );
    }
    let open = r
        .ledger
        .policy_mut()
        .open_breakers(T0 + ms(4000), T0 + ms(4000));
    assert_eq!(
        open[0].opened_ms,
        T0 + ms(3000),
        "opened at the fourth trigger's spool time"
    );
    assert_eq!(
        open[0].closes_ms,
        T0 + ms(3000) + ms(10 * MIN),
        "and its cooldown runs from then"
    );
    // A replay no rule refuses but that cannot be done is audited too.
    let gone = r.writes(
        vec![replayed(
            Request::Unblock {
                target: t("203.0.113.9"),
                source: Some(src("wazuh")),
                all: false,
                scope: Default::default(),
            },
            "u",
            T0,
            "u.json",
        )],
        now,
    );
    assert!(matches!(gone.answers[0], Err(Refusal::NotFound(_))));
    assert_eq!(gone.events.len(), 1);
    assert_eq!(
        (gone.events[0].action, gone.events[0].spool_file.as_deref()),
        (Action::Refuse, Some("u.json"))
    );
}

#[test]
fn a_pending_block_remembers_who_asked() {
    let cfg = PolicyConfig {
        sources: [(
            src("review"),
            SourcePolicy {
                require_approval: Some(true),
                ..SourcePolicy::default()
            },
        )]
        .into(),
        ..PolicyConfig::default()
    };
    let mut r = Rig::new(ledger_with(cfg, 100));
    let wazuh = Caller::peer(998, Some("wazuh"), &[]);
    let mut c = Change::default();
    let applied = r.ledger.apply(
        &mut c,
        Write::new(
            Request::Block(req("198.51.100.7", "review", Some(60))),
            wazuh.clone(),
        ),
        T0,
    );
    let Ok(Reply::Block(reply)) = applied.answer else {
        panic!("{:?}", applied.answer)
    };
    let p = &r.ledger.pending()[&reply.pending_id.unwrap()];
    assert_eq!(p.requested_by.as_ref(), Some(&wazuh.id));
}

#[test]
fn every_audit_line_of_a_clients_request_names_the_caller_and_the_daemons_own_do_not() {
    let mut r = Rig::new(ledger());
    let alice = Caller::peer(1001, Some("alice"), &[(1001, "ops")]);
    let mut c = Change::default();
    r.ledger.apply(
        &mut c,
        Write::new(
            Request::Block(req("198.51.100.7", "cli", Some(60))),
            alice.clone(),
        ),
        T0,
    );
    r.ledger.apply(
        &mut c,
        Write::new(
            Request::Block(req("198.0.0.0/8", "cli", Some(60))),
            alice.clone(),
        ),
        T0,
    );
    r.ledger.apply(
        &mut c,
        Write::new(
            Request::Block(req("198.51.100.8", "crowdsec", Some(60))),
            Caller::internal("crowdsec"),
        ),
        T0,
    );
    let callers: Vec<_> = c
        .events
        .iter()
        .map(|e| (e.action, e.caller.as_ref().map(|c| c.id.uid)))
        .collect();
    assert_eq!(
        callers,
        [
            (Action::Block, Some(1001)),
            (Action::Refuse, Some(1001)),
            (Action::Block, None)
        ],
        "{:#?}",
        c.events
    );
}

// --- properties --------------------------------------------------------------------------

/// One step of a random history.
#[derive(Clone, Debug)]
enum Step {
    Block {
        target: u8,
        source: u8,
        ttl_min: u64,
        shadow: bool,
    },
    Unblock {
        target: u8,
        source: u8,
    },
    Promote {
        target: u8,
    },
    Advance {
        min: u64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..4, 0u8..3, 1u64..30, any::<bool>()).prop_map(|(target, source, ttl_min, shadow)| Step::Block {
            target,
            source,
            ttl_min,
            shadow
        }),
        1 => (0u8..4, 0u8..3).prop_map(|(target, source)| Step::Unblock { target, source }),
        1 => (0u8..4).prop_map(|target| Step::Promote { target }),
        2 => (1u64..20).prop_map(|min| Step::Advance { min }),
    ]
}

const SOURCES: [&str; 3] = ["cli", "wazuh", "fail2ban"];

fn target_n(n: u8) -> Target {
    t(&format!("203.0.113.{}", n + 1))
}

fn run_step(r: &mut Rig, s: &Step, now: &mut WallMs) {
    let request = match s {
        Step::Block {
            target,
            source,
            ttl_min,
            shadow,
        } => {
            let mut b = req(
                &target_n(*target).to_string(),
                SOURCES[*source as usize],
                Some(ttl_min * 60),
            );
            b.shadow = *shadow;
            Request::Block(b)
        }
        Step::Unblock { target, source } => Request::Unblock {
            target: target_n(*target),
            source: Some(src(SOURCES[*source as usize])),
            all: false,
            scope: Default::default(),
        },
        Step::Promote { target } => Request::Promote {
            target: Some(target_n(*target)),
            source: None,
        },
        Step::Advance { min } => {
            *now = *now + ms(min * MIN);
            r.reap(*now);
            return;
        }
    };
    // The answer is not what a step checks: the invariants after it are.
    let _answer = r.one(request, *now);
}

proptest! {
    /// After every step, each target's kernel entry enforces iff some live enforcing block of
    /// it exists, and a target has a kernel entry iff it has a live block.
    #[test]
    fn the_kernel_enforces_iff_a_live_enforcing_block_exists(steps in proptest::collection::vec(step(), 1..60)) {
        let mut r = Rig::new(ledger());
        let mut now = T0;
        for s in &steps {
            run_step(&mut r, s, &mut now);
            for n in 0..4 {
                let target = target_n(n);
                let live: Vec<&SourceBlock> = r
                    .ledger
                    .blocks()
                    .get(&target)
                    .map(|b| b.by_source.values().filter(|b| !b.is_expired(now)).collect())
                    .unwrap_or_default();
                let enforcing = live.iter().any(|b| b.mode == Mode::Enforce);
                let kernel = r.kernel.blocks.get(&target).map(|v| v.mode);
                prop_assert_eq!(kernel == Some(MODE_ENFORCE), enforcing, "target {} after {:?}", target, s);
                prop_assert_eq!(kernel.is_some(), !live.is_empty());
            }
        }
    }

    /// Whatever the order of re-blocks, expiry never removes a block before the latest end
    /// any of its requests asked for.
    #[test]
    fn expiry_never_removes_an_extended_block(ttls in proptest::collection::vec((0u64..10, 1u64..30), 1..10)) {
        let mut l = ledger();
        let mut latest = WallMs::EPOCH;
        for (at_min, ttl_min) in &ttls {
            let now = T0 + ms(at_min * MIN);
            block(&mut l, req("192.0.2.1", "wazuh", Some(ttl_min * 60)), now).unwrap();
            latest = latest.max(now + ms(ttl_min * MIN));
        }
        let mut c = Change::default();
        l.expire(&mut c, latest - ms(1), usize::MAX);
        prop_assert!(source_block(&l, "192.0.2.1", "wazuh").is_some());
        l.expire(&mut c, latest, usize::MAX);
        prop_assert!(l.blocks().is_empty());
    }

    /// An undone round leaves the ledger exactly as it was.
    #[test]
    fn an_undone_round_changes_nothing(steps in proptest::collection::vec(step(), 1..30), last in proptest::collection::vec(step(), 1..10)) {
        let mut r = Rig::new(ledger());
        let mut now = T0;
        for s in &steps {
            run_step(&mut r, s, &mut now);
        }
        let before = (r.ledger.blocks().clone(), r.ledger.next_deadline(), r.ledger.capacity().used(MapId::BlockV4), r.kernel.blocks.clone());
        r.store.fail = true;
        for s in last.iter().filter(|s| !matches!(s, Step::Advance { .. })) {
            run_step(&mut r, s, &mut now);
        }
        // The kernel too: what went in before the failed commit was taken out again.
        prop_assert_eq!(before, (r.ledger.blocks().clone(), r.ledger.next_deadline(), r.ledger.capacity().used(MapId::BlockV4), r.kernel.blocks.clone()));
    }
}

#[test]
fn the_refusal_of_a_batch_item_uses_the_protocol_body() {
    let mut l = ledger();
    let (reply, touched) = l.block_batch(
        &mut Change::default(),
        BatchRequest {
            items: vec![BatchItem {
                target: t("10.0.0.0/8"),
                ttl_secs: None,
            }],
            ttl_secs: None,
            source: src("wazuh"),
            reason: Reason::default(),
            shadow: false,
            scope: Default::default(),
        },
        T0,
    );
    let Reply::BlockBatch { failed, .. } = reply else {
        panic!()
    };
    assert!(touched.is_empty());
    assert!(
        failed[0]
            .error
            .message
            .starts_with("refused by policy rule `scope`"),
        "{}",
        failed[0].error.message
    );
}

// --- time: wall-clock steps, pending ids, the offense table ------------------------------

/// A rig whose ledger follows `clock` (boot `a`), as the engine's loop does each round.
fn clocked_rig(
    clock: &crate::time::fake::FakeClock,
) -> (Rig, crate::time::TimeKeeper<crate::time::fake::FakeClock>) {
    let keeper = crate::time::TimeKeeper::new(clock.clone(), "a".into());
    let mut r = Rig::new(ledger());
    r.ledger.set_time_base(keeper.base());
    (r, keeper)
}

/// What the engine does before each round: read the clock, follow it, store what moved.
fn follow(
    r: &mut Rig,
    keeper: &mut crate::time::TimeKeeper<crate::time::fake::FakeClock>,
) -> (WallMs, Option<ClockChange>) {
    let tick = keeper.tick();
    let change = r.ledger.follow_clock(&tick);
    if let Some(c) = &change {
        round::BlockStore::commit(&mut r.store, &c.ops).unwrap();
    }
    (tick.now, change)
}

const HOUR: u64 = 3_600_000;
const DAY: u64 = 24 * HOUR;

#[test]
fn a_forward_wall_clock_step_of_a_day_does_not_expire_a_one_hour_block() {
    let clock = crate::time::fake::FakeClock::new(T0, boot(10_000));
    let (mut r, mut keeper) = clocked_rig(&clock);
    let (now, _) = follow(&mut r, &mut keeper);
    r.one(Request::Block(req("192.0.2.1", "cli", Some(3600))), now)
        .unwrap();
    let boot_deadline = r.kernel.blocks[&t("192.0.2.1")].expires_ns;
    assert_eq!(
        boot_deadline,
        (10_000 + HOUR) * 1_000_000,
        "the kernel's deadline is on the boot clock"
    );

    clock.advance(MIN);
    clock.step_wall(DAY as i64);
    let (now, change) = follow(&mut r, &mut keeper);
    let change = change.expect("a step is handled");
    let event = change.event.expect("a step is audited");
    assert_eq!(event.action, Action::ClockJump);
    assert!(
        event.detail.as_deref().unwrap().contains("+86400.0 s"),
        "{event:?}"
    );
    assert!(
        change.ops.iter().any(|o| matches!(o, StoreOp::Put(_))),
        "the moved deadline is stored"
    );
    assert!(
        change
            .ops
            .iter()
            .any(|o| matches!(o, StoreOp::SetTimeBase(_))),
        "with its new base"
    );
    let steps = r.ledger.clock_steps();
    assert_eq!(steps.count, 1, "status counts the step");
    let last = steps.last.as_ref().unwrap();
    assert_eq!(
        (last.by_ms, last.moved, last.while_running, last.seen_ms),
        (DAY as i64, 1, true, now)
    );

    assert_eq!(r.reap(now), 0, "a day's step ends nothing");
    assert_eq!(
        source_block(&r.ledger, "192.0.2.1", "cli")
            .unwrap()
            .expires_ms,
        Some(now + ms(HOUR) - ms(MIN)),
        "59 min left, as before the step"
    );
    r.one(Request::Block(req("192.0.2.9", "cli", Some(60))), now)
        .unwrap();
    assert_eq!(
        r.kernel.blocks[&t("192.0.2.1")].expires_ns,
        boot_deadline,
        "the kernel's deadline did not move"
    );

    clock.advance(HOUR - MIN - 1000);
    let (now, change) = follow(&mut r, &mut keeper);
    assert!(change.is_none(), "no step, no slew: nothing to store");
    assert_eq!(
        r.ledger.clock_steps().count,
        1,
        "time passing is not a step"
    );
    assert_eq!(r.reap(now), 1, "the other block (1 min) ended");
    assert!(
        source_block(&r.ledger, "192.0.2.1", "cli").is_some(),
        "1 s before its hour"
    );
    clock.advance(1000);
    let (now, _) = follow(&mut r, &mut keeper);
    assert_eq!(r.reap(now), 1, "it ends after its hour");
}

#[test]
fn a_forward_step_never_carries_a_restored_block_past_max_ttl() {
    // Booted with the clock 40 days behind: a block with an hour left looks 40 days longer.
    let clock = crate::time::fake::FakeClock::new(T0 + ms(100 * DAY), boot(10_000));
    let (mut r, mut keeper) = clocked_rig(&clock);
    let (now, _) = follow(&mut r, &mut keeper);
    let restored = Record {
        target: t("192.0.2.1"),
        block: SourceBlock {
            source: src("cli"),
            reason: Default::default(),
            created_ms: now,
            updated_ms: now,
            expires_ms: Some(now + ms(40 * DAY) + ms(HOUR)),
            mode: Mode::Enforce,
            scope: Default::default(),
        },
    };
    assert!(r.ledger.load_blocks(vec![restored], now).is_empty());
    r.one(Request::Block(req("192.0.2.2", "cli", Some(3600))), now)
        .unwrap();
    // NTP steps it right.
    clock.step_wall(40 * DAY as i64);
    let (now, change) = follow(&mut r, &mut keeper);
    assert!(change.unwrap().event.is_some());
    let max_ttl = 30 * DAY;
    assert_eq!(
        source_block(&r.ledger, "192.0.2.1", "cli")
            .unwrap()
            .expires_ms,
        Some(now + ms(max_ttl)),
        "the step is not kept as extra time past max_ttl"
    );
    assert_eq!(
        source_block(&r.ledger, "192.0.2.2", "cli")
            .unwrap()
            .expires_ms,
        Some(now + ms(HOUR)),
        "a block made under the wrong clock keeps its hour"
    );
}

#[test]
fn a_backward_step_neither_lengthens_a_block_nor_a_pending_request() {
    let clock = crate::time::fake::FakeClock::new(T0 + ms(2 * DAY), boot(10_000));
    let (mut r, mut keeper) = clocked_rig(&clock);
    let (now, _) = follow(&mut r, &mut keeper);
    r.one(Request::Block(req("192.0.2.1", "cli", Some(3600))), now)
        .unwrap();
    clock.step_wall(-(DAY as i64));
    let (now, change) = follow(&mut r, &mut keeper);
    assert!(change.unwrap().event.is_some());
    assert_eq!(
        source_block(&r.ledger, "192.0.2.1", "cli")
            .unwrap()
            .expires_ms,
        Some(now + ms(HOUR))
    );
    clock.advance(HOUR);
    let (now, _) = follow(&mut r, &mut keeper);
    assert_eq!(
        r.reap(now),
        1,
        "ends an hour after it began, not a day later"
    );
}

#[test]
fn a_slow_slew_moves_the_base_but_no_deadline_and_is_not_audited() {
    let clock = crate::time::fake::FakeClock::new(T0, boot(10_000));
    let (mut r, mut keeper) = clocked_rig(&clock);
    let (now, _) = follow(&mut r, &mut keeper);
    r.one(Request::Block(req("192.0.2.1", "cli", Some(7200))), now)
        .unwrap();
    clock.advance(HOUR);
    clock.step_wall(300); // 83 ppm over the hour
    let (_, change) = follow(&mut r, &mut keeper);
    let change = change.expect("the base follows a slew past 250 ms");
    assert!(change.event.is_none());
    assert!(
        matches!(change.ops[..], [StoreOp::SetTimeBase(_)]),
        "{:?}",
        change.ops
    );
    assert_eq!(
        source_block(&r.ledger, "192.0.2.1", "cli")
            .unwrap()
            .expires_ms,
        Some(T0 + ms(2 * HOUR))
    );
}

#[test]
fn the_next_pending_id_is_stored_and_never_reused() {
    let cfg = PolicyConfig {
        sources: [(
            src("manual"),
            SourcePolicy {
                require_approval: Some(true),
                ..SourcePolicy::default()
            },
        )]
        .into(),
        ..PolicyConfig::default()
    };
    let mut r = Rig::new(ledger_with(cfg.clone(), 100));
    for target in ["192.0.2.1", "192.0.2.2"] {
        r.one(Request::Block(req(target, "manual", Some(60))), T0)
            .unwrap();
    }
    r.one(Request::Reject { id: 2 }, T0).unwrap();
    let stored_next = r
        .store
        .commits
        .iter()
        .flatten()
        .filter_map(|o| {
            if let StoreOp::SetNextPending(n) = o {
                Some(*n)
            } else {
                None
            }
        })
        .next_back();
    assert_eq!(stored_next, Some(3));
    // A restart: the store gives back pending block 1 and the next id.
    let mut again = ledger_with(cfg, 100);
    again.load_side(
        r.ledger.pending().values().cloned().collect(),
        vec![],
        stored_next,
    );
    let p = again
        .block(
            &mut Change::default(),
            req("192.0.2.3", "manual", Some(60)),
            T0,
        )
        .unwrap();
    assert_eq!(p.pending_id, Some(3), "not 2, the rejected block's id");
    // A store from before the id was kept: after the highest stored id.
    let mut old = ledger();
    old.load_side(r.ledger.pending().values().cloned().collect(), vec![], None);
    assert_eq!(old.next_pending, 2);
}

fn offenders(window: &str) -> Ledger {
    ledger_with(
        PolicyConfig {
            repeat_offenders: Some(crate::policy::RepeatOffenders {
                window: window.parse().unwrap(),
                ttls: vec!["10m".parse().unwrap(), "1h".parse().unwrap()],
            }),
            ..PolicyConfig::default()
        },
        1000,
    )
}

#[test]
fn offense_histories_leave_with_their_window_and_the_table_is_capped() {
    let mut l = offenders("1h");
    for (i, target) in ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
        .into_iter()
        .enumerate()
    {
        block(
            &mut l,
            req(target, "wazuh", Some(60)),
            T0 + ms(i as u64 * MIN),
        )
        .unwrap();
    }
    assert_eq!(l.offenses.len(), 3);
    assert_eq!(
        l.next_deadline(),
        Some(T0 + ms(MIN)),
        "the first block ends first"
    );
    let mut c = Change::default();
    l.expire(&mut c, T0 + ms(10 * MIN), usize::MAX);
    assert_eq!(l.offenses.len(), 3, "still in the window");
    assert_eq!(
        l.next_deadline(),
        Some(T0 + ms(60 * MIN)),
        "the oldest history leaves the window then"
    );
    let mut c = Change::default();
    l.expire(&mut c, T0 + ms(61 * MIN), usize::MAX);
    assert_eq!(l.offenses.len(), 1, "two left the window");
    assert!(
        c.ops.iter().any(
            |o| matches!(o, StoreOp::PutOffenses(x, v) if *x == t("192.0.2.1") && v.is_empty())
        ),
        "forgotten in the store too"
    );

    // The cap: the target blocked longest ago goes first.
    let mut l = offenders("1d");
    l.offenses.set_cap(2);
    for (i, target) in ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
        .into_iter()
        .enumerate()
    {
        block(
            &mut l,
            req(target, "wazuh", Some(60)),
            T0 + ms(i as u64 * MIN),
        )
        .unwrap();
    }
    assert_eq!(l.offenses.len(), 2);
    assert!(
        l.offenses.get(&t("192.0.2.1")).is_none(),
        "the oldest was evicted"
    );
    // Per target, only as many times as the escalation steps are kept.
    for i in 0..5 {
        l.unblock(
            &mut Change::default(),
            t("192.0.2.3"),
            Some(src("wazuh")),
            false,
        )
        .unwrap();
        block(
            &mut l,
            req("192.0.2.3", "wazuh", Some(60)),
            T0 + ms((10 + i) * MIN),
        )
        .unwrap();
    }
    assert_eq!(l.offenses.get(&t("192.0.2.3")).unwrap().len(), 2);
}

#[test]
fn a_store_over_the_cap_or_without_escalation_is_pruned_at_the_first_reap() {
    let mut l = ledger(); // no repeat_offenders configured: a history is of no use
    l.load_side(vec![], vec![(t("192.0.2.1"), vec![T0])], None);
    assert_eq!(l.next_deadline(), Some(T0));
    let mut c = Change::default();
    l.expire(&mut c, T0 + ms(1), usize::MAX);
    assert_eq!(l.offenses.len(), 0);
    let mut l = offenders("1d");
    l.offenses.set_cap(1);
    l.load_side(
        vec![],
        vec![
            (t("192.0.2.1"), vec![T0]),
            (t("192.0.2.2"), vec![T0 + ms(1)]),
        ],
        None,
    );
    assert_eq!(
        l.next_deadline(),
        Some(WallMs::EPOCH),
        "over the cap: at once"
    );
    l.expire(&mut Change::default(), T0 + ms(2), usize::MAX);
    assert_eq!(l.offenses.len(), 1);
    assert!(
        l.offenses.get(&t("192.0.2.2")).is_some(),
        "the newest stays"
    );
}
