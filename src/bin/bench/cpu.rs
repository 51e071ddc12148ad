//! CPU time and memory of processes, read from `/proc` (Linux).
//!
//! CPU seconds are `utime + stime` of `/proc/PID/stat` (every thread of the
//! process, in clock ticks of 1/100 s: the `USER_HZ` of every mainstream
//! Linux architecture); memory is `VmRSS` (now) and `VmHWM` (peak since the
//! process started) of `/proc/PID/status`, in KiB.

use std::fs;

/// `USER_HZ`: the unit of the CPU fields of `/proc/PID/stat`.
const TICKS_PER_SECOND: f64 = 100.0;

/// A process to watch, with the name it is reported under.
#[derive(Debug, Clone)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

/// Parses one item of `--pids`: `PID` or `NAME=PID`.
pub fn parse_pid(part: &str) -> Result<Watched, String> {
    let part = part.trim();
    let (name, pid) = match part.split_once('=') {
        Some((name, pid)) => (name.trim().to_owned(), pid.trim()),
        None => (String::new(), part),
    };
    let pid: u32 = pid
        .parse()
        .map_err(|_| format!("`{part}`: expected PID or NAME=PID"))?;
    let name = if name.is_empty() {
        process_name(pid).unwrap_or_else(|| format!("pid-{pid}"))
    } else {
        name
    };
    Ok(Watched { name, pid })
}

/// The command name of a process (`/proc/PID/comm`).
fn process_name(pid: u32) -> Option<String> {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(format!("{}-{pid}", comm.trim()))
}

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// User + system CPU seconds since the process started.
    pub cpu_s: f64,
    /// Resident set size now, KiB.
    pub rss_kib: u64,
    /// Peak resident set size since the process started, KiB.
    pub hwm_kib: u64,
}

/// Reads a process's CPU and memory; `None` if it is gone (or not Linux).
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Sample {
        cpu_s: cpu_seconds(&stat)?,
        rss_kib: status_kib(&status, "VmRSS:").unwrap_or(0),
        hwm_kib: status_kib(&status, "VmHWM:").unwrap_or(0),
    })
}

/// This process's CPU seconds (every thread: the runtime and the timer).
pub fn own_cpu_seconds() -> f64 {
    fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| cpu_seconds(&s))
        .unwrap_or(0.0)
}

/// `utime + stime` from the text of `/proc/PID/stat`. The command name (field
/// 2) may hold spaces and parentheses, so fields are counted from the last
/// `)`: after it come field 3 (state) onwards; utime and stime are fields 14
/// and 15.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Asks the kernel for precise timer wake-ups in this process (and in the
/// threads it starts afterwards, which inherit the value): the default
/// timer slack of 50 µs would make every scheduled send up to 50 µs late.
/// Best effort: silently does nothing where it is not allowed.
pub fn tighten_timer_slack() {
    let _ = fs::write("/proc/self/timerslack_ns", "1000");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces() {
        let stat = "1234 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(cpu_seconds(stat), Some(3.0));
    }

    #[test]
    fn status_lines() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(1024));
        assert_eq!(status_kib(status, "VmHWM:"), Some(2048));
    }

    #[test]
    fn pid_lists() {
        let w = parse_pid("relay-1=10").unwrap();
        assert_eq!(w.name, "relay-1");
        assert_eq!(w.pid, 10);
        assert_eq!(parse_pid(" 20").unwrap().pid, 20);
        assert!(parse_pid("x=y").is_err());
    }

    #[test]
    fn reads_itself() {
        let me = sample(std::process::id()).unwrap();
        assert!(me.rss_kib > 0);
    }
}
