use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

// Builds lb-bench-ebpf (the bench programs) for bpfel-unknown-none; `lb_bench::harness` embeds it.
// It links lb-ebpf's packet code, so a change there rebuilds it too.
fn main() -> anyhow::Result<()> {
    let manifest_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("ebpf");
    let root_dir = root.to_str().context("bench/ebpf path is not UTF-8")?;
    let shared = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("bench has no parent directory"))?
        .join("lb-ebpf");
    println!("cargo:rerun-if-changed={}", shared.display());
    aya_build::build_ebpf(
        [Package { name: "lb-bench-ebpf", root_dir, ..Default::default() }],
        Toolchain::default(),
    )
    .context("building the bench eBPF object failed; `cargo xtask setup` installs nightly rust-src and bpf-linker")
}
