//! A bounded queue whose receiver parks at once when it finds nothing.
//!
//! crossbeam's `recv` spins, then calls `sched_yield` four times, before it parks. The log
//! writer waits once per Raft entry, and on a busy two-core machine those yields were
//! context switches of their own (1.7 an entry, beside the one of parking). The queue is a
//! `VecDeque` under a lock; senders never wait for the receiver, only (`send`, not
//! `try_send`) for room.

use std::collections::VecDeque;

use parking_lot::{Condvar, Mutex};

/// Why `try_send` gave the item back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused<T> {
    Full(T),
    Closed(T),
}

pub(crate) struct Queue<T> {
    inner: Mutex<Inner<T>>,
    /// The receiver waits here for an item.
    filled: Condvar,
    /// Senders wait here for room.
    drained: Condvar,
    capacity: usize,
}

struct Inner<T> {
    items: VecDeque<T>,
    closed: bool,
}

impl<T> Queue<T> {
    pub(crate) fn new(capacity: usize) -> Self {
        assert!(capacity > 0);
        Self {
            inner: Mutex::new(Inner {
                items: VecDeque::with_capacity(capacity),
                closed: false,
            }),
            filled: Condvar::new(),
            drained: Condvar::new(),
            capacity,
        }
    }

    /// Queues `item` unless the queue is full or closed.
    pub(crate) fn try_send(&self, item: T) -> Result<(), Refused<T>> {
        let mut inner = self.inner.lock();
        if inner.closed {
            return Err(Refused::Closed(item));
        }
        if inner.items.len() >= self.capacity {
            return Err(Refused::Full(item));
        }
        inner.items.push_back(item);
        drop(inner);
        self.filled.notify_one();
        Ok(())
    }

    /// Queues `item`, waiting while the queue is full; gives it back once closed.
    pub(crate) fn send(&self, item: T) -> Result<(), T> {
        let mut inner = self.inner.lock();
        while !inner.closed && inner.items.len() >= self.capacity {
            self.drained.wait(&mut inner);
        }
        if inner.closed {
            return Err(item);
        }
        inner.items.push_back(item);
        drop(inner);
        self.filled.notify_one();
        Ok(())
    }

    /// Waits for at least one item, then moves up to `max` into `group`, oldest first.
    /// False once the queue is closed and empty (everything sent before the close is taken).
    pub(crate) fn recv_group(&self, max: usize, group: &mut Vec<T>) -> bool {
        let mut inner = self.inner.lock();
        while inner.items.is_empty() {
            if inner.closed {
                return false;
            }
            self.filled.wait(&mut inner);
        }
        let count = inner.items.len().min(max);
        group.extend(inner.items.drain(..count));
        drop(inner);
        self.drained.notify_all();
        true
    }

    /// Refuses every later item; the receiver still takes what is queued.
    pub(crate) fn close(&self) {
        self.inner.lock().closed = true;
        self.filled.notify_all();
        self.drained.notify_all();
    }

    pub(crate) fn len(&self) -> usize {
        self.inner.lock().items.len()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.inner.lock().closed
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_full_queue_refuses_and_a_closed_one_gives_items_back() {
        let queue = Queue::new(2);
        queue.try_send(1).unwrap();
        queue.send(2).unwrap();
        assert_eq!(queue.try_send(3), Err(Refused::Full(3)));
        queue.close();
        assert_eq!(queue.try_send(4), Err(Refused::Closed(4)));
        assert_eq!(queue.send(5), Err(5));
        // What was queued before the close is still taken, in order.
        let mut group = Vec::new();
        assert!(queue.recv_group(8, &mut group));
        assert_eq!(group, vec![1, 2]);
        assert!(!queue.recv_group(8, &mut group));
    }

    #[test]
    fn groups_keep_order_and_size_and_a_waiting_sender_gets_room() {
        let queue = Arc::new(Queue::new(4));
        let sender = {
            let queue = queue.clone();
            std::thread::spawn(move || {
                for n in 0..100 {
                    queue.send(n).unwrap();
                }
                queue.close();
            })
        };
        let mut taken = Vec::new();
        let mut group = Vec::new();
        while queue.recv_group(3, &mut group) {
            assert!((1..=3).contains(&group.len()), "{group:?}");
            taken.append(&mut group);
        }
        sender.join().unwrap();
        assert_eq!(taken, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn a_waiting_receiver_wakes_for_an_item_and_for_the_close() {
        let queue = Arc::new(Queue::<u32>::new(4));
        let receiver = {
            let queue = queue.clone();
            std::thread::spawn(move || {
                let mut group = Vec::new();
                let first = queue.recv_group(8, &mut group);
                let second = queue.recv_group(8, &mut group);
                (first, second, group)
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        queue.try_send(7).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        queue.close();
        assert_eq!(receiver.join().unwrap(), (true, false, vec![7]));
    }
}
