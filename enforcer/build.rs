use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Builds the XDP program (enforcer-ebpf) with the nightly toolchain and bpf-linker, and puts the
/// object in OUT_DIR, where `src/datapath/loader.rs` embeds it.
fn main() -> anyhow::Result<()> {
    let out_dir = std::env::var("OUT_DIR").context("OUT_DIR not set")?;
    let object = std::path::Path::new(&out_dir).join("enforcer-xdp");
    if std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1") {
        // Lets tools that never load the program (docs, lints) build without bpf-linker.
        if !object.exists() {
            std::fs::write(&object, []).context("writing the placeholder eBPF object")?;
        }
    }
    let root = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let ebpf_dir = std::path::Path::new(&root)
        .parent()
        .ok_or_else(|| anyhow!("enforcer has no parent directory"))?
        .join("enforcer-ebpf");
    let ebpf_dir = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    println!(
        "cargo:rerun-if-changed={}",
        std::path::Path::new(&root)
            .parent()
            .unwrap()
            .join("enforcer-common")
            .display()
    );
    aya_build::build_ebpf(
        [Package {
            name: "enforcer-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
