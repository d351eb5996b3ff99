//! The kernel's view of links, addresses and routes, through rtnetlink.
//!
//! Messages are built and parsed by `netlink-packet-route` and carried by `netlink-sys`; this
//! module only says what to ask and what to keep. Every call here blocks on a netlink socket:
//! dumps and notifications are read on their own threads (the address watcher, the link
//! watcher). The engine thread makes only single-link requests the kernel answers at once: the
//! loader's `query_xdp` around an attach (the engine owns the program), and one `query_xdp` per
//! configured interface when `enforcer status` asks, so status never reports a cached state.

use std::{
    collections::BTreeMap,
    fmt, io,
    net::IpAddr,
    os::fd::{AsRawFd, BorrowedFd},
};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkFlags, LinkMessage, LinkXdp, XdpAttached},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

pub use crate::protocol::{AttachedMode, LinkType};

/// `ARPHRD_*` values the data path knows (linux/if_arp.h).
pub(crate) mod arphrd {
    pub(crate) const ETHER: u16 = 1;
    pub(crate) const PPP: u16 = 512;
    pub(crate) const RAWIP: u16 = 519;
    pub(crate) const TUNNEL: u16 = 768;
    pub(crate) const TUNNEL6: u16 = 769;
    pub(crate) const LOOPBACK: u16 = 772;
    pub(crate) const SIT: u16 = 776;
    pub(crate) const IPGRE: u16 = 778;
    pub(crate) const IP6GRE: u16 = 823;
    pub(crate) const NONE: u16 = 0xfffe;
}

impl LinkType {
    /// The name `ip link` shows (`link/ether`, `link/none`...), or `None` for types it has no
    /// short name for here.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            arphrd::ETHER => "ether",
            arphrd::LOOPBACK => "loopback",
            arphrd::NONE => "none",
            arphrd::RAWIP => "rawip",
            arphrd::PPP => "ppp",
            arphrd::TUNNEL => "ipip",
            arphrd::TUNNEL6 => "tunnel6",
            arphrd::SIT => "sit",
            arphrd::IPGRE => "gre",
            arphrd::IP6GRE => "gre6",
            32 => "infiniband",
            280 => "can",
            801 => "ieee802.11",
            802 => "ieee802.11/prism",
            803 => "ieee802.11/radiotap",
            804 => "ieee802.15.4",
            824 => "netlink",
            0xffff => "void",
            _ => return None,
        })
    }
}

impl fmt::Display for LinkType {
    /// `none (ARPHRD 65534)`: the name and the number, so an operator can look either up.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} (ARPHRD {})", self.0),
            None => write!(f, "ARPHRD {}", self.0),
        }
    }
}

/// Multicast groups (`RTMGRP_*`), the bits a listener binds to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Groups(u32);

impl Groups {
    /// Links appearing, changing, disappearing (`RTMGRP_LINK`).
    pub const LINKS: Self = Self(0x1);
    /// IPv4 and IPv6 addresses (`RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR`).
    pub const ADDRESSES: Self = Self(0x10 | 0x100);
    /// IPv4 and IPv6 routes (`RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE`).
    pub const ROUTES: Self = Self(0x40 | 0x400);
}

impl std::ops::BitOr for Groups {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// The XDP state of one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpState {
    /// Id of the attached program, if any.
    pub prog_id: Option<u32>,
    /// Mode of the attached program, if any.
    pub mode: Option<AttachedMode>,
}

impl XdpState {
    /// The XDP state carried by an `RTM_NEWLINK` message.
    fn of(link: &LinkMessage) -> Self {
        let mut state = Self {
            prog_id: None,
            mode: None,
        };
        let xdp = link.attributes.iter().filter_map(|a| match a {
            LinkAttribute::Xdp(xdp) => Some(xdp),
            _ => None,
        });
        for attr in xdp.flatten() {
            match attr {
                LinkXdp::Attached(XdpAttached::Driver) => state.mode = Some(AttachedMode::Native),
                LinkXdp::Attached(XdpAttached::SocketBuffer) => {
                    state.mode = Some(AttachedMode::Skb)
                }
                LinkXdp::Attached(XdpAttached::Hardware) => state.mode = Some(AttachedMode::Hw),
                LinkXdp::ProgId(id) if *id != 0 => state.prog_id = Some(*id),
                _ => {}
            }
        }
        state
    }
}

