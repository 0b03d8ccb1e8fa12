//! Events over PUB/SUB: fire-and-forget notices such as `kv.changed`.
//!
//! ```text
//!  Publisher (PUB, bound)                        Subscriber (SUB, connects)
//!   publish(topic, body) ─► [topic][header][body] ─► link task: decode ─► on_event(Event)
//!   heartbeat task ───────► [bus.heartbeat] every `heartbeat`
//! ```
//!
//! PUB/SUB loses messages by design: a subscriber that is not connected (or
//! whose queue is full) misses what was published meanwhile, and nobody is
//! told. The publisher therefore sends [`HEARTBEAT_TOPIC`] on a fixed
//! interval; a subscriber that has not heard anything for a few intervals
//! knows its view may have gaps ([`Subscriber::silent_for`]), and a user
//! such as a cache can distrust itself until the stream is live again.
//!
//! Frames are `[topic, header, body]` (docs/protocol.md §8): frame 0 is the
//! topic alone so that prefix filtering works on it. The publisher filters
//! (as libzmq's PUB does): a subscriber is sent only the topics it asked
//! for, whether it asked with ZMTP 3.1 SUBSCRIBE commands or with the
//! `\x01topic` messages of ZMTP 3.0, both of which libzmq 4.3 may send.

mod publisher;
mod subscriber;

pub use publisher::{PublishError, Publisher};
pub use subscriber::Subscriber;

/// The topic of the publisher's liveness beat; subscribers always receive it.
pub const HEARTBEAT_TOPIC: &str = "bus.heartbeat";
/// How often a publisher beats by default.
pub const DEFAULT_HEARTBEAT: std::time::Duration = std::time::Duration::from_millis(200);
