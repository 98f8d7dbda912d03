//! Workflow patterns, workflow families and next-task suggestions, learned from task events.
//!
//! The pure parts: [`next`] (the next-task model, shared by the projection and `kairos eval
//! next-task`), [`mining`] (frequent contiguous and gapped task sequences) and [`families`]
//! (sessions clustered by their n-gram profiles).

pub mod families;
pub mod mining;
pub mod next;

mod api;
pub mod projection;
pub mod read;

pub use api::{MODULE, WorkflowSettings, WorkflowsModule};

/// The name of the projection: consumer, checkpoint, schema and dead-letter subject.
pub const NAME: &str = "workflows";
