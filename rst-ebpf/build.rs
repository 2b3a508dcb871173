/// Lets LLVM use one wide load where the headers (byte arrays, alignment 1) would otherwise
/// take a load per byte. The verifier accepts unaligned packet loads on architectures with
/// efficient unaligned access (x86-64, arm64); stack accesses stay aligned.
///
/// Not `+alu32`: the 64-bit BPF_CMPXCHG that claims flow-table slots does not need it, and its
/// 32-bit subregister code made the cache-hit path 5–20 ns slower here.
fn main() {
    println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
}
