//! The dispatcher between the two servers of the Lambda adapter: a `ProcessRecords` call
//! (gRPC) queues an invocation and waits for its answer; the runtime's long poll
//! (`GET …/invocation/next`, HTTP) takes it; `POST …/{id}/response` or `…/{id}/error`
//! answers it. No sockets here, so the whole exchange is testable in memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use tokio::sync::{Notify, oneshot, watch};

use super::event;

/// What the runtime answered for an invocation.
#[derive(Debug)]
pub(crate) enum Reply {
    /// `POST …/invocation/{id}/response`: the handler's return value.
    Response(Bytes),
    /// `POST …/invocation/{id}/error` (or a response Lambda would refuse): a one-line error.
    Error(String),
}

/// One invocation as the runtime receives it.
#[derive(Debug)]
pub(crate) struct Invocation {
    /// `Lambda-Runtime-Aws-Request-Id`.
    pub(crate) id: String,
    /// The event.
    pub(crate) body: Vec<u8>,
    /// `Lambda-Runtime-Deadline-Ms`: epoch ms.
    pub(crate) deadline_ms: i64,
    /// `Lambda-Runtime-Trace-Id`.
    pub(crate) trace_id: String,
}

/// Why an invocation has no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InvokeError {
    /// The deadline passed while the invocation was queued: no runtime client asked for it.
    NeverTaken,
    /// A runtime client took the invocation but answered neither response nor error before
    /// the deadline.
    NoAnswer {
        /// The request id it was given.
        id: String,
    },
    /// The adapter is shutting down.
    Closed,
}

/// A queued invocation and where its answer goes.
struct Queued {
    invocation: Invocation,
    reply: oneshot::Sender<Reply>,
    /// How long the handler may take once a runtime takes it.
    timeout: Duration,
}

/// Late answers remembered, at most.
const WITHDRAWN_KEPT: usize = 4096;

/// What became of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Completion {
    /// It reached the waiting call.
    Delivered,
    /// Its invocation was given up on (deadline, lease lost, hand-over): dropped.
    Late,
    /// No such invocation was ever taken.
    Unknown,
}

#[derive(Default)]
struct State {
    /// Invocations no runtime client took yet, oldest first.
    queue: VecDeque<Queued>,
    /// Invocations a runtime client took, by request id: who waits for the answer, and the
    /// deadline set when taken.
    in_flight: HashMap<String, (oneshot::Sender<Reply>, i64)>,
    /// The last invocations given up on after a runtime took them: a late answer to one is
    /// accepted and dropped (a 4xx would make awslambdaric exit).
    withdrawn: VecDeque<String>,
    /// When a runtime client last asked for an invocation or answered one.
    runtime_seen: Option<std::time::Instant>,
    closed: bool,
    /// The last `POST …/init/error`, for the error of an invocation nobody took.
    init_error: Option<String>,
}

/// Where an invocation was when it was withdrawn.
#[derive(Debug, PartialEq, Eq)]
enum Stage {
    Queued,
    InFlight,
}

/// The invocation queue and in-flight map shared by the gRPC and the HTTP side.
pub(crate) struct Dispatcher {
    state: Mutex<State>,
    /// Wakes a `next` waiter when an invocation is queued (or all of them on close).
    ready: Notify,
    closed: watch::Sender<bool>,
}

impl Default for Dispatcher {
    fn default() -> Self {
        Self::new()
    }
}

/// Withdraws an invocation when its `invoke` ends, however it ends (answered, timed out,
/// or the gRPC call cancelled): a late `POST` then finds no such id.
struct Withdraw<'a> {
    dispatcher: &'a Dispatcher,
    id: &'a str,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        self.dispatcher.withdraw(self.id);
    }
}

