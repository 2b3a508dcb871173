//! Streaming pcap and pcapng reading.
//!
//! The formats are decoded by the `pcap-file` crate's slice parsers; this module only feeds
//! them a buffer at a time (a mapped file's window or a chunk read ahead, 1 MiB, grown only for
//! a record that does not fit), so memory stays flat whatever the file size, and frames are
//! handed out as borrowed slices, never copied.
//! pcap-file's own `Read`-based readers are not used because they cannot tell a truncated file
//! from a corrupt one (both become `UnexpectedEof`), and their pcap reader rejects valid files
//! whose frames were longer than the snap length (`orig_len > snaplen`). The bytes come from a
//! [`Source`]: a file or a pipe, decompressed if need be.

use std::{
    borrow::Cow,
    fmt, io,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use pcap_file::{
    pcap::PcapParser,
    pcapng::{blocks::interface_description::InterfaceDescriptionOption, Block, PcapNgParser},
    DataLink, Endianness, PcapError, TsResolution,
};

use super::{
    prefetch::prefetch,
    source::{Chunk, Compression, ReadAhead, Source, HEADROOM},
};
use crate::sys::file_map::FileMap;

/// Bytes read from the file at a time: large reads, few system calls and hand-overs.
pub const CHUNK: usize = 1 << 20;
/// How far ahead of the record being parsed its file's bytes are fetched: a page, so that the
/// next page's first lines are on their way before the parser crosses into it (the hardware's
/// own prefetch stops at page edges; a mapped file's pages are anywhere in memory).
const PREFETCH_BYTES: usize = 4096;
/// A pcap record header: seconds, fraction, captured length, original length.
const PCAP_RECORD_HEADER: usize = 16;
/// The largest record (pcap packet record or pcapng block) accepted. Frames are at most 256 KiB
/// (libpcap's largest snap length); anything much bigger is a corrupt length field, and this
/// bound keeps such a file from making replay allocate without limit.
const MAX_RECORD: usize = 16 << 20;
/// libpcap's largest snap length (`MAXIMUM_SNAPLEN`): a longer pcap record is corrupt.
const MAX_FRAME: u32 = 262_144;

const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
const PCAP_MAGICS: [[u8; 4]; 4] =
    [[0xa1, 0xb2, 0xc3, 0xd4], [0xd4, 0xc3, 0xb2, 0xa1], [0xa1, 0xb2, 0x3c, 0x4d], [0x4d, 0x3c, 0xb2, 0xa1]];

/// Why a capture could not be read (further). `frame` is the 1-based number of the frame being
/// read when it happened, as Wireshark numbers them; `offset` the file offset of its record.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot open")]
    Open(#[source] io::Error),
    #[error("frame {frame} ({offset}): read failed")]
    Io {
        frame: u64,
        offset: Offset,
        #[source]
        source: io::Error,
    },
    #[error("frame {frame} ({offset}): bad {compression} data (truncated or corrupt)")]
    Decompress {
        compression: &'static str,
        frame: u64,
        offset: Offset,
        #[source]
        source: io::Error,
    },
    #[error("frame {frame} ({offset}): the file shrank to {now} bytes while it was read (it had {was})")]
    Shrunk { frame: u64, offset: Offset, was: u64, now: u64 },
    #[error("not a pcap or pcapng file ({what})")]
    NotCapture { what: String },
    #[error("frame {frame} ({offset}): the file ends inside a record: truncated capture")]
    Truncated { frame: u64, offset: Offset },
    #[error("frame {frame} ({offset}): corrupt {what}: {reason}")]
    Corrupt { frame: u64, offset: Offset, what: &'static str, reason: String },
    #[error(
        "frame {frame}: unsupported link type {datalink:?} ({code}); replay reads Ethernet, Linux \
         cooked capture (SLL, SLL2), raw IP and BSD loopback"
    )]
    UnsupportedLink { frame: u64, datalink: DataLink, code: u32 },
    #[error(
        "frame {frame} ({offset}): packet on interface {interface}, which no interface description block declared"
    )]
    UnknownInterface { frame: u64, offset: Offset, interface: u32 },
}

/// Where in a capture something went wrong: a byte offset in the capture as pcap or pcapng, so
/// in the decompressed data of a compressed one (which is what `zcat FILE | tail -c` reaches).
#[derive(Debug, Clone, Copy)]
pub struct Offset {
    pub byte: u64,
    pub compression: Compression,
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.compression {
            Compression::None => write!(f, "byte {}", self.byte),
            other => write!(f, "byte {} of the {}-decompressed data", self.byte, other.name()),
        }
    }
}

