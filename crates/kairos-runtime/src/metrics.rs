//! The metric families the runtime records (through the `metrics` facade: whatever recorder the
//! process installed receives them; none, and they cost next to nothing).

use std::time::Duration;

/// A live batch of `projection` committed: its size and how long applying it took.
pub(crate) fn batch_applied(projection: &'static str, events: usize, took: Duration) {
    metrics::histogram!("kairos_projection_batch_size", "projection" => projection)
        .record(events as f64);
    metrics::histogram!("kairos_projection_apply_duration_seconds", "projection" => projection)
        .record(took.as_secs_f64());
}

/// A command on `aggregate` (the category of its subject: `access`, `budget`) ended with
/// `outcome`: `appended`, `unchanged` (it decided to append nothing), `rejected`, `conflict`
/// (every attempt met another writer) or `failed`.
pub(crate) fn command(aggregate: &str, outcome: &'static str) {
    metrics::counter!("kairos_commands_total", "aggregate" => aggregate.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// A command on `aggregate` met another writer's append and decided again.
pub(crate) fn command_conflict(aggregate: &str) {
    metrics::counter!("kairos_command_conflicts_total", "aggregate" => aggregate.to_owned())
        .increment(1);
}

/// How many partitions of `projection` this process folds now.
pub(crate) fn partitions_held(projection: &'static str, held: usize) {
    metrics::gauge!("kairos_projection_partitions_held", "projection" => projection)
        .set(held as f64);
}

/// Describes the runtime's families (HELP lines), once the process has a recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        "kairos_projection_batch_size",
        Unit::Count,
        "Events in each batch a live projection committed."
    );
    describe_histogram!(
        "kairos_projection_apply_duration_seconds",
        Unit::Seconds,
        "Time to apply and commit one live batch, checkpoint included."
    );
    describe_gauge!(
        "kairos_projection_partitions_held",
        Unit::Count,
        "Partitions of a partitioned projection this process folds now."
    );
    describe_counter!(
        "kairos_commands_total",
        Unit::Count,
        "Commands decided against an aggregate, by outcome."
    );
    describe_counter!(
        "kairos_command_conflicts_total",
        Unit::Count,
        "Conditional appends refused because another writer appended first; each was decided again."
    );
}
