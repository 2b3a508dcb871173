//! The capture's files: created new (mode 0600, never through a symlink, never over a file that
//! exists), written a whole block at a time, rotated under a size cap like tcpdump's `-C` / `-W`.
//! A write that fails part-way (a full disk) is cut back to the last complete block, so the file
//! stays readable.

use std::{
    collections::VecDeque,
    fs::File,
    io::{self, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path} already exists; rstwatch never overwrites a file it did not create (remove it or name another)")]
    Exists { path: String },
    #[error("creating {path}")]
    Create {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} was removed or replaced while rstwatch was writing it")]
    Removed { path: String },
    #[error("{path} is no longer the file rstwatch created; rotation will not remove it")]
    NotOurs { path: String },
}

/// Where and how much: `path`, or with a size cap `stem.N.ext` for N = 0, 1, …, and with a
/// file count N the oldest of rstwatch's own files reused after N.
#[derive(Debug, Clone)]
pub struct Layout {
    pub path: PathBuf,
    pub max_size: Option<u64>,
    pub files: Option<u32>,
}

impl Layout {
    /// The name of the `index`th file.
    pub fn name(&self, index: u64) -> PathBuf {
        if self.max_size.is_none() {
            return self.path.clone();
        }
        let stem = self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let name = match self.path.extension() {
            Some(ext) => format!("{stem}.{index}.{}", ext.to_string_lossy()),
            None => format!("{stem}.{index}"),
        };
        self.path.with_file_name(name)
    }
}

/// A file this run created, known by its inode (and once closed, its size and modification
/// time, as an inode number can be reused) so that nothing else is ever removed under its name.
#[derive(Debug)]
struct Created {
    path: PathBuf,
    dev: u64,
    ino: u64,
    /// Size and mtime (ns) when rstwatch closed it; `None` while open.
    closed: Option<(u64, i64)>,
}

impl Created {
    fn is(&self, meta: &std::fs::Metadata) -> bool {
        let mtime = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
        meta.dev() == self.dev
            && meta.ino() == self.ino
            && self.closed.is_none_or(|(size, closed_mtime)| size == meta.len() && closed_mtime == mtime)
    }
}

/// The open file and the files written before it.
#[derive(Debug)]
pub struct Files {
    layout: Layout,
    file: File,
    current: Created,
    /// Bytes of complete blocks in the open file, written or still in `pending`.
    size: u64,
    /// Complete blocks not written yet: written together (one write, whole blocks) when there
    /// are [`FLUSH_AT`] bytes of them, and by [`Files::flush`].
    pending: Vec<u8>,
    /// Bytes of the open file actually written.
    flushed: u64,
    /// Packets in the open file.
    packets: u64,
    index: u64,
    /// Earlier files still on disk, oldest first.
    earlier: VecDeque<Created>,
}

/// Pending bytes that make a write: a few hundred RSTs.
const FLUSH_AT: usize = 64 << 10;

fn display(path: &Path) -> String {
    path.display().to_string()
}

fn create(path: &Path) -> Result<(File, Created), Error> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => Error::Exists { path: display(path) },
            _ => Error::Create { path: display(path), source },
        })?;
    let meta = file.metadata().map_err(|source| Error::Create { path: display(path), source })?;
    Ok((file, Created { path: path.to_owned(), dev: meta.dev(), ino: meta.ino(), closed: None }))
}

impl Files {
    /// Creates the first file (nothing is written yet).
    pub fn create(layout: Layout) -> Result<Files, Error> {
        let (file, current) = create(&layout.name(0))?;
        Ok(Files {
            layout,
            file,
            current,
            size: 0,
            pending: Vec::with_capacity(FLUSH_AT),
            flushed: 0,
            packets: 0,
            index: 0,
            earlier: VecDeque::new(),
        })
    }

    pub fn current_path(&self) -> &Path {
        &self.current.path
    }

    /// Every file of the run still on disk, oldest first.
    pub fn paths(&self) -> Vec<String> {
        self.earlier.iter().chain(std::iter::once(&self.current)).map(|c| display(&c.path)).collect()
    }

    /// Whether `bytes` more would take the open file past the cap (a file always takes at least
    /// one packet, so a cap below one block still makes progress).
    pub fn full_for(&self, bytes: usize) -> bool {
        self.layout.max_size.is_some_and(|max| self.packets > 0 && self.size + bytes as u64 > max)
    }

    /// Adds one complete block (written by [`Files::flush`]); a packet block counts toward the
    /// file's packets.
    pub fn write(&mut self, block: &[u8], packet: bool) -> Result<(), Error> {
        self.pending.extend_from_slice(block);
        self.size += block.len() as u64;
        self.packets += u64::from(packet);
        Ok(())
    }

    /// Whether enough blocks are pending to make a write worth it.
    pub fn should_flush(&self) -> bool {
        self.pending.len() >= FLUSH_AT
    }

