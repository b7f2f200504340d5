//! Periodic housekeeping (tokio-cron-scheduler): removing used and expired refresh tokens.

use anyhow::Context;
use parley_domain::{now_ms, Domain};
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

/// Runs the scheduled jobs until `shutdown`.
pub async fn run(domain: Domain, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut scheduler = JobScheduler::new().await.context("scheduler")?;
    let purge = Job::new_async("0 */10 * * * *", move |_, _| {
        let domain = domain.clone();
        Box::pin(async move {
            // Keep used tokens a day, so a replayed one is still recognised as used.
            let cutoff = now_ms() - 24 * 3600 * 1000;
            match domain.store().delete_stale_refresh_tokens(cutoff).await {
                Ok(n) => tracing::info!(deleted = n, "stale refresh tokens purged"),
                Err(e) => tracing::warn!(error = %e, "refresh token purge failed"),
            }
        })
    })
    .context("refresh token purge job")?;
    scheduler.add(purge).await.context("adding a job")?;
    scheduler.start().await.context("starting the scheduler")?;
    shutdown.cancelled().await;
    scheduler.shutdown().await.context("stopping the scheduler")?;
    Ok(())
}
