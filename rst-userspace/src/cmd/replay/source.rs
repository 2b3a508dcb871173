//! Where a capture's bytes come from: a file or standard input (`-`), plain, gzip or zstd.
//!
//! The compression is told by the first bytes, never by the name: archives are renamed, and a
//! pipe has no name. Every source counts the bytes taken from the file or pipe itself (before
//! decompression) for the progress line, whose total is the file's size when it has one.
//!
//! A regular file that is not compressed is mapped ([`FileMap`]) and parsed where it lies in the
//! page cache: copying it out was a quarter of a replay's CPU time. Anything else (a pipe, a
//! compressed file, a file that cannot be mapped) is read and decompressed ahead on a thread of
//! its own ([`ReadAhead`]), which overlaps the parsing. Either way the bytes change hands as
//! [`Chunk`]s, never copied again.

use std::{
    fs::File,
    io::{self, Read},
    ops::Range,
    os::fd::AsFd as _,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{sync_channel, Receiver, SyncSender},
        Arc,
    },
    thread,
};

use super::capture::{CaptureError, Offset};
use crate::sys::file_map::FileMap;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// How a capture is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of a file that starts with `head`.
    fn of(head: &[u8]) -> Compression {
        if head.starts_with(&ZSTD_MAGIC) {
            Compression::Zstd
        } else if head.starts_with(&GZIP_MAGIC) {
            Compression::Gzip
        } else {
            Compression::None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

/// An opened capture, ready to be read from its first byte (decompressed if it was compressed).
pub struct Source {
    pub reader: Box<dyn Read + Send>,
    pub compression: Compression,
    /// A pipe or terminal: hand over what a read gave at once rather than wait for a whole
    /// chunk, so that a live `tcpdump -w -` is reported as it comes.
    pub eager: bool,
    /// The stored size (compressed, if so), when the source is a regular file.
    pub size: Option<u64>,
    /// Bytes taken from the file or pipe so far (compressed, if so).
    pub consumed: Arc<AtomicU64>,
    /// The file, mapped, when it is a regular file and not compressed: then it is parsed in
    /// place, `reader` is not read, and the parser counts `consumed`.
    pub mapped: Option<FileMap>,
}

impl Source {
    /// Opens `path`, or standard input when it is `-`. A regular file is mapped when `map` is
    /// set (see [`Source::mapped`]).
    pub fn open(path: &Path, map: bool) -> Result<Source, CaptureError> {
        if path.as_os_str() == "-" {
            let stdin = io::stdin();
            // `rstwatch replay - < FILE` has a size (and so an ETA); a pipe has none.
            let size = stdin
                .as_fd()
                .try_clone_to_owned()
                .ok()
                .and_then(|fd| File::from(fd).metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len());
            return Source::from_reader(Box::new(stdin), size);
        }
        let file = File::open(path).map_err(CaptureError::Open)?;
        // A FIFO or a character device has no meaningful length.
        let size = file.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
        // A file that cannot be mapped (empty, or on a file system that refuses) is read.
        let mapped = size.filter(|&size| map && size > 0).and_then(|size| {
            // SAFETY: replay reads captures at rest; one rewritten in place while it is replayed
            // is outside what it supports, and the guide says to pipe such a file (shrinking is
            // handled).
            unsafe { FileMap::new(&file, size, &path.display().to_string()) }.ok()
        });
        if let Some(map) = mapped.filter(|map| Compression::of(map.bytes()) == Compression::None) {
            // (Mapping leaves the file's position alone: a reader would start at its start.)
            let consumed = Arc::new(AtomicU64::new(0));
            let reader = Box::new(io::empty());
            return Ok(Source {
                reader,
                compression: Compression::None,
                eager: false,
                size,
                consumed,
                mapped: Some(map),
            });
        }
        Source::from_reader(Box::new(file), size)
    }

    /// Detects the compression of `inner` from its first bytes.
    pub fn from_reader(inner: Box<dyn Read + Send>, size: Option<u64>) -> Result<Source, CaptureError> {
        let consumed = Arc::new(AtomicU64::new(0));
        let mut counted = Counted { inner, consumed: Arc::clone(&consumed) };
        let mut magic = [0u8; 4];
        let mut got = 0;
        // A pipe may hand over fewer bytes than asked: the magic needs all four (or the end).
        while got < magic.len() {
            match counted.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(read) => got += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    let offset = Offset { byte: got as u64, compression: Compression::None };
                    return Err(CaptureError::Io { frame: 1, offset, source });
                }
            }
        }
        let head = io::Cursor::new(magic[..got].to_vec());
        let whole = head.chain(counted);
        let compression = Compression::of(&magic[..got]);
        let reader: Box<dyn Read + Send> = match compression {
            Compression::None => Box::new(whole),
            // Multi-member: `cat a.gz b.gz` and pigz's output are one stream.
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(whole)),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(whole).map_err(|source| CaptureError::Decompress {
                    compression: "zstd",
                    frame: 1,
                    offset: Offset { byte: 0, compression: Compression::Zstd },
                    source,
                })?)
            }
        };
        let eager = size.is_none() && compression == Compression::None;
        Ok(Source { reader, compression, eager, size, consumed, mapped: None })
    }
}