/// An interface a capture declares: the pcap file header, or a pcapng IDB.
#[derive(Debug, Clone)]
pub struct Interface {
    /// Its position among the file's interfaces, counting across pcapng sections.
    pub index: usize,
    /// The IDB's `if_name` option, if any.
    pub name: Option<String>,
    pub datalink: DataLink,
    /// Declared by a pcapng IDB rather than a pcap file header.
    pub pcapng: bool,
    scale: TsScale,
    /// `if_tsoffset`, in nanoseconds.
    offset_ns: u64,
}

/// One frame, borrowed from the read buffer.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    /// 1-based, counting every packet record of the file.
    pub frame: u64,
    /// Index into the file's interfaces (see [`Interface::index`]).
    pub interface: usize,
    /// Capture time in nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    pub data: &'a [u8],
    /// Where `data` starts in the buffer being read, which [`Event::Read`] hands over once all
    /// its frames were.
    pub at: usize,
}

pub enum Event<'a> {
    /// Comes before any packet on it.
    Interface(&'a Interface),
    /// By reference: the sink reads the fields it needs where the reader wrote them (a packet
    /// passed by value was copied whole on entry, a copy that waited on the reader's stores:
    /// a seventh of a replay).
    Packet(&'a Packet<'a>),
    /// A buffer all of whose frames have been handed out (their [`Packet::at`] are into it):
    /// the frames can be read on after the reader has moved on.
    Read(Chunk),
}

/// Why [`CaptureReader::read`] stopped early.
#[derive(Debug)]
pub enum Stop<E> {
    Capture(CaptureError),
    /// The sink's own error.
    Sink(E),
    /// The sink has all it wants from this capture: reading ends here, without an error.
    Enough,
}

impl<E> From<CaptureError> for Stop<E> {
    fn from(error: CaptureError) -> Self {
        Stop::Capture(error)
    }
}

/// pcapng timestamps count units of `if_tsresol`: a power of ten or of two of a second.
#[derive(Debug, Clone, Copy)]
enum TsScale {
    Mul(u64),
    Div(u64),
    /// 2^-k seconds.
    Binary(u32),
}

impl TsScale {
    fn from_tsresol(tsresol: u8) -> Option<TsScale> {
        let exponent = u32::from(tsresol & 0x7f);
        if tsresol & 0x80 != 0 {
            return (exponent < 64).then_some(TsScale::Binary(exponent));
        }
        match exponent {
            0..=9 => Some(TsScale::Mul(10u64.pow(9 - exponent))),
            10..=19 => Some(TsScale::Div(10u64.pow(exponent - 9))),
            _ => None,
        }
    }

    #[inline]
    fn to_ns(self, units: u64) -> u64 {
        match self {
            TsScale::Mul(factor) => units.saturating_mul(factor),
            TsScale::Div(divisor) => units / divisor,
            TsScale::Binary(k) => ((u128::from(units) * 1_000_000_000) >> k).min(u128::from(u64::MAX)) as u64,
        }
    }
}

enum Format {
    Pcap { parser: PcapParser, frac_to_ns: u32, frac_limit: u32 },
    PcapNg { parser: PcapNgParser, section_base: usize, last_timestamp_ns: u64 },
}

/// Where the reader's buffers come from.
enum Input {
    /// Chunks read ahead on a thread of their own.
    Read(ReadAhead),
    /// Windows of a mapped file; `taken` counts the bytes they reached, for the progress line.
    Mapped { map: Arc<FileMap>, taken: Arc<AtomicU64> },
}

/// A capture file read front to back, one buffer at a time.
pub struct CaptureReader {
    input: Input,
    compression: Compression,
    /// The chunk being parsed (see [`ReadAhead`]).
    buf: Chunk,
    /// Unparsed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// File offset of `buf[start]`.
    offset: u64,
    eof: bool,
    frames: u64,
    interfaces: Vec<Interface>,
}

