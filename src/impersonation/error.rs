//! Why identity headers could not be built or a request was refused;
//! messages name headers and positions, never values.

use std::fmt;

use http::HeaderName;

/// A byte that is not allowed where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadByte {
    /// Carriage return (0x0D).
    Cr,
    /// Line feed (0x0A).
    Lf,
    /// NUL (0x00).
    Nul,
    /// Any other control character (C0 other than tab, DEL, or C1).
    Control,
}

impl fmt::Display for BadByte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadByte::Cr => "a carriage return (CR)",
            BadByte::Lf => "a line feed (LF)",
            BadByte::Nul => "a NUL byte",
            BadByte::Control => "a control character",
        })
    }
}

/// Which part of an [`Identity`] an error is about; indexes, never values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityField {
    /// [`Identity::user`].
    User,
    /// [`Identity::uid`].
    Uid,
    /// The group at this index of [`Identity::groups`].
    Group(usize),
    /// The key at this position in [`Identity::extra`] (sorted order).
    ExtraKey(usize),
    /// The value at index `value` of the extra key at position `key`.
    ExtraValue {
        /// Position of the key in [`Identity::extra`] (sorted order).
        key: usize,
        /// Index of the value in that key's list.
        value: usize,
    },
}

impl fmt::Display for IdentityField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityField::User => f.write_str("user"),
            IdentityField::Uid => f.write_str("uid"),
            IdentityField::Group(i) => write!(f, "group #{i}"),
            IdentityField::ExtraKey(k) => write!(f, "extra key #{k}"),
            IdentityField::ExtraValue { key, value } => write!(f, "value #{value} of extra key #{key}"),
        }
    }
}

/// Why impersonation headers could not be built or the request could not be made safe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImpersonationError {
    /// A caller header value contains CR, LF or NUL.
    #[error("request header {name} has a value containing {byte}")]
    CallerHeaderByte {
        /// The offending header's name.
        name: HeaderName,
        /// The kind of byte found.
        byte: BadByte,
    },
    /// The request carries more than one `Upgrade` header.
    #[error("request has {count} Upgrade headers; at most one is allowed")]
    MultipleUpgrade {
        /// How many `Upgrade` headers were present.
        count: usize,
    },
    /// The request asks for an upgrade with a blank `Upgrade` value.
    #[error("request asks for an upgrade but its Upgrade header is blank")]
    BlankUpgrade,
    /// An identity field that must not be empty is empty.
    #[error("identity {field} is empty")]
    EmptyIdentityValue {
        /// Which field.
        field: IdentityField,
    },
    /// An identity field contains a byte that cannot be sent unchanged in a header.
    #[error("identity {field} contains {byte} at byte offset {index}")]
    IdentityByte {
        /// Which field.
        field: IdentityField,
        /// Byte offset of the first offending byte.
        index: usize,
        /// The kind of byte found.
        byte: BadByte,
    },
    /// An identity field starts or ends with whitespace, which HTTP parsers would trim.
    #[error("identity {field} has leading or trailing whitespace")]
    SurroundingWhitespace {
        /// Which field.
        field: IdentityField,
    },
    /// An extra key contains an upper-case ASCII letter, which the apiserver would lower-case.
    #[error(
        "identity {field} contains an upper-case ASCII letter at byte offset {index}; the apiserver lower-cases extra keys"
    )]
    UpperCaseExtraKey {
        /// Which field.
        field: IdentityField,
        /// Byte offset of the first upper-case letter.
        index: usize,
    },
    /// An extra key cannot be turned into a header name that decodes back to it.
    #[error("identity {field} cannot be encoded as an Impersonate-Extra header name")]
    UnencodableExtraKey {
        /// Which field.
        field: IdentityField,
    },
    /// The agent's bearer token is empty or not printable ASCII without spaces.
    #[error("the agent's bearer token is empty or contains a byte not allowed in a bearer token")]
    InvalidAgentBearer,
    /// A passthrough cluster token is empty or not printable ASCII without spaces.
    #[error("the cluster token is empty or contains a byte not allowed in a bearer token")]
    InvalidClusterBearer,
    /// After setting, an identity-bearing or hop-by-hop header is present that the agent did not set.
    #[error("header {name} is present but was not set by the agent")]
    UnexpectedHeader {
        /// The unexpected header's name.
        name: HeaderName,
    },
    /// After setting, `Sec-WebSocket-Protocol` still offers a bearer token to the apiserver.
    #[error("Sec-WebSocket-Protocol still carries a bearer token")]
    WebSocketBearer,
    /// After setting, a header the agent set is missing or does not hold exactly the agent's values.
    #[error("header {name} does not hold exactly the values the agent set")]
    MismatchedHeader {
        /// The header's name.
        name: HeaderName,
    },
}
