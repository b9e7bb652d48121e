//! The server as a process of its own, for tests that kill it with SIGKILL
//! and start it again on the same database: `tandem serve`'s SQLite setup
//! with development auth, without the CLI crate (a test cannot name another
//! package's binary).
//!
//! `tandem-e2e-server serve --db PATH --dev-auth [--listen ADDR]`
//!
//! Prints `{"listening": "<addr>", ...}` once it accepts connections, as
//! `tandem serve` does, and runs until killed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use tandem_server::auth::UserTokenVerifier;
use tandem_server::{Server, ServerConfig};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut db = None;
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 0));
    if args.next().as_deref() != Some("serve") {
        eprintln!("usage: tandem-e2e-server serve --db PATH --dev-auth [--listen ADDR]");
        return ExitCode::from(2);
    }
    while let Some(arg) = args.next() {
        if arg == "--dev-auth" {
            // The only auth this server speaks.
            continue;
        }
        match (arg.as_str(), args.next()) {
            ("--db", Some(path)) => db = Some(PathBuf::from(path)),
            ("--listen", Some(addr)) => match addr.parse() {
                Ok(addr) => listen = addr,
                Err(e) => {
                    eprintln!("error: --listen {addr}: {e}");
                    return ExitCode::from(2);
                }
            },
            (other, _) => {
                eprintln!("error: unknown option {other}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(db) = db else {
        eprintln!("error: --db is required");
        return ExitCode::from(2);
    };
    let runtime = match tandem_e2e::process_runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let config = ServerConfig::new(listen, db.clone(), UserTokenVerifier::dev());
        let server = match Server::start(config).await {
            Ok(server) => server,
            Err(e) => {
                eprintln!("error: start: {e}");
                return ExitCode::FAILURE;
            }
        };
        let line = serde_json::json!({
            "listening": server.local_addr().to_string(),
            "database": db.display().to_string(),
            "auth": "dev",
        });
        println!("{line}");
        server.wait().await;
        ExitCode::SUCCESS
    })
}
