//! Percentiles of a sample, the way the report quotes them.

use serde::Serialize;

/// A sample's spread, in the unit it was measured in (milliseconds, throughout the harness).
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Summary {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    /// Nearest rank: with fewer than 100 values this is the maximum.
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// `None` for an empty sample.
    pub(crate) fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Self {
            n: v.len(),
            min: v[0],
            p50: rank(0.50),
            p99: rank(0.99),
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        })
    }
}

/// The median (the mean of the middle two for an even count); NaN for an empty sample.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
