//! permessage-deflate (RFC 7692): the extension's negotiation in the handshake and the
//! compression of an outbound message (once per frame, the copy shared by every connection
//! that negotiated it). The reading side is `inflate`.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress};

/// The extension's name in `Sec-WebSocket-Extensions`.
const EXTENSION: &str = "permessage-deflate";
/// The tail of a sync-flushed deflate block, which RFC 7692 (7.2.1) strips from a message and
/// the receiver appends again before inflating.
pub(super) const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// The compression level of outbound messages: zlib-rs's level 2. Measured in
/// docs/benchmarks.md ("Compression"): on 4 KiB of JSON it sends 12% fewer bytes than
/// miniz_oxide's level 1 for about a tenth more CPU, while level 6 costs almost three times
/// the CPU per message, which a point-to-point message pays once per delivery.
const LEVEL: u32 = 2;

/// What a connection agreed to in its handshake. Both sides compress every message on its own,
/// always: `server_no_context_takeover`, so one compressed copy of a publication serves every
/// subscriber, and `client_no_context_takeover` (which RFC 7692, 7.1.1.1, lets a server ask
/// for unoffered), so the server keeps no inflate state between a client's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deflate {
    /// The window the client allows the server (`server_max_window_bits`), when it limited it.
    server_max_window_bits: Option<u8>,
}

impl Deflate {
    /// The `Sec-WebSocket-Extensions` value of the 101 that accepts this agreement.
    pub(crate) fn response_header(&self) -> String {
        let mut header =
            format!("{EXTENSION}; server_no_context_takeover; client_no_context_takeover");
        if let Some(bits) = self.server_max_window_bits {
            header.push_str(&format!("; server_max_window_bits={bits}"));
        }
        header
    }

    /// The longest message this connection may receive compressed. Every message is
    /// compressed on its own with a 32 KiB window; a back-reference never reaches further back
    /// than the message's start, so a message no longer than the client's window is valid for
    /// it, and a longer one goes plain.
    pub(super) fn max_compressed_message(&self) -> usize {
        self.server_max_window_bits
            .map_or(usize::MAX, |bits| 1_usize << bits)
    }
}

/// Why a `Sec-WebSocket-Extensions` header was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OfferError {
    /// Not the grammar of RFC 6455, 9.1.
    #[error("malformed Sec-WebSocket-Extensions header: {0}")]
    Malformed(&'static str),
    /// A permessage-deflate parameter with a value RFC 7692 does not allow.
    #[error("bad permessage-deflate parameter: {0}")]
    BadParameter(String),
}

/// One extension of an offer: its name and its parameters, values unquoted.
type Extension = (String, Vec<(String, Option<String>)>);

/// Chooses among the client's offers (the `Sec-WebSocket-Extensions` header values, in order)
/// the first permessage-deflate offer the server can honour; `None` when there is none.
///
/// An offer with a parameter the server does not know is declined (RFC 7692, 5), and the next
/// one is tried. A header that breaks the grammar, or a permessage-deflate parameter that is
/// repeated or out of range, is refused with the reason, rather than silently declined, so a
/// client's mistake shows in its handshake.
pub(crate) fn negotiate<'a>(
    headers: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<Deflate>, OfferError> {
    let mut chosen = None;
    for header in headers {
        for (name, params) in parse_extensions(header)? {
            if !name.eq_ignore_ascii_case(EXTENSION) {
                continue;
            }
            let offer = deflate_offer(&params)?;
            if chosen.is_none() {
                chosen = offer;
            }
        }
    }
    Ok(chosen)
}

