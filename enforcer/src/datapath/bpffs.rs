//! Where the pins live: a BPF filesystem that outlives the daemon.
//!
//! Pinned links and maps keep the data path enforcing after the daemon exits only while the
//! bpffs holding them exists. A daemon in a private mount namespace (`ip netns exec NS enforcer
//! daemon`, which remounts /sys; a container; a unit with a private /sys) sees no bpffs at
//! /sys/fs/bpf, and one it mounted itself dies with its namespace, and with it every block.
//!
//! So before pinning, the daemon compares its mount namespace with the host's: PID 1's, or, when
//! PID 1 cannot be inspected (a supervisor or a security module hides it), the outermost
//! ancestor process it may inspect.
//! - Same namespace: the pins are the host's (a missing /sys/fs/bpf is mounted, as before).
//! - Another namespace that shares the host's bpffs (same superblock): used as it is.
//! - Another namespace whose bpffs is not the host's: the daemon pins into the host's bpffs
//!   through `/proc/<pid>/root`. It opens the host's bpffs directory once and keeps the
//!   descriptor, and every pin path goes through `/proc/self/fd/<fd>/…`, so the reference
//!   process may exit and aya (which only takes paths) needs nothing special. (`setns` into the
//!   host's mount namespace for the pin operations only would need a thread that unshared
//!   `CLONE_FS` for every pin, map open and link update, including those made later when an
//!   interface reappears; a path is simpler and cannot leave a thread in the wrong namespace.)
//! - No host bpffs to reach: the daemon refuses to start. It never mounts a private bpffs that
//!   would die with it.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use enforcer_common::LAYOUT_VERSION;
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

use super::error::DatapathError;
pub use crate::protocol::{PinsDurability, PinsInfo};

/// The pin directory to use and what is known of it.
#[derive(Clone, Debug)]
pub struct ResolvedPins {
    /// The layout to pin into (its base may run through `/proc/self/fd/N`).
    pub layout: PinLayout,
    /// For status.
    pub info: PinsInfo,
}

/// A process whose mount namespace stands for the host's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reference {
    pub pid: u32,
    pub mount_ns: u64,
}

impl Reference {
    fn label(&self) -> String {
        if self.pid == 1 {
            "PID 1".to_owned()
        } else {
            format!("pid {}", self.pid)
        }
    }
}

/// The filesystem of the nearest existing ancestor of a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FsProbe {
    pub bpffs: bool,
    pub dev: u64,
    /// The mount receives propagation from a peer group in another namespace (`master:N`).
    pub propagated: bool,
}

/// What the probes decide (pure, so every combination is unit-tested).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Pin at the configured path. `may_mount`: mount /sys/fs/bpf if nothing is there (only
    /// in the host's own mount namespace, where the mount outlives us).
    Own {
        may_mount: bool,
        durability: PinsDurability,
    },
    /// Pin into the host's bpffs through the reference process's root.
    ThroughReference,
    /// Refuse to start.
    Refuse,
}

pub(crate) fn plan(
    own_ns: Option<u64>,
    reference: Option<&Reference>,
    own: Option<FsProbe>,
    host: Option<FsProbe>,
) -> Plan {
    let (Some(own_ns), Some(reference)) = (own_ns, reference) else {
        return match own {
            Some(fs) if fs.bpffs && fs.propagated => Plan::Own {
                may_mount: false,
                durability: PinsDurability::Propagated,
            },
            Some(fs) if fs.bpffs => Plan::Own {
                may_mount: false,
                durability: PinsDurability::Unverified,
            },
            _ => Plan::Refuse,
        };
    };
    if own_ns == reference.mount_ns {
        return Plan::Own {
            may_mount: true,
            durability: PinsDurability::Host,
        };
    }
    match (own, host) {
        (Some(o), Some(h)) if o.bpffs && h.bpffs && o.dev == h.dev => Plan::Own {
            may_mount: false,
            durability: PinsDurability::Host,
        },
        (_, Some(h)) if h.bpffs => Plan::ThroughReference,
        _ => Plan::Refuse,
    }
}

