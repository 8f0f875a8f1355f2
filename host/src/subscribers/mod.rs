//! Subscriber cache (being written).
