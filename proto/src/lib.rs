//! Generated gRPC clients, servers and messages for `messenger.v1`.
//!
//! The `.proto` files under `messenger/v1/` are the contract between the services and
//! the gateway; events (`events.proto`) are what the services publish to Kafka.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod v1 {
    tonic::include_proto!("messenger.v1");
}

/// Encoded `FileDescriptorSet` of every messenger proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("messenger_descriptor");

/// Kafka topics the services publish their `Event`s to.
pub mod topics {
    pub const AUTH_EVENTS: &str = "messenger.auth.events";
    pub const FRIENDS_EVENTS: &str = "messenger.friends.events";
    pub const CHAT_EVENTS: &str = "messenger.chat.events";
}
