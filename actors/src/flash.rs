//! Waiting rooms: new buyers of a product get a ticket in its waiting room (engine
//! `waiting_room`) instead of an order when an operator has marked the product as on flash
//! sale, or automatically while the order pipeline is saturated (engine `overload`: too many
//! creations in flight, or too slow). A ticker admits tickets first-in first-out (VIP lane
//! first for its share) into the room the pipeline has left, and a flash-sale room at most
//! at its configured rate; an admitted ticket becomes an order exactly as a direct request
//! would, or a definitive sold-out once the stock is gone (nobody waits for keys that no
//! longer exist). Buyers watch their ticket live: position and estimated wait, then the
//! outcome.
//!
//! Invariants: while a product has a room, every new buyer of it queues (nobody overtakes
//! the queue), once the request's shape and the risk rules have let it through (a refusal
//! comes at once, with its own code, not after the wait); an automatic room closes only once it is empty and the pipeline is calm;
//! tickets are bounded per room and in all (`TICKETS_MAX`), a full room answers 503.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::events::NewOrder;
use engine::overload::{Overload, OverloadSettings, Transition, Window};
use engine::waiting_room::{Lane, Pace, RoomFull, TicketId, WaitingRoom};
use engine::{Rejection, Sku};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::{OrderRequest, Shop, ShopError};

/// How often the waiting rooms admit.
pub const ADMIT_TICK_MS: u64 = 100;
/// Positions are pushed to watchers every this many ticks.
pub const POSITION_PUSH_TICKS: u64 = 10;
/// Settled tickets kept for late watchers; the oldest go first.
pub const SETTLED_TICKETS_MAX: usize = 100_000;
/// Frames a ticket's watcher may lag before it is dropped (it reconnects).
pub const TICKET_WATCH_FRAMES: usize = 8;
/// Tickets held at once, waiting and settled, across all rooms.
pub const TICKETS_MAX: usize = 300_000;
/// How often, and how many times, an admitted ticket looks again for the order of a first
/// request with its idempotency key that is still in progress (gateway calls time out
/// after 3 s, so 10 s covers one).
const IN_PROGRESS_POLL_MS: u64 = 50;
const IN_PROGRESS_WAITS_MAX: u32 = 200;

#[derive(Clone, Debug)]
pub struct FlashSettings {
    pub admit_per_second: u32,
    pub vip_share_percent: u32,
    /// When the order pipeline counts as saturated (automatic waiting rooms).
    pub overload: OverloadSettings,
}

impl Default for FlashSettings {
    fn default() -> Self {
        Self {
            admit_per_second: 500,
            vip_share_percent: 20,
            overload: OverloadSettings::default(),
        }
    }
}

#[derive(Clone, Debug)]
pub enum TicketUpdate {
    Queued {
        position: u64,
        estimated_wait_secs: u64,
    },
    Admitted(Arc<NewOrder>),
    SoldOut,
    Failed(String),
}

impl TicketUpdate {
    pub fn is_final(&self) -> bool {
        !matches!(self, TicketUpdate::Queued { .. })
    }
}

struct Ticket {
    sku: Sku,
    lane: Lane,
    number: u64,
    /// The digest of the ticket's token (`engine::ids::token_digest`), never the token.
    token: String,
    /// The request while the ticket waits; taken when it is admitted.
    request: Option<OrderRequest>,
    watchers: Vec<mpsc::Sender<TicketUpdate>>,
    outcome: Option<TicketUpdate>,
    /// The request's idempotency key and fingerprint, while the ticket is unsettled.
    idempotency: Option<(String, u64)>,
}

/// Every ticket, and the idempotency keys of the unsettled ones.
#[derive(Default)]
struct Tickets {
    by_id: HashMap<TicketId, Ticket>,
    /// A retry with the key of a ticket still queued (or being created) gets that ticket,
    /// not a second place in the queue.
    pending_keys: HashMap<String, TicketId>,
}

struct Room {
    queue: WaitingRoom,
    /// Opened by overload rather than by an operator; closes itself once empty and calm.
    automatic: bool,
}

