//! `tandem demo`: an embedded server on a temporary SQLite database and
//! real devices — Alice's phone, tablet and laptop, and Bob's phone — each
//! a `tandem_core::Client` with its own database, syncing over real
//! sockets. The steps are narrated with what was measured:
//!
//! 1. the server starts and the devices sign in and catch up;
//! 2. the laptop writes offline; its outbox drains when it reconnects;
//! 3. the phone and the tablet edit one note while both are offline; the
//!    edits merge field by field;
//! 4. all three of Alice's devices run an auto-responder for a conversation
//!    with Bob: only the `auto-responder` role's holder answers, each answer
//!    guarded and fenced;
//! 5. the holder goes away (its app is killed); another device takes the
//!    role and answers the next message;
//! 6. the old holder comes back and acts under its old epoch: refused.
//!
//! Every claim the narration makes is checked; a broken promise (a missing
//! or a duplicate answer, devices that disagree) ends the demo with an
//! error.

mod responder;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tandem_core::{Client, ClientConfig, DocKey, LocalDocument, Query, StaticToken, SyncConfig};
use tandem_server::auth::UserTokenVerifier;
use tandem_server::{RunningServer, Server, ServerConfig};

use crate::failure::Failure;
use responder::Responder;

/// The role whose holder answers Bob's messages.
const ROLE: &str = "auto-responder";
/// How long any step may take before the demo gives up.
const PATIENCE: Duration = Duration::from_secs(20);

/// Runs the demo.
pub fn run() -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(failure)?;
    runtime.block_on(narrate())
}

fn failure(e: impl std::fmt::Display) -> Failure {
    Failure::new("demo_failed", e)
}

/// A device of the demo: a client with its own database.
struct Device {
    name: &'static str,
    user: &'static str,
    client: Arc<Client>,
}

impl Device {
    fn open(root: &Path, user: &'static str, name: &'static str) -> Result<Device, Failure> {
        let dir = root.join(format!("{user}-{name}"));
        let data_dir = dir
            .to_str()
            .ok_or_else(|| failure("the temporary directory is not UTF-8"))?;
        let client = Client::open(ClientConfig::new(data_dir, user, name)).map_err(failure)?;
        Ok(Device {
            name,
            user,
            client: Arc::new(client),
        })
    }

    /// Starts syncing and waits until caught up.
    async fn connect(&self, url: &str) -> Result<(), Failure> {
        let mut config = SyncConfig::new(url);
        config.platform = "demo".into();
        self.client
            .start_sync(
                config,
                Arc::new(StaticToken::new(format!("dev:{}", self.user))),
            )
            .await
            .map_err(failure)?;
        self.client.sync_once(PATIENCE).await.map_err(failure)?;
        Ok(())
    }

    /// The documents of `collection` in `space` (`None`: personal).
    fn documents(
        &self,
        space: Option<&str>,
        collection: &str,
    ) -> Result<Vec<LocalDocument>, Failure> {
        let mut query = Query::new(collection);
        query.space = space.map(str::to_owned);
        self.client.query(query).map_err(failure)
    }

    fn pending(&self) -> Result<u64, Failure> {
        Ok(self.client.status().map_err(failure)?.pending)
    }
}

