//! End-to-end tests: the real `herald` binary over real sockets. One binary, one module per area.

mod api;
mod auth_flow;
mod basics;
mod body_limit;
mod browser_client;
mod dashboard;
mod delivery;
mod dev_mode;
mod first_contact;
mod handshake;
mod hostile;
mod jwt_keys;
mod lifecycle;
mod lifecycle_logs;
mod limits;
mod listeners;
mod memory_pressure;
mod pubsub;
mod slow_reader;
mod startup;
mod upgrade_paths;