/// Decides where to pin for the configured `dir` (see the module's documentation).
pub fn resolve(dir: &Path) -> Result<ResolvedPins, DatapathError> {
    let dir = std::path::absolute(dir).map_err(|source| DatapathError::Io {
        action: "resolving",
        path: dir.to_owned(),
        source,
    })?;
    let own_ns = mount_ns("self");
    let reference = reference_process(own_ns);
    let host_root = reference
        .as_ref()
        .map(|r| PathBuf::from(format!("/proc/{}/root", r.pid)));
    let host_dir = host_root
        .as_ref()
        .map(|root| root.join(dir.strip_prefix("/").unwrap_or(&dir)));
    let own_probe = probe(&dir, Path::new("/"));
    let host_probe = host_dir
        .as_ref()
        .zip(host_root.as_ref())
        .and_then(|(d, r)| probe(d, r));
    let info = |durability| PinsInfo {
        dir: dir.display().to_string(),
        durability,
        outlive_daemon: durability != PinsDurability::Unverified,
        reference: reference.as_ref().map(Reference::label),
    };
    match plan(own_ns, reference.as_ref(), own_probe, host_probe) {
        Plan::Own {
            may_mount,
            durability,
        } => {
            ensure_bpffs(&dir, may_mount)?;
            Ok(ResolvedPins {
                layout: PinLayout::new(&dir),
                info: info(durability),
            })
        }
        Plan::ThroughReference => {
            let host_dir = host_dir.expect("a reference process was found");
            let layout = through_descriptor(&host_dir, host_root.as_deref().expect("a reference"))?;
            tracing::info!(dir = %dir.display(), reference = %info(PinsDurability::HostThroughReference).reference.unwrap_or_default(),
                "the daemon runs in a private mount namespace: pinning into the host's bpffs");
            Ok(ResolvedPins {
                layout,
                info: info(PinsDurability::HostThroughReference),
            })
        }
        Plan::Refuse => Err(match (own_ns, reference) {
            (Some(own), Some(r)) if own != r.mount_ns => DatapathError::PrivateMountNamespace {
                path: dir,
                own,
                reference: r.label(),
                theirs: r.mount_ns,
            },
            (Some(_), Some(_)) => DatapathError::NotBpffs { path: dir },
            _ => DatapathError::UnverifiedBpffs { path: dir },
        }),
    }
}

/// Opens the nearest existing strict ancestor of `host_dir` (below `root`) and returns a layout
/// whose base runs through `/proc/self/fd/N/…`, the descriptor kept as long as the layout. (The
/// base always has a last component of its own: `/proc/self/fd/N` itself is a link, which
/// `detach` could not remove as a directory.)
fn through_descriptor(host_dir: &Path, root: &Path) -> Result<PinLayout, DatapathError> {
    let parent = host_dir.parent().unwrap_or(root);
    let anchor = nearest_existing(parent, root);
    let rest = host_dir
        .strip_prefix(&anchor)
        .unwrap_or(Path::new(""))
        .to_owned();
    let file = File::open(&anchor).map_err(|source| DatapathError::Io {
        action: "opening the host's bpffs at",
        path: anchor.clone(),
        source,
    })?;
    let base = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())).join(rest);
    Ok(PinLayout::with_anchor(base, Arc::new(file)))
}

/// The inode of `/proc/<pid>/ns/mnt`, if this process may inspect it.
fn mount_ns(pid: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|m| m.ino())
}

/// PID 1, or the outermost ancestor whose mount namespace this process may inspect.
fn reference_process(own_ns: Option<u64>) -> Option<Reference> {
    if let Some(ns) = mount_ns("1") {
        return Some(Reference {
            pid: 1,
            mount_ns: ns,
        });
    }
    let mut outermost = None;
    let mut pid = std::os::unix::process::parent_id();
    for _ in 0..64 {
        if pid <= 1 {
            break;
        }
        if let Some(ns) = mount_ns(&pid.to_string()) {
            outermost = Some(Reference { pid, mount_ns: ns });
        }
        match parent_of(pid) {
            Some(p) => pid = p,
            None => break,
        }
    }
    tracing::debug!(
        ?outermost,
        ?own_ns,
        "PID 1's mount namespace cannot be inspected; using the outermost ancestor"
    );
    outermost
}

fn parent_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The nearest existing ancestor of `dir`, not above `root`.
fn nearest_existing(dir: &Path, root: &Path) -> PathBuf {
    let mut probe = dir.to_path_buf();
    while !probe.exists() && probe != root && probe.pop() {}
    probe
}

