use anyhow::Context as _;
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
    // Paths relative to this package's directory (where cargo runs build scripts, and how it
    // reads relative `rerun-if-changed` paths): a target directory copied from another
    // checkout (a worktree started from a warm build) then watches this checkout's sources,
    // where absolute paths kept watching the other's and embedded its stale object.
    println!("cargo:rerun-if-changed=../enforcer-common");
    aya_build::build_ebpf(
        [Package {
            name: "enforcer-ebpf",
            root_dir: "../enforcer-ebpf",
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
