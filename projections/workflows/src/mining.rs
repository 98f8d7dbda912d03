//! Frequent task sequences in workflow sessions: contiguous runs and gapped sequential patterns,
//! for a project or per actor, and the actors whose recent sequences depart from their own past.
//!
//! Pure functions over [`Session`]s; the projection loads the sessions and stores the answers.
//!
//! # Definitions
//!
//! - A session's tasks are taken in time order (ties keep their input order); at most
//!   [`MiningConfig::max_session_len`] of its first tasks are looked at.
//! - **Support** of a pattern: the number of distinct sessions that contain it at least once.
//! - A **contiguous** pattern occurs where its tasks appear back to back. A **gapped** pattern
//!   occurs where its tasks appear in order with at most [`MiningConfig::max_gap`] other tasks
//!   between two consecutive ones (`None`: any number, classic PrefixSpan).
//! - **Confidence** of `t1 … tn`: support(`t1 … tn`) / support(`t1 … tn-1`), both of the same
//!   kind, where a single task's support is the number of sessions that ran it. Of the sessions
//!   that did the prefix, the fraction that went on to the last task.
//! - **First / last seen**: the earliest and the latest time at which an occurrence of the
//!   pattern ends (the time of its last task), over all sessions.
//! - **Examples**: up to three sessions containing the pattern, the earliest-starting first.
//! - **Closed**: among the frequent patterns of one kind (length 2 ..= `max_len`), a pattern is
//!   dropped when another one that contains it (as a subsequence for gapped patterns, as a
//!   contiguous run for contiguous ones) has the same support: the longer one says everything the
//!   shorter one does. A gapped pattern is also dropped when the contiguous pattern with the same
//!   tasks has the same support (every session that has it has it back to back).
//!
//! # Bounds
//!
//! Mining is level-wise PrefixSpan (Pei et al. 2001) over projected databases that keep, per
//! session, the end positions of the prefix's occurrences (all of them under a gap window, the
//! earliest one without). Every task position a projection step looks at counts as one unit of
//! work. Each kind stops extending once it has spent [`MiningConfig::max_work`] units (a step
//! in progress is abandoned, so the overshoot is at most one session's scan) or found
//! [`MiningConfig::max_frequent`] patterns; [`MiningStats::complete`] then says `false`. Patterns
//! are grown shortest first and, within a length, highest support first, so a truncated answer
//! is missing the longest and rarest patterns. Building the length-1 projections costs one unit
//! per task on top of the budget.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One task run inside a session: its task type and when it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub task: String,
    pub at: DateTime<Utc>,
}

/// One workflow run of a project: the tasks it ran, by whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub actor: Option<String>,
    pub tasks: Vec<Step>,
}

/// The least support a pattern needs to be reported.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum MinSupport {
    /// At least this many sessions (at least 1).
    Sessions(usize),
    /// At least this fraction of the sessions mined, rounded up, and never fewer than 2
    /// sessions: a sequence seen once is not a pattern.
    Fraction(f64),
}

impl MinSupport {
    /// The absolute support threshold over `sessions` sessions.
    pub fn absolute(self, sessions: usize) -> usize {
        match self {
            Self::Sessions(n) => n.max(1),
            Self::Fraction(f) => {
                let f = if f.is_nan() { 1.0 } else { f.clamp(0.0, 1.0) };
                ((f * sessions as f64).ceil() as usize).max(2)
            }
        }
    }
}

/// How to mine. [`MiningConfig::default`] suits a project's recent sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MiningConfig {
    /// Default: 5% of the sessions, at least 2.
    pub min_support: MinSupport,
    /// Longest pattern, clamped to 2..=8. Default 6.
    pub max_len: usize,
    /// Most other tasks allowed between two consecutive tasks of a gapped pattern; `None` for no
    /// window. Default `Some(3)`.
    pub max_gap: Option<usize>,
    /// Most patterns returned (after closedness and sorting). Default 200.
    pub max_patterns: usize,
    /// Work budget per kind, in task positions scanned. Default 5,000,000.
    pub max_work: u64,
    /// Most frequent patterns held per kind before closedness. Default 20,000.
    pub max_frequent: usize,
    /// Tasks looked at per session (its first ones). Default 10,000.
    pub max_session_len: usize,
}

impl Default for MiningConfig {
    fn default() -> Self {
        Self {
            min_support: MinSupport::Fraction(0.05),
            max_len: 6,
            max_gap: Some(3),
            max_patterns: 200,
            max_work: 5_000_000,
            max_frequent: 20_000,
            max_session_len: 10_000,
        }
    }
}

/// Longest pattern length accepted: closedness checks every sub-pattern, 2^len per pattern.
pub const MAX_PATTERN_LEN: usize = 8;

/// Whether a pattern's tasks must be back to back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatternKind {
    Contiguous,
    Gapped,
}

/// A frequent task sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pattern {
    pub tasks: Vec<String>,
    pub kind: PatternKind,
    /// Sessions containing it.
    pub support: usize,
    /// support / support of the pattern without its last task.
    pub confidence: f64,
    /// Earliest end of an occurrence.
    pub first_seen: DateTime<Utc>,
    /// Latest end of an occurrence.
    pub last_seen: DateTime<Utc>,
    /// Up to three session ids containing it, the earliest-starting first.
    pub examples: Vec<String>,
}

/// What a mining run looked at and how far it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MiningStats {
    /// Sessions mined (the support fraction's denominator).
    pub sessions: usize,
    /// The absolute support threshold used.
    pub min_support: usize,
    /// Frequent patterns of length >= 2 found, both kinds, before closedness.
    pub frequent: usize,
    /// Work spent, both kinds, including the length-1 projections.
    pub work: u64,
    /// False when a budget stopped the search: longer or rarer patterns may be missing.
    pub complete: bool,
    /// Tasks ignored because their session was longer than `max_session_len`.
    pub truncated_tasks: usize,
}

/// Patterns sorted by support (desc), length (desc), tasks (lexicographic), kind (contiguous
/// first), and the run's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mined {
    pub patterns: Vec<Pattern>,
    pub stats: MiningStats,
}

/// One actor's patterns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActorPatterns {
    pub actor: String,
    pub mined: Mined,
}

/// Mines `sessions` (one project's, or any set) for contiguous and gapped patterns.
///
/// ```
/// use chrono::{TimeZone, Utc};
/// use kairos_workflows::mining::{mine, MinSupport, MiningConfig, Session, Step};
///
/// let run = |id: &str, tasks: &[&str]| Session {
///     id: id.into(),
///     actor: None,
///     tasks: tasks
///         .iter()
///         .zip(0..)
///         .map(|(t, i)| Step { task: (*t).into(), at: Utc.timestamp_opt(i, 0).unwrap() })
///         .collect(),
/// };
/// let sessions = [run("a", &["plan", "edit", "test"]), run("b", &["plan", "edit", "lint", "test"])];
/// let config = MiningConfig { min_support: MinSupport::Sessions(2), ..MiningConfig::default() };
/// let mined = mine(&sessions, &config);
/// assert_eq!(mined.patterns[0].tasks, ["plan", "edit", "test"]);
/// ```
pub fn mine(sessions: &[Session], config: &MiningConfig) -> Mined {
    let refs: Vec<&Session> = sessions.iter().collect();
    mine_refs(&refs, config, config.max_work)
}

