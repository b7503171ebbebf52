//! Gateway behaviour tests without sockets: sessions fed text frames, outboxes read directly,
//! time driven by a `ManualClock`.
