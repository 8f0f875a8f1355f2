//! The kernel's page cache between phases.
//!
//! Kafka and PostgreSQL write through the page cache, and the kernel writes what they left dirty
//! back about 30 s later (`vm.dirty_expire_centisecs`), in bursts. After a throughput phase that
//! is hundreds of megabytes: in a bench on 2026-11-30 the kernel wrote 480 MB in 0.3 s in the
//! middle of the latency phase that followed, and PostgreSQL's `COMMIT`, which waits for its WAL
//! to reach the disk, took 70–170 ms instead of a few (`log_min_duration_statement`, the
//! service's per-batch debug lines and `/proc/diskstats` side by side). So a latency phase starts
//! once what the phases before it wrote is on disk: it then measures its own load, not the
//! write-back of the last one.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// What was dirty when [`write_back`] began, and how long writing it took.
#[derive(Debug, Clone, Copy)]
pub struct WrittenBack {
    pub dirty_bytes: u64,
    pub took: Duration,
}

/// Writes every dirty page of the machine back to disk (`sync`), and says how much there was.
pub fn write_back() -> Result<WrittenBack> {
    let dirty_bytes = dirty_bytes()?;
    let started = Instant::now();
    let status = Command::new("sync").status().context("running sync")?;
    if !status.success() {
        bail!("sync failed: {status}");
    }
    Ok(WrittenBack {
        dirty_bytes,
        took: started.elapsed(),
    })
}

/// The page cache's dirty bytes (`Dirty:` in `/proc/meminfo`).
fn dirty_bytes() -> Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    parse_dirty(&meminfo).context("no Dirty line in /proc/meminfo")
}

fn parse_dirty(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|line| line.starts_with("Dirty:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_is_read_in_bytes() {
        let meminfo = "MemFree:        1000 kB\nDirty:           49108 kB\nWriteback:  0 kB\n";
        assert_eq!(parse_dirty(meminfo), Some(49108 * 1024));
        assert_eq!(parse_dirty("MemFree: 1 kB\n"), None);
    }
}
