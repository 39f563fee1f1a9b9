//! Metric handles taken once and kept, for the counters and histograms a purchase touches.
//!
//! `metrics::counter!` and `metrics::histogram!` look their key up in the recorder's registry
//! on every call (a hash of the name and each label, then a compare) and allocate a new
//! handle: about seven allocations a purchase (counted) before these were kept. A kept handle is
//! taken on its first use, per thread and per name and label values, and counts into the
//! same series as the macros do.
//!
//! The server installs its recorder before the shop starts: a handle taken before a
//! recorder is installed counts nothing, so these serve code that runs once serving.

use std::cell::RefCell;
use std::collections::HashMap;

use metrics::{Counter, Histogram, Label};

/// Most labels a kept handle carries.
pub const LABELS_MAX: usize = 3;

/// A name and its labels' names and values, by address and length (all `'static`, so an
/// address names one string for the life of the process).
type Key = [(usize, usize); 1 + 2 * LABELS_MAX];

fn key_of(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    assert!(labels.len() <= LABELS_MAX, "at most {LABELS_MAX} labels");
    let at = |s: &'static str| (s.as_ptr() as usize, s.len());
    let mut key = [(0, 0); 1 + 2 * LABELS_MAX];
    key[0] = at(name);
    for (i, (label, value)) in labels.iter().enumerate() {
        key[1 + 2 * i] = at(label);
        key[2 + 2 * i] = at(value);
    }
    key
}

fn labels_of(labels: &[(&'static str, &'static str)]) -> Vec<Label> {
    labels
        .iter()
        .map(|(label, value)| Label::from_static_parts(label, value))
        .collect()
}

thread_local! {
    static COUNTERS: Handles<Counter> = RefCell::new(HashMap::new());
    static HISTOGRAMS: Handles<Histogram> = RefCell::new(HashMap::new());
}

type Handles<H> = RefCell<HashMap<Key, H>>;

/// Adds `by` to the counter `name` with `labels`.
pub fn count(name: &'static str, labels: &[(&'static str, &'static str)], by: u64) {
    with_kept(&COUNTERS, name, labels, |name, labels| {
        metrics::counter!(name, labels)
    })
    .increment(by);
}

/// Records `value` in the histogram `name` with `labels`.
pub fn record(name: &'static str, labels: &[(&'static str, &'static str)], value: f64) {
    with_kept(&HISTOGRAMS, name, labels, |name, labels| {
        metrics::histogram!(name, labels)
    })
    .record(value);
}

/// This thread's handle for `name` and `labels`, taken with `take` on first use (a clone of
/// a handle counts a reference: it does not allocate).
fn with_kept<H: Clone>(
    handles: &'static std::thread::LocalKey<Handles<H>>,
    name: &'static str,
    labels: &[(&'static str, &'static str)],
    take: impl FnOnce(&'static str, Vec<Label>) -> H,
) -> H {
    handles.with_borrow_mut(|handles| {
        handles
            .entry(key_of(name, labels))
            .or_insert_with(|| take(name, labels_of(labels)))
            .clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_and_labels_are_one_key_and_a_label_value_another() {
        let paid = key_of("panshi_orders_paid_total", &[("channel", "epay")]);
        assert_eq!(
            paid,
            key_of("panshi_orders_paid_total", &[("channel", "epay")])
        );
        assert_ne!(
            paid,
            key_of("panshi_orders_paid_total", &[("channel", "stripe")])
        );
        assert_ne!(paid, key_of("panshi_orders_paid_total", &[]));
        assert_ne!(
            key_of("panshi_orders_paid_total", &[]),
            key_of("panshi_orders_delivered_total", &[])
        );
    }
}
