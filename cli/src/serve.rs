//! `tandem serve`: the reference sync server.
//!
//! With `--postgres URL` the state lives in PostgreSQL and any number of
//! `tandem serve` processes on the same database and `--postgres-schema`
//! serve the same devices (see docs/POSTGRES.md).
//!
//! Prints one JSON line once it listens, `{"listening": "<addr>", ...}`;
//! logs go to stderr (`RUST_LOG` filters them, `info` by default). Stops
//! gracefully on SIGINT or SIGTERM: every batch being applied is committed
//! and acked, or not acked at all.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tandem_server::auth::UserTokenVerifier;
use tandem_server::store::PostgresOptions;
use tandem_server::{Schema, Server, ServerConfig, TlsIdentity};

use crate::failure::Failure;

/// Options of `tandem serve` (boxed: they are many, and the other commands'
/// options should not pay for their size).
#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    options: Box<ServeOptions>,
}

/// The options themselves.
#[derive(clap::Args)]
pub struct ServeOptions {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// The SQLite database file (created if missing).
    #[arg(long, value_name = "PATH", default_value = "tandem-server.db")]
    pub db: PathBuf,
    /// Store everything in PostgreSQL instead (a URL or a key=value
    /// connection string). Several servers started with the same database
    /// and schema are instances of one service, behind one load balancer.
    #[arg(long, value_name = "URL", conflicts_with = "db")]
    pub postgres: Option<String>,
    /// The PostgreSQL schema holding Tandem's tables (created if missing).
    #[arg(
        long,
        value_name = "NAME",
        default_value = "tandem",
        requires = "postgres"
    )]
    pub postgres_schema: String,
    /// Connections each instance keeps to PostgreSQL.
    #[arg(long, value_name = "N", default_value_t = 16, requires = "postgres")]
    pub postgres_pool: usize,
    /// The schema file (JSON): collection policies, set fields, field rules.
    #[arg(long, value_name = "FILE")]
    pub schema: Option<PathBuf>,
    /// Serve HTTPS and WSS with this certificate chain (PEM, leaf first) on
    /// the listen address. Without it the server speaks plain HTTP (local
    /// use, or behind a load balancer that terminates TLS).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Let web pages of this origin (`https://app.example.com`) call the
    /// HTTP routes (CORS). Repeat for several origins; none by default.
    /// Tokens are checked as for any caller.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
    /// Accept `dev:<user>` as the user token of any user. Local use only.
    #[arg(long)]
    pub dev_auth: bool,
    /// Verify HS256 user tokens with the secret in this file.
    #[arg(long, value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// Verify user tokens with this public key (PEM): Ed25519 pins EdDSA,
    /// RSA pins RS256.
    #[arg(long, value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,
    /// The `aud` user tokens must carry (required with a JWT key).
    #[arg(long, value_name = "AUD")]
    pub jwt_audience: Option<String>,
    /// The `iss` user tokens must carry (required with a JWT key).
    #[arg(long, value_name = "ISS")]
    pub jwt_issuer: Option<String>,
    /// Lifetime of access tokens, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 900)]
    pub access_token_ttl: u64,
    /// Lifetime of refresh tokens, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30 * 24 * 3600)]
    pub refresh_token_ttl: u64,
    /// Largest WebSocket frame, message or HTTP body, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub max_frame_bytes: usize,
    /// Most mutations in one push.
    #[arg(long, value_name = "N", default_value_t = 500)]
    pub max_batch: usize,
    /// Largest document state, in bytes of JSON.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub max_document_bytes: usize,
    /// Mutations per second one device may push (sustained).
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    pub rate_limit: u32,
    /// Mutations one device may push in a burst.
    #[arg(long, value_name = "N", default_value_t = 2_000)]
    pub rate_burst: u32,
    /// WebSocket connections one device may have open at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_connections_per_device: usize,
    /// Devices (not revoked) one user may register; revoking one frees a
    /// place.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_devices_per_user: usize,
    /// How far ahead of the server's clock a write's clock reading may be,
    /// in milliseconds; writes further ahead are refused (`clock_skew`).
    #[arg(long, value_name = "MS", default_value_t = 300_000)]
    pub max_clock_skew_ms: u64,
    /// Seconds a connection has to send a complete HTTP request head (the
    /// upgrade request included); slower clients are cut off.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub request_header_timeout: u64,
    /// Seconds a connection has to send `hello`.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub handshake_timeout: u64,
    /// Changes per catch-up page.
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    pub page_size: usize,
    /// Purge tombstones older than this many days (0: never).
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    pub tombstone_retention_days: u64,
    /// Sync every commit to disk (survives power loss, slower).
    #[arg(long)]
    pub durable: bool,
    /// A role's lease, in milliseconds: a holder that does not renew within
    /// this loses the role (devices renew every 500 ms).
    #[arg(long, value_name = "MS", default_value_t = 1_500)]
    pub role_lease_ms: u64,
    /// POST a push hint (JSON) to URL when changes land in a space of an
    /// offline device with a push token (the app's push sender relays it).
    #[arg(long, value_name = "URL")]
    pub push_webhook: Option<String>,
    /// At most one push hint per device per this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub push_hint_interval_ms: u64,
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| {
        Failure::new(
            "invalid_input",
            format!("cannot read the {what} {}: {e}", path.display()),
        )
    })
}

