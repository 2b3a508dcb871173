//! RST payloads: the text some devices put in an RST ("policy deny", a vendor's reason), as a
//! flow record shows it — the first bytes, printable, bounded.

use rst_common::parse::{tcp_payload, Walk};

/// Bytes of a payload a flow record keeps: as many as the kernel hands over.
pub use rst_common::wire::RST_PAYLOAD_BYTES;

/// The first bytes of the payload of the segment the walk found in `frame` (as many as the
/// frame holds, at most [`RST_PAYLOAD_BYTES`]) and the payload's length; `None` without one.
pub fn of_frame(frame: &[u8], walked: Walk) -> Option<(&[u8], usize)> {
    let Walk::Tcp(segment) = walked else { return None };
    let (start, len) = tcp_payload(frame, &segment)?;
    if len == 0 {
        return None;
    }
    let end = frame.len().min(start + len.min(RST_PAYLOAD_BYTES));
    Some((frame.get(start..end).unwrap_or_default(), len))
}

/// Printable ASCII as it is, `\\`, `\n`, `\r`, `\t` and `\xNN` for the rest, and `…` when the
/// payload was longer than what is shown.
pub fn escape(bytes: &[u8], len: usize) -> String {
    let mut text = String::with_capacity(bytes.len() + 8);
    for &byte in bytes {
        match byte {
            b'\\' => text.push_str("\\\\"),
            b'\n' => text.push_str("\\n"),
            b'\r' => text.push_str("\\r"),
            b'\t' => text.push_str("\\t"),
            0x20..=0x7e => text.push(char::from(byte)),
            _ => text.push_str(&format!("\\x{byte:02x}")),
        }
    }
    if len > bytes.len() {
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use rst_common::parse::{walk, TCP_ACK, TCP_RST};
    use rst_craft::FrameBuilder;

    use super::*;

    #[test]
    fn a_payload_is_shown_printable_and_bounded() {
        assert_eq!(escape(b"policy deny", 11), "policy deny");
        assert_eq!(escape(b"a\\b\n\x00\xff", 6), "a\\\\b\\n\\x00\\xff");
        assert_eq!(escape(b"abc", 100), "abc…");
    }

    #[test]
    fn the_payload_of_an_rst_is_found_by_the_header_walk() {
        let frame = FrameBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2])
            .ports(80, 4000)
            .flags(TCP_RST | TCP_ACK)
            .payload(b"policy deny")
            .build()
            .into_bytes();
        assert_eq!(of_frame(&frame, walk(&frame[..])), Some((&b"policy deny"[..], 11)));
        let bare = FrameBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2]).flags(TCP_RST).build().into_bytes();
        assert_eq!(of_frame(&bare, walk(&bare[..])), None);
        let long = FrameBuilder::ipv6([0xfd; 16], [0xfe; 16]).flags(TCP_RST).payload(&[b'x'; 100]).build().into_bytes();
        assert_eq!(of_frame(&long, walk(&long[..])).map(|(b, l)| (b.len(), l)), Some((RST_PAYLOAD_BYTES, 100)));
    }
}
