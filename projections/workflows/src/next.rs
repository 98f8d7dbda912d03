//! The next-task model: from the tasks a session has run so far, the task it will most likely run
//! next, or [`Next::End`] (the session ends), each with the pattern that supports it.
//!
//! The same functions serve the projection (counts in PostgreSQL) and the in-memory [`Model`]
//! used by `kairos eval next-task` and the tests:
//!
//! - [`contexts`] maps a prefix to its **context chain**: the abstractions of the prefix the model
//!   counts under, most specific first, each with a stable key and a description.
//! - [`increments`] says, for an observed `(prefix, next)`, which `(context key, next)` counts go
//!   up by one. The projection adds them up per batch and upserts them.
//! - [`combine`] turns the counts of one prefix's chain into a ranked distribution over the next
//!   symbol, each [`Suggestion`] with the context that contributes most to it and its numbers.
//! - [`prune`] says which contexts to forget when there are more than [`Config::max_contexts`].
//!
//! # The context chain
//!
//! For a prefix whose last task is `x`, most specific first:
//!
//! | kind | stands for | example description |
//! |------|-----------|---------------------|
//! | `m`  | `x` and the multiset of every task run so far | `` `x` (having run `a` ×2, `x`) `` |
//! | `s4` | the last 4 tasks in order | `` `a` → `b` → `c` → `x` `` |
//! | `s3` | the last 3 tasks in order | `` `b` → `c` → `x` `` |
//! | `e`  | `x` and the set of tasks run so far | `` `x` (having run each of `a`, `x`) `` |
//! | `r2` | the last 2 tasks and how often `x` has run | `` `c` → `x` (`x` 3rd time) `` |
//! | `s2` | the last 2 tasks | `` `c` → `x` `` |
//! | `r1` | `x` and how often it has run | `` `x` (3rd time) `` |
//! | `s1` | the last task | `` `x` `` |
//! | `*`  | any prefix | `any task` |
//!
//! The empty prefix has the single context `^` (the start of a session): what sessions begin
//! with. A prefix shorter than `k` has no `sk` (nor `r2` below length 2).
//!
//! The sequence contexts are the classic n-gram back-off chain; the multiset and set contexts are
//! the state abstractions of process-mining transition systems (van der Aalst et al. 2010), which
//! see through interleaved parallel branches and remember a choice made long before; the
//! repetition contexts tell the rounds of a loop apart, where what comes next depends on how many
//! times something has happened.
//!
//! # Combining: Witten–Bell blending
//!
//! Every context of the chain with a total `N ≥` [`Config::min_support`] takes part. Going from the
//! most specific one down, context `i` with `N_i` observations of `T_i` distinct next symbols keeps
//! the share `λ_i = N_i / (N_i + T_i)` of the probability mass still unassigned and passes the rest
//! on; the last context that takes part keeps all that is left. So
//! `P(y) = Σ_i w_i · n_i(y) / N_i` with `w_i = λ_i · Π_{j<i} (1 - λ_j)`. This is Witten–Bell
//! interpolation (as in PPM): a context seen often with few different continuations is trusted,
//! one seen once or with many continuations mostly defers to the more general ones. There is
//! nothing fitted per log: the chain, `λ` and the defaults of [`Config`] are the same for every
//! input.
//!
//! Suggestions rank by probability, ties by the symbol ([`Next`]'s order: tasks by name, then
//! END), so a ranking never depends on hash order. A suggestion's support is the context with the
//! largest term `w_i · n_i(y) / N_i` in its probability (the most specific on a tie), with
//! `n_i(y)` and `N_i`: "`deploy` after `test` → `build`: 14 of 16 times".
//!
//! # Keys
//!
//! A key is the kind, then each task as `/{byte length}:{task}` (so any task type, whatever
//! characters it holds, gives an unambiguous key), then for `m` `*{count}` after each task and
//! for `r1`/`r2` `#{count}`. Keys longer than [`MAX_KEY_LEN`] bytes (long multisets and sets)
//! are replaced by the kind, `#` and the 64-bit FNV-1a hash of the long key in hex: fixed
//! width, stable across versions and platforms. [`Next`] is stored as [`Next::encode`] (END as the
//! empty string, which is never a task type).
//!
//! # Memory
//!
//! Each event adds at most 9 contexts (one per kind). Sequence contexts number at most
//! `min(V^k, E)` for `V` distinct task types and `E` events; the multiset, set and repetition
//! contexts can grow with every event of a session whose history is new (`O(E)` in the worst
//! case, far fewer when sessions repeat). Sessions themselves cost nothing beyond their events.
//! Each context holds one counter per distinct next symbol, at most `V + 1`. The number of
//! contexts is capped by [`Config::max_contexts`]: once it is exceeded, the rarest contexts are
//! dropped down to 90% of the cap ([`prune`]), so memory stays below
//! `max_contexts × (key + (V + 1) counters)` — with the default 200,000 contexts and tens of
//! task types, a few tens of MB at most.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// Keys longer than this many bytes are hashed (see the module documentation).
pub const MAX_KEY_LEN: usize = 160;

