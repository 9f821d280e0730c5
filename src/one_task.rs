//! A connection and what its handler runs beside it, polled in one task
//! (docs/design.md#one-task-per-client-connection).
//!
//! A request and its answer pass between the client's connection and the upstream connection
//! pinned to it: hyper hands the request over a channel, and the answer back over another. Were
//! the upstream connection a task of its own, each hand-over would wake the other task, which the
//! runtime polls after every task already queued: with many connections, once the bytes it needs
//! have left the CPU's cache, and at two task polls more per request. Here both are futures of the
//! client connection's task, each with a waker of its own ([`Branch`]). A wake from one while the
//! task is being polled only marks the other as woken, and the same poll goes on to it; a wake
//! from anywhere else (the sockets, timers, another task) wakes the task.
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

type Boxed = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How many times one poll of the task goes round its futures while they wake each other (a
/// request, then its answer, takes two or three). Past that, the task wakes itself and waits its
/// turn behind the other connections: a body streaming both ways cannot keep a worker to itself.
const PASSES: usize = 4;

/// Whether the task is being polled, and its waker.
#[derive(Default)]
struct TaskState {
    inside: AtomicBool,
    waker: AtomicWaker,
}

/// The waker of one of the task's futures: marks it as woken, and wakes the task unless the task
/// is being polled (and so will look at the mark before it returns).
struct Branch {
    woken: AtomicBool,
    task: Arc<TaskState>,
}

impl Wake for Branch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // SeqCst here and in `OneTask::poll`: either this sees the task outside its poll and
        // wakes it, or the poll sees the mark.
        self.woken.store(true, Ordering::SeqCst);
        if !self.task.inside.load(Ordering::SeqCst) {
            self.task.waker.wake();
        }
    }
}

impl Branch {
    fn new(task: &Arc<TaskState>) -> (Arc<Branch>, Waker) {
        // Woken to begin with: each future is polled on the task's first poll.
        let branch = Arc::new(Branch {
            woken: AtomicBool::new(true),
            task: task.clone(),
        });
        let waker = Waker::from(branch.clone());
        (branch, waker)
    }

    fn take(&self) -> bool {
        self.woken.swap(false, Ordering::SeqCst)
    }

    fn is_woken(&self) -> bool {
        self.woken.load(Ordering::SeqCst)
    }
}

/// Runs futures beside a connection, inside its task (a handler's: the upstream connection pinned
/// to it). What still runs when the connection ends is left to finish as a task of its own.
#[derive(Clone)]
pub struct Beside(Arc<Arrivals>);

struct Arrivals {
    futures: Mutex<Vec<Boxed>>,
    branch: Arc<Branch>,
}

impl Beside {
    /// Runs `future` in the connection's task when called from that task (the poll that calls
    /// this goes on to it); from any other task (an HTTP/2 stream's), as a task of its own, since
    /// the hand-overs would cross tasks anyway.
    ///
    /// The connection's task is being polled (`inside`) only on the worker thread that calls
    /// this: a worker's runtime is single-threaded, and what calls this lives on it.
    pub fn run(&self, future: impl Future<Output = ()> + Send + 'static) {
        if !self.0.branch.task.inside.load(Ordering::SeqCst) {
            tokio::spawn(future);
            return;
        }
        self.0
            .futures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::pin(future));
        self.0.branch.wake_by_ref();
    }
}

/// The task's side: polls the connection and the futures run beside it, each when it was woken.
pub(crate) struct OneTask {
    task: Arc<TaskState>,
    main: (Arc<Branch>, Waker),
    /// The waker of what runs beside; its mark is `arrivals.branch`.
    beside_waker: Waker,
    arrivals: Arc<Arrivals>,
    running: Vec<Boxed>,
    /// Called as a poll that found nothing woken is about to leave: where a test makes a wake
    /// land that a second thread could only land by chance.
    #[cfg(test)]
    leaving: Option<Box<dyn FnOnce() + Send>>,
}

impl OneTask {
    pub(crate) fn new() -> (OneTask, Beside) {
        let task = Arc::new(TaskState::default());
        let main = Branch::new(&task);
        let (branch, beside_waker) = Branch::new(&task);
        let arrivals = Arc::new(Arrivals {
            futures: Mutex::default(),
            branch,
        });
        let one = OneTask {
            task,
            main,
            beside_waker,
            arrivals: arrivals.clone(),
            running: Vec::new(),
            #[cfg(test)]
            leaving: None,
        };
        (one, Beside(arrivals))
    }

