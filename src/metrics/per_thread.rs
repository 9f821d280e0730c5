//! Metrics of the request path kept per thread and summed when scraped
//! (docs/design.md#performance). A request updates a counter, two histograms and the in-flight
//! gauge; with one value per metric, every worker would write the same cache lines and take the
//! same histogram lock, and each line would move between the cores' caches at every request. Here
//! each thread writes only its own shard, on a line of its own, and `/metrics` adds the shards up.
//!
//! A shard is found by the thread's id and kept by the caller (the request path keeps them in a
//! thread-local, `metrics.rs`), so the list is locked only when a thread first updates a series.
//! Shards are never dropped while their metric lives: a counter's sum never goes down.
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::{MetricType, TypedMetric};

/// One metric's shards, one per thread that updated it. Clones share the shards.
#[derive(Debug)]
pub struct PerThread<S> {
    shards: Arc<Mutex<Shards<S>>>,
    /// What a new shard starts as (the histogram's bounds).
    make: fn() -> S,
}

/// Each thread's shard, by the thread's id.
type Shards<S> = Vec<(ThreadId, Arc<Line<S>>)>;

impl<S> Clone for PerThread<S> {
    fn clone(&self) -> Self {
        PerThread {
            shards: self.shards.clone(),
            make: self.make,
        }
    }
}

/// A shard on cache lines of its own, so that two threads' shards never share one (128 bytes: a
/// pair of lines, which Intel's adjacent-line prefetcher moves together).
#[derive(Debug)]
#[repr(align(128))]
pub struct Line<S>(S);

impl<S> std::ops::Deref for Line<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.0
    }
}

impl<S> PerThread<S> {
    fn new(make: fn() -> S) -> Self {
        PerThread {
            shards: Arc::default(),
            make,
        }
    }

    /// The calling thread's shard, made at its first call.
    pub fn shard(&self) -> Arc<Line<S>> {
        let me = std::thread::current().id();
        let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, shard)) = shards.iter().find(|(id, _)| *id == me) {
            return shard.clone();
        }
        let shard = Arc::new(Line((self.make)()));
        shards.push((me, shard.clone()));
        shard
    }

    /// Adds every shard up with `add`.
    fn fold<T>(&self, init: T, mut add: impl FnMut(&mut T, &S)) -> T {
        let shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = init;
        for (_, shard) in shards.iter() {
            add(&mut total, shard);
        }
        total
    }
}

/// A counter (`_total`).
pub type Count = PerThread<AtomicU64>;

impl Default for Count {
    fn default() -> Self {
        PerThread::new(AtomicU64::default)
    }
}

