//! Fail-fast UTF-8 for client text messages: [`Utf8Scan`] follows the stream of frames a
//! client sends, byte for byte as tungstenite will read it, and checks each text message's
//! UTF-8 as its bytes arrive, so that a connection is failed (1007) at the read that brings the
//! first byte no valid text can continue with, not once the frame is whole (RFC 6455, 8.1:
//! "fail the WebSocket connection" on invalid UTF-8; Autobahn 6.4.3 and 6.4.4 send one text
//! frame in chops, the bad one before a pause).
//!
//! tungstenite stays the one reader of every frame: the scan only watches. It judges nothing
//! but UTF-8, and only where tungstenite would take the bytes for text: a masked frame without
//! reserved bits that is a text message's first frame (no fragmented message under way) or a
//! continuation of a fragmented text message. A frame tungstenite refuses for anything else
//! (out of order, unmasked, reserved bits or opcodes, too long) is left to it, so its close
//! code (1002, 1009) is the one the client gets. A close frame's reason is short and checked
//! by tungstenite once whole.
//!
//! The check is one linear pass over bytes tungstenite's buffer already holds (the scan has no
//! buffer of its own and tungstenite's still holds them masked): a run of ASCII, most of a
//! JSON client frame, is judged in place eight bytes at a time against the mask; from the
//! first word that is not ASCII on, each byte is unmasked once, into a stack buffer, and
//! validated by `std::str::from_utf8`, with an incomplete code point (at most three bytes)
//! carried to the next read or the next fragment. Validity of a prefix is decided byte by byte by
//! `from_utf8`'s error: `error_len() == None` is a valid prefix cut short, anything else can
//! never become valid.
//!
//! The scan is 24 bytes; its owner keeps it only while a frame or a fragmented message is
//! partly received ([`Utf8Scan::idle`]), so a connection between messages holds none.

use crate::ws::frame::{BINARY, CONTINUATION, Header, MAX_HEADER, TEXT};

/// Payload bytes unmasked and validated at a time.
const SCRATCH: usize = 512;

/// Where a client's stream of frames is, for its text messages' UTF-8. Sticky once it fails.
#[derive(Debug, Clone)]
pub(super) struct Utf8Scan {
    /// The position in the stream.
    at: At,
    /// The fragmented message under way, if any.
    message: Message,
    /// The start of a code point whose other bytes have not arrived.
    carry: [u8; 3],
    /// How much of `carry` is held.
    carry_len: u8,
    /// A text message's bytes were not UTF-8.
    failed: bool,
}

/// The scan's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// At a frame's header, of which `len` bytes arrived (a whole one is read at once).
    Header {
        bytes: [u8; MAX_HEADER - 1],
        len: u8,
    },
    /// Inside a frame's payload.
    Payload {
        /// Bytes left.
        left: u64,
        /// The masking key, turned so that its first byte masks the next payload byte.
        mask: [u8; 4],
        /// The payload is text to check.
        checked: bool,
        /// The frame ends a text message: no code point may be left unfinished.
        last: bool,
    },
}

/// A fragmented message under way, as tungstenite will judge the next frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    /// None: the next data frame begins a message.
    None,
    /// A text message: its continuations are checked.
    Text,
    /// A binary message: its continuations are not.
    Binary,
}

impl Default for Utf8Scan {
    fn default() -> Self {
        Self {
            at: At::Header {
                bytes: [0; MAX_HEADER - 1],
                len: 0,
            },
            message: Message::None,
            carry: [0; 3],
            carry_len: 0,
            failed: false,
        }
    }
}

impl Utf8Scan {
    /// Whether the scan is between frames, outside any fragmented message, with nothing
    /// held: as new, and free to drop.
    pub(super) fn idle(&self) -> bool {
        matches!(self.at, At::Header { len: 0, .. })
            && self.message == Message::None
            && self.carry_len == 0
            && !self.failed
    }

    /// Whether a text message's bytes were found not to be UTF-8.
    pub(super) fn failed(&self) -> bool {
        self.failed
    }

