//! Captures of built frames, written with pcap-file: the classic pcap and the pcapng that
//! `rstwatch replay` reads, for the replay tests and the replay benchmark's input.

use std::{borrow::Cow, io::Write, time::Duration};

use pcap_file::{
    pcap::{PcapHeader, PcapPacket, PcapWriter},
    pcapng::{
        blocks::{
            enhanced_packet::EnhancedPacketBlock,
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
        PcapNgWriter,
    },
};
pub use pcap_file::{DataLink, PcapError};

/// A classic pcap of `frames` (capture time since the epoch, bytes) on `datalink`, with
/// tcpdump's default snap length.
pub fn write_pcap<'a>(
    out: impl Write,
    datalink: DataLink,
    frames: impl IntoIterator<Item = (Duration, &'a [u8])>,
) -> Result<(), PcapError> {
    let header = PcapHeader { datalink, snaplen: 262_144, ..PcapHeader::default() };
    let mut writer = PcapWriter::with_header(out, header)?;
    for (time, data) in frames {
        writer.write_packet(&PcapPacket::new(time, data.len() as u32, data))?;
    }
    Ok(())
}

/// A pcapng with one Ethernet interface per name in `interfaces`, then `frames` (index into
/// `interfaces`, capture time since the epoch, bytes).
pub fn write_pcapng<'a>(
    out: impl Write,
    interfaces: &[&str],
    frames: impl IntoIterator<Item = (u32, Duration, &'a [u8])>,
) -> Result<(), PcapError> {
    let mut writer = PcapNgWriter::new(out)?;
    for name in interfaces {
        writer.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            // pcap-file writes EPB timestamps in nanoseconds: say so (the default is µs).
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Borrowed(name)),
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        })?;
    }
    for (interface_id, timestamp, data) in frames {
        writer.write_pcapng_block(EnhancedPacketBlock {
            interface_id,
            timestamp,
            original_len: data.len() as u32,
            data: Cow::Borrowed(data),
            options: vec![],
        })?;
    }
    Ok(())
}
