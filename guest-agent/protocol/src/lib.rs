//! Host <-> guest agent protocol: versioned, length-prefixed messages.
