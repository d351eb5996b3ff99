//! Part of section 1: the data path on several CPUs at once, all on the same block.
//!
//! Under a flood that RSS spreads over every queue, or one heavy source with many flows, every
//! CPU hits the same entry. One thread per CPU, each pinned to its CPU, runs
//! `BPF_PROG_TEST_RUN` on the same program and frame at the same moment (a barrier starts each
//! round); the per-packet cost each CPU sees is compared with one CPU alone. A VM's CPUs slow
//! each other down whatever the program does (shared caches, the host), so the same ratio for a
//! miss (which writes nothing shared) is the baseline: hit ratio ÷ miss ratio is what writing
//! shared state costs.

use std::{
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    sync::{Arc, Barrier},
};

use anyhow::{Context as _, Result, ensure};
use enforcer_common::{BlockValue, MODE_ENFORCE};
use enforcer_tests::{LoadedDatapath, frame};
use serde::Serialize;

use crate::datapath::Packet;

/// One packet kind at one number of CPUs.
#[derive(Debug, Serialize)]
pub(crate) struct MultiCpuCase {
    pub packet: Packet,
    pub cpus: usize,
    /// Median over rounds of the mean, over the CPUs, of each CPU's ns per packet.
    pub per_cpu_ns: f64,
    /// `per_cpu_ns` ÷ the same packet's on one CPU.
    pub vs_one_cpu: f64,
    /// `vs_one_cpu` ÷ a miss's `vs_one_cpu` at the same number of CPUs.
    pub vs_miss: f64,
    /// Per round, the mean over CPUs.
    pub rounds_ns: Vec<f64>,
}

/// Every packet kind at 1..=every CPU.
pub(crate) fn run(rounds: usize, repeat: u32) -> Result<Vec<MultiCpuCase>> {
    let mut loaded = LoadedDatapath::small()?;
    let dp = &mut loaded.dp;
    for t in ["198.51.100.7", "203.0.113.0/24"] {
        dp.maps_mut()
            .insert_block(&t.parse()?, &BlockValue::new(0, MODE_ENFORCE))?;
    }
    let fd = dp.program().fd()?.as_fd().as_raw_fd();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let packets = [
        (Packet::Miss, "192.0.2.1", 2),
        (Packet::HitAddress, "198.51.100.7", 1),
        (Packet::HitPrefix, "203.0.113.77", 1),
    ];
    let mut out: Vec<MultiCpuCase> = Vec::new();
    for k in 1..=cpus {
        for (packet, source, verdict) in packets {
            eprintln!("{k} CPU(s), {packet:?}: measuring");
            let frame = frame::udp_from(&[], source.parse()?);
            let mut rounds_ns = Vec::new();
            for _ in 0..rounds {
                rounds_ns.push(round(fd, &frame, k, repeat, verdict)?);
            }
            let mut sorted = rounds_ns.clone();
            sorted.sort_by(f64::total_cmp);
            let per_cpu_ns = sorted[sorted.len() / 2];
            let one = out
                .iter()
                .find(|c| c.cpus == 1 && c.packet == packet)
                .map_or(per_cpu_ns, |c| c.per_cpu_ns);
            out.push(MultiCpuCase {
                packet,
                cpus: k,
                per_cpu_ns,
                vs_one_cpu: per_cpu_ns / one,
                vs_miss: f64::NAN,
                rounds_ns,
            });
        }
    }
    let miss: Vec<(usize, f64)> = out
        .iter()
        .filter(|c| c.packet == Packet::Miss)
        .map(|c| (c.cpus, c.vs_one_cpu))
        .collect();
    for c in &mut out {
        if let Some((_, m)) = miss.iter().find(|(k, _)| *k == c.cpus) {
            c.vs_miss = c.vs_one_cpu / m;
        }
    }
    drop(loaded);
    Ok(out)
}

/// One round on `k` CPUs at once: the mean over CPUs of each one's ns per packet.
fn round(fd: RawFd, frame: &[u8], k: usize, repeat: u32, verdict: u32) -> Result<f64> {
    let barrier = Arc::new(Barrier::new(k));
    let threads: Vec<_> = (0..k)
        .map(|cpu| {
            let barrier = Arc::clone(&barrier);
            let frame = frame.to_vec();
            std::thread::spawn(move || -> Result<u32> {
                pin_to_cpu(cpu)?;
                barrier.wait();
                let (ns, got) = test_run(fd, &frame, repeat)?;
                ensure!(got == verdict, "verdict {got}, expected {verdict}");
                Ok(ns)
            })
        })
        .collect();
    let mut total = 0.0;
    for t in threads {
        total += f64::from(t.join().expect("the thread does not panic")?);
    }
    Ok(total / k as f64)
}

fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; the pointers are valid.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    ensure!(
        rc == 0,
        "sched_setaffinity to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// `union bpf_attr` for `BPF_PROG_TEST_RUN`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    pad: u32,
}

/// One `BPF_PROG_TEST_RUN` on a program descriptor (shared by the threads): mean ns per run and
/// the verdict. Retried when a signal interrupts it.
fn test_run(fd: RawFd, frame: &[u8], repeat: u32) -> Result<(u32, u32)> {
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    loop {
        let mut attr = TestRunAttr {
            prog_fd: fd as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat,
            ..TestRunAttr::default()
        };
        // SAFETY: bpf(2) with a valid attr whose data pointer outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestRunAttr,
                size_of::<TestRunAttr>(),
            )
        };
        if rc == 0 {
            return Ok((attr.duration, attr.retval));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e).context("BPF_PROG_TEST_RUN");
        }
    }
}
