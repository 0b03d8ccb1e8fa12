//! The Switchboard bus: how every process talks to every other.
//!
//! A caller sends a [`Request`] with [`Client::call`] over ZMTP (as a
//! DEALER) to a [`Service`] (a ROUTER); the service runs its handler and the
//! [`Reply`] comes back on the same connection, matched to its caller by
//! correlation id. Deadlines travel with each request as a budget in
//! microseconds. Any ZeroMQ peer (libzmq 4.x, pyzmq) can be either side.
//!
//! # Layout
//!
//! - [`curve`]: CURVE key pairs, authorised key sets, key files (Z85).
//! - [`wire`]: the v1 frame layout, encoder and total decoder
//!   (also specified in `docs/protocol.md`).
//! - [`zmtp`]: ZMTP 3.1 on tokio: greeting, frames, NULL and CURVE mechanisms,
//!   heartbeats, the batched writer and the message reader.
//! - [`client`]: [`Client`], the call path; `client/pick.rs` instance
//!   choice (power of two choices); `client/link.rs` one connection per
//!   instance, reconnecting.
//! - [`service`]: [`Service`], accept loop and bounded concurrent handlers;
//!   `service/conn.rs` one caller's connection.
//! - [`events`]: [`Publisher`] and [`Subscriber`] (PUB/SUB) with a
//!   heartbeat so subscribers can tell a quiet stream from a broken one.
//! - [`table`]: the correlation table of pending calls.
//! - [`tuning`]: connection settings and the endpoint check.
//! - [`error`]: [`CallError`], what a call can end in besides a reply.
//! - [`problem`]: [`Problem`], the one JSON shape of a client-visible
//!   error, and the one table from bus failure to HTTP status.
//!
//! # Threading
//!
//! None of its own. Every connection is tokio tasks on the runtime the
//! caller runs on: a call encodes on its own task and appends to the
//! connection's outbox; the connection's writer task sends whatever has
//! accumulated in one write; the reader decodes every complete frame a read
//! returned and completes each caller's oneshot. A request therefore never
//! waits for another thread to be scheduled.
//!
//! The price: the connections run only when the runtime runs them. A task
//! that holds a worker thread (CPU-heavy work, a blocking call) delays
//! every connection on that worker, and held for longer than the heartbeat
//! timeout (3 s) the peer hears nothing and disconnects, failing the calls
//! in flight ([`CallError::Disconnected`], then `NoInstance` until the
//! reconnect). libzmq's I/O threads were immune to that, at the cost of
//! the thread crossings this crate removed. Put such work on
//! `spawn_blocking` or a runtime of its own. `tests/transport.rs`'s 10,000-call test met it:
//! building its bodies byte by byte (4.4 s of CPU in a debug build) on
//! the runtime both ends share fired the heartbeat in 3 of 5 runs under
//! load.

pub mod client;
pub mod curve;
pub mod error;
pub mod events;
mod metrics;
pub mod problem;
pub mod service;
pub mod table;
pub mod tuning;
pub mod wire;
pub mod zmtp;

pub use client::{
    CallTrace, Client, ClientOptions, ClientStats, Instance, RetryBudget, Route, Weights,
};
pub use error::{CallError, SetupError};
pub use events::{Publisher, Subscriber};
pub use problem::Problem;
pub use service::{Service, ServiceMonitor, ServiceOptions, ServiceStats};
pub use tuning::{check_endpoint, ServerKeyError, Tuning};
pub use wire::{ErrorReply, Event, Headers, Message, Reply, Request, Text};
pub use zmtp::mechanism::{Curve, Mechanism};