/// The filesystem `dir` is (or will be) on.
fn probe(dir: &Path, root: &Path) -> Option<FsProbe> {
    let anchor = nearest_existing(dir, root);
    let dev = std::fs::metadata(&anchor).ok()?.dev();
    let propagated = std::fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|m| receives_propagation(&m, dev));
    Some(FsProbe {
        bpffs: is_bpffs(&anchor),
        dev,
        propagated,
    })
}

/// Whether a mount of the filesystem `dev` in this namespace is a slave of a peer group
/// (`master:N` among mountinfo's optional fields).
fn receives_propagation(mountinfo: &str, dev: u64) -> bool {
    let want = format!(
        "{}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    mountinfo.lines().any(|line| {
        let mut fields = line.split(' ');
        fields.nth(2) == Some(want.as_str())
            && fields
                .skip(3)
                .take_while(|f| *f != "-")
                .any(|f| f.starts_with("master:"))
    })
}

/// Makes sure `dir` can live on a bpffs, mounting /sys/fs/bpf when nothing is mounted there and
/// `may_mount` (the host's own mount namespace, where the mount outlives us).
fn ensure_bpffs(dir: &Path, may_mount: bool) -> Result<(), DatapathError> {
    if is_bpffs(&nearest_existing(dir, Path::new("/"))) {
        return Ok(());
    }
    let default_mount = Path::new("/sys/fs/bpf");
    if may_mount && dir.starts_with(default_mount) && !is_bpffs(default_mount) {
        tracing::warn!("no BPF filesystem at /sys/fs/bpf; mounting one");
        let status = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status()
            .map_err(|source| DatapathError::Io {
                action: "running mount for",
                path: default_mount.to_owned(),
                source,
            })?;
        if status.success() && is_bpffs(default_mount) {
            return Ok(());
        }
    }
    Err(DatapathError::NotBpffs {
        path: dir.to_owned(),
    })
}

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|st| st.filesystem_type() == BPF_FS_MAGIC)
}

/// The paths under a bpffs directory.
#[derive(Clone, Debug)]
pub struct PinLayout {
    base: PathBuf,
    /// The directory `base` runs through (`/proc/self/fd/N/...`), held open as long as the
    /// layout (see [`super::bpffs`]).
    _anchor: Option<Arc<File>>,
}

impl PinLayout {
    /// The layout under `base`.
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Self {
            base: base.into(),
            _anchor: None,
        }
    }

    /// The layout under `base`, a path through the open directory `anchor`.
    pub(crate) fn with_anchor(base: PathBuf, anchor: Arc<File>) -> Self {
        Self {
            base,
            _anchor: Some(anchor),
        }
    }

    /// The base directory.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Where this build's maps are pinned (versioned by the map layout).
    pub fn maps_dir(&self) -> PathBuf {
        self.base.join(format!("maps-v{LAYOUT_VERSION}"))
    }

    /// Where the XDP links are pinned.
    pub fn links_dir(&self) -> PathBuf {
        self.base.join("links")
    }

    /// The pinned link of one interface.
    pub fn link_path(&self, iface: &str) -> PathBuf {
        self.links_dir().join(encode_pin_name(iface))
    }
}

/// bpffs refuses names containing dots, which VLAN interfaces have (`eth0.100`).
pub(super) fn encode_pin_name(iface: &str) -> String {
    iface.replace('%', "%25").replace('.', "%2e")
}

