//! The steps of a purchase over one keep-alive connection, each timed and recorded: a
//! buyer creates an order, the gateway notifies payment, the buyer looks the order up.
//! The `Ledger` keeps what the final check needs to know about every order.

use std::time::{Duration, Instant};

use super::api::{parse_created, parse_lookup, parse_queued, Lookup, Order, Shop, Ticket};
use super::http::{Connection, Retry};
use super::stats::{lock, Endpoint, ErrorKind, SharedStats};

/// Notify attempts within a purchase; a gateway retries like this, then later (the final
/// reconciliation plays that part).
pub const NOTIFY_ATTEMPTS_MAX: u32 = 3;
/// Pause between notify attempts.
pub const NOTIFY_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What the harness learnt about its orders' payments.
#[derive(Default)]
pub struct Ledger {
    /// Orders whose notify was answered `success`.
    pub paid: Vec<Order>,
    /// Orders notified without a definite answer; the final reconciliation retries them.
    pub in_doubt: Vec<Order>,
    /// Notifies refused with `fail`: those orders were not paid.
    pub refused: u64,
}

impl Ledger {
    pub fn merge(&mut self, other: Ledger) {
        self.paid.extend(other.paid);
        self.in_doubt.extend(other.in_doubt);
        self.refused += other.refused;
    }

    pub fn paid_quantity(&self) -> u64 {
        self.paid.iter().map(|order| order.quantity).sum()
    }
}

pub enum Created {
    Order(Order),
    /// A waiting-room ticket (202), in a flash sale.
    Queued(Ticket),
    SoldOut,
    Failed(ErrorKind),
}

pub enum Payment {
    Paid,
    Refused,
    InDoubt,
}

/// Creates an order. A 409 is a sold-out answer and a 202 a waiting-room ticket: expected
/// in a flash sale (recorded with their latency), errors otherwise.
pub async fn create(
    connection: &mut Connection,
    request: &[u8],
    stats: &SharedStats,
    sold_out_expected: bool,
) -> Created {
    let sent = Instant::now();
    let result = connection.send(request, Retry::Never).await;
    let latency = sent.elapsed();
    let outcome = match result {
        Ok(answer) if answer.status == 201 => match parse_created(answer.body, 1) {
            Some(order) => Created::Order(order),
            None => Created::Failed(ErrorKind::UnexpectedBody),
        },
        Ok(answer) if answer.status == 409 && sold_out_expected => Created::SoldOut,
        Ok(answer) if answer.status == 202 && sold_out_expected => {
            match parse_queued(answer.body) {
                Some(ticket) => Created::Queued(ticket),
                None => Created::Failed(ErrorKind::UnexpectedBody),
            }
        }
        Ok(answer) => Created::Failed(ErrorKind::Status(answer.status)),
        Err(error) => Created::Failed(error.kind()),
    };
    let mut stats = lock(stats);
    match &outcome {
        Created::Order(_) => stats.record(Endpoint::Create, latency),
        Created::SoldOut => {
            stats.record(Endpoint::Create, latency);
            stats.note("sold out answers", 1);
        }
        Created::Queued(_) => {
            stats.record(Endpoint::Create, latency);
            stats.note("queued answers (202 with a ticket)", 1);
        }
        Created::Failed(kind) => stats.error(Endpoint::Create, *kind),
    }
    outcome
}

/// Sends the gateway's notify until a definite answer, at most `NOTIFY_ATTEMPTS_MAX` times.
pub async fn pay(
    connection: &mut Connection,
    shop: &Shop,
    order: &Order,
    stats: &SharedStats,
) -> Payment {
    let request = shop.notify_request(order);
    for attempt in 1..=NOTIFY_ATTEMPTS_MAX {
        if attempt > 1 {
            lock(stats).note("notify retries", 1);
            tokio::time::sleep(NOTIFY_RETRY_PAUSE).await;
        }
        let sent = Instant::now();
        let result = connection.send(&request, Retry::OnStaleConnection).await;
        let latency = sent.elapsed();
        let kind = match result {
            Ok(answer) if answer.status == 200 && answer.body == b"success" => {
                lock(stats).record(Endpoint::Notify, latency);
                return Payment::Paid;
            }
            Ok(answer) if answer.status == 400 => {
                lock(stats).error(Endpoint::Notify, ErrorKind::Status(400));
                return Payment::Refused;
            }
            Ok(answer) if answer.status == 200 => ErrorKind::UnexpectedBody,
            Ok(answer) => ErrorKind::Status(answer.status),
            Err(error) => error.kind(),
        };
        lock(stats).error(Endpoint::Notify, kind);
    }
    Payment::InDoubt
}

/// Pays and files the order in the ledger by the answer.
pub async fn pay_and_file(
    connection: &mut Connection,
    shop: &Shop,
    order: Order,
    stats: &SharedStats,
    ledger: &mut Ledger,
) -> bool {
    match pay(connection, shop, &order, stats).await {
        Payment::Paid => {
            ledger.paid.push(order);
            true
        }
        Payment::Refused => {
            ledger.refused += 1;
            false
        }
        Payment::InDoubt => {
            ledger.in_doubt.push(order);
            false
        }
    }
}

/// Looks an order up as its buyer; a paid order should read `delivered` with its keys.
pub async fn lookup(
    connection: &mut Connection,
    shop: &Shop,
    order: &Order,
    stats: &SharedStats,
) -> Option<Lookup> {
    let request = shop.lookup_request(order);
    let sent = Instant::now();
    let result = connection.send(&request, Retry::OnStaleConnection).await;
    let latency = sent.elapsed();
    let outcome = match result {
        Ok(answer) if answer.status == 200 => {
            parse_lookup(answer.body).ok_or(ErrorKind::UnexpectedBody)
        }
        Ok(answer) => Err(ErrorKind::Status(answer.status)),
        Err(error) => Err(error.kind()),
    };
    let mut stats = lock(stats);
    match outcome {
        Ok(view) => {
            stats.record(Endpoint::Lookup, latency);
            if view.status != "delivered" {
                stats.note("lookups not yet delivered", 1);
            }
            Some(view)
        }
        Err(kind) => {
            stats.error(Endpoint::Lookup, kind);
            None
        }
    }
}
