use std::path::PathBuf;

use crate::datapath::{DEFAULT_BPFFS_DIR, detach_all};

/// `enforcer detach`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The daemon's bpffs directory.
    #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
    pub bpffs_dir: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let detached = detach_all(&a.bpffs_dir)?;
    if detached.is_empty() {
        println!("nothing was attached; removed pinned state under {}", a.bpffs_dir.display());
    } else {
        println!("detached from {}; removed pinned state under {}", detached.join(", "), a.bpffs_dir.display());
    }
    println!("stored blocks are kept and come back when the daemon starts again");
    Ok(())
}
