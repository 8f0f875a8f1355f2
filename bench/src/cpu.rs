//! CPU time and memory of processes, from `/proc`: the service's, the stack's servers' (with
//! their children, PostgreSQL's backends) and the bench's own.

use std::process::Command;

/// The fields of `/proc/PID/stat` after the command name (which may hold spaces).
fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    // The state (a letter) becomes 0; the numbers stay.
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// A server process with its children, as one sample reads them.
#[derive(Debug, Clone, Copy)]
pub struct Tree {
    /// CPU seconds of the process and its children: its own utime + stime, the cutime + cstime
    /// of the children it has waited for (PostgreSQL's exited backends), and the utime + stime of
    /// its live children (the running backends). NaN when the process cannot be read.
    pub cpu: f64,
    /// Live children titled `postgres: autovacuum worker` (NaN when the children cannot be
    /// listed). Their CPU is PostgreSQL's too, taken from the same two cores as the service's
    /// transactions, so a phase that overlaps them pays for work the tables' past left behind.
    pub autovacuum_workers: f64,
}

impl Tree {
    /// A process that could not be read, or has no pid to read.
    pub const UNKNOWN: Tree = Tree {
        cpu: f64::NAN,
        autovacuum_workers: f64::NAN,
    };
}

/// The process `pid` and its children. The children come from the kernel's list of them
/// (`/proc/PID/task/PID/children`), read once, not from a scan of `/proc`, which ten times a
/// second would cost the bench more CPU than it should.
pub fn tree(pid: u32) -> Tree {
    // After the name: utime 11, stime 12, cutime 13, cstime 14.
    let Some(own) = stat_fields(&pid.to_string()) else {
        return Tree::UNKNOWN;
    };
    let mut ticks: u64 = own.get(11..15).map_or(0, |f| f.iter().sum());
    let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) else {
        return Tree {
            cpu: ticks as f64 / clock_ticks() as f64,
            autovacuum_workers: f64::NAN,
        };
    };
    let mut autovacuum_workers = 0;
    for child in children.split_whitespace() {
        if let Some(f) = stat_fields(child) {
            ticks += f.get(11..13).map_or(0, |f| f.iter().sum::<u64>());
        }
        if std::fs::read(format!("/proc/{child}/cmdline"))
            .is_ok_and(|title| title.starts_with(b"postgres: autovacuum worker"))
        {
            autovacuum_workers += 1;
        }
    }
    Tree {
        cpu: ticks as f64 / clock_ticks() as f64,
        autovacuum_workers: f64::from(autovacuum_workers),
    }
}

/// CPU seconds of this process (all its threads: the generator, the reader, the sampler).
pub fn own_cpu() -> f64 {
    stat_fields("self").map_or(f64::NAN, |f| {
        f.get(11..13).map_or(0, |f| f.iter().sum::<u64>()) as f64 / clock_ticks() as f64
    })
}

/// CPU seconds (user + system, from `/proc/PID/stat`) and resident bytes (`VmRSS` of
/// `/proc/PID/status`) of a process.
pub fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks as f64 / clock_ticks() as f64, rss_kib * 1024))
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux this runs on (`getconf CLK_TCK` would say).
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100)
    })
}
