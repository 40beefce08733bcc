//! `tsp-proto`: the Tunnel Setup Protocol (RFC 5572) as gogoCLIENT speaks it, sans-IO — bytes and
//! `Instant`s in; bytes, deadlines and events out (docs/tsp-wire.md). Status lines and
//! Content-length framing, capabilities, the RUDP header and its retransmission clock, the SASL
//! mechanisms (ANONYMOUS, PLAIN, DIGEST-MD5, PASSDSS-3DES-1), the XML documents, and the client
//! and server state machines. The client and the bundled broker share every encoder and parser
//! here, so the two ends cannot disagree about bytes; the redacting [`secret::Secret`] lives here
//! because the SASL code is where a password is used.
//!
//! Must not depend on anything that does I/O or knows the clock: no tokio, nix, libc, sockets or
//! files, and no `unsafe` (forbidden below). Everything above it depends on it; it depends on
//! none of them.
#![forbid(unsafe_code)]

pub mod caps;
pub mod client;
pub mod error;
pub mod frame;
pub mod rudp;
pub mod sasl;
pub mod secret;
pub mod server;
pub mod status;
pub mod types;
pub mod xml;

pub use error::{ProtoError, Stage};
pub use status::StatusCode;
pub use types::{AuthMethod, HostType, TunnelMode, Version};