/// [`mine`] over each actor's sessions separately, sorted by actor; sessions without an actor are
/// left out. The support fraction is of the actor's own sessions. The work budget is shared out
/// in proportion to each actor's task count, with at least four units per task, so the whole
/// call spends about `max_work` + 5 × (tasks looked at) per kind.
pub fn mine_by_actor(sessions: &[Session], config: &MiningConfig) -> Vec<ActorPatterns> {
    let groups = by_actor(sessions);
    let total: u64 = groups
        .values()
        .flatten()
        .map(|s| s.tasks.len().min(config.max_session_len) as u64)
        .sum();
    groups
        .into_iter()
        .map(|(actor, group)| {
            let tasks: u64 = group
                .iter()
                .map(|s| s.tasks.len().min(config.max_session_len) as u64)
                .sum();
            let share = if total == 0 {
                0
            } else {
                ((u128::from(config.max_work) * u128::from(tasks)) / u128::from(total)) as u64
            };
            ActorPatterns {
                actor: actor.to_owned(),
                mined: mine_refs(&group, config, share.max(tasks.saturating_mul(4))),
            }
        })
        .collect()
}

/// Sessions grouped by actor, in input order within an actor; sessions without one left out.
pub fn by_actor(sessions: &[Session]) -> BTreeMap<&str, Vec<&Session>> {
    let mut groups: BTreeMap<&str, Vec<&Session>> = BTreeMap::new();
    for s in sessions {
        if let Some(actor) = s.actor.as_deref() {
            groups.entry(actor).or_default().push(s);
        }
    }
    groups
}

fn mine_refs(sessions: &[&Session], config: &MiningConfig, max_work: u64) -> Mined {
    let corpus = Corpus::new(sessions, config.max_session_len);
    let min_support = config.min_support.absolute(corpus.sessions.len());
    let min = u32::try_from(min_support).unwrap_or(u32::MAX);
    let max_len = config.max_len.clamp(2, MAX_PATTERN_LEN);
    let limits = Limits {
        min_support: min,
        max_len,
        max_work,
        max_frequent: config.max_frequent,
    };
    let contiguous = grow(&corpus, Window::Gap(0), &limits);
    let gapped = grow(
        &corpus,
        config.max_gap.map_or(Window::Unbounded, Window::Gap),
        &limits,
    );
    let frequent = contiguous.found.len() + gapped.found.len();
    let stats = MiningStats {
        sessions: corpus.sessions.len(),
        min_support,
        frequent,
        work: contiguous.work + gapped.work,
        complete: contiguous.complete && gapped.complete,
        truncated_tasks: corpus.truncated_tasks,
    };

    let contiguous_support: HashMap<&[u32], u32> = contiguous
        .found
        .iter()
        .map(|f| (f.items.as_slice(), f.support))
        .collect();
    let mut patterns: Vec<(PatternKind, &Found)> =
        closed(&contiguous.found, PatternKind::Contiguous)
            .map(|f| (PatternKind::Contiguous, f))
            .collect();
    patterns.extend(
        closed(&gapped.found, PatternKind::Gapped)
            .filter(|f| contiguous_support.get(f.items.as_slice()) != Some(&f.support))
            .map(|f| (PatternKind::Gapped, f)),
    );
    // Task ids are assigned in lexicographic order of the task names, so comparing id
    // sequences compares the names.
    patterns.sort_by(|(ka, a), (kb, b)| {
        b.support
            .cmp(&a.support)
            .then(b.items.len().cmp(&a.items.len()))
            .then_with(|| a.items.cmp(&b.items))
            .then(ka.cmp(kb))
    });
    patterns.truncate(config.max_patterns);
    let patterns = patterns
        .into_iter()
        .map(|(kind, f)| Pattern {
            tasks: f.items.iter().map(|&i| corpus.name(i).to_owned()).collect(),
            kind,
            support: f.support as usize,
            confidence: f64::from(f.support) / f64::from(f.prefix_support.max(1)),
            first_seen: f.first_seen,
            last_seen: f.last_seen,
            examples: f
                .examples
                .iter()
                .map(|&s| corpus.sessions[s as usize].session.id.clone())
                .collect(),
        })
        .collect();
    Mined { patterns, stats }
}

/// Sessions with their tasks in time order, task types interned as ids in lexicographic order,
/// and sessions sorted by (start, id).
pub(crate) struct Corpus<'a> {
    names: Vec<&'a str>,
    pub(crate) sessions: Vec<Encoded<'a>>,
    pub(crate) truncated_tasks: usize,
}

pub(crate) struct Encoded<'a> {
    pub(crate) session: &'a Session,
    pub(crate) items: Vec<u32>,
    pub(crate) times: Vec<DateTime<Utc>>,
}

impl Encoded<'_> {
    pub(crate) fn start(&self) -> Option<DateTime<Utc>> {
        self.times.first().copied()
    }
}

impl<'a> Corpus<'a> {
    pub(crate) fn new(sessions: &[&'a Session], max_session_len: usize) -> Self {
        let mut truncated_tasks = 0;
        // Provisional ids in order of first appearance, renumbered below in name order.
        let mut ids: HashMap<&'a str, u32> = HashMap::new();
        let mut names: Vec<&'a str> = Vec::new();
        let mut encoded: Vec<Encoded<'a>> = sessions
            .iter()
            .map(|&session| {
                let mut steps: Vec<&'a Step> = session.tasks.iter().collect();
                if !steps.is_sorted_by_key(|step| step.at) {
                    steps.sort_by_key(|step| step.at);
                }
                truncated_tasks += steps.len().saturating_sub(max_session_len);
                steps.truncate(max_session_len);
                let items = steps
                    .iter()
                    .map(|step| {
                        *ids.entry(step.task.as_str()).or_insert_with(|| {
                            names.push(step.task.as_str());
                            idx(names.len() - 1)
                        })
                    })
                    .collect();
                Encoded {
                    session,
                    items,
                    times: steps.iter().map(|step| step.at).collect(),
                }
            })
            .collect();
        let mut order: Vec<u32> = (0..idx(names.len())).collect();
        order.sort_by_key(|&i| names[i as usize]);
        let mut renumber = vec![0u32; names.len()];
        for (new, &old) in (0u32..).zip(&order) {
            renumber[old as usize] = new;
        }
        for e in &mut encoded {
            for x in &mut e.items {
                *x = renumber[*x as usize];
            }
        }
        let names = order.iter().map(|&i| names[i as usize]).collect();
        encoded.sort_by(|a, b| {
            a.start()
                .cmp(&b.start())
                .then_with(|| a.session.id.cmp(&b.session.id))
        });
        Self {
            names,
            sessions: encoded,
            truncated_tasks,
        }
    }

    pub(crate) fn name(&self, id: u32) -> &'a str {
        self.names.get(id as usize).copied().unwrap_or("")
    }
}