    /// Writes the pending blocks in one write: the file always ends at a block boundary, even
    /// after kill -9, and a write that fails part-way is cut back to the last complete block.
    pub fn flush(&mut self) -> Result<(), Error> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Err(source) = self.file.write_all(&self.pending) {
            let _ = self.file.set_len(self.flushed);
            self.pending.clear();
            return Err(Error::Write { path: display(&self.current.path), source });
        }
        self.flushed += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Closes the open file and creates the next; with a file count, the oldest of this run's
    /// files gives up its place first (removed only if it is still the file rstwatch created).
    pub fn rotate(&mut self) -> Result<(), Error> {
        self.flush()?;
        self.index += 1;
        let index = match self.layout.files {
            Some(files) => self.index % u64::from(files),
            None => self.index,
        };
        let next = self.layout.name(index);
        let replaces_current = self.current.path == next;
        if let Ok(meta) = self.file.metadata() {
            self.current.closed = Some((meta.len(), meta.mtime() * 1_000_000_000 + meta.mtime_nsec()));
        }
        let (file, created) = create_replacing(&next, &mut self.earlier, &self.current, self.layout.files)?;
        let previous = std::mem::replace(&mut self.current, created);
        if !replaces_current {
            self.earlier.push_back(previous);
        }
        self.file = file;
        self.size = 0;
        self.flushed = 0;
        self.packets = 0;
        Ok(())
    }

    /// Whether the open file is still where it was created (not removed, not replaced).
    pub fn check_present(&self) -> Result<(), Error> {
        let removed = || Error::Removed { path: display(&self.current.path) };
        let open = self.file.metadata().map_err(|_| removed())?;
        if open.nlink() == 0 {
            return Err(removed());
        }
        match std::fs::symlink_metadata(&self.current.path) {
            Ok(meta) if self.current.is(&meta) => Ok(()),
            _ => Err(removed()),
        }
    }
}

fn create_replacing(
    next: &Path,
    earlier: &mut VecDeque<Created>,
    current: &Created,
    files: Option<u32>,
) -> Result<(File, Created), Error> {
    let Some(files) = files else {
        return create(next);
    };
    // Keep at most `files` on disk: the open one and `files - 1` before it.
    while earlier.len() + 1 >= files as usize {
        let Some(oldest) = earlier.pop_front() else { break };
        remove_own(&oldest)?;
    }
    if current.path == next {
        // `--capture-files 1`: the only file is replaced by its successor.
        remove_own(current)?;
    }
    create(next)
}

fn remove_own(file: &Created) -> Result<(), Error> {
    match std::fs::symlink_metadata(&file.path) {
        Ok(meta) if file.is(&meta) => {
            std::fs::remove_file(&file.path).map_err(|source| Error::Create { path: display(&file.path), source })
        }
        // Already gone: its place is free.
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        _ => Err(Error::NotOurs { path: display(&file.path) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("rstwatch-files-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("creating a temporary directory");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_file_that_exists_or_a_symlink_is_never_opened() {
        let dir = TempDir::new("exists");
        let taken = dir.0.join("taken.pcapng");
        std::fs::write(&taken, b"someone else's").expect("writing");
        let layout = Layout { path: taken.clone(), max_size: None, files: None };
        assert!(matches!(Files::create(layout), Err(Error::Exists { .. })));
        assert_eq!(std::fs::read(&taken).expect("reading"), b"someone else's");
        let link = dir.0.join("link.pcapng");
        let target = dir.0.join("target");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let layout = Layout { path: link, max_size: None, files: None };
        assert!(matches!(Files::create(layout), Err(Error::Exists { .. })));
        assert!(!target.exists(), "the symlink was followed");
    }

    #[test]
    fn files_are_private_and_rotation_keeps_at_most_n_of_its_own() {
        let dir = TempDir::new("rotate");
        let layout = Layout { path: dir.0.join("r.pcapng"), max_size: Some(100), files: Some(3) };
        let mut files = Files::create(layout).expect("creating");
        let meta = std::fs::metadata(files.current_path()).expect("stat");
        assert_eq!(meta.mode() & 0o777, 0o600);
        for _ in 0..10 {
            if files.full_for(60) {
                files.rotate().expect("rotating");
            }
            files.write(&[0; 60], true).expect("writing");
        }
        files.flush().expect("flushing");
        let mut names: Vec<String> = std::fs::read_dir(&dir.0)
            .expect("listing")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        // Ten packets, one per file (two would pass 100 bytes): files 0..9, of which 7, 8, 9 stay
        // under the names 7 % 3, 8 % 3, 9 % 3.
        assert_eq!(names, ["r.0.pcapng", "r.1.pcapng", "r.2.pcapng"]);
        assert_eq!(files.paths().len(), 3);
        assert_eq!(files.current_path(), dir.0.join("r.0.pcapng"));
    }

    #[test]
    fn a_removed_file_is_noticed_and_a_replaced_one_is_not_removed_by_rotation() {
        let dir = TempDir::new("removed");
        let layout = Layout { path: dir.0.join("x.pcapng"), max_size: Some(10), files: Some(2) };
        let mut files = Files::create(layout).expect("creating");
        files.check_present().expect("present");
        files.write(&[0; 16], true).expect("writing");
        files.rotate().expect("rotating");
        // Someone puts their own file where rstwatch's first one was.
        let first = dir.0.join("x.0.pcapng");
        std::fs::remove_file(&first).expect("removing");
        std::fs::write(&first, b"theirs").expect("writing theirs");
        files.write(&[0; 16], true).expect("writing");
        assert!(matches!(files.rotate(), Err(Error::NotOurs { .. })));
        assert_eq!(std::fs::read(&first).expect("reading"), b"theirs");
        std::fs::remove_file(files.current_path()).expect("removing");
        assert!(matches!(files.check_present(), Err(Error::Removed { .. })));
    }
}