    /// Polls `main` and the futures beside it, each if it was woken since it was last polled, and
    /// again while polling one wakes another, at most [`PASSES`] times.
    pub(crate) fn poll<F: Future + ?Sized>(
        &mut self,
        mut main: Pin<&mut F>,
        cx: &mut Context<'_>,
    ) -> Poll<F::Output> {
        // Registered before anything is looked at: a wake after that finds this waker.
        self.task.waker.register(cx.waker());
        self.task.inside.store(true, Ordering::SeqCst);
        for _ in 0..PASSES {
            let beside = self.arrivals.branch.take();
            if beside {
                self.poll_beside();
            }
            let woken = self.main.0.take();
            if woken
                && let Poll::Ready(output) =
                    main.as_mut().poll(&mut Context::from_waker(&self.main.1))
            {
                self.task.inside.store(false, Ordering::SeqCst);
                return Poll::Ready(output);
            }
            if !beside && !woken {
                #[cfg(test)]
                if let Some(leaving) = self.leaving.take() {
                    leaving();
                }
                self.task.inside.store(false, Ordering::SeqCst);
                if !self.any_woken() {
                    return Poll::Pending;
                }
                // Woken from outside as the poll was ending, unseen by the waker.
                self.task.inside.store(true, Ordering::SeqCst);
            }
        }
        self.task.inside.store(false, Ordering::SeqCst);
        if self.any_woken() {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    /// The connection was acted on outside its poll (asked to finish): the next poll polls it,
    /// as a wake would have it do.
    pub(crate) fn wake_main(&self) {
        self.main.0.woken.store(true, Ordering::SeqCst);
    }

    fn any_woken(&self) -> bool {
        self.main.0.is_woken() || self.arrivals.branch.is_woken()
    }

    /// Takes on the futures handed over since, and polls every one; those that end are dropped.
    fn poll_beside(&mut self) {
        {
            let mut arrived = self
                .arrivals
                .futures
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.running.append(&mut arrived);
        }
        let mut cx = Context::from_waker(&self.beside_waker);
        // A panic ends the future that panicked, not the connection, as it would end a task of
        // its own.
        self.running.retain_mut(|future| {
            std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx)))
                .unwrap_or_else(|_| {
                    tracing::error!("a future run beside a connection panicked; it is dropped");
                    Poll::Ready(())
                })
                .is_pending()
        });
    }
}