#[derive(Debug, Clone, Copy)]
enum Window {
    /// At most this many other tasks between consecutive pattern tasks.
    Gap(usize),
    Unbounded,
}

struct Limits {
    min_support: u32,
    max_len: usize,
    max_work: u64,
    max_frequent: usize,
}

/// A position where an occurrence of a pattern ends.
#[derive(Debug, Clone, Copy)]
struct Occ {
    session: u32,
    pos: u32,
}

/// A frequent pattern with its projected database, sorted by (session, pos).
struct Node {
    items: Vec<u32>,
    support: u32,
    occ: Vec<Occ>,
}

/// A frequent pattern found, as reported.
struct Found {
    items: Vec<u32>,
    support: u32,
    prefix_support: u32,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    examples: Vec<u32>,
}

/// A one-task extension of a pattern being collected.
struct Child {
    occ: Vec<Occ>,
    support: u32,
    /// The latest end recorded, and its time.
    last: Option<(Occ, DateTime<Utc>)>,
    first_seen: Option<DateTime<Utc>>,
    /// The latest end time over the sessions before `last`'s.
    last_seen: Option<DateTime<Utc>>,
    examples: Vec<u32>,
}

const EXAMPLES: usize = 3;

impl Child {
    fn new() -> Self {
        Self {
            occ: Vec::new(),
            support: 0,
            last: None,
            first_seen: None,
            last_seen: None,
            examples: Vec::new(),
        }
    }

    fn in_session(&self, session: u32) -> bool {
        self.last.is_some_and(|(l, _)| l.session == session)
    }

    /// Records that the extended pattern ends at `pos` of `session` at time `at`; `keep` says
    /// whether the end goes into the projection. Calls come in (session, pos) order except for
    /// repeats, which are ignored; so within a session the last call has the latest time.
    fn end(&mut self, session: u32, pos: u32, at: DateTime<Utc>, keep: bool) {
        match self.last {
            Some((l, _)) if l.session == session && l.pos >= pos => return,
            Some((l, _)) if l.session == session => {}
            _ => {
                self.last_seen = self.last_seen();
                self.support += 1;
                if self.examples.len() < EXAMPLES {
                    self.examples.push(session);
                }
                self.first_seen = Some(self.first_seen.map_or(at, |f| f.min(at)));
            }
        }
        self.last = Some((Occ { session, pos }, at));
        if keep {
            self.occ.push(Occ { session, pos });
        }
    }

    fn last_seen(&self) -> Option<DateTime<Utc>> {
        match (self.last_seen, self.last) {
            (Some(a), Some((_, b))) => Some(a.max(b)),
            (a, b) => a.or(b.map(|(_, at)| at)),
        }
    }
}

struct Grown {
    found: Vec<Found>,
    work: u64,
    complete: bool,
}

fn idx(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

fn grow(corpus: &Corpus<'_>, window: Window, limits: &Limits) -> Grown {
    let mut work = 0u64;
    let mut complete = true;
    let mut found = Vec::new();

    // Length 1: every position ends an occurrence; without a window only the earliest one per
    // session is needed.
    let mut seeds: Vec<Child> = (0..corpus.names.len()).map(|_| Child::new()).collect();
    for (s, seq) in corpus.sessions.iter().enumerate() {
        for (q, (&x, &at)) in seq.items.iter().zip(&seq.times).enumerate() {
            let Some(child) = seeds.get_mut(x as usize) else {
                continue;
            };
            let keep = matches!(window, Window::Gap(_)) || !child.in_session(idx(s));
            child.end(idx(s), idx(q), at, keep);
        }
        work += seq.items.len() as u64;
    }
    let mut level: Vec<Node> = seeds
        .into_iter()
        .zip(0u32..)
        .filter(|(c, _)| c.support >= limits.min_support)
        .map(|(c, x)| Node {
            items: vec![x],
            support: c.support,
            occ: c.occ,
        })
        .collect();
    let mut scratch = Scratch {
        slot: vec![0; corpus.names.len()],
        children: Vec::new(),
    };

    let mut len = 1;
    while !level.is_empty() && len < limits.max_len {
        level.sort_by(|a, b| {
            b.support
                .cmp(&a.support)
                .then_with(|| a.items.cmp(&b.items))
        });
        let mut next = Vec::new();
        for node in level {
            if work >= limits.max_work || found.len() >= limits.max_frequent {
                complete = false;
                break;
            }
            let Some(children) = extend(
                corpus,
                &node,
                window,
                limits.max_work,
                &mut work,
                &mut scratch,
            ) else {
                complete = false;
                break;
            };
            for (x, child) in children.drain(..) {
                if child.support < limits.min_support {
                    continue;
                }
                if found.len() >= limits.max_frequent {
                    complete = false;
                    break;
                }
                let mut items = node.items.clone();
                items.push(x);
                let (Some(first_seen), Some(last_seen)) = (child.first_seen, child.last_seen())
                else {
                    continue;
                };
                found.push(Found {
                    items: items.clone(),
                    support: child.support,
                    prefix_support: node.support,
                    first_seen,
                    last_seen,
                    examples: child.examples,
                });
                if items.len() < limits.max_len {
                    next.push(Node {
                        items,
                        support: child.support,
                        occ: child.occ,
                    });
                }
            }
        }
        level = next;
        len += 1;
    }
    Grown {
        found,
        work,
        complete,
    }
}

/// Reused between extensions: `slot[task]` is 1 + the index of the task's child in `children`,
/// or 0, and is cleared again for the touched tasks only.
struct Scratch {
    slot: Vec<u32>,
    children: Vec<(u32, Child)>,
}

impl Scratch {
    fn child(&mut self, x: u32) -> &mut Child {
        let slot = &mut self.slot[x as usize];
        if *slot == 0 {
            self.children.push((x, Child::new()));
            *slot = idx(self.children.len());
        }
        &mut self.children[*slot as usize - 1].1
    }

    /// The children collected, sorted by task, leaving the slots clear.
    fn take(&mut self) -> &mut Vec<(u32, Child)> {
        for (x, _) in &self.children {
            self.slot[*x as usize] = 0;
        }
        self.children.sort_by_key(|(x, _)| *x);
        &mut self.children
    }
}

/// The one-task extensions of `node`, sorted by task id, or `None` when the budget ran out
/// part-way (the partial counts would be wrong).
fn extend<'s>(
    corpus: &Corpus<'_>,
    node: &Node,
    window: Window,
    max_work: u64,
    work: &mut u64,
    scratch: &'s mut Scratch,
) -> Option<&'s mut Vec<(u32, Child)>> {
    let occ = &node.occ;
    let mut i = 0;
    while i < occ.len() {
        let s = occ[i].session;
        let Some(seq) = corpus.sessions.get(s as usize) else {
            i += 1;
            continue;
        };
        let n = seq.items.len();
        match window {
            Window::Gap(g) => {
                while i < occ.len() && occ[i].session == s {
                    let p = occ[i].pos as usize;
                    let hi = (p + 1 + g).min(n.saturating_sub(1));
                    for q in p + 1..=hi {
                        scratch
                            .child(seq.items[q])
                            .end(s, idx(q), seq.times[q], true);
                    }
                    *work += hi.saturating_sub(p) as u64;
                    i += 1;
                }
            }
            Window::Unbounded => {
                // Projections hold the earliest end only: the earliest occurrence of each task
                // after it goes into the child's projection, and every later one can end an
                // occurrence (for last seen).
                let p = occ[i].pos as usize;
                for q in p + 1..n {
                    let child = scratch.child(seq.items[q]);
                    let keep = !child.in_session(s);
                    child.end(s, idx(q), seq.times[q], keep);
                }
                *work += n.saturating_sub(p + 1) as u64;
                while i < occ.len() && occ[i].session == s {
                    i += 1;
                }
            }
        }
        if *work > max_work {
            scratch.take().clear();
            return None;
        }
    }
    Some(scratch.take())
}

