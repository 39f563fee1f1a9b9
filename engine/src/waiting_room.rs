//! The virtual waiting room of a flash sale: buyers take tickets in two lanes (public and
//! VIP) and are admitted first-in first-out, a number per tick, with a reserved share of
//! each tick's admissions for the VIP lane so that it keeps moving while the public queue
//! is long. Pure: the caller decides the rate and does the admitting.
//!
//! A ticket's position is O(1): each lane numbers its tickets, and the position is the
//! ticket's number minus the lane's admitted count.

use std::collections::VecDeque;

/// Most tickets waiting at once; a full room refuses new buyers at once (503).
pub const TICKETS_WAITING_MAX: usize = 200_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    Public,
    Vip,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TicketId(pub u64);

#[derive(Debug, PartialEq, Eq)]
pub struct RoomFull;

/// Where a ticket joined: its number in its lane (what `position` takes) and its position
/// then (1 = next).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub number: u64,
    pub position: u64,
}

#[derive(Default, Debug)]
struct Queue {
    waiting: VecDeque<(TicketId, u64)>,
    joined: u64,
    admitted: u64,
}

#[derive(Debug)]
pub struct WaitingRoom {
    public: Queue,
    vip: Queue,
    /// Share of each tick's admissions reserved for the VIP lane, in percent.
    vip_share_percent: u32,
}

impl WaitingRoom {
    pub fn new(vip_share_percent: u32) -> Self {
        assert!(vip_share_percent <= 100);
        Self {
            public: Queue::default(),
            vip: Queue::default(),
            vip_share_percent,
        }
    }

    fn queue(&mut self, lane: Lane) -> &mut Queue {
        match lane {
            Lane::Public => &mut self.public,
            Lane::Vip => &mut self.vip,
        }
    }

    pub fn waiting_count(&self) -> usize {
        self.public.waiting.len() + self.vip.waiting.len()
    }

    /// Queues `ticket` (numbered by the caller, unique across rooms).
    pub fn join(&mut self, lane: Lane, ticket: TicketId) -> Result<Place, RoomFull> {
        if self.waiting_count() >= TICKETS_WAITING_MAX {
            return Err(RoomFull);
        }
        let queue = self.queue(lane);
        queue.joined += 1;
        let number = queue.joined;
        queue.waiting.push_back((ticket, number));
        Ok(Place {
            number,
            position: number - queue.admitted,
        })
    }

    /// A waiting ticket's position in its lane, given the number `join` gave it.
    pub fn position(&self, lane: Lane, number: u64) -> u64 {
        let queue = match lane {
            Lane::Public => &self.public,
            Lane::Vip => &self.vip,
        };
        number.saturating_sub(queue.admitted)
    }

    fn take(&mut self, lane: Lane, count: usize, into: &mut Vec<TicketId>) {
        let queue = self.queue(lane);
        for _ in 0..count {
            let Some((ticket, _)) = queue.waiting.pop_front() else {
                return;
            };
            queue.admitted += 1;
            into.push(ticket);
        }
    }

    /// Admits up to `count` tickets: the VIP share first, then the public lane, and any
    /// share one lane cannot use goes to the other.
    pub fn admit(&mut self, count: usize) -> Vec<TicketId> {
        let count = count.min(self.waiting_count());
        let vip_quota = (count * self.vip_share_percent as usize).div_ceil(100);
        let mut admitted = Vec::with_capacity(count);
        self.take(Lane::Vip, vip_quota, &mut admitted);
        let rest = count - admitted.len();
        self.take(Lane::Public, rest, &mut admitted);
        let rest = count - admitted.len();
        self.take(Lane::Vip, rest, &mut admitted);
        admitted
    }

    /// Everyone still waiting, removed (a sale that sold out answers them all at once).
    pub fn drain(&mut self) -> Vec<TicketId> {
        let mut all = Vec::with_capacity(self.waiting_count());
        let (vip, public) = (self.vip.waiting.len(), self.public.waiting.len());
        self.take(Lane::Vip, vip, &mut all);
        self.take(Lane::Public, public, &mut all);
        all
    }
}

/// Admissions per tick at a rate per second. Fractions are carried between ticks, so a
/// rate below one per tick is kept exactly rather than rounded up; an unused admission is
/// not carried (an empty room does not save up a burst).
#[derive(Clone, Copy, Debug, Default)]
pub struct Pace {
    /// Thousandths of an admission.
    credit_milli: u64,
}