/// Asks the kernel which XDP program `ifindex` runs, in the calling thread's network namespace.
///
/// aya attaches and replaces programs but cannot say what is already attached; we need that to
/// report the mode in use and to refuse, naming it, to touch a program we did not attach.
pub fn query_xdp(ifindex: u32) -> io::Result<XdpState> {
    query_link(ifindex).map(|(xdp, _)| xdp)
}

/// [`query_xdp`] and the link's type, in one request.
pub fn query_link(ifindex: u32) -> io::Result<(XdpState, LinkType)> {
    let mut link = LinkMessage::default();
    link.header.index = ifindex;
    let replies = request(RouteNetlinkMessage::GetLink(link), NLM_F_REQUEST)?;
    replies
        .iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => Some((XdpState::of(link), link_type_of(link))),
            _ => None,
        })
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "no RTM_NEWLINK in the kernel's reply",
            )
        })
}

/// `XDP_FLAGS_UPDATE_IF_NOEXIST | XDP_FLAGS_DRV_MODE`: native mode, only on an empty hook.
const PROBE_FLAGS: u32 = 1 | 4;
/// `NLM_F_CAPPED`: the error echoes only the request's header, not its payload.
const NLM_F_CAPPED: u16 = 0x100;
/// `NLMSGERR_ATTR_MSG`: the extended ack's text.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Asks the kernel why it refuses native XDP for `prog_fd` on `ifindex`: one `RTM_SETLINK` with
/// `IFLA_XDP` in driver mode on an empty hook, read for the extended ack's message (the bpf_link
/// attach that failed leaves the kernel's text in a trace point only). `None` when the kernel
/// gives no text; if the probe is accepted after all, it is removed again at once.
pub fn native_refusal(ifindex: u32, prog_fd: BorrowedFd<'_>) -> io::Result<Option<String>> {
    match set_xdp(ifindex, prog_fd.as_raw_fd())? {
        Some(text) => Ok(Some(text)),
        None => {
            // Accepted (or refused in silence): take nothing the probe may have left.
            set_xdp(ifindex, -1).ok();
            Ok(None)
        }
    }
}

/// One `RTM_SETLINK` setting `IFLA_XDP_FD` to `fd` in native mode; the extended ack's text if
/// the kernel refused with one.
fn set_xdp(ifindex: u32, fd: i32) -> io::Result<Option<String>> {
    let mut link = LinkMessage::default();
    link.header.index = ifindex;
    link.attributes.push(LinkAttribute::Xdp(vec![
        LinkXdp::Fd(fd),
        LinkXdp::Flags(PROBE_FLAGS),
    ]));
    let socket = Socket::new(NETLINK_ROUTE)?;
    socket.set_ext_ack(true)?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::SetLink(link)),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let (datagram, _) = socket.recv_from_full()?;
    for packet in packets(&datagram) {
        let packet = packet?;
        if let NetlinkPayload::Error(e) = &packet.payload
            && e.code.is_some()
        {
            return Ok(ext_ack_message(&e.header, packet.header.flags));
        }
    }
    Ok(None)
}

/// `NLMSGERR_ATTR_MSG` from the part of an `NLMSG_ERROR` after its code: the echoed request
/// (its header only when `NLM_F_CAPPED`), then the extended ack's attributes.
fn ext_ack_message(echo: &[u8], flags: u16) -> Option<String> {
    let request_len = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        u32::from_ne_bytes(echo.get(..4)?.try_into().ok()?) as usize
    };
    let mut rest = echo.get(request_len.next_multiple_of(4)..)?;
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        let value = rest.get(4..len)?;
        if kind == NLMSGERR_ATTR_MSG {
            let text = value.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    None
}

