//! Shutdown: flush, close 1001, refuse newcomers and publications.

use herald_utils::Priority::Normal;

use crate::Refusal;

use super::*;

/// Drains the outbox the way the transport does: frames first, then the close code.
fn drain(session: &Session) -> (usize, Option<CloseCode>) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    loop {
        match session
            .connection()
            .outbox()
            .poll_drain(&mut cx, 16, &mut out)
        {
            Poll::Ready(None) => {}
            Poll::Ready(Some(code)) => return (out.len(), Some(code)),
            Poll::Pending => return (out.len(), None),
        }
    }
}

#[test]
fn shutdown_flushes_queued_frames_then_closes_1001_and_refuses_newcomers() {
    let harness = Harness::new();
    let mut alice = harness.connect("alice");
    let bob = harness.connect("bob");
    let anonymous = harness.anonymous();
    let admitted_before = harness
        .gateway
        .admit(None, None)
        .expect("admitted before shutdown");
    subscribe(&mut alice, "chat:1");
    harness.publish("chat:1", "1", Normal);
    harness.publish("chat:1", "2", Normal);
    harness.gateway.begin_shutdown();
    assert_eq!(drain(&alice), (2, Some(CloseCode::GoingAway)));
    assert_eq!(drain(&bob), (0, Some(CloseCode::GoingAway)));
    assert_eq!(drain(&anonymous), (0, Some(CloseCode::GoingAway)));
    assert_eq!(
        harness
            .gateway
            .admit(None, None)
            .expect_err("shutting down"),
        Refusal::Unavailable("shutting down")
    );
    assert!(harness.gateway.admit(Some(&token("carol")), None).is_err());
    assert_eq!(
        harness.publish_with_id("chat:1", "3", Normal, None),
        Err(GatewayError::ShuttingDown)
    );
    // A connection admitted just before the shutdown and opened after it is closed too.
    let late = harness.gateway.open(admitted_before);
    assert_eq!(close_code(&late), Some(1001));
    // A sweep during the drain does not replace the close code.
    harness.advance(120_000);
    harness.gateway.sweep();
    assert_eq!(close_code(&alice), Some(1001));
}
