//! The data plane's userspace half: loading the XDP program, its pinned maps, and attachment.

mod batch;
pub mod bpffs;
pub mod clock;
pub mod error;
pub mod indexes;
pub mod link;
pub mod loader;
pub mod map_id;
pub mod maps;
mod maps_error;
mod migrate;
mod pinned_program;
mod scopes;
mod shared;

pub use bpffs::{PinLayout, PinsDurability, PinsInfo, ResolvedPins, resolve as resolve_pins};
pub use error::{DatapathError, XdpModeRequest};
pub use link::{LinkType, Parse, Programs};
pub use loader::{
    Attachment, Capacity, DEFAULT_BPFFS_DIR, Datapath, DatapathOptions, FloodMaps, detach_all,
    detach_link, pinned_interfaces,
};
pub use map_id::{MapId, PerMap};
pub use maps::{BlockMaps, MapsError, StatsReader};

pub use crate::netlink::{AttachedMode, XdpState, query_xdp};