/// Room kept before each chunk's bytes: the unparsed end of the previous chunk (part of one
/// record) is copied there, so a record never straddles two buffers. Larger than any frame
/// (256 KiB) with its record header; a longer leftover takes the slow way (a joined buffer).
pub const HEADROOM: usize = 512 << 10;

/// A source read on its own thread into chunks `[HEADROOM bytes][data]`, handed over with where
/// their data ends. A chunk keeps its full length for reuse: shortening it would make the next
/// fill zero what a pipe's small reads then overwrite (a chunk per 64 KiB read).
pub struct ReadAhead {
    full: Receiver<io::Result<(Vec<u8>, usize)>>,
    /// Chunks handed back for reuse: no allocation per chunk once running.
    empty: SyncSender<Vec<u8>>,
}

impl ReadAhead {
    /// Starts reading `source` in chunks of `chunk` bytes.
    pub fn spawn(source: Source, chunk: usize) -> io::Result<ReadAhead> {
        // Two chunks ahead keep the reader busy while the parser works on a third.
        let (full_tx, full) = sync_channel(2);
        // Every chunk in flight can come back: those queued here, the parser's, and those the
        // replay loop still reads (see `decode`).
        let (empty, empty_rx) = sync_channel::<Vec<u8>>(8);
        let Source { mut reader, eager, .. } = source;
        thread::Builder::new().name("replay-read".into()).spawn(move || loop {
            // A new chunk comes zeroed from the allocator untouched: its pages are faulted in as
            // they are first written, and the headroom's mostly never are.
            let mut buf: Vec<u8> = match empty_rx.try_recv() {
                Ok(buf) if buf.len() == HEADROOM + chunk => buf,
                _ => vec![0; HEADROOM + chunk],
            };
            let mut end = HEADROOM;
            let mut error = None;
            let mut at_end = false;
            while end < buf.len() {
                match reader.read(&mut buf[end..]) {
                    Ok(0) => {
                        at_end = true;
                        break;
                    }
                    Ok(read) => {
                        end += read;
                        if eager {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            // The parser is gone (it stopped early): so is the point of reading on.
            if end > HEADROOM && full_tx.send(Ok((buf, end))).is_err() {
                return;
            }
            if let Some(error) = error {
                let _ = full_tx.send(Err(error));
                return;
            }
            if at_end {
                return;
            }
        })?;
        Ok(ReadAhead { full, empty })
    }

    /// The next chunk and the end of its data (which starts at [`HEADROOM`]); `None` at the end
    /// of the source.
    pub fn next(&self) -> Option<io::Result<(Vec<u8>, usize)>> {
        self.full.recv().ok()
    }

    /// Hands a chunk back for reuse.
    pub fn recycle(&self, buf: Vec<u8>) {
        let _ = self.empty.try_send(buf);
    }

    /// `buf` as a [`Chunk`], handed back for reuse when dropped.
    pub fn chunk(&self, buf: Vec<u8>) -> Chunk {
        Chunk(Bytes::Read { bytes: buf, home: Some(self.empty.clone()) })
    }
}

/// A buffer of a capture's bytes, which may be read on another thread than the parser's: a
/// chunk a [`ReadAhead`] read, which goes back to the reading thread for reuse when dropped (a
/// new chunk would fault in every page again), or a window of a mapped file, whose pages leave
/// the process's memory once read (see [`FileMap::release_before`]).
pub struct Chunk(Bytes);

enum Bytes {
    Read { bytes: Vec<u8>, home: Option<SyncSender<Vec<u8>>> },
    Mapped { map: Arc<FileMap>, range: Range<usize> },
}

impl Chunk {
    /// No bytes, from no reader.
    pub fn empty() -> Chunk {
        Chunk(Bytes::Read { bytes: Vec::new(), home: None })
    }

    /// The bytes `range` of `map`.
    pub fn mapped(map: Arc<FileMap>, range: Range<usize>) -> Chunk {
        Chunk(Bytes::Mapped { map, range })
    }
}

impl std::ops::Deref for Chunk {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Bytes::Read { bytes, .. } => bytes,
            Bytes::Mapped { map, range } => map.bytes().get(range.clone()).unwrap_or_default(),
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        match &mut self.0 {
            // The reading thread may be gone (the file is read) or have chunks enough: then it
            // is freed.
            Bytes::Read { bytes, home: Some(home) } => {
                let _ = home.try_send(std::mem::take(bytes));
            }
            Bytes::Read { home: None, .. } => {}
            Bytes::Mapped { map, range } => map.release_before(range.end),
        }
    }
}

/// Counts what passes through for the progress line; one relaxed add per read call (a buffer's
/// worth), nothing per frame.
struct Counted {
    inner: Box<dyn Read + Send>,
    consumed: Arc<AtomicU64>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.consumed.fetch_add(read as u64, Ordering::Relaxed);
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn read_all(bytes: Vec<u8>) -> (Compression, Vec<u8>, u64) {
        let source = Source::from_reader(Box::new(io::Cursor::new(bytes)), None).expect("opens");
        let Source { mut reader, compression, consumed, .. } = source;
        let mut out = Vec::new();
        reader.read_to_end(&mut out).expect("reads");
        (compression, out, consumed.load(Ordering::Relaxed))
    }

    #[test]
    fn compression_is_told_by_content_and_counted_before_decompression() {
        let plain: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let (kind, out, consumed) = read_all(plain.clone());
        assert_eq!((kind, consumed), (Compression::None, plain.len() as u64));
        assert_eq!(out, plain);

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).expect("gzip");
        let gz = gz.finish().expect("gzip");
        // Two members, as `cat a.gz b.gz` makes.
        let twice = [gz.clone(), gz.clone()].concat();
        let (kind, out, consumed) = read_all(twice.clone());
        assert_eq!((kind, consumed), (Compression::Gzip, twice.len() as u64));
        assert_eq!(out, [plain.clone(), plain.clone()].concat());

        let zst = zstd::encode_all(&plain[..], 1).expect("zstd");
        let (kind, out, consumed) = read_all(zst.clone());
        assert_eq!((kind, consumed), (Compression::Zstd, zst.len() as u64));
        assert_eq!(out, plain);

        // Shorter than any magic: read as it is, for the capture reader to refuse.
        assert_eq!(read_all(vec![0x1f]).1, vec![0x1f]);
    }
}
