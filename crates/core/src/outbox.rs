//! The per-connection outbound queue: shared frames in, priority shedding when full, and the
//! close request that ends the connection.

use std::{
    cell::RefCell,
    fmt,
    sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError},
    task::{Context, Poll, Waker},
    time::Instant,
};

use bytes::Bytes;
use herald_protocol::CloseCode;
use herald_utils::{Priority, PriorityQueue};

use crate::counters::Counters;

/// One encoded server frame: UTF-8 JSON text in shared bytes.
///
/// A publication is encoded once and every subscriber's queue holds a clone of the same
/// [`Frame`], which costs a reference-count increment, not a copy.
///
/// A live publication's frame also carries the instant the gateway accepted the publication,
/// so that the transport can report the delivery latency once the frame is written
/// ([`Gateway::record_delivery`](crate::Gateway::record_delivery)); frames kept in history,
/// replies and pushes carry none. Two frames are equal when their bytes are.
///
/// Invariant: the bytes are valid UTF-8, because a `Frame` can only be built from a `String`.
///
/// A transport may also keep one encoding of the bytes that every copy shares, computed at
/// most once by whichever connection first needs it ([`Frame::encoded_with`]): the
/// permessage-deflate copy of a publication, compressed once for every subscriber that
/// negotiated compression.
#[derive(Clone)]
pub struct Frame {
    shared: Arc<Shared>,
    accepted: Option<Instant>,
}

/// What every copy of a [`Frame`] shares.
struct Shared {
    bytes: Bytes,
    /// The transport's encoding of `bytes`, once computed.
    encoded: OnceLock<Bytes>,
}

impl Frame {
    /// The frame's bytes (valid UTF-8 JSON).
    pub fn as_bytes(&self) -> &[u8] {
        &self.shared.bytes
    }

    /// The frame as text.
    pub fn as_str(&self) -> &str {
        // A `Frame` is only ever built from a `String`, so this validation cannot fail.
        std::str::from_utf8(&self.shared.bytes).expect("frame bytes are UTF-8 by construction")
    }

    /// The shared bytes, for a transport to write (valid UTF-8 JSON).
    pub fn into_bytes(self) -> Bytes {
        self.shared.bytes.clone()
    }

    /// The transport's encoding of the bytes, shared by every copy of this frame: `encode`
    /// runs at most once per frame, for the first copy that asks (others asking meanwhile
    /// wait for it), and every later call returns the same bytes.
    pub fn encoded_with(&self, encode: impl FnOnce(&[u8]) -> Bytes) -> Bytes {
        self.shared
            .encoded
            .get_or_init(|| encode(&self.shared.bytes))
            .clone()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.shared.bytes.len()
    }

    /// Whether the frame is empty (never true for an encoded message).
    pub fn is_empty(&self) -> bool {
        self.shared.bytes.is_empty()
    }

    /// When the gateway accepted the publication this frame carries live; `None` for every
    /// other frame.
    pub fn accepted(&self) -> Option<Instant> {
        self.accepted
    }

    /// The frame, marked as carrying a publication accepted at `accepted`.
    pub(crate) fn stamped(self, accepted: Instant) -> Self {
        Self {
            accepted: Some(accepted),
            ..self
        }
    }

    /// The same bytes without the acceptance mark: what history keeps, so a replay is not
    /// measured as a late delivery. It shares the bytes but not the transport's encoding, so
    /// history, which counts a frame's bytes against its bounds, holds no compressed copy.
    pub(crate) fn unstamped(&self) -> Self {
        Self {
            shared: Arc::new(Shared {
                bytes: self.shared.bytes.clone(),
                encoded: OnceLock::new(),
            }),
            accepted: None,
        }
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Self {
        Self {
            shared: Arc::new(Shared {
                bytes: Bytes::from(text),
                encoded: OnceLock::new(),
            }),
            accepted: None,
        }
    }
}

impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        self.shared.bytes == other.shared.bytes
    }
}

impl Eq for Frame {}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Frame")
            .field(&String::from_utf8_lossy(&self.shared.bytes))
            .finish()
    }
}

