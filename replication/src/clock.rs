//! openraft's async runtime: tokio, with a clock the simulator can take over.
//!
//! In production every instant, sleep and timeout is tokio's. In a simulation
//! (`clock::simulate()`, once per process before any node starts) time stands still until
//! the simulator moves it (`clock::advance`): RPC timeouts, retry backoffs, openraft's
//! leader lease on voters, the gap between snapshot chunks and the readiness gate's
//! majority fence all fire at the same simulated moment on every run of a seed, whatever
//! the machine's load. One clock serves every node of the process (they are one cluster).
//!
//! Invariant: a simulated sleep completes only through `advance`, never by itself.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use openraft::async_runtime::TokioOneShotSender;
use openraft::{AsyncRuntime, OptionalSend};
use parking_lot::Mutex;

static SIMULATED: AtomicBool = AtomicBool::new(false);
static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();

/// The simulated clock: its time and the sleepers waiting for it.
#[derive(Default)]
struct Simulated {
    now_ns: u64,
    next_sleeper: u64,
    sleepers: BTreeMap<(u64, u64), Waker>,
}

static CLOCK: Mutex<Simulated> = Mutex::new(Simulated {
    now_ns: 0,
    next_sleeper: 0,
    sleepers: BTreeMap::new(),
});

fn epoch() -> std::time::Instant {
    *EPOCH.get_or_init(std::time::Instant::now)
}

/// Switches this process to simulated time (the simulator, before any node starts).
pub fn simulate() {
    SIMULATED.store(true, Ordering::Release);
}

pub fn is_simulated() -> bool {
    SIMULATED.load(Ordering::Acquire)
}

/// Moves simulated time forward by `by`, waking every sleeper now due. Returns how many
/// woke.
pub fn advance(by: Duration) -> usize {
    let due: Vec<Waker> = {
        let mut clock = CLOCK.lock();
        clock.now_ns = clock.now_ns.saturating_add(by.as_nanos() as u64);
        let first_later = (clock.now_ns + 1, 0);
        let later = clock.sleepers.split_off(&first_later);
        std::mem::replace(&mut clock.sleepers, later)
            .into_values()
            .collect()
    };
    let woken = due.len();
    for waker in due {
        waker.wake();
    }
    woken
}

/// Simulated time since the process began simulating.
pub fn simulated_now() -> Duration {
    Duration::from_nanos(CLOCK.lock().now_ns)
}

/// A point in time: nanoseconds since the process's epoch (real or simulated).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    fn to_tokio(self) -> tokio::time::Instant {
        tokio::time::Instant::from_std(epoch() + Duration::from_nanos(self.0))
    }
}

impl std::ops::Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_add(rhs.as_nanos() as u64))
    }
}

impl std::ops::AddAssign<Duration> for Instant {
    fn add_assign(&mut self, rhs: Duration) {
        *self = *self + rhs;
    }
}

impl std::ops::Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_sub(rhs.as_nanos() as u64))
    }
}

impl std::ops::SubAssign<Duration> for Instant {
    fn sub_assign(&mut self, rhs: Duration) {
        *self = *self - rhs;
    }
}

impl std::ops::Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, rhs: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(rhs.0))
    }
}

impl openraft::Instant for Instant {
    fn now() -> Self {
        if is_simulated() {
            Instant(CLOCK.lock().now_ns)
        } else {
            Instant(epoch().elapsed().as_nanos() as u64)
        }
    }
}

/// A sleep until a deadline, on the real or the simulated clock.
pub struct Sleep {
    deadline: Instant,
    real: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Where this sleep waits on the simulated clock.
    registered: Option<(u64, u64)>,
}

impl Sleep {
    fn until(deadline: Instant) -> Sleep {
        Sleep {
            deadline,
            real: (!is_simulated())
                .then(|| Box::pin(tokio::time::sleep_until(deadline.to_tokio()))),
            registered: None,
        }
    }
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(real) = self.real.as_mut() {
            return real.as_mut().poll(cx);
        }
        let mut clock = CLOCK.lock();
        if clock.now_ns >= self.deadline.0 {
            if let Some(key) = self.registered.take() {
                clock.sleepers.remove(&key);
            }
            return Poll::Ready(());
        }
        let key = match self.registered {
            Some(key) => key,
            None => {
                clock.next_sleeper += 1;
                (self.deadline.0, clock.next_sleeper)
            }
        };
        clock.sleepers.insert(key, cx.waker().clone());
        drop(clock);
        self.registered = Some(key);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.registered.take() {
            CLOCK.lock().sleepers.remove(&key);
        }
    }
}

/// Sleeps for `duration` on the node's clock (simulated in the simulator).
pub fn sleep(duration: Duration) -> Sleep {
    Sleep::until(<Instant as openraft::Instant>::now() + duration)
}

/// A future given up on at a deadline.
pub struct Timeout<F> {
    future: Pin<Box<F>>,
    sleep: Sleep,
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(output) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match Pin::new(&mut self.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("deadline elapsed")]
pub struct Elapsed;

/// openraft on tokio, with `clock`'s time.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PanshiRuntime;

impl AsyncRuntime for PanshiRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = Sleep;
    type Instant = Instant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = Timeout<T>;
    type ThreadLocalRng = rand::rngs::ThreadRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::task::spawn(future)
    }

    fn sleep(duration: Duration) -> Sleep {
        sleep(duration)
    }

    fn sleep_until(deadline: Instant) -> Sleep {
        Sleep::until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Timeout<F> {
        Timeout {
            future: Box::pin(future),
            sleep: sleep(duration),
        }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Instant,
        future: F,
    ) -> Timeout<F> {
        Timeout {
            future: Box::pin(future),
            sleep: Sleep::until(deadline),
        }
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    /// Only openraft's randomised election timeout draws from it; the simulator turns
    /// elections by timer off (`NodeConfig::manual_ticks`), so what it draws never matters
    /// there.
    fn thread_rng() -> Self::ThreadLocalRng {
        rand::thread_rng()
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(sender), receiver)
    }
}
