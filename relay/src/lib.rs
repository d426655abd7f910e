//! Node-to-node relay links over QUIC: framing, subscriptions and per-hop recovery.
//!
//! Empty until the cascade is built; see DESIGN.md, "The relay link".
