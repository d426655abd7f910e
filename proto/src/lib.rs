//! Wire definitions shared between nodes (the relay link) and with the control plane.
//!
//! Empty until the relay link and the control-plane API exist; the `.proto` files and their
//! generated code will live here.
