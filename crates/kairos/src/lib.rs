//! The `kairos` binary's library: configuration, telemetry and start-up in one obvious place
//! each, plus the commands (`serve`, `consume`, `publish`, `demo`, `bench`). `main` only parses
//! the command line and calls into here. Integration tests use [`startup::Kairos`] the same way.

pub mod backup;
pub mod bench;
pub mod configuration;
pub mod demo;
pub mod eval;
pub mod history;
pub mod publish;
pub mod route;
pub mod startup;
pub mod telemetry;
