//! The data plane's userspace half: loading the XDP program, its pinned maps, and attachment.

pub mod bpffs;
pub mod clock;
pub mod indexes;
pub mod link;
pub mod loader;
pub mod maps;
mod migrate;

pub use bpffs::{PinsDurability, PinsInfo, ResolvedPins, resolve as resolve_pins};
pub use link::{LinkType, Parse, Programs};
pub use loader::{
    Attachment, Capacity, DEFAULT_BPFFS_DIR, Datapath, DatapathError, DatapathOptions, PinLayout,
    XdpModeRequest, detach_all, detach_link, pinned_interfaces,
};
pub use maps::{BlockMaps, MapsError, StatsReader};

pub use crate::netlink::{AttachedMode, XdpState, query_xdp};
