//! TSP status codes (docs/tsp-wire.md §1.3 of docs/tsp-wire.md) and what each one means to a user.

use std::fmt;

/// A status code as it appears at the start of a broker line. Only the number matters on the
/// wire; the text after it is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusCode {
    Success,
    AuthenticationFailed,
    NoMoreTunnels,
    UnsupportedVersion,
    UnsupportedTunnelType,
    ServerError,
    InvalidRequest,
    InvalidIpv4,
    InvalidIpv6,
    Ipv4PrefixInUse,
    PrefixLengthUnavailable,
    DnsDelegationError,
    UnsupportedPrefixLength,
    MissingPrefixLength,
    RequestInProgress,
    PrefixForAnonymous,
    ServerTooBusy,
    /// Any code above 1000; the broker list follows (1200 in practice).
    Redirect(u32),
    /// A code the protocol does not define.
    Other(u32),
}

impl StatusCode {
    pub fn from_code(code: u32) -> Self {
        match code {
            200 => Self::Success,
            300 => Self::AuthenticationFailed,
            301 => Self::NoMoreTunnels,
            302 => Self::UnsupportedVersion,
            303 => Self::UnsupportedTunnelType,
            310 => Self::ServerError,
            500 => Self::InvalidRequest,
            501 => Self::InvalidIpv4,
            502 => Self::InvalidIpv6,
            506 => Self::Ipv4PrefixInUse,
            507 => Self::PrefixLengthUnavailable,
            509 => Self::DnsDelegationError,
            518 => Self::UnsupportedPrefixLength,
            520 => Self::MissingPrefixLength,
            521 => Self::RequestInProgress,
            522 => Self::PrefixForAnonymous,
            530 => Self::ServerTooBusy,
            c if c > 1000 => Self::Redirect(c),
            c => Self::Other(c),
        }
    }

    pub fn code(self) -> u32 {
        match self {
            Self::Success => 200,
            Self::AuthenticationFailed => 300,
            Self::NoMoreTunnels => 301,
            Self::UnsupportedVersion => 302,
            Self::UnsupportedTunnelType => 303,
            Self::ServerError => 310,
            Self::InvalidRequest => 500,
            Self::InvalidIpv4 => 501,
            Self::InvalidIpv6 => 502,
            Self::Ipv4PrefixInUse => 506,
            Self::PrefixLengthUnavailable => 507,
            Self::DnsDelegationError => 509,
            Self::UnsupportedPrefixLength => 518,
            Self::MissingPrefixLength => 520,
            Self::RequestInProgress => 521,
            Self::PrefixForAnonymous => 522,
            Self::ServerTooBusy => 530,
            Self::Redirect(c) | Self::Other(c) => c,
        }
    }

    /// The text a broker puts after the number (gogoSERVER/TSPS wording where known).
    pub fn wire_text(self) -> &'static str {
        match self {
            Self::Success => "Success",
            Self::AuthenticationFailed => "Authentication failed",
            Self::NoMoreTunnels => "No more tunnels available",
            Self::UnsupportedVersion => "Unsupported client version",
            Self::UnsupportedTunnelType => "Unsupported tunnel type",
            Self::ServerError => "Server side error",
            Self::InvalidRequest => "Invalid request",
            Self::InvalidIpv4 => "Invalid IPv4 address",
            Self::InvalidIpv6 => "Invalid IPv6 address",
            Self::Ipv4PrefixInUse => "IPv4 prefix already in use",
            Self::PrefixLengthUnavailable => "Requested prefix length unavailable",
            Self::DnsDelegationError => "DNS delegation error",
            Self::UnsupportedPrefixLength => "Unsupported prefix length",
            Self::MissingPrefixLength => "Missing prefix length",
            Self::RequestInProgress => "Request already in progress",
            Self::PrefixForAnonymous => "Prefix requested for anonymous user",
            Self::ServerTooBusy => "Server too busy",
            Self::Redirect(_) => "Redirection",
            Self::Other(_) => "Unknown status",
        }
    }

    /// What a user should read when the broker answers with this code.
    pub fn explain(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::AuthenticationFailed => "the broker rejected the user name or password",
            Self::NoMoreTunnels => "the broker has no more tunnels available (capacity reached)",
            Self::UnsupportedVersion => "the broker does not support this TSP protocol version",
            Self::UnsupportedTunnelType => {
                "the broker does not offer the requested tunnel mode to this client: not at all, or not across a NAT (v6v4)"
            }
            Self::ServerError => "the broker reported an internal error",
            Self::InvalidRequest => "the broker found the tunnel request invalid",
            Self::InvalidIpv4 => "the broker rejected the client's IPv4 address",
            Self::InvalidIpv6 => "the broker rejected the client's IPv6 address",
            Self::Ipv4PrefixInUse => "the requested IPv4 prefix is already in use",
            Self::PrefixLengthUnavailable => "the requested prefix length is not available",
            Self::DnsDelegationError => "the broker could not set up the DNS delegation",
            Self::UnsupportedPrefixLength => "the broker does not support the requested prefix length",
            Self::MissingPrefixLength => "the request lacks a prefix length",
            Self::RequestInProgress => "a request for this user is already in progress",
            Self::PrefixForAnonymous => "a prefix (router mode) cannot be requested anonymously",
            Self::ServerTooBusy => "the broker is too busy; try again later",
            Self::Redirect(_) => "the broker redirects to other brokers",
            Self::Other(_) => "the broker answered with an unknown status code",
        }
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.explain())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in [
            200, 300, 301, 302, 303, 310, 500, 501, 502, 506, 507, 509, 518, 520, 521, 522, 530, 1200, 404,
        ] {
            assert_eq!(StatusCode::from_code(c).code(), c);
        }
        assert_eq!(StatusCode::from_code(1200), StatusCode::Redirect(1200));
        assert_eq!(StatusCode::from_code(404), StatusCode::Other(404));
    }
}