/// A network interface: its index and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// The kernel's interface index.
    pub index: u32,
    /// Its name (`IFLA_IFNAME`).
    pub name: String,
}

impl Link {
    fn of(link: &LinkMessage) -> Option<Self> {
        link.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(name) => Some(Self {
                index: link.header.index,
                name: name.clone(),
            }),
            _ => None,
        })
    }
}

/// Every interface in the calling thread's network namespace.
pub fn links() -> io::Result<Vec<Link>> {
    let replies = request(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        NLM_F_REQUEST | NLM_F_DUMP,
    )?;
    Ok(replies
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => Link::of(link),
            _ => None,
        })
        .collect())
}

/// An interface as a dump shows it: what the daemon needs to decide whether to protect it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    /// The kernel's interface index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// It is a loopback (`IFF_LOOPBACK`).
    pub loopback: bool,
    /// The XDP program on it, if any.
    pub xdp: XdpState,
    /// Its type (`ARPHRD_*`): which parse its frames need.
    pub link_type: LinkType,
}

impl LinkState {
    fn of(link: &LinkMessage) -> Option<Self> {
        let Link { index, name } = Link::of(link)?;
        Some(Self {
            index,
            name,
            loopback: link.header.flags.contains(LinkFlags::Loopback),
            xdp: XdpState::of(link),
            link_type: link_type_of(link),
        })
    }
}

fn link_type_of(link: &LinkMessage) -> LinkType {
    LinkType(u16::from(link.header.link_layer_type))
}

/// Every interface in the calling thread's network namespace, with its XDP state, in one dump.
pub fn link_states() -> io::Result<Vec<LinkState>> {
    let replies = request(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        NLM_F_REQUEST | NLM_F_DUMP,
    )?;
    Ok(replies
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => LinkState::of(link),
            _ => None,
        })
        .collect())
}

/// Every address configured on the host (`IFA_LOCAL`, else `IFA_ADDRESS`), loopback included.
pub fn addresses() -> io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut ask = AddressMessage::default();
        ask.header.family = family;
        for reply in request(
            RouteNetlinkMessage::GetAddress(ask),
            NLM_F_REQUEST | NLM_F_DUMP,
        )? {
            if let RouteNetlinkMessage::NewAddress(addr) = reply
                && let Some(ip) = address_of(&addr)
            {
                out.push(ip);
            }
        }
    }
    Ok(out)
}

fn address_of(addr: &AddressMessage) -> Option<IpAddr> {
    let mut found = None;
    for attr in &addr.attributes {
        match attr {
            AddressAttribute::Local(ip) => return Some(*ip),
            AddressAttribute::Address(ip) => found = found.or(Some(*ip)),
            _ => {}
        }
    }
    found
}

/// The gateways of the default routes in the main table, multipath next hops included.
pub fn default_gateways() -> io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut ask = RouteMessage::default();
        ask.header.address_family = family;
        for reply in request(
            RouteNetlinkMessage::GetRoute(ask),
            NLM_F_REQUEST | NLM_F_DUMP,
        )? {
            if let RouteNetlinkMessage::NewRoute(route) = reply
                && is_default(&route.header)
                && route.header.table == RouteHeader::RT_TABLE_MAIN
            {
                out.extend(gateways(&route.attributes));
            }
        }
    }
    Ok(out)
}

/// A default route: no destination prefix.
pub fn is_default(route: &RouteHeader) -> bool {
    route.destination_prefix_length == 0
}

fn gateways(attrs: &[RouteAttribute]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for attr in attrs {
        match attr {
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => out.push(IpAddr::V4(*ip)),
            RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => out.push(IpAddr::V6(*ip)),
            RouteAttribute::MultiPath(hops) => {
                for hop in hops {
                    out.extend(gateways(&hop.attributes));
                }
            }
            _ => {}
        }
    }
    out
}

