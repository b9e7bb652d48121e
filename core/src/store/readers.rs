//! A small pool of read-only connections.
//!
//! A `rusqlite::Connection` is used by one thread at a time; the pool hands
//! each reading call a connection of its own and takes it back afterwards,
//! waiting when all are busy. Each connection keeps its own cache of
//! prepared statements, so a query shape is prepared once per connection.

use std::sync::{Condvar, Mutex};

use rusqlite::Connection;

use crate::error::Error;
use crate::store::lock;

pub(crate) struct ReaderPool {
    /// Idle connections; `None` once the pool is closed.
    idle: Mutex<Option<Vec<Connection>>>,
    returned: Condvar,
}

impl ReaderPool {
    pub fn new(connections: Vec<Connection>) -> ReaderPool {
        ReaderPool {
            idle: Mutex::new(Some(connections)),
            returned: Condvar::new(),
        }
    }

    /// Runs `f` with a connection of the pool.
    pub fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Error>) -> Result<T, Error> {
        let conn = self.take()?;
        let lease = Lease {
            pool: self,
            conn: Some(conn),
        };
        match &lease.conn {
            Some(conn) => f(conn),
            None => Err(Error::Closed),
        }
    }

    fn take(&self) -> Result<Connection, Error> {
        let mut idle = lock(&self.idle);
        loop {
            match idle.as_mut() {
                None => return Err(Error::Closed),
                Some(conns) => {
                    if let Some(conn) = conns.pop() {
                        return Ok(conn);
                    }
                }
            }
            idle = self
                .returned
                .wait(idle)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Whether the pool has not been closed.
    pub fn is_open(&self) -> bool {
        lock(&self.idle).is_some()
    }

    /// Closes the idle connections now and the busy ones when they come
    /// back.
    pub fn close(&self) {
        lock(&self.idle).take();
        self.returned.notify_all();
    }
}

/// Gives the connection back to the pool when the call is done, even if it
/// panicked.
struct Lease<'a> {
    pool: &'a ReaderPool,
    conn: Option<Connection>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if let Some(conns) = lock(&self.pool.idle).as_mut() {
                conns.push(conn);
            }
            self.pool.returned.notify_one();
        }
    }
}
