//! What the data path's userspace half can fail at, and how an operator asks for an XDP mode.
//! Each error variant says what to do about it.

use std::{io, path::PathBuf, str::FromStr};

use super::{link::LinkType, maps::MapsError};

/// The XDP mode an operator asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeRequest {
    /// Native if the driver supports it, else generic (skb); the mode obtained is reported.
    #[default]
    Auto,
    /// Native (driver) mode only; fails where the driver lacks XDP support.
    Native,
    /// Generic (skb) mode.
    Skb,
}

impl FromStr for XdpModeRequest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "native" | "driver" | "drv" => Ok(Self::Native),
            "skb" | "generic" => Ok(Self::Skb),
            other => Err(format!(
                "unknown XDP mode `{other}`: use auto, native or skb"
            )),
        }
    }
}

/// What the loader can fail at. Each variant says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The pin directory is not on a bpffs.
    #[error(
        "{path} is not on a BPF filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf` or choose another --bpffs-dir"
    )]
    NotBpffs { path: PathBuf },
    /// A private mount namespace (`ip netns exec`, a container) without the host's bpffs: pins
    /// there would vanish with the daemon, and every block with them.
    #[error(
        "the daemon runs in a private mount namespace (mnt:[{own}], {reference}'s is mnt:[{theirs}]; e.g. under `ip netns exec`) where {path} is not on the host's BPF filesystem, so its blocks would vanish with it: use `enforcer daemon --netns NS` instead of `ip netns exec`, or mount bpffs on the host (`mount -t bpf bpf /sys/fs/bpf`)"
    )]
    PrivateMountNamespace {
        path: PathBuf,
        own: u64,
        reference: String,
        theirs: u64,
    },
    /// No other process's mount namespace could be inspected and nothing is mounted: mounting
    /// one could make pins that die with the daemon.
    #[error(
        "{path} is not on a BPF filesystem and the daemon cannot inspect PID 1's mount namespace to tell whether a bpffs it mounted would outlive it: mount bpffs on the host (`mount -t bpf bpf /sys/fs/bpf`) or use `enforcer daemon --netns NS`"
    )]
    UnverifiedBpffs { path: PathBuf },
    /// Another process owns the pins.
    #[error(
        "another enforcer process already owns {path} (only one daemon may write the maps); stop it first"
    )]
    Locked { path: PathBuf },
    /// A pinned map does not match this build.
    #[error(
        "pinned map {path} does not match this build: {what}. Run `enforcer detach` to remove the old state (blocks are restored from the store on the next start)"
    )]
    LayoutMismatch { path: PathBuf, what: String },
    /// Some maps are pinned and others are not.
    #[error(
        "the pin directory {path} is incomplete (missing {missing}); run `enforcer detach` to remove it"
    )]
    IncompletePins { path: PathBuf, missing: String },
    /// The interface does not exist.
    #[error("no interface named `{0}` (see `ip link`)")]
    UnknownInterface(String),
    /// The link's frames are neither Ethernet nor raw IP: the program would judge none of them.
    #[error(
        "{iface} is a {link_type} link, whose frames the data path cannot parse (it reads Ethernet and raw-IP links): not attached, its traffic is NOT filtered; protect the link that traffic arrives on, and remove {iface} from `interfaces`"
    )]
    UnsupportedLink { iface: String, link_type: LinkType },
    /// Another program owns the interface's XDP hook.
    #[error(
        "interface {iface} already runs XDP program {prog_id} (`{prog_name}`) that enforcer did not attach; refusing to replace it. Detach it with its owner's tools (e.g. `ip link set dev {iface} xdp off`) if it is safe"
    )]
    ForeignProgram {
        iface: String,
        prog_id: u32,
        prog_name: String,
    },
    /// The requested mode could not be used.
    #[error("could not attach to {iface} in {mode:?} mode{native_refused}")]
    Attach {
        iface: String,
        mode: XdpModeRequest,
        /// `: ` and the kernel's reason for refusing native mode with what to do, or empty (boxed:
        /// the error stays small).
        native_refused: Box<String>,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Loading the object or the program failed (the verifier log is in the source).
    #[error("loading the XDP program failed")]
    Load(#[from] aya::EbpfError),
    /// The program failed to load into the kernel.
    #[error("the kernel rejected the XDP program")]
    Program(#[from] aya::programs::ProgramError),
    /// A map operation failed.
    #[error(transparent)]
    Maps(#[from] MapsError),
    /// A filesystem operation on the pin directory failed.
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The kernel refused a link operation.
    #[error("XDP link operation on {iface} failed")]
    Link {
        iface: String,
        #[source]
        source: aya::programs::links::LinkError,
    },
}