    /// Follows `bytes`, the next ones tungstenite reads; stops at the first byte that breaks a
    /// text message's UTF-8 (see [`Utf8Scan::failed`]).
    pub(super) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.failed {
            match self.at {
                At::Header {
                    bytes: mut held,
                    len,
                } => {
                    let held_len = usize::from(len);
                    let parsed = if held_len == 0 {
                        Header::parse(bytes).map(|header| (header, header.header_len))
                    } else {
                        let mut joined = [0; MAX_HEADER];
                        joined[..held_len].copy_from_slice(&held[..held_len]);
                        let more = bytes.len().min(MAX_HEADER - held_len);
                        joined[held_len..held_len + more].copy_from_slice(&bytes[..more]);
                        Header::parse(&joined[..held_len + more])
                            .map(|header| (header, header.header_len - held_len))
                    };
                    let Some((header, used)) = parsed else {
                        // Fewer than `MAX_HEADER` bytes in all (`Header::parse` reads any
                        // longer run), so they fit.
                        held[held_len..held_len + bytes.len()].copy_from_slice(bytes);
                        let len = (held_len + bytes.len()) as u8;
                        self.at = At::Header { bytes: held, len };
                        return;
                    };
                    bytes = &bytes[used..];
                    self.begin(&header);
                }
                At::Payload {
                    left,
                    mask,
                    checked,
                    last,
                } => {
                    let n = bytes.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let (payload, rest) = bytes.split_at(n);
                    bytes = rest;
                    if checked {
                        self.check(payload, mask);
                    }
                    let left = left - n as u64;
                    let mut mask = mask;
                    mask.rotate_left(n % 4);
                    self.at = At::Payload {
                        left,
                        mask,
                        checked,
                        last,
                    };
                    if left == 0 {
                        self.end_frame();
                    }
                }
            }
        }
    }

    /// Decides whether the frame `header` begins is checked, and what it does to the
    /// fragmented message under way.
    fn begin(&mut self, header: &Header) {
        // What tungstenite refuses, it refuses on its own terms.
        let sound = header.mask.is_some() && !header.rsv1 && !header.other_rsv;
        let checked = sound
            && !header.control()
            && match (header.opcode, self.message) {
                (TEXT, Message::None) => {
                    if !header.fin {
                        self.message = Message::Text;
                    }
                    true
                }
                (BINARY, Message::None) => {
                    if !header.fin {
                        self.message = Message::Binary;
                    }
                    false
                }
                (CONTINUATION, Message::Text | Message::Binary) => {
                    let text = self.message == Message::Text;
                    if header.fin {
                        self.message = Message::None;
                    }
                    text
                }
                // Out of order or reserved: tungstenite fails the connection (1002).
                _ => false,
            };
        self.at = At::Payload {
            left: header.len,
            mask: header.mask.unwrap_or_default(),
            checked,
            last: checked && header.fin,
        };
        if header.len == 0 {
            self.end_frame();
        }
    }

    /// The current frame's payload is all in: a text message it ends must not end inside a
    /// code point.
    fn end_frame(&mut self) {
        if let At::Payload { last: true, .. } = self.at
            && self.carry_len != 0
        {
            self.failed = true;
        }
        self.at = At::Header {
            bytes: [0; MAX_HEADER - 1],
            len: 0,
        };
    }

    /// Checks `payload`, masked with `mask` (turned to its first byte), as the next bytes of
    /// a text message.
    fn check(&mut self, payload: &[u8], mut mask: [u8; 4]) {
        let mut payload = payload;
        if self.carry_len == 0 {
            // Client frames are mostly ASCII (JSON): judged in place, never copied.
            let ascii = ascii_prefix(payload, mask);
            payload = &payload[ascii..];
            mask.rotate_left(ascii % 4);
            if payload.is_empty() {
                return;
            }
        }
        let mut scratch = [0; SCRATCH];
        while !payload.is_empty() {
            let carried = usize::from(self.carry_len);
            scratch[..carried].copy_from_slice(&self.carry[..carried]);
            let n = payload.len().min(SCRATCH - carried);
            unmask(&payload[..n], &mut scratch[carried..carried + n], mask);
            mask.rotate_left(n % 4);
            payload = &payload[n..];
            let text = &scratch[..carried + n];
            match std::str::from_utf8(text) {
                Ok(_) => self.carry_len = 0,
                Err(error) if error.error_len().is_none() => {
                    // A valid prefix cut inside its last code point: at most three bytes.
                    let tail = &text[error.valid_up_to()..];
                    self.carry[..tail.len()].copy_from_slice(tail);
                    self.carry_len = tail.len() as u8;
                }
                Err(_) => {
                    self.failed = true;
                    return;
                }
            }
        }
    }
}

