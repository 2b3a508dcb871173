/// Lets LLVM use one wide load where the headers (byte arrays, alignment 1) would otherwise
/// take a load per byte. The verifier accepts unaligned packet loads on architectures with
/// efficient unaligned access (x86-64, arm64); stack accesses stay aligned.
fn main() {
    println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
}
