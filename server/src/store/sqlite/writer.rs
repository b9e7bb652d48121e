//! The single writer thread and its group commit.
//!
//! SQLite allows one writer at a time, so every write goes to one dedicated
//! thread through a queue. The thread takes the first queued job, then every
//! other job already waiting (up to [`MAX_GROUP`]), and runs them all in one
//! transaction, each inside its own savepoint so that one job's failure rolls
//! back only that job. One commit then makes a whole group durable: the cost
//! of a commit is shared by every batch that arrived while the previous one
//! was being written.
//!
//! After the commit the thread first answers every job, then hands the
//! group's events to the commit listener. Answering first means that a
//! device's `ack` is ready before the live changes of its own mutations reach
//! its connection, which sends them in that order. A job is only answered
//! `Ok` once its data is committed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::oneshot;
use tracing::error;

use crate::store::{CommitListener, StoreError, StoreEvent};

/// Most jobs committed together.
pub const MAX_GROUP: usize = 512;

/// What a job sees while it runs: the group's transaction and the list of
/// events the group will announce.
pub struct WriteCtx<'t> {
    /// The group's transaction.
    pub tx: &'t Transaction<'t>,
    /// Events to announce after the commit.
    pub events: Vec<StoreEvent>,
}

/// A unit of work for the writer thread.
pub trait WriteJob: Send {
    /// Runs inside the group's transaction; `false` rolls back this job's
    /// savepoint (its result is an error).
    fn run(&mut self, ctx: &mut WriteCtx<'_>) -> bool;
    /// Delivers the result once the group committed (`true`) or failed.
    fn finish(self: Box<Self>, committed: bool);
}

/// A job made of a closure; its result goes back through a oneshot channel.
pub struct FnJob<T, F> {
    work: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> FnJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&mut WriteCtx<'_>) -> Result<T, StoreError> + Send + 'static,
{
    /// A job running `work`, and the receiver of its result.
    pub fn boxed(work: F) -> (Box<dyn WriteJob>, oneshot::Receiver<Result<T, StoreError>>) {
        let (reply, rx) = oneshot::channel();
        let job = FnJob {
            work: Some(work),
            result: None,
            reply,
        };
        (Box::new(job), rx)
    }
}

impl<T, F> WriteJob for FnJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&mut WriteCtx<'_>) -> Result<T, StoreError> + Send + 'static,
{
    fn run(&mut self, ctx: &mut WriteCtx<'_>) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let result = work(ctx);
        let keep = result.is_ok();
        self.result = Some(result);
        keep
    }

    fn finish(self: Box<Self>, committed: bool) {
        let result = match self.result {
            Some(Err(e)) => Err(e),
            Some(Ok(value)) if committed => Ok(value),
            _ => Err(StoreError::Backend("the transaction did not commit".into())),
        };
        // The caller may have gone away (a closed connection); the write
        // stands either way.
        let _ = self.reply.send(result);
    }
}

/// Runs the writer loop until every sender is dropped.
pub fn run(
    mut conn: Connection,
    jobs: Receiver<Box<dyn WriteJob>>,
    listener: Arc<dyn CommitListener>,
) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let (committed, events) = match commit_group(&mut conn, &mut group) {
            Ok(events) => (true, events),
            Err(e) => {
                error!(error = %e, jobs = group.len(), "a write transaction failed");
                (false, Vec::new())
            }
        };
        for job in group {
            job.finish(committed);
        }
        if !events.is_empty() {
            listener.committed(events);
        }
    }
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        error!(error = %e, "final checkpoint failed");
    }
}

fn commit_group(
    conn: &mut Connection,
    group: &mut [Box<dyn WriteJob>],
) -> rusqlite::Result<Vec<StoreEvent>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut ctx = WriteCtx {
        tx: &tx,
        events: Vec::new(),
    };
    for job in group.iter_mut() {
        ctx.tx.execute_batch("SAVEPOINT job")?;
        let mark = ctx.events.len();
        if job.run(&mut ctx) {
            ctx.tx.execute_batch("RELEASE job")?;
        } else {
            ctx.tx.execute_batch("ROLLBACK TO job; RELEASE job")?;
            ctx.events.truncate(mark);
        }
    }
    let events = std::mem::take(&mut ctx.events);
    tx.commit()?;
    Ok(coalesce(events))
}

