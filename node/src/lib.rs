//! The SFU node.
