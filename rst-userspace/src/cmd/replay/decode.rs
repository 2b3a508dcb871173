//! The decoding thread: a capture's records framed and its frames walked on the second core,
//! ahead of the replay loop.
//!
//! Everything done here depends on one frame and the run's settings only: the records, the
//! interfaces' numbers, the `--from` / `--to` window, and for the frames most of a capture is
//! made of (TCP segments without SYN, FIN or RST, outside tunnels) the walk and the connection
//! ([`Link::classify`]). What depends on the frames before (the connections, the tunnels'
//! numbers in the order met, the report) stays with the replay loop, which gets the frames in
//! file order, a read buffer's worth at a time ([`Batch`]), and walks again only the few it
//! must ([`Kind::Stateful`]). The loop hashes the connections itself, a few items ahead of
//! their lookup: here the hash made this thread the slower of the two.
//!
//! The loop's errors stop the file: it drops its end of the channel, and this thread stops at
//! its next hand-over.

use std::{
    collections::HashMap,
    mem,
    ops::Range,
    path::Path,
    sync::mpsc::{sync_channel, Receiver, SyncSender},
    thread::{self, JoinHandle},
};

use rst_common::wire::ConnKey;

use super::{
    capture::{CaptureError, CaptureReader, Event, Interface, Packet, Stop, CHUNK},
    link::{Classified, Counted, Link},
    source::{Chunk, Source},
};
use crate::model::aggregate::{
    model::{self, AttachMode},
    tunnels::{FrameTunnel, TunnelPortSet},
};

/// Batches decoded ahead of the loop: enough to keep both threads busy while one waits.
const AHEAD: usize = 2;

/// Items a batch's list is made for: a read buffer of frames of 64 bytes with their records
/// (it grows for smaller ones). Untouched room costs no memory.
const ITEMS: usize = CHUNK / 64;

/// What the decoding thread needs of the run, besides the file.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The run's tunnel ports, for the walk (tunnels are numbered by the loop).
    pub ports: TunnelPortSet,
    /// Capture time replayed (`--from`, `--to`), ns since the Unix epoch.
    pub range: Range<u64>,
    /// A frame stamped at or after this (`--to` and `PAST_WINDOW`) ends its file.
    pub past: Option<u64>,
}

/// The interfaces of the run, numbered as met: the next one gets ifindex `count + 1`. Moves to
/// each file's decoding thread and back.
#[derive(Debug, Default)]
pub struct Interfaces {
    count: u32,
    /// Named interfaces already seen: the same name and link type in several files (a rotated
    /// capture) is one interface.
    by_name: HashMap<(String, Link), u32>,
}

/// What replay knows of one of a file's interfaces.
#[derive(Clone, Copy)]
enum Slot {
    Supported { link: Link, ifindex: u32 },
    Unsupported(pcap_file::DataLink),
}

impl Interfaces {
    /// The slot of a file's `interface`, and the run's new interface when it is one.
    fn slot(&mut self, path: &Path, interface: &Interface) -> (Slot, Option<model::Interface>) {
        let Some(link) = Link::from_datalink(interface.datalink) else {
            return (Slot::Unsupported(interface.datalink), None);
        };
        if let Some(name) = &interface.name {
            if let Some(&ifindex) = self.by_name.get(&(name.clone(), link)) {
                return (Slot::Supported { link, ifindex }, None);
            }
        }
        let file = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        let iface = match (&interface.name, interface.pcapng) {
            (Some(name), _) => name.clone(),
            (None, true) => format!("{file}#{}", interface.index),
            (None, false) => file,
        };
        self.count = self.count.saturating_add(1);
        let ifindex = self.count;
        if let Some(name) = &interface.name {
            self.by_name.insert((name.clone(), link), ifindex);
        }
        let new = model::Interface { iface, ifindex, mode: AttachMode::Capture(link), peer_netns: None };
        (Slot::Supported { link, ifindex }, Some(new))
    }
}

