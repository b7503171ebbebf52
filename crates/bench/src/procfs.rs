//! Reads the server's CPU time and resident memory from `/proc`, for the process and its
//! direct children (nginx does its work in a worker process under the master).

use std::{fs, path::Path};

/// CPU time and memory of a process tree at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sample {
    /// User plus system time, in clock ticks.
    pub(crate) cpu_ticks: u64,
    /// Resident set size, in bytes.
    pub(crate) rss_bytes: u64,
}

/// The process under measurement.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Server {
    pid: u32,
    /// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
    clk_tck: u64,
}

impl Server {
    /// Measures `pid` and its children; `clk_tck` converts ticks to seconds.
    pub(crate) fn new(pid: u32, clk_tck: u64) -> Self {
        Self {
            pid,
            clk_tck: clk_tck.max(1),
        }
    }

    /// Reads the process and its direct children now. A process that vanished counts as 0.
    pub(crate) fn sample(&self) -> Sample {
        let mut total = read_one(self.pid).unwrap_or_default();
        for child in children(self.pid) {
            let sample = read_one(child).unwrap_or_default();
            total.cpu_ticks += sample.cpu_ticks;
            total.rss_bytes += sample.rss_bytes;
        }
        total
    }

    /// Seconds of CPU between two samples.
    pub(crate) fn cpu_seconds(&self, before: Sample, after: Sample) -> f64 {
        after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / self.clk_tck as f64
    }
}

/// One process's sample, or `None` when it does not exist (any more).
fn read_one(pid: u32) -> Option<Sample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Sample {
        cpu_ticks: parse_stat(&stat)?.cpu_ticks,
        rss_bytes: parse_vm_rss(&status).unwrap_or(0),
    })
}

/// What this module needs from a `/proc/<pid>/stat` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    parent: u32,
    cpu_ticks: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted from the last `)`: then state is field 3, ppid field 4, utime field 14
/// and stime field 15.
fn parse_stat(line: &str) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).copied();
    let parent = field(4)?.parse().ok()?;
    let utime: u64 = field(14)?.parse().ok()?;
    let stime: u64 = field(15)?.parse().ok()?;
    Some(Stat {
        parent,
        cpu_ticks: utime + stime,
    })
}

/// `VmRSS:   1234 kB` from `/proc/<pid>/status`, in bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The pids whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&candidate| candidate != pid)
        .filter(|&candidate| {
            fs::read_to_string(Path::new("/proc").join(candidate.to_string()).join("stat"))
                .ok()
                .and_then(|line| parse_stat(&line))
                .is_some_and(|stat| stat.parent == pid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (nginx: worker (x) y) S 4241 4241 4241 0 -1 4194624 1 0 0 0 17 5 0 0 20 0 1 0 123 456 789";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                parent: 4241,
                cpu_ticks: 22
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\therald\nVmPeak:\t  9000 kB\nVmRSS:\t    1500 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(1_536_000));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn own_process_can_be_sampled() {
        let server = Server::new(std::process::id(), 100);
        let sample = server.sample();
        assert!(sample.rss_bytes > 0);
        assert!(server.cpu_seconds(sample, sample).abs() < f64::EPSILON);
    }
}