/// Sends one request and collects the replies (all of a dump's parts), in the calling thread's
/// network namespace. An error reply becomes the `io::Error` of its errno.
fn request(message: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let socket = Socket::new(NETLINK_ROUTE)?;
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = 1;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    let mut out = Vec::new();
    loop {
        let (datagram, _) = socket.recv_from_full()?;
        for packet in packets(&datagram) {
            match packet?.payload {
                NetlinkPayload::InnerMessage(m) => out.push(m),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                NetlinkPayload::Done(_) => return Ok(out),
                _ => {}
            }
        }
        if !dump {
            return Ok(out);
        }
    }
}

/// The netlink messages of one datagram, each parsed or its parse error.
fn packets(
    datagram: &[u8],
) -> impl Iterator<Item = io::Result<NetlinkMessage<RouteNetlinkMessage>>> + '_ {
    let mut rest = datagram;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let parsed = NetlinkBuffer::new_checked(rest).map(|b| b.length() as usize);
        let Ok(len) = parsed else {
            rest = &[];
            return Some(Err(malformed("a truncated netlink header")));
        };
        let this = &rest[..len];
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some(NetlinkMessage::deserialize(this).map_err(|e| malformed(&e.to_string())))
    })
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed rtnetlink message: {what}"),
    )
}

/// What one read of a notification socket brought.
#[derive(Debug, Default)]
pub struct Batch {
    /// The notifications, parsed.
    pub messages: Vec<RouteNetlinkMessage>,
    /// The kernel dropped notifications (`ENOBUFS`), or one could not be parsed: something
    /// changed that the messages do not show.
    pub lost: bool,
}

/// A socket subscribed to rtnetlink multicast groups, in the network namespace of the thread
/// that created it.
pub struct Notifications {
    socket: Socket,
}

impl Notifications {
    /// Subscribes to `groups`.
    pub fn subscribe(groups: Groups) -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, groups.0))?;
        Ok(Self { socket })
    }

    /// Waits for the next notifications.
    pub fn recv(&self) -> io::Result<Batch> {
        match self.socket.recv_from_full() {
            Ok((datagram, _)) => Ok(parse_batch(&datagram)),
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32) => Ok(Batch {
                messages: Vec::new(),
                lost: true,
            }),
            Err(e) => Err(e),
        }
    }

    /// Reads and drops whatever is queued now, without waiting.
    pub fn discard_queued(&self) {
        let mut scratch = Vec::with_capacity(64 * 1024);
        let dont_wait = nix::sys::socket::MsgFlags::MSG_DONTWAIT.bits();
        while self
            .socket
            .recv(&mut scratch, dont_wait)
            .is_ok_and(|n| n > 0)
        {
            scratch.clear();
        }
    }
}

fn parse_batch(datagram: &[u8]) -> Batch {
    let mut batch = Batch::default();
    for packet in packets(datagram) {
        match packet {
            Ok(NetlinkMessage {
                payload: NetlinkPayload::InnerMessage(m),
                ..
            }) => batch.messages.push(m),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "an rtnetlink notification could not be parsed");
                batch.lost = true;
            }
        }
    }
    batch
}

/// A change to the set of interfaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A new interface (created, or moved into this namespace).
    Appeared(Link),
    /// An interface kept its index but changed its name.
    Renamed {
        /// Its index.
        index: u32,
        /// The old name.
        from: String,
        /// The new name.
        to: String,
    },
    /// An interface is gone (deleted, or moved out of this namespace).
    Gone(Link),
}

/// Follows the interfaces of a network namespace: `RTM_NEWLINK` / `RTM_DELLINK` notifications
/// turned into appeared, renamed and gone events, with a fresh dump whenever notifications were
/// lost, so the view never drifts from the kernel's.
pub struct LinkWatch {
    notifications: Notifications,
    known: BTreeMap<u32, String>,
}

impl LinkWatch {
    /// Subscribes, then reads the current interfaces (in that order, so nothing created in
    /// between is missed), in the calling thread's network namespace.
    pub fn new() -> io::Result<Self> {
        let notifications = Notifications::subscribe(Groups::LINKS)?;
        let known = links()?.into_iter().map(|l| (l.index, l.name)).collect();
        Ok(Self {
            notifications,
            known,
        })
    }

