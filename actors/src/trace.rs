//! Order traces: each order's trace id and the stages it went through (create, reserve,
//! commit, notify, deliver, push, expire), with wall-clock start and monotonic duration, kept
//! in a bounded in-memory ring for operators. The same stages are logged as structured events
//! carrying the trace id.
//!
//! Invariants: at most `TRACE_RING_CAPACITY` orders and `TRACE_STAGES_PER_ORDER_MAX` stages
//! per order are held; the oldest order is evicted first. A trace is observability only:
//! nothing in the order flow reads it back to decide anything.
//!
//! Design decision: stages are recorded after the fact (start time and duration measured by
//! the caller), so tracing adds no await point and draws no randomness in the order flow.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use engine::{OrderId, OrderRecord, OrderStatus};
use parking_lot::Mutex;

/// Orders whose traces are kept; older ones answer from their stored record instead.
pub const TRACE_RING_CAPACITY: usize = 10_000;
/// Stages kept per order (a late payment that reserves again has the most, about 9).
pub const TRACE_STAGES_PER_ORDER_MAX: usize = 16;
/// Stages of a purchase: create, reserve, commit, notify, deliver, push.
const TRACE_STAGES_USUAL: usize = 6;
const _: () = assert!(TRACE_STAGES_USUAL <= TRACE_STAGES_PER_ORDER_MAX);

/// One step of an order's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Create,
    Reserve,
    Commit,
    Notify,
    Deliver,
    ManualReview,
    Push,
    Expire,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Create => "create",
            Stage::Reserve => "reserve",
            Stage::Commit => "commit",
            Stage::Notify => "notify",
            Stage::Deliver => "deliver",
            Stage::ManualReview => "manual_review",
            Stage::Push => "push",
            Stage::Expire => "expire",
        }
    }
}

/// A stage as it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageRecord {
    pub stage: Stage,
    /// Wall-clock start, Unix milliseconds.
    pub at_ms: u64,
    /// Monotonic duration in microseconds; `None` when derived from a stored record.
    pub duration_us: Option<u64>,
}

/// An order's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderTrace {
    pub trace_id: String,
    pub stages: Vec<StageRecord>,
    /// False when the ring had lost the order and the stages come from its stored record.
    pub from_ring: bool,
}

#[derive(Default)]
struct Ring {
    traces: HashMap<OrderId, OrderTrace>,
    /// Insertion order, for eviction.
    order: VecDeque<OrderId>,
}

/// The bounded trace ring.
#[derive(Default)]
pub struct Traces {
    ring: Mutex<Ring>,
}

impl Traces {
    /// Appends a stage to an order's trace (starting the trace if new) and logs it at
    /// `debug`: six lines per purchase cost 10% of throughput at `info`, and the ring
    /// (`GET /api/v1/admin/orders/{order_id}/trace`) already answers for every recent order.
    pub fn record(
        &self,
        order_id: &OrderId,
        trace_id: &str,
        stage: Stage,
        at_ms: u64,
        duration: Duration,
    ) {
        self.record_all(order_id, trace_id, &[(stage, at_ms, duration)]);
    }

    /// Appends stages, in order, to an order's trace: one lock and one lookup for all of
    /// them (a create records three).
    pub fn record_all(
        &self,
        order_id: &OrderId,
        trace_id: &str,
        stages: &[(Stage, u64, Duration)],
    ) {
        let micros = |duration: Duration| u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        for &(stage, at_ms, duration) in stages {
            tracing::debug!(
                trace_id,
                order_id = %order_id,
                stage = stage.as_str(),
                at_ms,
                duration_us = micros(duration),
                "order stage"
            );
        }
        let records = stages.iter().map(|&(stage, at_ms, duration)| StageRecord {
            stage,
            at_ms,
            duration_us: Some(micros(duration)),
        });
        let mut ring = self.ring.lock();
        let Ring { traces, order } = &mut *ring;
        let (trace, started) = match traces.entry(order_id.clone()) {
            Entry::Occupied(trace) => (trace.into_mut(), false),
            Entry::Vacant(slot) => {
                let trace = slot.insert(OrderTrace {
                    trace_id: trace_id.to_owned(),
                    stages: Vec::with_capacity(TRACE_STAGES_USUAL),
                    from_ring: true,
                });
                (trace, true)
            }
        };
        keep_stages(&mut trace.stages, records);
        if started {
            order.push_back(order_id.clone());
            if order.len() > TRACE_RING_CAPACITY {
                if let Some(oldest) = order.pop_front() {
                    traces.remove(&oldest);
                }
            }
        }
    }

