use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

// Builds lb-ebpf for bpfel-unknown-none (nightly + bpf-linker; `cargo xtask setup` installs both)
// so one `cargo build` produces the daemon with the XDP object embedded.
fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("lb-userspace has no parent directory"))?
        .join("lb-ebpf");
    let root_dir = root.to_str().context("lb-ebpf path is not UTF-8")?;
    aya_build::build_ebpf(
        [Package { name: "lb-ebpf", root_dir, ..Default::default() }],
        Toolchain::default(),
    )
    .context("building the eBPF object failed; `cargo xtask setup` installs nightly rust-src and bpf-linker")
}