/// What became of a frame offered to an [`Outbox`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Queued; `shed` lower-priority frames were dropped to make room.
    Queued {
        /// How many queued frames were shed for it.
        shed: usize,
    },
    /// Not queued: the connection is closing (possibly because of this very frame, when
    /// nothing could be shed for it: close 4009).
    Closed,
}

impl Offer {
    /// Whether the frame was queued.
    pub(crate) fn is_queued(self) -> bool {
        matches!(self, Self::Queued { .. })
    }
}

/// A connection's bounded outbound queue and its close request.
///
/// Producers inside the gateway (fan-out, API sends, replies, the heartbeat sweep) offer frames;
/// the connection's transport task drains them with [`Outbox::poll_drain`]. When the queue is
/// full the oldest frame of the lowest priority below the incoming one is shed; when nothing can
/// be shed, the connection is closed with 4009 (slow consumer). `critical` is never shed. Every
/// shed frame and every 4009 is counted where it happens, in the gateway's counters, whatever
/// the frame carried.
pub struct Outbox {
    inner: Mutex<Inner>,
}

struct Inner {
    queue: PriorityQueue<Frame>,
    waker: Option<Waker>,
    close: Option<CloseCode>,
}

impl Inner {
    /// Remembers `cx`'s waker for the next frame or close request.
    fn register(&mut self, cx: &Context<'_>) {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.waker = Some(cx.waker().clone());
        }
    }
}

/// Releases the lock, then wakes the transport task if it is waiting (or, while a
/// [`HeldWakes`] lives on this thread, leaves the wake to it).
fn wake(mut inner: MutexGuard<'_, Inner>) {
    let waker = inner.waker.take();
    drop(inner);
    let Some(waker) = waker else {
        return;
    };
    // Woken outside the borrow, so that a waker that queues a frame itself cannot re-enter it.
    let now = HELD.with_borrow_mut(|held| match held {
        Some(held) => {
            held.push(waker);
            None
        }
        None => Some(waker),
    });
    if let Some(waker) = now {
        waker.wake();
    }
}

thread_local! {
    /// The transport wakes held back on this thread while a [`HeldWakes`] lives; the vector
    /// is kept between holds so a fan-out's wakes do not allocate each turn.
    static HELD: RefCell<Option<Vec<Waker>>> = const { RefCell::new(None) };
    /// The vector of the last hold, for the next one.
    static SPARE: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
}

/// While it lives, the transport tasks woken on this thread by frames and close requests are
/// not woken at once but remembered; dropping it wakes them, in the order they were due.
///
/// The fan-out worker holds one over a turn so that the transports it filled are woken after
/// the HTTP publishers it answers: the runtime runs the task woken last first, so the
/// deliveries' socket writes go out before the answers and before the rest of a burst of
/// requests, instead of behind them. Holds do not nest; a hold taken while one lives on the
/// thread holds nothing and the outer one wakes everything.
#[must_use = "the wakes are released when this is dropped"]
pub(crate) struct HeldWakes {
    outer: bool,
}

impl HeldWakes {
    /// Starts holding this thread's transport wakes.
    pub(crate) fn hold() -> Self {
        let outer = HELD.with_borrow_mut(|held| {
            if held.is_some() {
                return false;
            }
            *held = Some(SPARE.take());
            true
        });
        Self { outer }
    }
}

impl Drop for HeldWakes {
    fn drop(&mut self) {
        if !self.outer {
            return;
        }
        let Some(mut wakers) = HELD.with_borrow_mut(Option::take) else {
            return;
        };
        for waker in wakers.drain(..) {
            waker.wake();
        }
        SPARE.set(wakers);
    }
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.lock();
        f.debug_struct("Outbox")
            .field("len", &inner.queue.len())
            .field("bytes", &inner.queue.bytes())
            .field("close", &inner.close)
            .finish()
    }
}