/// A permessage-deflate offer's parameters checked: the agreement, `None` when the offer has
/// a parameter the server does not know.
fn deflate_offer(params: &[(String, Option<String>)]) -> Result<Option<Deflate>, OfferError> {
    let mut deflate = Deflate {
        server_max_window_bits: None,
    };
    let mut seen: Vec<&str> = Vec::new();
    let mut unknown = false;
    for (name, value) in params {
        let name = name.as_str();
        if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            return Err(OfferError::BadParameter(format!("{name} given twice")));
        }
        seen.push(name);
        let no_value = |value: &Option<String>| match value {
            None => Ok(()),
            Some(_) => Err(OfferError::BadParameter(format!("{name} takes no value"))),
        };
        match name.to_ascii_lowercase().as_str() {
            // Both are what the server answers anyway.
            "server_no_context_takeover" | "client_no_context_takeover" => no_value(value)?,
            "server_max_window_bits" => {
                let bits = value
                    .as_deref()
                    .and_then(window_bits)
                    .ok_or_else(|| bad_window(name))?;
                deflate.server_max_window_bits = Some(bits);
            }
            "client_max_window_bits" => {
                // Any window the client uses is within the 32 KiB the server inflates with.
                if value.as_deref().is_some_and(|v| window_bits(v).is_none()) {
                    return Err(bad_window(name));
                }
            }
            _ => unknown = true,
        }
    }
    Ok((!unknown).then_some(deflate))
}

/// The refusal of a window-bits parameter's value.
fn bad_window(name: &str) -> OfferError {
    OfferError::BadParameter(format!("{name} must be an integer from 8 to 15"))
}

/// A window-bits value: 8 to 15, in decimal without leading zeros.
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || value.len() > 2 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

/// The extensions of one header value (RFC 6455, 9.1): `name *( ";" param [ "=" value ] )`,
/// comma-separated, a value a token or a quoted string.
fn parse_extensions(header: &[u8]) -> Result<Vec<Extension>, OfferError> {
    let mut parser = Parser {
        bytes: header,
        at: 0,
    };
    let mut extensions = Vec::new();
    loop {
        parser.skip_spaces();
        if parser.eat(b',') {
            // An empty element of the list.
            continue;
        }
        if parser.done() {
            return Ok(extensions);
        }
        let name = parser
            .token()
            .ok_or(OfferError::Malformed("expected an extension name"))?;
        let mut params = Vec::new();
        loop {
            parser.skip_spaces();
            if parser.done() || parser.eat(b',') {
                break;
            }
            if !parser.eat(b';') {
                return Err(OfferError::Malformed(
                    "expected `;` or `,` after an extension",
                ));
            }
            parser.skip_spaces();
            let param = parser
                .token()
                .ok_or(OfferError::Malformed("expected a parameter name"))?;
            parser.skip_spaces();
            let value = if parser.eat(b'=') {
                parser.skip_spaces();
                Some(parser.value()?)
            } else {
                None
            };
            params.push((param, value));
        }
        extensions.push((name, params));
    }
}

/// A cursor over a header value.
struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn done(&self) -> bool {
        self.at >= self.bytes.len()
    }

    fn skip_spaces(&mut self) {
        while self
            .bytes
            .get(self.at)
            .is_some_and(|b| *b == b' ' || *b == b'\t')
        {
            self.at += 1;
        }
    }

    /// Takes `byte` if it is next.
    fn eat(&mut self, byte: u8) -> bool {
        let next = self.bytes.get(self.at) == Some(&byte);
        self.at += usize::from(next);
        next
    }

    /// A token (RFC 7230's `tchar`s), if one is next.
    fn token(&mut self) -> Option<String> {
        let start = self.at;
        while self.bytes.get(self.at).is_some_and(|b| is_tchar(*b)) {
            self.at += 1;
        }
        (self.at > start).then(|| String::from_utf8_lossy(&self.bytes[start..self.at]).into_owned())
    }

    /// A parameter's value: a token, or a quoted string whose content must itself be a token
    /// (RFC 6455, 9.1).
    fn value(&mut self) -> Result<String, OfferError> {
        if !self.eat(b'"') {
            return self
                .token()
                .ok_or(OfferError::Malformed("expected a parameter value"));
        }
        let mut value = Vec::new();
        loop {
            match self.bytes.get(self.at) {
                None => return Err(OfferError::Malformed("unterminated quoted string")),
                Some(b'"') => {
                    self.at += 1;
                    break;
                }
                Some(b'\\') => {
                    let escaped = *self
                        .bytes
                        .get(self.at + 1)
                        .ok_or(OfferError::Malformed("unterminated quoted string"))?;
                    value.push(escaped);
                    self.at += 2;
                }
                Some(byte) => {
                    value.push(*byte);
                    self.at += 1;
                }
            }
        }
        if value.is_empty() || !value.iter().all(|b| is_tchar(*b)) {
            return Err(OfferError::Malformed("a quoted value must be a token"));
        }
        Ok(String::from_utf8_lossy(&value).into_owned())
    }
}

