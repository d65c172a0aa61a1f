//! [`UserRegisteredHandler`]: turns `UserRegistered` events (topic `messenger.auth.events`)
//! into profiles. Other payloads on the topic are ignored; an invalid event is rejected
//! (logged and skipped); a database failure is retried by the consumer.

use std::sync::Arc;

use messenger_common::events::{Event, EventHandler, HandlerError, Payload};

use crate::cached_store::CachedProfileStore;
use crate::domain::{Registration, RegistrationOutcome};
use crate::error::UsersError;

pub struct UserRegisteredHandler {
    profiles: Arc<CachedProfileStore>,
}

impl UserRegisteredHandler {
    pub fn new(profiles: Arc<CachedProfileStore>) -> Self {
        Self { profiles }
    }
}

#[async_trait::async_trait]
impl EventHandler for UserRegisteredHandler {
    async fn handle(&self, event: &Event) -> Result<(), HandlerError> {
        let Some(Payload::UserRegistered(registered)) = &event.payload else {
            return Ok(());
        };
        let registration =
            Registration::parse(&event.event_id, &registered.user_id, &registered.nickname)
                .map_err(|error| HandlerError::Reject(error.to_string()))?;
        match self.profiles.register(&registration).await {
            Ok(RegistrationOutcome::Created(profile)) => {
                if profile.nickname == registration.nickname.as_str() {
                    tracing::info!(user_id = %profile.user_id, nickname = %profile.nickname, "profile created");
                } else {
                    tracing::warn!(
                        user_id = %profile.user_id,
                        requested = %registration.nickname,
                        nickname = %profile.nickname,
                        "profile created; requested nickname was taken, resolved with a user id suffix"
                    );
                }
                Ok(())
            }
            Ok(RegistrationOutcome::AlreadyProcessed) => {
                tracing::debug!(event_id = %registration.event_id, "event already processed");
                Ok(())
            }
            Ok(RegistrationOutcome::ProfileExists) => {
                tracing::info!(user_id = %registration.user_id, event_id = %registration.event_id, "profile exists already; event ignored");
                Ok(())
            }
            Err(error @ UsersError::NoFreeNickname { .. }) => {
                Err(HandlerError::Reject(error.to_string()))
            }
            Err(error) => Err(HandlerError::Retry(error.to_string())),
        }
    }
}
