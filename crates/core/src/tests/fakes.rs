//! Test doubles for the gateway's seams: an authenticator of signed-looking test tokens, a
//! broker that records what it is handed, and a sequencing broker that numbers publications
//! for several gateways as a shared store would.
//!
//! A test token is `<secret>.<claims JSON in hex>`: plain text that fits in a JSON string, and
//! whose claims follow the JWT ones Herald reads (`sub`, `exp` in seconds, `tier`, `topics`,
//! `publish`).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, PoisonError},
};

use serde_json::{Value, json};

use crate::{
    AuthError, Authenticator, Broker, BrokerError, Envelope, LocalDelivery, Principal,
    SequenceReply, SequenceRequest, Sequenced, SequencedDelivery, SequencedPublication, Sequencer,
    TopicPattern, UserId, complete_message_frame,
};

/// The secret the fake authenticator accepts.
const SECRET: &str = "herald-core-tests-secret";

/// `exp` of the default test tokens (2100-01-01).
const FAR_EXP: u64 = 4_102_444_800;

/// A token for `user` expiring at 2100-01-01, allowed to subscribe to `user:{sub}`, `chat:*`
/// and `news`, and to publish to `chat:*`.
pub(super) fn token(user: &str) -> String {
    token_with(user, &json!({}))
}

/// Like [`token`], with the claims of `extra` replacing the defaults (`null` removes a claim).
pub(super) fn token_with(user: &str, extra: &Value) -> String {
    let mut claims = json!({
        "sub": user,
        "exp": FAR_EXP,
        "topics": ["user:{sub}", "chat:*", "news"],
        "publish": ["chat:*"],
    });
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            if value.is_null() {
                claims.remove(key);
            } else {
                claims.insert(key.clone(), value.clone());
            }
        }
    }
    sign(&claims, SECRET)
}

/// A test token of `claims` "signed" with `secret`.
pub(super) fn sign(claims: &Value, secret: &str) -> String {
    let hex: String = claims
        .to_string()
        .bytes()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("{secret}.{hex}")
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

/// Accepts test tokens signed with [`SECRET`], with the rules of Herald's JWT authenticator:
/// a non-empty `sub`, `exp` not before `now_ms` (no leeway), a known tier (`free` by default),
/// no topics by default and no publishing by default.
pub(super) struct FakeAuthenticator {
    tiers: Vec<String>,
}

impl FakeAuthenticator {
    /// Accepts the tiers `tiers`.
    pub(super) fn new(tiers: Vec<String>) -> Self {
        Self { tiers }
    }
}

impl Authenticator for FakeAuthenticator {
    fn authenticate(&self, token: &str, now_ms: u64) -> Result<Principal, AuthError> {
        let invalid = |why: &str| AuthError::Invalid(why.to_owned());
        let (secret, hex) = token.split_once('.').ok_or_else(|| invalid("malformed"))?;
        let claims: Value = unhex(hex)
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| invalid("malformed"))?;
        if secret != SECRET {
            return Err(invalid("bad signature"));
        }
        let sub = claims["sub"].as_str().filter(|sub| !sub.is_empty());
        let user = UserId::new(sub.ok_or_else(|| invalid("missing `sub` claim"))?);
        let exp = claims["exp"]
            .as_u64()
            .ok_or_else(|| invalid("missing `exp` claim"))?;
        let expires_at_ms = exp.saturating_mul(1000);
        if now_ms > expires_at_ms {
            return Err(AuthError::Expired);
        }
        let tier = claims["tier"].as_str().unwrap_or("free").to_owned();
        if !self.tiers.contains(&tier) {
            return Err(AuthError::UnknownTier(tier));
        }
        let patterns = |claim: &Value| -> Vec<TopicPattern> {
            claim
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|pattern| TopicPattern::new(pattern, &user))
                .collect()
        };
        Ok(Principal {
            topics: patterns(&claims["topics"]),
            publish: patterns(&claims["publish"]),
            tier: Arc::from(tier),
            expires_at_ms,
            close_at_ms: expires_at_ms,
            user,
        })
    }
}

/// A broker that records every envelope it is handed, keeps the local delivery it was
/// attached with, and refuses envelopes while told to.
#[derive(Default)]
pub(super) struct RecordingBroker {
    published: Mutex<Vec<Envelope>>,
    local: Mutex<Option<LocalDelivery>>,
    refuse: Mutex<bool>,
}