pub(super) fn decode_pin_name(name: &str) -> String {
    name.replace("%2e", ".").replace("%25", "%")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BPF: Option<FsProbe> = Some(FsProbe {
        bpffs: true,
        dev: 40,
        propagated: false,
    });
    const OTHER_BPF: Option<FsProbe> = Some(FsProbe {
        bpffs: true,
        dev: 99,
        propagated: false,
    });
    const SLAVE_BPF: Option<FsProbe> = Some(FsProbe {
        bpffs: true,
        dev: 40,
        propagated: true,
    });
    const SYSFS: Option<FsProbe> = Some(FsProbe {
        bpffs: false,
        dev: 20,
        propagated: false,
    });

    fn pid1(ns: u64) -> Reference {
        Reference {
            pid: 1,
            mount_ns: ns,
        }
    }

    #[test]
    fn the_hosts_own_namespace_pins_in_place_and_may_mount() {
        assert_eq!(
            plan(Some(7), Some(&pid1(7)), SYSFS, SYSFS),
            Plan::Own {
                may_mount: true,
                durability: PinsDurability::Host
            }
        );
    }

    #[test]
    fn ip_netns_exec_pins_through_the_hosts_root() {
        // Private /sys (sysfs, no bpffs), or a private bpffs mounted in it: both die with us.
        assert_eq!(
            plan(Some(8), Some(&pid1(7)), SYSFS, BPF),
            Plan::ThroughReference
        );
        assert_eq!(
            plan(Some(8), Some(&pid1(7)), OTHER_BPF, BPF),
            Plan::ThroughReference
        );
    }

    #[test]
    fn a_private_namespace_sharing_the_hosts_bpffs_pins_in_place_without_mounting() {
        assert_eq!(
            plan(Some(8), Some(&pid1(7)), BPF, BPF),
            Plan::Own {
                may_mount: false,
                durability: PinsDurability::Host
            }
        );
    }

    #[test]
    fn a_private_namespace_without_a_host_bpffs_is_refused_never_mounted() {
        assert_eq!(plan(Some(8), Some(&pid1(7)), SYSFS, SYSFS), Plan::Refuse);
        assert_eq!(plan(Some(8), Some(&pid1(7)), BPF, SYSFS), Plan::Refuse);
        assert_eq!(plan(Some(8), Some(&pid1(7)), BPF, None), Plan::Refuse);
    }

    #[test]
    fn without_any_reference_an_existing_bpffs_is_used_unverified_and_none_is_mounted() {
        assert_eq!(
            plan(Some(8), None, BPF, None),
            Plan::Own {
                may_mount: false,
                durability: PinsDurability::Unverified
            }
        );
        assert_eq!(plan(None, Some(&pid1(7)), SYSFS, BPF), Plan::Refuse);
    }

    #[test]
    fn without_any_reference_a_bpffs_propagated_from_another_namespace_outlives_the_daemon() {
        // A systemd unit with PrivateMounts=yes and no CAP_SYS_PTRACE.
        assert_eq!(
            plan(Some(8), None, SLAVE_BPF, None),
            Plan::Own {
                may_mount: false,
                durability: PinsDurability::Propagated
            }
        );
    }

    #[test]
    fn mountinfo_says_which_mounts_are_slaves() {
        let dev = nix::sys::stat::makedev(0, 40);
        let slave = "63 51 0:40 / /sys/fs/bpf rw,relatime master:12 - bpf bpf rw\n";
        let shared = "45 23 0:40 / /sys/fs/bpf rw,relatime shared:7 - bpf bpf rw\n";
        let private = "45 23 0:40 / /sys/fs/bpf rw,relatime - bpf bpf rw\n";
        let other = "45 23 0:41 / /sys/fs/bpf rw,relatime master:3 - bpf bpf rw\n";
        assert!(receives_propagation(slave, dev));
        assert!(!receives_propagation(shared, dev));
        assert!(!receives_propagation(private, dev));
        assert!(!receives_propagation(other, dev));
    }

    #[test]
    fn the_refusal_is_one_line_naming_both_ways_out() {
        let e = DatapathError::PrivateMountNamespace {
            path: "/sys/fs/bpf/enforcer".into(),
            own: 8,
            reference: "PID 1".into(),
            theirs: 7,
        };
        let s = e.to_string();
        assert!(!s.contains('\n'));
        assert!(
            s.contains("--netns") && s.contains("mount -t bpf bpf /sys/fs/bpf"),
            "{s}"
        );
    }

    #[test]
    fn status_lines_say_whether_the_pins_outlive_the_daemon() {
        let mut info = PinsInfo {
            dir: "/sys/fs/bpf/enforcer".into(),
            durability: PinsDurability::Host,
            outlive_daemon: true,
            reference: Some("PID 1".into()),
        };
        assert_eq!(
            info.describe(),
            "host bpffs /sys/fs/bpf/enforcer (outlive the daemon)"
        );
        info.durability = PinsDurability::HostThroughReference;
        assert!(
            info.describe()
                .ends_with("through PID 1's root (outlive the daemon)"),
            "{}",
            info.describe()
        );
        info.durability = PinsDurability::Unverified;
        assert!(info.describe().contains("WARNING"));
    }
}