/// The patterns of `found` (one kind) that no other pattern of it contains with the same
/// support, in `found` order.
fn closed(found: &[Found], kind: PatternKind) -> impl Iterator<Item = &Found> {
    let index: HashMap<&[u32], usize> = found
        .iter()
        .enumerate()
        .map(|(i, f)| (f.items.as_slice(), i))
        .collect();
    let mut open = vec![false; found.len()];
    let mut buf: Vec<u32> = Vec::with_capacity(MAX_PATTERN_LEN);
    for f in found {
        let n = f.items.len();
        let mut mark = |sub: &[u32]| {
            if let Some(&j) = index.get(sub)
                && found[j].support == f.support
            {
                open[j] = true;
            }
        };
        match kind {
            PatternKind::Contiguous => {
                for a in 0..n {
                    for b in a + 2..=n {
                        if b - a < n {
                            mark(&f.items[a..b]);
                        }
                    }
                }
            }
            PatternKind::Gapped => {
                let n = n.min(MAX_PATTERN_LEN);
                let full = (1u32 << n) - 1;
                for mask in 1..full {
                    if mask.count_ones() < 2 {
                        continue;
                    }
                    buf.clear();
                    buf.extend((0..n).filter(|b| mask & (1 << b) != 0).map(|b| f.items[b]));
                    mark(&buf);
                }
            }
        }
    }
    found
        .iter()
        .zip(open)
        .filter(|(_, open)| !open)
        .map(|(f, _)| f)
}

/// How to find deviating actors. [`DeviationConfig::default`] flags an actor whose last
/// sessions' transitions share little with the ones before, by more than chance explains.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviationConfig {
    /// Actors with fewer (non-empty) sessions are not scored. Default 6, at least 2.
    pub min_sessions: usize,
    /// The actor's last sessions compared with the earlier ones: this many, but never more than
    /// half of them. Default 10.
    pub recent_sessions: usize,
    /// Jensen–Shannon divergence (bits, 0..=1) at or above which an actor may deviate.
    /// Default 0.4.
    pub threshold: f64,
    /// Random reassignments of the actor's sessions to recent and baseline that the p-value is
    /// estimated from. Default 199.
    pub permutations: usize,
    /// Largest p-value at which an actor deviates. Default 0.01.
    pub max_p_value: f64,
    /// Transitions reported per actor. Default 5.
    pub top_transitions: usize,
    /// Sessions looked at per actor, the most recent. Default 200.
    pub max_history: usize,
    /// Tasks looked at per session (its first ones). Default 1,000.
    pub max_session_len: usize,
}

impl Default for DeviationConfig {
    fn default() -> Self {
        Self {
            min_sessions: 6,
            recent_sessions: 10,
            threshold: 0.4,
            permutations: 199,
            max_p_value: 0.01,
            top_transitions: 5,
            max_history: 200,
            max_session_len: 1_000,
        }
    }
}

/// An actor whose recent sequences depart from its earlier ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Deviation {
    pub actor: String,
    /// Jensen–Shannon divergence in bits between the two transition distributions, 0..=1.
    pub score: f64,
    /// The fraction of random splits of the actor's sessions (plus the actual one) that score
    /// at least as high: how likely so large a score is with no change of habit.
    pub p_value: f64,
    pub baseline_sessions: usize,
    pub recent_sessions: usize,
    /// The transitions that contributed most to the score, largest first.
    pub transitions: Vec<TransitionShift>,
}

/// One transition's share before and after, and its part of the divergence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TransitionShift {
    /// `None`: the session's start.
    pub from: Option<String>,
    /// `None`: the session's end.
    pub to: Option<String>,
    pub baseline_share: f64,
    pub recent_share: f64,
    /// Its term of the divergence, in bits; the terms sum to the score.
    pub contribution: f64,
}

