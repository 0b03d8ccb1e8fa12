//! Bus requests to store operations: validation first, so that bad input
//! costs no disk work, then the store, then a reply. Errors are replies in
//! the one client-visible shape (`bus::Problem`), so the aggregator can
//! pass a 4xx on as it is.

use crate::store::{Op, Store, WriteError};
use bus::{Problem, Reply, Request};
use bytes::Bytes;
use kv_proto::{self as proto, check_key};
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
        let out = match req.method.as_str() {
            proto::GET => self.get(req.path.as_bytes()),
            proto::PUT => {
                self.put(req.path.as_bytes(), req.body, deadline, req.ghost)
                    .await
            }
            proto::DELETE => self.delete(req.path.as_bytes(), deadline, req.ghost).await,
            proto::MULTI_GET => self.multi_get(&req.body),
            other => Err(Problem::new(
                404,
                "unknown_method",
                format!("unknown method {other:?}"),
            )),
        };
        out.unwrap_or_else(|p| p.into_reply(req.request_id.as_str()))
    }

    fn get(&self, key: &[u8]) -> Result<Reply, Problem> {
        check_key(key).map_err(bad_key)?;
        match self.store.get(key) {
            Ok(Some(v)) => Ok(Reply::with_body(200, v)),
            Ok(None) => Ok(Reply::new(404)),
            Err(e) => Err(store_failure(e)),
        }
    }

    /// `ghost`: a mirrored copy (bus flag GHOST): checked and answered as
    /// a write would be, and nothing is written.
    async fn put(
        &self,
        key: &Bytes,
        value: Bytes,
        deadline: Instant,
        ghost: bool,
    ) -> Result<Reply, Problem> {
        check_key(key).map_err(bad_key)?;
        if value.len() > self.max_value {
            return Err(Problem::new(
                413,
                "value_too_large",
                format!(
                    "value is {} bytes; the limit is {}",
                    value.len(),
                    self.max_value
                ),
            ));
        }
        if ghost {
            return write_reply(Ok(()));
        }
        write_reply(
            self.store
                .write(Op::Put(key.clone(), value), deadline)
                .await,
        )
    }

    async fn delete(&self, key: &Bytes, deadline: Instant, ghost: bool) -> Result<Reply, Problem> {
        check_key(key).map_err(bad_key)?;
        if ghost {
            return write_reply(Ok(()));
        }
        write_reply(self.store.write(Op::Delete(key.clone()), deadline).await)
    }

    fn multi_get(&self, body: &[u8]) -> Result<Reply, Problem> {
        let keys = proto::decode_keys(body).map_err(bad_key)?;
        let mut values = Vec::with_capacity(keys.len());
        for k in keys {
            values.push(self.store.get(k).map_err(store_failure)?);
        }
        Ok(Reply::with_body(200, proto::encode_values(&values)))
    }
}

fn bad_key(e: proto::KeyError) -> Problem {
    let code = match e {
        proto::KeyError::TooMany(_) => "too_many_keys",
        _ => "bad_key",
    };
    Problem::new(400, code, e.to_string())
}

fn write_reply(r: Result<(), WriteError>) -> Result<Reply, Problem> {
    match r {
        Ok(()) => Ok(Reply::new(204)),
        // The bus service drops a reply past the deadline anyway; the caller
        // sees its own timeout.
        Err(WriteError::Expired) => Err(Problem::new(
            504,
            "deadline_exceeded",
            "deadline passed before the write started",
        )),
        Err(WriteError::QueueFull) => {
            Err(Problem::new(503, "overloaded", "write queue full; retry later").retry_after(1))
        }
        Err(WriteError::Closed) => {
            Err(Problem::new(503, "overloaded", "store closing; retry later").retry_after(1))
        }
        Err(WriteError::Store(e)) => {
            tracing::error!(error = %e, "write failed");
            Err(Problem::new(500, "internal_error", "store failure"))
        }
    }
}

fn store_failure(e: crate::store::StoreError) -> Problem {
    tracing::error!(error = %e, "read failed");
    Problem::new(500, "internal_error", "store failure")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ghost_write_is_answered_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let changed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c2 = changed.clone();
        let store = Store::open(
            dir.path(),
            16,
            Box::new(move |_| {
                c2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }),
        )
        .unwrap();
        let kv = Kv::new(Arc::new(store), 1024);
        let far = Instant::now() + std::time::Duration::from_secs(5);
        let req = |method: &'static str, ghost: bool| {
            let mut r = Request::new(proto::SERVICE, method);
            r.path = "k".into();
            r.body = Bytes::from_static(b"v");
            r.ghost = ghost;
            r
        };
        assert_eq!(kv.handle(req(proto::PUT, true), far).await.status, 204);
        assert_eq!(kv.handle(req(proto::GET, true), far).await.status, 404);
        assert_eq!(kv.handle(req(proto::PUT, false), far).await.status, 204);
        assert_eq!(kv.handle(req(proto::DELETE, true), far).await.status, 204);
        assert_eq!(kv.handle(req(proto::GET, false), far).await.status, 200);
        assert_eq!(
            changed.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "one real write, no event for the ghosts"
        );
        // A ghost write is still checked: a bad key is the same 400.
        let mut bad = req(proto::PUT, true);
        bad.path = "bad key".into();
        assert_eq!(kv.handle(bad, far).await.status, 400);
    }
}
