//! The Switchboard bus: how every process talks to every other.
//!
//! A caller sends a [`Request`] with [`Client::call`] over a ZeroMQ DEALER to
//! a [`Service`]'s ROUTER; the service runs its handler and the [`Reply`]
//! comes back on the same connection, matched to its caller by correlation
//! id. Deadlines travel with each request as a budget in microseconds.
//!
//! # Layout
//!
//! - [`wire`]: the v1 frame layout, encoder and total decoder
//!   (also specified in `docs/protocol.md`).
//! - [`client`]: [`Client`], one DEALER per service instance, instance
//!   choice (power of two choices), the call path.
//! - [`events`]: [`Publisher`] and [`Subscriber`] (PUB/SUB) with a
//!   heartbeat so subscribers can tell a quiet stream from a broken one.
//! - [`service`]: [`Service`], a ROUTER and bounded concurrent handlers.
//! - [`signal`]: SIGTERM/SIGINT, shared by every binary.
//! - [`table`]: the correlation table of pending calls.
//! - [`error`]: [`CallError`], what a call can end in besides a reply.
//! - `socket`: ZeroMQ socket settings and frame conversions.
//! - `waker`: the eventfd that wakes a socket thread out of `zmq::poll`.
//!
//! # Threading
//!
//! libzmq sockets are `Send` but not `Sync`, so each `Client` and each
//! `Service` has one thread that owns its sockets and sleeps in `zmq::poll`.
//! Tokio tasks reach it through bounded queues and wake it with an eventfd
//! only when it sleeps. Encoding and decoding happen on the tokio tasks; the
//! socket threads only read the 16-byte prefix.

pub mod client;
pub mod error;
pub mod events;
mod metrics;
pub mod service;
pub mod signal;
mod socket;
pub mod table;
mod waker;
pub mod wire;

pub use client::{Client, ClientOptions, ClientStats, Instance};
pub use error::{CallError, SetupError};
pub use events::{Publisher, Subscriber};
pub use service::{Service, ServiceMonitor, ServiceOptions, ServiceStats};
pub use socket::{check_endpoint, Tuning};
pub use wire::{ErrorReply, Event, Headers, Message, Reply, Request, Text};
