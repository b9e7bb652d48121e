//! Pushes with group commit.
//!
//! Pushes queue for the instance's writer tasks. A writer takes every push
//! waiting (up to a number of mutations) and applies them in one transaction
//! with a fixed number of statements whatever the group's size:
//!
//! 1. lock the rows of every space the group writes to, in name order
//!    (`SELECT ... ORDER BY space FOR UPDATE`), and, pipelined behind it,
//!    read the idempotency records, the memberships and the current
//!    documents concerned — after the locks, so they include everything
//!    committed by the previous writer of each space, on any instance;
//! 2. decide every mutation in memory, in order ([`apply::decide`]), handing
//!    out revisions from the locked heads;
//! 3. write the heads, the documents and the records with one statement
//!    each (`unnest` arrays), then `NOTIFY` and commit.
//!
//! One commit, so one WAL flush, makes the whole group durable; that flush
//! is most of a small transaction's cost. Several writers overlap one
//! group's flush with the next group's statements; groups touching the same
//! space take turns on its row lock.
//!
//! The record insert is the arbiter between instances: if another instance
//! recorded one of the group's mutation ids first (possible only when the
//! same id is pushed into different spaces at once, since the space lock
//! orders everything else), fewer rows are inserted than decided, and the
//! group is rolled back and run again, which then answers that mutation from
//! the record. A group that fails for any other reason is split, each push
//! run alone, so one push cannot fail the others.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tandem_protocol::wire::{MutationResult, Outcome};
use tandem_protocol::{Change, Collection, DocId, DocState, Document, Mutation, SpaceChecksum};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tracing::{error, warn};
use uuid::Uuid;

use super::announce::Committed;
use super::reads::{int, uint};
use super::{ATTEMPTS, Inner, TxError, pool_error};
use crate::apply::{self, Decision};
use crate::store::{CommittedChanges, DeviceIdentity, StoreError, StoreEvent};

type Reply = oneshot::Sender<Result<Vec<MutationResult>, StoreError>>;

/// One push waiting for a writer.
pub(crate) struct PushJob {
    author: DeviceIdentity,
    mutations: Vec<Mutation>,
    now_ms: u64,
    reply: Reply,
}

/// The queue of pushes shared by the writer tasks.
pub(crate) struct PushQueue {
    sender: std::sync::Mutex<Option<mpsc::UnboundedSender<PushJob>>>,
    receiver: tokio::sync::Mutex<mpsc::UnboundedReceiver<PushJob>>,
    max_group_mutations: usize,
}

impl PushQueue {
    /// An open queue.
    pub fn new(max_group_mutations: usize) -> PushQueue {
        let (sender, receiver) = mpsc::unbounded_channel();
        PushQueue {
            sender: std::sync::Mutex::new(Some(sender)),
            receiver: tokio::sync::Mutex::new(receiver),
            max_group_mutations,
        }
    }

    /// Queues a push and waits for its committed results.
    pub async fn submit(
        &self,
        author: DeviceIdentity,
        mutations: Vec<Mutation>,
        now_ms: u64,
    ) -> Result<Vec<MutationResult>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = PushJob {
            author,
            mutations,
            now_ms,
            reply,
        };
        {
            let sender = self
                .sender
                .lock()
                .map_err(|_| StoreError::Backend("push queue lock poisoned".into()))?;
            match sender.as_ref() {
                Some(sender) => sender.send(job).map_err(|_| StoreError::Closed)?,
                None => return Err(StoreError::Closed),
            }
        }
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Stops accepting pushes; the writers finish the queued ones and stop.
    pub fn close(&self) {
        if let Ok(mut sender) = self.sender.lock() {
            sender.take();
        }
    }

