//! A small timing harness on `std::time::Instant`: repeated rounds, median and range.
//!
//! No statistics beyond order statistics: the median of the rounds is the figure reported,
//! min and max show the spread. Every round of a throughput case makes the same number of
//! calls, chosen from a warm-up so that all rounds together take about the time budget.

use std::time::{Duration, Instant};

/// Median, minimum and maximum of repeated measurements of one figure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: usize,
}

impl Summary {
    /// Summarises `values` (at least one; NaN is not expected).
    pub fn of(values: &[f64]) -> Summary {
        assert!(!values.is_empty(), "a summary needs at least one value");
        let v = sorted(values);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Summary {
            median,
            min: v[0],
            max: v[n - 1],
            samples: n,
        }
    }

    /// The same measurements expressed as `f(value)`, for a decreasing `f` such as a rate
    /// from a duration: min and max swap.
    pub fn map_decreasing(&self, f: impl Fn(f64) -> f64) -> Summary {
        Summary {
            median: f(self.median),
            min: f(self.max),
            max: f(self.min),
            samples: self.samples,
        }
    }

    /// The same measurements expressed as `f(value)`, for an increasing `f`.
    pub fn map_increasing(&self, f: impl Fn(f64) -> f64) -> Summary {
        Summary {
            median: f(self.median),
            min: f(self.min),
            max: f(self.max),
            samples: self.samples,
        }
    }
}

pub fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// Nearest-rank percentile (`p` in 0..=100) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty());
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Seconds per call in each round, and how many calls each round made.
pub struct Rounds {
    pub seconds_per_call: Vec<f64>,
    pub calls_per_round: u64,
}

/// Times `f` in `rounds` rounds after a warm-up. One untimed call pays any one-time cost;
/// the warm-up then calls `f` for about a tenth of the budget (at least once) and sets the
/// calls per round so that all rounds together take about `budget`; every round makes at
/// least one call.
pub fn rounds(budget: Duration, rounds: usize, mut f: impl FnMut()) -> Rounds {
    let rounds = rounds.max(1);
    f();
    let warm_budget = budget / 10;
    let start = Instant::now();
    let mut warm_calls = 0u64;
    loop {
        f();
        warm_calls += 1;
        if start.elapsed() >= warm_budget {
            break;
        }
    }
    let per_call = (start.elapsed().as_secs_f64() / warm_calls as f64).max(1e-9);
    let per_round = budget.as_secs_f64() / rounds as f64;
    let calls = ((per_round / per_call).round() as u64).max(1);
    let seconds_per_call = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..calls {
                f();
            }
            start.elapsed().as_secs_f64() / calls as f64
        })
        .collect();
    Rounds {
        seconds_per_call,
        calls_per_round: calls,
    }
}

/// Times `n` single calls of `f`; returns the seconds of each.
pub fn each(n: usize, mut f: impl FnMut()) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Summary::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max, s.samples), (2.0, 1.0, 3.0, 3));
        let s = Summary::of(&[4.0, 1.0, 2.0, 3.0]);
        assert_eq!(s.median, 2.5);
    }

    #[test]
    fn rates_from_durations_swap_min_and_max() {
        let s = Summary::of(&[0.5, 1.0, 2.0]).map_decreasing(|t| 1.0 / t);
        assert_eq!((s.median, s.min, s.max), (1.0, 0.5, 2.0));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn rounds_make_equal_calls_and_at_least_one() {
        let mut calls = 0u64;
        let r = rounds(Duration::from_millis(5), 3, || calls += 1);
        assert_eq!(r.seconds_per_call.len(), 3);
        assert!(r.calls_per_round >= 1);
        assert!(calls >= 3 * r.calls_per_round + 2);
    }
}
