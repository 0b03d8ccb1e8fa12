//! Bus requests to store operations: validation first, so that bad input
//! costs no disk work, then the store, then a reply.

use crate::proto::{self, check_key};
use crate::store::{Op, Store, WriteError};
use bus::{Reply, Request};
use bytes::Bytes;
use std::sync::Arc;
use tokio::time::Instant;

pub struct Kv {
    store: Arc<Store>,
    max_value: usize,
}

impl Kv {
    pub fn new(store: Arc<Store>, max_value: usize) -> Kv {
        Kv { store, max_value }
    }

    pub async fn handle(&self, req: Request, deadline: Instant) -> Reply {
        match req.method.as_str() {
            proto::GET => self.get(req.path.as_bytes()),
            proto::PUT => self.put(req.path.as_bytes(), req.body, deadline).await,
            proto::DELETE => self.delete(req.path.as_bytes(), deadline).await,
            proto::MULTI_GET => self.multi_get(&req.body),
            other => error(404, &format!("unknown method {other:?}")),
        }
    }

    fn get(&self, key: &[u8]) -> Reply {
        if let Err(e) = check_key(key) {
            return error(400, &e.to_string());
        }
        match self.store.get(key) {
            Ok(Some(v)) => Reply::with_body(200, v),
            Ok(None) => Reply::new(404),
            Err(e) => store_failure(e),
        }
    }

    async fn put(&self, key: &Bytes, value: Bytes, deadline: Instant) -> Reply {
        if let Err(e) = check_key(key) {
            return error(400, &e.to_string());
        }
        if value.len() > self.max_value {
            return error(
                413,
                &format!(
                    "value is {} bytes; the limit is {}",
                    value.len(),
                    self.max_value
                ),
            );
        }
        write_reply(
            self.store
                .write(Op::Put(key.clone(), value), deadline)
                .await,
        )
    }

    async fn delete(&self, key: &Bytes, deadline: Instant) -> Reply {
        if let Err(e) = check_key(key) {
            return error(400, &e.to_string());
        }
        write_reply(self.store.write(Op::Delete(key.clone()), deadline).await)
    }

    fn multi_get(&self, body: &[u8]) -> Reply {
        let keys = match proto::decode_keys(body) {
            Ok(k) => k,
            Err(e) => return error(400, &e.to_string()),
        };
        let mut values = Vec::with_capacity(keys.len());
        for k in keys {
            match self.store.get(k) {
                Ok(v) => values.push(v),
                Err(e) => return store_failure(e),
            }
        }
        Reply::with_body(200, proto::encode_values(&values))
    }
}

fn write_reply(r: Result<(), WriteError>) -> Reply {
    match r {
        Ok(()) => Reply::new(204),
        // The bus service drops a reply past the deadline anyway; the caller
        // sees its own timeout.
        Err(WriteError::Expired) => error(504, "deadline passed before the write started"),
        Err(WriteError::QueueFull) => error(503, "write queue full"),
        Err(WriteError::Closed) => error(503, "store closing"),
        Err(WriteError::Store(e)) => {
            tracing::error!(error = %e, "write failed");
            error(500, "store failure")
        }
    }
}

fn store_failure(e: crate::store::StoreError) -> Reply {
    tracing::error!(error = %e, "read failed");
    error(500, "store failure")
}

/// An application-level error reply: the status, and a JSON body the
/// aggregator passes on to HTTP clients.
fn error(status: u16, message: &str) -> Reply {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut r = Reply::with_body(status, Bytes::from(body));
    r.headers.push((
        "content-type".into(),
        Bytes::from_static(b"application/json"),
    ));
    r
}