    /// The interfaces as of the last event returned.
    pub fn links(&self) -> impl Iterator<Item = Link> + '_ {
        self.known.iter().map(|(index, name)| Link {
            index: *index,
            name: name.clone(),
        })
    }

    /// Waits for the next changes (at least one event).
    pub fn next_events(&mut self) -> io::Result<Vec<LinkEvent>> {
        loop {
            let batch = self.notifications.recv()?;
            let mut events = Vec::new();
            for m in &batch.messages {
                events.extend(self.apply(m));
            }
            if batch.lost {
                let now = links()?.into_iter().map(|l| (l.index, l.name)).collect();
                events.extend(resync(&mut self.known, now));
            }
            if !events.is_empty() {
                return Ok(events);
            }
        }
    }

    fn apply(&mut self, message: &RouteNetlinkMessage) -> Option<LinkEvent> {
        match message {
            RouteNetlinkMessage::NewLink(m) => {
                let link = Link::of(m)?;
                match self.known.insert(link.index, link.name.clone()) {
                    None => Some(LinkEvent::Appeared(link)),
                    Some(old) if old != link.name => Some(LinkEvent::Renamed {
                        index: link.index,
                        from: old,
                        to: link.name,
                    }),
                    Some(_) => None,
                }
            }
            RouteNetlinkMessage::DelLink(m) => {
                let index = m.header.index;
                let name = self.known.remove(&index)?;
                Some(LinkEvent::Gone(Link { index, name }))
            }
            _ => None,
        }
    }
}

