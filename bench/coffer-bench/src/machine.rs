//! What machine and build produced the figures: date, commit, cores, memory, CPU, compiler,
//! and the filesystem the store ran on (fsync cost depends on it more than on the CPU).

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

pub struct Machine {
    /// UTC date, `YYYY-MM-DD`.
    pub date: String,
    /// UTC time of day, `HH:MM:SS`.
    pub time: String,
    /// `git rev-parse --short HEAD`, or "unknown".
    pub commit: String,
    /// Whether tracked files differ from that commit.
    pub dirty: bool,
    pub nproc: String,
    pub memory: String,
    pub cpu: String,
    pub kernel: String,
    pub rustc: &'static str,
    pub profile: &'static str,
}

fn command(program: &str, args: &[&str], dir: &Path) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's
/// `civil_from_days`).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn utc_now() -> (String, String) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60),
    )
}

fn memory() -> String {
    let kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    });
    match kib {
        Some(k) => format!("{:.1} GiB (MemTotal {k} kB)", k as f64 / (1024.0 * 1024.0)),
        None => "unknown".into(),
    }
}

fn cpu() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

impl Machine {
    /// Describes this machine; `repo` is any directory inside the git checkout.
    pub fn describe(repo: &Path) -> Machine {
        let (date, time) = utc_now();
        let commit = command("git", &["rev-parse", "--short", "HEAD"], repo)
            .unwrap_or_else(|| "unknown".into());
        let dirty = command(
            "git",
            &["status", "--porcelain", "--untracked-files=no"],
            repo,
        )
        .is_some_and(|s| !s.is_empty());
        let nproc = command("nproc", &[], repo)
            .or_else(|| {
                std::thread::available_parallelism()
                    .ok()
                    .map(|n| n.to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| format!("Linux {}", s.trim()))
            .unwrap_or_else(|_| std::env::consts::OS.to_string());
        Machine {
            date,
            time,
            commit,
            dirty,
            nproc,
            memory: memory(),
            cpu: cpu(),
            kernel,
            rustc: env!("COFFER_BENCH_RUSTC"),
            profile: env!("COFFER_BENCH_PROFILE"),
        }
    }
}

/// The 1, 5 and 15 minute load averages, to show whether something else ran meanwhile.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// Filesystem type and mount point holding `path`, from /proc/mounts (longest prefix).
pub fn filesystem_of(path: &Path) -> String {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "unknown".into();
    };
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, point, fstype) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(point)
                .then(|| (point.to_string(), fstype.to_string()))
        })
        .max_by_key(|(point, _)| point.len())
        .map(|(point, fstype)| format!("{fstype} on {point}"))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
