//! The route table's vocabulary: a [`Route`] is a method, a path pattern, the listener that
//! serves it and a [`Handler`]; [`find`] picks the route for a request.

use std::{future::Future, pin::Pin, sync::Arc};

use http::{Method, Request, Response};
use hyper::body::Incoming;

use super::answer::Body;
use crate::{
    abuse::Standing,
    app::{App, Role},
    respond::ApiError,
};

/// What a handler answers: a response, or an error that becomes the contract's error body.
pub(super) type Answer = Result<Response<Body>, ApiError>;

/// The future a handler returns. Boxed so that the table can hold plain function pointers.
pub(super) type Reply = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// A route's handler.
pub(super) type Handler = fn(Call) -> Reply;

/// A handler's answer that is ready at once (a handler that reads no body).
pub(super) fn ready(answer: Answer) -> Reply {
    Box::pin(std::future::ready(answer))
}

/// What a handler is called with.
pub(super) struct Call {
    /// Everything the handlers share.
    pub(super) app: Arc<App>,
    /// The request, body unread.
    pub(super) request: Request<Incoming>,
    /// The values of the pattern's `{name}` segments.
    pub(super) params: Params,
    /// How the connection counts against the per-address limits; an upgrade takes it.
    pub(super) standing: Arc<Standing>,
}

/// The values of a pattern's `{name}` segments, as they appear in the path (not
/// percent-decoded: each handler decides).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Params(Vec<(&'static str, String)>);

impl Params {
    /// The value of `{name}`, or the empty string when the pattern has no such name. Each
    /// handler asks only for names of its own route's pattern; the end-to-end API tests call
    /// every route that has parameters.
    pub(super) fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(key, _)| *key == name)
            .map_or("", |(_, value)| value)
    }
}

/// Which listener serves a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Listener {
    /// The main listener: the WebSocket and the API.
    Main,
    /// The admin listener (or the main one when none is configured): metrics and health.
    Admin,
}

impl Listener {
    /// Whether a listener of `role` serves this listener's routes.
    pub(super) fn served_by(self, role: Role) -> bool {
        match self {
            Self::Main => role != Role::Admin,
            Self::Admin => role != Role::Public,
        }
    }
}

/// One row of the route table.
pub(super) struct Route {
    /// The method it answers.
    method: Method,
    /// The path: literal segments and `{name}` segments that match any one segment.
    pattern: &'static str,
    /// The listener that serves it.
    listener: Listener,
    /// What answers it.
    pub(super) handler: Handler,
}

impl Route {
    /// A route of the main listener.
    pub(super) const fn main(method: Method, pattern: &'static str, handler: Handler) -> Self {
        Self {
            method,
            pattern,
            listener: Listener::Main,
            handler,
        }
    }

    /// A route of the admin listener (the main one when no admin listener is configured).
    pub(super) const fn admin(method: Method, pattern: &'static str, handler: Handler) -> Self {
        Self {
            method,
            pattern,
            listener: Listener::Admin,
            handler,
        }
    }
}

/// The first route of `routes` that a listener of `role` serves for `method` and `path`, with
/// the path's parameters.
pub(super) fn find<'r>(
    routes: &'r [Route],
    role: Role,
    method: &Method,
    path: &str,
) -> Option<(&'r Route, Params)> {
    routes
        .iter()
        .filter(|route| route.method == *method && route.listener.served_by(role))
        .find_map(|route| Some((route, matches(route.pattern, path)?)))
}

/// The parameters of `path` when it matches `pattern`. Segments are split on `/` after the
/// leading ones; `{name}` matches any one segment, the empty one included.
fn matches(pattern: &'static str, path: &str) -> Option<Params> {
    // A pattern without parameters matches exactly the paths with the same segments: the same
    // text after the leading slashes. Compared at once, as every publish's route is.
    if !pattern.contains('{') {
        let same = path.trim_start_matches('/') == pattern.trim_start_matches('/');
        return same.then(|| Params(Vec::new()));
    }
    let mut params = Vec::new();
    let mut wanted = segments(pattern);
    let mut given = segments(path);
    loop {
        match (wanted.next(), given.next()) {
            (None, None) => return Some(Params(params)),
            (Some(want), Some(got)) => {
                match want.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
                    Some(name) => params.push((name, got.to_owned())),
                    None if want == got => {}
                    None => return None,
                }
            }
            _ => return None,
        }
    }
}

/// The `/`-separated segments of a path, after its leading slashes.
pub(super) fn segments(path: &str) -> std::str::Split<'_, char> {
    path.trim_start_matches('/').split('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(pattern: &'static str, path: &str, expected: Option<&[(&'static str, &str)]>) {
        let expected = expected
            .map(|pairs| Params(pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()));
        assert_eq!(matches(pattern, path), expected, "{pattern} against {path}");
    }

    #[test]
    fn literal_patterns_match_exactly() {
        check("/api/publish", "/api/publish", Some(&[]));
        check("/api/publish", "/api/publish/", None);
        check("/api/publish", "/api/publish/batch", None);
        check("/api/publish", "/api", None);
        check("/health", "/health/live", None);
        check("/ws", "//ws", Some(&[]));
    }

    proptest::proptest! {
        /// A literal pattern matches exactly the paths whose segments are the pattern's.
        #[test]
        fn a_literal_pattern_matches_the_paths_with_its_segments(
            path in "(/{1,2}(api|publish|batch|ws|health|)){0,4}",
        ) {
            for route in super::super::ROUTES.iter().filter(|r| !r.pattern.contains('{')) {
                let same_segments = segments(route.pattern).eq(segments(&path));
                proptest::prop_assert_eq!(
                    matches(route.pattern, &path).is_some(),
                    same_segments,
                    "{} against {}",
                    route.pattern,
                    path
                );
            }
        }
    }

    #[test]
    fn parameters_take_one_segment_each() {
        check(
            "/api/users/{userId}/events",
            "/api/users/alice/events",
            Some(&[("userId", "alice")]),
        );
        check(
            "/api/topics/{topic}",
            "/api/topics/chat%3A1",
            Some(&[("topic", "chat%3A1")]),
        );
        check(
            "/api/topics/{topic}",
            "/api/topics/",
            Some(&[("topic", "")]),
        );
        check("/api/topics/{topic}", "/api/topics/a/b", None);
        check(
            "/api/topics/{topic}/history",
            "/api/topics/a/history",
            Some(&[("topic", "a")]),
        );
    }

    #[test]
    fn every_pattern_is_well_formed() {
        for route in super::super::ROUTES {
            assert!(route.pattern.starts_with('/'), "{}", route.pattern);
            let mut names: Vec<&str> = segments(route.pattern)
                .filter(|s| s.contains(['{', '}']))
                .map(|s| {
                    s.strip_prefix('{')
                        .and_then(|s| s.strip_suffix('}'))
                        .unwrap_or_else(|| panic!("bad segment in {}", route.pattern))
                })
                .collect();
            let count = names.len();
            names.dedup();
            assert_eq!(names.len(), count, "{}", route.pattern);
        }
    }

    #[test]
    fn no_two_routes_answer_the_same_request() {
        let routes = super::super::ROUTES;
        for (i, a) in routes.iter().enumerate() {
            for b in &routes[i + 1..] {
                let same_shape = a.method == b.method
                    && segments(a.pattern).count() == segments(b.pattern).count()
                    && segments(a.pattern)
                        .zip(segments(b.pattern))
                        .all(|(x, y)| x == y || x.starts_with('{') || y.starts_with('{'));
                assert!(!same_shape, "{} and {} overlap", a.pattern, b.pattern);
            }
        }
    }
}
