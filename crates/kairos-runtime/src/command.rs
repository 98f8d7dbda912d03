//! Commands: decide against an aggregate's state as of the last event on its own subject, then
//! append with optimistic concurrency.
//!
//! An aggregate (a project's budget, the organisation's members and keys) is the fold of the
//! events on one subject. [`AggregateStore`] keeps that fold in memory, brought up to the
//! subject's last stored sequence (JetStream's last message by subject) when a command needs
//! it. [`AggregateStore::execute`] runs the command's decide function on that state and appends
//! the event it decides with `Nats-Expected-Last-Subject-Sequence`: if another writer (another
//! Kairos, or anything else appending to the subject) got there first, the server refuses, and
//! the command reads the newer events and decides again, a bounded number of times.
//!
//! Nothing waits for a projection, no database connection or lock is held, and the stream's
//! other subjects (the flood of LLM calls) are never read. Commands on one aggregate run one
//! at a time within a process (an async mutex: queued commands hold nothing else), so they do
//! not conflict with each other; processes conflict only with each other.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use kairos_bus::{Bus, BusError, ReadFrom};
use kairos_events::{Event, StreamSeq};
use tokio::sync::Mutex;

use crate::StoredEvent;

/// The fold of an aggregate's events.
pub trait Aggregate: Default + Send + Sync + 'static {
    /// Folds one event stored on the aggregate's subject, in stream order; events it has no use
    /// for (of other types) are passed over.
    fn fold(&mut self, event: &StoredEvent);
}

/// An aggregate whose commands may be decided together and appended as one event (a group
/// commit, [`AggregateStore::execute_grouped`]): under contention on one subject, each append
/// waits for the acknowledgement of the one before it, so commands that take turns one event
/// each are bound by that round trip.
pub trait Grouped: Aggregate + Clone {
    /// The one event that stands for `events` (two or more, decided in turn by the group's
    /// commands, each on the state folded with the ones before it): folding it must leave the
    /// state as folding them in order would.
    fn combine(events: Vec<Event>) -> Result<Event, String>;
}

/// What a decide function concluded: the event to append (none: nothing to change), and what
/// the caller gets back.
pub struct Decision<T> {
    pub event: Option<Event>,
    pub value: T,
}

impl<T> Decision<T> {
    /// Append `event`, answer `value`.
    pub fn append(event: Event, value: T) -> Self {
        Self {
            event: Some(event),
            value,
        }
    }

    /// Append nothing, answer `value`.
    pub fn nothing(value: T) -> Self {
        Self { event: None, value }
    }
}

/// What a command did.
#[derive(Debug)]
pub struct Executed<T> {
    /// Where its event was stored (`None` when it decided to append nothing).
    pub seq: Option<StreamSeq>,
    pub value: T,
    /// Decisions taken: 1 without a conflict.
    pub attempts: u32,
}

/// Why a command did not append.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E> {
    /// The decide function refused (the command is invalid against the current state).
    #[error(transparent)]
    Rejected(E),
    /// Other writers kept changing the aggregate: every attempt conflicted.
    #[error("{subject} kept changing under the command ({attempts} attempts); try again")]
    Conflict { subject: String, attempts: u32 },
    #[error(transparent)]
    Bus(#[from] BusError),
}

struct Folded<A> {
    /// The stream sequence of the last message of the subject folded (0: none).
    seq: u64,
    loaded: bool,
    state: A,
}

/// An aggregate's state, folded from its subject, and the one place its commands append.
pub struct AggregateStore<A> {
    bus: Bus,
    /// The subject the aggregate's events are appended to.
    subject: String,
    /// Subjects an earlier layout stored its events under: folded at the first load, never
    /// appended to.
    legacy: Vec<String>,
    state: RwLock<Folded<A>>,
    /// One command (or one group of commands) at a time per process.
    turn: Arc<Mutex<()>>,
    /// Commands waiting to be decided together ([`AggregateStore::execute_grouped`]).
    queue: std::sync::Mutex<Vec<Box<dyn Queued<A>>>>,
    attempts: u32,
}

/// Writers that met head on would meet again: a random pause of up to 2^attempt ms sets them
/// apart (the clock's nanoseconds are random enough).
fn backoff(attempt: u32) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    Duration::from_millis(u64::from(nanos) % (1u64 << attempt.min(6)))
}

