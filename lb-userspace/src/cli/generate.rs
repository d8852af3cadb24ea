//! `lb generate --out DIR` (hidden): the man pages and shell completions, generated from the clap
//! definitions so they never disagree with `--help`. `cargo xtask dist` packages what it writes.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::CommandFactory as _;
use clap_complete::Shell;

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Directory to write `man/*.1` and `completions/{lb.bash,_lb,lb.fish}` into (created).
    #[arg(long)]
    out: PathBuf,
}

/// The shells whose completion files the package installs.
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

pub fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    let man = args.out.join("man");
    let completions = args.out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let written = man_pages(&man)?;
    println!("{} man pages in {}", written, man.display());
    for shell in SHELLS {
        let path =
            clap_complete::generate_to(shell, &mut super::Cli::command(), "lb", &completions)
                .with_context(|| {
                    format!(
                        "cannot write the {shell} completions to {}",
                        completions.display()
                    )
                })?;
        println!("{shell} completions: {}", path.display());
    }
    Ok(())
}

/// `lb.1`, then one page per visible subcommand (`lb-run.1`, `lb-service-put.1`, ...).
fn man_pages(dir: &Path) -> anyhow::Result<usize> {
    clap_mangen::generate_to(super::Cli::command(), dir)
        .with_context(|| format!("cannot write man pages to {}", dir.display()))?;
    let count = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "1"))
        .count();
    Ok(count)
}
