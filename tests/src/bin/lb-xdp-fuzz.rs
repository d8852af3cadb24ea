//! `lb-xdp-fuzz`: mutated and random frames through the real `lb_balancer` (`BPF_PROG_TEST_RUN`),
//! every verdict, output and counter checked (`lb_tests::xdp::fuzz`). Needs root and bpffs; run it
//! with `cargo xtask fuzz --packets N [--seed S]`. Exit status 1 when any frame fails a check.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Fuzz the XDP balancer with BPF_PROG_TEST_RUN")]
struct Args {
    /// Frames to run.
    #[arg(long, default_value_t = 1_000_000)]
    packets: u64,
    /// The run's seed (decimal or 0x hex): frame i of seed s is always the same frame.
    #[arg(long, default_value = "0x5eed", value_parser = parse_seed)]
    seed: u64,
    /// Index of the first frame (replay one failure: --seed S --first I --packets 1).
    #[arg(long, default_value_t = 0)]
    first: u64,
}

fn parse_seed(s: &str) -> Result<u64, String> {
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|e| format!("{s:?} is no seed (a u64, decimal or 0x hex): {e}"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    lb_tests::xdp::fuzz::run_in_lab(args.seed, args.first, args.packets).map(|_| ())
}
