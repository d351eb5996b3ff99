//! Publishing local blocks to the Local API, so that every bouncer of the fleet enforces them.
//!
//! The daemon logs in as a CrowdSec machine (`POST /v1/watchers/login`, a JWT renewed before it
//! expires and after a 401) and takes the publish queue ([`crate::outbox`]) from the engine in
//! order: a ban becomes an alert carrying one ban decision (`POST /v1/alerts`, up to
//! [`BATCH`] alerts a request), whose decision ids it reads back (`GET /v1/alerts/{id}`) and
//! the engine records; an unblock deletes those decisions (`DELETE /v1/decisions/{id}`). A
//! failure (LAPI down, 5xx, timeout) leaves the rest of the queue in the store and is retried
//! with a backoff; the engine is never waited on by the LAPI.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Deserialize;

use super::{Engine, LapiError, MachineLogin, StatusHandle, config::CrowdsecConfig};
use crate::{
    error::Chain,
    outbox::{OutboxBatch, OutboxRequest, PublicationKind, Queued, Sent},
    protocol::PublishStatus,
    target::Target,
    time::WallMs,
};

/// Most alerts in one `POST /v1/alerts`.
pub const BATCH: usize = 500;
/// Requests in flight at once while reading decision ids or deleting decisions.
const PARALLEL: usize = 16;
/// The longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A token is renewed this long after login (the LAPI's tokens last an hour).
const TOKEN_RENEW: Duration = Duration::from_secs(30 * 60);
/// The duration a permanent block's decision carries.
const PERMANENT: &str = "87600h";
/// The origin of the decisions this daemon publishes.
pub const ORIGIN: &str = "enforcer";

/// The publisher task.
pub struct Publisher<E> {
    machine: Machine,
    engine: E,
    wake: Arc<tokio::sync::Notify>,
    status: StatusHandle,
}

impl<E: Engine> Publisher<E> {
    /// Builds the publisher; fails only on local setup (the password file, TLS files).
    pub fn new(
        config: &CrowdsecConfig,
        engine: E,
        wake: Arc<tokio::sync::Notify>,
        status: StatusHandle,
    ) -> Result<Self, LapiError> {
        let publish = config
            .publish
            .as_ref()
            .ok_or_else(|| LapiError::Setup("no [crowdsec.publish] section".into()))?;
        let login = publish.login().map_err(|(_, m)| LapiError::Setup(m))?;
        status.lock().expect("status lock").publish = Some(PublishStatus {
            login: login.describe(),
            ..PublishStatus::default()
        });
        Ok(Self {
            machine: Machine::new(config, login, publish.scenarios().into_values().collect())?,
            engine,
            wake,
            status,
        })
    }

