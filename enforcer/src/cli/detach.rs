use std::path::PathBuf;

use crate::datapath::{DEFAULT_BPFFS_DIR, detach_all, resolve_pins};

/// `enforcer detach`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The daemon's bpffs directory.
    #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
    pub bpffs_dir: PathBuf,
}

pub(super) fn run(a: Args) -> anyhow::Result<()> {
    // The daemon may have pinned into the host's bpffs from a private mount namespace; run here
    // too (e.g. under `ip netns exec`), the same resolution finds its pins.
    let pins = resolve_pins(&a.bpffs_dir).ok();
    let base = pins
        .as_ref()
        .map_or(a.bpffs_dir.as_path(), |p| p.layout.base());
    let detached = detach_all(base)?;
    if detached.is_empty() {
        println!(
            "nothing was attached; removed pinned state under {}",
            a.bpffs_dir.display()
        );
    } else {
        println!(
            "detached from {}; removed pinned state under {}",
            detached.join(", "),
            a.bpffs_dir.display()
        );
    }
    println!("stored blocks are kept and come back when the daemon starts again");
    Ok(())
}