/// What an [`Item`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A new interface of the run: `Batch::interfaces[at]`. Not a frame.
    Interface,
    /// A frame outside the window: read, not replayed.
    Outside,
    /// A frame counted as it is ([`Classified::Counted`]).
    Counted(Counted),
    /// A segment without SYN, FIN or RST outside tunnels, with its connection.
    Plain,
    /// A frame the loop inspects itself ([`Classified::Stateful`]).
    Stateful,
}

/// One interface or frame of a batch, in file order.
#[derive(Clone, Copy, Debug)]
pub struct Item {
    pub kind: Kind,
    pub link: Link,
    pub ifindex: u32,
    pub timestamp_ns: u64,
    /// The frame's bytes: `len` from `at` in the batch's chunk.
    at: u32,
    len: u32,
    /// [`Kind::Plain`]: its connection, whether its sender is the connection's `lo` end,
    /// whether it carried payload.
    pub conn: ConnKey,
    pub sender_is_lo: bool,
    pub data: bool,
}

impl Item {
    fn new(kind: Kind, link: Link, ifindex: u32, timestamp_ns: u64) -> Item {
        Item {
            kind,
            link,
            ifindex,
            timestamp_ns,
            at: 0,
            len: 0,
            conn: ConnKey::default(),
            sender_is_lo: false,
            data: false,
        }
    }
}

/// A read buffer's frames, decoded.
pub struct Batch {
    /// The bytes the frames are in.
    chunk: Chunk,
    pub items: Vec<Item>,
    /// The run's new interfaces ([`Kind::Interface`]).
    pub interfaces: Vec<model::Interface>,
    /// The number of its first frame in the file (from 1).
    pub first_frame: u64,
    /// Frames in it.
    pub frames: u64,
    /// Where its item list goes back for reuse when it is dropped.
    spare: SyncSender<Vec<Item>>,
}

impl Batch {
    /// The run's new interface an item of [`Kind::Interface`] announces.
    pub fn interface(&self, item: &Item) -> Option<&model::Interface> {
        self.interfaces.get(item.at as usize)
    }

    /// The bytes of `item`'s frame.
    pub fn frame(&self, item: &Item) -> &[u8] {
        let at = item.at as usize;
        let frame = self.chunk.get(at..at + item.len as usize);
        debug_assert!(frame.is_some(), "an item's frame outside its batch's bytes");
        frame.unwrap_or_default()
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        let mut items = mem::take(&mut self.items);
        items.clear();
        let _ = self.spare.try_send(items);
    }
}

/// What the decoding thread sends the loop.
pub enum Message {
    Batch(Batch),
    /// The file is read (`result`: how it ended); its interfaces go back to the run.
    End {
        interfaces: Interfaces,
        result: Result<(), Stop<anyhow::Error>>,
    },
}

/// Starts decoding `source` (the file at `path`) on a thread of its own: the messages, ending
/// with [`Message::End`] (which gives `interfaces` back), and the thread, for its panic if it
/// ends without one.
pub fn spawn(
    source: Source,
    path: &Path,
    settings: Settings,
    mut interfaces: Interfaces,
) -> std::io::Result<(Receiver<Message>, JoinHandle<()>)> {
    let (sender, receiver) = sync_channel(AHEAD);
    let path = path.to_owned();
    let thread = thread::Builder::new().name("replay-decode".into()).spawn(move || {
        let result = decode_file(source, &path, &settings, &mut interfaces, &sender);
        let _ = sender.send(Message::End { interfaces, result });
    })?;
    Ok((receiver, thread))
}

