//! A tun device (`IFF_TUN | IFF_NO_PI`) owned by the test process: every packet written into
//! its descriptor is received by the kernel on the link, as from a WireGuard or OpenVPN peer.
//! The frames carry no link-layer header: they start with the IP header.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    os::fd::AsRawFd as _,
};

use anyhow::{Context as _, Result, ensure};

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 205, int)`: sets the device's link type (`dev->type`, an `ARPHRD_*`) while down.
const TUNSETLINK: libc::c_ulong = 0x4004_54cd;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it: the name and the flags (the rest of the union unused).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A tun device that lives as long as this value (closing the descriptor removes it).
pub struct Tun {
    file: File,
    name: String,
}

impl Tun {
    /// Creates the tun device `name` in the calling thread's network namespace (call it inside
    /// [`crate::Netns::run`]). The link is down; bring it up with `ip link set NAME up`.
    pub fn create(name: &str) -> Result<Self> {
        ensure!(name.len() < libc::IFNAMSIZ, "tun name {name} too long");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .context("opening /dev/net/tun")?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is laid out as and
        // outlives the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &raw mut req) };
        ensure!(
            rc == 0,
            "TUNSETIFF {name}: {}",
            std::io::Error::last_os_error()
        );
        Ok(Self {
            file,
            name: name.to_owned(),
        })
    }

    /// Changes the link type the kernel reports for the device (`ARPHRD_*`); it must be down.
    pub fn set_link_type(&self, arphrd: u16) -> Result<()> {
        // SAFETY: TUNSETLINK takes its argument by value.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETLINK,
                libc::c_ulong::from(arphrd),
            )
        };
        ensure!(
            rc == 0,
            "TUNSETLINK {} {arphrd}: {}",
            self.name,
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// Hands one IP packet to the kernel, received on the device.
    pub fn send(&self, packet: &[u8]) -> Result<()> {
        let n = (&self.file)
            .write(packet)
            .with_context(|| format!("writing a packet into {}", self.name))?;
        ensure!(n == packet.len(), "short write into {}", self.name);
        Ok(())
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}
