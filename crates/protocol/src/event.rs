//! Names of the critical agent events delivered at least once to a user.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Visitor};

/// A critical event name. Events are addressed to a user (optionally one thread), kept until
/// acknowledged and redelivered after a reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventName {
    /// `agent_started`: an agent run began.
    AgentStarted,
    /// `agent_thinking`: the agent is working on its next step.
    AgentThinking,
    /// `tool_executing`: the agent called a tool.
    ToolExecuting,
    /// `tool_completed`: a tool call returned.
    ToolCompleted,
    /// `agent_completed`: the run finished.
    AgentCompleted,
    /// `agent_error`: the run failed.
    AgentError,
}

impl EventName {
    /// Every event name, in the order docs/protocol.md lists them.
    pub const ALL: [Self; 6] = [
        Self::AgentStarted,
        Self::AgentThinking,
        Self::ToolExecuting,
        Self::ToolCompleted,
        Self::AgentCompleted,
        Self::AgentError,
    ];

    /// The name as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::AgentStarted => "agent_started",
            Self::AgentThinking => "agent_thinking",
            Self::ToolExecuting => "tool_executing",
            Self::ToolCompleted => "tool_completed",
            Self::AgentCompleted => "agent_completed",
            Self::AgentError => "agent_error",
        }
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no critical event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown event `{0}` (expected one of agent_started, agent_thinking, tool_executing, tool_completed, agent_completed, agent_error)"
)]
pub struct UnknownEventError(pub String);

impl FromStr for EventName {
    type Err = UnknownEventError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|event| event.as_str() == name)
            .ok_or_else(|| UnknownEventError(crate::json::truncate_for_message(name)))
    }
}

impl Serialize for EventName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EventVisitor;

        impl Visitor<'_> for EventVisitor {
            type Value = EventName;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a critical event name")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(EventVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips() {
        for event in EventName::ALL {
            assert_eq!(event.as_str().parse::<EventName>(), Ok(event));
            let json = serde_json::to_string(&event).unwrap();
            assert_eq!(json, format!("\"{event}\""));
            assert_eq!(serde_json::from_str::<EventName>(&json).unwrap(), event);
        }
    }

    #[test]
    fn unknown_name_lists_the_known_ones() {
        let err = serde_json::from_str::<EventName>(r#""agent_dancing""#).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("unknown event `agent_dancing` (expected one of agent_started,"),
            "{err}"
        );
    }
}