impl Drop for OneTask {
    /// What still runs beside the connection is left to finish as a task of its own: the pinned
    /// connection then closes as it always did once its client connection is gone, gracefully
    /// (over TLS with its `close_notify`). Without a runtime to take it (the worker is being shut
    /// down), it is dropped.
    fn drop(&mut self) {
        let arrived = std::mem::take(
            &mut *self
                .arrivals
                .futures
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let left = self.running.drain(..).chain(arrived);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            for future in left {
                runtime.spawn(future);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    impl OneTask {
        /// What [`Beside::run`] does when called from the connection's task.
        fn run_here(&mut self, future: impl Future<Output = ()> + Send + 'static) {
            self.running.push(Box::pin(future));
            self.arrivals.branch.woken.store(true, Ordering::SeqCst);
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

    impl Task {
        fn wakes(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// What a test future shares with the test: how often it was polled, the waker it was last
    /// polled with, and whether it is to end.
    #[derive(Default)]
    struct Probe {
        polls: AtomicUsize,
        waker: Mutex<Option<Waker>>,
        done: AtomicBool,
    }

    impl Probe {
        fn polls(&self) -> usize {
            self.polls.load(Ordering::SeqCst)
        }

        /// Wakes the future the way a socket or a channel would: with the waker it last gave.
        fn wake(&self) {
            if let Some(waker) = self.waker.lock().unwrap().take() {
                waker.wake();
            }
        }

        fn polled(&self, cx: &Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.done.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// A future that, each time it is polled, does what `then` says (say, wake another one).
    fn probe(
        probe: Arc<Probe>,
        then: impl Fn() + Send + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        std::future::poll_fn(move |cx| {
            let poll = probe.polled(cx);
            then();
            poll
        })
    }

    fn task() -> (Arc<Task>, Waker) {
        let task = Arc::new(Task::default());
        let waker = Waker::from(task.clone());
        (task, waker)
    }

    /// The hand-over of a request: the connection wakes the future beside it while the task is
    /// being polled, and the same poll goes on to that future, without waking the task (which
    /// the runtime would poll again after every other task queued).
    #[test]
    fn a_wake_between_the_futures_is_followed_in_the_same_poll() {
        let (task, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let (mut one, _beside) = OneTask::new();
        let upstream = Arc::new(Probe::default());
        one.run_here(probe(upstream.clone(), || {}));
        let client = Arc::new(Probe::default());
        let sent = Arc::new(AtomicBool::new(false));
        let connection = probe(client.clone(), {
            let (upstream, sent) = (upstream.clone(), sent.clone());
            move || {
                if sent.load(Ordering::SeqCst) {
                    upstream.wake();
                }
            }
        });
        let mut connection = std::pin::pin!(connection);

        assert!(one.poll(connection.as_mut(), &mut cx).is_pending());
        assert_eq!((upstream.polls(), client.polls()), (1, 1));

        // The client's socket has a request: its connection hands it to the upstream's.
        sent.store(true, Ordering::SeqCst);
        client.wake();
        assert_eq!(task.wakes(), 1, "a socket's wake reaches the task");
        assert!(one.poll(connection.as_mut(), &mut cx).is_pending());
        assert_eq!(
            upstream.polls(),
            2,
            "the upstream side is polled in the same poll"
        );
        assert_eq!(client.polls(), 2);
        assert_eq!(task.wakes(), 1, "and the task is not woken again for it");

        // Nothing woken: nothing polled.
        sent.store(false, Ordering::SeqCst);
        assert!(one.poll(connection.as_mut(), &mut cx).is_pending());
        assert_eq!((upstream.polls(), client.polls()), (2, 2));
    }

    /// The answer's way back: the upstream side, woken by its socket, wakes the connection, which
    /// is polled in the same poll and ends.
    #[test]
    fn the_connection_woken_from_beside_ends_in_the_same_poll() {
        let (task, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let (mut one, _beside) = OneTask::new();
        let client = Arc::new(Probe::default());
        let upstream = Arc::new(Probe::default());
        let answered = Arc::new(AtomicBool::new(false));
        one.run_here(probe(upstream.clone(), {
            let (client, answered) = (client.clone(), answered.clone());
            move || {
                if answered.load(Ordering::SeqCst) {
                    client.done.store(true, Ordering::SeqCst);
                    client.wake();
                }
            }
        }));
        let mut connection = std::pin::pin!(probe(client.clone(), || {}));
        assert!(one.poll(connection.as_mut(), &mut cx).is_pending());

        answered.store(true, Ordering::SeqCst);
        upstream.wake();
        assert_eq!(task.wakes(), 1);
        assert_eq!(one.poll(connection.as_mut(), &mut cx), Poll::Ready(()));
        assert_eq!(task.wakes(), 1);
    }

    /// A future that wakes itself at every poll (a body streaming without pause, hyper yielding)
    /// gets [`PASSES`] polls, and then the task waits its turn behind the others.
    #[test]
    fn a_future_that_keeps_waking_itself_gives_the_worker_back() {
        let (task, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let (mut one, _beside) = OneTask::new();
        let busy = Arc::new(Probe::default());
        let connection = std::future::poll_fn({
            let busy = busy.clone();
            move |cx| {
                busy.polls.fetch_add(1, Ordering::SeqCst);
                cx.waker().wake_by_ref();
                Poll::<()>::Pending
            }
        });
        let mut connection = std::pin::pin!(connection);
        assert!(one.poll(connection.as_mut(), &mut cx).is_pending());
        assert_eq!(busy.polls(), PASSES);
        assert_eq!(task.wakes(), 1, "the task is woken to come back");
    }

    /// A wake that comes from another thread as the poll is ending, after it looked at the marks
    /// and before it left, found the task being polled and only marked its future: the poll looks
    /// again on its way out.
    #[test]
    fn a_wake_as_the_poll_ends_is_not_lost() {
        let (task, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let (mut one, _beside) = OneTask::new();
        let upstream = Arc::new(Probe::default());
        one.run_here(probe(upstream.clone(), || {}));
        let mut connection = std::pin::pin!(std::future::pending::<()>());
        assert!(one.poll(connection.as_mut(), &mut cx).is_pending());
        assert_eq!(upstream.polls(), 1);

        one.leaving = Some(Box::new({
            let upstream = upstream.clone();
            move || upstream.wake()
        }));
        assert!(one.poll(connection.as_mut(), &mut cx).is_pending());
        assert_eq!(upstream.polls(), 2, "the poll looked again, and polled it");
        assert_eq!(task.wakes(), 0);
    }

    /// What runs beside is dropped when it ends, and, where no runtime could take it on, with
    /// the task.
    #[test]
    fn futures_beside_are_dropped_when_they_end_or_with_the_task() {
        struct Dropped(Arc<AtomicUsize>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (_task, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let (mut one, _beside) = OneTask::new();
        let dropped = Arc::new(AtomicUsize::new(0));
        let ending = Arc::new(Probe::default());
        for probe_of in [ending.clone(), Arc::new(Probe::default())] {
            let guard = Dropped(dropped.clone());
            one.run_here(probe(probe_of, move || {
                let _ = &guard;
            }));
        }
        let mut connection = std::pin::pin!(std::future::pending::<()>());
        assert!(one.poll(connection.as_mut(), &mut cx).is_pending());
        assert_eq!(dropped.load(Ordering::SeqCst), 0);

        ending.done.store(true, Ordering::SeqCst);
        ending.wake();
        assert!(one.poll(connection.as_mut(), &mut cx).is_pending());
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "the one that ended");
        drop(one);
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            2,
            "the other, with the task"
        );
    }

    /// The pinned connection is made while the connection's task is being polled: it runs in that
    /// task, from the same poll on, without the task being woken for it.
    #[test]
    fn a_future_handed_over_during_the_poll_runs_in_it() {
        let (task, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let (mut one, beside) = OneTask::new();
        let upstream = Arc::new(Probe::default());
        let mut handed = Some(probe(upstream.clone(), || {}));
        let mut connection = std::pin::pin!(std::future::poll_fn(move |_| {
            if let Some(future) = handed.take() {
                beside.run(future);
            }
            Poll::<()>::Pending
        }));
        assert!(one.poll(connection.as_mut(), &mut cx).is_pending());
        assert_eq!(upstream.polls(), 1);
        assert_eq!(task.wakes(), 0);
        upstream.wake();
        assert_eq!(task.wakes(), 1, "its wakes wake the connection's task");
        assert!(one.poll(connection.as_mut(), &mut cx).is_pending());
        assert_eq!(upstream.polls(), 2);
    }

    /// Handed over from another task (an HTTP/2 stream's), a future runs as a task of its own:
    /// the connection's task never polls it.
    #[tokio::test]
    async fn a_future_handed_over_from_another_task_runs_as_a_task_of_its_own() {
        let (one, beside) = OneTask::new();
        let (ran, done) = tokio::sync::oneshot::channel();
        beside.run(async move {
            let _ = ran.send(());
        });
        tokio::time::timeout(std::time::Duration::from_secs(10), done)
            .await
            .expect("it ran, as a task of its own")
            .unwrap();
        assert!(one.running.is_empty());
        assert!(one.arrivals.futures.lock().unwrap().is_empty());
    }

    /// What still runs beside a connection that ends goes on as a task of its own (the pinned
    /// connection closes gracefully once its client connection is gone).
    #[tokio::test]
    async fn what_runs_beside_a_connection_that_ends_goes_on_as_a_task() {
        let (_task, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let (mut one, _beside) = OneTask::new();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let (finished, done) = tokio::sync::oneshot::channel();
        one.run_here(async move {
            let _ = wait.await;
            let _ = finished.send(());
        });
        let mut connection = std::pin::pin!(std::future::pending::<()>());
        assert!(one.poll(connection.as_mut(), &mut cx).is_pending());
        drop(one);
        go.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), done)
            .await
            .expect("it finished after the connection ended")
            .unwrap();
    }

    /// A panic in a future run beside ends that future, not the connection, as it would end a
    /// task of its own.
    #[test]
    fn a_panic_beside_ends_that_future_only() {
        let (_task, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let (mut one, _beside) = OneTask::new();
        one.run_here(async { panic!("a bug in the upstream connection") });
        let client = Arc::new(Probe::default());
        let mut connection = std::pin::pin!(probe(client.clone(), || {}));
        assert!(one.poll(connection.as_mut(), &mut cx).is_pending());
        assert!(one.running.is_empty(), "the future that panicked is gone");
        assert_eq!(client.polls(), 1, "the connection goes on");
        client.done.store(true, Ordering::SeqCst);
        client.wake();
        assert_eq!(one.poll(connection.as_mut(), &mut cx), Poll::Ready(()));
    }
}
