// Rebuild the eBPF object when bpf-linker changes (it is not a cargo dependency).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    // Header fields are byte arrays (any packet offset is sound to read), and LLVM's BPF target by
    // default turns every unaligned access into byte loads and stores: a 4-byte address became 4
    // loads, 3 shifts and 3 ors. The kernel allows unaligned packet and map-value access on the
    // machines XDP runs on (x86-64, arm64: `HAVE_EFFICIENT_UNALIGNED_ACCESS`), so bpf-linker's
    // code generation may use word accesses (LLVM 22; `cargo xtask setup` builds bpf-linker for
    // it). Stack accesses stay aligned: the verifier insists, and LLVM aligns its own slots.
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        println!("cargo:rustc-link-arg-bins=--cpu-features=+allows-misaligned-mem-access");
        println!("cargo:rustc-link-arg-bins=--llvm-args=-combiner-store-merging=false");
    }
}