/// How many back-to-back tasks the longest sequence context looks at.
const MAX_ORDER: usize = 4;

/// What comes after a prefix: a task, or the end of the session.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Next {
    Task(String),
    End,
}

impl Next {
    /// The stored form: the task type, or the empty string for END (task types are never empty).
    pub fn encode(&self) -> &str {
        match self {
            Next::Task(t) => t,
            Next::End => "",
        }
    }

    /// The inverse of [`Next::encode`].
    pub fn decode(s: &str) -> Next {
        if s.is_empty() {
            Next::End
        } else {
            Next::Task(s.to_owned())
        }
    }

    /// The task, or `END`: for display and CSV output.
    pub fn label(&self) -> &str {
        match self {
            Next::Task(t) => t,
            Next::End => "END",
        }
    }
}

/// One abstraction of a prefix: the key its counts are stored under and what it stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// Stable and compact: usable as a primary key (see the module documentation).
    pub key: String,
    /// The pattern in words, e.g. `` `test` → `build` ``.
    pub description: String,
}

/// How often each next symbol followed one context.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    by_next: BTreeMap<Next, u64>,
    total: u64,
}

impl Counts {
    /// Counts from `(next, count)` pairs, e.g. the rows of one context key; repeated symbols add up.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (Next, u64)>) -> Counts {
        let mut c = Counts::default();
        for (next, n) in pairs {
            c.add(next, n);
        }
        c
    }

    /// Adds `n` observations of `next`.
    pub fn add(&mut self, next: Next, n: u64) {
        if n == 0 {
            return;
        }
        *self.by_next.entry(next).or_insert(0) += n;
        self.total += n;
    }

    /// How often `next` followed.
    pub fn get(&self, next: &Next) -> u64 {
        self.by_next.get(next).copied().unwrap_or(0)
    }

    /// All observations.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// How many distinct symbols followed.
    pub fn distinct(&self) -> usize {
        self.by_next.len()
    }

    /// `(next, count)` in [`Next`] order.
    pub fn iter(&self) -> impl Iterator<Item = (&Next, u64)> {
        self.by_next.iter().map(|(k, v)| (k, *v))
    }
}

/// Why a suggestion is made: one context of the chain and its numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Support {
    pub context: Context,
    /// How often the suggested symbol followed this context.
    pub count: u64,
    /// How often anything followed this context.
    pub total: u64,
}

/// One ranked answer of [`combine`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suggestion {
    pub next: Next,
    /// In (0, 1]; the probabilities of all suggestions of one prefix sum to 1.
    pub probability: f64,
    pub support: Support,
}

/// The model's parameters; the defaults are meant for every log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The most contexts kept; beyond it the rarest are pruned (see [`prune`]). At least 16.
    pub max_contexts: usize,
    /// A context takes part in [`combine`] once it has been followed this many times.
    pub min_support: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_contexts: 200_000,
            min_support: 1,
        }
    }
}

/// The context chain of a prefix, most specific first (see the module documentation).
///
/// ```
/// use kairos_workflows::next::contexts;
/// let chain = contexts(&["test", "build"]);
/// assert_eq!(chain[0].description, "`build` (having run `build`, `test`)");
/// assert!(chain.iter().any(|c| c.description == "`test` → `build`"));
/// ```
pub fn contexts<T: AsRef<str>>(prefix: &[T]) -> Vec<Context> {
    let prefix: Vec<&str> = prefix.iter().map(AsRef::as_ref).collect();
    chain(&prefix)
        .into_iter()
        .map(|(kind, key)| Context {
            key,
            description: describe(kind, &prefix),
        })
        .collect()
}

/// The `(context key, next)` counts that go up by one when `next` follows `prefix`.
pub fn increments<T: AsRef<str>>(prefix: &[T], next: &Next) -> Vec<(String, Next)> {
    let prefix: Vec<&str> = prefix.iter().map(AsRef::as_ref).collect();
    chain(&prefix)
        .into_iter()
        .map(|(_, key)| (key, next.clone()))
        .collect()
}

