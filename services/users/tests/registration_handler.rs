//! `UserRegisteredHandler` outcomes as the consumer sees them: applied (`Ok`), skipped for
//! good (`Reject`), or tried again later (`Retry`).

use std::sync::Arc;
use std::time::Duration;

use messenger_common::events::{Event, EventHandler, HandlerError, Payload, new_event};
use messenger_common::testing::TestDatabase;
use messenger_proto::v1::{ChatCreated, UserRegistered};
use messenger_users::cache::InMemoryProfileCache;
use messenger_users::cached_store::CachedProfileStore;
use messenger_users::domain::{Nickname, registration_nickname_candidates};
use messenger_users::registration_consumer::UserRegisteredHandler;
use messenger_users::store::{InMemoryProfileStore, PgProfileStore, ProfileStore};
use uuid::Uuid;

fn registered(user_id: &str, nickname: &str) -> Event {
    new_event(Payload::UserRegistered(UserRegistered {
        user_id: user_id.to_owned(),
        nickname: nickname.to_owned(),
    }))
}

fn handler_on(store: Arc<dyn ProfileStore>) -> UserRegisteredHandler {
    let profiles = CachedProfileStore::new(
        store,
        Arc::new(InMemoryProfileCache::new(Duration::from_secs(60))),
        Duration::from_millis(250),
    );
    UserRegisteredHandler::new(Arc::new(profiles))
}

#[tokio::test]
async fn a_valid_registration_is_applied_once() {
    let store = Arc::new(InMemoryProfileStore::new());
    let handler = handler_on(store.clone());
    let user_id = Uuid::now_v7();
    let event = registered(&user_id.to_string(), "Quinn");
    assert_eq!(handler.handle(&event).await, Ok(()));
    assert_eq!(
        handler.handle(&event).await,
        Ok(()),
        "a replay is fine, and a no-op"
    );
    let profile = store.get(user_id).await.unwrap().expect("profile created");
    assert_eq!((profile.nickname.as_str(), profile.version), ("quinn", 1));
}

#[tokio::test]
async fn other_payloads_and_empty_envelopes_are_ignored() {
    let store = Arc::new(InMemoryProfileStore::new());
    let handler = handler_on(store.clone());
    let chat = new_event(Payload::ChatCreated(ChatCreated {
        chat_id: Uuid::now_v7().to_string(),
        creator_id: Uuid::now_v7().to_string(),
        participant_ids: vec![],
    }));
    assert_eq!(handler.handle(&chat).await, Ok(()));
    let empty = Event {
        payload: None,
        ..registered("", "")
    };
    assert_eq!(handler.handle(&empty).await, Ok(()));
}

#[tokio::test]
async fn invalid_registrations_are_rejected_and_change_nothing() {
    let store = Arc::new(InMemoryProfileStore::new());
    let handler = handler_on(store.clone());
    let user_id = Uuid::now_v7();
    let cases = [
        registered("not-a-uuid", "rita"),
        registered(&user_id.to_string(), "r"),
        registered(&user_id.to_string(), "rita!"),
        Event {
            event_id: String::new(),
            ..registered(&user_id.to_string(), "rita")
        },
    ];
    for event in cases {
        let outcome = handler.handle(&event).await;
        assert!(
            matches!(outcome, Err(HandlerError::Reject(_))),
            "{event:?}: {outcome:?}"
        );
    }
    assert_eq!(store.get(user_id).await.unwrap(), None);
    assert_eq!(store.get_by_nickname("rita").await.unwrap(), None);
}

#[tokio::test]
async fn a_registration_with_every_candidate_nickname_taken_is_rejected() {
    let store = Arc::new(InMemoryProfileStore::new());
    let handler = handler_on(store.clone());
    let victim = Uuid::now_v7();
    let requested = Nickname::parse("sam").unwrap();
    for candidate in registration_nickname_candidates(&requested, victim) {
        let squatter = registered(&Uuid::now_v7().to_string(), candidate.as_str());
        assert_eq!(handler.handle(&squatter).await, Ok(()));
        assert!(
            store
                .get_by_nickname(candidate.as_str())
                .await
                .unwrap()
                .is_some()
        );
    }
    let outcome = handler
        .handle(&registered(&victim.to_string(), "sam"))
        .await;
    assert!(
        matches!(outcome, Err(HandlerError::Reject(_))),
        "{outcome:?}"
    );
    assert_eq!(store.get(victim).await.unwrap(), None);
}

#[tokio::test]
async fn a_database_outage_is_retried_not_rejected() {
    let database = TestDatabase::create_migrated(&messenger_users::MIGRATOR).await;
    let store = Arc::new(PgProfileStore::new(database.pool().clone()));
    let handler = handler_on(store.clone());
    database.pool().close().await;
    let outcome = handler
        .handle(&registered(&Uuid::now_v7().to_string(), "tess"))
        .await;
    assert!(
        matches!(outcome, Err(HandlerError::Retry(_))),
        "{outcome:?}"
    );
}