/// Merges the changes of one space committed together into one event (one
/// `changes` message per space and commit), without moving any change across
/// a membership or revocation event.
fn coalesce(events: Vec<StoreEvent>) -> Vec<StoreEvent> {
    let mut out: Vec<StoreEvent> = Vec::with_capacity(events.len());
    let mut open: HashMap<tandem_protocol::SpaceId, usize> = HashMap::new();
    for event in events {
        match event {
            StoreEvent::Changes(batch) => {
                let batch = Arc::unwrap_or_clone(batch);
                if let Some(&i) = open.get(&batch.space)
                    && let Some(StoreEvent::Changes(existing)) = out.get_mut(i)
                {
                    let existing = Arc::make_mut(existing);
                    existing.changes.extend(batch.changes);
                    existing.checksum = batch.checksum;
                    continue;
                }
                open.insert(batch.space.clone(), out.len());
                out.push(StoreEvent::Changes(Arc::new(batch)));
            }
            other => {
                open.clear();
                out.push(other);
            }
        }
    }
    out
}

type JobSender = Sender<Box<dyn WriteJob>>;

/// Sends jobs to the writer thread.
#[derive(Clone)]
pub struct WriterHandle {
    sender: Arc<std::sync::Mutex<Option<JobSender>>>,
}

impl WriterHandle {
    /// A handle over `sender`.
    pub fn new(sender: Sender<Box<dyn WriteJob>>) -> WriterHandle {
        WriterHandle {
            sender: Arc::new(std::sync::Mutex::new(Some(sender))),
        }
    }

    /// Runs `work` in the next group and waits for its committed result.
    pub async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (job, rx) = FnJob::boxed(work);
        self.submit(job)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn submit(&self, job: Box<dyn WriteJob>) -> Result<(), StoreError> {
        let guard = self
            .sender
            .lock()
            .map_err(|_| StoreError::Backend("writer lock poisoned".into()))?;
        match guard.as_ref() {
            Some(sender) => sender.send(job).map_err(|_| StoreError::Closed),
            None => Err(StoreError::Closed),
        }
    }

    /// Stops accepting jobs; the thread finishes the queued ones and exits.
    pub fn close(&self) {
        if let Ok(mut guard) = self.sender.lock() {
            guard.take();
        }
    }
}

/// Converts a SQLite error into a store error.
pub fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CommittedChanges;
    use tandem_protocol::{SpaceChecksum, SpaceId};

    fn changes(space: &str, revs: &[u64]) -> StoreEvent {
        StoreEvent::Changes(Arc::new(CommittedChanges {
            space: SpaceId::new(space).unwrap(),
            changes: revs
                .iter()
                .map(|&rev| tandem_protocol::Change {
                    space: SpaceId::new(space).unwrap(),
                    rev,
                    collection: tandem_protocol::Collection::new("c").unwrap(),
                    doc_id: tandem_protocol::DocId::new(format!("d{rev}")).unwrap(),
                    state: Default::default(),
                    deleted: false,
                    origin: None,
                    mutation_id: None,
                })
                .collect(),
            checksum: SpaceChecksum(revs.last().copied().unwrap_or(0)),
        }))
    }

    #[test]
    fn coalescing_keeps_order_across_membership_events() {
        let revoke = StoreEvent::DeviceRevoked(crate::store::DeviceIdentity {
            user: tandem_protocol::UserId::new("u").unwrap(),
            device: tandem_protocol::DeviceId::new("d").unwrap(),
        });
        let out = coalesce(vec![
            changes("a", &[1]),
            changes("b", &[1]),
            changes("a", &[2, 3]),
            revoke.clone(),
            changes("a", &[4]),
        ]);
        assert_eq!(out.len(), 4);
        let StoreEvent::Changes(first) = &out[0] else {
            panic!()
        };
        assert_eq!(
            first.changes.iter().map(|c| c.rev).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(first.checksum, SpaceChecksum(3));
        assert_eq!(out[2], revoke);
    }
}