/// The actors whose recent sessions' transitions depart from their own earlier ones, most
/// deviating first (then by actor).
///
/// For each actor with at least `min_sessions` non-empty sessions (the last `max_history` of
/// them), ordered by start: the last `min(recent_sessions, n / 2)` are *recent*, the others the
/// *baseline*. Each side's transitions (task to next task, plus session start to first task and
/// last task to session end) are counted and normalised to a distribution; the score is their
/// Jensen–Shannon divergence in bits (0: same distribution, 1: disjoint).
///
/// A small recent window differs from the baseline by chance, the more so for an actor who
/// mixes several workflows, so the score is also compared with the scores of `permutations`
/// random splits of the same sessions into groups of the same sizes (a permutation test; the
/// shuffles are seeded by the actor's name, so the answer is deterministic). An actor deviates
/// when its score is at least `threshold` and its p-value at most `max_p_value`. Set both to
/// accept everything (0 and 1) to score every actor. Costs about (permutations + 1) × the
/// transitions looked at.
pub fn deviating_actors(sessions: &[Session], config: &DeviationConfig) -> Vec<Deviation> {
    let mut out = Vec::new();
    for (actor, group) in by_actor(sessions) {
        let corpus = Corpus::new(&group, config.max_session_len);
        let runs: Vec<&Encoded<'_>> = corpus
            .sessions
            .iter()
            .filter(|s| !s.items.is_empty())
            .collect();
        let runs = &runs[runs.len().saturating_sub(config.max_history)..];
        let n = runs.len();
        if n < config.min_sessions.max(2) {
            continue;
        }
        let recent = config.recent_sessions.clamp(1, n / 2);
        let baseline = n - recent;

        // Transitions numbered in (from, to) order; each session as its transitions' counts.
        let mut numbered: BTreeMap<Transition, u32> = BTreeMap::new();
        let per_session: Vec<Vec<Transition>> =
            runs.iter().map(|r| transitions(&r.items)).collect();
        for t in per_session.iter().flatten() {
            numbered.entry(*t).or_insert(0);
        }
        for (i, v) in numbered.values_mut().enumerate() {
            *v = idx(i);
        }
        let profiles: Vec<Vec<(u32, u64)>> = per_session
            .iter()
            .map(|ts| {
                let mut ids: Vec<u32> =
                    ts.iter().filter_map(|t| numbered.get(t).copied()).collect();
                ids.sort_unstable();
                let mut counts: Vec<(u32, u64)> = Vec::new();
                for id in ids {
                    match counts.last_mut() {
                        Some((last, c)) if *last == id => *c += 1,
                        _ => counts.push((id, 1)),
                    }
                }
                counts
            })
            .collect();
        let mut split = Split::new(numbered.len());
        let order: Vec<usize> = (0..n).collect();
        let score = split.divergence(&profiles, &order, baseline);
        if score < config.threshold {
            continue;
        }
        let mut rng = SplitMix64(fnv1a(actor.as_bytes()));
        let mut shuffled = order.clone();
        let mut as_high = 0usize;
        for _ in 0..config.permutations {
            for i in (1..n).rev() {
                shuffled.swap(i, rng.below(i + 1));
            }
            if split.divergence(&profiles, &shuffled, baseline) >= score - 1e-12 {
                as_high += 1;
            }
        }
        let p_value = (1 + as_high) as f64 / (1 + config.permutations) as f64;
        if p_value > config.max_p_value {
            continue;
        }

        split.divergence(&profiles, &order, baseline);
        let mut terms: Vec<(Transition, f64, f64, f64)> = numbered
            .keys()
            .zip(split.terms())
            .map(|(t, (p, q, c))| (*t, p, q, c))
            .collect();
        terms.sort_by(|a, b| {
            b.3.partial_cmp(&a.3)
                .unwrap_or(Ordering::Equal)
                .then(a.0.cmp(&b.0))
        });
        terms.truncate(config.top_transitions);
        let name = |x: Option<u32>| x.map(|i| corpus.name(i).to_owned());
        out.push(Deviation {
            actor: actor.to_owned(),
            score,
            p_value,
            baseline_sessions: baseline,
            recent_sessions: recent,
            transitions: terms
                .into_iter()
                .map(|((from, to), p, q, c)| TransitionShift {
                    from: name(from),
                    to: name(to),
                    baseline_share: p,
                    recent_share: q,
                    contribution: c,
                })
                .collect(),
        });
    }
    out.sort_by(|a, b| {
        b.score
            .partial_cmp(&a.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| a.actor.cmp(&b.actor))
    });
    out
}

/// A transition between tasks; `None` is the session's start (as `from`) or end (as `to`).
type Transition = (Option<u32>, Option<u32>);

fn transitions(items: &[u32]) -> Vec<Transition> {
    let steps = || items.iter().copied().map(Some);
    std::iter::once(None)
        .chain(steps())
        .zip(steps().chain(std::iter::once(None)))
        .collect()
}

/// Transition counts of the two sides of a split of an actor's sessions.
struct Split {
    counts: Vec<[u64; 2]>,
    totals: [u64; 2],
}

impl Split {
    fn new(transitions: usize) -> Self {
        Self {
            counts: vec![[0; 2]; transitions],
            totals: [0; 2],
        }
    }

    /// The Jensen–Shannon divergence between the sessions `order[..baseline]` and the rest.
    fn divergence(
        &mut self,
        profiles: &[Vec<(u32, u64)>],
        order: &[usize],
        baseline: usize,
    ) -> f64 {
        self.counts.iter_mut().for_each(|c| *c = [0; 2]);
        self.totals = [0; 2];
        for (rank, &s) in order.iter().enumerate() {
            let side = usize::from(rank >= baseline);
            for &(t, c) in &profiles[s] {
                self.counts[t as usize][side] += c;
                self.totals[side] += c;
            }
        }
        self.terms().map(|(.., c)| c).sum::<f64>().clamp(0.0, 1.0)
    }

    /// Per transition: its baseline share, its recent share and its divergence term.
    fn terms(&self) -> impl Iterator<Item = (f64, f64, f64)> + '_ {
        let share = |c: u64, total: u64| {
            if total == 0 {
                0.0
            } else {
                c as f64 / total as f64
            }
        };
        self.counts.iter().map(move |&[b, r]| {
            let p = share(b, self.totals[0]);
            let q = share(r, self.totals[1]);
            let m = (p + q) / 2.0;
            let term = |x: f64| {
                if x > 0.0 {
                    0.5 * x * (x / m).log2()
                } else {
                    0.0
                }
            };
            (p, q, term(p) + term(q))
        })
    }
}

/// SplitMix64 (Steele et al. 2014): small, fast and good enough to shuffle with.
struct SplitMix64(u64);

impl SplitMix64 {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n.max(1) as u64) as usize
    }
}