/// How long a read of the subject waits for a message the server said was there.
const READ_WAIT: Duration = Duration::from_secs(10);

impl<A: Aggregate> AggregateStore<A> {
    /// The store of the aggregate on `subject` (see [`AggregateStore::with_legacy`]); nothing is
    /// read until the first command or [`AggregateStore::catch_up`].
    pub fn new(bus: Bus, subject: String) -> Arc<Self> {
        Self::with_legacy(bus, subject, Vec::new())
    }

    /// As [`AggregateStore::new`], also folding what `legacy` subjects hold.
    pub fn with_legacy(bus: Bus, subject: String, legacy: Vec<String>) -> Arc<Self> {
        let store = Arc::new(Self {
            bus,
            subject,
            legacy,
            state: RwLock::new(Folded {
                seq: 0,
                loaded: false,
                state: A::default(),
            }),
            turn: Arc::new(Mutex::new(())),
            queue: std::sync::Mutex::new(Vec::new()),
            attempts: 5,
        });
        // Shown from the start, at 0, rather than after the first conflict.
        metrics::counter!("kairos_command_conflicts_total", "aggregate" => store.aggregate().to_owned())
            .increment(0);
        store
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Reads the state as folded so far (no I/O; see [`AggregateStore::catch_up`]).
    pub fn read<R>(&self, f: impl FnOnce(&A) -> R) -> R {
        let folded = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&folded.state)
    }

    /// The sequence the state reflects: the last message of the subject folded.
    pub fn seq(&self) -> u64 {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .seq
    }

    /// Brings the state up to the last message stored on the subject; its sequence.
    pub async fn catch_up(&self) -> Result<u64, BusError> {
        let last = self.bus.last_seq_on(&self.subject).await?;
        let (from, loaded) = {
            let f = self
                .state
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (f.seq, f.loaded)
        };
        let mut events = Vec::new();
        if !loaded {
            for legacy in &self.legacy {
                let upto = self.bus.last_seq_on(legacy).await?;
                events.extend(self.read_subject(legacy, 1, upto).await?);
            }
        }
        if last > from {
            events.extend(self.read_subject(&self.subject, from + 1, last).await?);
        }
        events.sort_by_key(|e| e.seq);
        let mut f = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A concurrent catch-up (the follower's and a command's) may have folded some already.
        for e in &events {
            if e.seq.0 > f.seq {
                f.state.fold(e);
                f.seq = e.seq.0;
            }
        }
        f.seq = f.seq.max(last);
        f.loaded = true;
        Ok(f.seq)
    }

