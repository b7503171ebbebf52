//! Herald's core: connections, subscriptions, fan-out and authentication, transport-agnostic.
//!
//! Nothing is implemented in this commit yet; the gateway lands next.
