fn main() { let b = include_bytes!(concat!(env!("OUT_DIR"), "/rst-ebpf")); println!("{}", b.len()); }
