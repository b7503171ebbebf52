//! The WebSocket transport: the handshake on both paths to a WebSocket, then one task per
//! connection that reads client frames into the core `Session` and writes what the
//! connection's outbox yields, several frames per vectored write, straight from their shared
//! bytes.
//!
//! - `handshake`: validates the upgrade and answers it (`answer_direct` for `conn`'s direct
//!   path, `upgrade` for hyper's), and sets tungstenite up on the socket (`websocket`).
//! - `driver`: the per-connection loop (`drive`), its read and write budgets, and the close
//!   handshake.
//! - `deflate`: permessage-deflate (RFC 7692): the negotiation and the compression of an
//!   outbound message (once per frame, shared).
//! - `inflate`: the layer under tungstenite that inflates a client's compressed messages and
//!   fails a text message at its first byte that is not UTF-8.
//! - `stream`: tungstenite's protocol state on the async socket (`Ws`), driven with the
//!   connection task's own waker and dropped while the connection is idle.
//! - `utf8scan`: follows a client's frames as tungstenite will read them and checks text
//!   messages' UTF-8 as their bytes arrive (for `inflate`).
//! - `frame`: a client frame's header, parsed (for `inflate` and `utf8scan`).
//! - `wire`: the socket shared by tungstenite (reads, control replies) and the data-frame
//!   writer, in turns, so that no control frame lands inside a data frame.
//! - `writer`: data frames encoded and written with vectored writes.
//! - `echo`: the echo endpoint for conformance suites (`echo_path`), on the same reader and
//!   writer.

mod deflate;
mod driver;
mod echo;
mod frame;
mod handshake;
mod inflate;
mod stream;
mod utf8scan;
mod wire;
mod writer;

pub(crate) use crate::ws::{
    driver::drive,
    echo::serve_echo,
    handshake::{answer_direct, upgrade, websocket},
    stream::Ws,
};
