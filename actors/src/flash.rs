//! Flash sales: when an operator marks a product as on flash sale, new buyers get a ticket
//! in the product's waiting room (engine `waiting_room`) instead of an order. A ticker
//! admits tickets first-in first-out at the configured rate (VIP lane first for its share);
//! an admitted ticket becomes an order exactly as a direct request would, or a definitive
//! sold-out once the stock is gone (nobody waits for keys that no longer exist). Buyers
//! watch their ticket live: position and estimated wait, then the outcome.

use std::collections::HashMap;
use std::time::Duration;

use engine::events::NewOrder;
use engine::waiting_room::{Lane, RoomFull, TicketId, WaitingRoom};
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

#[derive(Clone, Debug)]
pub struct FlashSettings {
    pub admit_per_second: u32,
    pub vip_share_percent: u32,
    /// Contacts (lower case) that queue in the VIP lane.
    pub vip_contacts: Vec<String>,
}

impl Default for FlashSettings {
    fn default() -> Self {
        Self {
            admit_per_second: 500,
            vip_share_percent: 20,
            vip_contacts: Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub enum TicketUpdate {
    Queued {
        position: u64,
        estimated_wait_secs: u64,
    },
    Admitted(Box<NewOrder>),
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
    token: String,
    request: Option<OrderRequest>,
    watchers: Vec<mpsc::Sender<TicketUpdate>>,
    outcome: Option<TicketUpdate>,
}

#[derive(Default)]
pub struct FlashSales {
    rooms: Mutex<HashMap<Sku, WaitingRoom>>,
    tickets: Mutex<HashMap<TicketId, Ticket>>,
    settled: Mutex<std::collections::VecDeque<TicketId>>,
}

/// What a queued buyer is told at once.
pub struct Queued {
    pub ticket: TicketId,
    pub token: String,
    pub position: u64,
    pub estimated_wait_secs: u64,
}

fn wait_secs(position: u64, admit_per_second: u32) -> u64 {
    position.div_ceil(u64::from(admit_per_second.max(1)))
}

impl Shop {
    pub fn set_flash_sale(&self, sku: &Sku, enabled: bool) -> Result<(), ShopError> {
        self.stock(sku)?;
        let mut rooms = self.flash().rooms.lock();
        if enabled {
            rooms
                .entry(sku.clone())
                .or_insert_with(|| WaitingRoom::new(self.settings().flash.vip_share_percent));
        } else if let Some(mut room) = rooms.remove(sku) {
            // Ending a sale admits nobody by surprise: the waiting are told to buy again.
            drop(rooms);
            for ticket in room.drain() {
                self.settle_ticket(
                    ticket,
                    TicketUpdate::Failed("the flash sale ended; order again".into()),
                );
            }
        }
        Ok(())
    }

    pub fn is_flash_sale(&self, sku: &Sku) -> bool {
        self.flash().rooms.lock().contains_key(sku)
    }

    /// Puts a buyer in the product's waiting room.
    pub fn join_queue(&self, request: OrderRequest) -> Result<Queued, ShopError> {
        let contact = request.contact.trim().to_lowercase();
        let lane = if self
            .settings()
            .flash
            .vip_contacts
            .iter()
            .any(|c| c.to_lowercase() == contact)
        {
            Lane::Vip
        } else {
            Lane::Public
        };
        let (ticket, position) = {
            let mut rooms = self.flash().rooms.lock();
            let room = rooms
                .get_mut(&request.sku)
                .ok_or(Rejection::InvalidInput("no flash sale for this sku"))?;
            room.join(lane).map_err(|RoomFull| ShopError::Busy)?
        };
        let token = engine::ids::hex128(self.random_u128());
        let entry = Ticket {
            sku: request.sku.clone(),
            lane,
            number: position,
            token: token.clone(),
            request: Some(request),
            watchers: Vec::new(),
            outcome: None,
        };
        self.flash().tickets.lock().insert(ticket, entry);
        metrics::counter!("panshi_queue_tickets_total", "lane" => if lane == Lane::Vip { "vip" } else { "public" }).increment(1);
        let estimated_wait_secs = wait_secs(position, self.settings().flash.admit_per_second);
        Ok(Queued {
            ticket,
            token,
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
        let entry = tickets.get_mut(&ticket).ok_or(Rejection::UnknownOrder)?;
        if !engine::payment::signatures_equal(&entry.token, token) {
            return Err(Rejection::UnknownOrder.into());
        }
        let now = match &entry.outcome {
            Some(outcome) => outcome.clone(),
            None => {
                let position = self
                    .flash()
                    .rooms
                    .lock()
                    .get(&entry.sku)
                    .map_or(0, |r| r.position(entry.lane, entry.number));
                TicketUpdate::Queued {
                    position,
                    estimated_wait_secs: wait_secs(
                        position,
                        self.settings().flash.admit_per_second,
                    ),
                }
            }
        };
        let _ = sender.try_send(now.clone());
        if !now.is_final() {
            entry.watchers.push(sender);
        }
        Ok(receiver)
    }

    fn settle_ticket(&self, ticket: TicketId, outcome: TicketUpdate) {
        let mut tickets = self.flash().tickets.lock();
        if let Some(entry) = tickets.get_mut(&ticket) {
            for watcher in entry.watchers.drain(..) {
                let _ = watcher.try_send(outcome.clone());
            }
            entry.request = None;
            entry.outcome = Some(outcome);
        }
        let mut settled = self.flash().settled.lock();
        settled.push_back(ticket);
        while settled.len() > SETTLED_TICKETS_MAX {
            if let Some(old) = settled.pop_front() {
                tickets.remove(&old);
            }
        }
    }

    /// Starts the ticker that admits from every waiting room. Call inside an actix system.
    pub fn start_admissions(&self) {
        let shop = self.clone();
        actix::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(ADMIT_TICK_MS));
            let mut tick = 0u64;
            loop {
                ticks.tick().await;
                tick += 1;
                shop.admit_tick(tick % POSITION_PUSH_TICKS == 0);
            }
        });
    }

    fn admit_tick(&self, push_positions: bool) {
        let per_tick = (u64::from(self.settings().flash.admit_per_second) * ADMIT_TICK_MS)
            .div_ceil(1000) as usize;
        let skus: Vec<Sku> = self.flash().rooms.lock().keys().cloned().collect();
        for sku in skus {
            let gone = self
                .stock(&sku)
                .map_or(true, |s| s.available == 0 && s.reserved == 0);
            let admitted = {
                let mut rooms = self.flash().rooms.lock();
                let Some(room) = rooms.get_mut(&sku) else {
                    continue;
                };
                if gone {
                    room.drain()
                } else {
                    room.admit(per_tick)
                }
            };
            for ticket in admitted {
                if gone {
                    self.settle_ticket(ticket, TicketUpdate::SoldOut);
                } else {
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
            .get_mut(&ticket)
            .and_then(|t| t.request.take());
        let Some(request) = request else { return };
        let shop = self.clone();
        actix::spawn(async move {
            let outcome = match shop.create_order(request).await {
                Ok(order) => TicketUpdate::Admitted(Box::new(order)),
                Err(ShopError::Rejected(Rejection::SoldOut)) => TicketUpdate::SoldOut,
                Err(error) => TicketUpdate::Failed(error.to_string()),
            };
            shop.settle_ticket(ticket, outcome);
        });
    }

    fn push_positions(&self) {
        let rate = self.settings().flash.admit_per_second;
        let rooms = self.flash().rooms.lock();
        let mut tickets = self.flash().tickets.lock();
        for entry in tickets
            .values_mut()
            .filter(|t| t.outcome.is_none() && !t.watchers.is_empty())
        {
            let Some(room) = rooms.get(&entry.sku) else {
                continue;
            };
            let position = room.position(entry.lane, entry.number);
            let update = TicketUpdate::Queued {
                position,
                estimated_wait_secs: wait_secs(position, rate),
            };
            entry
                .watchers
                .retain(|w| w.try_send(update.clone()).is_ok());
        }
    }
}