impl Dispatcher {
    /// An empty, open dispatcher.
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            closed: watch::Sender::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an invocation of `body` and waits for its answer. The handler's `timeout`
    /// runs from the moment a runtime takes it (`next`), as Lambda's does: time spent queued
    /// behind other shards' invocations (one runtime process handles one at a time) does not
    /// count; the caller's own deadline (the worker's call timeout) bounds the whole wait.
    pub(crate) async fn invoke(
        &self,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Reply, InvokeError> {
        let id = event::request_id();
        let (reply, mut answer) = oneshot::channel();
        {
            let mut state = self.lock();
            if state.closed {
                return Err(InvokeError::Closed);
            }
            state.queue.push_back(Queued {
                invocation: Invocation {
                    id: id.clone(),
                    body,
                    deadline_ms: 0,
                    trace_id: event::trace_id(),
                },
                reply,
                timeout,
            });
        }
        self.ready.notify_one();
        let _withdraw = Withdraw {
            dispatcher: self,
            id: &id,
        };
        let queued_at = std::time::Instant::now();
        loop {
            // Until a runtime takes it, look again every second for its deadline.
            let (deadline, no_runtime) = {
                let state = self.lock();
                let absent = |since: std::time::Instant| since.elapsed() >= timeout;
                (
                    state.in_flight.get(&id).map(|(_, d)| *d),
                    // Queued for the whole timeout while no runtime asked for anything nor
                    // worked on anything: there is no runtime (a busy one does not count).
                    absent(queued_at)
                        && state.in_flight.is_empty()
                        && state.runtime_seen.is_none_or(absent),
                )
            };
            if deadline.is_none() && no_runtime && self.withdraw(&id) == Some(Stage::Queued) {
                return Err(InvokeError::NeverTaken);
            }
            let wait = match deadline {
                Some(d) => Duration::from_millis(
                    u64::try_from(d.saturating_sub(super::now_ms())).unwrap_or(0),
                ),
                None => Duration::from_secs(1),
            };
            match tokio::time::timeout(wait, &mut answer).await {
                Ok(Ok(reply)) => return Ok(reply),
                // The sender was dropped without an answer: only `close` does that.
                Ok(Err(_)) => return Err(InvokeError::Closed),
                Err(_elapsed) if deadline.is_none() => {}
                Err(_elapsed) => {
                    return match self.withdraw(&id) {
                        Some(Stage::Queued) => Err(InvokeError::NeverTaken),
                        Some(Stage::InFlight) => Err(InvokeError::NoAnswer { id: id.clone() }),
                        // Answered (or closed) just as the deadline passed.
                        None => answer.try_recv().map_err(|_| InvokeError::Closed),
                    };
                }
            }
        }
    }

    /// Takes the oldest queued invocation, waiting for one (the runtime's long poll), and
    /// moves it in flight. Concurrent callers each get a different invocation. `None` once the
    /// dispatcher is closed. Cancel-safe: dropped while waiting, it takes nothing.
    pub(crate) async fn next(&self) -> Option<Invocation> {
        loop {
            // Registered before looking at the queue, so a push in between is not missed.
            let notified = self.ready.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                state.runtime_seen = Some(std::time::Instant::now());
                if state.closed {
                    return None;
                }
                while let Some(Queued {
                    mut invocation,
                    reply,
                    timeout,
                }) = state.queue.pop_front()
                {
                    // Its ProcessRecords call is gone (cancelled): nobody waits for it.
                    if reply.is_closed() {
                        continue;
                    }
                    invocation.deadline_ms = super::now_ms()
                        .saturating_add(i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX));
                    state
                        .in_flight
                        .insert(invocation.id.clone(), (reply, invocation.deadline_ms));
                    return Some(invocation);
                }
            }
            notified.await;
        }
    }

    /// Answers invocation `id`: delivered to its call, late (it was given up on; the answer
    /// is dropped), or unknown.
    pub(crate) fn complete(&self, id: &str, reply: Reply) -> Completion {
        let (sender, late) = {
            let mut state = self.lock();
            state.runtime_seen = Some(std::time::Instant::now());
            let sender = state.in_flight.remove(id);
            let late = sender.is_none() && state.withdrawn.iter().any(|w| w == id);
            (sender, late)
        };
        match sender {
            Some((s, _)) => match s.send(reply) {
                Ok(()) => Completion::Delivered,
                // Its call went away as the answer came.
                Err(_) => Completion::Late,
            },
            None if late => Completion::Late,
            None => Completion::Unknown,
        }
    }

    /// Removes invocation `id` from the queue or the in-flight map (remembering a taken one,
    /// so its late answer is dropped quietly).
    fn withdraw(&self, id: &str) -> Option<Stage> {
        let mut state = self.lock();
        let queued = state.queue.iter().position(|q| q.invocation.id == id);
        if let Some(at) = queued {
            state.queue.remove(at);
            return Some(Stage::Queued);
        }
        let taken = state.in_flight.remove(id).map(|_| Stage::InFlight);
        if taken.is_some() {
            if state.withdrawn.len() >= WITHDRAWN_KEPT {
                state.withdrawn.pop_front();
            }
            state.withdrawn.push_back(id.to_string());
        }
        taken
    }

    /// Records the function's init error (`POST …/init/error`).
    pub(crate) fn set_init_error(&self, message: String) {
        self.lock().init_error = Some(message);
    }

    /// The function's last init error, if it reported one.
    pub(crate) fn init_error(&self) -> Option<String> {
        self.lock().init_error.clone()
    }

    /// Stops for good: queued and in-flight invocations end with [`InvokeError::Closed`],
    /// `next` waiters get `None`, and [`Dispatcher::closed`] completes.
    pub(crate) fn close(&self) {
        let (queue, in_flight) = {
            let mut state = self.lock();
            state.closed = true;
            (
                std::mem::take(&mut state.queue),
                std::mem::take(&mut state.in_flight),
            )
        };
        drop((queue, in_flight));
        self.ready.notify_waiters();
        self.closed.send_replace(true);
    }

    /// Was [`Dispatcher::close`] called?
    pub(crate) fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Completes once [`Dispatcher::close`] was called.
    pub(crate) async fn closed(&self) {
        let mut closed = self.closed.subscribe();
        // The sender lives in `self`: `wait_for` cannot see it dropped.
        let _ = closed.wait_for(|c| *c).await;
    }

    /// How many invocations wait for a runtime client.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// How many invocations a runtime client took and did not answer yet.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Generous bound for anything that should happen at once.
    const SOON: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn an_invocation_goes_to_a_runtime_and_back() -> TestResult {
        let d = Arc::new(Dispatcher::new());
        let invoker = {
            let d = d.clone();
            tokio::spawn(async move {
                d.invoke(b"{\"Records\":[]}".to_vec(), Duration::from_secs(60))
                    .await
            })
        };
        let invocation = tokio::time::timeout(SOON, d.next())
            .await?
            .ok_or("closed")?;
        let taken = super::super::now_ms();
        assert_eq!(invocation.body, b"{\"Records\":[]}");
        assert!(
            (taken - 1_000..=taken + 60_000).contains(&invocation.deadline_ms)
                && invocation.deadline_ms > taken + 50_000,
            "the deadline runs from the take: {} vs {taken}",
            invocation.deadline_ms
        );
        assert!(invocation.trace_id.starts_with("Root=1-"));
        assert_eq!((d.queued(), d.in_flight()), (0, 1));
        assert_eq!(
            d.complete("not-an-id", Reply::Error("x".into())),
            Completion::Unknown
        );
        assert_eq!(
            d.complete(&invocation.id, Reply::Response(Bytes::from_static(b"null"))),
            Completion::Delivered
        );
        match tokio::time::timeout(SOON, invoker).await?? {
            Ok(Reply::Response(body)) => assert_eq!(&body[..], b"null"),
            other => return Err(format!("unexpected {other:?}").into()),
        }
        // Answered once: a second answer is refused.
        assert_eq!(
            d.complete(&invocation.id, Reply::Error("again".into())),
            Completion::Unknown
        );
        assert_eq!((d.queued(), d.in_flight()), (0, 0));
        Ok(())
    }

    #[tokio::test]
    async fn concurrent_runtimes_get_different_invocations() -> TestResult {
        let d = Arc::new(Dispatcher::new());
        // Two long polls wait before anything is queued.
        let takers: Vec<_> = (0..2)
            .map(|_| {
                let d = d.clone();
                tokio::spawn(async move { d.next().await })
            })
            .collect();
        tokio::task::yield_now().await;
        let invokers: Vec<_> = [b"a", b"b"]
            .into_iter()
            .map(|body| {
                let d = d.clone();
                tokio::spawn(async move { d.invoke(body.to_vec(), Duration::from_secs(60)).await })
            })
            .collect();
        let mut bodies = Vec::new();
        for taker in takers {
            let invocation = tokio::time::timeout(SOON, taker).await??.ok_or("closed")?;
            bodies.push(invocation.body.clone());
            assert_eq!(
                d.complete(&invocation.id, Reply::Error("handled".into())),
                Completion::Delivered
            );
        }
        bodies.sort();
        assert_eq!(bodies, [b"a".to_vec(), b"b".to_vec()]);
        for invoker in invokers {
            let reply = tokio::time::timeout(SOON, invoker).await??;
            assert!(
                matches!(reply, Ok(Reply::Error(ref m)) if m == "handled"),
                "{reply:?}"
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn time_queued_behind_other_invocations_does_not_count() -> TestResult {
        let d = Arc::new(Dispatcher::new());
        let invoke = |body: &'static [u8], timeout: Duration| {
            let d = d.clone();
            tokio::spawn(async move { d.invoke(body.to_vec(), timeout).await })
        };
        // The one runtime works on a slow invocation of another shard...
        let slow = invoke(b"slow", Duration::from_secs(5));
        let busy = tokio::time::timeout(SOON, d.next())
            .await?
            .ok_or("closed")?;
        // ...while this one waits three times as long as its own timeout.
        let queued = invoke(b"queued", Duration::from_millis(300));
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(
            !queued.is_finished(),
            "a queued invocation has not timed out"
        );
        assert_eq!(
            d.complete(&busy.id, Reply::Response(Bytes::from_static(b"{}"))),
            Completion::Delivered
        );
        assert!(matches!(
            tokio::time::timeout(SOON, slow).await??,
            Ok(Reply::Response(_))
        ));
        let invocation = tokio::time::timeout(SOON, d.next())
            .await?
            .ok_or("closed")?;
        assert_eq!(invocation.body, b"queued");
        assert_eq!(
            d.complete(&invocation.id, Reply::Response(Bytes::from_static(b"{}"))),
            Completion::Delivered
        );
        assert!(matches!(
            tokio::time::timeout(SOON, queued).await??,
            Ok(Reply::Response(_))
        ));
        Ok(())
    }

    #[tokio::test]
    async fn with_no_runtime_at_all_a_queued_invocation_fails_after_its_timeout() -> TestResult {
        let d = Dispatcher::new();
        let started = std::time::Instant::now();
        let result = d.invoke(b"{}".to_vec(), Duration::from_millis(50)).await;
        assert_eq!(result.err(), Some(InvokeError::NeverTaken));
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!((d.queued(), d.in_flight()), (0, 0));
        Ok(())
    }

    #[tokio::test]
    async fn an_invocation_taken_but_not_answered_times_out_and_a_late_answer_is_dropped_quietly()
    -> TestResult {
        let d = Arc::new(Dispatcher::new());
        let invoker = {
            let d = d.clone();
            tokio::spawn(async move { d.invoke(b"{}".to_vec(), Duration::from_millis(100)).await })
        };
        let invocation = tokio::time::timeout(SOON, d.next())
            .await?
            .ok_or("closed")?;
        let result = tokio::time::timeout(SOON, invoker).await??;
        assert_eq!(
            result.err(),
            Some(InvokeError::NoAnswer {
                id: invocation.id.clone()
            })
        );
        // A 4xx would make awslambdaric exit: the late answer is accepted and dropped.
        assert_eq!(
            d.complete(&invocation.id, Reply::Response(Bytes::new())),
            Completion::Late
        );
        assert_eq!((d.queued(), d.in_flight()), (0, 0));
        Ok(())
    }

    #[tokio::test]
    async fn a_cancelled_call_leaves_nothing_behind() -> TestResult {
        let d = Dispatcher::new();
        // The call gives up (like a cancelled gRPC call) while its invocation is queued.
        let gave_up = tokio::time::timeout(
            Duration::from_millis(20),
            d.invoke(b"{}".to_vec(), Duration::from_secs(60)),
        )
        .await;
        assert!(gave_up.is_err());
        assert_eq!((d.queued(), d.in_flight()), (0, 0));
        Ok(())
    }

    #[tokio::test]
    async fn closing_wakes_the_long_polls_and_refuses_new_invocations() -> TestResult {
        let d = Arc::new(Dispatcher::new());
        let taker = {
            let d = d.clone();
            tokio::spawn(async move { d.next().await })
        };
        tokio::task::yield_now().await;
        d.close();
        assert!(tokio::time::timeout(SOON, taker).await??.is_none());
        tokio::time::timeout(SOON, d.closed()).await?;
        let result = d.invoke(b"{}".to_vec(), Duration::from_secs(60)).await;
        assert_eq!(result.err(), Some(InvokeError::Closed));
        assert!(d.next().await.is_none());
        Ok(())
    }
}
