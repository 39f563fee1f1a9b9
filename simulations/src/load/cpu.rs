//! CPU time of the generator and of the server, read from `/proc/<pid>/stat` (utime +
//! stime), as a share of wall time times cores: on a 2-core machine shared by both, the
//! generator's own share says how much of the server's ceiling it took away.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Linux's USER_HZ, the unit of the stat file's times (100 on every mainstream
/// architecture; `getconf CLK_TCK` confirms it).
const CLOCK_TICKS_PER_SEC: u64 = 100;
/// Field index of utime after the `(comm)` field; stime follows it.
const UTIME_FIELD_AFTER_COMM: usize = 11;

/// CPU time used so far by `pid`, or by this process when `None`.
pub fn cpu_time(pid: Option<u32>) -> Option<Duration> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces and parentheses; fields restart after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(UTIME_FIELD_AFTER_COMM);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis(
        (utime + stime) * 1000 / CLOCK_TICKS_PER_SEC,
    ))
}

/// Peak resident memory (`VmHWM`) of `pid`, or of this process when `None`, in KiB.
pub fn peak_rss_kib(pid: Option<u32>) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Resident memory now (`VmRSS`) of `pid`, or of this process when `None`, in KiB.
pub fn rss_kib(pid: Option<u32>) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// A KiB field of `/proc/<pid>/status` (this process's when `None`).
fn status_kib(pid: Option<u32>, field: &str) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` prints them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// The server process to measure, when the harness spawned it: its pid changes on restart.
#[derive(Clone, Default)]
pub struct ServerPid(Arc<AtomicU32>);

impl ServerPid {
    pub fn set(&self, pid: Option<u32>) {
        self.0.store(pid.unwrap_or(0), Ordering::Release);
    }

    pub fn get(&self) -> Option<u32> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            pid => Some(pid),
        }
    }
}

/// A starting point for CPU shares over an interval.
#[derive(Clone, Copy)]
pub struct CpuMark {
    at: Instant,
    own: Duration,
    server_pid: Option<u32>,
    server: Option<Duration>,
}

/// CPU used over an interval, as fractions of the whole machine (wall time x cores).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuShare {
    pub own: f64,
    pub server: Option<f64>,
    /// The generator's CPU time over the interval, in seconds.
    pub own_secs: f64,
}

impl CpuMark {
    pub fn now(server: &ServerPid) -> Self {
        let server_pid = server.get();
        Self {
            at: Instant::now(),
            own: cpu_time(None).unwrap_or_default(),
            server_pid,
            server: server_pid.and_then(|pid| cpu_time(Some(pid))),
        }
    }

    /// Shares since this mark. A server restarted since counts from its own start (the
    /// killed process's last moments are lost with it).
    pub fn share_since(&self, server: &ServerPid) -> CpuShare {
        let machine_secs = self.at.elapsed().as_secs_f64() * cores() as f64;
        if machine_secs <= 0.0 {
            return CpuShare::default();
        }
        let own = cpu_time(None).unwrap_or_default().saturating_sub(self.own);
        let pid = server.get();
        let server_used = pid.and_then(|pid| cpu_time(Some(pid))).map(|now| {
            if pid == self.server_pid {
                now.saturating_sub(self.server.unwrap_or_default())
            } else {
                now
            }
        });
        CpuShare {
            own: own.as_secs_f64() / machine_secs,
            server: server_used.map(|used| used.as_secs_f64() / machine_secs),
            own_secs: own.as_secs_f64(),
        }
    }
}

impl std::fmt::Display for CpuShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "generator {:.1}%", self.own * 100.0)?;
        match self.server {
            Some(server) => write!(f, ", server {:.1}%", server * 100.0),
            None => write!(f, ", server n/a"),
        }
    }
}

/// Connections the kernel dropped because a listen queue was full (`ListenOverflows` in
/// `/proc/net/netstat`, machine-wide). Each costs its client a SYN retransmit, 1 s or more.
pub fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut tcp_ext = text.lines().filter(|line| line.starts_with("TcpExt:"));
    let names = tcp_ext.next()?.split_whitespace();
    let values = tcp_ext.next()?.split_whitespace();
    names
        .zip(values)
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, value)| value.parse().ok())
}

/// Listen-queue overflows since `before`, as text for the report.
pub fn overflows_since(before: Option<u64>) -> String {
    match (before, listen_overflows()) {
        (Some(before), Some(now)) => now.saturating_sub(before).to_string(),
        _ => "n/a".to_owned(),
    }
}

/// Context switches (voluntary and not) of every thread of `pid` alive now, from
/// `/proc/<pid>/task/*/status`: the process's own status file counts its main thread only.
pub fn context_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(text) = std::fs::read_to_string(task.ok()?.path().join("status")) else {
            continue; // the thread exited since the listing
        };
        total += text
            .lines()
            .filter(|line| line.contains("ctxt_switches:"))
            .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(total)
}
