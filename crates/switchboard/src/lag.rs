//! The lag watcher (DESIGN §16): every second, for each subscription with a `lag_budget_secs`,
//! how long its oldest pending delivery has waited. Past the budget, SubscriptionLagging (System
//! event 6) goes to the tenant's monitors; back under half of it, SubscriptionCaughtUp (7) —
//! once per episode: the episode is a column the first node to see it sets, so a cluster tells
//! it once. The figure is also `switchboard_subscription_lag_seconds`.

use std::time::Duration;

use tokio::sync::watch as stop_signal;

use crate::clock::now_millis;
use crate::store::{Recipients, Store, StoreError, SystemEvent};
use crate::subscription::health::Notice;
use crate::telemetry::SUBSCRIPTION_LAG;

/// How often the lag of subscriptions with a budget is looked at.
pub const EVERY: Duration = Duration::from_secs(1);

/// Looks every [`EVERY`] until `stop` turns true; also disables the pull subscriptions nobody
/// called for `abandon_after_ms` (`auto_disable_after_secs`).
pub async fn watch(store: Store, abandon_after_ms: i64, mut stop: stop_signal::Receiver<bool>) {
    let mut looks: u64 = 0;
    while !*stop.borrow() {
        if let Err(e) = check(&store, now_millis()).await {
            tracing::warn!(error = %e, "the lag check failed; trying again");
        }
        // Abandonment is counted in hours: a look every 10 s is plenty.
        if looks.is_multiple_of(10)
            && let Err(e) = abandoned(&store, now_millis(), abandon_after_ms).await
        {
            tracing::warn!(error = %e, "the abandoned pull subscriptions check failed");
        }
        looks += 1;
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Disables the enabled pull subscriptions that no consumer called (`messages`, `commit`,
/// `seek`) for `after_ms` before `now` — counted from creation when none ever did — and tells
/// the tenant's monitors (SubscriptionDisabled), once per subscription across a cluster. The
/// ids disabled.
pub async fn abandoned(store: &Store, now: i64, after_ms: i64) -> Result<Vec<String>, StoreError> {
    let secs = after_ms / 1000;
    let reason = format!("no consumer called for {secs} s (auto_disable_after_secs)");
    let gone = store
        .disable_abandoned_pulls(now - after_ms, &reason, now)
        .await?;
    let mut ids = Vec::with_capacity(gone.len());
    for (id, tenant) in gone {
        tracing::warn!(%tenant, subscription_id = %id, "an abandoned pull subscription was disabled");
        let notice = Notice::Disabled {
            reason: reason.clone(),
        };
        let event = SystemEvent {
            tenant,
            event: notice.event(&id, now),
            to: Recipients::MonitorsBut(id.clone()),
            lease_until: None,
            retried: true,
        };
        store.system_event(event).await?;
        ids.push(id);
    }
    Ok(ids)
}

/// One look at `now` (unix ms, the clock deliveries are created by): the notices it sent, with
/// the subscription each is about.
pub async fn check(store: &Store, now: i64) -> Result<Vec<(String, Notice)>, StoreError> {
    let subs = store.budgeted_subscriptions().await?;
    if subs.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = subs.iter().map(|s| s.id.as_str()).collect();
    let lags = store.lags(&ids, now).await?;
    let mut sent = Vec::new();
    for sub in &subs {
        let lag = lags.get(&sub.id).copied().unwrap_or_default();
        let age = lag.oldest_since.map_or(0, |since| (now - since).max(0));
        metrics::gauge!(SUBSCRIPTION_LAG, "tenant" => sub.tenant_id.clone(), "subscription" => sub.id.clone())
            .set(age as f64 / 1000.0);
        let budget = i64::try_from(sub.budget_secs).unwrap_or(i64::MAX / 1000) * 1000;
        let notice = match sub.lagging_since {
            None if age > budget && store.start_lagging(&sub.id, now).await? => Notice::Lagging {
                oldest_pending_age_secs: age / 1000,
                pending: lag.pending,
            },
            Some(since) if age < budget / 2 && store.end_lagging(&sub.id, since).await? => {
                Notice::CaughtUp {
                    lagged_secs: (now - since).max(0) / 1000,
                }
            }
            _ => continue,
        };
        tracing::info!(tenant = %sub.tenant_id, subscription_id = %sub.id, ?notice, "lag");
        let event = SystemEvent {
            tenant: sub.tenant_id.clone(),
            event: notice.event(&sub.id, now),
            to: Recipients::MonitorsBut(sub.id.clone()),
            lease_until: None,
            retried: true,
        };
        if let Err(e) = store.system_event(event).await {
            // Not told: the episode's mark goes back, so the next look tells it.
            let _ = match (&notice, sub.lagging_since) {
                (Notice::CaughtUp { .. }, Some(since)) => store.start_lagging(&sub.id, since).await,
                _ => store.end_lagging(&sub.id, now).await,
            };
            return Err(e);
        }
        sent.push((sub.id.clone(), notice));
    }
    Ok(sent)
}
