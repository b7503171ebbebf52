//! End-to-end tests: the real `herald` binary over real sockets. One binary, one module per area.

mod basics;
mod startup;
