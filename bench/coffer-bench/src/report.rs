//! The results table, printed and written as Markdown.

use crate::harness::Summary;
use crate::machine::Machine;

/// One line of the results table.
pub struct Row {
    pub label: String,
    pub unit: &'static str,
    pub summary: Summary,
    pub detail: String,
}

pub struct Report {
    pub title: String,
    pub machine: Machine,
    /// Extra facts about the run (mode, parameters, store filesystem).
    pub notes: Vec<(String, String)>,
    pub rows: Vec<Row>,
    /// Text after the table: units and what the samples are.
    pub footer: String,
}

/// About three significant figures, never in exponent form.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    let decimals = if a >= 100.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else if a > 0.0 {
        ((2.0 - a.log10().floor()) as usize).min(9)
    } else {
        0
    };
    format!("{v:.decimals$}")
}

impl Report {
    pub fn table(&self) -> String {
        let mut out = String::from("| figure | median | min | max | unit | samples | detail |\n");
        out.push_str("|---|---:|---:|---:|---|---:|---|\n");
        for r in &self.rows {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                r.label,
                number(r.summary.median),
                number(r.summary.min),
                number(r.summary.max),
                r.unit,
                r.summary.samples,
                r.detail
            ));
        }
        out
    }

    pub fn header(&self) -> String {
        let m = &self.machine;
        let commit = if m.dirty {
            format!("{} (with uncommitted changes to tracked files)", m.commit)
        } else {
            m.commit.clone()
        };
        let mut facts = vec![
            ("date (UTC)".to_string(), format!("{} {}", m.date, m.time)),
            ("git commit".to_string(), commit),
            ("nproc".to_string(), m.nproc.clone()),
            ("memory".to_string(), m.memory.clone()),
            ("CPU".to_string(), m.cpu.clone()),
            ("kernel".to_string(), m.kernel.clone()),
            ("rustc".to_string(), m.rustc.to_string()),
            ("build".to_string(), m.profile.to_string()),
        ];
        facts.extend(self.notes.iter().cloned());
        let mut out = String::new();
        for (k, v) in facts {
            out.push_str(&format!("- {k}: {v}\n"));
        }
        out
    }

    pub fn markdown(&self) -> String {
        format!(
            "# {}\n\n{}\n{}\n{}",
            self.title,
            self.header(),
            self.table(),
            self.footer
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_about_three_significant_figures() {
        assert_eq!(number(1234.567), "1235");
        assert_eq!(number(12.345), "12.3");
        assert_eq!(number(1.2345), "1.23");
        assert_eq!(number(0.012345), "0.0123");
        assert_eq!(number(0.0), "0");
    }
}