impl TypedMetric for Count {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for Count {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let total = self.fold(0u64, |t, s| *t += s.load(Ordering::Relaxed));
        encoder.encode_counter::<NoLabelSet, _, u64>(&total, None::<&Exemplar<NoLabelSet, u64>>)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A gauge that goes up and down (a thread's shard may go below zero when a request ends on
/// another thread than it started on; the sum is right).
pub type Level = PerThread<AtomicI64>;

impl Default for Level {
    fn default() -> Self {
        PerThread::new(AtomicI64::default)
    }
}

impl TypedMetric for Level {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for Level {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let total = self.fold(0i64, |t, s| *t += s.load(Ordering::Relaxed));
        encoder.encode_gauge(&total)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A histogram of durations in seconds, over the bounds it was made with.
pub type Latency = PerThread<LatencyShard>;

impl Latency {
    pub fn with_bounds(make: fn() -> LatencyShard) -> Self {
        PerThread::new(make)
    }
}

/// How many buckets a [`LatencyShard`] has room for, `+Inf` included. Kept in the shard, not in an
/// allocation of its own that could share a cache line with another thread's.
const MAX_BUCKETS: usize = 24;

/// One thread's observations: a count per bucket (not cumulative; the one after the last bound is
/// `+Inf`) and their sum, whose bits are an `f64`.
#[derive(Debug)]
pub struct LatencyShard {
    bounds: &'static [f64],
    buckets: [AtomicU64; MAX_BUCKETS],
    sum: AtomicU64,
}

impl LatencyShard {
    /// A shard over `bounds` (finite and rising, fewer than [`MAX_BUCKETS`]) and `+Inf`.
    pub const fn new(bounds: &'static [f64]) -> Self {
        assert!(bounds.len() < MAX_BUCKETS);
        LatencyShard {
            bounds,
            buckets: [const { AtomicU64::new(0) }; MAX_BUCKETS],
            sum: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, seconds: f64) {
        let i = self.bounds.partition_point(|&bound| bound < seconds);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        // Only its own thread writes a shard, so this never retries in practice.
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + seconds).to_bits())
            });
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let bounds = (self.make)().bounds;
        let empty = (
            0.0,
            bounds
                .iter()
                .chain([&f64::INFINITY])
                .map(|&b| (b, 0))
                .collect(),
        );
        let (sum, buckets): (f64, Vec<(f64, u64)>) = self.fold(empty, |(sum, buckets), shard| {
            *sum += f64::from_bits(shard.sum.load(Ordering::Relaxed));
            for ((_, total), count) in buckets.iter_mut().zip(&shard.buckets) {
                *total += count.load(Ordering::Relaxed);
            }
        });
        let count = buckets.iter().map(|(_, n)| n).sum();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::Registry;

    const BOUNDS: [f64; 3] = [0.001, 0.01, 0.1];

    fn text(register: impl FnOnce(&mut Registry)) -> String {
        let mut registry = Registry::default();
        register(&mut registry);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        out
    }

    /// Shards of several threads encode exactly as one prometheus-client metric fed the same
    /// observations would: the same samples, types and buckets.
    #[test]
    fn shards_of_several_threads_encode_as_one_metric() {
        let observations = [0.0005, 0.001, 0.002, 0.05, 0.1, 0.5, 7.0, 0.0];
        let latency = Latency::with_bounds(|| LatencyShard::new(&BOUNDS));
        let count = Count::default();
        let level = Level::default();
        std::thread::scope(|s| {
            for chunk in observations.chunks(3) {
                let (latency, count, level) = (&latency, &count, &level);
                s.spawn(move || {
                    for &v in chunk {
                        latency.shard().observe(v);
                        count.shard().fetch_add(1, Ordering::Relaxed);
                        level.shard().fetch_add(2, Ordering::Relaxed);
                    }
                    // A request that ends on another thread than it started on.
                    level.shard().fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
        assert_eq!(latency.shards.lock().unwrap().len(), 3);

        let one = Histogram::new(BOUNDS);
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        let gauge = prometheus_client::metrics::gauge::Gauge::<i64>::default();
        for &v in &observations {
            one.observe(v);
            counter.inc();
            gauge.inc_by(2);
        }
        gauge.dec_by(3);
        let expected = text(|r| {
            r.register("d", "h", one);
            r.register("c", "h", counter);
            r.register("g", "h", gauge);
        });
        let sharded = text(|r| {
            r.register("d", "h", latency.clone());
            r.register("c", "h", count.clone());
            r.register("g", "h", level.clone());
        });
        assert_eq!(sharded, expected);
        assert!(sharded.contains(r#"d_bucket{le="0.01"} 4"#), "{sharded}");
    }

    /// A thread asking again gets the shard it has, so a series a thread drops from its own list
    /// and makes again does not grow the metric's.
    #[test]
    fn a_thread_has_one_shard() {
        let count = Count::default();
        let (a, b) = (count.shard(), count.shard());
        assert!(Arc::ptr_eq(&a, &b));
        a.fetch_add(2, Ordering::Relaxed);
        std::thread::scope(|s| {
            s.spawn(|| count.shard().fetch_add(3, Ordering::Relaxed));
        });
        assert_eq!(count.fold(0, |t, s| *t += s.load(Ordering::Relaxed)), 5);
        assert_eq!(count.shards.lock().unwrap().len(), 2);
    }
}