    /// Publishes forever (the daemon aborts the task when it stops).
    pub async fn run(mut self) {
        let mut backoff = Duration::from_secs(1);
        loop {
            let batch = match self.ask(OutboxRequest::Take { max: BATCH }).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "the publisher could not read the queue");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            if batch.items.is_empty() {
                // A permit stored by a round that queued something wakes this at once.
                // Woken or five seconds on: either way, look again.
                tokio::time::timeout(Duration::from_secs(5), self.wake.notified())
                    .await
                    .ok();
                continue;
            }
            let (sent, failed) = self.send(batch.items).await;
            if !sent.is_empty() {
                self.report(sent).await;
                backoff = Duration::from_secs(1);
            }
            if let Some(e) = failed {
                tracing::warn!(error = %Chain(&e), retry_in = ?backoff, "publishing to the CrowdSec LAPI failed; the blocks are enforced here and stay queued");
                self.count_error(&e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Counts a failed call in the status, as its last error.
    fn count_error(&self, e: &LapiError) {
        self.update(|s| {
            s.errors += 1;
            s.last_error = Some(Chain(e).to_string());
            s.last_error_ms = Some(WallMs::now());
        });
    }

    fn update(&self, f: impl FnOnce(&mut PublishStatus)) {
        if let Some(p) = self.status.lock().expect("status lock").publish.as_mut() {
            f(p);
        }
    }

    async fn ask(&self, request: OutboxRequest) -> Result<OutboxBatch, String> {
        let batch = self.engine.outbox(request).await?;
        self.update(|s| s.queue = batch.counters);
        Ok(batch)
    }

    /// Records what was sent; retried until the engine has it (the LAPI already has it).
    async fn report(&self, sent: Vec<Sent>) {
        let count = sent.len() as u64;
        while let Err(e) = self.ask(OutboxRequest::Sent(sent.clone())).await {
            tracing::error!(error = %e, "recording published decisions failed; retrying in 1 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.update(|s| {
            s.sent += count;
            s.last_sent_ms = Some(WallMs::now());
        });
    }

    /// Sends `items` in order: runs of bans as one request, each unban on its own. Stops at the
    /// first failure and returns what was sent before it.
    async fn send(&mut self, items: Vec<Queued>) -> (Vec<Sent>, Option<LapiError>) {
        let mut sent = Vec::with_capacity(items.len());
        let mut bans: Vec<Queued> = Vec::new();
        for item in items {
            if matches!(item.publication.kind, PublicationKind::Ban { .. }) {
                bans.push(item);
                continue;
            }
            if let Err(e) = self.flush_bans(&mut bans, &mut sent).await {
                return (sent, Some(e));
            }
            match self.unban(&item).await {
                Ok(s) => sent.push(s),
                Err(e) => return (sent, Some(e)),
            }
        }
        let failed = self.flush_bans(&mut bans, &mut sent).await.err();
        (sent, failed)
    }

    async fn flush_bans(
        &mut self,
        bans: &mut Vec<Queued>,
        sent: &mut Vec<Sent>,
    ) -> Result<(), LapiError> {
        if bans.is_empty() {
            return Ok(());
        }
        let now = WallMs::now();
        let (live, over): (Vec<Queued>, Vec<Queued>) = std::mem::take(bans)
            .into_iter()
            .partition(|q| remaining(q, now).is_some());
        // A block already over: its earlier decisions end with it.
        sent.extend(over.iter().map(|q| done(q, Vec::new())));
        if live.is_empty() {
            return Ok(());
        }
        // One alert per scenario carries the decisions of all its blocks, as `cscli decisions
        // import` does: one insert and one read-back per alert, not per block.
        let mut groups: BTreeMap<&str, Vec<&Queued>> = BTreeMap::new();
        for q in &live {
            groups.entry(scenario_of(q)).or_default().push(q);
        }
        let groups: Vec<Vec<&Queued>> = groups.into_values().collect();
        let alerts: Vec<serde_json::Value> = groups.iter().map(|g| alert(g, now)).collect();
        let alert_ids = self.machine.post_alerts(&alerts).await?;
        if alert_ids.len() != groups.len() {
            return Err(LapiError::Garbage(format!(
                "{} alert ids for {} alerts",
                alert_ids.len(),
                groups.len()
            )));
        }
        // The LAPI holds these decisions now: from here on nothing is sent again (a retry
        // would publish them twice), the ids are read back until the LAPI answers.
        for (group, id) in groups.iter().zip(&alert_ids) {
            let decisions = self.alert_decisions(id).await;
            for q in group {
                let (scope, value) = scope_value(&q.publication.target);
                let ids: Vec<i64> = decisions
                    .iter()
                    .filter(|d| d.scope == scope && d.value == value)
                    .map(|d| d.id)
                    .collect();
                // The earlier decisions of a block that was extended are replaced; when that
                // fails they stay recorded, and go with the block's unban.
                let mut s = done(q, ids);
                if let Err(e) = self.machine.delete_decisions(&q.published).await {
                    tracing::warn!(error = %Chain(&e), target = %q.publication.target, "deleting the replaced decisions failed; they are deleted with the block");
                    s.removed.clear();
                }
                sent.push(s);
            }
        }
        Ok(())
    }

    /// The decisions of alert `id`, read until the LAPI answers (the alert is posted: posting
    /// it again would duplicate its decisions).
    async fn alert_decisions(&mut self, id: &str) -> Vec<AlertDecision> {
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.machine.alert_decisions(id).await {
                Ok(d) => return d,
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), alert = id, retry_in = ?backoff, "reading back a published alert's decisions failed; retrying (it is not posted again)");
                    self.count_error(&e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn unban(&mut self, item: &Queued) -> Result<Sent, LapiError> {
        let expired = matches!(
            item.publication.kind,
            PublicationKind::Unban { expired: true }
        );
        if !expired {
            self.machine.delete_decisions(&item.published).await?;
        }
        let mut s = done(item, Vec::new());
        s.removed.clone_from(&item.published);
        Ok(s)
    }
}

/// A queued item sent: `added` stands for its block now, its earlier decisions are gone.
fn done(q: &Queued, added: Vec<i64>) -> Sent {
    Sent {
        seq: q.seq,
        target: q.publication.target,
        source: q.publication.source.clone(),
        added,
        removed: q.published.clone(),
    }
}

/// A ban's remaining time as a Go duration (`None`: it is over, or nearly).
fn remaining(q: &Queued, now: WallMs) -> Option<String> {
    match &q.publication.kind {
        PublicationKind::Ban {
            expires_ms: None, ..
        } => Some(PERMANENT.to_owned()),
        PublicationKind::Ban {
            expires_ms: Some(e),
            ..
        } => {
            let left = e.saturating_since(now).as_secs();
            (left >= 1).then(|| format!("{left}s"))
        }
        PublicationKind::Unban { .. } => None,
    }
}

/// The decision's scope and value.
fn scope_value(t: &Target) -> (&'static str, String) {
    if t.is_host() {
        ("Ip", t.addr().to_string())
    } else {
        ("Range", t.to_string())
    }
}

/// A ban's scenario.
fn scenario_of(q: &Queued) -> &str {
    match &q.publication.kind {
        PublicationKind::Ban { scenario, .. } => scenario,
        PublicationKind::Unban { .. } => unreachable!("only bans become alerts"),
    }
}

/// The alert for bans of one scenario, as cscli builds them (LAPI 1.4 requires every field):
/// one block's alert names its address and reason, as `cscli decisions add` does; several
/// blocks' alert carries one decision each, as `cscli decisions import` does.
fn alert(group: &[&Queued], now: WallMs) -> serde_json::Value {
    let first = group[0];
    let scenario = scenario_of(first);
    let source = &first.publication.source;
    let decisions: Vec<serde_json::Value> = group
        .iter()
        .map(|q| {
            let (scope, value) = scope_value(&q.publication.target);
            serde_json::json!({
                "duration": remaining(q, now),
                "origin": ORIGIN,
                "scenario": scenario,
                "scope": scope,
                "type": "ban",
                "value": value,
            })
        })
        .collect();
    let (source_json, message) = match group {
        [q] => {
            let (scope, value) = scope_value(&q.publication.target);
            let PublicationKind::Ban { reason, .. } = &q.publication.kind else {
                unreachable!("only bans become alerts")
            };
            let message = if reason.is_empty() {
                format!("{source} blocked {value}")
            } else {
                format!("{source}: {reason}")
            };
            let (ip, range) = if scope == "Ip" {
                (value.as_str(), "")
            } else {
                ("", value.as_str())
            };
            (
                serde_json::json!({"scope": scope, "value": value, "ip": ip, "range": range}),
                message,
            )
        }
        _ => (
            serde_json::json!({"scope": "enforcer/batch", "value": ""}),
            format!("{source} blocked {} addresses", group.len()),
        ),
    };
    let at = humantime::format_rfc3339_seconds(now.to_system_time()).to_string();
    serde_json::json!({
        "capacity": 0,
        "decisions": decisions,
        "events": [],
        "events_count": group.len(),
        "leakspeed": "0",
        "message": message,
        "scenario": scenario,
        "scenario_hash": "",
        "scenario_version": "",
        "simulated": false,
        "source": source_json,
        "start_at": at,
        "stop_at": at,
    })
}

/// A machine session with the LAPI.
struct Machine {
    http: reqwest::Client,
    base: reqwest::Url,
    login: MachineLogin,
    scenarios: Vec<String>,
    token: Option<(String, Instant)>,
}

#[derive(Deserialize)]
struct LoginAnswer {
    token: String,
}

#[derive(Deserialize)]
struct AlertAnswer {
    #[serde(default)]
    decisions: Option<Vec<AlertDecision>>,
}

/// A decision of a published alert.
#[derive(Deserialize)]
struct AlertDecision {
    id: i64,
    scope: String,
    value: String,
}

impl Machine {
    fn new(
        config: &CrowdsecConfig,
        login: MachineLogin,
        scenarios: Vec<String>,
    ) -> Result<Self, LapiError> {
        let mut builder = super::lapi::client_builder(config, Duration::from_secs(30))?;
        if let MachineLogin::Certificate { cert, key } = &login {
            builder = builder.identity(super::lapi::identity(cert, key)?);
        }
        Ok(Self {
            http: builder
                .build()
                .map_err(|e| LapiError::Setup(e.to_string()))?,
            base: super::lapi::base_url(config)?,
            login,
            scenarios,
            token: None,
        })
    }

    fn url(&self, path: &str) -> reqwest::Url {
        self.base.join(path).expect("a relative API path")
    }

    fn unreachable(&self, source: reqwest::Error) -> LapiError {
        LapiError::Unreachable {
            url: self.base.to_string(),
            source,
        }
    }

    /// A valid token: logs in when there is none, or it is due for renewal.
    async fn token(&mut self) -> Result<String, LapiError> {
        if let Some((t, at)) = &self.token
            && at.elapsed() < TOKEN_RENEW
        {
            return Ok(t.clone());
        }
        // With a certificate the LAPI takes the machine from it (`CN@address`) and reads only
        // the scenarios.
        let (body, hint) = match &self.login {
            MachineLogin::Password { login, password } => (
                serde_json::json!({
                    "machine_id": login,
                    "password": password,
                    "scenarios": self.scenarios,
                }),
                "check crowdsec.publish.login and password_file against `cscli machines list` (register with `cscli machines add NAME --password ...`)",
            ),
            MachineLogin::Certificate { .. } => (
                serde_json::json!({ "scenarios": self.scenarios }),
                "the certificate's OU must be in the LAPI's api.server.tls.agents_allowed_ou (agent-ou by default), it must be signed by the LAPI's ca_cert_path and not revoked; a machine of that name registered with a password refuses a certificate",
            ),
        };
        let resp = self
            .http
            .post(self.url("v1/watchers/login"))
            .json(&body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let text = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(LapiError::MachineDenied {
                status: status.as_u16(),
                hint,
            });
        }
        if !status.is_success() {
            return Err(status_error(status, &text));
        }
        let answer: LoginAnswer = serde_json::from_slice(&text)
            .map_err(|e| LapiError::Garbage(format!("login answer: {e}")))?;
        self.token = Some((answer.token.clone(), Instant::now()));
        Ok(answer.token)
    }

    /// Sends a request with the token; after a 401, logs in again and retries once.
    async fn call(
        &mut self,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), LapiError> {
        for attempt in 0..2 {
            let token = self.token().await?;
            let resp = build(&self.http, &token)
                .send()
                .await
                .map_err(|e| self.unreachable(e))?;
            let status = resp.status();
            let body = resp
                .bytes()
                .await
                .map_err(|e| self.unreachable(e))?
                .to_vec();
            if status == reqwest::StatusCode::UNAUTHORIZED && attempt == 0 {
                self.token = None;
                continue;
            }
            return Ok((status, body));
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Posts alerts; returns their ids, in order.
    async fn post_alerts(
        &mut self,
        alerts: &[serde_json::Value],
    ) -> Result<Vec<String>, LapiError> {
        let url = self.url("v1/alerts");
        let (status, body) = self
            .call(|c, t| c.post(url.clone()).bearer_auth(t).json(alerts))
            .await?;
        if !status.is_success() {
            return Err(status_error(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| LapiError::Garbage(format!("alert ids: {e}")))
    }

    /// The decisions of alert `id` (none when the alert is gone: deleted or flushed).
    async fn alert_decisions(&mut self, id: &str) -> Result<Vec<AlertDecision>, LapiError> {
        let url = self.url(&format!("v1/alerts/{id}"));
        let (status, body) = self.call(|c, t| c.get(url.clone()).bearer_auth(t)).await?;
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        if !status.is_success() {
            return Err(status_error(status, &body));
        }
        let a: AlertAnswer = serde_json::from_slice(&body)
            .map_err(|e| LapiError::Garbage(format!("alert {id}: {e}")))?;
        Ok(a.decisions.unwrap_or_default())
    }

    /// Deletes decisions by id; one already gone (deleted by hand, flushed) counts as deleted.
    async fn delete_decisions(&mut self, ids: &[i64]) -> Result<(), LapiError> {
        if ids.is_empty() {
            return Ok(());
        }
        let token = self.token().await?;
        for chunk in ids.chunks(PARALLEL) {
            let mut set = tokio::task::JoinSet::new();
            for id in chunk {
                let req = self
                    .http
                    .delete(self.url(&format!("v1/decisions/{id}")))
                    .bearer_auth(&token);
                set.spawn(req.send());
            }
            while let Some(joined) = set.join_next().await {
                let resp = joined
                    .map_err(|e| LapiError::Setup(e.to_string()))?
                    .map_err(|e| self.unreachable(e))?;
                let status = resp.status();
                let body = resp.bytes().await.map_err(|e| self.unreachable(e))?;
                if status == reqwest::StatusCode::UNAUTHORIZED {
                    self.token = None;
                }
                let gone = status == reqwest::StatusCode::NOT_FOUND
                    || String::from_utf8_lossy(&body).contains("doesn't exist");
                if !status.is_success() && !gone {
                    return Err(status_error(status, &body));
                }
            }
        }
        Ok(())
    }
}

fn status_error(status: reqwest::StatusCode, body: &[u8]) -> LapiError {
    LapiError::Status {
        status: status.as_u16(),
        body: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}
