//! Which kernel map holds a target: the four block maps and the two allowlists, by name, with
//! values kept per map ([`PerMap`]) instead of arrays indexed by position.

use std::{fmt, ops};

use enforcer_common::map_names;

use crate::target::Target;

/// A map that holds targets (the block maps and the allowlists); its capacity is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MapId {
    /// Single IPv4 addresses blocked.
    BlockV4,
    /// Single IPv6 addresses blocked.
    BlockV6,
    /// IPv4 prefixes blocked.
    BlockNetV4,
    /// IPv6 prefixes blocked.
    BlockNetV6,
    /// The IPv4 allowlist.
    AllowV4,
    /// The IPv6 allowlist.
    AllowV6,
}

impl MapId {
    /// Every one, in [`map_names::ALL`] order.
    pub const ALL: [Self; 6] = [
        Self::BlockV4,
        Self::BlockV6,
        Self::BlockNetV4,
        Self::BlockNetV6,
        Self::AllowV4,
        Self::AllowV6,
    ];

    /// The block maps.
    pub const BLOCKS: [Self; 4] = [
        Self::BlockV4,
        Self::BlockV6,
        Self::BlockNetV4,
        Self::BlockNetV6,
    ];

    /// The name the kernel and the pin directory know it by.
    pub const fn name(self) -> &'static str {
        match self {
            Self::BlockV4 => map_names::BLOCK_V4,
            Self::BlockV6 => map_names::BLOCK_V6,
            Self::BlockNetV4 => map_names::BLOCK_NET_V4,
            Self::BlockNetV6 => map_names::BLOCK_NET_V6,
            Self::AllowV4 => map_names::ALLOW_V4,
            Self::AllowV6 => map_names::ALLOW_V6,
        }
    }

    /// The map of that name, if it is one of these.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The block map a blocked target goes to: single addresses to the hashes, prefixes to
    /// the tries.
    pub fn for_block(target: &Target) -> Self {
        match (target.is_v4(), target.is_host()) {
            (true, true) => Self::BlockV4,
            (false, true) => Self::BlockV6,
            (true, false) => Self::BlockNetV4,
            (false, false) => Self::BlockNetV6,
        }
    }

    /// The allowlist map an allowed target goes to.
    pub fn for_allow(target: &Target) -> Self {
        if target.is_v4() {
            Self::AllowV4
        } else {
            Self::AllowV6
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for MapId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One value per [`MapId`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerMap<T>([T; 6]);

impl<T> PerMap<T> {
    /// A value made for each map.
    pub fn from_fn(mut f: impl FnMut(MapId) -> T) -> Self {
        Self(MapId::ALL.map(&mut f))
    }

    /// Each map with its value, in [`MapId::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (MapId, &T)> {
        MapId::ALL.into_iter().zip(&self.0)
    }
}

impl<T> ops::Index<MapId> for PerMap<T> {
    type Output = T;

    fn index(&self, map: MapId) -> &T {
        &self.0[map.index()]
    }
}

impl<T> ops::IndexMut<MapId> for PerMap<T> {
    fn index_mut(&mut self, map: MapId) -> &mut T {
        &mut self.0[map.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_layouts_map_order_and_names() {
        assert_eq!(
            MapId::ALL.map(MapId::name),
            map_names::ALL[..6],
            "the first six maps of the layout"
        );
        for m in MapId::ALL {
            assert_eq!(MapId::from_name(m.name()), Some(m));
        }
        assert_eq!(MapId::from_name(map_names::STATS), None);
    }

    #[test]
    fn targets_go_to_the_map_of_their_family_and_kind() {
        let t = |s: &str| s.parse::<Target>().unwrap();
        assert_eq!(MapId::for_block(&t("192.0.2.1")), MapId::BlockV4);
        assert_eq!(MapId::for_block(&t("2001:db8::1")), MapId::BlockV6);
        assert_eq!(MapId::for_block(&t("192.0.2.0/24")), MapId::BlockNetV4);
        assert_eq!(MapId::for_block(&t("2001:db8::/48")), MapId::BlockNetV6);
        assert_eq!(MapId::for_allow(&t("192.0.2.0/24")), MapId::AllowV4);
        assert_eq!(MapId::for_allow(&t("2001:db8::1")), MapId::AllowV6);
    }
}
