//! The bridge's side of the control plane: joining (its key stays here), renewing its
//! certificate at half-life and swapping it in place, heartbeats whose answers end tunnels,
//! and session reports through a bounded queue retried until the API takes them. Tunnels
//! never wait for any of this: the API being down delays reports, nothing else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bamf_client::backoff::Backoff;
use bamf_client::batch::{self, Batching};
use bamf_client::enroll::{self, IdentityFiles, IssuedError, KeyPair};
use bamf_client::https::{Api, HttpsError};
use bamf_client::identity;
use bamf_proto::api::{BridgeHeartbeat, BridgeJoinRequest, RenewRequest, Reports};
use bamf_proto::san::{Identity, SessionId};
use bamf_proto::tunnel::SessionEvent as Event;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::TunnelConfig;
use crate::tunnel::{CertSlot, Pairing, certified_key};

/// Session events queued for the API at most (about 200 bytes each).
pub const REPORT_QUEUE: usize = 100_000;
/// Events per report request.
const REPORT_BATCH: usize = 500;
/// How long the first event of a report waits for others to go with it: a busy bridge sends
/// one request for many sessions' events, not one per event (each is a write at the API).
const REPORT_LINGER: Duration = Duration::from_millis(50);
/// Retry back-off bounds for reports and heartbeats (jittered: a StatefulSet's bridges must
/// not retry in lock-step).
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A fresh jittered back-off for API retries.
fn backoff() -> Backoff {
    Backoff::new(BACKOFF_MIN, BACKOFF_MAX)
}