/// The order pipeline's load: creations in flight, and what finished in the current
/// measurement window.
///
/// Lock order across this module: `tickets`, then `rooms`, then `overload`.
struct Pipeline {
    in_flight: AtomicU64,
    /// Mirrors `overload.is_saturated()` for the lock-free fast path.
    saturated: AtomicBool,
    window_completed: AtomicU64,
    window_latency_samples: AtomicU64,
    window_latency_us: AtomicU64,
    overload: Mutex<Overload>,
}

pub struct FlashSales {
    rooms: Mutex<HashMap<Sku, Room>>,
    /// `rooms.len()`, for the lock-free fast path.
    rooms_open: AtomicUsize,
    tickets: Mutex<Tickets>,
    settled: Mutex<std::collections::VecDeque<TicketId>>,
    /// Ticket numbers, unique across rooms.
    next_ticket: AtomicU64,
    pipeline: Pipeline,
}

impl FlashSales {
    /// Closes every room and forgets every ticket (this node stopped leading): watchers'
    /// feeds end, and a queue page finds its ticket gone (nothing was charged).
    pub fn close_all(&self) {
        let mut tickets = self.tickets.lock();
        let mut rooms = self.rooms.lock();
        tickets.by_id.clear();
        tickets.pending_keys.clear();
        rooms.clear();
        self.rooms_open.store(0, Ordering::Release);
        self.settled.lock().clear();
    }

    pub fn new(overload: OverloadSettings) -> Self {
        Self {
            rooms: Mutex::default(),
            rooms_open: AtomicUsize::new(0),
            tickets: Mutex::default(),
            settled: Mutex::default(),
            next_ticket: AtomicU64::new(1),
            pipeline: Pipeline {
                in_flight: AtomicU64::new(0),
                saturated: AtomicBool::new(false),
                window_completed: AtomicU64::new(0),
                window_latency_samples: AtomicU64::new(0),
                window_latency_us: AtomicU64::new(0),
                overload: Mutex::new(Overload::new(overload)),
            },
        }
    }
}

/// An order creation in flight; counted out when dropped.
pub struct InFlight<'a> {
    pipeline: &'a Pipeline,
}

impl InFlight<'_> {
    /// Records the time this creation spent in the pipeline proper (reserving its keys and
    /// committing), the latency the overload detector watches.
    pub(crate) fn measured(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let pipeline = self.pipeline;
        pipeline
            .window_latency_samples
            .fetch_add(1, Ordering::Relaxed);
        pipeline
            .window_latency_us
            .fetch_add(micros, Ordering::Relaxed);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let pipeline = self.pipeline;
        pipeline.in_flight.fetch_sub(1, Ordering::AcqRel);
        pipeline.window_completed.fetch_add(1, Ordering::Relaxed);
    }
}

/// The pipeline as operators see it.
pub struct PipelineView {
    pub saturated: bool,
    pub in_flight: u64,
    pub sustained_per_second: u64,
    pub settings: OverloadSettings,
    /// (sku, automatic, tickets waiting) per open room.
    pub rooms: Vec<(Sku, bool, usize)>,
}

/// What a queued buyer is told at once.
pub struct Queued {
    pub ticket: TicketId,
    pub token: String,
    pub position: u64,
    pub estimated_wait_secs: u64,
}

fn wait_secs(position: u64, per_second: u64) -> u64 {
    position.div_ceil(per_second.max(1))
}

fn record(transition: Option<Transition>, in_flight: u64) {
    match transition {
        Some(Transition::Entered) => {
            metrics::counter!("panshi_overload_episodes_total").increment(1);
            metrics::gauge!("panshi_overload_saturated").set(1.0);
            tracing::warn!(in_flight, "order pipeline saturated: new buyers queue");
        }
        Some(Transition::Left) => {
            metrics::gauge!("panshi_overload_saturated").set(0.0);
            tracing::info!(in_flight, "order pipeline calm again");
        }
        None => {}
    }
}

impl Shop {
    pub fn set_flash_sale(&self, sku: &Sku, enabled: bool) -> Result<(), ShopError> {
        self.products().stock(sku)?;
        let flash = self.flash();
        let mut rooms = flash.rooms.lock();
        if enabled {
            self.open_room(&mut rooms, sku).automatic = false;
        } else if rooms.get(sku).is_some_and(|room| !room.automatic) {
            // Ending a sale admits nobody by surprise: the waiting are told to buy again.
            let mut room = rooms.remove(sku).expect("present");
            flash.rooms_open.store(rooms.len(), Ordering::Release);
            drop(rooms);
            for ticket in room.queue.drain() {
                self.settle_ticket(
                    ticket,
                    TicketUpdate::Failed("the flash sale ended; order again".into()),
                );
            }
        }
        Ok(())
    }

