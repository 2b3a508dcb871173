//! The pcapng blocks a capture is made of (draft-ietf-opsawg-pcapng), each built whole in memory
//! so that it reaches the file in one write: a file cut short (kill -9, a full disk) ends at a
//! block boundary or inside the last block, and readers stop at the last complete one.

/// LINKTYPE_ETHERNET: the programs see Ethernet frames.
const LINKTYPE_ETHERNET: u16 = 1;
const SECTION_HEADER: u32 = 0x0A0D_0D0A;
const INTERFACE_DESCRIPTION: u32 = 1;
const INTERFACE_STATISTICS: u32 = 5;
const ENHANCED_PACKET: u32 = 6;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;

const OPT_END: u16 = 0;
const OPT_COMMENT: u16 = 1;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_TSRESOL: u16 = 9;
const EPB_FLAGS: u16 = 2;
const ISB_STARTTIME: u16 = 2;
const ISB_ENDTIME: u16 = 3;
const ISB_IFRECV: u16 = 4;
const ISB_IFDROP: u16 = 5;
const ISB_USRDELIV: u16 = 8;

/// Which way a packet went, as `epb_flags` bits 0–1 say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Inbound = 1,
    Outbound = 2,
}

/// One block under construction: body words, then options, then the length trailer.
struct Block(Vec<u8>);

impl Block {
    fn new(kind: u32) -> Block {
        let mut bytes = Vec::with_capacity(128);
        bytes.extend_from_slice(&kind.to_le_bytes());
        // The total length, patched in `finish`.
        bytes.extend_from_slice(&0u32.to_le_bytes());
        Block(bytes)
    }

    fn u16(&mut self, value: u16) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    fn u32(&mut self, value: u32) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// A pcapng timestamp: the high word, then the low word.
    fn timestamp(&mut self, value: u64) -> &mut Self {
        self.u32((value >> 32) as u32).u32(value as u32)
    }

    /// Bytes padded to 32 bits.
    fn padded(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }

    fn option(&mut self, code: u16, value: &[u8]) -> &mut Self {
        // Option values are at most 65535 bytes; longer text is cut (never happens for ours).
        let value = &value[..value.len().min(usize::from(u16::MAX))];
        self.u16(code).u16(value.len() as u16).padded(value)
    }

    fn finish(mut self, with_options: bool) -> Vec<u8> {
        if with_options {
            self.u16(OPT_END).u16(0);
        }
        let total = (self.0.len() + 4) as u32;
        self.0[4..8].copy_from_slice(&total.to_le_bytes());
        self.0.extend_from_slice(&total.to_le_bytes());
        self.0
    }
}

/// The section header every file starts with.
pub fn section_header(application: &str) -> Vec<u8> {
    let mut block = Block::new(SECTION_HEADER);
    block.u32(BYTE_ORDER_MAGIC).u16(1).u16(0);
    // Section length unknown: -1.
    block.0.extend_from_slice(&(-1i64).to_le_bytes());
    block.option(SHB_USERAPPL, application.as_bytes());
    block.finish(true)
}

/// An interface: its name, nanosecond timestamps.
pub fn interface(name: &str, snaplen: u32) -> Vec<u8> {
    let mut block = Block::new(INTERFACE_DESCRIPTION);
    block.u16(LINKTYPE_ETHERNET).u16(0).u32(snaplen);
    block.option(IF_NAME, name.as_bytes()).option(IF_TSRESOL, &[9]);
    block.finish(true)
}

/// One packet: the first bytes of a frame, its length on the wire, which way it went and
/// rstwatch's reading of it.
pub fn packet(
    interface: u32,
    time_ns: u64,
    data: &[u8],
    wire_len: u32,
    direction: Direction,
    comment: &str,
) -> Vec<u8> {
    let mut block = Block::new(ENHANCED_PACKET);
    block.u32(interface).timestamp(time_ns).u32(data.len() as u32).u32(wire_len).padded(data);
    block.option(EPB_FLAGS, &(direction as u32).to_le_bytes());
    if !comment.is_empty() {
        block.option(OPT_COMMENT, comment.as_bytes());
    }
    block.finish(true)
}

/// What one interface's statistics block says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Statistics {
    pub start_ns: u64,
    pub end_ns: u64,
    /// RSTs counted on the interface while this file was open, when known.
    pub received: Option<u64>,
    /// Of those, the ones not in the file.
    pub dropped: Option<u64>,
    /// RSTs written to this file.
    pub delivered: u64,
}

/// The largest [`statistics`] block: room a capped file keeps for them at its end.
pub const STATISTICS_MAX_LEN: usize = 88;

pub fn statistics(interface: u32, stats: &Statistics) -> Vec<u8> {
    let Statistics { start_ns, end_ns, received, dropped, delivered } = *stats;
    let mut block = Block::new(INTERFACE_STATISTICS);
    block.u32(interface).timestamp(end_ns);
    let mut start = Vec::with_capacity(8);
    start.extend_from_slice(&((start_ns >> 32) as u32).to_le_bytes());
    start.extend_from_slice(&(start_ns as u32).to_le_bytes());
    block.option(ISB_STARTTIME, &start);
    let mut end = Vec::with_capacity(8);
    end.extend_from_slice(&((end_ns >> 32) as u32).to_le_bytes());
    end.extend_from_slice(&(end_ns as u32).to_le_bytes());
    block.option(ISB_ENDTIME, &end);
    if let Some(received) = received {
        block.option(ISB_IFRECV, &received.to_le_bytes());
    }
    if let Some(dropped) = dropped {
        block.option(ISB_IFDROP, &dropped.to_le_bytes());
    }
    block.option(ISB_USRDELIV, &delivered.to_le_bytes());
    block.finish(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(bytes: &[u8]) -> (u32, u32, u32) {
        let at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap_or_default());
        (at(0), at(4), at(bytes.len() - 4))
    }

    #[test]
    fn every_block_is_word_aligned_and_carries_its_length_at_both_ends() {
        let blocks = [
            section_header("rstwatch"),
            interface("veth-abc", 128),
            packet(0, 1_700_000_000_123_456_789, &[1, 2, 3, 4, 5], 60, Direction::Outbound, "refused"),
            statistics(0, &Statistics { start_ns: 1, end_ns: 2, received: Some(3), dropped: Some(1), delivered: 2 }),
        ];
        assert_eq!(blocks[3].len(), STATISTICS_MAX_LEN);
        for block in &blocks {
            let (_, head, tail) = words(block);
            assert_eq!(block.len() % 4, 0);
            assert_eq!(head as usize, block.len());
            assert_eq!(tail as usize, block.len());
        }
        // The packet's data is padded to a word: 28 bytes of header fields, 8 of data.
        let packet = &blocks[2];
        assert_eq!(&packet[28..33], &[1, 2, 3, 4, 5]);
        assert_eq!(&packet[33..36], &[0, 0, 0]);
        assert_eq!(u32::from_le_bytes([packet[20], packet[21], packet[22], packet[23]]), 5);
        assert_eq!(u32::from_le_bytes([packet[24], packet[25], packet[26], packet[27]]), 60);
    }
}
