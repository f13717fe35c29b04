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
}

#[derive(Default)]
struct State {
    /// Invocations no runtime client took yet, oldest first.
    queue: VecDeque<Queued>,
    /// Invocations a runtime client took, by request id.
    in_flight: HashMap<String, oneshot::Sender<Reply>>,
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

    /// Queues an invocation with `body` and waits for its answer until `deadline_ms` (epoch
    /// ms). Whatever happens, the invocation is gone from the queue and the in-flight map when
    /// this returns (or is dropped).
    pub(crate) async fn invoke(
        &self,
        body: Vec<u8>,
        deadline_ms: i64,
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
                    deadline_ms,
                    trace_id: event::trace_id(),
                },
                reply,
            });
        }
        self.ready.notify_one();
        let _withdraw = Withdraw {
            dispatcher: self,
            id: &id,
        };
        let wait = Duration::from_millis(
            u64::try_from(deadline_ms.saturating_sub(super::now_ms())).unwrap_or(0),
        );
        let answered = tokio::time::timeout(wait, &mut answer).await;
        match answered {
            Ok(Ok(reply)) => Ok(reply),
            // The sender was dropped without an answer: only `close` does that.
            Ok(Err(_)) => Err(InvokeError::Closed),
            Err(_elapsed) => match self.withdraw(&id) {
                Some(Stage::Queued) => Err(InvokeError::NeverTaken),
                Some(Stage::InFlight) => Err(InvokeError::NoAnswer { id: id.clone() }),
                // Answered (or closed) just as the deadline passed.
                None => answer.try_recv().map_err(|_| InvokeError::Closed),
            },
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
                if state.closed {
                    return None;
                }
                while let Some(Queued { invocation, reply }) = state.queue.pop_front() {
                    // Its ProcessRecords call is gone (cancelled): nobody waits for it.
                    if reply.is_closed() {
                        continue;
                    }
                    state.in_flight.insert(invocation.id.clone(), reply);
                    return Some(invocation);
                }
            }
            notified.await;
        }
    }

    /// Answers the in-flight invocation `id`. False when no invocation `id` is in flight
    /// (unknown, already answered, or withdrawn at its deadline).
    pub(crate) fn complete(&self, id: &str, reply: Reply) -> bool {
        let sender = self.lock().in_flight.remove(id);
        sender.is_some_and(|s| s.send(reply).is_ok())
    }

    /// Removes invocation `id` from the queue or the in-flight map.
    fn withdraw(&self, id: &str) -> Option<Stage> {
        let mut state = self.lock();
        let queued = state.queue.iter().position(|q| q.invocation.id == id);
        if let Some(at) = queued {
            state.queue.remove(at);
            return Some(Stage::Queued);
        }
        state.in_flight.remove(id).map(|_| Stage::InFlight)
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
        let deadline = super::super::now_ms() + 60_000;
        let invoker = {
            let d = d.clone();
            tokio::spawn(async move { d.invoke(b"{\"Records\":[]}".to_vec(), deadline).await })
        };
        let invocation = tokio::time::timeout(SOON, d.next())
            .await?
            .ok_or("closed")?;
        assert_eq!(invocation.body, b"{\"Records\":[]}");
        assert_eq!(invocation.deadline_ms, deadline);
        assert!(invocation.trace_id.starts_with("Root=1-"));
        assert_eq!((d.queued(), d.in_flight()), (0, 1));
        assert!(!d.complete("not-an-id", Reply::Error("x".into())));
        assert!(d.complete(&invocation.id, Reply::Response(Bytes::from_static(b"null"))));
        match tokio::time::timeout(SOON, invoker).await?? {
            Ok(Reply::Response(body)) => assert_eq!(&body[..], b"null"),
            other => return Err(format!("unexpected {other:?}").into()),
        }
        // Answered once: a second answer is refused.
        assert!(!d.complete(&invocation.id, Reply::Error("again".into())));
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
        let deadline = super::super::now_ms() + 60_000;
        let invokers: Vec<_> = [b"a", b"b"]
            .into_iter()
            .map(|body| {
                let d = d.clone();
                tokio::spawn(async move { d.invoke(body.to_vec(), deadline).await })
            })
            .collect();
        let mut bodies = Vec::new();
        for taker in takers {
            let invocation = tokio::time::timeout(SOON, taker).await??.ok_or("closed")?;
            bodies.push(invocation.body.clone());
            assert!(d.complete(&invocation.id, Reply::Error("handled".into())));
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
    async fn an_invocation_nobody_takes_is_withdrawn_at_its_deadline() -> TestResult {
        let d = Dispatcher::new();
        let started = std::time::Instant::now();
        let result = d.invoke(b"{}".to_vec(), super::super::now_ms() + 50).await;
        assert_eq!(result.err(), Some(InvokeError::NeverTaken));
        assert!(started.elapsed() >= Duration::from_millis(40));
        assert_eq!((d.queued(), d.in_flight()), (0, 0));
        Ok(())
    }

    #[tokio::test]
    async fn an_invocation_taken_but_not_answered_times_out_and_a_late_answer_is_refused()
    -> TestResult {
        let d = Arc::new(Dispatcher::new());
        let invoker = {
            let d = d.clone();
            let deadline = super::super::now_ms() + 100;
            tokio::spawn(async move { d.invoke(b"{}".to_vec(), deadline).await })
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
        assert!(!d.complete(&invocation.id, Reply::Response(Bytes::new())));
        assert_eq!((d.queued(), d.in_flight()), (0, 0));
        Ok(())
    }

    #[tokio::test]
    async fn a_cancelled_call_leaves_nothing_behind() -> TestResult {
        let d = Dispatcher::new();
        let deadline = super::super::now_ms() + 60_000;
        // The call gives up (like a cancelled gRPC call) while its invocation is queued.
        let gave_up = tokio::time::timeout(
            Duration::from_millis(20),
            d.invoke(b"{}".to_vec(), deadline),
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
        let result = d
            .invoke(b"{}".to_vec(), super::super::now_ms() + 60_000)
            .await;
        assert_eq!(result.err(), Some(InvokeError::Closed));
        assert!(d.next().await.is_none());
        Ok(())
    }
}