    pub fn is_flash_sale(&self, sku: &Sku) -> bool {
        self.flash()
            .rooms
            .lock()
            .get(sku)
            .is_some_and(|room| !room.automatic)
    }

    fn open_room<'r>(&self, rooms: &'r mut HashMap<Sku, Room>, sku: &Sku) -> &'r mut Room {
        let vip_share_percent = self.settings().flash.vip_share_percent;
        rooms.entry(sku.clone()).or_insert_with(|| Room {
            queue: WaitingRoom::new(vip_share_percent),
            automatic: true,
        });
        // Counted after the insert; read without the lock only as a hint.
        let open = rooms.len();
        self.flash().rooms_open.store(open, Ordering::Release);
        rooms.get_mut(sku).expect("just inserted")
    }

    /// Counts an order creation in flight until the guard drops.
    pub(crate) fn pipeline_enter(&self) -> InFlight<'_> {
        let pipeline = &self.flash().pipeline;
        pipeline.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight { pipeline }
    }

    pub fn pipeline(&self) -> PipelineView {
        let flash = self.flash();
        // Lock order: rooms before overload; never both here.
        let mut rooms: Vec<_> = flash
            .rooms
            .lock()
            .iter()
            .map(|(sku, room)| (sku.clone(), room.automatic, room.queue.waiting_count()))
            .collect();
        rooms.sort_by(|a, b| a.0.cmp(&b.0));
        let overload = flash.pipeline.overload.lock();
        PipelineView {
            saturated: overload.is_saturated(),
            in_flight: flash.pipeline.in_flight.load(Ordering::Acquire),
            sustained_per_second: overload.sustained_per_second(),
            settings: overload.settings(),
            rooms,
        }
    }

    /// A new buyer's way in: a ticket when the product has a waiting room (flash sale or
    /// overload) or the pipeline is saturated now, else the request back to be served.
    pub fn queue_if_needed(
        &self,
        request: OrderRequest,
    ) -> Result<Result<Queued, OrderRequest>, ShopError> {
        let flash = self.flash();
        let pipeline = &flash.pipeline;
        let in_flight = pipeline.in_flight.load(Ordering::Acquire);
        let high = u64::from(self.settings().flash.overload.inflight_high);
        if flash.rooms_open.load(Ordering::Acquire) == 0
            && !pipeline.saturated.load(Ordering::Acquire)
            && in_flight < high
        {
            return Ok(Err(request));
        }
        let has_room = flash.rooms.lock().contains_key(&request.sku);
        if !has_room {
            let (queue, transition) = {
                let mut overload = pipeline.overload.lock();
                let decision = overload.on_request(self.now_ms(), in_flight);
                pipeline
                    .saturated
                    .store(overload.is_saturated(), Ordering::Release);
                decision
            };
            record(transition, in_flight);
            if !queue {
                return Ok(Err(request));
            }
        }
        // A retry of an order already made gets that order, not a place in the queue.
        if let Some(key) = &request.idempotency_key {
            crate::check_idempotency_key(key)?;
            if self.idempotent_first(key).is_some() {
                return Ok(Err(request));
            }
        }
        self.check_request(&request)?;
        self.screen_risk(&request)?;
        // Nobody queues for keys that are gone for good (none left, none held unpaid).
        let stock = self.products().stock(&request.sku)?;
        if stock.available == 0 && stock.reserved == 0 {
            return Err(Rejection::SoldOut.into());
        }
        self.join_queue(request).map(Ok)
    }

    /// Puts a buyer in the product's waiting room, opening an automatic one if none is.
    fn join_queue(&self, request: OrderRequest) -> Result<Queued, ShopError> {
        // The VIP lane is for holders of an invite the operator signed (`vip_invite`),
        // checked at the edge; a buyer's own contact proves nothing.
        let lane = if request.vip { Lane::Vip } else { Lane::Public };
        // The ticket's entry exists before the ticker can see it in the room: `tickets` is
        // held across the join (lock order: tickets, then rooms).
        let mut tickets = self.flash().tickets.lock();
        if let Some(key) = &request.idempotency_key {
            if let Some(first) = tickets.pending_keys.get(key) {
                return self.requeued(&tickets.by_id[first], *first, request.fingerprint);
            }
        }
        if tickets.by_id.len() >= TICKETS_MAX {
            return Err(ShopError::Busy);
        }
        let (ticket, place, per_second) = {
            let mut rooms = self.flash().rooms.lock();
            let room = self.open_room(&mut rooms, &request.sku);
            let ticket = TicketId(self.flash().next_ticket.fetch_add(1, Ordering::Relaxed));
            let place = room
                .queue
                .join(lane, ticket)
                .map_err(|RoomFull| ShopError::Busy)?;
            (ticket, place, self.admission_rate(room.automatic))
        };
        let token = self.ticket_token(ticket);
        let idempotency = request
            .idempotency_key
            .clone()
            .map(|key| (key, request.fingerprint));
        if let Some((key, _)) = &idempotency {
            tickets.pending_keys.insert(key.clone(), ticket);
        }
        let entry = Ticket {
            idempotency,
            sku: request.sku.clone(),
            lane,
            number: place.number,
            token: engine::ids::token_digest(&token),
            request: Some(request),
            watchers: Vec::new(),
            outcome: None,
        };
        tickets.by_id.insert(ticket, entry);
        drop(tickets);
        let position = place.position;
        metrics::counter!("panshi_queue_tickets_total", "lane" => if lane == Lane::Vip { "vip" } else { "public" }).increment(1);
        let estimated_wait_secs = wait_secs(position, per_second);
        Ok(Queued {
            ticket,
            token,
            position,
            estimated_wait_secs,
        })
    }

    /// The answer to a retry of a queued request: its ticket as it stands, or a mismatch
    /// when the key came with another request.
    fn requeued(
        &self,
        entry: &Ticket,
        ticket: TicketId,
        fingerprint: u64,
    ) -> Result<Queued, ShopError> {
        if entry.idempotency.as_ref().map(|(_, f)| *f) != Some(fingerprint) {
            return Err(ShopError::IdempotencyMismatch);
        }
        let (position, estimated_wait_secs) = match self.ticket_state(entry) {
            TicketUpdate::Queued {
                position,
                estimated_wait_secs,
            } => (position, estimated_wait_secs),
            // Unreachable while the key is pending (it goes when the ticket settles).
            _ => (0, 0),
        };
        Ok(Queued {
            ticket,
            token: self.ticket_token(ticket),
            position,
            estimated_wait_secs,
        })
    }

    /// A live feed of a ticket: its state now, then every change until its outcome.
    pub fn watch_ticket(
        &self,
        ticket: TicketId,
        token: &str,
    ) -> Result<mpsc::Receiver<TicketUpdate>, ShopError> {
        let (sender, receiver) = mpsc::channel(TICKET_WATCH_FRAMES);
        let mut tickets = self.flash().tickets.lock();
        let entry = tickets
            .by_id
            .get_mut(&ticket)
            .ok_or(Rejection::UnknownOrder)?;
        if !engine::ids::token_matches(&entry.token, token) {
            return Err(Rejection::UnknownOrder.into());
        }
        let now = self.ticket_state(entry);
        let _ = sender.try_send(now.clone());
        if !now.is_final() {
            entry.watchers.push(sender);
        }
        Ok(receiver)
    }

    /// A ticket's state now, without watching it (a page that renders it once).
    pub fn ticket_now(&self, ticket: TicketId, token: &str) -> Result<TicketUpdate, ShopError> {
        let tickets = self.flash().tickets.lock();
        let entry = tickets.by_id.get(&ticket).ok_or(Rejection::UnknownOrder)?;
        if !engine::ids::token_matches(&entry.token, token) {
            return Err(Rejection::UnknownOrder.into());
        }
        Ok(self.ticket_state(entry))
    }

    /// The outcome, or the position and estimated wait (called under `tickets`; takes
    /// `rooms`, then `overload`, in the module's lock order).
    fn ticket_state(&self, entry: &Ticket) -> TicketUpdate {
        if let Some(outcome) = &entry.outcome {
            return outcome.clone();
        }
        // Admitted, its order being created: at the front, whatever room is open now (its
        // number belongs to the room it joined, which may have closed since).
        if entry.request.is_none() {
            return TicketUpdate::Queued {
                position: 0,
                estimated_wait_secs: 0,
            };
        }
        let (position, per_second) =
            self.flash()
                .rooms
                .lock()
                .get(&entry.sku)
                .map_or((0, 1), |room| {
                    (
                        room.queue.position(entry.lane, entry.number),
                        self.admission_rate(room.automatic),
                    )
                });
        TicketUpdate::Queued {
            position,
            estimated_wait_secs: wait_secs(position, per_second),
        }
    }

    fn settle_ticket(&self, ticket: TicketId, outcome: TicketUpdate) {
        let mut tickets = self.flash().tickets.lock();
        let Tickets {
            by_id,
            pending_keys,
        } = &mut *tickets;
        if let Some(entry) = by_id.get_mut(&ticket) {
            for watcher in entry.watchers.drain(..) {
                let _ = watcher.try_send(outcome.clone());
            }
            entry.request = None;
            entry.outcome = Some(outcome);
            // From now on a retry finds the order itself (or starts afresh after a refusal).
            if let Some((key, _)) = entry.idempotency.take() {
                pending_keys.remove(&key);
            }
        }
        let mut settled = self.flash().settled.lock();
        settled.push_back(ticket);
        while settled.len() > SETTLED_TICKETS_MAX {
            if let Some(old) = settled.pop_front() {
                by_id.remove(&old);
            }
        }
    }

    /// Starts the ticker that measures the pipeline and admits from every waiting room.
    /// Call inside an actix system.
    /// Starts the admission ticker of activation `generation`; it ends when the shop is
    /// deactivated (or activated again).
    pub fn start_admissions(&self, generation: u64) {
        let shop = self.clone();
        actix::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(ADMIT_TICK_MS));
            let mut tick = 0u64;
            let mut last = Instant::now();
            let mut pace = Pace::default();
            loop {
                ticks.tick().await;
                if shop.generation() != generation {
                    return;
                }
                tick += 1;
                let length_ms = u64::try_from(last.elapsed().as_millis()).unwrap_or(u64::MAX);
                last = Instant::now();
                shop.measure_window(length_ms);
                let per_tick = pace.tick(shop.settings().flash.admit_per_second, ADMIT_TICK_MS);
                shop.admit_tick(tick, per_tick, tick.is_multiple_of(POSITION_PUSH_TICKS));
            }
        });
    }

    /// Closes the measurement window: feeds it to the overload detector.
    fn measure_window(&self, length_ms: u64) {
        let pipeline = &self.flash().pipeline;
        let window = Window {
            completed: pipeline.window_completed.swap(0, Ordering::Relaxed),
            latency_samples: pipeline.window_latency_samples.swap(0, Ordering::Relaxed),
            latency_sum_us: pipeline.window_latency_us.swap(0, Ordering::Relaxed),
            length_ms,
        };
        let in_flight = pipeline.in_flight.load(Ordering::Acquire);
        let mut overload = pipeline.overload.lock();
        let transition = overload.on_window(self.now_ms(), in_flight, window);
        pipeline
            .saturated
            .store(overload.is_saturated(), Ordering::Release);
        drop(overload);
        record(transition, in_flight);
        metrics::gauge!("panshi_pipeline_in_flight").set(in_flight as f64);
    }

    /// Tickets admitted per second from a room, for the estimated wait: what the pipeline
    /// sustains for an automatic room, the configured rate for a flash sale (before a sale
    /// the measured rate reflects demand, not capacity).
    fn admission_rate(&self, automatic: bool) -> u64 {
        if automatic {
            let sustained = self.flash().pipeline.overload.lock().sustained_per_second();
            sustained.max(1)
        } else {
            u64::from(self.settings().flash.admit_per_second)
        }
    }

    /// Admits from every room: a flash-sale room at most `per_tick`, all of them within
    /// the room the pipeline has left.
    fn admit_tick(&self, tick: u64, per_tick: usize, push_positions: bool) {
        let pipeline = &self.flash().pipeline;
        let mut budget = {
            let in_flight = pipeline.in_flight.load(Ordering::Acquire);
            pipeline.overload.lock().admit_budget(in_flight) as usize
        };
        let mut skus: Vec<Sku> = self.flash().rooms.lock().keys().cloned().collect();
        skus.sort();
        // Rooms take turns at going first, so one product cannot starve the others.
        if !skus.is_empty() {
            let start = (tick as usize) % skus.len();
            skus.rotate_left(start);
        }
        let calm = !pipeline.saturated.load(Ordering::Acquire);
        for sku in skus {
            let gone = self
                .products()
                .stock(&sku)
                .map_or(true, |s| s.available == 0 && s.reserved == 0);
            let admitted = {
                let mut rooms = self.flash().rooms.lock();
                let Some(room) = rooms.get_mut(&sku) else {
                    continue;
                };
                let admitted = if gone {
                    room.queue.drain()
                } else {
                    let quota = if room.automatic {
                        budget
                    } else {
                        budget.min(per_tick)
                    };
                    room.queue.admit(quota)
                };
                // Closed only on a tick that admitted nobody from it: the last admitted are
                // still to start their creations, and a newcomer must not overtake them.
                if room.automatic && calm && admitted.is_empty() && room.queue.waiting_count() == 0
                {
                    rooms.remove(&sku);
                    self.flash()
                        .rooms_open
                        .store(rooms.len(), Ordering::Release);
                }
                admitted
            };
            for ticket in admitted {
                if gone {
                    self.settle_ticket(ticket, TicketUpdate::SoldOut);
                } else {
                    budget = budget.saturating_sub(1);
                    self.admit_ticket(ticket);
                }
            }
        }
        if push_positions {
            self.push_positions();
        }
    }

    fn admit_ticket(&self, ticket: TicketId) {
        let request = self
            .flash()
            .tickets
            .lock()
            .by_id
            .get_mut(&ticket)
            .and_then(|t| t.request.take());
        let Some(request) = request else { return };
        let shop = self.clone();
        actix::spawn(async move {
            let outcome = match shop.create_admitted(request).await {
                Ok(order) => TicketUpdate::Admitted(order),
                Err(ShopError::Rejected(Rejection::SoldOut)) => TicketUpdate::SoldOut,
                // The buyer reads this: no storage detail, which goes to the log.
                Err(ShopError::Storage(error)) => {
                    tracing::error!(%error, "an admitted ticket's order could not be stored");
                    TicketUpdate::Failed("the order could not be stored; please buy again".into())
                }
                Err(error) => TicketUpdate::Failed(error.to_string()),
            };
            shop.settle_ticket(ticket, outcome);
        });
    }

    /// `create_order` for an admitted ticket. When the first request with the same
    /// idempotency key is still being served directly (it came before the room opened), the
    /// ticket waits for it and gets its order rather than failing with "in progress".
    async fn create_admitted(&self, mut request: OrderRequest) -> Result<Arc<NewOrder>, ShopError> {
        let mut waits = 0;
        loop {
            let retry = request.idempotency_key.is_some().then(|| request.clone());
            match self.create_order(request).await {
                Err(ShopError::InProgress) if waits < IN_PROGRESS_WAITS_MAX => {
                    request = retry.expect("only a keyed request is in progress");
                    waits += 1;
                    tokio::time::sleep(Duration::from_millis(IN_PROGRESS_POLL_MS)).await;
                }
                other => return other,
            }
        }
    }

    fn push_positions(&self) {
        let rates = [self.admission_rate(false), self.admission_rate(true)];
        // Lock order: tickets, then rooms.
        let mut tickets = self.flash().tickets.lock();
        let rooms = self.flash().rooms.lock();
        for entry in tickets
            .by_id
            .values_mut()
            .filter(|t| t.request.is_some() && !t.watchers.is_empty())
        {
            let Some(room) = rooms.get(&entry.sku) else {
                continue;
            };
            let position = room.queue.position(entry.lane, entry.number);
            let update = TicketUpdate::Queued {
                position,
                estimated_wait_secs: wait_secs(position, rates[usize::from(room.automatic)]),
            };
            entry
                .watchers
                .retain(|w| w.try_send(update.clone()).is_ok());
        }
    }
}