/// A ranked distribution over the next symbol from the counts of one prefix's chain (as
/// [`contexts`] returns it, most specific first; a context never seen has empty [`Counts`]).
/// Empty when no context of the chain has enough support.
pub fn combine(chain: &[(Context, Counts)], config: &Config) -> Vec<Suggestion> {
    blend(chain.iter().map(|(_, c)| c), config)
        .into_iter()
        .map(|(next, probability, i)| {
            let (context, counts) = &chain[i];
            suggestion(next, probability, context.clone(), counts)
        })
        .collect()
}

fn suggestion(next: Next, probability: f64, context: Context, counts: &Counts) -> Suggestion {
    Suggestion {
        support: Support {
            context,
            count: counts.get(&next),
            total: counts.total(),
        },
        next,
        probability,
    }
}

/// Witten–Bell blending of a chain's counts, most specific first: `(next, probability, index of
/// the supporting context)`, ranked.
fn blend<'a>(chain: impl Iterator<Item = &'a Counts>, config: &Config) -> Vec<(Next, f64, usize)> {
    let min = config.min_support.max(1);
    let usable: Vec<(usize, &Counts)> = chain
        .enumerate()
        .filter(|(_, c)| c.total() >= min)
        .collect();
    let mut prob: BTreeMap<&Next, (f64, f64, usize)> = BTreeMap::new();
    let mut remaining = 1.0_f64;
    for (j, &(i, counts)) in usable.iter().enumerate() {
        let n = counts.total() as f64;
        let weight = if j + 1 == usable.len() {
            remaining
        } else {
            remaining * n / (n + counts.distinct() as f64)
        };
        remaining -= weight;
        for (next, c) in counts.iter() {
            let term = weight * c as f64 / n;
            // (probability, largest term, its context): the most specific wins a tie.
            let e = prob.entry(next).or_insert((0.0, term, i));
            e.0 += term;
            if term > e.1 {
                (e.1, e.2) = (term, i);
            }
        }
    }
    let mut out: Vec<(Next, f64, usize)> = prob
        .into_iter()
        .map(|(next, (p, _, i))| (next.clone(), p, i))
        .collect();
    // Stable sort: equal probabilities keep the `Next` order of the map.
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// The kinds of context, in chain order.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Start,
    Multiset,
    Sequence(usize),
    Set,
    Repeat2,
    Repeat1,
    Any,
}

/// The chain's kinds and keys (see the module documentation).
fn chain(prefix: &[&str]) -> Vec<(Kind, String)> {
    let Some(&last) = prefix.last() else {
        return vec![(Kind::Start, "^".into())];
    };
    let seen = tally(prefix);
    let reps = seen.get(last).copied().unwrap_or(1);
    let mut out = Vec::with_capacity(9);
    let mut key = String::from("m");
    push_task(&mut key, last);
    for (t, n) in &seen {
        push_task(&mut key, t);
        key.push('*');
        push_number(&mut key, *n);
    }
    out.push((Kind::Multiset, compact(key)));
    for k in (3..=MAX_ORDER).rev().filter(|k| prefix.len() >= *k) {
        out.push((Kind::Sequence(k), sequence_key(&prefix[prefix.len() - k..])));
    }
    let mut key = String::from("e");
    push_task(&mut key, last);
    for t in seen.keys() {
        push_task(&mut key, t);
    }
    out.push((Kind::Set, compact(key)));
    if prefix.len() >= 2 {
        let mut key = String::from("r2");
        prefix[prefix.len() - 2..]
            .iter()
            .for_each(|t| push_task(&mut key, t));
        key.push('#');
        push_number(&mut key, reps);
        out.push((Kind::Repeat2, compact(key)));
        out.push((Kind::Sequence(2), sequence_key(&prefix[prefix.len() - 2..])));
    }
    let mut key = String::from("r1");
    push_task(&mut key, last);
    key.push('#');
    push_number(&mut key, reps);
    out.push((Kind::Repeat1, compact(key)));
    out.push((Kind::Sequence(1), sequence_key(&prefix[prefix.len() - 1..])));
    out.push((Kind::Any, "*".into()));
    out
}

/// How often each task occurs in `prefix`.
fn tally<'a>(prefix: &[&'a str]) -> BTreeMap<&'a str, u64> {
    let mut seen = BTreeMap::new();
    for t in prefix {
        *seen.entry(*t).or_insert(0) += 1;
    }
    seen
}