impl CaptureReader {
    /// Opens `path` (`-`: standard input), mapped if it is a regular file; see [`Source::open`].
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        Self::new(Source::open(path, true)?)
    }

    pub fn new(mut source: Source) -> Result<Self, CaptureError> {
        let compression = source.compression;
        let offset = Offset { byte: 0, compression };
        let input = match source.mapped.take() {
            Some(map) => Input::Mapped { map: Arc::new(map), taken: Arc::clone(&source.consumed) },
            None => Input::Read(ReadAhead::spawn(source, CHUNK).map_err(|source| CaptureError::Io {
                frame: 1,
                offset,
                source,
            })?),
        };
        Ok(Self {
            buf: Chunk::empty(),
            input,
            compression,
            start: 0,
            end: 0,
            offset: 0,
            eof: false,
            frames: 0,
            interfaces: Vec::new(),
        })
    }

    /// The buffer being read, once [`CaptureReader::read`] has returned: the last frames handed
    /// out are in it.
    pub fn into_last_read(self) -> Chunk {
        self.buf
    }

    /// Reads the whole capture, handing every interface and frame to `sink` in file order.
    pub fn read<E>(&mut self, mut sink: impl FnMut(Event<'_>) -> Result<(), Stop<E>>) -> Result<(), Stop<E>> {
        let mut format = self.open_format()?;
        if let Format::Pcap { parser, .. } = &format {
            let header = parser.header();
            self.interfaces.push(Interface {
                index: 0,
                name: None,
                datalink: header.datalink,
                pcapng: false,
                scale: TsScale::Mul(1),
                offset_ns: 0,
            });
            sink(Event::Interface(&self.interfaces[0]))?;
        }
        loop {
            let parsed = match &mut format {
                Format::Pcap { parser, frac_to_ns, frac_limit } => {
                    self.next_pcap(parser, *frac_to_ns, *frac_limit, &mut sink)
                }
                Format::PcapNg { parser, section_base, last_timestamp_ns } => {
                    self.next_pcapng(parser, section_base, last_timestamp_ns, &mut sink)
                }
            };
            match parsed {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(stop) => return Err(stop),
            }
        }
    }

    /// Detects the format from the magic number and parses the file header.
    fn open_format(&mut self) -> Result<Format, CaptureError> {
        while self.end - self.start < 4 && self.fill()?.is_some() {}
        let magic: [u8; 4] = match self.buf.get(self.start..self.start + 4) {
            Some(magic) => [magic[0], magic[1], magic[2], magic[3]],
            _ if self.end == self.start => {
                let what = match self.compression {
                    Compression::None => "the file is empty".to_owned(),
                    other => format!("its {} data is empty", other.name()),
                };
                return Err(CaptureError::NotCapture { what });
            }
            _ => return Err(CaptureError::NotCapture { what: format!("only {} bytes long", self.end - self.start) }),
        };
        if magic == PCAPNG_MAGIC {
            let parser = self.parse_header("pcapng section header", PcapNgParser::new)?;
            return Ok(Format::PcapNg { parser, section_base: 0, last_timestamp_ns: 0 });
        }
        if PCAP_MAGICS.contains(&magic) {
            let parser = self.parse_header("pcap file header", PcapParser::new)?;
            let (frac_to_ns, frac_limit) = match parser.header().ts_resolution {
                TsResolution::MicroSecond => (1_000, 1_000_000),
                TsResolution::NanoSecond => (1, 1_000_000_000),
            };
            return Ok(Format::Pcap { parser, frac_to_ns, frac_limit });
        }
        let mut what = format!("starts with {:02x} {:02x} {:02x} {:02x}", magic[0], magic[1], magic[2], magic[3]);
        if self.compression != Compression::None {
            what.push_str(&format!(" once {}-decompressed", self.compression.name()));
        }
        Err(CaptureError::NotCapture { what })
    }

    fn parse_header<T>(
        &mut self,
        what: &'static str,
        parse: impl for<'a> Fn(&'a [u8]) -> Result<(&'a [u8], T), PcapError>,
    ) -> Result<T, CaptureError> {
        loop {
            let available = &self.buf[self.start..self.end];
            match parse(available) {
                Ok((rest, header)) => {
                    let used = available.len() - rest.len();
                    self.consume(used);
                    return Ok(header);
                }
                Err(PcapError::IncompleteBuffer) => {
                    if self.fill()?.is_none() {
                        return Err(self.truncated());
                    }
                }
                Err(error) => return Err(self.corrupt(what, error)),
            }
        }
    }

    /// One pcap record. Returns false at the clean end of the file.
    #[inline]
    fn next_pcap<E>(
        &mut self,
        parser: &PcapParser,
        frac_to_ns: u32,
        frac_limit: u32,
        sink: &mut impl FnMut(Event<'_>) -> Result<(), Stop<E>>,
    ) -> Result<bool, Stop<E>> {
        // The record is decoded here rather than by pcap-file: four words, and the length checked
        // before the frame is waited for (a corrupt length is reported at once, not after
        // buffering up to the record bound).
        let available = &self.buf[self.start..self.end];
        prefetch_ahead(available);
        let Some(header) = available.get(..PCAP_RECORD_HEADER) else { return self.refill_or_end(sink) };
        let big_endian = parser.header().endianness == Endianness::Big;
        let word = |i: usize| {
            let bytes = [header[i], header[i + 1], header[i + 2], header[i + 3]];
            if big_endian {
                u32::from_be_bytes(bytes)
            } else {
                u32::from_le_bytes(bytes)
            }
        };
        let (ts_sec, ts_frac, incl_len) = (word(0), word(4), word(8));
        let frame = self.frames + 1;
        if incl_len > MAX_FRAME {
            return Err(self
                .corrupt_at(frame, "packet record", format!("captured length {incl_len} > {MAX_FRAME}"))
                .into());
        }
        let used = PCAP_RECORD_HEADER + incl_len as usize;
        let Some(data) = available.get(PCAP_RECORD_HEADER..used) else { return self.refill_or_end(sink) };
        if ts_frac >= frac_limit {
            return Err(self.corrupt_at(frame, "packet record", format!("timestamp fraction {ts_frac}")).into());
        }
        let timestamp_ns = u64::from(ts_sec) * 1_000_000_000 + u64::from(ts_frac * frac_to_ns);
        self.frames = frame;
        let at = self.start + PCAP_RECORD_HEADER;
        sink(Event::Packet(&Packet { frame, interface: 0, timestamp_ns, data, at }))?;
        self.consume(used);
        Ok(true)
    }

    /// One pcapng block. Returns false at the clean end of the file.
    #[inline]
    fn next_pcapng<E>(
        &mut self,
        parser: &mut PcapNgParser,
        section_base: &mut usize,
        last_timestamp_ns: &mut u64,
        sink: &mut impl FnMut(Event<'_>) -> Result<(), Stop<E>>,
    ) -> Result<bool, Stop<E>> {
        let available = &self.buf[self.start..self.end];
        prefetch_ahead(available);
        let (rest, block) = match parser.next_block(available) {
            Ok(parsed) => parsed,
            Err(PcapError::IncompleteBuffer) => return self.refill_or_end(sink),
            Err(error) => return Err(self.corrupt("block", error).into()),
        };
        let used = available.len() - rest.len();
        // (interface within the section, raw timestamp, data) of a packet block.
        let (interface_id, raw_timestamp, data) = match &block {
            Block::EnhancedPacket(packet) => {
                // pcap-file turns the raw 64-bit count into a Duration as if it were nanoseconds,
                // which is exact: take it back and scale it by the interface's resolution.
                (packet.interface_id, Some(packet.timestamp.as_nanos() as u64), &packet.data)
            }
            Block::Packet(packet) => (u32::from(packet.interface_id), Some(packet.timestamp), &packet.data),
            // A simple packet block belongs to the section's first interface and has no
            // timestamp: it inherits the previous frame's.
            Block::SimplePacket(packet) => (0, None, &packet.data),
            Block::SectionHeader(_) => {
                *section_base = self.interfaces.len();
                self.consume(used);
                return Ok(true);
            }
            Block::InterfaceDescription(idb) => {
                let interface = self.describe(idb.linktype, &idb.options)?;
                self.interfaces.push(interface);
                if let Some(interface) = self.interfaces.last() {
                    sink(Event::Interface(interface))?;
                }
                self.consume(used);
                return Ok(true);
            }
            _ => {
                self.consume(used);
                return Ok(true);
            }
        };
        let frame = self.frames + 1;
        let interface = *section_base + interface_id as usize;
        let Some(declared) = self.interfaces.get(interface) else {
            return Err(CaptureError::UnknownInterface { frame, offset: self.at(), interface: interface_id }.into());
        };
        let timestamp_ns = match raw_timestamp {
            Some(units) => declared.scale.to_ns(units).saturating_add(declared.offset_ns),
            None => *last_timestamp_ns,
        };
        *last_timestamp_ns = timestamp_ns;
        // pcap-file's parsers borrow a block's data from the bytes they parse: where it starts
        // in the buffer is where [`Event::Read`] hands it over.
        let at = match data {
            Cow::Borrowed(data) => (data.as_ptr() as usize).wrapping_sub(self.buf.as_ptr() as usize),
            Cow::Owned(_) => usize::MAX,
        };
        let Some(data) = self.buf.get(at..).and_then(|rest| rest.get(..data.len())) else {
            let reason = "its data is not inside the block read".to_owned();
            return Err(self.corrupt_at(frame, "packet block", reason).into());
        };
        self.frames = frame;
        sink(Event::Packet(&Packet { frame, interface, timestamp_ns, data, at }))?;
        self.consume(used);
        Ok(true)
    }

    fn describe(
        &self,
        datalink: DataLink,
        options: &[InterfaceDescriptionOption<'_>],
    ) -> Result<Interface, CaptureError> {
        let mut interface = Interface {
            index: self.interfaces.len(),
            name: None,
            datalink,
            pcapng: true,
            // The pcapng default resolution is microseconds.
            scale: TsScale::Mul(1_000),
            offset_ns: 0,
        };
        for option in options {
            match option {
                InterfaceDescriptionOption::IfName(name) if !name.is_empty() => interface.name = Some(name.to_string()),
                InterfaceDescriptionOption::IfTsResol(tsresol) => {
                    interface.scale = TsScale::from_tsresol(*tsresol).ok_or_else(|| {
                        self.corrupt_at(self.frames + 1, "interface description", format!("if_tsresol {tsresol:#x}"))
                    })?;
                }
                InterfaceDescriptionOption::IfTsOffset(seconds) => {
                    interface.offset_ns = seconds.saturating_mul(1_000_000_000);
                }
                _ => {}
            }
        }
        Ok(interface)
    }

    #[inline]
    fn consume(&mut self, used: usize) {
        self.start += used;
        self.offset += used as u64;
    }

    /// After the parser asked for more bytes: reads them (the buffer they replace goes to
    /// `sink`), or reports the end of the file.
    fn refill_or_end<E>(&mut self, sink: &mut impl FnMut(Event<'_>) -> Result<(), Stop<E>>) -> Result<bool, Stop<E>> {
        if let Some(read) = self.fill()? {
            sink(Event::Read(read))?;
            return Ok(true);
        }
        if self.start == self.end {
            Ok(false)
        } else {
            Err(self.truncated().into())
        }
    }

    /// Takes the next chunk, the unparsed bytes moved in front of it, and returns the one it
    /// replaces; `None` at the end of the file.
    fn fill(&mut self) -> Result<Option<Chunk>, CaptureError> {
        if self.eof {
            return Ok(None);
        }
        let leftover = self.end - self.start;
        if leftover >= MAX_RECORD {
            return Err(self.corrupt_at(
                self.frames + 1,
                "record",
                format!("longer than {} MiB (a corrupt length field?)", MAX_RECORD >> 20),
            ));
        }
        let (next, start, end) = match &self.input {
            Input::Mapped { map, taken } => {
                // The next window starts at the unparsed bytes: a record is never split.
                let from = self.offset as usize;
                let reached = from + leftover;
                let len = map.bytes().len();
                if reached >= len {
                    self.eof = true;
                    return Ok(None);
                }
                let to = (reached + CHUNK).min(len);
                // Mapped bytes past the file's end raise SIGBUS: a file cut while it is read ends
                // here with an error of its own, like a truncated one (`--keep-going` goes on).
                if let Ok(now) = map.len_now() {
                    if now < to as u64 {
                        self.eof = true;
                        let (frame, offset, was) = (self.frames + 1, self.at(), len as u64);
                        return Err(CaptureError::Shrunk { frame, offset, was, now });
                    }
                }
                taken.store(to as u64, Ordering::Relaxed);
                (Chunk::mapped(Arc::clone(map), from..to), 0, to - from)
            }
            Input::Read(ahead) => {
                let (mut next, mut end) = match ahead.next() {
                    None => {
                        self.eof = true;
                        return Ok(None);
                    }
                    Some(Ok(next)) => next,
                    Some(Err(source)) => {
                        self.eof = true;
                        let (frame, offset) = (self.frames + 1, self.at());
                        return Err(match self.compression {
                            Compression::None => CaptureError::Io { frame, offset, source },
                            other => CaptureError::Decompress { compression: other.name(), frame, offset, source },
                        });
                    }
                };
                let start = if leftover <= HEADROOM {
                    next[HEADROOM - leftover..HEADROOM].copy_from_slice(&self.buf[self.start..self.end]);
                    HEADROOM - leftover
                } else {
                    // A record longer than the headroom (jumbo frames, large pcapng blocks): joined.
                    let mut joined = Vec::with_capacity(leftover + end - HEADROOM);
                    joined.extend_from_slice(&self.buf[self.start..self.end]);
                    joined.extend_from_slice(&next[HEADROOM..end]);
                    end = joined.len();
                    ahead.recycle(std::mem::replace(&mut next, joined));
                    0
                };
                (ahead.chunk(next), start, end)
            }
        };
        let read = std::mem::replace(&mut self.buf, next);
        self.start = start;
        self.end = end;
        Ok(Some(read))
    }

    fn truncated(&self) -> CaptureError {
        CaptureError::Truncated { frame: self.frames + 1, offset: self.at() }
    }

    fn corrupt(&self, what: &'static str, error: PcapError) -> CaptureError {
        self.corrupt_at(self.frames + 1, what, error.to_string())
    }

    fn corrupt_at(&self, frame: u64, what: &'static str, reason: String) -> CaptureError {
        CaptureError::Corrupt { frame, offset: self.at(), what, reason }
    }

    /// Where the unparsed bytes begin: the record being read.
    fn at(&self) -> Offset {
        Offset { byte: self.offset, compression: self.compression }
    }
}

/// Starts fetching the bytes [`PREFETCH_BYTES`] past the record about to be parsed, the start
/// of `available`.
#[inline(always)]
fn prefetch_ahead(available: &[u8]) {
    if let Some(ahead) = available.get(PREFETCH_BYTES) {
        prefetch(ahead);
    }
}

#[cfg(test)]
mod tests {
    use std::{fs::File, time::Duration};

    use rst_craft::{capture::write_pcap, tcp_v4};

    use super::*;

    /// A mapped file cut while it is read ends with an error naming where, after the frames
    /// before (never with SIGBUS: the window past the new end is not touched).
    #[test]
    fn a_mapped_file_cut_while_read_is_a_capture_error() {
        const CUT: u64 = 5 << 19;
        let path = std::env::temp_dir().join(format!("rstwatch-shrunk-{}.pcap", std::process::id()));
        let frame = tcp_v4().payload(&[0; 200]).build().into_bytes();
        let frames: Vec<_> = (0..20_000u64).map(|i| (Duration::from_millis(i), &frame[..])).collect();
        write_pcap(File::create(&path).expect("create"), DataLink::ETHERNET, frames).expect("write");
        let source = Source::open(&path, true).expect("open");
        assert!(source.mapped.is_some(), "a regular file is mapped");
        let mut reader = CaptureReader::new(source).expect("reader");
        let mut read = 0u64;
        let result: Result<(), Stop<()>> = reader.read(|event| {
            if let Event::Packet(_) = event {
                read += 1;
                if read == 1 {
                    // Beyond the first two windows: the cut is met at the third.
                    File::options().write(true).open(&path).and_then(|f| f.set_len(CUT)).expect("cut");
                }
            }
            Ok(())
        });
        let _ = std::fs::remove_file(&path);
        match result {
            Err(Stop::Capture(CaptureError::Shrunk { now: CUT, .. })) => {}
            other => panic!("{:?}", other.map_err(|e| format!("{e:?}"))),
        }
        // The first two windows' frames were all read.
        let record = (frame.len() + PCAP_RECORD_HEADER) as u64;
        assert!(read >= 2 * CHUNK as u64 / record - 1, "{read} frames before the error");
    }

    #[test]
    fn pcapng_timestamp_resolutions() {
        let micro = TsScale::from_tsresol(6).map(|s| s.to_ns(1_500_000));
        assert_eq!(micro, Some(1_500_000_000));
        assert_eq!(TsScale::from_tsresol(9).map(|s| s.to_ns(7)), Some(7));
        assert_eq!(TsScale::from_tsresol(12).map(|s| s.to_ns(7_000)), Some(7));
        assert_eq!(TsScale::from_tsresol(0x80 | 10).map(|s| s.to_ns(1024)), Some(1_000_000_000));
        assert!(TsScale::from_tsresol(30).is_none());
    }
}
