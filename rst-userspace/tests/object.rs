//! The contract between the eBPF object and userspace, checked without root: every map, program
//! and global userspace names exists in the object rstwatch embeds, with the kind userspace
//! takes it as, nothing exists that the names list does not know, and `.bss` holds exactly
//! `EPOCH`, a u32 (the collector updates it as a one-entry array of u32).

#![allow(clippy::expect_used)] // test helpers: a panic is the failure report

use std::collections::BTreeMap;

use aya_obj::{EbpfSectionKind, Object, ProgramSection};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
use rst_common::wire::{names, ProgramKind, GLOBAL_EPOCH, MAP_EPOCH};
use rstwatch::load::EBPF_OBJECT;

fn parsed() -> Object {
    Object::parse(EBPF_OBJECT).expect("the embedded object parses as aya parses it")
}

#[test]
fn every_map_userspace_names_is_in_the_object_with_its_kind_and_no_other() {
    let object = parsed();
    let found: BTreeMap<&str, u32> = object.maps.iter().map(|(name, map)| (name.as_str(), map.map_type())).collect();
    let expected: BTreeMap<&str, u32> = names::MAPS.iter().map(|&(name, kind)| (name, kind.map_type())).collect();
    assert_eq!(found, expected, "maps in the object (left) and in rst_common::wire::names::MAPS (right)");
}

#[test]
fn every_program_userspace_names_is_in_the_object_with_its_kind_and_no_other() {
    let object = parsed();
    let found: BTreeMap<&str, Option<ProgramKind>> = object
        .programs
        .iter()
        .map(|(name, program)| {
            let kind = match program.section {
                ProgramSection::Xdp { .. } => Some(ProgramKind::Xdp),
                ProgramSection::SchedClassifier => Some(ProgramKind::SchedClassifier),
                ProgramSection::TracePoint => Some(ProgramKind::TracePoint),
                ProgramSection::FEntry { .. } => Some(ProgramKind::FEntry),
                ProgramSection::BtfTracePoint => Some(ProgramKind::BtfTracePoint),
                _ => None,
            };
            (name.as_str(), kind)
        })
        .collect();
    let expected: BTreeMap<&str, Option<ProgramKind>> =
        names::PROGRAMS.iter().map(|&(name, kind)| (name, Some(kind))).collect();
    assert_eq!(found, expected, "programs in the object (left) and in names::PROGRAMS (right)");
}

/// The object's data symbols, by section name: name → size.
fn globals() -> BTreeMap<String, BTreeMap<String, u64>> {
    let file = object::File::parse(EBPF_OBJECT).expect("the embedded object is ELF");
    let mut by_section: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for symbol in file.symbols() {
        let (Some(index), Ok(name)) = (symbol.section_index(), symbol.name()) else { continue };
        let Ok(section) = file.section_by_index(index).and_then(|section| section.name().map(str::to_owned)) else {
            continue;
        };
        if [".bss", ".data", ".rodata"].iter().any(|data| section.starts_with(data)) && symbol.size() > 0 {
            by_section.entry(section).or_default().insert(name.to_owned(), symbol.size());
        }
    }
    by_section
}

#[test]
fn bss_is_exactly_the_epoch_a_u32() {
    let object = parsed();
    let bss = &object.maps[MAP_EPOCH];
    assert_eq!(bss.section_kind(), EbpfSectionKind::Bss);
    assert_eq!((bss.key_size(), bss.value_size(), bss.max_entries()), (4, 4, 1), "one u32 entry");
    let globals = globals();
    assert_eq!(
        globals.get(".bss"),
        Some(&BTreeMap::from([(GLOBAL_EPOCH.to_owned(), 4)])),
        "zero-initialized globals: {globals:?}"
    );
    assert!(!globals.contains_key(".data"), "initialized mutable globals would need a map the loader does not know");
}

#[test]
fn every_global_the_loader_sets_is_a_read_only_u32_of_the_object() {
    let globals = globals();
    let rodata = globals.get(".rodata").expect("the object has read-only globals");
    for name in names::LOADER_GLOBALS {
        assert_eq!(rodata.get(name), Some(&4), "{name} in .rodata as a u32: {rodata:?}");
    }
}
