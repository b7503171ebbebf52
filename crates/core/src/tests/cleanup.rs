//! Cleanup: every way a connection ends leaves nothing behind in any index.

use crate::LimitPolicy;

use super::*;

/// Opens a mix of connections (two of alice's, one bound to a thread, bob's, an anonymous one),
/// subscribes the authenticated ones, lets `end` close some of them its way, drops them all
/// and asserts every index is empty. `end` may add sessions.
#[track_caller]
fn check_cleanup(
    configure: impl FnOnce(&mut GatewaySettings),
    end: impl FnOnce(&Harness, &mut Vec<Session>),
) {
    let harness = Harness::with(configure);
    let mut sessions = vec![
        harness.connect("alice"),
        harness.connect_on("alice", Some("t1")),
        harness.connect("bob"),
    ];
    for session in &mut sessions {
        subscribe(session, "chat:1");
        subscribe(session, "news");
    }
    sessions.push(harness.anonymous());
    end(&harness, &mut sessions);
    drop(sessions);
    assert_stats_empty(&harness);
    // Published topics keep their offsets for the retention time, then go too.
    harness.advance(300_000);
    harness.gateway.sweep();
    assert_eq!(harness.stats().topics, 0);
}

#[test]
fn dropping_sessions_leaves_nothing() {
    check_cleanup(|_| {}, |_, _| {});
}

#[test]
fn sessions_closed_by_the_sweep_leave_nothing() {
    check_cleanup(
        |_| {},
        |harness, _| {
            harness.advance(60_000);
            let report = harness.gateway.sweep();
            assert_eq!((report.stale, report.auth_timeouts), (3, 1));
        },
    );
}

#[test]
fn evicted_sessions_leave_nothing() {
    check_cleanup(
        |_| {},
        |harness, sessions| {
            for _ in 0..3 {
                let mut session = harness.connect("alice");
                subscribe(&mut session, "chat:1");
                sessions.push(session);
            }
            assert_eq!(close_code(&sessions[0]), Some(4029));
            assert_eq!(close_code(&sessions[1]), Some(4029));
        },
    );
}

#[test]
fn refused_and_unauthenticated_sessions_leave_nothing() {
    check_cleanup(
        |s| s.user_limit_policy = LimitPolicy::Reject,
        |harness, sessions| {
            sessions.push(harness.connect("alice"));
            let mut refused = harness.anonymous();
            refused.on_text(&format!(
                r#"{{"type":"auth","data":{{"token":"{}"}}}}"#,
                token("alice")
            ));
            assert_eq!(close_code(&refused), Some(4030));
            sessions.push(refused);
            sessions[0].on_text(r#"{"type":"auth","data":{"token":"garbage"}}"#);
            assert_eq!(close_code(&sessions[0]), Some(4001));
        },
    );
}

#[test]
fn slow_consumers_and_api_disconnects_leave_nothing() {
    check_cleanup(
        |s| s.max_queue_size = 2,
        |harness, sessions| {
            for n in 0..3 {
                harness.publish("news", &n.to_string(), Priority::Normal);
            }
            assert!(sessions[..3].iter().all(|s| close_code(s) == Some(4009)));
            harness
                .gateway
                .disconnect(sessions[3].connection().id())
                .expect("known connection");
        },
    );
}

#[test]
fn shutdown_leaves_nothing() {
    check_cleanup(|_| {}, |harness, _| harness.gateway.begin_shutdown());
}

#[test]
fn a_thousand_open_subscribe_drop_cycles_leave_nothing() {
    let harness = Harness::new();
    let mut steady = harness.connect("steady");
    subscribe(&mut steady, "chat:shared");
    for cycle in 0..1_000 {
        let user = format!("user{}", cycle % 7);
        let mut session = harness.connect_on(&user, (cycle % 3 == 0).then_some("t1"));
        subscribe(&mut session, "chat:shared");
        subscribe(&mut session, &format!("chat:{cycle}"));
        subscribe(&mut session, &format!("user:{user}"));
        if cycle % 10 == 0 {
            harness.publish("chat:shared", "1", Priority::Normal);
        }
        drop(session);
    }
    let stats = harness.stats();
    assert_eq!(
        (
            stats.connections,
            stats.users,
            stats.subscriptions,
            stats.topics
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(offsets(&steady, "chat:shared").len(), 100);
    drop(steady);
    assert_stats_empty(&harness);
}

/// A closed connection's queue is freed by the cleanup itself, not when the last reference to
/// the connection goes (the connection index frees entries lazily): a burst queued to a slow
/// subscriber must not outlive it.
#[test]
fn a_closed_connections_queue_is_freed_at_once() {
    let harness = Harness::new();
    let mut slow = harness.connect("alice");
    subscribe(&mut slow, "news");
    for n in 0..5 {
        harness.publish("news", &n.to_string(), Priority::Normal);
    }
    let connection = Arc::clone(slow.connection());
    assert_eq!(connection.outbox().len(), 5);
    drop(slow);
    assert_eq!(connection.outbox().len(), 0);
}
