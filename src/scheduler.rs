//! Periodic housekeeping (tokio-cron-scheduler): removing used and expired refresh
//! tokens, releasing emails and phones never proven, and user events older than the
//! sync retention. Beside it, every second, the search index's pending entries
//! are merged (PostgreSQL), so that no message batch has to.

use std::time::Duration;

use anyhow::Context;
use parley_domain::{now_ms, Domain};
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

/// How often the search index's pending entries are merged. At 10,000 messages
/// a second the index's pending list (4 MB) fills in about twelve seconds of
/// one-word messages (36 bytes each), in under two of twelve-word ones (240).
const MERGE_SEARCH_EVERY: Duration = Duration::from_secs(1);

/// Runs the scheduled jobs until `shutdown`.
pub async fn run(domain: Domain, event_retention_days: u32, shutdown: CancellationToken) -> anyhow::Result<()> {
    let merging = tokio::spawn(merge_search_entries(domain.clone(), shutdown.clone()));
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
    merging.await.context("the search index's upkeep")?;
    Ok(())
}

/// Merges the search index's pending entries every [`MERGE_SEARCH_EVERY`],
/// one merge at a time, until `shutdown`. A failure is logged once, until a
/// merge succeeds again.
async fn merge_search_entries(domain: Domain, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(MERGE_SEARCH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        match domain.store().merge_pending_search_entries().await {
            Ok(pages) => {
                failing = false;
                tracing::trace!(pages, "search index entries merged");
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "merging the search index's pending entries failed");
            }
            Err(_) => {}
        }
    }
}
