//! Periodic housekeeping (tokio-cron-scheduler): removing used and expired refresh
//! tokens, releasing emails and phones never proven, and user events older than the
//! sync retention.

use anyhow::Context;
use parley_domain::{now_ms, Domain};
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

/// Runs the scheduled jobs until `shutdown`.
pub async fn run(domain: Domain, event_retention_days: u32, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut scheduler = JobScheduler::new().await.context("scheduler")?;
    let events_domain = domain.clone();
    let prune = Job::new_async("30 15 * * * *", move |_, _| {
        let domain = events_domain.clone();
        Box::pin(async move {
            let cutoff = now_ms() - i64::from(event_retention_days) * 24 * 3600 * 1000;
            match domain.store().delete_events_before(cutoff).await {
                Ok(n) => tracing::info!(deleted = n, "events past retention pruned"),
                Err(e) => tracing::warn!(error = %e, "event pruning failed"),
            }
        })
    })
    .context("event pruning job")?;
    scheduler.add(prune).await.context("adding a job")?;
    let purge = Job::new_async("0 */10 * * * *", move |_, _| {
        let domain = domain.clone();
        Box::pin(async move {
            // Ended sign-ins are kept a day (a replayed token is still recognised), as are
            // one-time codes and failed logins (the hourly throttles need the last hour).
            let cutoff = now_ms() - 24 * 3600 * 1000;
            match domain.store().delete_stale_refresh_tokens(cutoff).await {
                Ok(n) => tracing::info!(deleted = n, "stale refresh tokens purged"),
                Err(e) => tracing::warn!(error = %e, "refresh token purge failed"),
            }
            if let Err(e) = domain.store().delete_stale_auth_records(cutoff).await {
                tracing::warn!(error = %e, "one-time code and failed-login purge failed");
            }
            // Emails and phones nobody proved in time go back to whoever owns them.
            if let Err(e) = domain.release_unverified(None).await {
                tracing::warn!(error = %e, "releasing unproven identifiers failed");
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
