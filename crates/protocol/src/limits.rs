//! [`Limits`]: the bounds an operator sets on untrusted JSON, which every decoder applies.

/// The default of [`Limits::max_json_depth`] (`HERALD_MAX_JSON_DEPTH`).
pub const DEFAULT_MAX_JSON_DEPTH: usize = 64;

/// The largest [`Limits::max_json_depth`] an operator may set.
///
/// It sits below serde_json's recursion limit (127 levels) so that every frame Herald relays,
/// even wrapped in a `batch` (two more levels), can still be decoded by a standard serde_json
/// consumer.
pub const MAX_JSON_DEPTH_CEILING: usize = 120;

/// The default of [`Limits::max_batch_topics`] (`HERALD_MAX_BATCH_TOPICS`).
pub const DEFAULT_MAX_BATCH_TOPICS: usize = 100;

/// The default of [`Limits::max_publish_batch`] (`HERALD_MAX_PUBLISH_BATCH`).
pub const DEFAULT_MAX_PUBLISH_BATCH: usize = 1000;

/// The bounds applied while decoding a client frame or an HTTP API body.
///
/// docs/protocol.md does not bound nesting or batch sizes; these limits are Herald extensions
/// that keep one request from costing unbounded work. Operators set them
/// (`HERALD_MAX_PAYLOAD_BYTES`, `HERALD_MAX_JSON_DEPTH`, `HERALD_MAX_BATCH_TOPICS`,
/// `HERALD_MAX_PUBLISH_BATCH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest client frame, in bytes of UTF-8 text; a frame of exactly this size is
    /// accepted. HTTP bodies are bounded by the HTTP layer before they are decoded.
    pub max_frame_bytes: usize,
    /// The deepest nesting of arrays and objects in a frame or a body (at most
    /// [`MAX_JSON_DEPTH_CEILING`]).
    pub max_json_depth: usize,
    /// The most topics one `batch_subscribe` or `batch_unsubscribe` may name.
    pub max_batch_topics: usize,
    /// The most items one `POST /api/publish/batch` may carry.
    pub max_publish_batch: usize,
}

impl Limits {
    /// Frames of at most `max_frame_bytes`, with the default depth and batch limits.
    pub const fn new(max_frame_bytes: usize) -> Self {
        Self {
            max_frame_bytes,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
            max_batch_topics: DEFAULT_MAX_BATCH_TOPICS,
            max_publish_batch: DEFAULT_MAX_PUBLISH_BATCH,
        }
    }
}
