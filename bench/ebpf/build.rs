// The bench programs (the reset wrapper, the floor, the flow-table programs) are generated like
// the production object (see lb-ebpf/build.rs), so what they measure compares.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        println!("cargo:rustc-link-arg-bins=--cpu-features=+allows-misaligned-mem-access");
        println!("cargo:rustc-link-arg-bins=--llvm-args=-combiner-store-merging=false");
    }
}
