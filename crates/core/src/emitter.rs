//! The [`Emitter`]: sends critical agent events to users from Rust, one method per event.

use herald_protocol::EventName;
use serde_json::value::RawValue;

use crate::{
    error::GatewayError,
    events::{EventOutcome, EventSend, EventTarget},
    gateway::Gateway,
    ids::UserId,
};

/// Sends critical agent events to users from Rust, one method per event.
///
/// Every call goes through [`Gateway::send_event`], hence through the gateway's operation
/// queue like the HTTP API's `POST /api/users/{userId}/events`, so the same ordering, bounds
/// and errors apply.
#[derive(Debug, Clone)]
pub struct Emitter {
    gateway: Gateway,
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
        self.gateway
            .send_event(EventSend {
                user: user.clone(),
                event,
                data: data.to_owned(),
                target,
            })
            .await
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
