//! A client frame's header (RFC 6455, 5.2), parsed from the start of the bytes a client sent:
//! what the layers under tungstenite need to follow the stream of frames.

/// A frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    /// The frame ends its message.
    pub(super) fin: bool,
    /// RSV1 (a compressed message's first frame).
    pub(super) rsv1: bool,
    /// RSV2 or RSV3.
    pub(super) other_rsv: bool,
    /// The opcode.
    pub(super) opcode: u8,
    /// The masking key; every client frame has one (tungstenite refuses one without).
    pub(super) mask: Option<[u8; 4]>,
    /// The payload's length.
    pub(super) len: u64,
    /// The header's own length, 2 to 14 bytes.
    pub(super) header_len: usize,
}

/// The longest header: two bytes, an eight-byte length and a masking key.
pub(super) const MAX_HEADER: usize = 14;

/// The continuation opcode.
pub(super) const CONTINUATION: u8 = 0x0;
/// The text opcode.
pub(super) const TEXT: u8 = 0x1;
/// The binary opcode.
pub(super) const BINARY: u8 = 0x2;

impl Header {
    /// The header at the start of `bytes`, `None` while it is incomplete (never with
    /// [`MAX_HEADER`] bytes or more).
    pub(super) fn parse(bytes: &[u8]) -> Option<Self> {
        let (first, second) = (*bytes.first()?, *bytes.get(1)?);
        let (mut len, mut at) = (u64::from(second & 0x7f), 2);
        if len == 126 {
            len = u64::from(u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?));
            at = 4;
        } else if len == 127 {
            len = u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?);
            at = 10;
        }
        let mask = if second & 0x80 == 0 {
            None
        } else {
            let mask: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
            at += 4;
            Some(mask)
        };
        Some(Self {
            fin: first & 0x80 != 0,
            rsv1: first & 0x40 != 0,
            other_rsv: first & 0x30 != 0,
            opcode: first & 0x0f,
            mask,
            len,
            header_len: at,
        })
    }

    /// Whether the opcode is a control frame's (close, ping, pong, or a reserved one).
    pub(super) fn control(&self) -> bool {
        self.opcode & 0x08 != 0
    }
}

/// A client frame for tests: `first` (FIN, RSV, opcode), then `payload` masked with `mask`.
#[cfg(test)]
pub(super) fn masked(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![first];
    let len = payload.len();
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&short.to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_three_length_forms_and_the_mask_are_read() {
        let short = Header::parse(&[0x81, 0x85, 1, 2, 3, 4]);
        assert_eq!(
            short,
            Some(Header {
                fin: true,
                rsv1: false,
                other_rsv: false,
                opcode: TEXT,
                mask: Some([1, 2, 3, 4]),
                len: 5,
                header_len: 6,
            })
        );
        let medium = Header::parse(&[0x02, 0xfe, 0x01, 0x00, 9, 9, 9, 9]);
        assert_eq!(
            medium.map(|h| (h.fin, h.opcode, h.len, h.header_len)),
            Some((false, BINARY, 256, 8))
        );
        let mut long = vec![0xc0, 0x7f];
        long.extend_from_slice(&(1_u64 << 40).to_be_bytes());
        assert_eq!(
            Header::parse(&long).map(|h| (h.rsv1, h.mask, h.len, h.header_len)),
            Some((true, None, 1 << 40, 10))
        );
        assert!(Header::parse(&[0x89, 0x80, 0, 0, 0, 0]).is_some_and(|h| h.control()));
        assert_eq!(Header::parse(&[0x89, 0x80, 0, 0, 0]), None);
    }

    proptest! {
        /// A header is read once, and only once, all its bytes are there.
        #[test]
        fn a_header_is_complete_or_not_read(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
            match Header::parse(&bytes) {
                Some(header) => {
                    prop_assert!(header.header_len <= bytes.len());
                    prop_assert_eq!(Header::parse(&bytes[..header.header_len]), Some(header));
                    prop_assert_eq!(Header::parse(&bytes[..header.header_len - 1]), None);
                }
                None => prop_assert!(bytes.len() < MAX_HEADER),
            }
        }
    }
}