/// RFC 7230's `tchar`.
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

thread_local! {
    /// Each worker thread's compressor, reset before every message: a compressor's state is
    /// hundreds of kilobytes, so it is kept per thread, never per connection or per message.
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::new(LEVEL), false));
}

/// `message` compressed on its own as one permessage-deflate message (raw deflate, the tail
/// stripped), or empty when that is no shorter than the message, which then goes plain.
pub(super) fn compress(message: &[u8]) -> Bytes {
    COMPRESSOR.with_borrow_mut(|compressor| {
        compressor.reset();
        let mut out = Vec::with_capacity(message.len() / 2 + 64);
        loop {
            let consumed = usize::try_from(compressor.total_in()).unwrap_or(usize::MAX);
            let input = message.get(consumed..).unwrap_or_default();
            if compressor
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .is_err()
            {
                return Bytes::new();
            }
            let consumed = usize::try_from(compressor.total_in()).unwrap_or(usize::MAX);
            // A sync flush is complete once it returns with room to spare.
            if consumed >= message.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if out.len() >= message.len() {
            Bytes::new()
        } else {
            Bytes::from(out)
        }
    })
}

#[cfg(test)]
mod tests {
    use flate2::{Decompress, FlushDecompress};

    use super::*;

    /// Bytes from a small linear congruential generator: incompressible, and the same on
    /// every run.
    fn noise(len: usize, seed: u32) -> Vec<u8> {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (state >> 16) as u8
            })
            .collect()
    }

    /// Inflates a message `compress` produced, the tail put back.
    fn inflate_whole(compressed: &[u8]) -> Vec<u8> {
        let mut input = compressed.to_vec();
        input.extend_from_slice(&TAIL);
        let mut inflater = Decompress::new(false);
        let mut out = Vec::with_capacity(1 << 20);
        inflater
            .decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .expect("inflates");
        out
    }

    #[test]
    fn large_messages_that_barely_compress_come_back_whole() {
        // Mostly incompressible messages of every size around the deflate block and window
        // sizes: the compressor's output must not stop while it still holds some of it.
        for len in [32_768, 65_535, 65_536, 65_537, 100_000, 131_072, 262_144] {
            for text_every in [0, 2, 3, 5, 9, 17] {
                // Runs of noise between runs of text, as in a PDF or an image format.
                let mut message = noise(len, len as u32);
                if text_every > 0 {
                    for (i, byte) in message.iter_mut().enumerate() {
                        if (i / 256) % text_every == 0 {
                            *byte = b"herald "[i % 7];
                        }
                    }
                }
                let compressed = compress(&message);
                if compressed.is_empty() {
                    continue;
                }
                assert_eq!(
                    inflate_whole(&compressed),
                    message,
                    "{len} bytes, text every {text_every}"
                );
            }
        }
    }

    fn offer(headers: &[&str]) -> Result<Option<Deflate>, OfferError> {
        negotiate(headers.iter().map(|h| h.as_bytes()))
    }

    fn accepted(bits: Option<u8>) -> Option<Deflate> {
        Some(Deflate {
            server_max_window_bits: bits,
        })
    }

    #[test]
    fn a_plain_offer_is_accepted_with_server_no_context_takeover() {
        let deflate = offer(&["permessage-deflate"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(deflate, accepted(None));
        assert_eq!(
            deflate.map(|d| d.response_header()).as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
        );
    }

    #[test]
    fn the_offers_browsers_and_python_send_are_accepted() {
        // Chromium and Firefox; Python's `websockets`.
        for header in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; server_max_window_bits=15; client_max_window_bits",
        ] {
            let deflate = offer(&[header]).unwrap_or_else(|e| panic!("{header}: {e}"));
            assert!(deflate.is_some(), "{header}");
        }
    }

    #[test]
    fn the_clients_parameters_are_honoured() {
        let deflate = offer(&[
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=\"10\"",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(deflate, accepted(Some(10)));
        let deflate = deflate.unwrap_or_else(|| panic!("accepted"));
        assert_eq!(
            deflate.response_header(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10"
        );
        // Longer messages than the client's window go plain.
        assert_eq!(deflate.max_compressed_message(), 1024);
        assert_eq!(
            accepted(None).map(|d| d.max_compressed_message()),
            Some(usize::MAX)
        );
    }

    #[test]
    fn an_offer_with_an_unknown_parameter_is_declined_for_the_next_one() {
        assert_eq!(
            offer(&[
                "permessage-deflate; x-future, permessage-deflate; client_no_context_takeover"
            ]),
            Ok(accepted(None))
        );
        // Across header lines too, in order.
        assert_eq!(
            offer(&["permessage-deflate; x-future", "permessage-deflate"]),
            Ok(accepted(None))
        );
        assert_eq!(offer(&["permessage-deflate; x-future"]), Ok(None));
    }

    #[test]
    fn no_offer_and_other_extensions_are_no_agreement() {
        assert_eq!(offer(&[]), Ok(None));
        assert_eq!(offer(&["x-webkit-deflate-frame"]), Ok(None));
        assert_eq!(
            offer(&["x-other; a=1, permessage-deflate"]),
            Ok(accepted(None))
        );
        // Empty list elements are allowed.
        assert_eq!(offer(&[", permessage-deflate ,"]), Ok(accepted(None)));
    }

    #[test]
    fn bad_parameters_are_refused_with_the_reason() {
        for (header, reason) in [
            (
                "permessage-deflate; server_max_window_bits=16",
                "server_max_window_bits must be an integer from 8 to 15",
            ),
            (
                "permessage-deflate; server_max_window_bits",
                "server_max_window_bits must be an integer from 8 to 15",
            ),
            (
                "permessage-deflate; server_max_window_bits=09",
                "server_max_window_bits must be an integer from 8 to 15",
            ),
            (
                "permessage-deflate; client_max_window_bits=7",
                "client_max_window_bits must be an integer from 8 to 15",
            ),
            (
                "permessage-deflate; server_no_context_takeover=1",
                "server_no_context_takeover takes no value",
            ),
            (
                "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
                "client_no_context_takeover given twice",
            ),
        ] {
            assert_eq!(
                offer(&[header]),
                Err(OfferError::BadParameter(reason.to_owned())),
                "{header}"
            );
        }
    }

    #[test]
    fn a_malformed_header_is_refused() {
        for header in [
            "permessage-deflate;",
            "permessage-deflate; =1",
            "permessage-deflate client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=\"10",
            "permessage-deflate; server_max_window_bits=\"\"",
            "(permessage-deflate)",
        ] {
            assert!(
                matches!(offer(&[header]), Err(OfferError::Malformed(_))),
                "{header}: {:?}",
                offer(&[header])
            );
        }
    }

    /// What the server inflates `compressed` to, as a client does.
    fn inflate_all(compressed: &[u8]) -> Vec<u8> {
        let mut inflater = Decompress::new(false);
        let mut input = compressed.to_vec();
        input.extend_from_slice(&TAIL);
        let mut out = Vec::with_capacity(1 << 20);
        inflater
            .decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap_or_else(|e| panic!("{e}"));
        out
    }

    #[test]
    fn an_outbound_message_is_compressed_to_what_a_client_inflates() {
        let message =
            br#"{"type":"message","topic":"chat:1","data":{"text":"hello hello hello hello"}}"#
                .repeat(20);
        let compressed = compress(&message);
        assert!(!compressed.is_empty());
        assert!(compressed.len() < message.len() / 4, "{}", compressed.len());
        assert_eq!(inflate_all(&compressed), message);
        // Compressed on its own: the same again, whatever came before.
        assert_eq!(compress(&message), compressed);
    }

    #[test]
    fn a_message_that_does_not_shrink_is_not_compressed() {
        let noise: Vec<u8> = (0..200_u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert!(compress(&noise).is_empty());
        assert!(compress(b"ab").is_empty());
    }
}