    /// The next group: the first push waiting, and every other one waiting
    /// up to the mutation limit. `None` once the queue is closed and empty.
    async fn next_group(&self) -> Option<Vec<PushJob>> {
        let mut receiver = self.receiver.lock().await;
        let first = receiver.recv().await?;
        let mut size = first.mutations.len();
        let mut group = vec![first];
        while size < self.max_group_mutations {
            match receiver.try_recv() {
                Ok(job) => {
                    size += job.mutations.len();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        Some(group)
    }
}

/// A writer task: applies groups until the queue is closed and empty.
pub(crate) async fn run_writer(inner: Arc<Inner>) {
    while let Some(group) = inner.pushes.next_group().await {
        apply_group(&inner, group).await;
    }
}

async fn apply_group(inner: &Inner, group: Vec<PushJob>) {
    match commit_with_retries(inner, &group).await {
        Ok((results, committed)) => {
            for (job, results) in group.into_iter().zip(results) {
                // The caller may have gone away (a closed connection); the
                // write stands either way.
                let _ = job.reply.send(Ok(results));
            }
            committed.ready();
        }
        Err(e) if group.len() > 1 => {
            warn!(error = %e, pushes = group.len(), "a group of pushes failed; applying them one by one");
            for job in group {
                Box::pin(apply_group(inner, vec![job])).await;
            }
        }
        Err(e) => {
            error!(error = %e, "a push failed");
            for job in group {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}

async fn commit_with_retries(
    inner: &Inner,
    group: &[PushJob],
) -> Result<(Vec<Vec<MutationResult>>, Committed), StoreError> {
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5 << attempt)).await;
        }
        match commit_group(inner, group).await {
            Ok(done) => return Ok(done),
            Err(TxError::Retry(why)) => last = why,
            Err(TxError::Fail(e)) => return Err(e),
        }
    }
    Err(StoreError::Backend(format!(
        "gave up after {ATTEMPTS} attempts: {last}"
    )))
}

type DocKey = (String, String, String);

/// A document row to write.
struct DocRow {
    space: String,
    collection: String,
    doc_id: String,
    version: i64,
    checksum: i64,
    state: String,
    deleted: bool,
    origin: String,
    mutation_id: Uuid,
    updated_at: i64,
}

/// An idempotency record to write.
struct Record {
    mutation_id: Uuid,
    user: String,
    device: String,
    outcome: String,
    created_at: i64,
}

/// What the group's reads found, updated as mutations are decided.
struct GroupState {
    heads: HashMap<String, (u64, SpaceChecksum)>,
    records: HashMap<Uuid, (String, String, Outcome)>,
    members: HashSet<(String, String)>,
    documents: HashMap<DocKey, Document>,
    doc_rows: Vec<DocRow>,
    doc_index: HashMap<DocKey, usize>,
    new_records: Vec<Record>,
    events: Vec<StoreEvent>,
    /// The roles the group's fences name, read `FOR SHARE`, and the
    /// database's clock after reading them.
    fences: (
        std::collections::BTreeMap<(String, String), crate::roles::RoleRow>,
        u64,
    ),
}

async fn commit_group(
    inner: &Inner,
    group: &[PushJob],
) -> Result<(Vec<Vec<MutationResult>>, Committed), TxError> {
    let mut client = inner.pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await?;

    let mut spaces: Vec<&str> = Vec::new();
    let mut users: Vec<&str> = Vec::new();
    let mut ids: Vec<Uuid> = Vec::new();
    let (mut key_spaces, mut key_collections, mut key_docs) = (Vec::new(), Vec::new(), Vec::new());
    for job in group {
        users.push(job.author.user.as_str());
        for m in &job.mutations {
            spaces.push(m.space.as_str());
            ids.push(*m.mutation_id.as_uuid());
            key_spaces.push(m.space.as_str());
            key_collections.push(m.collection.as_str());
            key_docs.push(m.doc_id.as_str());
        }
    }
    spaces.sort_unstable();
    spaces.dedup();
    users.sort_unstable();
    users.dedup();

    let lock = tx
        .prepare_cached(
            "SELECT space, head, checksum FROM spaces
             WHERE space = ANY($1) ORDER BY space FOR UPDATE",
        )
        .await?;
    let records = tx
        .prepare_cached(
            "SELECT mutation_id, user_id, device_id, outcome FROM mutations
             WHERE mutation_id = ANY($1)",
        )
        .await?;
    let members = tx
        .prepare_cached(
            "SELECT space, user_id FROM members WHERE space = ANY($1) AND user_id = ANY($2)",
        )
        .await?;
    let documents = tx
        .prepare_cached(
            "SELECT d.space, d.collection, d.doc_id, d.version, d.state
             FROM unnest($1::text[], $2::text[], $3::text[]) AS k(space, collection, doc_id)
             JOIN documents d USING (space, collection, doc_id)",
        )
        .await?;
    // Pipelined: PostgreSQL runs them in order, so the reads wait for the
    // locks and then see what the previous holders committed.
    let lock_params: [&(dyn ToSql + Sync); 1] = [&spaces];
    let record_params: [&(dyn ToSql + Sync); 1] = [&ids];
    let member_params: [&(dyn ToSql + Sync); 2] = [&spaces, &users];
    let document_params: [&(dyn ToSql + Sync); 3] = [&key_spaces, &key_collections, &key_docs];
    let (locked, recorded, memberships, current) = futures::try_join!(
        tx.query(&lock, &lock_params),
        tx.query(&records, &record_params),
        tx.query(&members, &member_params),
        tx.query(&documents, &document_params),
    )?;

    // Fenced mutations: their roles, read after the space locks and held
    // (FOR SHARE) until the commit, so no change of holder lands between
    // the check and the commit.
    let mut fence_keys: Vec<(String, String)> = group
        .iter()
        .flat_map(|job| {
            job.mutations.iter().filter_map(|m| {
                m.fence
                    .as_ref()
                    .map(|f| (job.author.user.to_string(), f.role.clone()))
            })
        })
        .collect();
    fence_keys.sort();
    fence_keys.dedup();
    let fences = if fence_keys.is_empty() {
        (std::collections::BTreeMap::new(), 0)
    } else {
        super::coordination::fenced_roles(&tx, &fence_keys).await?
    };

    let mut state = GroupState {
        fences,
        heads: HashMap::new(),
        records: HashMap::new(),
        members: HashSet::new(),
        documents: HashMap::new(),
        doc_rows: Vec::new(),
        doc_index: HashMap::new(),
        new_records: Vec::new(),
        events: Vec::new(),
    };
    for row in locked {
        let space: String = row.get(0);
        let head: i64 = row.get(1);
        let checksum: i64 = row.get(2);
        state
            .heads
            .insert(space, (uint(head), SpaceChecksum(checksum as u64)));
    }
    for row in recorded {
        let outcome: String = row.get(3);
        let outcome: Outcome = serde_json::from_str(&outcome)
            .map_err(|e| StoreError::Backend(format!("a recorded outcome is unreadable: {e}")))?;
        state
            .records
            .insert(row.get(0), (row.get(1), row.get(2), outcome));
    }
    for row in memberships {
        state.members.insert((row.get(0), row.get(1)));
    }
    for row in current {
        let space: String = row.get(0);
        let collection: String = row.get(1);
        let doc_id: String = row.get(2);
        let version: i64 = row.get(3);
        let text: String = row.get(4);
        let doc_state: DocState = serde_json::from_str(&text)
            .map_err(|e| StoreError::Backend(format!("a stored document is unreadable: {e}")))?;
        let document = Document {
            space: super::reads::space(space.clone())?,
            collection: Collection::new(collection.clone())
                .map_err(|e| super::reads::corrupt("collection", e))?,
            id: DocId::new(doc_id.clone()).map_err(|e| super::reads::corrupt("document id", e))?,
            version: Some(uint(version)),
            state: doc_state,
        };
        state
            .documents
            .insert((space, collection, doc_id), document);
    }

    let mut results = Vec::with_capacity(group.len());
    for job in group {
        let mut job_results = Vec::with_capacity(job.mutations.len());
        for m in &job.mutations {
            let outcome = decide_one(&mut state, inner, job, m)?;
            job_results.push(MutationResult {
                mutation_id: m.mutation_id,
                outcome,
            });
        }
        results.push(job_results);
    }

    write_group(&tx, &state).await?;
    let GroupState { events, .. } = state;
    let committed = inner.announcer.commit(tx, events).await?;
    Ok((results, committed))
}

/// Decides one mutation against the group's state and records the outcome.
fn decide_one(
    state: &mut GroupState,
    inner: &Inner,
    job: &PushJob,
    m: &Mutation,
) -> Result<Outcome, TxError> {
    let author = &job.author;
    let id = *m.mutation_id.as_uuid();
    if let Some((user, device, recorded)) = state.records.get(&id) {
        if user == author.user.as_str() && device == author.device.as_str() {
            return Ok(apply::as_retry(recorded.clone()));
        }
        return Ok(apply::foreign_mutation_id(m));
    }
    if let Err(outcome) = apply::check_claims(author, m, &inner.rules, job.now_ms) {
        return Ok(outcome);
    }
    let member = state
        .members
        .contains(&(m.space.as_str().to_owned(), author.user.as_str().to_owned()));
    let fence_holds = |fence: &tandem_protocol::RoleFence| {
        state
            .fences
            .0
            .get(&(author.user.to_string(), fence.role.clone()))
            .is_some_and(|row| row.admits(&author.device, fence, state.fences.1))
    };
    let outcome = if !member {
        apply::not_a_member(m)
    } else if let Some(fence) = &m.fence
        && !fence_holds(fence)
    {
        apply::stale_fence(fence)
    } else {
        let key: DocKey = (
            m.space.to_string(),
            m.collection.to_string(),
            m.doc_id.to_string(),
        );
        let current = state.documents.get(&key);
        match apply::decide(current, m, &inner.rules) {
            Decision::Answer(outcome) => outcome,
            Decision::Write(doc_state) => {
                let rev = write_document(state, job, m, key, doc_state)?;
                Outcome::Applied { rev }
            }
        }
    };
    let text = serde_json::to_string(&outcome).map_err(|e| StoreError::Backend(e.to_string()))?;
    state.new_records.push(Record {
        mutation_id: id,
        user: author.user.to_string(),
        device: author.device.to_string(),
        outcome: text,
        created_at: int(job.now_ms),
    });
    state.records.insert(
        id,
        (
            author.user.to_string(),
            author.device.to_string(),
            outcome.clone(),
        ),
    );
    Ok(outcome)
}

/// Gives the change the space's next revision and updates the head,
/// checksum, document and events; returns the revision.
fn write_document(
    state: &mut GroupState,
    job: &PushJob,
    m: &Mutation,
    key: DocKey,
    doc_state: DocState,
) -> Result<u64, TxError> {
    let Some((head, sum)) = state.heads.get_mut(m.space.as_str()) else {
        return Err(StoreError::Backend(format!("space {} has no row", m.space)).into());
    };
    let rev = *head + 1;
    if let Some(old) = state.documents.get(&key)
        && !old.is_deleted()
    {
        sum.remove(
            m.collection.as_str(),
            m.doc_id.as_str(),
            old.version.unwrap_or(0),
        );
    }
    let deleted = doc_state.is_deleted();
    if !deleted {
        sum.add(m.collection.as_str(), m.doc_id.as_str(), rev);
    }
    *head = rev;
    let checksum = *sum;
    let text = serde_json::to_string(&doc_state).map_err(|e| StoreError::Backend(e.to_string()))?;
    let row = DocRow {
        space: key.0.clone(),
        collection: key.1.clone(),
        doc_id: key.2.clone(),
        version: int(rev),
        checksum: checksum.0 as i64,
        state: text,
        deleted,
        origin: job.author.device.to_string(),
        mutation_id: *m.mutation_id.as_uuid(),
        updated_at: int(job.now_ms),
    };
    // One row per document: a document written twice in a group is
    // written once, in its last state.
    match state.doc_index.get(&key) {
        Some(&i) => state.doc_rows[i] = row,
        None => {
            state.doc_index.insert(key.clone(), state.doc_rows.len());
            state.doc_rows.push(row);
        }
    }
    state.documents.insert(
        key,
        Document {
            space: m.space.clone(),
            collection: m.collection.clone(),
            id: m.doc_id.clone(),
            version: Some(rev),
            state: doc_state.clone(),
        },
    );
    state
        .events
        .push(StoreEvent::Changes(Arc::new(CommittedChanges {
            space: m.space.clone(),
            changes: vec![Change {
                space: m.space.clone(),
                rev,
                collection: m.collection.clone(),
                doc_id: m.doc_id.clone(),
                state: doc_state,
                deleted,
                origin: Some(job.author.device.clone()),
                mutation_id: Some(m.mutation_id),
            }],
            checksum,
        })));
    Ok(rev)
}

/// Writes the group's heads, documents and records, one statement each.
async fn write_group(
    tx: &deadpool_postgres::Transaction<'_>,
    state: &GroupState,
) -> Result<(), TxError> {
    let heads = tx
        .prepare_cached(
            "UPDATE spaces s SET head = u.head, checksum = u.checksum, changed_at = now()
             FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(space, head, checksum)
             WHERE s.space = u.space AND u.head > s.head",
        )
        .await?;
    let documents = tx
        .prepare_cached(
            "INSERT INTO documents
                 (space, collection, doc_id, version, checksum, state, deleted, origin,
                  mutation_id, updated_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[],
                                  $5::bigint[], $6::text[], $7::bool[], $8::text[],
                                  $9::uuid[], $10::bigint[])
             ON CONFLICT (space, collection, doc_id) DO UPDATE SET
                 version = excluded.version, checksum = excluded.checksum,
                 state = excluded.state, deleted = excluded.deleted,
                 origin = excluded.origin, mutation_id = excluded.mutation_id,
                 updated_at = excluded.updated_at",
        )
        .await?;
    let records = tx
        .prepare_cached(
            "INSERT INTO mutations (mutation_id, user_id, device_id, outcome, created_at)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bigint[])
             ON CONFLICT (mutation_id) DO NOTHING",
        )
        .await?;

    let mut head_spaces = Vec::new();
    let mut head_revs = Vec::new();
    let mut head_sums = Vec::new();
    for (space, (head, sum)) in &state.heads {
        head_spaces.push(space.as_str());
        head_revs.push(int(*head));
        head_sums.push(sum.0 as i64);
    }
    let rows = &state.doc_rows;
    let d_space: Vec<&str> = rows.iter().map(|r| r.space.as_str()).collect();
    let d_collection: Vec<&str> = rows.iter().map(|r| r.collection.as_str()).collect();
    let d_id: Vec<&str> = rows.iter().map(|r| r.doc_id.as_str()).collect();
    let d_version: Vec<i64> = rows.iter().map(|r| r.version).collect();
    let d_checksum: Vec<i64> = rows.iter().map(|r| r.checksum).collect();
    let d_state: Vec<&str> = rows.iter().map(|r| r.state.as_str()).collect();
    let d_deleted: Vec<bool> = rows.iter().map(|r| r.deleted).collect();
    let d_origin: Vec<&str> = rows.iter().map(|r| r.origin.as_str()).collect();
    let d_mutation: Vec<Uuid> = rows.iter().map(|r| r.mutation_id).collect();
    let d_updated: Vec<i64> = rows.iter().map(|r| r.updated_at).collect();
    let recs = &state.new_records;
    let r_id: Vec<Uuid> = recs.iter().map(|r| r.mutation_id).collect();
    let r_user: Vec<&str> = recs.iter().map(|r| r.user.as_str()).collect();
    let r_device: Vec<&str> = recs.iter().map(|r| r.device.as_str()).collect();
    let r_outcome: Vec<&str> = recs.iter().map(|r| r.outcome.as_str()).collect();
    let r_created: Vec<i64> = recs.iter().map(|r| r.created_at).collect();

    let head_params: [&(dyn ToSql + Sync); 3] = [&head_spaces, &head_revs, &head_sums];
    let document_params: [&(dyn ToSql + Sync); 10] = [
        &d_space,
        &d_collection,
        &d_id,
        &d_version,
        &d_checksum,
        &d_state,
        &d_deleted,
        &d_origin,
        &d_mutation,
        &d_updated,
    ];
    let record_params: [&(dyn ToSql + Sync); 5] =
        [&r_id, &r_user, &r_device, &r_outcome, &r_created];
    let (_, _, inserted) = futures::try_join!(
        tx.execute(&heads, &head_params),
        tx.execute(&documents, &document_params),
        tx.execute(&records, &record_params),
    )?;
    if inserted != recs.len() as u64 {
        // Another instance recorded one of these mutation ids first: run
        // the group again to answer from its record.
        return Err(TxError::Retry(
            "a mutation id was recorded concurrently".into(),
        ));
    }
    Ok(())
}
