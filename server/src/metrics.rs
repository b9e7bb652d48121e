//! Counters and gauges, rendered in the Prometheus text format at `/metrics`.
//!
//! Hand-written with atomics: a handful of numbers do not need a metrics
//! framework, and every update is one relaxed atomic operation.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use tandem_protocol::ErrorCode;
use tandem_protocol::wire::Outcome;

const ERROR_CODES: [ErrorCode; 18] = [
    ErrorCode::BadFrame,
    ErrorCode::HelloRequired,
    ErrorCode::UnsupportedProtocol,
    ErrorCode::Unauthorized,
    ErrorCode::Revoked,
    ErrorCode::Forbidden,
    ErrorCode::NotFound,
    ErrorCode::AlreadyExists,
    ErrorCode::InvalidRequest,
    ErrorCode::FrameTooLarge,
    ErrorCode::BatchTooLarge,
    ErrorCode::RateLimited,
    ErrorCode::HandshakeTimeout,
    ErrorCode::SlowConsumer,
    ErrorCode::ShuttingDown,
    ErrorCode::Internal,
    ErrorCode::StaleEpoch,
    ErrorCode::TooManyDevices,
];

fn error_index(code: ErrorCode) -> usize {
    match code {
        ErrorCode::BadFrame => 0,
        ErrorCode::HelloRequired => 1,
        ErrorCode::UnsupportedProtocol => 2,
        ErrorCode::Unauthorized => 3,
        ErrorCode::Revoked => 4,
        ErrorCode::Forbidden => 5,
        ErrorCode::NotFound => 6,
        ErrorCode::AlreadyExists => 7,
        ErrorCode::InvalidRequest => 8,
        ErrorCode::FrameTooLarge => 9,
        ErrorCode::BatchTooLarge => 10,
        ErrorCode::RateLimited => 11,
        ErrorCode::HandshakeTimeout => 12,
        ErrorCode::SlowConsumer => 13,
        ErrorCode::ShuttingDown => 14,
        // The server never sends a code it does not know.
        ErrorCode::Internal | ErrorCode::Other => 15,
        ErrorCode::StaleEpoch => 16,
        ErrorCode::TooManyDevices => 17,
    }
}

/// The server's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    connections: AtomicI64,
    connections_total: AtomicU64,
    pushes: AtomicU64,
    applied: AtomicU64,
    duplicates: AtomicU64,
    conflicts: AtomicU64,
    rejected: AtomicU64,
    changes_sent: AtomicU64,
    fanout_queue_depth: AtomicI64,
    errors: [AtomicU64; 18],
}

impl Metrics {
    /// A WebSocket session started.
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    /// A WebSocket session ended.
    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Open WebSocket sessions.
    pub fn connections(&self) -> i64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// A push was answered with these outcomes.
    pub fn pushed<'a>(&self, outcomes: impl Iterator<Item = &'a Outcome>) {
        self.pushes.fetch_add(1, Ordering::Relaxed);
        for outcome in outcomes {
            let counter = match outcome {
                Outcome::Applied { .. } => &self.applied,
                Outcome::Duplicate { .. } => &self.duplicates,
                Outcome::Conflict { .. } => &self.conflicts,
                Outcome::Rejected { .. } => &self.rejected,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Mutations answered `applied`.
    pub fn mutations_applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// Changes were written to a device.
    pub fn changes_sent(&self, n: usize) {
        self.changes_sent.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Events were queued for connections (negative: taken off queues).
    pub fn fanout_queued(&self, delta: i64) {
        self.fanout_queue_depth.fetch_add(delta, Ordering::Relaxed);
    }

    /// An error was answered (WebSocket `error` or HTTP error body).
    pub fn error(&self, code: ErrorCode) {
        self.errors[error_index(code)].fetch_add(1, Ordering::Relaxed);
    }

    /// Errors answered with `code` so far.
    pub fn errors(&self, code: ErrorCode) -> u64 {
        self.errors[error_index(code)].load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, value: i64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            &mut out,
            "tandem_connections",
            "Open WebSocket sessions.",
            self.connections(),
        );
        counter(
            &mut out,
            "tandem_connections_total",
            "WebSocket sessions opened.",
            load(&self.connections_total),
        );
        counter(
            &mut out,
            "tandem_pushes_total",
            "Push batches answered.",
            load(&self.pushes),
        );
        let _ = writeln!(
            out,
            "# HELP tandem_mutations_total Mutations answered, by outcome.\n# TYPE tandem_mutations_total counter"
        );
        for (outcome, counter) in [
            ("applied", &self.applied),
            ("duplicate", &self.duplicates),
            ("conflict", &self.conflicts),
            ("rejected", &self.rejected),
        ] {
            let _ = writeln!(
                out,
                "tandem_mutations_total{{outcome=\"{outcome}\"}} {}",
                load(counter)
            );
        }
        counter(
            &mut out,
            "tandem_mutations_applied_total",
            "Mutations applied (a new revision was committed, or an older write was absorbed).",
            load(&self.applied),
        );
        counter(
            &mut out,
            "tandem_changes_sent_total",
            "Changes written to devices (catch-up and live).",
            load(&self.changes_sent),
        );
        gauge(
            &mut out,
            "tandem_fanout_queue_depth",
            "Live events queued for connections, not yet taken by them.",
            self.fanout_queue_depth.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP tandem_errors_total Errors answered, by code.\n# TYPE tandem_errors_total counter"
        );
        for code in ERROR_CODES {
            let _ = writeln!(
                out,
                "tandem_errors_total{{code=\"{}\"}} {}",
                code.as_str(),
                self.errors(code)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.connection_opened();
        m.error(ErrorCode::SlowConsumer);
        m.pushed([Outcome::Applied { rev: 1 }].iter());
        let text = m.render();
        assert!(text.contains("tandem_connections 1\n"), "{text}");
        assert!(text.contains("tandem_errors_total{code=\"slow_consumer\"} 1\n"));
        assert!(text.contains("tandem_mutations_total{outcome=\"applied\"} 1\n"));
        assert!(text.contains("tandem_mutations_applied_total 1\n"));
    }
}
