//! The harness's arithmetic: percentiles of latencies, robust slopes of sampled series,
//! and quantiles estimated from a Prometheus histogram's buckets.

use serde::Serialize;

/// p50, p95, p99 and max of a set of values (milliseconds or seconds, as given).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// How many values.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// The largest value.
    pub max: f64,
}

impl Percentiles {
    /// The percentiles of `values` (nearest rank); `None` for no value. NaNs are
    /// ignored.
    pub fn of(values: &[f64]) -> Option<Percentiles> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Percentiles {
            count: v.len(),
            p50: nearest_rank(&v, 50.0),
            p95: nearest_rank(&v, 95.0),
            p99: nearest_rank(&v, 99.0),
            max: v[v.len() - 1],
        })
    }
}

/// The nearest-rank `p`th percentile of sorted, non-empty `sorted`: the smallest value
/// with at least `p`% of the values at or below it.
pub fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// A line fitted to a series: `value ≈ start + slope · (t − t0)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Fit {
    /// Units per second.
    pub slope: f64,
    /// The fitted value at the first sample's time.
    pub start: f64,
    /// Seconds from the first to the last sample.
    pub span: f64,
    /// Samples used.
    pub samples: usize,
}

impl Fit {
    /// How much the fitted line grows over the series: `slope · span`.
    pub fn growth(&self) -> f64 {
        self.slope * self.span
    }
}

/// Most points a slope is computed from: longer series are thinned evenly (the
/// estimator is quadratic in its points).
const MAX_POINTS: usize = 400;

