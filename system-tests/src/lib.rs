//! Cross-service tests live in `tests/`: they start auth, users, friends and chat as
//! gRPC servers on port 0 — each on its real stores (PostgreSQL, Redis, the Kafka-protocol
//! broker; chat on its in-memory store unless MongoDB is reachable) — and drive them
//! through the generated clients, the way the gateway will.
//!
//! `walkthrough.rs` runs the services in this process; `processes.rs` runs the real
//! binaries as separate processes configured through the environment, as the operator
//! does; both drive the same scenario (`tests/support`).