/// Decodes a whole file, batch by batch, into `sender`.
fn decode_file(
    source: Source,
    path: &Path,
    settings: &Settings,
    interfaces: &mut Interfaces,
    sender: &SyncSender<Message>,
) -> Result<(), Stop<anyhow::Error>> {
    let mut reader = CaptureReader::new(source)?;
    // Item lists handed back by dropped batches: the one being filled, those queued and the
    // loop's.
    let (spare, returned) = sync_channel(AHEAD + 2);
    let new_batch = |first_frame: u64| Batch {
        chunk: Chunk::empty(),
        items: returned.try_recv().unwrap_or_else(|_| Vec::with_capacity(ITEMS)),
        interfaces: Vec::new(),
        first_frame,
        frames: 0,
        spare: spare.clone(),
    };
    let send = |batch: Batch| {
        // The loop stopped (its error ends the run): nothing is left to decode for.
        sender.send(Message::Batch(batch)).map_err(|_| Stop::Sink(anyhow::anyhow!("replay stopped")))
    };
    let walker = FrameTunnel::new(&settings.ports);
    let mut slots: Vec<Slot> = Vec::new();
    let mut batch = new_batch(1);
    let read = reader.read(|event| match event {
        Event::Interface(interface) => {
            let (slot, new) = interfaces.slot(path, interface);
            slots.push(slot);
            if let Some(new) = new {
                let mut item = Item::new(Kind::Interface, Link::Ethernet, new.ifindex, 0);
                item.at = batch.interfaces.len() as u32;
                batch.interfaces.push(new);
                batch.items.push(item);
            }
            Ok(())
        }
        Event::Packet(packet) => {
            let item = decode(settings, &walker, &slots, packet)?;
            batch.items.push(item);
            batch.frames += 1;
            Ok(())
        }
        Event::Read(chunk) => {
            let next = new_batch(batch.first_frame + batch.frames);
            let mut full = mem::replace(&mut batch, next);
            full.chunk = chunk;
            send(full)
        }
    });
    // What came before the end, a window's or a break's, is replayed too.
    if !batch.items.is_empty() {
        batch.chunk = reader.into_last_read();
        send(batch)?;
    }
    read
}

/// One frame as an item, or why the file stops there.
#[inline]
fn decode(
    settings: &Settings,
    walker: &FrameTunnel<'_>,
    slots: &[Slot],
    packet: &Packet<'_>,
) -> Result<Item, Stop<anyhow::Error>> {
    let Settings { range, past, .. } = settings;
    let (link, ifindex) = match slots.get(packet.interface) {
        Some(Slot::Supported { link, ifindex }) => (*link, *ifindex),
        Some(Slot::Unsupported(datalink)) => {
            return Err(Stop::Capture(CaptureError::UnsupportedLink {
                frame: packet.frame,
                datalink: *datalink,
                code: u32::from(*datalink),
            }))
        }
        // The reader announces every interface before its packets.
        None => {
            return Err(Stop::Sink(anyhow::anyhow!(
                "frame {}: interface {} was never announced",
                packet.frame,
                packet.interface
            )))
        }
    };
    let timestamp_ns = packet.timestamp_ns;
    // Outside the window the frame is not replayed at all, as if the file had been cut there
    // (`editcap -A FROM -B TO`).
    if !range.contains(&timestamp_ns) {
        if past.is_some_and(|past| timestamp_ns >= past) {
            return Err(Stop::Enough);
        }
        return Ok(Item::new(Kind::Outside, link, ifindex, timestamp_ns));
    }
    let mut item = match link.classify(packet.data, ifindex, walker) {
        Classified::Counted(counted) => Item::new(Kind::Counted(counted), link, ifindex, timestamp_ns),
        Classified::Stateful => Item::new(Kind::Stateful, link, ifindex, timestamp_ns),
        Classified::Plain { conn, sender_is_lo, data } => {
            Item { conn, sender_is_lo, data, ..Item::new(Kind::Plain, link, ifindex, timestamp_ns) }
        }
    };
    // A buffer holds at most a window and a record: offsets fit in 32 bits.
    (item.at, item.len) = (packet.at as u32, packet.data.len() as u32);
    Ok(item)
}