/// What a context of `kind` stands for, for this prefix.
fn describe(kind: Kind, prefix: &[&str]) -> String {
    let Some(&last) = prefix.last() else {
        return "the start of a session".into();
    };
    let arrow = |k: usize| {
        prefix[prefix.len() - k..]
            .iter()
            .map(|t| quote(t))
            .collect::<Vec<_>>()
            .join(" → ")
    };
    let reps = || prefix.iter().filter(|t| **t == last).count() as u64;
    match kind {
        Kind::Start => "the start of a session".into(),
        Kind::Multiset => {
            let items: Vec<String> = tally(prefix)
                .iter()
                .map(|(t, n)| match n {
                    1 => quote(t),
                    n => format!("{} ×{n}", quote(t)),
                })
                .collect();
            format!("{} (having run {})", quote(last), items.join(", "))
        }
        Kind::Set => {
            let items: Vec<String> = tally(prefix).keys().map(|t| quote(t)).collect();
            format!("{} (having run each of {})", quote(last), items.join(", "))
        }
        Kind::Sequence(k) => arrow(k),
        Kind::Repeat2 => format!("{} ({} {} time)", arrow(2), quote(last), ordinal(reps())),
        Kind::Repeat1 => format!("{} ({} time)", quote(last), ordinal(reps())),
        Kind::Any => "any task".into(),
    }
}

fn sequence_key(tasks: &[&str]) -> String {
    let mut key = String::with_capacity(64);
    key.push('s');
    push_number(&mut key, tasks.len() as u64);
    tasks.iter().for_each(|t| push_task(&mut key, t));
    compact(key)
}

/// The keys to drop when `contexts` (key, total) number more than `max_contexts`: all but the
/// `max_contexts × 9/10` with the largest totals, ties kept by the smaller key. Empty when
/// within the cap. Depends only on the keys and totals, so a replay prunes the same way.
pub fn prune<'a>(
    contexts: impl IntoIterator<Item = (&'a str, u64)>,
    max_contexts: usize,
) -> Vec<String> {
    let mut all: Vec<(&str, u64)> = contexts.into_iter().collect();
    let cap = max_contexts.max(16);
    if all.len() <= cap {
        return Vec::new();
    }
    all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    all.into_iter()
        .skip(cap - cap / 10)
        .map(|(k, _)| k.to_owned())
        .collect()
}

/// The model held in memory: the counts per context key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    config: Config,
    counts: HashMap<String, Counts>,
}

impl Model {
    pub fn new(config: Config) -> Model {
        Model {
            config,
            counts: HashMap::new(),
        }
    }

    /// Counts one observation: `next` followed `prefix` (the empty prefix: a session began with
    /// `next`). Prunes when the cap is exceeded.
    pub fn learn<T: AsRef<str>>(&mut self, prefix: &[T], next: &Next) {
        let prefix: Vec<&str> = prefix.iter().map(AsRef::as_ref).collect();
        for (_, key) in chain(&prefix) {
            let counts = self.counts.entry(key).or_default();
            // Clones the symbol only the first time it follows this context.
            match counts.by_next.get_mut(next) {
                Some(n) => {
                    *n += 1;
                    counts.total += 1;
                }
                None => counts.add(next.clone(), 1),
            }
        }
        if self.counts.len() > self.config.max_contexts.max(16) {
            let drop = prune(
                self.counts.iter().map(|(k, c)| (k.as_str(), c.total())),
                self.config.max_contexts,
            );
            for k in drop {
                self.counts.remove(&k);
            }
        }
    }

    /// Counts every transition of a whole session, its start and its end included.
    pub fn learn_session<T: AsRef<str>>(&mut self, tasks: &[T]) {
        for i in 0..=tasks.len() {
            let next = tasks
                .get(i)
                .map_or(Next::End, |t| Next::Task(t.as_ref().to_owned()));
            self.learn(&tasks[..i], &next);
        }
    }

    /// The `k` most likely next symbols after `prefix`, best first.
    pub fn predict<T: AsRef<str>>(&self, prefix: &[T], k: usize) -> Vec<Suggestion> {
        let prefix: Vec<&str> = prefix.iter().map(AsRef::as_ref).collect();
        let chain = chain(&prefix);
        let empty = Counts::default();
        let counts: Vec<&Counts> = chain
            .iter()
            .map(|(_, key)| self.counts.get(key).unwrap_or(&empty))
            .collect();
        let mut ranked = blend(counts.iter().copied(), &self.config);
        ranked.truncate(k);
        ranked
            .into_iter()
            .map(|(next, probability, i)| {
                let (kind, key) = &chain[i];
                let context = Context {
                    key: key.clone(),
                    description: describe(*kind, &prefix),
                };
                suggestion(next, probability, context, counts[i])
            })
            .collect()
    }

