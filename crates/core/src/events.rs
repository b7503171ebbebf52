//! Critical events: per-user pending events kept until acknowledged, and the [`Emitter`] that
//! sends them from Rust.
//!
//! The pending list of a user is locked while an event is appended and delivered, and while a
//! new connection of that user registers and receives the pending events, so a connection sees
//! each user's events in the order they were sent, with no gap at the hand-over.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use herald_protocol::EventName;
use serde_json::value::RawValue;

use crate::{
    gateway::{Gateway, GatewayError},
    ids::{ThreadId, UserId},
    operations::{Outcome, Request},
    outbox::Frame,
};

/// An event waiting for an acknowledgement.
#[derive(Debug, Clone)]
pub(crate) struct PendingEvent {
    pub(crate) id: Arc<str>,
    pub(crate) thread: Option<ThreadId>,
    pub(crate) frame: Frame,
    /// When it was sent (gateway clock, ms).
    pub(crate) created_ms: u64,
    /// When it was last queued to a connection (gateway clock, ms); `None` while undelivered.
    pub(crate) delivered_ms: Option<u64>,
}

/// Every user's pending events.
#[derive(Debug, Default)]
pub(crate) struct PendingEvents {
    users: Mutex<HashMap<crate::ids::UserId, VecDeque<PendingEvent>>>,
}

impl PendingEvents {
    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<UserId, VecDeque<PendingEvent>>> {
        // Each critical section leaves the map consistent, so poison is ignored.
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Events awaiting an ack, all users.
    pub(crate) fn total(&self) -> usize {
        self.lock().values().map(VecDeque::len).sum()
    }
}

/// The result of sending an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventOutcome {
    /// The event's id (generated when the sender gave none).
    pub id: String,
    /// Connections it was queued to now.
    pub delivered: usize,
    /// The user's events awaiting an ack, this one included.
    pub pending: usize,
}

/// Sends critical agent events to users from Rust, one method per event.
///
/// Every call goes through the gateway's operation queue like the HTTP API's
/// `POST /api/users/{userId}/events`, so the same ordering, bounds and errors apply.
#[derive(Debug, Clone)]
pub struct Emitter {
    gateway: Gateway,
}

/// Where an event goes and how it is identified.
#[derive(Debug, Clone, Default)]
pub struct EventTarget {
    /// Only connections bound to this thread (and those bound to none) receive it.
    pub thread: Option<ThreadId>,
    /// The agent run it belongs to.
    pub run: Option<String>,
    /// A stable id; generated when absent. Sending an id that is still pending is a no-op.
    pub id: Option<String>,
}

impl Emitter {
    /// An emitter sending through `gateway`.
    pub fn new(gateway: Gateway) -> Self {
        Self { gateway }
    }

    /// Sends any critical event.
    pub async fn emit(
        &self,
        user: &UserId,
        event: EventName,
        data: &RawValue,
        target: EventTarget,
    ) -> Result<EventOutcome, GatewayError> {
        let request = Request::Event {
            user: user.clone(),
            event,
            data: data.to_owned(),
            thread: target.thread,
            run: target.run,
            id: target.id,
        };
        match self.gateway.submit(request).await? {
            Outcome::Event(outcome) => Ok(outcome),
            // An event request always yields an event outcome.
            Outcome::Published(_) | Outcome::Delivered(_) => Err(GatewayError::ShuttingDown),
        }
    }

    /// `agent_started`.
    pub async fn agent_started(
        &self,
        user: &UserId,
        data: &RawValue,
        target: EventTarget,
    ) -> Result<EventOutcome, GatewayError> {
        self.emit(user, EventName::AgentStarted, data, target).await
    }

    /// `agent_thinking`.
    pub async fn agent_thinking(
        &self,
        user: &UserId,
        data: &RawValue,
        target: EventTarget,
    ) -> Result<EventOutcome, GatewayError> {
        self.emit(user, EventName::AgentThinking, data, target)
            .await
    }

    /// `tool_executing`.
    pub async fn tool_executing(
        &self,
        user: &UserId,
        data: &RawValue,
        target: EventTarget,
    ) -> Result<EventOutcome, GatewayError> {
        self.emit(user, EventName::ToolExecuting, data, target)
            .await
    }

    /// `tool_completed`.
    pub async fn tool_completed(
        &self,
        user: &UserId,
        data: &RawValue,
        target: EventTarget,
    ) -> Result<EventOutcome, GatewayError> {
        self.emit(user, EventName::ToolCompleted, data, target)
            .await
    }

    /// `agent_completed`.
    pub async fn agent_completed(
        &self,
        user: &UserId,
        data: &RawValue,
        target: EventTarget,
    ) -> Result<EventOutcome, GatewayError> {
        self.emit(user, EventName::AgentCompleted, data, target)
            .await
    }

    /// `agent_error`.
    pub async fn agent_error(
        &self,
        user: &UserId,
        data: &RawValue,
        target: EventTarget,
    ) -> Result<EventOutcome, GatewayError> {
        self.emit(user, EventName::AgentError, data, target).await
    }
}
