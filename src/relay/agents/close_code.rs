//! Error codes the relay closes an agent connection with.

/// The hello was missing, malformed, late or of another wire version.
pub const BAD_HELLO: u32 = 1;
/// Unknown cluster or wrong token.
pub const REFUSED: u32 = 2;
/// The relay is shutting down.
pub const SHUTDOWN: u32 = 3;
/// The agent checks callers another way than this relay vouches for them.
pub const MISMATCH: u32 = 4;
/// The agent's token was revoked, or its cluster's trust model changed (a reload).
pub const REVOKED: u32 = 5;
/// Too many connections from this address have not proved their cluster yet.
pub const BUSY: u32 = 6;
/// Another of this agent's tunnels is on this relay already (it dials again, through a
/// balancer, to reach another).
pub const HELD_HERE: u32 = crate::proto::HELD_HERE;
