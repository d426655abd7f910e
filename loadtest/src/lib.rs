//! The load tester: many real WebRTC peers from one process, with measurements.
