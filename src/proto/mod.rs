//! The Tunnel Setup Protocol, sans-IO: bytes and `Instant`s in, bytes, deadlines and events
//! out. Client and broker share every encoder and parser here, so the two ends cannot
//! disagree about bytes. Nothing in this module touches a socket, a file or the clock.

pub mod caps;
pub mod client;
pub mod error;
pub mod frame;
pub mod rudp;
pub mod sasl;
pub mod server;
pub mod status;
pub mod types;
pub mod xml;

pub use error::{ProtoError, Stage};
pub use status::StatusCode;
pub use types::{AuthMethod, HostType, TunnelMode, Version};