impl Pace {
    /// The admissions of one tick of `tick_ms` at `per_second`.
    pub fn tick(&mut self, per_second: u32, tick_ms: u64) -> usize {
        self.credit_milli = self
            .credit_milli
            .saturating_add(u64::from(per_second).saturating_mul(tick_ms));
        let whole = self.credit_milli / 1_000;
        self.credit_milli %= 1_000;
        usize::try_from(whole).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_keeps_rates_below_one_per_tick_exactly() {
        let ticks = |per_second, count| {
            let mut pace = Pace::default();
            (0..count)
                .map(|_| pace.tick(per_second, 100))
                .collect::<Vec<_>>()
        };
        assert_eq!(ticks(5, 10), [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
        assert_eq!(ticks(1, 20).iter().sum::<usize>(), 2);
        assert_eq!(ticks(15, 10).iter().sum::<usize>(), 15);
        assert!(ticks(15, 10).iter().all(|&n| n == 1 || n == 2));
        assert_eq!(ticks(500, 3), [50, 50, 50]);
        assert_eq!(ticks(0, 5), [0; 5]);
        // Absurd settings saturate rather than overflow.
        assert!(Pace::default().tick(u32::MAX, u64::MAX) > 0);
    }

    /// Joins with the next ticket number; returns the ticket and its position.
    fn join(room: &mut WaitingRoom, lane: Lane) -> Result<(TicketId, u64), RoomFull> {
        let ticket =
            TicketId(room.waiting_count() as u64 + room.public.admitted + room.vip.admitted + 1);
        room.join(lane, ticket)
            .map(|place| (ticket, place.position))
    }

    #[test]
    fn the_queue_admits_in_order_and_positions_advance() {
        let mut room = WaitingRoom::new(0);
        let tickets: Vec<_> = (0..5)
            .map(|_| join(&mut room, Lane::Public).unwrap())
            .collect();
        assert_eq!(
            tickets.iter().map(|t| t.1).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(room.admit(2), [tickets[0].0, tickets[1].0]);
        assert_eq!(room.position(Lane::Public, 3), 1, "the third is next now");
        assert_eq!(room.admit(10), [tickets[2].0, tickets[3].0, tickets[4].0]);
        assert!(room.admit(1).is_empty());
    }

    #[test]
    fn the_vip_lane_keeps_its_share_while_the_public_queue_is_long() {
        let mut room = WaitingRoom::new(20);
        for _ in 0..1000 {
            join(&mut room, Lane::Public).unwrap();
        }
        let vips: Vec<_> = (0..10)
            .map(|_| join(&mut room, Lane::Vip).unwrap().0)
            .collect();
        let first = room.admit(10);
        assert_eq!(&first[..2], &vips[..2], "2 of every 10 admissions are VIP");
        let mut admitted_vips = 2;
        while admitted_vips < 10 {
            admitted_vips += room.admit(10).iter().filter(|t| vips.contains(t)).count();
        }
        assert_eq!(
            room.waiting_count(),
            1000 - 40,
            "the VIP lane drained in 5 ticks"
        );
    }

    #[test]
    fn an_unused_share_goes_to_the_other_lane_and_the_room_is_bounded() {
        let mut room = WaitingRoom::new(50);
        let vip = join(&mut room, Lane::Vip).unwrap().0;
        let public: Vec<_> = (0..3)
            .map(|_| join(&mut room, Lane::Public).unwrap().0)
            .collect();
        assert_eq!(room.admit(4), [vip, public[0], public[1], public[2]]);
        let mut room = WaitingRoom::new(0);
        for _ in 0..TICKETS_WAITING_MAX {
            join(&mut room, Lane::Public).unwrap();
        }
        assert_eq!(join(&mut room, Lane::Vip), Err(RoomFull));
        assert_eq!(room.drain().len(), TICKETS_WAITING_MAX);
    }

    #[test]
    fn a_late_joiner_keeps_its_number_and_a_huge_count_admits_only_the_waiting() {
        let mut room = WaitingRoom::new(0);
        for _ in 0..40 {
            join(&mut room, Lane::Public).unwrap();
        }
        assert_eq!(room.admit(11).len(), 11);
        let place = room.join(Lane::Public, TicketId(1_000)).unwrap();
        assert_eq!(
            place,
            Place {
                number: 41,
                position: 30
            }
        );
        assert_eq!(room.position(Lane::Public, place.number), 30);
        room.admit(10);
        assert_eq!(room.position(Lane::Public, place.number), 20);
        assert_eq!(room.admit(usize::MAX).len(), 20);
    }
}