    /// The trace id of an order still in the ring.
    pub fn trace_id(&self, order_id: &OrderId) -> Option<String> {
        self.ring
            .lock()
            .traces
            .get(order_id)
            .map(|t| t.trace_id.clone())
    }

    pub fn get(&self, order_id: &OrderId) -> Option<OrderTrace> {
        self.ring.lock().traces.get(order_id).cloned()
    }

    pub fn len(&self) -> usize {
        self.ring.lock().traces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Appends `records` to `stages` up to `TRACE_STAGES_PER_ORDER_MAX`.
fn keep_stages(stages: &mut Vec<StageRecord>, records: impl Iterator<Item = StageRecord>) {
    let room = TRACE_STAGES_PER_ORDER_MAX.saturating_sub(stages.len());
    stages.extend(records.take(room));
}

/// The stages an order's stored record proves, for an order no longer in the ring. A stage's
/// duration is unknown here; the record has only the times it reached each status.
pub fn derived_trace(record: &OrderRecord) -> OrderTrace {
    let mut stages = vec![StageRecord {
        stage: Stage::Create,
        at_ms: record.created.created_at_ms,
        duration_us: None,
    }];
    if let Some(paid_at_ms) = record.paid_at_ms {
        stages.push(StageRecord {
            stage: Stage::Notify,
            at_ms: paid_at_ms,
            duration_us: None,
        });
    }
    let settled_stage = match record.status {
        OrderStatus::Delivered => Some(Stage::Deliver),
        OrderStatus::Expired => Some(Stage::Expire),
        OrderStatus::ManualReview => Some(Stage::ManualReview),
        _ => None,
    };
    if let (Some(stage), Some(at_ms)) = (settled_stage, record.settled_at_ms) {
        stages.push(StageRecord {
            stage,
            at_ms,
            duration_us: None,
        });
    }
    OrderTrace {
        trace_id: record.created.trace_id.clone(),
        stages,
        from_ring: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: usize) -> OrderId {
        OrderId::parse(&format!("o{n}")).unwrap()
    }

    #[test]
    fn ring_evicts_the_oldest_order_first() {
        let traces = Traces::default();
        for n in 0..=TRACE_RING_CAPACITY {
            traces.record(&id(n), "t", Stage::Create, 1, Duration::ZERO);
        }
        assert_eq!(traces.len(), TRACE_RING_CAPACITY);
        assert!(traces.get(&id(0)).is_none());
        assert!(traces.get(&id(TRACE_RING_CAPACITY)).is_some());
    }

    #[test]
    fn stages_per_order_are_bounded() {
        let traces = Traces::default();
        for _ in 0..TRACE_STAGES_PER_ORDER_MAX + 3 {
            traces.record(&id(1), "t", Stage::Push, 1, Duration::from_micros(5));
        }
        let trace = traces.get(&id(1)).unwrap();
        assert_eq!(trace.stages.len(), TRACE_STAGES_PER_ORDER_MAX);
        assert_eq!(trace.trace_id, "t");
        assert_eq!(trace.stages[0].duration_us, Some(5));
    }

    /// Stages recorded together land in order, after those before them, within the bound.
    #[test]
    fn stages_recorded_together_keep_their_order_and_the_bound() {
        let traces = Traces::default();
        let stage = |stage, at_ms| (stage, at_ms, Duration::from_micros(at_ms));
        traces.record(&id(1), "t", Stage::Create, 1, Duration::from_micros(1));
        traces.record_all(
            &id(1),
            "other",
            &[stage(Stage::Reserve, 2), stage(Stage::Commit, 3)],
        );
        let trace = traces.get(&id(1)).unwrap();
        let seen: Vec<_> = trace.stages.iter().map(|s| (s.stage, s.at_ms)).collect();
        assert_eq!(
            seen,
            [(Stage::Create, 1), (Stage::Reserve, 2), (Stage::Commit, 3)]
        );
        assert_eq!(trace.trace_id, "t", "the first record names the trace");
        let many = vec![stage(Stage::Push, 9); TRACE_STAGES_PER_ORDER_MAX];
        traces.record_all(&id(1), "t", &many);
        assert_eq!(
            traces.get(&id(1)).unwrap().stages.len(),
            TRACE_STAGES_PER_ORDER_MAX
        );
        assert_eq!(traces.len(), 1);
    }
}