/// The Theil–Sen fit of `(t, value)` points (seconds, any unit): the median of the
/// slopes of every pair, so that a few spikes (a burst of allocations, a GC) do not
/// tilt it; `None` with fewer than 3 points or no time between them.
pub fn theil_sen(points: &[(f64, f64)]) -> Option<Fit> {
    let pts: Vec<(f64, f64)> = if points.len() > MAX_POINTS {
        let step = points.len() as f64 / MAX_POINTS as f64;
        (0..MAX_POINTS)
            .map(|i| points[((i as f64) * step) as usize])
            .collect()
    } else {
        points.to_vec()
    };
    if pts.len() < 3 {
        return None;
    }
    let mut slopes = Vec::with_capacity(pts.len() * (pts.len() - 1) / 2);
    for i in 0..pts.len() {
        for j in i + 1..pts.len() {
            let dt = pts[j].0 - pts[i].0;
            if dt > 0.0 {
                slopes.push((pts[j].1 - pts[i].1) / dt);
            }
        }
    }
    if slopes.is_empty() {
        return None;
    }
    let slope = median(&mut slopes);
    let t0 = pts[0].0;
    let mut intercepts: Vec<f64> = pts.iter().map(|(t, v)| v - slope * (t - t0)).collect();
    let start = median(&mut intercepts);
    let span = pts[pts.len() - 1].0 - t0;
    Some(Fit {
        slope,
        start,
        span,
        samples: points.len(),
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The `q` quantile (0..=1) of a histogram given as cumulative `(upper bound, count)`
/// buckets in increasing bound order (the last may be `+Inf`), interpolated linearly
/// inside its bucket as Prometheus' `histogram_quantile` does; `None` when it holds no
/// observation. A quantile in the `+Inf` bucket is the largest finite bound.
pub fn histogram_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let mut prev_bound = 0.0;
    let mut prev_count = 0.0;
    for &(bound, count) in buckets {
        if count >= rank && count > prev_count {
            if bound.is_infinite() {
                return Some(prev_bound);
            }
            let frac = (rank - prev_count) / (count - prev_count);
            return Some(prev_bound + (bound - prev_bound) * frac);
        }
        if bound.is_finite() {
            prev_bound = bound;
        }
        prev_count = count;
    }
    Some(prev_bound)
}

/// p50, p95 and p99 of a histogram's buckets, and as "max" the upper bound of the
/// highest bucket that gained an observation (the largest finite bound for `+Inf`).
pub fn histogram_percentiles(buckets: &[(f64, f64)]) -> Option<Percentiles> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let mut max = 0.0;
    let mut prev = 0.0;
    let mut last_finite = 0.0;
    for &(bound, count) in buckets {
        if bound.is_finite() {
            last_finite = bound;
        }
        if count > prev {
            max = if bound.is_finite() {
                bound
            } else {
                last_finite
            };
        }
        prev = count;
    }
    Some(Percentiles {
        count: total as usize,
        p50: histogram_quantile(buckets, 0.5)?,
        p95: histogram_quantile(buckets, 0.95)?,
        p99: histogram_quantile(buckets, 0.99)?,
        max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn percentiles_of_one_to_a_hundred_are_their_ranks() {
        let v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let p = Percentiles::of(&v).unwrap();
        assert_eq!(
            (p.count, p.p50, p.p95, p.p99, p.max),
            (100, 50.0, 95.0, 99.0, 100.0)
        );
        assert_eq!(Percentiles::of(&[]), None);
        let one = Percentiles::of(&[7.0]).unwrap();
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
        // Few values: the high percentiles are the largest one, never past it.
        let few = Percentiles::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((few.p50, few.p95, few.max), (2.0, 3.0, 3.0));
    }

    #[test]
    fn a_spike_does_not_tilt_the_slope_and_a_line_is_found_exactly() {
        let line: Vec<(f64, f64)> = (0..50)
            .map(|i| (f64::from(i), 100.0 + 2.0 * f64::from(i)))
            .collect();
        let f = theil_sen(&line).unwrap();
        assert!(
            (f.slope - 2.0).abs() < 1e-9 && (f.start - 100.0).abs() < 1e-9,
            "{f:?}"
        );
        assert_eq!(f.span, 49.0);
        assert!((f.growth() - 98.0).abs() < 1e-9);
        let mut flat: Vec<(f64, f64)> = (0..60).map(|i| (f64::from(i), 500.0)).collect();
        flat[30].1 = 50_000.0;
        flat[31].1 = 40_000.0;
        assert_eq!(theil_sen(&flat).unwrap().slope, 0.0);
        assert_eq!(theil_sen(&line[..2]), None);
        assert_eq!(theil_sen(&[(1.0, 1.0), (1.0, 2.0), (1.0, 3.0)]), None);
    }

    #[test]
    fn long_series_are_thinned_but_keep_their_slope() {
        let pts: Vec<(f64, f64)> = (0..10_000)
            .map(|i| (f64::from(i), 3.0 * f64::from(i) + 1.0))
            .collect();
        let f = theil_sen(&pts).unwrap();
        assert!((f.slope - 3.0).abs() < 1e-9, "{f:?}");
        assert_eq!(f.samples, 10_000);
    }

    #[test]
    fn histogram_quantiles_interpolate_inside_buckets() {
        // 10 observations in (0, 1], 10 in (1, 2], none above.
        let b = [(1.0, 10.0), (2.0, 20.0), (f64::INFINITY, 20.0)];
        assert_eq!(histogram_quantile(&b, 0.5), Some(1.0));
        assert_eq!(histogram_quantile(&b, 0.75), Some(1.5));
        assert_eq!(histogram_quantile(&b, 0.25), Some(0.5));
        let p = histogram_percentiles(&b).unwrap();
        assert_eq!((p.count, p.max), (20, 2.0));
        // Observations past the last bound: its bound, not infinity.
        let over = [(1.0, 0.0), (2.0, 0.0), (f64::INFINITY, 4.0)];
        assert_eq!(histogram_quantile(&over, 0.5), Some(2.0));
        assert_eq!(histogram_percentiles(&over).unwrap().max, 2.0);
        assert_eq!(
            histogram_quantile(&[(1.0, 0.0), (f64::INFINITY, 0.0)], 0.5),
            None
        );
    }

    proptest! {
        #[test]
        fn percentiles_are_ordered_members_within_the_range(v in proptest::collection::vec(-1e6f64..1e6, 1..300)) {
            let p = Percentiles::of(&v).unwrap();
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            prop_assert!(min <= p.p50 && p.p50 <= p.p95 && p.p95 <= p.p99 && p.p99 <= p.max);
            prop_assert_eq!(p.max, max);
            let n = v.len() as f64;
            for (x, q) in [(p.p50, 0.50), (p.p95, 0.95), (p.p99, 0.99)] {
                prop_assert!(v.contains(&x));
                // Nearest rank: at least q of the values at or below it, fewer strictly below.
                let at_or_below = v.iter().filter(|y| **y <= x).count() as f64 / n;
                let below = v.iter().filter(|y| **y < x).count() as f64 / n;
                prop_assert!(at_or_below >= q - 1e-12 && below < q, "{x} as p{q}");
            }
        }

        #[test]
        fn the_slope_of_a_noisy_line_is_near_its_own(
            slope in -50.0f64..50.0,
            start in -1e3f64..1e3,
            noise in proptest::collection::vec(-1.0f64..1.0, 20..120),
        ) {
            let pts: Vec<(f64, f64)> = noise
                .iter()
                .enumerate()
                .map(|(i, n)| (i as f64, start + slope * i as f64 + n))
                .collect();
            let f = theil_sen(&pts).unwrap();
            // Noise of at most ±1 between points at least 1 s apart, over many pairs.
            prop_assert!((f.slope - slope).abs() < 0.5, "{f:?} for slope {slope}");
            // Adding a constant moves the start, not the slope.
            let shifted: Vec<(f64, f64)> = pts.iter().map(|(t, v)| (*t, v + 1e4)).collect();
            let g = theil_sen(&shifted).unwrap();
            prop_assert!((g.slope - f.slope).abs() < 1e-6);
            prop_assert!((g.start - f.start - 1e4).abs() < 1e-6);
        }

        #[test]
        fn histogram_quantiles_grow_with_q_and_stay_within_the_bounds(
            counts in proptest::collection::vec(0u32..50, 1..12),
            q1 in 0.0f64..1.0,
            q2 in 0.0f64..1.0,
        ) {
            let mut cum = 0.0;
            let mut b: Vec<(f64, f64)> = counts
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    cum += f64::from(*c);
                    (2f64.powi(i as i32), cum)
                })
                .collect();
            b.push((f64::INFINITY, cum));
            let last = b[b.len() - 2].0;
            match (histogram_quantile(&b, q1.min(q2)), histogram_quantile(&b, q1.max(q2))) {
                (Some(lo), Some(hi)) => {
                    prop_assert!(lo <= hi + 1e-9, "{lo} > {hi}");
                    prop_assert!((0.0..=last).contains(&lo) && hi <= last);
                }
                (None, None) => prop_assert_eq!(cum, 0.0),
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }
}