/// Why the bridge could not get its certificate.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// Files or keys.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// The API refused or could not be reached.
    #[error("joining: {0}")]
    Join(#[from] HttpsError),
    /// No certificate yet and no token to get one.
    #[error("no bridge certificate in {0} and BAMF_JOIN_TOKEN is not set")]
    NoToken(String),
    /// The CA file or a returned certificate is unusable.
    #[error("{0}")]
    Tls(String),
    /// The certificate issued is not for this bridge or its key.
    #[error("the API issued an unusable certificate: {0}")]
    Issued(#[from] IssuedError),
}

/// The bridge's credentials.
#[derive(Clone)]
pub struct Credentials {
    /// Key (kept 0600 in the data directory) and certificate, PEM.
    pub pair: KeyPair,
    /// The CA, PEM.
    pub ca_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

/// `bridge.key`, `bridge.crt`.
const STEM: &str = "bridge";

/// The stored certificate if it is still valid, else a new one from the API with
/// `join_token`.
///
/// # Errors
///
/// [`EnrollError`].
pub async fn enroll(
    config: &TunnelConfig,
    ordinal: u32,
    join_token: Option<&str>,
) -> Result<Credentials, EnrollError> {
    let ca_pem = std::fs::read_to_string(&config.ca_file)
        .map_err(|e| EnrollError::Tls(format!("{}: {e}", config.ca_file.display())))?;
    let files = IdentityFiles::open(&config.data_dir, STEM)?;
    let me = Identity::Bridge { ordinal };
    if let Some(pair) = files.load()? {
        let now = time::OffsetDateTime::now_utc();
        let fresh = identity::validity(&pair.cert_pem)
            .is_ok_and(|(_, to)| to > now + Duration::from_secs(60));
        if fresh && enroll::check_issued(&pair.cert_pem, &pair.key_pem, &me).is_ok() {
            tracing::info!("using the stored bridge certificate");
            return Ok(Credentials { pair, ca_pem });
        }
    }
    let token =
        join_token.ok_or_else(|| EnrollError::NoToken(config.data_dir.display().to_string()))?;
    let api = api_client(config, &ca_pem, None)?;
    let (key_pem, csr) = identity::key_and_csr()?;
    let answer = api
        .join_bridge(&BridgeJoinRequest {
            token: token.to_owned(),
            ordinal,
            csr,
        })
        .await?;
    let pair = KeyPair {
        key_pem,
        cert_pem: answer.certificate.certificate,
    };
    enroll::check_issued(&pair.cert_pem, &pair.key_pem, &me)?;
    files.store(&pair)?;
    tracing::info!(ordinal, "joined");
    Ok(Credentials { pair, ca_pem })
}

/// An API client that trusts the CA and presents `client` when given.
fn api_client(
    config: &TunnelConfig,
    ca_pem: &str,
    client: Option<&Credentials>,
) -> Result<Api, EnrollError> {
    let tls = bamf_client::tls_config(
        ca_pem,
        client.map(|c| (c.pair.cert_pem.as_str(), c.pair.key_pem.as_str())),
        &[b"http/1.1"],
    )
    .map_err(|e| EnrollError::Tls(e.to_string()))?;
    // Kept connections: heartbeats every second and reports for every session's events; a
    // TLS handshake each cost the API more than opening the session did. Rebuilt (a new pool)
    // at each renewal.
    Ok(Api::new(&config.api_url, tls)
        .map_err(EnrollError::Join)?
        .connect_to(config.api_address)
        .pooled())
}

/// The running control loops' handles.
#[derive(Debug)]
pub struct Control {
    /// Set when the bridge drains (reported in heartbeats).
    pub draining: Arc<AtomicBool>,
    /// The report sender; at shutdown it flushes what is queued, then ends.
    pub reporter: tokio::task::JoinHandle<()>,
    /// What a heartbeat needs, for [`Control::announce_draining`].
    heartbeat: Heartbeat,
}

/// Deadline for announcing a drain before the bridge stops accepting.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(2);
/// The API writes a keep-alive on the control stream every 500 ms: this long without a
/// byte means the stream is dead.
const CONTROL_SILENCE: Duration = Duration::from_secs(5);
/// Reconnect delays of the control stream.
const CONTROL_RETRY_MAX: Duration = Duration::from_secs(10);

/// What every heartbeat carries besides the live sessions.
#[derive(Clone)]
struct Heartbeat {
    api: Arc<arc_swap::ArcSwap<Api>>,
    relay: Arc<Pairing>,
    draining: Arc<AtomicBool>,
    /// When this process started (Unix ms): the API ends older sessions it does not list.
    started_at_ms: i64,
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat")
            .field("started_at_ms", &self.started_at_ms)
            .finish_non_exhaustive()
    }
}

impl Heartbeat {
    /// Sends one heartbeat and closes the tunnels the answer names.
    async fn send(&self) -> Result<(), HttpsError> {
        let sessions = self.relay.live_sessions();
        let beat = BridgeHeartbeat {
            load: u32::try_from(sessions.len()).unwrap_or(u32::MAX),
            draining: self.draining.load(Ordering::Relaxed),
            sessions: sessions.iter().map(ToString::to_string).collect(),
            started_at_ms: Some(self.started_at_ms),
        };
        let answer = self.api.load().bridge_heartbeat(&beat).await?;
        for id in &answer.kill {
            if let Ok(session) = id.parse::<SessionId>()
                && self.relay.kill(session)
            {
                tracing::info!(session = %session, "heartbeat: the API ended this session");
            }
        }
        Ok(())
    }
}

impl Control {
    /// Tells the API at once that this bridge is draining, so it places no new session
    /// here; called before the bridge stops accepting. Bounded by `ANNOUNCE_TIMEOUT`.
    pub async fn announce_draining(&self) {
        self.draining.store(true, Ordering::Release);
        match tokio::time::timeout(ANNOUNCE_TIMEOUT, self.heartbeat.send()).await {
            Ok(Ok(())) => tracing::info!("shutdown: the API knows this bridge is draining"),
            Ok(Err(e)) => tracing::warn!(error = %e, "shutdown: could not announce draining"),
            Err(_) => tracing::warn!("shutdown: announcing draining timed out"),
        }
    }
}

/// Starts heartbeats, reports and renewal; they stop at `stop`.
///
/// # Errors
///
/// [`EnrollError`] when the API client cannot be made.
pub fn start(
    config: &TunnelConfig,
    ordinal: u32,
    credentials: Credentials,
    slot: Arc<CertSlot>,
    relay: Arc<Pairing>,
    events: mpsc::Receiver<Event>,
    stop: CancellationToken,
) -> Result<Control, EnrollError> {
    let api = api_client(config, &credentials.ca_pem, Some(&credentials))?;
    let api = Arc::new(arc_swap::ArcSwap::from_pointee(api));
    let draining = Arc::new(AtomicBool::new(false));
    let heartbeat = Heartbeat {
        api: api.clone(),
        relay,
        draining: draining.clone(),
        started_at_ms: i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(i64::MAX),
    };
    tokio::spawn(heartbeats(
        heartbeat.clone(),
        config.heartbeat_interval,
        stop.clone(),
    ));
    tokio::spawn(control_stream(api.clone(), stop.clone()));
    let reporter = tokio::spawn(reports(api.clone(), events, stop.clone()));
    tokio::spawn(renewals(
        config.clone(),
        ordinal,
        credentials,
        slot,
        api,
        stop,
    ));
    Ok(Control {
        draining,
        reporter,
        heartbeat,
    })
}

async fn heartbeats(heartbeat: Heartbeat, interval: Duration, stop: CancellationToken) {
    let mut failures = 0u32;
    let mut retry = backoff();
    loop {
        let wait = match heartbeat.send().await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!("heartbeat: the API answers again");
                }
                failures = 0;
                retry.reset();
                interval
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(error = %e, failures, "heartbeat failed; tunnels keep running");
                }
                interval.min(retry.next_delay())
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Holds the control stream open for as long as the bridge runs: the API forgets a bridge
/// whose stream breaks, so a dead bridge gets no new sessions. Reconnects after a short
/// back-off whenever the stream ends (an API restart, say).
async fn control_stream(api: Arc<arc_swap::ArcSwap<Api>>, stop: CancellationToken) {
    use http_body_util::BodyExt;
    let mut failures = 0u32;
    let mut retry = Backoff::new(BACKOFF_MIN, CONTROL_RETRY_MAX);
    loop {
        let held = async {
            let response = api.load().bridge_control().await?;
            tracing::debug!("control stream open");
            let mut body = response.into_body();
            loop {
                match tokio::time::timeout(CONTROL_SILENCE, body.frame()).await {
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(e))) => return Err(HttpsError::Exchange(e.to_string())),
                    Ok(None) => return Ok(true),
                    Err(_) => return Err(HttpsError::Exchange("control stream silent".into())),
                }
            }
        };
        let Some(ended) = stop.run_until_cancelled(held).await else {
            return;
        };
        // A stream that was open reconnects at once; failures to open back off.
        let wait = match ended {
            Ok(_) => {
                failures = 0;
                retry.reset();
                BACKOFF_MIN / 4
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(error = %e, failures, "control stream unavailable; retrying");
                }
                retry.next_delay()
            }
        };
        if stop
            .run_until_cancelled(tokio::time::sleep(wait))
            .await
            .is_none()
        {
            return;
        }
    }
}

