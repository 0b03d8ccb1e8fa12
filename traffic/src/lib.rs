//! Traffic policy per service, for every caller on the bus (the
//! terminator, the aggregator): how calls are split between the versions
//! instances register, which requests are pinned to one version, and
//! ghost mode, which copies a sample of requests to a version under test
//! and compares its replies with the real ones.
//!
//! # Layout
//!
//! - [`policy`]: the policy document (file and etcd), checked, and the
//!   [`policy::Policies`] in force, reloaded in place.
//! - [`ghost`]: ghost settings, the comparison ([`ghost::compare`]) and
//!   the [`ghost::Ledger`] of copies in flight and what they found.
//! - [`versions`]: each version's calls, errors and latency, as its
//!   callers saw them (`version.<service>.<version>.*`).

pub mod ghost;
pub mod policy;
pub mod versions;

pub use policy::{Policies, Policy};
