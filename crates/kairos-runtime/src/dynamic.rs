//! A projection behind a pointer, so a registry can hold projections of different types and the
//! binary can run or rebuild one it knows only by name.

use futures_util::future::BoxFuture;
use kairos_bus::Bus;
use sqlx::PgPool;

use crate::{
    Progress, Projection, ReplayOptions, ReplayReport, Runner, RunnerConfig, RunnerError, Seat,
};

/// What the runtime does with a projection, without its item and carry types: every
/// [`Projection`] that is `Clone` is one.
pub trait AnyProjection: Send + Sync + 'static {
    /// [`Projection::name`].
    fn name(&self) -> &'static str;

    /// [`Projection::schema`].
    fn schema(&self) -> &'static str;

    /// Runs its live consumer (see [`Runner::run`]) until it fails.
    fn run(
        &self,
        bus: Bus,
        pool: PgPool,
        config: RunnerConfig,
    ) -> BoxFuture<'static, Result<(), RunnerError>>;

    /// Rebuilds it from the stream (see [`crate::replay`]).
    fn replay<'a>(
        &'a self,
        bus: &'a Bus,
        pool: &'a PgPool,
        opts: &'a ReplayOptions,
        seat: Option<Seat>,
        progress: &'a mut (dyn FnMut(Progress) + Send),
    ) -> BoxFuture<'a, Result<ReplayReport, RunnerError>>;
}

impl<P: Projection + Clone> AnyProjection for P {
    fn name(&self) -> &'static str {
        Projection::name(self)
    }

    fn schema(&self) -> &'static str {
        Projection::schema(self)
    }

    fn run(
        &self,
        bus: Bus,
        pool: PgPool,
        config: RunnerConfig,
    ) -> BoxFuture<'static, Result<(), RunnerError>> {
        Box::pin(Runner::new(self.clone(), bus, pool, config).run())
    }

    fn replay<'a>(
        &'a self,
        bus: &'a Bus,
        pool: &'a PgPool,
        opts: &'a ReplayOptions,
        seat: Option<Seat>,
        progress: &'a mut (dyn FnMut(Progress) + Send),
    ) -> BoxFuture<'a, Result<ReplayReport, RunnerError>> {
        Box::pin(crate::replay(self.clone(), bus, pool, opts, seat, progress))
    }
}