/// FNV-1a, 64 bits: a hash that stays the same across Rust releases, unlike `DefaultHasher`.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    //! Planted-pattern recovery, hand-computed figures, deviating actors and the work bounds.
    //! The generators are shared with the families tests.

    use chrono::TimeDelta;

    use super::*;

    /// SplitMix64: a tiny deterministic generator, so no test depends on the clock or a crate.
    pub(crate) struct Rng(u64);

    impl Rng {
        pub(crate) fn new(seed: u64) -> Self {
            Self(seed)
        }

        pub(crate) fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }

        pub(crate) fn unit(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Twenty task types; the planted workflows use all but a few of them.
    pub(crate) const POOL: [&str; 20] = [
        "build",
        "checkout",
        "commit",
        "deploy",
        "edit",
        "fetch",
        "fix",
        "index",
        "parse",
        "plan",
        "push",
        "read",
        "reproduce",
        "review",
        "search",
        "store",
        "summarize",
        "test",
        "triage",
        "validate",
    ];

    /// Planted workflows of length 3 to 6; the last shares `plan`, `edit` and `test` with others.
    pub(crate) const PLANTED: [&[&str]; 5] = [
        &["plan", "search", "read", "summarize"],
        &["checkout", "edit", "build", "test", "commit", "push"],
        &["triage", "reproduce", "fix"],
        &["fetch", "parse", "validate", "store", "index"],
        &["plan", "edit", "test", "review", "deploy"],
    ];

    pub(crate) fn t0() -> DateTime<Utc> {
        "2025-03-01T00:00:00Z".parse().unwrap()
    }

    /// A session whose tasks run a minute apart from `start`.
    pub(crate) fn session(
        id: &str,
        actor: Option<&str>,
        tasks: &[&str],
        start: DateTime<Utc>,
    ) -> Session {
        Session {
            id: id.to_owned(),
            actor: actor.map(str::to_owned),
            tasks: tasks
                .iter()
                .zip(0..)
                .map(|(t, i)| Step {
                    task: (*t).to_owned(),
                    at: start + TimeDelta::minutes(i),
                })
                .collect(),
        }
    }

    /// `workflow` with random tasks from [`POOL`] inserted: before each step and after the last,
    /// another noise task follows with probability `rate` each time (so about `rate` of the
    /// events are noise).
    pub(crate) fn noisy(rng: &mut Rng, workflow: &[&'static str], rate: f64) -> Vec<&'static str> {
        let mut out = Vec::new();
        for slot in 0..=workflow.len() {
            while rng.unit() < rate {
                out.push(POOL[rng.below(POOL.len())]);
            }
            if let Some(&step) = workflow.get(slot) {
                out.push(step);
            }
        }
        out
    }

    pub(crate) fn random_tasks(rng: &mut Rng, len: usize) -> Vec<&'static str> {
        (0..len).map(|_| POOL[rng.below(POOL.len())]).collect()
    }

    /// `n` sessions an hour apart: 10% random (3–8 tasks), the rest one of [`PLANTED`] each
    /// with a per-session noise rate drawn from `noise`. Returns the sessions, the workflow each
    /// follows (`None` for random ones) and the fraction of the planted sessions' events that
    /// are noise.
    pub(crate) fn planted_sessions(
        seed: u64,
        n: usize,
        noise: (f64, f64),
    ) -> (Vec<Session>, Vec<Option<usize>>, f64) {
        let mut rng = Rng::new(seed);
        let (mut sessions, mut labels) = (Vec::new(), Vec::new());
        let (mut events, mut noise_events) = (0usize, 0usize);
        for i in 0..n {
            let start = t0() + TimeDelta::hours(i as i64);
            let (tasks, label) = if rng.below(10) == 0 {
                let len = 3 + rng.below(6);
                (random_tasks(&mut rng, len), None)
            } else {
                let w = rng.below(PLANTED.len());
                let rate = noise.0 + (noise.1 - noise.0) * rng.unit();
                let tasks = noisy(&mut rng, PLANTED[w], rate);
                noise_events += tasks.len() - PLANTED[w].len();
                events += tasks.len();
                (tasks, Some(w))
            };
            sessions.push(session(&format!("s{i:04}"), None, &tasks, start));
            labels.push(label);
        }
        (sessions, labels, noise_events as f64 / events as f64)
    }

    fn is_subsequence(needle: &[String], hay: &[&str]) -> bool {
        let mut it = hay.iter();
        needle.iter().all(|n| it.any(|h| h == n))
    }

    fn is_run(needle: &[String], hay: &[&str]) -> bool {
        hay.windows(needle.len())
            .any(|w| w.iter().zip(needle).all(|(a, b)| a == b))
    }

    /// Precision and recall of the reported patterns against [`PLANTED`].
    ///
    /// - Precision: of the reported patterns with at least 3 tasks (both kinds), the fraction
    ///   that are *true*: a gapped pattern is true when it is a subsequence of a planted
    ///   workflow, a contiguous one when it is a contiguous run of one. Anything mixing noise or
    ///   two workflows, or out of order, is false. (Patterns of 2 tasks are left out: with 20
    ///   task types and noise drawn from them, a pair says little about the plants.)
    /// - Recall: the fraction of planted workflows reported with exactly their tasks (either
    ///   kind; a gapped pattern whose contiguous twin has the same support is reported as the
    ///   contiguous one).
    fn precision_recall(mined: &Mined) -> (f64, f64, usize) {
        let long: Vec<&Pattern> = mined
            .patterns
            .iter()
            .filter(|p| p.tasks.len() >= 3)
            .collect();
        let true_positives = long
            .iter()
            .filter(|p| {
                PLANTED.iter().any(|w| match p.kind {
                    PatternKind::Gapped => is_subsequence(&p.tasks, w),
                    PatternKind::Contiguous => is_run(&p.tasks, w),
                })
            })
            .count();
        let recalled = PLANTED
            .iter()
            .filter(|w| mined.patterns.iter().any(|p| p.tasks == **w))
            .count();
        let precision = if long.is_empty() {
            0.0
        } else {
            true_positives as f64 / long.len() as f64
        };
        (
            precision,
            recalled as f64 / PLANTED.len() as f64,
            long.len(),
        )
    }

    fn planted_config() -> MiningConfig {
        MiningConfig {
            min_support: MinSupport::Fraction(0.05),
            max_patterns: 10_000,
            ..MiningConfig::default()
        }
    }

    #[test]
    fn planted_workflows_are_found_with_high_precision_and_recall() {
        let (sessions, labels, noise) = planted_sessions(7, 1_000, (0.10, 0.20));
        assert!((0.08..=0.22).contains(&noise), "noise fraction {noise}");
        let mined = mine(&sessions, &planted_config());
        assert!(mined.stats.complete);
        let (precision, recall, long) = precision_recall(&mined);
        eprintln!(
            "noise {noise:.3}: precision {precision:.3}, recall {recall:.3} over {long} patterns of 3+ tasks, {} in all",
            mined.patterns.len()
        );
        assert!(long >= PLANTED.len(), "{long} long patterns");
        assert!(precision >= 0.9, "precision {precision} over {long}");
        assert!(recall >= 0.9, "recall {recall}");

        // Each plant's support is close to the number of sessions that follow it: a few lose it
        // to a noise burst longer than the gap window, none gain it by chance.
        for (w, tasks) in PLANTED.iter().enumerate() {
            let followers = labels.iter().filter(|l| **l == Some(w)).count();
            let Some(found) = mined.patterns.iter().find(|p| p.tasks == *tasks) else {
                continue;
            };
            assert!(found.support <= followers + 5, "{tasks:?}");
            assert!(
                found.support * 10 >= followers * 9,
                "{tasks:?}: {} of {followers}",
                found.support
            );
        }
    }

    #[test]
    fn the_precision_figure_can_fail() {
        let (sessions, _, _) = planted_sessions(7, 1_000, (0.10, 0.20));
        // A support threshold of two sessions lets chance combinations of noise through.
        let loose = MiningConfig {
            min_support: MinSupport::Sessions(2),
            ..planted_config()
        };
        let (precision, _, long) = precision_recall(&mine(&sessions, &loose));
        eprintln!("min support 2: precision {precision:.3} over {long}");
        assert!(precision < 0.9, "precision {precision} over {long}");

        // Sessions with nothing planted give no pattern of 3 tasks or more.
        let mut rng = Rng::new(11);
        let random: Vec<Session> = (0..1_000)
            .map(|i| {
                let len = 3 + rng.below(6);
                session(&format!("r{i}"), None, &random_tasks(&mut rng, len), t0())
            })
            .collect();
        let mined = mine(&random, &planted_config());
        assert!(
            mined.patterns.iter().all(|p| p.tasks.len() < 3),
            "{:?}",
            mined.patterns
        );
    }

    #[test]
    fn heavy_noise_costs_support_under_a_gap_window() {
        let (sessions, _, noise) = planted_sessions(7, 1_000, (0.55, 0.65));
        assert!(noise > 0.5, "noise fraction {noise}");
        let mined = mine(&sessions, &planted_config());
        let (precision, recall, long) = precision_recall(&mined);
        eprintln!("noise {noise:.3}: precision {precision:.3}, recall {recall:.3} over {long}");
        let (clean, _, _) = planted_sessions(7, 1_000, (0.10, 0.20));
        let support = |m: &Mined, w: &[&str]| {
            m.patterns
                .iter()
                .find(|p| p.tasks == w)
                .map_or(0, |p| p.support)
        };
        let clean = mine(&clean, &planted_config());
        // The longest plant keeps less of its support when noise bursts exceed the window.
        assert!(support(&mined, PLANTED[1]) < support(&clean, PLANTED[1]));
    }

    /// s1: A B C, s2: A B A B, s3: A X B C, s4: B C; tasks a minute apart, sessions an hour apart.
    fn small() -> Vec<Session> {
        let h = |n| t0() + TimeDelta::hours(n);
        vec![
            session("s1", Some("ann"), &["A", "B", "C"], h(0)),
            session("s2", Some("ann"), &["A", "B", "A", "B"], h(1)),
            session("s3", Some("bob"), &["A", "X", "B", "C"], h(2)),
            session("s4", None, &["B", "C"], h(3)),
        ]
    }

    fn at(hour: i64, minute: i64) -> DateTime<Utc> {
        t0() + TimeDelta::hours(hour) + TimeDelta::minutes(minute)
    }

    fn find<'a>(m: &'a Mined, tasks: &[&str], kind: PatternKind) -> Option<&'a Pattern> {
        m.patterns
            .iter()
            .find(|p| p.tasks == tasks && p.kind == kind)
    }

    #[test]
    fn figures_match_a_hand_computation() {
        let config = MiningConfig {
            min_support: MinSupport::Sessions(2),
            max_gap: Some(1),
            ..MiningConfig::default()
        };
        let mined = mine(&small(), &config);
        let got: Vec<(Vec<&str>, PatternKind, usize)> = mined
            .patterns
            .iter()
            .map(|p| {
                (
                    p.tasks.iter().map(String::as_str).collect(),
                    p.kind,
                    p.support,
                )
            })
            .collect();
        use PatternKind::{Contiguous, Gapped};
        // Gapped B C (s1, s3, s4) equals contiguous B C, so only the contiguous one is kept;
        // A C (s1 only, since s3 has two tasks between) is not frequent.
        assert_eq!(
            got,
            [
                (vec!["A", "B"], Gapped, 3),
                (vec!["B", "C"], Contiguous, 3),
                (vec!["A", "B", "C"], Gapped, 2),
                (vec!["A", "B"], Contiguous, 2),
            ]
        );

        // A is in s1, s2, s3; B in all four.
        let ab = find(&mined, &["A", "B"], Gapped).unwrap();
        assert_eq!(ab.confidence, 1.0);
        assert_eq!((ab.first_seen, ab.last_seen), (at(0, 1), at(2, 2)));
        assert_eq!(ab.examples, ["s1", "s2", "s3"]);

        let ab = find(&mined, &["A", "B"], Contiguous).unwrap();
        assert_eq!(ab.confidence, 2.0 / 3.0);
        // s2's last occurrence ends at its fourth task.
        assert_eq!((ab.first_seen, ab.last_seen), (at(0, 1), at(1, 3)));
        assert_eq!(ab.examples, ["s1", "s2"]);

        let bc = find(&mined, &["B", "C"], Contiguous).unwrap();
        assert_eq!(bc.confidence, 3.0 / 4.0);
        assert_eq!((bc.first_seen, bc.last_seen), (at(0, 2), at(3, 1)));
        assert_eq!(bc.examples, ["s1", "s3", "s4"]);

        let abc = find(&mined, &["A", "B", "C"], Gapped).unwrap();
        assert_eq!(abc.confidence, 2.0 / 3.0);
        assert_eq!((abc.first_seen, abc.last_seen), (at(0, 2), at(2, 3)));
        assert_eq!(abc.examples, ["s1", "s3"]);

        assert_eq!(mined.stats.sessions, 4);
        assert_eq!(mined.stats.min_support, 2);
        assert!(mined.stats.complete);
    }

    #[test]
    fn without_a_window_closedness_drops_a_sub_pattern_with_equal_support() {
        let config = MiningConfig {
            min_support: MinSupport::Sessions(2),
            max_gap: None,
            ..MiningConfig::default()
        };
        let mined = mine(&small(), &config);
        // A C is now in s1 and s3, the same two sessions as A B C: A C is not reported.
        assert!(find(&mined, &["A", "B", "C"], PatternKind::Gapped).is_some());
        assert!(mined.patterns.iter().all(|p| p.tasks != ["A", "C"]));
        let ab = find(&mined, &["A", "B"], PatternKind::Gapped).unwrap();
        assert_eq!((ab.support, ab.last_seen), (3, at(2, 2)));
    }

    #[test]
    fn the_order_of_the_input_does_not_change_the_answer() {
        let (mut sessions, _, _) = planted_sessions(3, 300, (0.10, 0.20));
        let config = planted_config();
        let first = mine(&sessions, &config);
        let mut rng = Rng::new(5);
        for i in (1..sessions.len()).rev() {
            sessions.swap(i, rng.below(i + 1));
        }
        for s in &mut sessions {
            s.tasks.reverse();
        }
        assert_eq!(mine(&sessions, &config), first);
    }

    #[test]
    fn patterns_per_actor() {
        let config = MiningConfig {
            min_support: MinSupport::Sessions(2),
            max_gap: Some(1),
            ..MiningConfig::default()
        };
        let per = mine_by_actor(&small(), &config);
        let actors: Vec<&str> = per.iter().map(|a| a.actor.as_str()).collect();
        assert_eq!(actors, ["ann", "bob"]);
        let ann = &per[0].mined;
        assert_eq!(ann.stats.sessions, 2);
        // Only A B, in both of ann's sessions, back to back.
        assert_eq!(ann.patterns.len(), 1);
        assert_eq!(ann.patterns[0].tasks, ["A", "B"]);
        assert_eq!(ann.patterns[0].kind, PatternKind::Contiguous);
        assert!(per[1].mined.patterns.is_empty());
    }

    #[test]
    fn an_actor_who_switches_workflow_deviates_and_steady_ones_do_not() {
        let mut rng = Rng::new(21);
        let mut sessions = Vec::new();
        for i in 0..20 {
            let start = t0() + TimeDelta::hours(i);
            let mut add = |actor: &str, w: &[&'static str], rng: &mut Rng| {
                let tasks = noisy(rng, w, 0.15);
                sessions.push(session(&format!("{actor}-{i}"), Some(actor), &tasks, start));
            };
            add(
                "switcher",
                if i < 10 { PLANTED[1] } else { PLANTED[3] },
                &mut rng,
            );
            add("steady", PLANTED[1], &mut rng);
            add("mixer", PLANTED[i as usize % 2], &mut rng);
            for k in 0..5 {
                add(&format!("steady{k}"), PLANTED[k % PLANTED.len()], &mut rng);
            }
        }
        // Actors who pick one of the five workflows at random each time, over 40 sessions: their
        // last ten differ from the thirty before by chance, which the permutation test absorbs.
        // One of them turns to a workflow of its own for its last ten.
        for i in 0..40 {
            let start = t0() + TimeDelta::hours(i);
            for k in 0..10 {
                let actor = format!("random{k}");
                let w = if k == 0 && i >= 30 {
                    &["triage", "review", "deploy", "index"][..]
                } else {
                    PLANTED[rng.below(PLANTED.len())]
                };
                let tasks = noisy(&mut rng, w, 0.15);
                sessions.push(session(
                    &format!("{actor}-{i}"),
                    Some(&actor),
                    &tasks,
                    start,
                ));
            }
        }
        let flagged = deviating_actors(&sessions, &DeviationConfig::default());
        let names: Vec<&str> = flagged.iter().map(|d| d.actor.as_str()).collect();
        assert_eq!(names, ["switcher", "random0"]);
        let d = &flagged[0];
        assert!(d.score > 0.8, "{}", d.score);
        assert!(d.p_value <= 0.01, "{}", d.p_value);
        assert_eq!((d.baseline_sessions, d.recent_sessions), (10, 10));
        // The top transitions belong to one workflow and not the other.
        let top = &d.transitions[0];
        assert!(top.contribution > 0.0);
        assert!(
            (top.baseline_share == 0.0) != (top.recent_share == 0.0),
            "{top:?}"
        );

        let all = deviating_actors(
            &sessions,
            &DeviationConfig {
                threshold: 0.0,
                max_p_value: 1.0,
                ..DeviationConfig::default()
            },
        );
        assert_eq!(all.len(), 18);
        // Chance alone gives the random actors scores that the threshold alone would flag.
        assert!(
            all.iter()
                .any(|d| d.actor.starts_with("random") && d.actor != "random0" && d.score >= 0.4),
            "{all:?}"
        );
        let steady = all.iter().find(|d| d.actor == "steady").unwrap();
        assert!(steady.score < 0.4, "{}", steady.score);
        let sum: f64 = steady.transitions.iter().map(|t| t.contribution).sum();
        assert!(sum <= steady.score + 1e-9);
    }

    #[test]
    fn many_long_random_sessions_stay_within_the_work_budget() {
        let mut rng = Rng::new(99);
        let sessions: Vec<Session> = (0..10_000)
            .map(|i| session(&format!("h{i}"), None, &random_tasks(&mut rng, 200), t0()))
            .collect();
        let tasks = 10_000 * 200;
        {
            let config = MiningConfig::default();
            let mined = mine(&sessions, &config);
            // Per kind: the length-1 projections (one unit per task), the budget, and at most
            // one session's scan of overshoot (200 positions × window).
            let per_kind = tasks + config.max_work + 200 * 200;
            assert!(mined.stats.work <= 2 * per_kind, "{:?}", mined.stats);
            assert!(!mined.stats.complete);
            assert!(mined.patterns.len() <= config.max_patterns);
        }
    }

    #[test]
    fn one_huge_session_stays_within_the_bounds() {
        let mut rng = Rng::new(98);
        let huge = vec![session(
            "huge",
            Some("a"),
            &random_tasks(&mut rng, 100_000),
            t0(),
        )];
        for max_gap in [Some(3), None] {
            // Support 1: every sequence in the session is frequent.
            let config = MiningConfig {
                min_support: MinSupport::Sessions(1),
                max_gap,
                max_session_len: 200_000,
                ..MiningConfig::default()
            };
            let mined = mine(&huge, &config);
            assert!(!mined.stats.complete);
            assert_eq!(mined.stats.truncated_tasks, 0);
            assert!(mined.stats.frequent <= 2 * config.max_frequent);
            // Per kind: the length-1 projections, the budget, one session's scan of overshoot.
            let per_kind = 100_000 + config.max_work + 100_000 * 4;
            assert!(mined.stats.work <= 2 * per_kind, "{:?}", mined.stats);
            assert!(mined.patterns.len() <= config.max_patterns);
        }

        // The default session length cap ignores all but the first 10,000 tasks.
        let capped = mine(&huge, &MiningConfig::default());
        assert_eq!(capped.stats.truncated_tasks, 90_000);
        let per_actor = mine_by_actor(&huge, &MiningConfig::default());
        assert_eq!(per_actor.len(), 1);
        assert!(deviating_actors(&huge, &DeviationConfig::default()).is_empty());
    }

    /// Not a check: prints how long mining 5,000 sessions of about 10 tasks takes. Run with
    /// `cargo test --release -p kairos-workflows --lib timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn timing() {
        let (mut sessions, _, _) = planted_sessions(1, 5_000, (0.10, 0.20));
        let mut rng = Rng::new(2);
        for s in &mut sessions {
            s.actor = Some(format!("actor{}", rng.below(50)));
        }
        let config = MiningConfig::default();
        let clock = std::time::Instant::now();
        let mined = mine(&sessions, &config);
        let mined_in = clock.elapsed();
        let per_actor = mine_by_actor(&sessions, &config);
        let per_actor_in = clock.elapsed() - mined_in;
        let deviating = deviating_actors(&sessions, &DeviationConfig::default());
        let deviating_in = clock.elapsed() - mined_in - per_actor_in;
        let families =
            crate::families::cluster(&sessions, &crate::families::FamilyConfig::default());
        let families_in = clock.elapsed() - mined_in - per_actor_in - deviating_in;
        eprintln!(
            "mine {mined_in:?} ({} patterns, {:?}); by actor {per_actor_in:?} ({} actors); \
             deviating {deviating_in:?} ({}); families {families_in:?} (k = {})",
            mined.patterns.len(),
            mined.stats,
            per_actor.len(),
            deviating.len(),
            families.k,
        );
    }

    #[test]
    fn degenerate_inputs() {
        let config = MiningConfig::default();
        let empty = mine(&[], &config);
        assert!(empty.patterns.is_empty());
        assert_eq!(empty.stats.sessions, 0);
        let blank = [session("e", None, &[], t0())];
        assert!(mine(&blank, &config).patterns.is_empty());
        let same: Vec<Session> = (0..3)
            .map(|i| session(&format!("x{i}"), None, &["a", "a", "a"], t0()))
            .collect();
        let mined = mine(&same, &config);
        // a a a with support 3 covers a a; contiguous and gapped agree, so once.
        assert_eq!(mined.patterns.len(), 1);
        assert_eq!(mined.patterns[0].tasks, ["a", "a", "a"]);
        assert_eq!(mined.patterns[0].confidence, 1.0);
        assert_eq!(MinSupport::Fraction(f64::NAN).absolute(10), 10);
        assert_eq!(MinSupport::Fraction(0.0).absolute(10), 2);
        assert_eq!(MinSupport::Sessions(0).absolute(10), 1);
    }
}