/// Replaces `known` with `now` and says what changed.
fn resync(known: &mut BTreeMap<u32, String>, now: BTreeMap<u32, String>) -> Vec<LinkEvent> {
    let mut events = Vec::new();
    for (index, name) in known.iter() {
        match now.get(index) {
            None => events.push(LinkEvent::Gone(Link {
                index: *index,
                name: name.clone(),
            })),
            Some(new) if new != name => events.push(LinkEvent::Renamed {
                index: *index,
                from: name.clone(),
                to: new.clone(),
            }),
            Some(_) => {}
        }
    }
    for (index, name) in now.iter().filter(|(i, _)| !known.contains_key(i)) {
        events.push(LinkEvent::Appeared(Link {
            index: *index,
            name: name.clone(),
        }));
    }
    *known = now;
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link_message(index: u32, name: &str) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::IfName(name.to_owned()));
        m
    }

    fn watch_of(known: &[(u32, &str)]) -> LinkWatch {
        LinkWatch {
            notifications: Notifications::subscribe(Groups::LINKS).unwrap(),
            known: known.iter().map(|(i, n)| (*i, (*n).to_owned())).collect(),
        }
    }

    #[test]
    fn loopback_has_no_xdp_program() {
        // Loopback is ifindex 1 in every network namespace.
        let state = query_xdp(1).expect("RTM_GETLINK on lo");
        assert_eq!(
            state,
            XdpState {
                prog_id: None,
                mode: None
            }
        );
    }

    #[test]
    fn an_interface_that_does_not_exist_is_an_error_with_its_errno() {
        let err = query_xdp(0x7fff_fff0).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(nix::errno::Errno::ENODEV as i32),
            "{err}"
        );
    }

    #[test]
    fn the_dump_of_link_states_flags_the_loopback() {
        let states = link_states().unwrap();
        let lo = states
            .iter()
            .find(|l| l.name == "lo")
            .expect("lo is dumped");
        assert!(lo.loopback);
        assert_eq!(
            lo.xdp,
            XdpState {
                prog_id: None,
                mode: None
            }
        );
        assert!(
            states
                .iter()
                .filter(|l| l.name != "lo")
                .all(|l| !l.loopback)
        );
    }

    #[test]
    fn loopback_is_among_the_links_and_its_address_among_the_addresses() {
        assert!(
            links()
                .unwrap()
                .iter()
                .any(|l| l.index == 1 && l.name == "lo")
        );
        assert!(addresses().unwrap().contains(&IpAddr::from([127, 0, 0, 1])));
    }

    #[test]
    fn new_link_messages_become_appeared_renamed_or_nothing() {
        let mut w = watch_of(&[(1, "lo")]);
        let new = |i, n| RouteNetlinkMessage::NewLink(link_message(i, n));
        assert_eq!(
            w.apply(&new(1, "lo")),
            None,
            "a flag change is not an event"
        );
        assert_eq!(
            w.apply(&new(7, "eth0")),
            Some(LinkEvent::Appeared(Link {
                index: 7,
                name: "eth0".into()
            }))
        );
        assert_eq!(
            w.apply(&new(7, "wan")),
            Some(LinkEvent::Renamed {
                index: 7,
                from: "eth0".into(),
                to: "wan".into()
            })
        );
        assert_eq!(
            w.apply(&RouteNetlinkMessage::DelLink(link_message(7, "wan"))),
            Some(LinkEvent::Gone(Link {
                index: 7,
                name: "wan".into()
            }))
        );
        assert_eq!(
            w.apply(&RouteNetlinkMessage::DelLink(link_message(7, "wan"))),
            None
        );
        assert_eq!(w.links().map(|l| l.name).collect::<Vec<_>>(), ["lo"]);
    }

    #[test]
    fn a_resync_after_lost_notifications_reports_every_difference() {
        let mut known: BTreeMap<u32, String> =
            [(1, "lo".into()), (2, "a".into()), (3, "b".into())].into();
        let now: BTreeMap<u32, String> =
            [(1, "lo".into()), (3, "c".into()), (4, "a".into())].into();
        let events = resync(&mut known, now.clone());
        assert_eq!(
            events,
            [
                LinkEvent::Gone(Link {
                    index: 2,
                    name: "a".into()
                }),
                LinkEvent::Renamed {
                    index: 3,
                    from: "b".into(),
                    to: "c".into()
                },
                LinkEvent::Appeared(Link {
                    index: 4,
                    name: "a".into()
                }),
            ]
        );
        assert_eq!(known, now);
    }

    /// An `NLMSG_ERROR` payload after its code: the echoed request (capped to its header or
    /// whole), then `NLMSGERR_ATTR_MSG`.
    fn error_echo(capped: bool, text: &str) -> Vec<u8> {
        let mut echo = 40u32.to_ne_bytes().to_vec();
        echo.resize(if capped { 16 } else { 40 }, 0);
        let value = [text.as_bytes(), &[0]].concat();
        echo.extend(((4 + value.len()) as u16).to_ne_bytes());
        echo.extend(NLMSGERR_ATTR_MSG.to_ne_bytes());
        echo.extend(&value);
        echo.resize(echo.len().next_multiple_of(4), 0);
        echo
    }

    #[test]
    fn the_extended_acks_text_is_read_after_the_echoed_request_capped_or_not() {
        let text = "Underlying driver does not support XDP in native mode";
        assert_eq!(
            ext_ack_message(&error_echo(false, text), 0).as_deref(),
            Some(text)
        );
        assert_eq!(
            ext_ack_message(&error_echo(true, text), NLM_F_CAPPED).as_deref(),
            Some(text)
        );
        // No attributes, or one cut short: no text, and nothing read past the end.
        assert_eq!(ext_ack_message(&error_echo(false, text)[..40], 0), None);
        assert_eq!(ext_ack_message(&error_echo(false, text)[..46], 0), None);
    }

    #[test]
    fn a_truncated_datagram_is_reported_as_lost_not_read_past_its_end() {
        let mut header = NetlinkHeader::default();
        header.sequence_number = 1;
        let mut packet = NetlinkMessage::new(
            header,
            NetlinkPayload::from(RouteNetlinkMessage::NewLink(link_message(5, "veth0"))),
        );
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        let whole = parse_batch(&buf);
        assert!(!whole.lost);
        assert_eq!(whole.messages.len(), 1);
        for cut in [3, 16, 20, buf.len() - 1] {
            let batch = parse_batch(&buf[..cut]);
            assert!(batch.lost, "cut at {cut}");
            assert!(batch.messages.is_empty(), "cut at {cut}");
        }
    }
}
