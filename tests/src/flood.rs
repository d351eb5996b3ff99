//! A flood for the lab (issue 23): a packet socket on the sender's end of the veth pair that
//! sends pre-built Ethernet frames with `sendmmsg`, in its own thread, at a set rate or as fast
//! as it can, until stopped (or dropped). Frames carry the real MAC addresses of the pair, so
//! the receiver's stack takes them as it would a real attacker's.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    Lab, RECEIVER_IF, RECEIVER_V4, RECEIVER_V6, SENDER_IF, frame,
    packet::{Sender, is_transient, mac},
};

/// Frames per `sendmmsg`.
const BATCH: usize = 32;

/// Builds frames for the lab's link: from the sender's MAC to the receiver's.
pub struct Frames {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
}

impl Frames {
    /// The lab's MAC addresses.
    pub fn new(lab: &Lab) -> Result<Self> {
        Ok(Self {
            src_mac: mac(&lab.sender, SENDER_IF)?,
            dst_mac: mac(&lab.receiver, RECEIVER_IF)?,
        })
    }

    /// A UDP datagram from `src` to the receiver's address of its family (port 9, discard).
    pub fn udp(&self, src: IpAddr) -> Vec<u8> {
        self.on_link(match src {
            IpAddr::V4(s) => frame::ipv4_udp(&[], s, RECEIVER_V4.parse().expect("valid"), 0, false),
            IpAddr::V6(s) => frame::ipv6_udp(&[], s, RECEIVER_V6.parse().expect("valid")),
        })
    }

    /// `frame` (one of [`frame`]'s) addressed from the sender's MAC to the receiver's.
    pub fn on_link(&self, mut frame: Vec<u8>) -> Vec<u8> {
        frame[..6].copy_from_slice(&self.dst_mac);
        frame[6..12].copy_from_slice(&self.src_mac);
        frame
    }
}

/// Sends every frame once, as fast as the link takes them; returns how many went.
pub fn burst(lab: &Lab, frames: &[Vec<u8>]) -> Result<u64> {
    let sender = Sender::open(&lab.sender, SENDER_IF)?;
    let mut sent = 0;
    while sent < frames.len() {
        let batch: Vec<&[u8]> = frames[sent..]
            .iter()
            .take(BATCH)
            .map(Vec::as_slice)
            .collect();
        match sender.send(&batch) {
            Ok(n) => sent += n,
            Err(e) if is_transient(&e) => std::thread::yield_now(),
            Err(e) => return Err(e).context("sendmmsg"),
        }
    }
    Ok(sent as u64)
}

/// A flood running in its own thread until [`Flood::stop`] or drop.
pub struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    started: Instant,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Flood {
    /// Sends `frame` from the lab's sender at `rate` frames per second (in batches, paced
    /// against the clock), until stopped.
    pub fn start(lab: &Lab, frame: Vec<u8>, rate: u64) -> Result<Self> {
        Self::start_mixed(lab, vec![frame], rate)
    }

    /// [`Flood::start`] with several frames taking turns (one after the other in every
    /// batch), so their sources send at the same rate, `rate / frames.len()` each, in step.
    pub fn start_mixed(lab: &Lab, frames: Vec<Vec<u8>>, rate: u64) -> Result<Self> {
        anyhow::ensure!(!frames.is_empty(), "a flood needs a frame to send");
        let sender = Sender::open(&lab.sender, SENDER_IF)?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let thread = {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || -> Result<()> {
                let batch: Vec<&[u8]> = frames
                    .iter()
                    .cycle()
                    .take(BATCH.div_ceil(frames.len()) * frames.len())
                    .map(Vec::as_slice)
                    .collect();
                while !stop.load(Ordering::Relaxed) {
                    let due = u128::from(rate) * started.elapsed().as_micros() / 1_000_000;
                    if u128::from(sent.load(Ordering::Relaxed)) >= due {
                        std::thread::sleep(Duration::from_micros(200));
                        continue;
                    }
                    match sender.send(&batch) {
                        Ok(n) => {
                            sent.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) if is_transient(&e) => {}
                        Err(e) => return Err(e).context("sendmmsg"),
                    }
                }
                Ok(())
            })
        };
        Ok(Self {
            stop,
            sent,
            started,
            thread: Some(thread),
        })
    }

    /// When the flood started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Frames sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the flood; returns how many frames it sent.
    pub fn stop(mut self) -> Result<u64> {
        self.halt()?;
        Ok(self.sent())
    }

    fn halt(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("the flood's thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        // Nowhere to report in drop: `Flood::stop` returns the error.
        self.halt().ok();
    }
}
