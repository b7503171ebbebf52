//! Request headers as the checks read them, whoever parsed the request: hyper's `HeaderMap`,
//! or [`DirectHead`], the head of a connection's first request that `conn` parsed itself to
//! answer a WebSocket handshake without hyper. The handshake's checks, the bearer token and a
//! trusted proxy's `X-Forwarded-For` read either through [`Headers`], so the direct path
//! builds no `http::Request` (its header map, names and values cost a connection more than
//! the rest of its HTTP parse).

use std::ops::Range;

use http::{HeaderMap, HeaderName, HeaderValue};

/// A request's headers, looked up by name.
pub(crate) trait Headers {
    /// The values of the headers named `name` (matched ignoring case), in the order they came.
    /// A `HeaderName` (`http::header`'s constants) rather than a string: a map looks it up
    /// without parsing it again.
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a;

    /// The first value of the headers named `name`.
    fn value<'a>(&'a self, name: &'a HeaderName) -> Option<&'a [u8]> {
        self.values(name).next()
    }

    /// The first value of `name` as text, when it is text (see [`text`]).
    fn text<'a>(&'a self, name: &'a HeaderName) -> Option<&'a str> {
        self.value(name).and_then(text)
    }

    /// The values of `name` that are text, split on commas and trimmed, in order: the items
    /// of a list-valued header (`Connection`, `Upgrade`, `X-Forwarded-For`).
    fn items<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a str> + 'a {
        self.values(name)
            .filter_map(text)
            .flat_map(|value| value.split(','))
            .map(str::trim)
    }
}

impl Headers for HeaderMap {
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.get_all(name).iter().map(HeaderValue::as_bytes)
    }
}

/// A header value as text when it is visible ASCII (tabs and spaces included), as
/// `HeaderValue::to_str` reads it; `None` otherwise.
pub(crate) fn text(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// Where a request head parsed by `httparse` lies in the bytes it was parsed from: its length,
/// its target and each header's name and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    head_len: usize,
    target: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
}

impl Layout {
    /// The layout of `request`, parsed from `bytes` and `head_len` bytes long; `None` when it
    /// has no target.
    pub(crate) fn of(
        bytes: &[u8],
        head_len: usize,
        request: &httparse::Request<'_, '_>,
    ) -> Option<Self> {
        let base = bytes.as_ptr() as usize;
        // Each part is a slice of `bytes`: its offset is its distance from the start.
        let at = |part: &[u8]| {
            let start = (part.as_ptr() as usize).saturating_sub(base);
            start..start + part.len()
        };
        let layout = Self {
            head_len,
            target: at(request.path?.as_bytes()),
            headers: request
                .headers
                .iter()
                .map(|header| (at(header.name.as_bytes()), at(header.value)))
                .collect(),
        };
        // Every part lies within the head (they were parsed from it).
        let within = |range: &Range<usize>| range.end <= head_len;
        (within(&layout.target) && layout.headers.iter().all(|(n, v)| within(n) && within(v)))
            .then_some(layout)
    }

    /// How long the head is.
    pub(crate) fn head_len(&self) -> usize {
        self.head_len
    }
}

/// The head of a request parsed by `httparse`, kept as its bytes and its [`Layout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DirectHead {
    bytes: Vec<u8>,
    layout: Layout,
}

impl DirectHead {
    /// The head laid out as `layout` says in `bytes` (what follows the head is dropped).
    pub(crate) fn new(mut bytes: Vec<u8>, layout: Layout) -> Self {
        bytes.truncate(layout.head_len);
        Self { bytes, layout }
    }

    /// The request target (path and query).
    pub(crate) fn target(&self) -> &str {
        self.str_at(&self.layout.target)
    }

    /// The target's query, without the `?` ("" without one).
    pub(crate) fn query(&self) -> &str {
        self.target().split_once('?').map_or("", |(_, query)| query)
    }

    fn str_at(&self, range: &Range<usize>) -> &str {
        // httparse checked the target and the names to be visible ASCII.
        self.bytes
            .get(range.clone())
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .unwrap_or("")
    }
}

impl Headers for DirectHead {
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl Iterator<Item = &'a [u8]> + 'a {
        let bytes_at = |range: &Range<usize>| self.bytes.get(range.clone()).unwrap_or_default();
        self.layout
            .headers
            .iter()
            .filter(move |(n, _)| bytes_at(n).eq_ignore_ascii_case(name.as_ref()))
            .map(move |(_, value)| bytes_at(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> DirectHead {
        let bytes = text.as_bytes().to_vec();
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut request = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(len)) = request.parse(&bytes) else {
            panic!("not a complete head: {text:?}");
        };
        let layout = Layout::of(&bytes, len, &request).expect("a target");
        DirectHead::new(bytes.clone(), layout)
    }

    #[test]
    fn a_parsed_head_reads_like_a_header_map() {
        let head = parsed(
            "GET /ws?token=abc&thread=t1 HTTP/1.1\r\nHost: h\r\nconnection: keep-alive, Upgrade\r\n\
             X-Forwarded-For: 1.2.3.4\r\nx-forwarded-for: 5.6.7.8, 9.9.9.9\r\nOrigin: é\r\n\r\nleftover",
        );
        let mut map = HeaderMap::new();
        map.append("host", HeaderValue::from_static("h"));
        map.append(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        map.append("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        map.append(
            "x-forwarded-for",
            HeaderValue::from_static("5.6.7.8, 9.9.9.9"),
        );
        map.append(
            "origin",
            HeaderValue::from_bytes(b"\xc3\xa9").expect("obs-text"),
        );
        assert_eq!(head.target(), "/ws?token=abc&thread=t1");
        assert_eq!(head.query(), "token=abc&thread=t1");
        for name in ["host", "connection", "x-forwarded-for", "origin", "upgrade"] {
            let name = &HeaderName::from_static(name);
            assert!(head.values(name).eq(Headers::values(&map, name)), "{name}");
            assert!(head.items(name).eq(Headers::items(&map, name)), "{name}");
            assert_eq!(head.text(name), Headers::text(&map, name), "{name}");
        }
        assert_eq!(
            head.items(&HeaderName::from_static("x-forwarded-for"))
                .collect::<Vec<_>>(),
            ["1.2.3.4", "5.6.7.8", "9.9.9.9"]
        );
        assert_eq!(head.text(&http::header::ORIGIN), None);
        assert_eq!(head.value(&http::header::UPGRADE), None);
    }

    #[test]
    fn a_target_without_a_query_has_an_empty_one() {
        assert_eq!(parsed("GET /ws HTTP/1.1\r\n\r\n").query(), "");
        assert_eq!(parsed("GET /ws? HTTP/1.1\r\n\r\n").query(), "");
    }

    #[test]
    fn text_is_visible_ascii_as_header_values_read() {
        assert_eq!(text(b"a b\tc~"), Some("a b\tc~"));
        assert_eq!(text(b"\xc3\xa9"), None);
        assert_eq!(text(b"a\x7f"), None);
        assert_eq!(text(b""), Some(""));
        for value in [&b"a b\tc~"[..], b"\xc3\xa9", b"a\x7f", b""] {
            let expected = HeaderValue::from_bytes(value)
                .ok()
                .and_then(|v| v.to_str().ok().map(str::to_owned));
            assert_eq!(text(value).map(str::to_owned), expected);
        }
    }
}