impl Outbox {
    /// An empty outbox holding at most `max_frames` frames and `max_bytes` bytes.
    pub(crate) fn new(max_frames: usize, max_bytes: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                queue: PriorityQueue::new(max_frames, max_bytes),
                waker: None,
                close: None,
            }),
        }
    }

    /// Offers a frame at `priority`, shedding lower priorities or closing 4009 when full.
    ///
    /// This is the one way a frame enters an outbox, so it is also the one place that counts
    /// shed frames (by their priority) and slow-consumer closes, in `counters`.
    pub(crate) fn offer(&self, frame: Frame, priority: Priority, counters: &Counters) -> Offer {
        let mut inner = self.lock();
        if inner.close.is_some() {
            return Offer::Closed;
        }
        let bytes = frame.len();
        let offer = match inner.queue.push(frame, priority, bytes) {
            Ok(evicted) => {
                for (_, shed_priority) in evicted.iter() {
                    counters.shed(*shed_priority);
                }
                Offer::Queued {
                    shed: evicted.len(),
                }
            }
            Err(_rejected) => {
                inner.close = Some(CloseCode::SlowConsumer);
                counters.slow_consumer_closes.increment();
                Offer::Closed
            }
        };
        wake(inner);
        offer
    }

    /// Asks the connection to close with `code`. The first request wins; later ones are ignored.
    /// Returns whether this call was the first.
    pub fn close(&self, code: CloseCode) -> bool {
        let mut inner = self.lock();
        if inner.close.is_some() {
            return false;
        }
        inner.close = Some(code);
        wake(inner);
        true
    }

    /// The close request, if any.
    pub fn close_requested(&self) -> Option<CloseCode> {
        self.lock().close
    }

    /// Moves up to `max` frames, oldest first, into `out`.
    ///
    /// Frames leave in the order they were offered, whatever their priority: a topic's messages
    /// keep their offset order and a user's events their send order. Priorities only decide what
    /// is shed when the queue is full.
    ///
    /// Returns `Ready(None)` when it moved at least one frame, `Ready(Some(code))` when the
    /// connection must close now, and `Pending` (with `cx`'s waker registered) when there is
    /// nothing to do. Queued frames are still delivered before a close, except for a slow
    /// consumer (4009), whose queue is the problem.
    ///
    /// When it moves fewer than `max` frames, the queue ran empty, and `cx`'s task will be
    /// woken for whatever comes next (a frame, or a close request, also one already made):
    /// the caller need not look again until then. A connection woken for one frame then
    /// takes the lock once, not twice.
    pub fn poll_drain(
        &self,
        cx: &mut Context<'_>,
        max: usize,
        out: &mut Vec<Frame>,
    ) -> Poll<Option<CloseCode>> {
        let mut inner = self.lock();
        if inner.close == Some(CloseCode::SlowConsumer) {
            return Poll::Ready(inner.close);
        }
        let before = out.len();
        while out.len() - before < max {
            let Some((frame, _)) = inner.queue.pop_oldest() else {
                break;
            };
            out.push(frame);
        }
        if out.len() > before {
            if inner.queue.is_empty() {
                // An idle connection keeps no queue memory; the next burst allocates again.
                inner.queue.shrink_to_fit();
                if inner.close.is_none() {
                    inner.register(cx);
                } else {
                    // Nothing will wake the task for a close already requested.
                    drop(inner);
                    cx.waker().wake_by_ref();
                }
            }
            return Poll::Ready(None);
        }
        if let Some(code) = inner.close {
            return Poll::Ready(Some(code));
        }
        inner.register(cx);
        Poll::Pending
    }

    /// The close request, if any; otherwise registers `cx`'s waker, so that a later request
    /// (or frame) wakes the transport even while it is not draining, e.g. because its socket
    /// is full. Without this a peer that stops reading would never learn of its 4009.
    pub fn poll_close_requested(&self, cx: &mut Context<'_>) -> Poll<CloseCode> {
        let mut inner = self.lock();
        if let Some(code) = inner.close {
            return Poll::Ready(code);
        }
        inner.register(cx);
        Poll::Pending
    }

    /// Sheds every queued `low` and `normal` frame (memory relief), keeping the others in
    /// their arrival order; counts each shed frame by its priority in `counters`, like any other
    /// shed. Returns how many were shed. `high` and `critical` frames stay queued.
    ///
    /// Walks the queue under its lock: for a relief pass, not for the delivery path.
    pub(crate) fn shed_optional(&self, counters: &Counters) -> usize {
        let mut inner = self.lock();
        let optional = inner.queue.len_of(Priority::Low) + inner.queue.len_of(Priority::Normal);
        if optional == 0 {
            return 0;
        }
        let mut kept = Vec::with_capacity(inner.queue.len() - optional);
        while let Some((frame, priority)) = inner.queue.pop_oldest() {
            if priority > Priority::Normal {
                kept.push((frame, priority));
            } else {
                counters.shed(priority);
            }
        }
        inner.queue.shrink_to_fit();
        for (frame, priority) in kept {
            let bytes = frame.len();
            // These frames fitted with more beside them, so each fits again and sheds nothing.
            let _fits = inner.queue.push(frame, priority, bytes);
        }
        optional
    }

    /// Bytes of the frames waiting to be written (what counts against `max_queue_bytes`).
    pub(crate) fn queued_bytes(&self) -> usize {
        self.lock().queue.bytes()
    }

    /// Frames waiting to be written.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether no frame is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every queued frame and the waiting task's waker, at once: a closed connection's
    /// queue must not keep publications alive until the last reference to the connection
    /// goes (the connection index frees its entries lazily, and a burst queued to slow
    /// subscribers is megabytes).
    pub(crate) fn discard(&self) {
        let mut inner = self.lock();
        inner.waker = None;
        inner.queue.clear();
        inner.queue.shrink_to_fit();
    }

    /// Takes every queued frame, oldest first (for tests and in-memory transports).
    pub fn take_all(&self) -> Vec<Frame> {
        let mut inner = self.lock();
        std::iter::from_fn(|| inner.queue.pop_oldest().map(|(frame, _)| frame)).collect()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue half-updated in a way that
        // matters more than losing the connection, so a poisoned lock is used as is.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    fn frame(text: &str) -> Frame {
        Frame::from(text.to_owned())
    }

    fn drain(outbox: &Outbox) -> (Vec<String>, Option<CloseCode>) {
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        let mut close = None;
        loop {
            match outbox.poll_drain(&mut cx, 100, &mut out) {
                Poll::Ready(None) => continue,
                Poll::Ready(Some(code)) => {
                    close = Some(code);
                    break;
                }
                Poll::Pending => break,
            }
        }
        let texts = out
            .iter()
            .map(|f| String::from_utf8_lossy(f.as_bytes()).into_owned())
            .collect();
        (texts, close)
    }

    #[test]
    fn a_frames_encoding_is_computed_once_and_shared_by_every_copy() {
        let original = frame("hello");
        let copies = [original.clone(), original.clone(), original];
        let mut runs = 0;
        for copy in &copies {
            let encoded = copy.encoded_with(|bytes| {
                runs += 1;
                Bytes::from(bytes.to_ascii_uppercase())
            });
            assert_eq!(encoded, Bytes::from_static(b"HELLO"));
        }
        assert_eq!(runs, 1);
        // A frame built apart from it has its own, and so has the copy history keeps.
        assert_eq!(
            frame("hello").encoded_with(|_| Bytes::from_static(b"other")),
            Bytes::from_static(b"other")
        );
        assert_eq!(
            copies[0]
                .unstamped()
                .encoded_with(|_| Bytes::from_static(b"history's")),
            Bytes::from_static(b"history's")
        );
    }

    #[test]
    fn drains_in_arrival_order_whatever_the_priority() {
        let outbox = Outbox::new(10, 1 << 20);
        let counters = Counters::default();
        outbox.offer(frame("n1"), Priority::Normal, &counters);
        outbox.offer(frame("c1"), Priority::Critical, &counters);
        outbox.offer(frame("n2"), Priority::Normal, &counters);
        assert_eq!(
            drain(&outbox),
            (vec!["n1".into(), "c1".into(), "n2".into()], None)
        );
    }

    #[test]
    fn full_queue_sheds_lower_priority_then_closes_slow_consumer() {
        let outbox = Outbox::new(2, 1 << 20);
        let counters = Counters::default();
        assert_eq!(
            outbox.offer(frame("low"), Priority::Low, &counters),
            Offer::Queued { shed: 0 }
        );
        assert_eq!(
            outbox.offer(frame("n1"), Priority::Normal, &counters),
            Offer::Queued { shed: 0 }
        );
        assert_eq!(
            outbox.offer(frame("n2"), Priority::Normal, &counters),
            Offer::Queued { shed: 1 }
        );
        // Nothing below normal is left: the connection is closed as a slow consumer.
        assert_eq!(
            outbox.offer(frame("n3"), Priority::Normal, &counters),
            Offer::Closed
        );
        assert_eq!(outbox.close_requested(), Some(CloseCode::SlowConsumer));
        let mut stats = herald_monitoring::Stats::default();
        counters.fill(&mut stats);
        assert_eq!(
            (
                stats.messages.shed_by_priority.low,
                stats.messages.shed,
                stats.messages.slow_consumer_closes
            ),
            (1, 1, 1)
        );
        assert_eq!(drain(&outbox), (vec![], Some(CloseCode::SlowConsumer)));
    }

    #[test]
    fn a_close_request_wakes_a_transport_that_is_not_draining() {
        struct Flag(std::sync::atomic::AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let flag = std::sync::Arc::new(Flag(std::sync::atomic::AtomicBool::new(false)));
        let waker = Waker::from(std::sync::Arc::clone(&flag));
        let mut cx = Context::from_waker(&waker);
        let outbox = Outbox::new(1, 1 << 20);
        let counters = Counters::default();
        outbox.offer(frame("stuck"), Priority::Normal, &counters);
        assert_eq!(outbox.poll_close_requested(&mut cx), Poll::Pending);
        assert_eq!(
            outbox.offer(frame("more"), Priority::Normal, &counters),
            Offer::Closed
        );
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(
            outbox.poll_close_requested(&mut cx),
            Poll::Ready(CloseCode::SlowConsumer)
        );
    }

    /// How many times the wakers logging to `log` were woken.
    fn wakes(log: &std::sync::Arc<std::sync::Mutex<Vec<usize>>>) -> usize {
        log.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// A drain that empties the queue (fewer frames than asked for) leaves the task to be
    /// woken by the next frame; one that stops at `max` does not promise it.
    #[test]
    fn a_drain_that_empties_the_queue_is_woken_by_the_next_frame() {
        let counters = Counters::default();
        let outbox = Outbox::new(8, 1 << 20);
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let waker = logging_waker(&log, 0);
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        for text in ["a", "b", "c"] {
            outbox.offer(frame(text), Priority::Normal, &counters);
        }
        assert_eq!(outbox.poll_drain(&mut cx, 2, &mut out), Poll::Ready(None));
        assert_eq!(out.len(), 2);
        outbox.offer(frame("d"), Priority::Normal, &counters);
        assert_eq!(wakes(&log), 0);

        assert_eq!(outbox.poll_drain(&mut cx, 8, &mut out), Poll::Ready(None));
        assert_eq!(out.len(), 4, "fewer than asked: the queue ran empty");
        outbox.offer(frame("e"), Priority::Normal, &counters);
        assert_eq!(wakes(&log), 1);
    }

    /// A drain that empties the queue behind a close request wakes the task at once, so that it
    /// comes back for the close.
    #[test]
    fn a_drain_that_empties_the_queue_before_a_close_comes_back_for_it() {
        let counters = Counters::default();
        let outbox = Outbox::new(8, 1 << 20);
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let waker = logging_waker(&log, 0);
        let mut cx = Context::from_waker(&waker);
        let mut out = Vec::new();
        outbox.offer(frame("last"), Priority::Normal, &counters);
        assert!(outbox.close(CloseCode::GoingAway));
        assert_eq!(outbox.poll_drain(&mut cx, 8, &mut out), Poll::Ready(None));
        assert_eq!(wakes(&log), 1);
        assert_eq!(
            outbox.poll_drain(&mut cx, 8, &mut out),
            Poll::Ready(Some(CloseCode::GoingAway))
        );
    }

    /// A waker that appends `n` to `log` when woken.
    fn logging_waker(log: &std::sync::Arc<std::sync::Mutex<Vec<usize>>>, n: usize) -> Waker {
        struct One(std::sync::Arc<std::sync::Mutex<Vec<usize>>>, usize);
        impl std::task::Wake for One {
            fn wake(self: std::sync::Arc<Self>) {
                self.0
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(self.1);
            }
        }
        Waker::from(std::sync::Arc::new(One(std::sync::Arc::clone(log), n)))
    }

    #[test]
    fn held_wakes_are_released_in_order_when_the_hold_ends() {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let counters = Counters::default();
        let outboxes: Vec<Outbox> = (0..3).map(|_| Outbox::new(8, 1 << 20)).collect();
        let wait = |outbox: &Outbox, n| {
            let waker = logging_waker(&log, n);
            assert_eq!(
                outbox.poll_close_requested(&mut Context::from_waker(&waker)),
                Poll::Pending
            );
        };
        for (n, outbox) in outboxes.iter().enumerate() {
            wait(outbox, n);
        }
        let taken = || log.lock().unwrap_or_else(PoisonError::into_inner).clone();
        {
            let _held = HeldWakes::hold();
            outboxes[2].offer(frame("c"), Priority::Normal, &counters);
            {
                // A hold inside a hold holds nothing of its own.
                let _inner = HeldWakes::hold();
                outboxes[0].offer(frame("a"), Priority::Normal, &counters);
            }
            outboxes[1].close(CloseCode::SlowConsumer);
            assert!(taken().is_empty(), "nothing is woken while held");
        }
        assert_eq!(taken(), [2, 0, 1]);
        // Without a hold a wake is at once, and a hold after a hold starts empty.
        wait(&outboxes[0], 0);
        outboxes[0].offer(frame("d"), Priority::Normal, &counters);
        assert_eq!(taken(), [2, 0, 1, 0]);
        wait(&outboxes[2], 2);
        {
            let _held = HeldWakes::hold();
            outboxes[2].offer(frame("e"), Priority::Normal, &counters);
            assert_eq!(taken().len(), 4);
        }
        assert_eq!(taken(), [2, 0, 1, 0, 2]);
    }

    #[test]
    fn critical_frames_are_never_shed() {
        let outbox = Outbox::new(2, 1 << 20);
        let counters = Counters::default();
        assert_eq!(
            outbox.offer(frame("event-1"), Priority::Critical, &counters),
            Offer::Queued { shed: 0 }
        );
        assert_eq!(
            outbox.offer(frame("normal"), Priority::Normal, &counters),
            Offer::Queued { shed: 0 }
        );
        // A critical frame takes the normal one's place, never the other critical frame's.
        assert_eq!(
            outbox.offer(frame("event-2"), Priority::Critical, &counters),
            Offer::Queued { shed: 1 }
        );
        assert_eq!(
            outbox.offer(frame("event-3"), Priority::Critical, &counters),
            Offer::Closed
        );
        assert_eq!(outbox.close_requested(), Some(CloseCode::SlowConsumer));
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = Vec::new();
        // A slow consumer's queue is not flushed, but nothing critical was dropped to make room.
        assert_eq!(
            outbox.poll_drain(&mut cx, 10, &mut out),
            Poll::Ready(Some(CloseCode::SlowConsumer))
        );
        assert_eq!(
            outbox
                .take_all()
                .iter()
                .map(|f| f.as_str().to_owned())
                .collect::<Vec<_>>(),
            ["event-1", "event-2"]
        );
    }

    #[test]
    fn close_flushes_queued_frames_first_and_first_code_wins() {
        let outbox = Outbox::new(10, 1 << 20);
        let counters = Counters::default();
        outbox.offer(frame("a"), Priority::Normal, &counters);
        assert!(outbox.close(CloseCode::GoingAway));
        assert!(!outbox.close(CloseCode::Stale));
        assert_eq!(
            outbox.offer(frame("b"), Priority::Critical, &counters),
            Offer::Closed
        );
        assert_eq!(
            drain(&outbox),
            (vec!["a".into()], Some(CloseCode::GoingAway))
        );
    }
}
