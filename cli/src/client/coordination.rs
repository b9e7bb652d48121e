//! The coordination commands: devices, roles, the duplicate guard.
//!
//! Devices are named by their names (the `--device` a CLI device was
//! created with) in arguments and output; a name is resolved to a device id
//! through the registry (an id is accepted too).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tandem_core::{Client, ConnectionState, DeviceInfo, RoleInfo, RoleObserver};
use tokio::sync::mpsc;

use super::online::{RELEASE_GRACE, StopSignals};
use super::settle::{SyncEnd, Target, bounded_sync, warn_newly_failed};
use super::{ClientCommand, core_failure, print_json, write_json};
use crate::failure::{EXIT_NOT_FOUND, Failure};

/// A role line: `{"role", "holder", "epoch", "is_self"}`; the holder by
/// name.
#[derive(Serialize, PartialEq, Eq, Clone)]
struct RoleLine {
    role: String,
    holder: Option<String>,
    epoch: u64,
    is_self: bool,
}

impl RoleLine {
    fn of(info: &RoleInfo) -> RoleLine {
        RoleLine {
            role: info.role.clone(),
            holder: info.holder_name.clone().or_else(|| info.holder.clone()),
            epoch: info.epoch,
            is_self: info.is_self,
        }
    }
}

/// A device line.
#[derive(Serialize)]
struct DeviceLine<'a> {
    name: &'a str,
    device_id: &'a str,
    platform: &'a str,
    online: bool,
    last_seen: Option<u64>,
    is_self: bool,
}

/// Runs a coordination command (syncing is started; `stop` is given for
/// `claim`).
pub async fn run(
    client: &Client,
    target: &Target,
    command: &ClientCommand,
    timeout: Duration,
    stop: Option<&mut StopSignals>,
) -> Result<(), Failure> {
    if let (ClientCommand::Claim { role, priority }, Some(stop)) = (command, stop) {
        return claim(client, target, role, *priority, timeout, stop).await;
    }
    connect(client, target, timeout).await?;
    match command {
        ClientCommand::Devices => print_devices(&client.devices().await.map_err(core_failure)?),
        ClientCommand::Rename { device, name } => {
            let id = resolve(client, device).await?;
            let devices = client
                .rename_device(&id, name)
                .await
                .map_err(core_failure)?;
            print_devices(&devices)
        }
        ClientCommand::Revoke { device } => {
            let id = resolve(client, device).await?;
            let devices = client.revoke_device(&id).await.map_err(core_failure)?;
            print_devices(&devices)
        }
        ClientCommand::Role { role } => {
            let line = match client.role(role) {
                Some(info) => RoleLine::of(&info),
                None => RoleLine {
                    role: role.clone(),
                    holder: None,
                    epoch: 0,
                    is_self: false,
                },
            };
            print_json(&line)
        }
        ClientCommand::Release { role } => {
            let info = client.release_role(role).await.map_err(core_failure)?;
            print_json(&RoleLine::of(&info))
        }
        ClientCommand::Handoff { role, device } => {
            let id = resolve(client, device).await?;
            let info = client.handoff_role(role, &id).await.map_err(core_failure)?;
            print_json(&RoleLine::of(&info))
        }
        ClientCommand::Guard {
            scope,
            content,
            window_ms,
        } => {
            let outcome = client
                .guard(scope, content, *window_ms)
                .await
                .map_err(core_failure)?;
            println!("{}", outcome.as_str());
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Connected and caught up, so that the roles and devices are known; fails
/// (exit 4) when the server cannot be used. A sync that only times out
/// lets the command try anyway.
async fn connect(client: &Client, target: &Target, timeout: Duration) -> Result<(), Failure> {
    let end = bounded_sync(client, target, timeout).await?;
    warn_newly_failed(client, target, None);
    match end {
        SyncEnd::NoServer(failure) => Err(failure),
        SyncEnd::CaughtUp { .. } | SyncEnd::TimedOut { .. } => Ok(()),
    }
}

fn print_devices(devices: &[DeviceInfo]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    for d in devices {
        write_json(
            &mut out,
            &DeviceLine {
                name: &d.name,
                device_id: &d.device_id,
                platform: &d.platform,
                online: d.online,
                last_seen: d.last_seen,
                is_self: d.is_self,
            },
        )?;
    }
    Ok(())
}

/// A device's id from its name (or id).
async fn resolve(client: &Client, name: &str) -> Result<String, Failure> {
    let devices = client.devices().await.map_err(core_failure)?;
    let by_name: Vec<&DeviceInfo> = devices.iter().filter(|d| d.name == name).collect();
    match by_name.as_slice() {
        [one] => Ok(one.device_id.clone()),
        [] => devices
            .iter()
            .find(|d| d.device_id == name)
            .map(|d| d.device_id.clone())
            .ok_or_else(|| {
                Failure::new("not_found", format!("the user has no device {name:?}"))
                    .with_status(EXIT_NOT_FOUND)
            }),
        _ => Err(Failure::new(
            "ambiguous",
            format!("several devices are named {name:?}: use the device id"),
        )),
    }
}

/// Forwards role changes to the printing loop.
struct Forward(mpsc::UnboundedSender<RoleInfo>);

impl RoleObserver for Forward {
    fn on_role(&self, role: RoleInfo) {
        let _ = self.0.send(role);
    }
}

/// `claim`: claims, prints the state, then one line per change of holder
/// until SIGINT or SIGTERM, which release the role (if connected: a
/// server that is gone ends the lease by itself).
async fn claim(
    client: &Client,
    target: &Target,
    role: &str,
    priority: i32,
    timeout: Duration,
    stop: &mut StopSignals,
) -> Result<(), Failure> {
    tokio::select! {
        () = stop.recv() => return Ok(()),
        connected = connect(client, target, timeout) => connected?,
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _subscription = client
        .observe_role(role, Arc::new(Forward(tx)))
        .map_err(core_failure)?;
    let first = tokio::select! {
        () = stop.recv() => {
            // The claim may have reached the server.
            release(client, role).await;
            return Ok(());
        }
        claimed = client.claim_role(role, priority) => claimed.map_err(core_failure)?,
    };
    let mut shown = RoleLine::of(&first);
    print_line(&shown)?;
    loop {
        tokio::select! {
            () = stop.recv() => break,
            changed = rx.recv() => {
                let Some(info) = changed else { break };
                let line = RoleLine::of(&info);
                // One line per change of holder (or epoch): the observer
                // also repeats the state the claim already printed.
                if (line.holder.as_ref(), line.epoch) != (shown.holder.as_ref(), shown.epoch)
                    && line.epoch >= shown.epoch
                {
                    print_line(&line)?;
                    shown = line;
                }
            }
        }
    }
    release(client, role).await;
    Ok(())
}

/// Releases `role`, best effort: only while connected, and for at most
/// [`RELEASE_GRACE`] (the lease runs out on its own otherwise).
async fn release(client: &Client, role: &str) {
    let connected = client
        .status()
        .is_ok_and(|s| s.connection == ConnectionState::Online);
    if connected {
        let _ = tokio::time::timeout(RELEASE_GRACE, client.release_role(role)).await;
    }
}

fn print_line(line: &RoleLine) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    write_json(&mut out, line)?;
    std::io::Write::flush(&mut out).map_err(|e| Failure::new("io", e))
}