impl RecordingBroker {
    /// The envelopes handed to the broker so far, taken.
    pub(super) fn take(&self) -> Vec<Envelope> {
        std::mem::take(
            &mut *self
                .published
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Delivers `envelope` as if it came from another node.
    pub(super) fn deliver_from_peer(&self, envelope: &Envelope) -> usize {
        let local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        local.as_ref().map_or(0, |local| local.deliver(envelope))
    }

    /// Makes the broker refuse (or accept again) what it is handed.
    pub(super) fn refuse(&self, refuse: bool) {
        *self.refuse.lock().unwrap_or_else(PoisonError::into_inner) = refuse;
    }
}

impl Broker for RecordingBroker {
    fn attach(&self, local: LocalDelivery) {
        *self.local.lock().unwrap_or_else(PoisonError::into_inner) = Some(local);
    }

    fn publish(&self, envelope: &Envelope) -> Result<(), BrokerError> {
        if *self.refuse.lock().unwrap_or_else(PoisonError::into_inner) {
            return Err(BrokerError::Unavailable("told to refuse".to_owned()));
        }
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(envelope.clone());
        Ok(())
    }
}

/// A cluster's shared store, in memory: numbers publications (offsets, one epoch per topic,
/// dedupe by id), keeps every one as the shared history, and carries them to the attached
/// gateways when a test calls [`pump`](Self::pump), which is also where a test loses some.
#[derive(Default)]
pub(super) struct SequencingCluster {
    state: Mutex<ClusterState>,
}

#[derive(Default)]
struct ClusterState {
    /// Per topic: every publication numbered so far, the shared history.
    log: HashMap<String, Vec<SequencedPublication>>,
    /// Per topic: the last offset given.
    offsets: HashMap<String, u64>,
    /// `(topic, id)` to the offset first given.
    ids: HashMap<(String, String), u64>,
    /// The attached gateways and what the bus still has to bring each.
    nodes: Vec<(LocalDelivery, VecDeque<SequencedPublication>)>,
    /// Publications refused while set (the store is down).
    down: bool,
}

impl SequencingCluster {
    /// A broker endpoint for one more gateway.
    pub(super) fn endpoint(self: &Arc<Self>) -> Arc<dyn Broker> {
        Arc::new(ClusterEndpoint {
            cluster: Arc::clone(self),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClusterState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Node `node`'s local delivery, to hand it publications directly.
    pub(super) fn local(&self, node: usize) -> LocalDelivery {
        self.lock().nodes[node].0.clone()
    }

    /// Makes the store refuse (or accept again) publications.
    pub(super) fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Loses the next `n` messages the bus holds for node `node` (pub/sub is at-most-once).
    pub(super) fn lose(&self, node: usize, n: usize) {
        let mut state = self.lock();
        let queue = &mut state.nodes[node].1;
        for _ in 0..n {
            queue.pop_front();
        }
    }

    /// Brings every node what the bus holds for it, in order, fetching from the shared history
    /// what a node reports missing, as a real broker's receiver does.
    pub(super) fn pump(&self) {
        let nodes: Vec<(LocalDelivery, Vec<SequencedPublication>)> = {
            let mut state = self.lock();
            state
                .nodes
                .iter_mut()
                .map(|(local, queue)| (local.clone(), queue.drain(..).collect()))
                .collect()
        };
        for (local, publications) in nodes {
            for publication in publications {
                self.deliver(&local, &publication);
            }
        }
    }

    fn deliver(&self, local: &LocalDelivery, publication: &SequencedPublication) {
        let SequencedDelivery::Gap { last_offset } = local.deliver_sequenced(publication, false)
        else {
            return;
        };
        let missing: Vec<SequencedPublication> = self
            .lock()
            .log
            .get(publication.topic.as_str())
            .map(|log| {
                log.iter()
                    .filter(|p| p.offset > last_offset && p.offset < publication.offset)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for (i, earlier) in missing.iter().enumerate() {
            let first_is_late = i == 0 && earlier.offset != last_offset + 1;
            local.deliver_sequenced(earlier, first_is_late);
        }
        local.deliver_sequenced(publication, true);
    }

    /// Forgets the shared history of a topic up to `offset` (trimmed by its size).
    pub(super) fn trim(&self, topic: &str, offset: u64) {
        if let Some(log) = self.lock().log.get_mut(topic) {
            log.retain(|p| p.offset > offset);
        }
    }
}

/// One gateway's endpoint on a [`SequencingCluster`].
struct ClusterEndpoint {
    cluster: Arc<SequencingCluster>,
}

impl Broker for ClusterEndpoint {
    fn attach(&self, local: LocalDelivery) {
        self.cluster.lock().nodes.push((local, VecDeque::new()));
    }

    fn publish(&self, envelope: &Envelope) -> Result<(), BrokerError> {
        // Pushes and events are not what these tests look at; publications never come here.
        assert!(!matches!(envelope, Envelope::Publication { .. }));
        Ok(())
    }

    fn sequencer(&self) -> Option<Arc<dyn Sequencer>> {
        Some(Arc::new(Self {
            cluster: Arc::clone(&self.cluster),
        }))
    }
}

impl Sequencer for ClusterEndpoint {
    fn sequence(&self, request: SequenceRequest, reply: SequenceReply) {
        let epoch: Arc<str> = Arc::from("shared-1");
        let mut state = self.cluster.lock();
        if state.down {
            drop(state);
            reply(Err(BrokerError::Unavailable("store down".to_owned())));
            return;
        }
        let topic = request.topic.as_str().to_owned();
        if let Some(id) = &request.id
            && let Some(offset) = state.ids.get(&(topic.clone(), id.clone()))
        {
            let offset = *offset;
            drop(state);
            reply(Ok(Sequenced {
                offset,
                epoch,
                deduplicated: true,
            }));
            return;
        }
        let last = state.offsets.entry(topic.clone()).or_default();
        *last += 1;
        let offset = *last;
        let publication = SequencedPublication {
            topic: request.topic.clone(),
            offset,
            epoch: Arc::clone(&epoch),
            priority: request.priority,
            frame: complete_message_frame(&request.frame_head, offset, &epoch),
        };
        state
            .log
            .entry(topic.clone())
            .or_default()
            .push(publication.clone());
        if let Some(id) = request.id {
            state.ids.insert((topic, id), offset);
        }
        for (_, queue) in &mut state.nodes {
            queue.push_back(publication.clone());
        }
        drop(state);
        reply(Ok(Sequenced {
            offset,
            epoch,
            deduplicated: false,
        }));
    }
}