/// How many of `masked`'s first bytes are ASCII once unmasked with `mask` (turned to its first
/// byte), judged eight at a time without unmasking them: all of them when all are, else a
/// multiple of eight that stops before the first word with a byte that is not.
fn ascii_prefix(masked: &[u8], mask: [u8; 4]) -> usize {
    let [a, b, c, d] = mask;
    let key = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let (words, rest) = masked.as_chunks::<8>();
    for (i, word) in words.iter().enumerate() {
        if (u64::from_ne_bytes(*word) ^ key) & 0x8080_8080_8080_8080 != 0 {
            return i * 8;
        }
    }
    // What is left after whole words starts at a multiple of eight: the mask as it was.
    if rest
        .iter()
        .zip(mask.iter().cycle())
        .all(|(byte, key)| (byte ^ key) < 0x80)
    {
        masked.len()
    } else {
        words.len() * 8
    }
}

/// `masked` unmasked into `out` (as long), `mask` turned to `masked`'s first byte.
fn unmask(masked: &[u8], out: &mut [u8], mask: [u8; 4]) {
    let (words, rest) = masked.as_chunks::<4>();
    let (outs, out_rest) = out.as_chunks_mut::<4>();
    for (out, word) in outs.iter_mut().zip(words) {
        for ((out, byte), key) in out.iter_mut().zip(word).zip(mask) {
            *out = byte ^ key;
        }
    }
    for ((out, byte), key) in out_rest.iter_mut().zip(rest).zip(mask) {
        *out = byte ^ key;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ws::frame::masked as frame;

    const FIN: u8 = 0x80;
    const PING: u8 = 0x9;
    const CLOSE: u8 = 0x8;

    /// Feeds `stream` cut at `cuts` (sorted offsets); returns the index of the chop after which
    /// the scan had failed, if any, and the scan.
    fn feed_chops(stream: &[u8], cuts: &[usize]) -> (Option<usize>, Utf8Scan) {
        let mut scan = Utf8Scan::default();
        let mut start = 0;
        for (chop, &end) in cuts
            .iter()
            .chain(std::iter::once(&stream.len()))
            .enumerate()
        {
            let end = end.clamp(start, stream.len());
            scan.feed(&stream[start..end]);
            start = end;
            if scan.failed() {
                return (Some(chop), scan);
            }
        }
        (None, scan)
    }

    /// The index, in `message`, of the byte at which it stops being a prefix of any valid
    /// UTF-8, or of its last byte when it is only cut short; `None` when it is valid.
    fn first_bad_byte(message: &[u8]) -> Option<usize> {
        std::str::from_utf8(message).err()?;
        (1..=message.len())
            .find(|&end| {
                std::str::from_utf8(&message[..end]).is_err_and(|error| error.error_len().is_some())
            })
            .map(|end| end - 1)
            .or(Some(message.len() - 1))
    }

    /// `message` as a text message in frames cut at `splits` (offsets in the message), masked
    /// with `mask`, with a ping carrying bytes that are not UTF-8 between every two frames;
    /// and for each message byte, its offset in the stream.
    fn fragmented(message: &[u8], splits: &[usize], mask: [u8; 4]) -> (Vec<u8>, Vec<usize>) {
        let mut bounds: Vec<usize> = splits.iter().map(|&s| s.min(message.len())).collect();
        bounds.sort_unstable();
        bounds.dedup();
        bounds.retain(|&b| b > 0 && b < message.len());
        bounds.push(message.len());
        let (mut stream, mut offsets, mut start) = (Vec::new(), Vec::new(), 0);
        for (i, &end) in bounds.iter().enumerate() {
            let opcode = if i == 0 { TEXT } else { CONTINUATION };
            let fin = if end == message.len() { FIN } else { 0 };
            let bytes = frame(fin | opcode, &message[start..end], mask);
            let header = bytes.len() - (end - start);
            offsets.extend((0..end - start).map(|k| stream.len() + header + k));
            stream.extend(bytes);
            if end != message.len() {
                stream.extend(frame(FIN | PING, b"\xff\xfe", mask));
            }
            start = end;
        }
        (stream, offsets)
    }

    /// The chop (of `cuts`) that holds stream offset `at`.
    fn chop_of(at: usize, cuts: &[usize]) -> usize {
        cuts.iter().filter(|&&cut| cut <= at).count()
    }

    #[test]
    fn autobahn_6_4_3_fails_at_the_second_chop() {
        // The payload of Autobahn 6.4.1: "κόσμε" then U+110000 encoded, then "edited".
        let part1 = "\u{3ba}\u{1f79}\u{3c3}\u{3bc}\u{3b5}".as_bytes();
        let part2 = b"\xf4\x90\x80\x80";
        let part3 = b"edited";
        let message = [part1, part2.as_slice(), part3].concat();
        let stream = frame(FIN | TEXT, &message, [0xa1, 0xb2, 0xc3, 0xd4]);
        let header = stream.len() - message.len();
        // 6.4.3: three chops.
        let cuts = [header + part1.len(), header + part1.len() + part2.len()];
        assert_eq!(feed_chops(&stream, &cuts).0, Some(1));
        // 6.4.4: the first 12 bytes, then one byte (0x90), then the rest.
        let cuts = [header + 12, header + 13];
        assert_eq!(feed_chops(&stream, &cuts).0, Some(1));
    }

    #[test]
    fn a_split_code_point_is_valid_across_reads_and_fragments() {
        let message = "price \u{20ac} caf\u{e9} \u{1f600}".as_bytes();
        for mask in [[0, 0, 0, 0], [1, 2, 3, 4], [0xff, 0x80, 0x7f, 0x01]] {
            for split in 0..=message.len() {
                let (stream, _) = fragmented(message, &[split, split + 1, split + 3], mask);
                for cut in 0..=stream.len() {
                    let (failed, scan) = feed_chops(&stream, &[cut]);
                    assert_eq!(failed, None, "split {split} cut {cut}");
                    assert!(scan.idle());
                }
            }
        }
    }

    #[test]
    fn binary_and_control_payloads_are_not_checked() {
        let mask = [9, 8, 7, 6];
        let mut stream = frame(FIN | BINARY, b"\xff\xfe", mask);
        stream.extend(frame(BINARY, b"\xc0", mask));
        stream.extend(frame(FIN | PING, b"\xff", mask));
        stream.extend(frame(FIN | CONTINUATION, b"\xaf", mask));
        stream.extend(frame(FIN | CLOSE, b"\x03\xe8\xff", mask));
        let (failed, scan) = feed_chops(&stream, &[1, 5, 9]);
        assert_eq!(failed, None);
        assert!(scan.idle());
    }

    #[test]
    fn frames_tungstenite_refuses_are_left_to_it() {
        let mask = [1, 1, 1, 1];
        let bad = b"\xff";
        let unmasked = vec![FIN | TEXT, 1, 0xff];
        let cases = [
            (
                "a continuation without a message",
                frame(FIN | CONTINUATION, bad, mask),
            ),
            ("text inside a fragmented message", {
                let mut stream = frame(TEXT, b"a", mask);
                stream.extend(frame(FIN | TEXT, bad, mask));
                stream
            }),
            ("text inside a fragmented binary one", {
                let mut stream = frame(BINARY, b"a", mask);
                stream.extend(frame(FIN | TEXT, bad, mask));
                stream
            }),
            ("unmasked", unmasked),
            ("RSV1", frame(FIN | 0x40 | TEXT, bad, mask)),
            ("RSV3", frame(FIN | 0x10 | TEXT, bad, mask)),
            ("a reserved opcode", frame(FIN | 0x3, bad, mask)),
        ];
        for (case, stream) in cases {
            assert_eq!(feed_chops(&stream, &[]).0, None, "{case}");
        }
    }

    #[test]
    fn a_message_cut_inside_its_last_code_point_fails_when_its_last_frame_ends() {
        let mask = [5, 6, 7, 8];
        let mut stream = frame(TEXT, b"ok \xe2", mask);
        let first = stream.len();
        stream.extend(frame(FIN | CONTINUATION, b"\x82", mask));
        // Still a valid prefix after the first frame and the second's byte but one.
        assert_eq!(feed_chops(&stream, &[first, stream.len() - 1]).0, Some(2));
        // An empty last frame too.
        let mut stream = frame(TEXT, b"\xc3", mask);
        stream.extend(frame(FIN | CONTINUATION, b"", mask));
        assert_eq!(feed_chops(&stream, &[]).0, Some(0));
        // And a single frame.
        assert_eq!(
            feed_chops(&frame(FIN | TEXT, b"\xf0\x9f\x98", mask), &[]).0,
            Some(0)
        );
    }

    #[test]
    fn ascii_is_found_in_whole_words_under_any_mask() {
        for mask in [[0, 0, 0, 0], [0x80, 0, 0, 0x7f], [1, 2, 3, 0xff]] {
            for len in 0..40 {
                for bad in 0..=len {
                    let mut plain = vec![b'a'; len];
                    if bad < len {
                        plain[bad] = 0xc3;
                    }
                    let masked: Vec<u8> = plain
                        .iter()
                        .zip(mask.iter().cycle())
                        .map(|(b, k)| b ^ k)
                        .collect();
                    let expected = if bad == len { len } else { bad / 8 * 8 };
                    assert_eq!(
                        ascii_prefix(&masked, mask),
                        expected,
                        "{mask:?} {len} {bad}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_failed_scan_stays_failed_and_an_idle_one_holds_nothing() {
        let mut scan = Utf8Scan::default();
        assert!(scan.idle());
        scan.feed(&frame(FIN | TEXT, b"fine", [1, 2, 3, 4]));
        assert!(scan.idle());
        scan.feed(&frame(FIN | TEXT, b"\xff", [1, 2, 3, 4]));
        assert!(scan.failed() && !scan.idle());
        scan.feed(&frame(FIN | TEXT, b"fine", [1, 2, 3, 4]));
        assert!(scan.failed());
        assert!(
            std::mem::size_of::<Utf8Scan>() <= 24,
            "{}",
            std::mem::size_of::<Utf8Scan>()
        );
    }

    #[test]
    fn long_payloads_and_all_length_forms_are_followed() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        for len in [125, 126, 511, 512, 513, 1025, 65_535, 65_536, 70_001] {
            let message = "\u{e9}".repeat(len / 2) + &"a".repeat(len % 2);
            let mut stream = frame(FIN | TEXT, message.as_bytes(), mask);
            stream.extend(frame(FIN | TEXT, b"next", mask));
            for cuts in [vec![], vec![1], vec![3, 700, 701], vec![stream.len() - 5]] {
                let (failed, scan) = feed_chops(&stream, &cuts);
                assert_eq!(failed, None, "{len} {cuts:?}");
                assert!(scan.idle());
            }
            // A bad byte at the very end of a long frame.
            let mut bad = message.into_bytes();
            bad.push(0xff);
            let stream = frame(FIN | TEXT, &bad, mask);
            assert_eq!(feed_chops(&stream, &[stream.len() - 1]).0, Some(1), "{len}");
        }
    }

    /// Text that is valid or broken in one place, as bytes.
    fn message() -> impl Strategy<Value = Vec<u8>> {
        let broken = prop_oneof![
            Just(b"\xff".to_vec()),
            Just(b"\xc0\xaf".to_vec()),
            Just(b"\xed\xa0\x80".to_vec()),
            Just(b"\xf4\x90\x80\x80".to_vec()),
            Just(b"\xe2\x28\xa1".to_vec()),
            Just(b"\x80".to_vec()),
            Just(b"\xf8\x88\x80\x80\x80".to_vec()),
            // Cut short at the end of the message.
            Just(b"\xe2\x82".to_vec()),
        ];
        // Any text, or ASCII (judged without copying) in runs long enough for whole words.
        let text = || prop_oneof!["\\PC{0,40}", "[ -~]{0,80}"];
        (text(), proptest::option::of(broken), text(), any::<bool>()).prop_map(
            |(before, broken, after, at_end)| {
                let (before, after) = (before.into_bytes(), after.into_bytes());
                match broken {
                    None => [before, after].concat(),
                    Some(broken) if at_end => [before, after, broken].concat(),
                    Some(broken) => [before, broken, after].concat(),
                }
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the message, the fragments, the mask and the chops: valid text never fails
        /// and leaves the scan idle; broken text fails exactly at the chop that holds its first
        /// bad byte (or, cut short, its last byte), not before and not later.
        #[test]
        fn the_scan_fails_at_the_chop_with_the_first_bad_byte(
            message in message(),
            splits in proptest::collection::vec(0_usize..100, 0..4),
            mask in any::<[u8; 4]>(),
            cuts in proptest::collection::vec(0_usize..400, 0..8),
        ) {
            let (stream, offsets) = fragmented(&message, &splits, mask);
            let mut cuts = cuts;
            cuts.sort_unstable();
            let (failed, scan) = feed_chops(&stream, &cuts);
            match first_bad_byte(&message) {
                None => {
                    prop_assert_eq!(failed, None);
                    prop_assert!(scan.idle());
                }
                Some(bad) => prop_assert_eq!(failed, Some(chop_of(offsets[bad], &cuts))),
            }
        }

        /// Any bytes at all, in any chops: the scan never panics, and chopping does not change
        /// its verdict.
        #[test]
        fn any_bytes_are_followed_the_same_however_chopped(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            cuts in proptest::collection::vec(0_usize..300, 0..8),
        ) {
            let mut cuts = cuts;
            cuts.sort_unstable();
            let (whole, whole_scan) = feed_chops(&bytes, &[]);
            let (chopped, chopped_scan) = feed_chops(&bytes, &cuts);
            prop_assert_eq!(whole.is_some(), chopped.is_some());
            if whole.is_none() {
                prop_assert_eq!(whole_scan.idle(), chopped_scan.idle());
                prop_assert_eq!(whole_scan.at, chopped_scan.at);
            }
        }
    }
}
