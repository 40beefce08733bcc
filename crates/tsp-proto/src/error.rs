//! The protocol layer's error: everything a broker can answer or get wrong, in words a user
//! understands. Transport errors (sockets, timeouts) live in `net`.
//!
//! See docs/tsp-wire.md §1.3.

use super::caps::CapsError;
use super::frame::FrameError;
use super::sasl::{Mechanism, SaslError};
use super::status::StatusCode;
use super::types::{TunnelMode, Version};
use super::xml::XmlError;

/// Where in the exchange something happened, for messages and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Capability,
    Authentication,
    Create,
    Accept,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Capability => "capability exchange",
            Self::Authentication => "authentication",
            Self::Create => "tunnel request",
            Self::Accept => "tunnel acceptance",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("malformed broker message during {stage}: {source}")]
    Frame { stage: Stage, source: FrameError },
    #[error(transparent)]
    Caps(#[from] CapsError),
    #[error("{mechanism} authentication failed: {source}")]
    Sasl { mechanism: &'static str, source: SaslError },
    #[error("the broker's tunnel document is invalid: {0}")]
    Xml(#[from] XmlError),
    #[error("authentication failed: the broker rejected the credentials ({mechanism})")]
    AuthenticationFailed { mechanism: &'static str },
    #[error("the broker does not speak TSP {0}")]
    UnsupportedVersion(Version),
    #[error("the broker is too busy (530); try again later")]
    ServerTooBusy,
    #[error("the broker refused the {stage}: {status}{}", if text.is_empty() { String::new() } else { format!(" — \"{text}\"") })]
    Status {
        stage: Stage,
        status: StatusCode,
        text: String,
    },
    #[error("the broker does not offer tunnel mode {requested} (it offers {offered})")]
    TunnelModeNotOffered { requested: TunnelMode, offered: String },
    #[error("TSP {version} cannot carry tunnel mode {mode}")]
    ModeNeedsNewerVersion { version: Version, mode: TunnelMode },
    #[error("no authentication method in common: wanted {wanted}, broker offers {offered}")]
    NoCommonAuth { wanted: String, offered: String },
    #[error(
        "the broker offers only PLAIN authentication, which sends the password unencrypted; set auth_method=plain or allow-plain to permit it"
    )]
    PlainNotAllowed,
    #[error("the broker's host key for {host} is not trusted (unknown key, not accepted)")]
    HostKeyNotTrusted { host: String },
    #[error(
        "the broker's host key for {host} does not match the stored key — NOT CONNECTING (possible impersonation; remove the old key only if the broker's key was really changed)"
    )]
    HostKeyMismatch { host: String },
    #[error("the broker offered a tunnel of mode {offered} but {requested} was requested")]
    WrongModeOffered { requested: TunnelMode, offered: TunnelMode },
    #[error("unexpected broker reply during {stage}: {preview:?}")]
    Unexpected { stage: Stage, preview: String },
    #[error("the broker redirected with an empty broker list")]
    EmptyRedirect,
    #[error("called in the wrong state: {0}")]
    State(&'static str),
}

impl ProtoError {
    pub(crate) fn frame(stage: Stage) -> impl FnOnce(FrameError) -> ProtoError {
        move |source| ProtoError::Frame { stage, source }
    }

    pub(crate) fn sasl(mechanism: Mechanism) -> impl FnOnce(SaslError) -> ProtoError {
        move |source| ProtoError::Sasl {
            mechanism: mechanism.wire_name(),
            source,
        }
    }

    /// True when the credentials (or the broker's proof of them) were wrong: NetworkManager
    /// reports these as LOGIN_FAILED and asks for a new password.
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            Self::AuthenticationFailed { .. }
                | Self::Sasl { .. }
                | Self::HostKeyMismatch { .. }
                | Self::HostKeyNotTrusted { .. }
        )
    }
}
