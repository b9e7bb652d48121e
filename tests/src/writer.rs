//! Builds mutations the way a device makes them.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tandem_protocol::{
    Collection, DeviceId, DocId, HybridClock, Mutation, MutationId, Op, SpaceId,
};

/// One device's mutation factory, with its own hybrid logical clock.
#[derive(Debug, Clone)]
pub struct Writer {
    device: DeviceId,
    clock: HybridClock,
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn fields(value: Value) -> serde_json::Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("fields must be a JSON object, got {other}"),
    }
}

impl Writer {
    /// A writer for `device`.
    pub fn new(device: &str) -> Writer {
        let device = DeviceId::new(device).unwrap_or_else(|e| panic!("{e}"));
        Writer {
            clock: HybridClock::new(device.clone()),
            device,
        }
    }

    /// A mutation of `op` on a document.
    pub fn mutation(&mut self, space: &SpaceId, collection: &str, id: &str, op: Op) -> Mutation {
        Mutation {
            mutation_id: MutationId::generate(),
            space: space.clone(),
            collection: Collection::new(collection).unwrap_or_else(|e| panic!("{e}")),
            doc_id: DocId::new(id).unwrap_or_else(|e| panic!("{e}")),
            op,
            base_version: None,
            hlc: self.clock.tick(wall_ms()),
            device_id: self.device.clone(),
            fence: None,
        }
    }

    /// `put` of `fields` (a JSON object).
    pub fn put(&mut self, space: &SpaceId, collection: &str, id: &str, value: Value) -> Mutation {
        self.mutation(
            space,
            collection,
            id,
            Op::Put {
                fields: fields(value),
            },
        )
    }

    /// `patch` of `fields` (a JSON object).
    pub fn patch(&mut self, space: &SpaceId, collection: &str, id: &str, value: Value) -> Mutation {
        self.mutation(
            space,
            collection,
            id,
            Op::Patch {
                fields: fields(value),
            },
        )
    }

    /// `delete`.
    pub fn delete(&mut self, space: &SpaceId, collection: &str, id: &str) -> Mutation {
        self.mutation(space, collection, id, Op::Delete {})
    }

    /// `set_add` of `values` to `field`.
    pub fn set_add(
        &mut self,
        space: &SpaceId,
        collection: &str,
        id: &str,
        field: &str,
        values: Vec<Value>,
    ) -> Mutation {
        self.mutation(
            space,
            collection,
            id,
            Op::SetAdd {
                field: field.into(),
                values,
            },
        )
    }
}