fn verifier(args: &ServeOptions) -> Result<UserTokenVerifier, Failure> {
    let has_jwt = args.jwt_secret_file.is_some() || args.jwt_public_key.is_some();
    if !has_jwt && !args.dev_auth {
        return Err(Failure::new(
            "invalid_input",
            "choose how user tokens are checked: --dev-auth, --jwt-secret-file or --jwt-public-key",
        ));
    }
    let mut verifier = if has_jwt {
        let (Some(audience), Some(issuer)) = (&args.jwt_audience, &args.jwt_issuer) else {
            return Err(Failure::new(
                "invalid_input",
                "--jwt-audience and --jwt-issuer are required with a JWT key",
            ));
        };
        UserTokenVerifier::jwt(audience.clone(), issuer.clone())
    } else {
        UserTokenVerifier::dev()
    };
    if let Some(path) = &args.jwt_secret_file {
        let secret = read(path, "JWT secret")?;
        let secret = secret.trim_ascii_end();
        if secret.len() < 32 {
            return Err(Failure::new(
                "invalid_input",
                "the HS256 secret must be at least 32 bytes",
            ));
        }
        verifier = verifier.with_hs256_secret(secret);
    }
    if let Some(path) = &args.jwt_public_key {
        verifier = verifier
            .with_public_key_pem(&read(path, "JWT public key")?)
            .map_err(|e| Failure::new("invalid_input", e))?;
    }
    if args.dev_auth {
        verifier = verifier.with_dev_tokens();
    }
    Ok(verifier)
}

fn config(args: &ServeOptions) -> Result<ServerConfig, Failure> {
    let mut config = ServerConfig::new(args.listen, args.db.clone(), verifier(args)?);
    if let Some(path) = &args.schema {
        config.schema = Schema::load(path).map_err(|e| Failure::new("invalid_input", e))?;
    }
    config.credentials.access = Duration::from_secs(args.access_token_ttl);
    config.credentials.refresh = Duration::from_secs(args.refresh_token_ttl);
    config.limits.max_frame_bytes = args.max_frame_bytes;
    config.limits.max_batch_mutations = args.max_batch;
    config.limits.max_document_bytes = args.max_document_bytes;
    config.limits.device_mutations_per_sec = args.rate_limit;
    config.limits.device_mutation_burst = args.rate_burst;
    config.limits.max_connections_per_device = args.max_connections_per_device.max(1);
    config.limits.max_devices_per_user = args.max_devices_per_user.max(1);
    config.limits.max_clock_skew = Duration::from_millis(args.max_clock_skew_ms);
    config.limits.request_header_timeout = Duration::from_secs(args.request_header_timeout.max(1));
    config.limits.handshake_timeout = Duration::from_secs(args.handshake_timeout);
    config.feed.page_size = args.page_size.max(1);
    config.feed.tombstone_retention = (args.tombstone_retention_days > 0)
        .then(|| Duration::from_secs(args.tombstone_retention_days * 24 * 3600));
    config.durable_commits = args.durable;
    config.coordination.role_lease = Duration::from_millis(args.role_lease_ms.max(100));
    config.push.webhook = args.push_webhook.clone();
    config.push.min_interval = Duration::from_millis(args.push_hint_interval_ms);
    config.cors_origins = args.cors_origins.clone();
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls = Some(TlsIdentity {
            cert_chain_pem: read(cert, "TLS certificate")?,
            key_pem: read(key, "TLS key")?,
        });
    }
    if let Some(url) = &args.postgres {
        let mut options = PostgresOptions::new(url.clone());
        options.schema = args.postgres_schema.clone();
        options.pool_size = args.postgres_pool.max(4);
        config.postgres = Some(options);
    }
    Ok(config)
}

/// Runs the server until interrupted.
pub fn run(args: ServeArgs) -> Result<(), Failure> {
    let config = config(&args.options)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new("internal", e))?;
    runtime.block_on(async move {
        let auth = if config.user_tokens.accepts_dev_tokens() {
            "dev"
        } else {
            "jwt"
        };
        let tls = config.tls.is_some();
        // The connection string may carry a password: print only the schema.
        let database = match &config.postgres {
            Some(options) => format!("postgresql schema {}", options.schema),
            None => config.database.display().to_string(),
        };
        let server = Server::start(config)
            .await
            .map_err(|e| Failure::new("start_failed", e))?;
        let line = serde_json::json!({
            "listening": server.local_addr().to_string(),
            "database": database,
            "auth": auth,
            "tls": tls,
        });
        println!("{line}");
        let stop = server.shutdown_token();
        tokio::spawn(async move {
            stop_signal().await;
            stop.cancel();
        });
        server.wait().await;
        Ok(())
    })
}

/// Resolves on SIGINT or (on Unix) SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