    /// The counts of one context key, if kept.
    pub fn counts(&self, key: &str) -> Option<&Counts> {
        self.counts.get(key)
    }

    /// How many contexts are kept.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

fn push_task(key: &mut String, task: &str) {
    key.push('/');
    push_number(key, task.len() as u64);
    key.push(':');
    key.push_str(task);
}

/// `n` in decimal, without going through `fmt` (keys are built for every event).
fn push_number(key: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    digits[i..].iter().for_each(|d| key.push(char::from(*d)));
}

fn compact(key: String) -> String {
    if key.len() <= MAX_KEY_LEN {
        return key;
    }
    let kind: String = key.chars().take_while(|c| *c != '/').collect();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{kind}#{h:016x}")
}

fn quote(task: &str) -> String {
    format!("`{task}`")
}

fn ordinal(n: u64) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// splitmix64: a seeded generator, so every test sees the same sessions.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn chance(&mut self, p: f64) -> bool {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    fn task(s: &str) -> Next {
        Next::Task(s.into())
    }

    /// Inserts a noise task before each task with probability `p`.
    fn noisy(rng: &mut Rng, tasks: Vec<String>, noise: &[&str], p: f64) -> Vec<String> {
        let mut out = Vec::with_capacity(tasks.len() * 2);
        for t in tasks {
            if rng.chance(p) {
                out.push(rng.pick(noise).to_owned());
            }
            out.push(t);
        }
        out
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Background sessions of random tasks (with noise), three of which contain
    /// `lint → test → build` followed by `deploy`. `build` is otherwise followed by other tasks,
    /// more often than by `deploy`.
    fn stream_with_pattern(seed: u64) -> Vec<Vec<String>> {
        let mut rng = Rng(seed);
        let pool: Vec<String> = (0..30).map(|i| format!("t{i}")).collect();
        let pool: Vec<&str> = pool.iter().map(String::as_str).collect();
        let noise = ["n1", "n2", "n3", "n4"];
        let mut sessions = Vec::new();
        for s in 0..60 {
            let mut tasks: Vec<String> = (0..5 + rng.below(6))
                .map(|_| rng.pick(&pool).to_owned())
                .collect();
            if s % 3 == 0 {
                let at = rng.below(tasks.len());
                tasks.insert(at, "build".into());
                tasks.insert(at + 1, "package".into());
            }
            let mut tasks = noisy(&mut rng, tasks, &noise, 0.15);
            if s % 20 == 7 {
                let at = rng.below(tasks.len());
                let pattern = strings(&["lint", "test", "build", "deploy"]);
                tasks.splice(at..at, pattern);
            }
            sessions.push(tasks);
        }
        sessions
    }

    #[test]
    fn a_sequence_seen_three_times_is_the_top_suggestion_despite_noise() {
        for seed in 1..=20 {
            let sessions = stream_with_pattern(seed);
            let mut model = Model::default();
            for s in &sessions {
                model.learn_session(s);
            }
            // A task never seen before the pattern: no longer context knows this prefix.
            let prefix = ["t3", "hotfix", "lint", "test", "build"];
            let top = &model.predict(&prefix, 3)[0];
            assert_eq!(top.next, task("deploy"), "seed {seed}: {top:?}");
            assert_eq!(top.support.context.description, "`lint` → `test` → `build`");
            assert_eq!((top.support.count, top.support.total), (3, 3));
            // `build` alone is followed by `package` far more often.
            let after_build = &model.predict(&["hotfix", "build"], 1)[0];
            assert_eq!(after_build.next, task("package"), "seed {seed}");
        }
    }

    /// How often each `(k-gram, next)` occurs in the sessions, END after the last task.
    fn brute_force_ngrams(sessions: &[Vec<String>], k: usize) -> HashMap<(Vec<String>, Next), u64> {
        let mut counts = HashMap::new();
        for s in sessions {
            for end in k..=s.len() {
                let next = s.get(end).map_or(Next::End, |t| task(t));
                *counts.entry((s[end - k..end].to_vec(), next)).or_insert(0) += 1;
            }
        }
        counts
    }

    #[test]
    fn explanation_numbers_are_the_counts() {
        let sessions = stream_with_pattern(42);
        let mut model = Model::default();
        for s in &sessions {
            model.learn_session(s);
        }
        let ngrams: Vec<_> = (0..=MAX_ORDER)
            .map(|k| brute_force_ngrams(&sessions, k))
            .collect();
        let mut checked = 0;
        for s in &sessions {
            for end in 1..=s.len() {
                for sug in model.predict(&s[..end], 5) {
                    let ctx = &sug.support.context;
                    let counts = model
                        .counts(&ctx.key)
                        .expect("the support is a kept context");
                    assert_eq!(sug.support.count, counts.get(&sug.next));
                    assert_eq!(sug.support.total, counts.total());
                    assert!(sug.support.count >= 1 && sug.support.count <= sug.support.total);
                    let order = ctx.key.strip_prefix('s').and_then(|k| k.split('/').next());
                    if let Some(k) = order.and_then(|k| k.parse::<usize>().ok()) {
                        let gram = s[end - k..end].to_vec();
                        let seen = |n: &Next| ngrams[k].get(&(gram.clone(), n.clone())).copied();
                        assert_eq!(seen(&sug.next), Some(sug.support.count), "{ctx:?}");
                        let total: u64 = ngrams[k]
                            .iter()
                            .filter(|((g, _), _)| *g == gram)
                            .map(|(_, n)| n)
                            .sum();
                        assert_eq!(total, sug.support.total, "{ctx:?}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 100, "only {checked} sequence supports checked");
    }

    #[test]
    fn end_is_predicted_after_the_last_task() {
        let mut model = Model::default();
        for _ in 0..5 {
            model.learn_session(&["open", "review", "close"]);
        }
        model.learn_session(&["open", "review", "reopen", "close"]);
        let top = &model.predict(&["open", "review", "close"], 1)[0];
        assert_eq!(top.next, Next::End);
        assert!(top.probability > 0.8, "{top:?}");
        assert_eq!(model.predict(&["open"], 1)[0].next, task("review"));
        assert_eq!(model.predict::<&str>(&[], 1)[0].next, task("open"));
        assert_eq!(
            model.predict::<&str>(&[], 1)[0].support.context.description,
            "the start of a session"
        );
    }

    #[test]
    fn probabilities_sum_to_one_and_ties_rank_by_name() {
        let mut model = Model::default();
        model.learn(&["a"], &task("c"));
        model.learn(&["a"], &task("b"));
        let all = model.predict(&["a"], 10);
        let names: Vec<&str> = all.iter().map(|s| s.next.label()).collect();
        assert_eq!(names, ["b", "c"]);
        let sum: f64 = all.iter().map(|s| s.probability).sum();
        assert!((sum - 1.0).abs() < 1e-12, "{sum}");
        assert!(Model::default().predict(&["a"], 3).is_empty());
    }

    #[test]
    fn keys_are_unambiguous_and_compact() {
        let a = contexts(&["a/1:b", "c"]);
        let b = contexts(&["a", "b", "c"]);
        for (x, y) in a.iter().zip(&b) {
            if x.key != "*" {
                assert_ne!(x.key, y.key);
            }
        }
        let long: Vec<String> = (0..100).map(|i| format!("task-number-{i}")).collect();
        for c in contexts(&long) {
            assert!(c.key.len() <= MAX_KEY_LEN, "{}", c.key);
        }
        let chain = contexts(&long);
        assert!(chain[0].key.starts_with("m#"), "{}", chain[0].key);
        assert!(chain[0].description.contains("`task-number-99`"));
        // Stable across runs and platforms.
        assert_eq!(contexts(&["x"])[0].key, "m/1:x/1:x*1");
    }

    #[test]
    fn the_projection_path_gives_the_models_answers() {
        let sessions = stream_with_pattern(7);
        let mut model = Model::default();
        let mut table: HashMap<String, Counts> = HashMap::new();
        for s in &sessions {
            model.learn_session(s);
            for i in 0..=s.len() {
                let next = s.get(i).map_or(Next::End, |t| task(t));
                for (key, next) in increments(&s[..i], &next) {
                    table.entry(key).or_default().add(next, 1);
                }
            }
        }
        for s in &sessions {
            for end in 0..=s.len() {
                let chain: Vec<(Context, Counts)> = contexts(&s[..end])
                    .into_iter()
                    .map(|c| {
                        let counts = table.get(&c.key).cloned().unwrap_or_default();
                        (c, counts)
                    })
                    .collect();
                assert_eq!(
                    combine(&chain, &Config::default()),
                    model.predict(&s[..end], usize::MAX)
                );
            }
        }
    }

    #[test]
    fn pruning_keeps_memory_under_the_cap_and_is_deterministic() {
        let config = Config {
            max_contexts: 2_000,
            ..Config::default()
        };
        let mut rng = Rng(99);
        let pool: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
        let pool: Vec<&str> = pool.iter().map(String::as_str).collect();
        let mut sessions = Vec::new();
        for s in 0..2_000 {
            let mut tasks: Vec<String> = (0..3 + rng.below(10))
                .map(|_| rng.pick(&pool).to_owned())
                .collect();
            if s % 4 == 0 {
                tasks.extend(strings(&["plan", "code", "review"]));
            }
            sessions.push(tasks);
        }
        let mut unbounded = Model::default();
        let (mut a, mut b) = (Model::new(config.clone()), Model::new(config.clone()));
        let mut peak = 0;
        for s in &sessions {
            unbounded.learn_session(s);
            a.learn_session(s);
            b.learn_session(s);
            peak = peak.max(a.len());
        }
        assert!(
            unbounded.len() > 20 * config.max_contexts,
            "{}",
            unbounded.len()
        );
        assert!(peak <= config.max_contexts, "{peak}");
        assert_eq!(a, b);
        // What is frequent survives.
        assert_eq!(
            a.predict(&["t1", "plan", "code"], 1)[0].next,
            task("review")
        );
        assert_eq!(a.predict(&["plan", "code", "review"], 1)[0].next, Next::End);
        // Pruning depends on keys and totals only, not on the order they come in.
        let pairs = [("x", 1), ("a", 5), ("b", 1), ("c", 1)];
        let mut reversed = pairs;
        reversed.reverse();
        assert_eq!(prune(pairs, 16), Vec::<String>::new());
        let many: Vec<(String, u64)> = (0..40).map(|i| (format!("k{i:02}"), i % 7)).collect();
        let dropped = prune(many.iter().map(|(k, n)| (k.as_str(), *n)), 16);
        let dropped_rev = prune(many.iter().rev().map(|(k, n)| (k.as_str(), *n)), 16);
        assert_eq!(dropped, dropped_rev);
        assert_eq!(dropped.len(), 40 - 15);
        assert!(
            !dropped.contains(&"k06".to_owned()),
            "a context of total 6 is kept"
        );
    }

    // ---- Accuracy on synthetic logs of known structure (split protocol of Tax et al. 2017) ----

    type Log = Vec<Vec<String>>;

    /// The choice at step 2 decides the one at step 6.
    fn long_range(rng: &mut Rng, noise: f64) -> Log {
        (0..2_000)
            .map(|_| {
                let a = rng.pick(&["A", "B"]);
                let m = rng.pick(&["m2a", "m2b"]);
                let x = if a == "A" { "X" } else { "Y" };
                let t = strings(&["start", a, "m1", m, "m3", x, "finish"]);
                noisy(rng, t, &["n1", "n2", "n3"], noise)
            })
            .collect()
    }

    /// The case type decides how many rounds of `work → check` the loop runs.
    fn counted_loop(rng: &mut Rng, noise: f64) -> Log {
        (0..2_000)
            .map(|_| {
                let (kind, rounds) = [("T1", 1), ("T2", 2), ("T3", 3)][rng.below(3)];
                let mut t = strings(&[kind, "open"]);
                for _ in 0..rounds {
                    t.extend(strings(&["work", "check"]));
                }
                t.push("close".into());
                noisy(rng, t, &["n1", "n2"], noise)
            })
            .collect()
    }

    /// A self-loop of `call` run 2 to 4 times, then `b`, then `call` until 5 calls in all.
    fn self_loop(rng: &mut Rng, noise: f64) -> Log {
        (0..2_000)
            .map(|_| {
                let k = 2 + rng.below(3);
                let mut t = strings(&["a"]);
                t.extend(std::iter::repeat_n("call".to_owned(), k));
                t.push("b".into());
                t.extend(std::iter::repeat_n("call".to_owned(), 5 - k));
                t.push("c".into());
                noisy(rng, t, &["n1", "n2"], noise)
            })
            .collect()
    }

    /// Four parallel branches in any order, then `F`, then `G` 70% of the time.
    fn parallel(rng: &mut Rng, noise: f64) -> Log {
        (0..2_000)
            .map(|_| {
                let mut branches = vec!["B", "C", "D", "E"];
                for i in (1..branches.len()).rev() {
                    branches.swap(i, rng.below(i + 1));
                }
                let mut t = strings(&["A"]);
                t.extend(strings(&branches));
                t.push("F".into());
                if rng.chance(0.7) {
                    t.push("G".into());
                }
                noisy(rng, t, &["n1", "n2"], noise)
            })
            .collect()
    }

    /// Two sub-processes interleaved at random, one with an optional step, and noise.
    fn interleaved(rng: &mut Rng, noise: f64) -> Log {
        (0..2_000)
            .map(|_| {
                let p = ["p1", "p2", "p3", "p4"];
                let q: &[&str] = if rng.chance(0.5) {
                    &["q1", "q2"]
                } else {
                    &["q1", "q3", "q2"]
                };
                let (mut i, mut j, mut t) = (0, 0, Vec::new());
                while i < p.len() || j < q.len() {
                    if j >= q.len() || (i < p.len() && rng.chance(0.6)) {
                        t.push(p[i].to_owned());
                        i += 1;
                    } else {
                        t.push(q[j].to_owned());
                        j += 1;
                    }
                }
                noisy(rng, t, &["z1", "z2", "z3"], noise)
            })
            .collect()
    }

    /// Accuracy of `predict(prefix) -> top` under the split protocol.
    fn split_accuracy(
        log: &Log,
        learn: &mut dyn FnMut(&[String], &Next),
        predict: &dyn Fn(&[String]) -> Option<Next>,
    ) -> f64 {
        let train = (2 * log.len() + 1) / 3;
        for case in &log[..train] {
            for i in 0..=case.len() {
                learn(&case[..i], &case.get(i).map_or(Next::End, |t| task(t)));
            }
        }
        let (mut correct, mut total) = (0, 0);
        for case in &log[train..] {
            for k in 2..=case.len() {
                let actual = case.get(k).map_or(Next::End, |t| task(t));
                total += 1;
                correct += usize::from(predict(&case[..k]) == Some(actual));
            }
        }
        correct as f64 / total as f64
    }

    /// Back-off n-gram baseline: the most frequent next after the longest seen suffix of at most
    /// `n - 1` tasks (ties by name).
    fn backoff_ngram(log: &Log, n: usize) -> f64 {
        let table = std::cell::RefCell::new(HashMap::<Vec<String>, Counts>::new());
        let mut learn = |prefix: &[String], next: &Next| {
            for k in 1..n.min(prefix.len() + 1) {
                let gram = prefix[prefix.len() - k..].to_vec();
                table
                    .borrow_mut()
                    .entry(gram)
                    .or_default()
                    .add(next.clone(), 1);
            }
        };
        let predict = |prefix: &[String]| {
            let table = table.borrow();
            (1..n.min(prefix.len() + 1)).rev().find_map(|k| {
                let counts = table.get(&prefix[prefix.len() - k..])?;
                let best = counts.iter().map(|(_, c)| c).max()?;
                counts
                    .iter()
                    .find(|(_, c)| *c == best)
                    .map(|(x, _)| x.clone())
            })
        };
        split_accuracy(log, &mut learn, &predict)
    }

    fn model_accuracy(log: &Log) -> f64 {
        let model = std::cell::RefCell::new(Model::default());
        let mut learn = |prefix: &[String], next: &Next| model.borrow_mut().learn(prefix, next);
        let predict = |prefix: &[String]| model.borrow().predict(prefix, 1).pop().map(|s| s.next);
        split_accuracy(log, &mut learn, &predict)
    }

    #[test]
    fn beats_back_off_trigrams_on_logs_of_known_structure() {
        type Generator = fn(&mut Rng, f64) -> Log;
        let logs: [(&str, Generator, f64); 9] = [
            ("long-range", long_range, 0.0),
            ("long-range+noise", long_range, 0.15),
            ("counted-loop", counted_loop, 0.0),
            ("counted-loop+noise", counted_loop, 0.15),
            ("self-loop+noise", self_loop, 0.1),
            ("parallel", parallel, 0.0),
            ("parallel+noise", parallel, 0.15),
            ("interleaved+noise", interleaved, 0.15),
            ("interleaved+20% noise", interleaved, 0.2),
        ];
        for (i, (name, generate, noise)) in logs.into_iter().enumerate() {
            let log = generate(&mut Rng(i as u64 + 1), noise);
            let (bigram, trigram, model) = (
                backoff_ngram(&log, 2),
                backoff_ngram(&log, 3),
                model_accuracy(&log),
            );
            println!(
                "{name:24} bigram {bigram:.4}  back-off trigram {trigram:.4}  model {model:.4}"
            );
            assert!(
                model >= trigram + 0.02,
                "{name}: {model:.4} vs trigram {trigram:.4}"
            );
        }
    }
}