    /// The events stored on `subject` from `from` to `to`, inclusive. Messages that are not
    /// valid events (a projection dead-letters them) are passed over.
    async fn read_subject(
        &self,
        subject: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<StoredEvent>, BusError> {
        let mut out = Vec::new();
        if to < from {
            return Ok(out);
        }
        let mut reader = self
            .bus
            .read(ReadFrom::Seq(StreamSeq(from)), Some(subject.to_owned()))
            .await?;
        if reader.pending_at_start() == 0 {
            return Ok(out);
        }
        let door = &crate::Door::of(&self.bus);
        while let Some(m) = reader.next(READ_WAIT).await? {
            if m.seq.0 > to {
                break;
            }
            if let Ok(e) = crate::stored_event(door, m.seq, &m.subject, m.stored_at, &m.payload) {
                out.push(e);
            }
            if m.seq.0 >= to || m.pending == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// Folds `event`, appended at `seq`, if the state has not seen it.
    fn fold_appended(&self, event: &Event, seq: StreamSeq) {
        let mut f = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seq.0 > f.seq {
            f.state.fold(&self.as_stored(event, seq));
            f.seq = seq.0;
        }
    }

    /// `event` as this process appends it to the subject at `seq`.
    fn as_stored(&self, event: &Event, seq: StreamSeq) -> StoredEvent {
        StoredEvent {
            seq,
            subject: self.subject.clone(),
            stored_at: event.time().unwrap_or_else(chrono::Utc::now),
            event: event.clone(),
            // This process appended it: signed if it signs.
            vouched: true,
        }
    }

    /// Decides against the current state and appends what `decide` concludes, deciding again
    /// (on the newer state) when another writer appended first.
    pub async fn execute<T, E>(
        &self,
        decide: impl FnMut(&A) -> Result<Decision<T>, E>,
    ) -> Result<Executed<T>, CommandError<E>> {
        let result = self.decide_and_append(decide).await;
        self.counted(result)
    }

    /// `result`, counted in the commands' metrics by outcome.
    fn counted<T, E>(
        &self,
        result: Result<Executed<T>, CommandError<E>>,
    ) -> Result<Executed<T>, CommandError<E>> {
        let outcome = match &result {
            Ok(done) if done.seq.is_some() => "appended",
            Ok(_) => "unchanged",
            Err(CommandError::Rejected(_)) => "rejected",
            Err(CommandError::Conflict { .. }) => "conflict",
            Err(CommandError::Bus(_)) => "failed",
        };
        crate::metrics::command(self.aggregate(), outcome);
        result
    }

    /// The aggregate's kind, for metrics: its subject's category (`access`, `budget`).
    fn aggregate(&self) -> &str {
        self.subject.split('.').rev().nth(1).unwrap_or("")
    }

    async fn decide_and_append<T, E>(
        &self,
        mut decide: impl FnMut(&A) -> Result<Decision<T>, E>,
    ) -> Result<Executed<T>, CommandError<E>> {
        let _turn = self.turn.lock().await;
        let loaded = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .loaded;
        if !loaded {
            self.catch_up().await?;
        }
        // A refusal is only as good as the state it was decided on: the first one is decided
        // again after reading what the subject holds beyond it (another process may have
        // created what the command names, or moved the version it expects).
        let mut verified = false;
        for attempt in 1..=self.attempts {
            let (expected, decision) = {
                let f = self
                    .state
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                (f.seq, decide(&f.state))
            };
            let decision = match decision {
                Ok(d) => d,
                Err(e) if verified => return Err(CommandError::Rejected(e)),
                Err(e) => {
                    verified = true;
                    if self.catch_up().await? == expected {
                        // Nothing new: the refusal stands on the latest state.
                        return Err(CommandError::Rejected(e));
                    }
                    continue;
                }
            };
            let Decision { event, value } = decision;
            let Some(event) = event else {
                return Ok(Executed {
                    seq: None,
                    value,
                    attempts: attempt,
                });
            };
            match self.bus.publish_if_last(&event, expected).await {
                Ok(receipt) if !receipt.duplicate => {
                    self.fold_appended(&event, receipt.seq);
                    return Ok(Executed {
                        seq: Some(receipt.seq),
                        value,
                        attempts: attempt,
                    });
                }
                // The same event (same id) was stored before: it is in the stream, though not
                // necessarily folded here yet.
                Ok(receipt) => {
                    self.catch_up().await?;
                    return Ok(Executed {
                        seq: Some(receipt.seq),
                        value,
                        attempts: attempt,
                    });
                }
                Err(BusError::Conflict { .. }) => {
                    crate::metrics::command_conflict(self.aggregate());
                    tracing::debug!(subject = %self.subject, attempt, "command conflicted; deciding again");
                    tokio::time::sleep(backoff(attempt)).await;
                    self.catch_up().await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommandError::Conflict {
            subject: self.subject.clone(),
            attempts: self.attempts,
        })
    }

    /// Folds what other writers append to the subject as it arrives, so reads of the state
    /// (say, authentication) see them within moments; runs until the bus closes.
    pub async fn follow(self: Arc<Self>) {
        loop {
            if let Err(e) = self.follow_once().await {
                tracing::warn!(subject = %self.subject, error = %e, "following the aggregate failed; retrying");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn follow_once(&self) -> Result<(), BusError> {
        self.catch_up().await?;
        let mut reader = self
            .bus
            .read(
                ReadFrom::Seq(StreamSeq(self.seq() + 1)),
                Some(self.subject.clone()),
            )
            .await?;
        let door = crate::Door::of(&self.bus);
        loop {
            let Some(m) = reader.next(Duration::from_secs(60)).await? else {
                continue;
            };
            let event = crate::stored_event(&door, m.seq, &m.subject, m.stored_at, &m.payload);
            let mut f = self
                .state
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if m.seq.0 > f.seq {
                // A message that is no valid event is passed over, as the projections
                // dead-letter it; the sequence moves past it all the same.
                if let Ok(e) = event {
                    f.state.fold(&e);
                }
                f.seq = m.seq.0;
            }
        }
    }
}

/// A command queued for a group: it decides on the state it is given, and is told how the
/// group's append went.
trait Queued<A>: Send {
    /// Decides (again, after a conflict) on `state`: the event it would append, if any.
    fn decide(&mut self, state: &A) -> Step;
    /// The group was appended at `seq` (or had nothing to append) in `attempts` decisions.
    fn done(self: Box<Self>, seq: Option<StreamSeq>, attempts: u32);
    /// The group could not be appended.
    fn failed(self: Box<Self>, error: GroupError);
}

enum Step {
    Append(Event),
    Nothing,
    Refused,
}

#[derive(Clone)]
enum GroupError {
    Conflict { subject: String, attempts: u32 },
    Bus(String),
}

struct Command<A, T, E, F> {
    decide: F,
    /// The last decision: its value (none while refused) and whether it appends.
    decided: Option<Result<(T, bool), E>>,
    reply: tokio::sync::oneshot::Sender<Result<Executed<T>, CommandError<E>>>,
    _state: std::marker::PhantomData<fn(&A)>,
}

impl<A, T, E, F> Queued<A> for Command<A, T, E, F>
where
    A: Send + Sync,
    T: Send,
    E: Send,
    F: FnMut(&A) -> Result<Decision<T>, E> + Send,
{
    fn decide(&mut self, state: &A) -> Step {
        let (step, decided) = match (self.decide)(state) {
            Ok(Decision {
                event: Some(e),
                value,
            }) => (Step::Append(e), Ok((value, true))),
            Ok(Decision { event: None, value }) => (Step::Nothing, Ok((value, false))),
            Err(e) => (Step::Refused, Err(e)),
        };
        self.decided = Some(decided);
        step
    }

    fn done(self: Box<Self>, seq: Option<StreamSeq>, attempts: u32) {
        let answer = match self.decided {
            Some(Ok((value, appended))) => Ok(Executed {
                seq: seq.filter(|_| appended),
                value,
                attempts,
            }),
            Some(Err(e)) => Err(CommandError::Rejected(e)),
            None => Err(CommandError::Bus(BusError::Publish {
                subject: String::new(),
                message: "the command was never decided".into(),
            })),
        };
        let _ = self.reply.send(answer);
    }

    fn failed(self: Box<Self>, error: GroupError) {
        let _ = self.reply.send(Err(match error {
            GroupError::Conflict { subject, attempts } => {
                CommandError::Conflict { subject, attempts }
            }
            GroupError::Bus(message) => CommandError::Bus(BusError::Publish {
                subject: String::new(),
                message,
            }),
        }));
    }
}

/// At most this many commands in one group.
const GROUP_MAX: usize = 200;

impl<A: Grouped> AggregateStore<A> {
    /// As [`AggregateStore::execute`], but the commands that queue on the aggregate while a
    /// group is being appended are decided together, each on the state folded with the events
    /// decided before it in the group, and appended as one event ([`Grouped::combine`]) with
    /// optimistic concurrency. On a conflict the whole group decides again. A command whose
    /// decision is refused is refused alone (once checked against the subject's newest
    /// events, as `execute` does); the rest of its group goes on.
    ///
    /// The group is appended on a task of its own: a caller that stops waiting cancels
    /// neither its own command nor the others'.
    pub async fn execute_grouped<T, E, F>(
        self: &Arc<Self>,
        decide: F,
    ) -> Result<Executed<T>, CommandError<E>>
    where
        T: Send + 'static,
        E: Send + 'static,
        F: FnMut(&A) -> Result<Decision<T>, E> + Send + 'static,
    {
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Box::new(Command {
                decide,
                decided: None,
                reply,
                _state: std::marker::PhantomData,
            }));
        // Whoever holds the turn next appends what is queued: this command's group, unless an
        // earlier turn took it along.
        let result = tokio::select! {
            biased;
            r = &mut answer => r.ok(),
            turn = self.turn.clone().lock_owned() => {
                let mut turn = turn;
                loop {
                    let store = self.clone();
                    // A group runs to its end even if this caller goes away.
                    turn = match tokio::spawn(async move {
                        store.append_queued().await;
                        turn
                    })
                    .await
                    {
                        Ok(turn) => turn,
                        Err(_) => break None,
                    };
                    match answer.try_recv() {
                        Ok(r) => break Some(r),
                        // Queued behind a full group: the next one.
                        Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {}
                        Err(tokio::sync::oneshot::error::TryRecvError::Closed) => break None,
                    }
                }
            }
        };
        let result = result.unwrap_or_else(|| {
            Err(CommandError::Bus(BusError::Publish {
                subject: self.subject.clone(),
                message: "the command's group ended without an answer".into(),
            }))
        });
        self.counted(result)
    }

    /// Appends the first [`GROUP_MAX`] commands queued, as one group.
    async fn append_queued(&self) {
        let group: Vec<_> = {
            let mut q = self
                .queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = q.len().min(GROUP_MAX);
            q.drain(..n).collect()
        };
        if !group.is_empty() {
            self.append_group(group).await;
        }
    }

    /// Decides `group` in order and appends what it decides as one event.
    async fn append_group(&self, mut group: Vec<Box<dyn Queued<A>>>) {
        let fail = |group: Vec<Box<dyn Queued<A>>>, e: GroupError| {
            for c in group {
                c.failed(e.clone());
            }
        };
        let loaded = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .loaded;
        if !loaded && let Err(e) = self.catch_up().await {
            return fail(group, GroupError::Bus(e.to_string()));
        }
        let mut verified = false;
        for attempt in 1..=self.attempts {
            let (expected, mut events, refused) = {
                let f = self
                    .state
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let (mut events, mut refused) = (Vec::new(), false);
                if let [one] = group.as_mut_slice() {
                    match one.decide(&f.state) {
                        Step::Append(e) => events.push(e),
                        Step::Nothing => {}
                        Step::Refused => refused = true,
                    }
                } else {
                    // Each decides on the state with the group's events before it folded in.
                    let mut scratch = f.state.clone();
                    for c in &mut group {
                        match c.decide(&scratch) {
                            Step::Append(e) => {
                                scratch.fold(&self.as_stored(&e, StreamSeq(f.seq + 1)));
                                events.push(e);
                            }
                            Step::Nothing => {}
                            Step::Refused => refused = true,
                        }
                    }
                }
                (f.seq, events, refused)
            };
            // A refusal is only as good as the state it was decided on (see `decide_and_append`).
            if refused && !verified {
                verified = true;
                match self.catch_up().await {
                    Ok(seq) if seq != expected => continue,
                    Ok(_) => {}
                    Err(e) => return fail(group, GroupError::Bus(e.to_string())),
                }
            }
            let event = match events.len() {
                0 => {
                    for c in group {
                        c.done(None, attempt);
                    }
                    return;
                }
                1 => events.pop().expect("one event"),
                _ => match A::combine(events) {
                    Ok(e) => e,
                    Err(e) => return fail(group, GroupError::Bus(e)),
                },
            };
            match self.bus.publish_if_last(&event, expected).await {
                Ok(receipt) => {
                    if receipt.duplicate {
                        if let Err(e) = self.catch_up().await {
                            return fail(group, GroupError::Bus(e.to_string()));
                        }
                    } else {
                        self.fold_appended(&event, receipt.seq);
                    }
                    for c in group {
                        c.done(Some(receipt.seq), attempt);
                    }
                    return;
                }
                Err(BusError::Conflict { .. }) => {
                    crate::metrics::command_conflict(self.aggregate());
                    tokio::time::sleep(backoff(attempt)).await;
                    if let Err(e) = self.catch_up().await {
                        return fail(group, GroupError::Bus(e.to_string()));
                    }
                }
                Err(e) => return fail(group, GroupError::Bus(e.to_string())),
            }
        }
        fail(
            group,
            GroupError::Conflict {
                subject: self.subject.clone(),
                attempts: self.attempts,
            },
        );
    }
}
