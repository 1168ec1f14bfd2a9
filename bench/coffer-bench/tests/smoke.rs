//! The harness must not rot: a `--smoke` run exits 0 and writes every figure.

use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// Every figure of the results table, by its label (bench/README.md explains each one).
const LABELS: &[&str] = &[
    "argon2id calibration",
    "argon2id derivation, calibrated cost",
    "seal throughput, 10 KiB",
    "open throughput, 10 KiB",
    "seal throughput, 10 MiB",
    "open throughput, 10 MiB",
    "append rate, 10 KiB, sequential",
    "append throughput, 10 KiB, sequential",
    "append rate, 10 KiB, concurrent",
    "append throughput, 10 KiB, concurrent",
    "delivery rate, 10 KiB, sequential",
    "delivery throughput, 10 KiB, sequential",
    "append latency, 10 KiB, sequential",
    "fsync baseline, 10 KiB",
];

/// Facts about the machine every results file records.
const FACTS: &[&str] = &[
    "- date (UTC): ",
    "- git commit: ",
    "- nproc: ",
    "- memory: ",
    "- CPU: ",
    "- rustc: ",
];

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn smoke_run_writes_every_figure() {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let scratch = Scratch(
        std::env::temp_dir().join(format!("coffer-bench-smoke-{}-{nanos}", std::process::id())),
    );
    let out_dir = scratch.0.join("results");
    let work_dir = scratch.0.join("work");
    let output = Command::new(env!("CARGO_BIN_EXE_coffer-bench"))
        .arg("--smoke")
        .arg("--out")
        .arg(&out_dir)
        .arg("--tmp-dir")
        .arg(&work_dir)
        .output()
        .expect("coffer-bench runs");
    assert!(
        output.status.success(),
        "coffer-bench --smoke failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );

    let files: Vec<PathBuf> = std::fs::read_dir(&out_dir)
        .expect("the results directory exists")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one results file: {files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("foundation-") && name.ends_with(".md"),
        "{name}"
    );
    let text = std::fs::read_to_string(&files[0]).unwrap();

    for fact in FACTS {
        let line = text.lines().find(|l| l.starts_with(fact));
        let value = line.map(|l| l[fact.len()..].trim()).unwrap_or_default();
        assert!(!value.is_empty(), "missing {fact:?} in:\n{text}");
    }
    for label in LABELS {
        let prefix = format!("| {label} |");
        let row = text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no row {label:?} in:\n{text}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // cells: "", label, median, min, max, unit, samples, detail, ""
        for (i, what) in [(2, "median"), (3, "min"), (4, "max")] {
            let v: f64 = cells[i]
                .parse()
                .unwrap_or_else(|_| panic!("{what} of {label:?} is not a number: {row}"));
            assert!(
                v.is_finite() && v > 0.0,
                "{what} of {label:?} is not positive: {row}"
            );
        }
    }
    // The smoke run says it is one, so its figures are never mistaken for measurements.
    assert!(text.contains("- mode: smoke"), "{text}");
    // The store's temporary data directories are removed.
    let left: Vec<_> = std::fs::read_dir(&work_dir).unwrap().collect();
    assert!(
        left.is_empty(),
        "left behind in {}: {left:?}",
        work_dir.display()
    );
}
