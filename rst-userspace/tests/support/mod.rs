//! What the capture tests (`corpus.rs`, `replay.rs`) share: where the corpus is, which files in
//! a directory are captures, and tshark's per-direction RST counts beside each capture.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};

/// One direction of a 5-tuple, as the corpus JSON names it.
pub type Direction = (IpAddr, u16, IpAddr, u16);

#[derive(serde::Deserialize)]
struct ExpectedResets {
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    resets: u64,
}

/// tshark's RST count per direction for `capture`, from `CAPTURE.resets.json`.
pub fn expected_resets(capture: &Path) -> anyhow::Result<BTreeMap<Direction, u64>> {
    let mut path = capture.as_os_str().to_owned();
    path.push(".resets.json");
    let path = Path::new(&path);
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let entries: Vec<ExpectedResets> =
        serde_json::from_str(&text).with_context(|| format!("parsing the expected resets in {}", path.display()))?;
    let mut expected = BTreeMap::new();
    for entry in entries {
        let direction = (entry.src, entry.sport, entry.dst, entry.dport);
        if expected.insert(direction, entry.resets).is_some() {
            bail!("{direction:?} is listed twice in {}", path.display());
        }
    }
    Ok(expected)
}

/// The shared corpus directory (`$RSTWATCH_CORPUS`, or `shared/corpus` beside the repository),
/// or `None` when it is absent outside CI, after the one-line notice of the test tiers
/// (`SKIPPED <test>: ...`: its captures are left out); under `CI=true` a missing corpus is an
/// error (`rst_lab::skip`).
pub fn corpus_dir() -> anyhow::Result<Option<PathBuf>> {
    let dir = match std::env::var_os("RSTWATCH_CORPUS") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"),
    };
    if dir.is_dir() {
        return Ok(Some(dir));
    }
    let reason = format!("corpus not found at {} (set RSTWATCH_CORPUS): its captures left out", dir.display());
    rst_lab::skip::skip(&rst_lab::skip::current_test(), &reason)?;
    Ok(None)
}

/// The `.pcap` and `.pcapng` files in `dir`, sorted.
pub fn captures_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut captures = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if matches!(path.extension().and_then(|e| e.to_str()), Some("pcap" | "pcapng")) {
            captures.push(path);
        }
    }
    captures.sort();
    Ok(captures)
}