async fn reports(
    api: Arc<arc_swap::ArcSwap<Api>>,
    events: mpsc::Receiver<Event>,
    stop: CancellationToken,
) {
    let batching = Batching {
        max: REPORT_BATCH,
        linger: REPORT_LINGER,
        retry: (BACKOFF_MIN, BACKOFF_MAX),
    };
    batch::deliver("session reports", events, stop, batching, |events| {
        let api = api.load_full();
        async move {
            let reports = Reports { events };
            let sent = api.bridge_reports(&reports).await.map(drop);
            if sent.is_ok() {
                crate::metrics::reports_sent(reports.events.len());
            }
            (reports.events, sent)
        }
    })
    .await;
}

/// Renews at half-life (`bamf_client::enroll::renew_at_half_life`), swapping the new
/// certificate into the relay's TLS and the API client.
async fn renewals(
    config: TunnelConfig,
    ordinal: u32,
    credentials: Credentials,
    slot: Arc<CertSlot>,
    api: Arc<arc_swap::ArcSwap<Api>>,
    stop: CancellationToken,
) {
    let ca_pem = credentials.ca_pem;
    let first = credentials.pair.cert_pem;
    let files = match IdentityFiles::open(&config.data_dir, STEM) {
        Ok(files) => files,
        Err(e) => {
            tracing::error!(error = %e, "the data directory is unusable: no renewals");
            return;
        }
    };
    enroll::renew_at_half_life(first, &stop, || async {
        let (key_pem, csr) = identity::key_and_csr()?;
        let answer = api.load().renew_bridge(&RenewRequest { csr }).await?;
        let pair = KeyPair {
            key_pem,
            cert_pem: answer.certificate.certificate,
        };
        enroll::check_issued(&pair.cert_pem, &pair.key_pem, &Identity::Bridge { ordinal })?;
        let key = certified_key(&pair.cert_pem, &pair.key_pem)
            .map_err(|e| EnrollError::Tls(e.to_string()))?;
        files.store(&pair)?;
        let renewed = Credentials {
            pair,
            ca_pem: ca_pem.clone(),
        };
        api.store(Arc::new(api_client(&config, &ca_pem, Some(&renewed))?));
        slot.swap(key);
        tracing::info!(ordinal, "certificate swapped in");
        Ok::<_, EnrollError>(renewed.pair.cert_pem)
    })
    .await;
}
