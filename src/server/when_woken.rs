//! A future polled only when it has woken its task (docs/design.md#performance).
//!
//! A connection's task is polled several times per request, each time its socket or its request
//! has news; its timers and its shutdown signal almost never have. `tokio::select!` polls every
//! branch each time, and polling a timer or a watch is not free: each checks its state and its
//! waker again. [`WhenWoken`] gives its future a waker of its own, which marks the future as woken
//! before it wakes the task, and polls the future only then (and on the first poll).
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Whether a [`WhenWoken`] future asked to be polled, and the task to wake when it does. One per
/// connection, shared by the futures of each turn of its loop.
#[derive(Default)]
pub(super) struct WakeFlag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// `future`, polled when its own waker was called since it was last polled, not each time the
/// task is.
pub(super) struct WhenWoken<F> {
    future: F,
    flag: Arc<WakeFlag>,
    waker: Waker,
    polled: bool,
}

impl<F: Future + Unpin> WhenWoken<F> {
    pub(super) fn new(future: F, flag: &Arc<WakeFlag>) -> Self {
        WhenWoken {
            future,
            flag: flag.clone(),
            waker: Waker::from(flag.clone()),
            polled: false,
        }
    }
}

impl<F: Future + Unpin> Future for WhenWoken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        // Registered before the flag is read: a wake after the read finds this task's waker.
        this.flag.task.register(cx.waker());
        let woken = this.flag.woken.swap(false, Ordering::AcqRel);
        if this.polled && !woken {
            return Poll::Pending;
        }
        this.polled = true;
        Pin::new(&mut this.future).poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `ready` is set, waking its waker when `wake` is called.
    #[derive(Default)]
    struct Probe {
        polls: AtomicUsize,
        ready: AtomicBool,
        waker: std::sync::Mutex<Option<Waker>>,
    }

    impl Probe {
        fn wake(&self) {
            if let Some(waker) = self.waker.lock().unwrap().take() {
                waker.wake();
            }
        }
    }

    struct Polled<'a>(&'a Probe);

    impl Future for Polled<'_> {
        type Output = &'static str;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<&'static str> {
            self.0.polls.fetch_add(1, Ordering::SeqCst);
            if self.0.ready.load(Ordering::SeqCst) {
                return Poll::Ready("done");
            }
            *self.0.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// A task waker that counts its wakes.
    #[derive(Default)]
    struct Task(AtomicUsize);

    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_future_is_polled_first_and_then_only_after_its_own_wake() {
        let probe = Probe::default();
        let flag = Arc::new(WakeFlag::default());
        let task = Arc::new(Task::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let mut future = WhenWoken::new(Polled(&probe), &flag);

        assert!(Pin::new(&mut future).poll(&mut cx).is_pending());
        assert_eq!(probe.polls.load(Ordering::SeqCst), 1);
        // The task polled again for something else: the future is not.
        for _ in 0..5 {
            assert!(Pin::new(&mut future).poll(&mut cx).is_pending());
        }
        assert_eq!(probe.polls.load(Ordering::SeqCst), 1);
        assert_eq!(task.0.load(Ordering::SeqCst), 0);

        // Its own wake reaches the task, and the next poll reaches the future.
        probe.ready.store(true, Ordering::SeqCst);
        probe.wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert_eq!(Pin::new(&mut future).poll(&mut cx), Poll::Ready("done"));
        assert_eq!(probe.polls.load(Ordering::SeqCst), 2);
    }

    /// In a loop like a connection's: other branches wake the task and complete, and the timer
    /// behind [`WhenWoken`] still fires at its deadline (the runtime's clock is paused, and moves
    /// on only when every task waits).
    #[tokio::test(start_paused = true)]
    async fn a_timer_fires_through_it_after_other_wakes() {
        use std::time::Duration;
        use tokio::time::{Instant, sleep, timeout};
        let started = Instant::now();
        let flag = Arc::new(WakeFlag::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        for _ in 0..3 {
            tx.send(()).unwrap();
        }
        let turns = async {
            let mut messages = 0;
            let sleep = std::pin::pin!(sleep(Duration::from_secs(30)));
            let mut timer = WhenWoken::new(sleep, &flag);
            loop {
                tokio::select! {
                    biased;
                    Some(()) = rx.recv() => messages += 1,
                    () = &mut timer => return messages,
                }
            }
        };
        let messages = timeout(Duration::from_secs(60), turns)
            .await
            .expect("the timer fired");
        assert_eq!(messages, 3);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }
}