/// Polls `check` until it returns a value; returns it and how long it took
/// from `since`.
async fn until<T>(
    what: &str,
    since: Instant,
    mut check: impl FnMut() -> Result<Option<T>, Failure>,
) -> Result<(T, Duration), Failure> {
    loop {
        if let Some(value) = check()? {
            return Ok((value, since.elapsed()));
        }
        if since.elapsed() > PATIENCE {
            return Err(failure(format!(
                "gave up after {PATIENCE:?} waiting for {what}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1_000.0)
}

fn step(number: u32, title: &str) {
    println!("\n{number}. {title}");
}

fn say(line: impl AsRef<str>) {
    println!("   {}", line.as_ref());
}

async fn narrate() -> Result<(), Failure> {
    let demo_started = Instant::now();
    let root = tempfile::TempDir::new().map_err(failure)?;
    println!(
        "Tandem demo: Alice's phone, tablet and laptop, and Bob's phone, on one embedded server."
    );

    step(1, "Server and sign-in");
    let started = Instant::now();
    let server = start_server(root.path()).await?;
    let url = format!("http://{}", server.local_addr());
    say(format!(
        "server listening on {} (SQLite at {}), started in {}",
        server.local_addr(),
        root.path().join("server.db").display(),
        ms(started.elapsed())
    ));
    let phone = Device::open(root.path(), "alice", "phone")?;
    let tablet = Device::open(root.path(), "alice", "tablet")?;
    let laptop = Device::open(root.path(), "alice", "laptop")?;
    let bob = Device::open(root.path(), "bob", "bobs-phone")?;
    let started = Instant::now();
    for device in [&phone, &tablet, &laptop, &bob] {
        device.connect(&url).await?;
    }
    say(format!(
        "four devices registered, connected and caught up in {}",
        ms(started.elapsed())
    ));

    offline_writes(&laptop, &phone).await?;
    concurrent_edit(&phone, &tablet, &laptop).await?;
    let (answers, phone) = coordination(root.path(), &url, phone, &tablet, &laptop, &bob).await?;

    println!(
        "\nDone in {}: {} messages, {} answers, 0 duplicates, 0 missed.",
        ms(demo_started.elapsed()),
        answers,
        answers
    );
    for device in [&phone, &tablet, &laptop, &bob] {
        device.client.close();
    }
    server.shutdown().await;
    Ok(())
}

async fn start_server(root: &Path) -> Result<RunningServer, Failure> {
    let config = ServerConfig::new(
        "127.0.0.1:0".parse().map_err(failure)?,
        root.join("server.db"),
        UserTokenVerifier::dev(),
    );
    Server::start(config).await.map_err(failure)
}

fn note(id: &str) -> DocKey {
    DocKey::personal("notes", id)
}

/// Step 2: writes on an offline laptop wait in its outbox and reach the
/// phone when it reconnects.
async fn offline_writes(laptop: &Device, phone: &Device) -> Result<(), Failure> {
    step(2, "Offline writes");
    laptop.client.set_network_available(false);
    let notes = [
        (
            "shopping",
            json!({"title": "Groceries", "done": false, "color": "white"}),
        ),
        ("trip", json!({"title": "Book the train to Lyon"})),
        ("ideas", json!({"title": "A garden on the balcony"})),
    ];
    for (id, fields) in &notes {
        laptop
            .client
            .put(note(id), &fields.to_string())
            .map_err(failure)?;
    }
    say(format!(
        "the laptop is offline and writes {} notes: committed locally, {} waiting in its outbox",
        notes.len(),
        laptop.pending()?
    ));
    let reconnected = Instant::now();
    laptop.client.set_network_available(true);
    let ((), took) = until("the phone to see the laptop's notes", reconnected, || {
        let seen = phone.documents(None, "notes")?;
        Ok((seen.len() == notes.len() && laptop.pending()? == 0).then_some(()))
    })
    .await?;
    say(format!(
        "the laptop reconnects: its outbox drains and the phone shows all {} notes {} later",
        notes.len(),
        ms(took)
    ));
    Ok(())
}

/// Step 3: the phone and the tablet edit one note while both are offline.
async fn concurrent_edit(phone: &Device, tablet: &Device, laptop: &Device) -> Result<(), Failure> {
    step(3, "A concurrent edit");
    phone.client.set_network_available(false);
    tablet.client.set_network_available(false);
    let phone_edit = json!({"title": "Groceries for Saturday", "color": "blue"});
    let tablet_edit = json!({"done": true, "color": "green"});
    phone
        .client
        .patch(note("shopping"), &phone_edit.to_string())
        .map_err(failure)?;
    // The tablet edits a moment later: its clock orders its "color" after
    // the phone's.
    tokio::time::sleep(Duration::from_millis(5)).await;
    tablet
        .client
        .patch(note("shopping"), &tablet_edit.to_string())
        .map_err(failure)?;
    say(format!("both offline: the phone writes {phone_edit}"));
    say(format!("            the tablet writes {tablet_edit}"));
    let reconnected = Instant::now();
    phone.client.set_network_available(true);
    tablet.client.set_network_available(true);
    let (merged, took) = until("the three devices to agree", reconnected, || {
        let mut views = Vec::new();
        for device in [phone, tablet, laptop] {
            match device.client.get(note("shopping")).map_err(failure)? {
                Some(doc) if !doc.pending => views.push(doc.fields_json),
                _ => return Ok(None),
            }
        }
        let first = views[0].clone();
        Ok(views.iter().all(|v| *v == first).then_some(first))
    })
    .await?;
    let merged: Value = serde_json::from_str(&merged).map_err(failure)?;
    let expected = json!({"title": "Groceries for Saturday", "done": true, "color": "green"});
    if merged != expected {
        return Err(failure(format!("merged to {merged}, expected {expected}")));
    }
    say(format!(
        "back online: phone, tablet and laptop all show {merged} after {}",
        ms(took)
    ));
    say(
        "(field-level last-writer-wins: each field keeps its latest write by hybrid logical clock)",
    );
    Ok(())
}

/// Steps 4 to 6: the auto-responder, a failover and fencing. Returns the
/// number of answered messages and the reopened phone.
async fn coordination(
    root: &Path,
    url: &str,
    phone: Device,
    tablet: &Device,
    laptop: &Device,
    bob: &Device,
) -> Result<(usize, Device), Failure> {
    step(4, "One device answers");
    let conversation = "bob-and-alice";
    bob.client
        .create_space(conversation)
        .await
        .map_err(failure)?;
    bob.client
        .add_member(conversation, "alice")
        .await
        .map_err(failure)?;
    // Preference order for the role: phone, then tablet, then laptop.
    let phone_responder =
        Responder::start(phone.client.clone(), phone.name, conversation, ROLE, 3).await?;
    let held = phone_responder.claimed.clone();
    let mut responders = vec![phone_responder];
    for (device, priority) in [(tablet, 2), (laptop, 1)] {
        responders.push(
            Responder::start(
                device.client.clone(),
                device.name,
                conversation,
                ROLE,
                priority,
            )
            .await?,
        );
    }
    say(format!(
        "Bob shares a conversation with Alice; her three devices run an auto-responder and claim \"{ROLE}\""
    ));
    say(format!(
        "holder: {} (epoch {})",
        held.holder_name.as_deref().unwrap_or("none"),
        held.epoch
    ));
    let first = ask(bob, conversation, "m1", "Are you coming tonight?").await?;
    say(format!(
        "Bob writes \"Are you coming tonight?\": the {} answers, {} from Bob's write to Bob seeing the answer",
        first.by,
        ms(first.took)
    ));
    say(format!(
        "answers to it on Bob's device after a pause and a sync: {} (the tablet and the laptop stayed silent)",
        first.count
    ));

    step(5, "The holder goes away");
    let killed = Instant::now();
    let old_fence = phone
        .client
        .current_fence(ROLE)
        .ok_or_else(|| failure("the phone does not hold the role"))?;
    // As when the OS kills the app: no release, the connection just drops.
    responders[0].stop();
    phone.client.close();
    let (successor, took) = until("another device to take the role", killed, || {
        Ok(tablet
            .client
            .role(ROLE)
            .filter(|r| r.epoch > old_fence.epoch && r.holder.is_some()))
    })
    .await?;
    say(format!(
        "the phone's app is killed (its connection drops, no release); the {} holds the role at epoch {} {} later",
        successor.holder_name.as_deref().unwrap_or("?"),
        successor.epoch,
        ms(took)
    ));
    let second = ask(bob, conversation, "m2", "Shall I bring dessert?").await?;
    say(format!(
        "Bob writes \"Shall I bring dessert?\": the {} answers in {}; answers to it: {}",
        second.by,
        ms(second.took),
        second.count
    ));

    step(6, "Fencing");
    let phone = Device::open(root, "alice", "phone")?;
    phone.connect(url).await?;
    let refused = phone
        .client
        .guard_fenced("answer:bob-and-alice", "m3", None, old_fence.clone())
        .await;
    match refused {
        Err(tandem_core::Error::StaleEpoch { .. }) => say(format!(
            "the phone comes back and acts under its old epoch {}: refused (stale_epoch), nothing recorded",
            old_fence.epoch
        )),
        other => return Err(failure(format!("the old epoch was not refused: {other:?}"))),
    }
    for responder in &responders {
        responder.stop();
    }
    verify_answers(bob, conversation, 2).await?;
    Ok((2, phone))
}

/// What became of one message of Bob's.
struct Answered {
    /// The device that answered.
    by: String,
    /// From Bob's write to Bob's device seeing the answer.
    took: Duration,
    /// How many answers the message has once things settle.
    count: usize,
}

/// Bob writes a message and waits for its answer; then, after a pause in
/// which a duplicate would have arrived, counts the answers.
async fn ask(bob: &Device, space: &str, id: &str, text: &str) -> Result<Answered, Failure> {
    let written = Instant::now();
    bob.client
        .put(
            DocKey::in_space(space, "messages", id),
            &json!({"text": text}).to_string(),
        )
        .map_err(failure)?;
    let (by, took) = until("an answer", written, || {
        Ok(answers_by_message(bob, space)?
            .remove(id)
            .and_then(|by| by.into_iter().next()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    bob.client.sync_once(PATIENCE).await.map_err(failure)?;
    let count = answers_by_message(bob, space)?
        .remove(id)
        .map_or(0, |by| by.len());
    if count != 1 {
        return Err(failure(format!("message {id} has {count} answers")));
    }
    Ok(Answered { by, took, count })
}

/// The devices that answered each message, as Bob's device sees them.
fn answers_by_message(bob: &Device, space: &str) -> Result<BTreeMap<String, Vec<String>>, Failure> {
    let mut answers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for answer in bob.documents(Some(space), "answers")? {
        let fields = answer.fields().map_err(failure)?;
        let text = |name: &str| fields.get(name).and_then(Value::as_str).map(str::to_owned);
        if let (Some(to), Some(by)) = (text("reply_to"), text("by")) {
            answers.entry(to).or_default().push(by);
        }
    }
    Ok(answers)
}

/// Every message of the conversation has exactly one answer.
async fn verify_answers(bob: &Device, space: &str, messages: usize) -> Result<(), Failure> {
    bob.client.sync_once(PATIENCE).await.map_err(failure)?;
    let answers = answers_by_message(bob, space)?;
    let answered = answers.values().filter(|by| by.len() == 1).count();
    if answered != messages || answers.len() != messages {
        return Err(failure(format!(
            "expected one answer to each of {messages} messages, got {answers:?}"
        )));
    }
    Ok(())
}
