//! Push hints: telling an offline device that changes wait for it.
//!
//! The server does not speak to APNs or FCM itself: the app's own push
//! sender does, behind `--push-webhook URL`. When changes are committed to a
//! space, the worker here waits a moment for more (a burst makes one hint),
//! then asks the store which members' devices are offline, have a push
//! token, and have not had a hint within the minimum interval
//! ([`crate::store::CoordinationStore::claim_push_hints`], which also marks them, so two
//! instances on one database do not both send one). Each gets one POST of a
//! [`PushHint`] naming its changed spaces. A device left out by its interval
//! is tried again when the interval has passed; a device hinted after a
//! space's latest change is not hinted again for it. Delivery is best
//! effort: a hint only shortens the time until the device syncs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tandem_protocol::SpaceId;
use tandem_protocol::api::PushHint;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::state::{ServerState, now_ms};
use crate::store::HintedSpace;

/// How far the database's clock (PostgreSQL stamps hints with its own) may
/// be behind this instance's: a hint is taken to follow a change only if
/// it is this much later, so a skewed clock costs a redundant hint, never a
/// missing one.
const CLOCK_MARGIN_MS: u64 = 1_000;

/// How long one POST to the webhook may take.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the worker until shutdown.
pub async fn run(
    state: Arc<ServerState>,
    url: String,
    mut spaces: mpsc::UnboundedReceiver<SpaceId>,
) {
    let http = match reqwest::Client::builder().timeout(WEBHOOK_TIMEOUT).build() {
        Ok(http) => http,
        Err(e) => {
            warn!(error = %e, "push hints are off: no HTTP client");
            return;
        }
    };
    let config = state.config.push.clone();
    let min_interval = u64::try_from(config.min_interval.as_millis()).unwrap_or(u64::MAX);
    // Spaces with changes not hinted to every device yet, with the time of
    // their latest change.
    let mut waiting: BTreeMap<SpaceId, u64> = BTreeMap::new();
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            space = spaces.recv() => {
                let Some(space) = space else { return };
                waiting.insert(space, now_ms());
                // Let a burst of commits gather.
                tokio::time::sleep(config.batch_delay).await;
                while let Ok(space) = spaces.try_recv() {
                    waiting.insert(space, now_ms());
                }
            }
            _ = sleep_until(retry_at), if retry_at.is_some() => {
                retry_at = None;
            }
        }
        if waiting.is_empty() {
            continue;
        }
        let now = now_ms();
        let batch: Vec<HintedSpace> = waiting
            .iter()
            .map(|(space, changed_at)| HintedSpace {
                space: space.clone(),
                told_after_ms: changed_at + CLOCK_MARGIN_MS,
            })
            .collect();
        let claim = match state.store.claim_push_hints(batch, min_interval).await {
            Ok(claim) => claim,
            Err(e) => {
                warn!(error = %e, "finding devices to hint failed");
                continue;
            }
        };
        if claim.retry_at.is_none() {
            waiting.clear();
        }
        if let Some(at) = claim.retry_at {
            let wait = Duration::from_millis(at.saturating_sub(now).max(1));
            retry_at = Some(tokio::time::Instant::now() + wait);
        }
        for target in claim.ready {
            let hint = PushHint {
                user: target.device.user,
                device_id: target.device.device,
                token: target.token.token,
                provider: target.token.provider,
                spaces: target.spaces,
                sent_at: now,
            };
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                match http.post(&url).json(&hint).send().await {
                    Ok(response) if response.status().is_success() => {
                        debug!(device = %hint.device_id, spaces = hint.spaces.len(), "push hint sent");
                    }
                    Ok(response) => {
                        warn!(status = %response.status(), device = %hint.device_id, "the push webhook refused a hint");
                    }
                    Err(e) => warn!(error = %e, "the push webhook cannot be reached"),
                }
            });
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
