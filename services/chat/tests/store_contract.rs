//! The `ChatStore` contract: the same cases run against the in-memory store and against
//! MongoDB. The MongoDB tests (named `mongo_*`) need `TEST_MONGODB_URI` (or
//! `MONGODB_URI`) pointing at a reachable MongoDB 6+ (a standalone server is enough);
//! each uses a fresh database and drops it afterwards.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use messenger_chat::domain::{Chat, ChatDraft, ChatId, Message, MessageId, UserId};
use messenger_chat::store::{ChatStore, InMemoryChatStore, MongoChatStore, MongoStoreConfig};
use messenger_common::events::{Event, Payload, new_event};
use messenger_proto::v1 as proto;

// ---- helpers ---------------------------------------------------------------------------

fn user() -> UserId {
    UserId::new_random()
}

fn chat_between(creator: UserId, others: &[UserId]) -> Chat {
    ChatDraft {
        creator_id: creator,
        other_ids: others.to_vec(),
    }
    .into_chat()
}

fn created_event(chat: &Chat) -> Event {
    new_event(Payload::ChatCreated(proto::ChatCreated {
        chat_id: chat.id.to_string(),
        creator_id: chat.creator_id.to_string(),
        participant_ids: chat
            .participant_ids
            .iter()
            .map(ToString::to_string)
            .collect(),
    }))
}

fn message_with_id(
    id: MessageId,
    chat: ChatId,
    author: UserId,
    content: &str,
    client_id: Option<&str>,
) -> Message {
    Message {
        id,
        chat_id: chat,
        author_id: author,
        content: content.to_owned(),
        sent_at: id.timestamp(),
        client_message_id: client_id.map(str::to_owned),
    }
}

fn message(chat: ChatId, author: UserId, content: &str, client_id: Option<&str>) -> Message {
    message_with_id(MessageId::generate(), chat, author, content, client_id)
}

fn sent_event(message: &Message) -> Event {
    new_event(Payload::MessageSent(proto::MessageSent {
        chat_id: message.chat_id.to_string(),
        message_id: message.id.to_string(),
        author_id: message.author_id.to_string(),
        sent_at: None,
        ..Default::default()
    }))
}

async fn create(store: &dyn ChatStore, chat: Chat) -> Chat {
    let event = created_event(&chat);
    let stored = store.create_chat(chat, event).await.expect("create_chat");
    assert!(stored.created, "a new chat should be created");
    stored.value
}

async fn send(store: &dyn ChatStore, message: Message) -> Message {
    let event = sent_event(&message);
    let stored = store
        .append_message(message, event)
        .await
        .expect("append_message");
    assert!(stored.created, "a new message should be stored");
    stored.value
}

/// Ids of the chats/messages announced by the pending events, in outbox order.
async fn pending_subjects(store: &dyn ChatStore) -> Vec<String> {
    store
        .pending_events(1000)
        .await
        .expect("pending_events")
        .into_iter()
        .map(|pending| match pending.event.payload {
            Some(Payload::ChatCreated(created)) => format!("chat:{}", created.chat_id),
            Some(Payload::MessageSent(sent)) => format!("message:{}", sent.message_id),
            other => panic!("unexpected event in the chat outbox: {other:?}"),
        })
        .collect()
}

// ---- the contract ----------------------------------------------------------------------

async fn a_created_chat_can_be_read_back(store: Arc<dyn ChatStore>) {
    let (a, b, c) = (user(), user(), user());
    let chat = create(store.as_ref(), chat_between(a, &[b, c])).await;
    let read = store
        .chat(chat.id)
        .await
        .unwrap()
        .expect("the chat should exist");
    assert_eq!(read, chat);
    assert_eq!(read.participant_ids, vec![a, b, c]);
    assert_eq!(read.last_message, None);
    assert_eq!(store.chat(ChatId::generate()).await.unwrap(), None);
    assert_eq!(
        pending_subjects(store.as_ref()).await,
        vec![format!("chat:{}", chat.id)]
    );
}

async fn a_direct_chat_is_not_duplicated(store: Arc<dyn ChatStore>) {
    let (a, b, c) = (user(), user(), user());
    let first = create(store.as_ref(), chat_between(a, &[b])).await;
    // The same pair, the other way round: the existing chat comes back, no new event.
    let again = chat_between(b, &[a]);
    let event = created_event(&again);
    let stored = store.create_chat(again, event).await.unwrap();
    assert!(!stored.created);
    assert_eq!(stored.value, first);
    // A different pair and a group containing the pair are separate chats.
    let other = create(store.as_ref(), chat_between(a, &[c])).await;
    let group = create(store.as_ref(), chat_between(a, &[b, c])).await;
    assert_ne!(other.id, first.id);
    assert_ne!(group.id, first.id);
    assert_eq!(
        pending_subjects(store.as_ref()).await,
        vec![
            format!("chat:{}", first.id),
            format!("chat:{}", other.id),
            format!("chat:{}", group.id),
        ]
    );
}

async fn concurrent_direct_chats_for_one_pair_end_as_one(store: Arc<dyn ChatStore>) {
    let (a, b) = (user(), user());
    let attempts = (0..8).map(|n| {
        let store = Arc::clone(&store);
        let chat = if n % 2 == 0 {
            chat_between(a, &[b])
        } else {
            chat_between(b, &[a])
        };
        tokio::spawn(async move {
            let event = created_event(&chat);
            store.create_chat(chat, event).await.expect("create_chat")
        })
    });
    let results: Vec<_> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let ids: HashSet<ChatId> = results.iter().map(|stored| stored.value.id).collect();
    assert_eq!(ids.len(), 1, "every attempt should return the same chat");
    assert_eq!(results.iter().filter(|stored| stored.created).count(), 1);
    let id = ids.into_iter().next().unwrap();
    assert_eq!(store.user_chats(a, None, 10).await.unwrap().len(), 1);
    assert_eq!(
        pending_subjects(store.as_ref()).await,
        vec![format!("chat:{id}")]
    );
}

async fn history_is_newest_first_and_pages_by_message_id(store: Arc<dyn ChatStore>) {
    let (a, b) = (user(), user());
    let chat = create(store.as_ref(), chat_between(a, &[b])).await;
    let other_chat = create(store.as_ref(), chat_between(a, &[user()])).await;
    let mut sent = Vec::new();
    for n in 0..7 {
        let author = if n % 2 == 0 { a } else { b };
        sent.push(
            send(
                store.as_ref(),
                message(chat.id, author, &format!("message {n}"), None),
            )
            .await,
        );
    }
    send(store.as_ref(), message(other_chat.id, a, "elsewhere", None)).await;
    let newest_first: Vec<Message> = sent.iter().rev().cloned().collect();

    let all = store.history(chat.id, None, 100).await.unwrap();
    assert_eq!(all, newest_first);
    let first_page = store.history(chat.id, None, 3).await.unwrap();
    assert_eq!(first_page, newest_first[..3]);
    let second_page = store
        .history(chat.id, Some(first_page[2].id), 3)
        .await
        .unwrap();
    assert_eq!(second_page, newest_first[3..6]);
    let last_page = store
        .history(chat.id, Some(second_page[2].id), 3)
        .await
        .unwrap();
    assert_eq!(last_page, newest_first[6..]);
    assert!(
        store
            .history(chat.id, Some(last_page[0].id), 3)
            .await
            .unwrap()
            .is_empty()
    );
    // A cursor that is not a message of this chat still pages by id.
    let before_all = MessageId::generate();
    assert_eq!(
        store.history(chat.id, Some(before_all), 2).await.unwrap(),
        newest_first[..2]
    );
    assert!(
        store
            .history(ChatId::generate(), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn sending_moves_the_chat_summary_forward_only(store: Arc<dyn ChatStore>) {
    let (a, b) = (user(), user());
    let chat = create(store.as_ref(), chat_between(a, &[b])).await;
    let older_id = MessageId::generate();
    let newer_id = MessageId::generate();
    let newer = send(
        store.as_ref(),
        message_with_id(newer_id, chat.id, a, "newer", None),
    )
    .await;
    let read = store.chat(chat.id).await.unwrap().unwrap();
    assert_eq!(read.last_message.as_ref(), Some(&newer));
    assert_eq!(read.last_activity_at, newer.sent_at);
    // A message with a smaller id that lands later (a slower concurrent send) is stored
    // but does not replace the summary.
    let older = send(
        store.as_ref(),
        message_with_id(older_id, chat.id, b, "older", None),
    )
    .await;
    let read = store.chat(chat.id).await.unwrap().unwrap();
    assert_eq!(read.last_message.as_ref(), Some(&newer));
    assert_eq!(
        store.history(chat.id, None, 10).await.unwrap(),
        vec![newer, older]
    );
}

async fn a_retried_send_returns_the_original_message(store: Arc<dyn ChatStore>) {
    let (a, b) = (user(), user());
    let chat = create(store.as_ref(), chat_between(a, &[b])).await;
    let other_chat = create(store.as_ref(), chat_between(a, &[user()])).await;
    let original = send(store.as_ref(), message(chat.id, a, "hello", Some("key-1"))).await;

    let retry = message(chat.id, a, "hello (retried)", Some("key-1"));
    let event = sent_event(&retry);
    let stored = store.append_message(retry, event).await.unwrap();
    assert!(!stored.created);
    assert_eq!(stored.value, original);

    // The key is scoped to (chat, author): others may use the same key.
    send(store.as_ref(), message(chat.id, b, "hi", Some("key-1"))).await;
    send(
        store.as_ref(),
        message(other_chat.id, a, "hey", Some("key-1")),
    )
    .await;
    // Messages without a key never collide.
    send(store.as_ref(), message(chat.id, a, "one", None)).await;
    send(store.as_ref(), message(chat.id, a, "two", None)).await;

    let contents: Vec<String> = store
        .history(chat.id, None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(contents, vec!["two", "one", "hi", "hello"]);
    let message_events = pending_subjects(store.as_ref())
        .await
        .iter()
        .filter(|s| s.starts_with("message:"))
        .count();
    assert_eq!(message_events, 5, "the retry must not write a second event");
}

async fn concurrent_retries_store_one_message(store: Arc<dyn ChatStore>) {
    let (a, b) = (user(), user());
    let chat = create(store.as_ref(), chat_between(a, &[b])).await;
    let attempts = (0..8).map(|n| {
        let store = Arc::clone(&store);
        let retry = message(chat.id, a, &format!("attempt {n}"), Some("same-key"));
        tokio::spawn(async move {
            let event = sent_event(&retry);
            store
                .append_message(retry, event)
                .await
                .expect("append_message")
        })
    });
    let results: Vec<_> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(results.iter().filter(|stored| stored.created).count(), 1);
    let ids: HashSet<MessageId> = results.iter().map(|stored| stored.value.id).collect();
    assert_eq!(ids.len(), 1);
    let history = store.history(chat.id, None, 10).await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        store
            .chat(chat.id)
            .await
            .unwrap()
            .unwrap()
            .last_message
            .as_ref(),
        history.first()
    );
}

async fn user_chats_are_most_recently_active_first(store: Arc<dyn ChatStore>) {
    let (me, b, c, d, stranger) = (user(), user(), user(), user(), user());
    let first = create(store.as_ref(), chat_between(me, &[b])).await;
    let second = create(store.as_ref(), chat_between(c, &[me])).await;
    let third = create(store.as_ref(), chat_between(me, &[c, d])).await;
    create(store.as_ref(), chat_between(stranger, &[b])).await;

    let order = |chats: Vec<Chat>| chats.into_iter().map(|chat| chat.id).collect::<Vec<_>>();
    assert_eq!(
        order(store.user_chats(me, None, 10).await.unwrap()),
        vec![third.id, second.id, first.id]
    );

    let latest = send(store.as_ref(), message(first.id, b, "ping", None)).await;
    let chats = store.user_chats(me, None, 10).await.unwrap();
    assert_eq!(chats[0].last_message.as_ref(), Some(&latest));
    assert_eq!(chats[0].last_activity_at, latest.sent_at);
    assert_eq!(order(chats), vec![first.id, third.id, second.id]);

    send(store.as_ref(), message(second.id, c, "pong", None)).await;
    assert_eq!(
        order(store.user_chats(me, None, 10).await.unwrap()),
        vec![second.id, first.id, third.id]
    );
    assert_eq!(
        order(store.user_chats(me, None, 2).await.unwrap()),
        vec![second.id, first.id]
    );
    assert_eq!(
        order(store.user_chats(d, None, 10).await.unwrap()),
        vec![third.id]
    );
    assert!(store.user_chats(user(), None, 10).await.unwrap().is_empty());
}

async fn user_chats_page_below_an_activity_key(store: Arc<dyn ChatStore>) {
    let (me, b) = (user(), user());
    let mut chats = Vec::new();
    for _ in 0..5 {
        chats.push(create(store.as_ref(), chat_between(me, &[user(), b])).await);
    }
    let order = |chats: Vec<Chat>| chats.into_iter().map(|chat| chat.id).collect::<Vec<_>>();
    // Newest first: chats 4, 3 | 2, 1 | 0, each page below the last key of the one before.
    let first = store.user_chats(me, None, 2).await.unwrap();
    assert_eq!(order(first.clone()), vec![chats[4].id, chats[3].id]);
    let key = first[1].activity_key();
    let second = store.user_chats(me, Some(&key), 2).await.unwrap();
    assert_eq!(order(second.clone()), vec![chats[2].id, chats[1].id]);
    // A message in a chat already listed, and one in a chat not listed yet, move both
    // above the cursor: the rest of the walk lists neither again nor twice.
    send(store.as_ref(), message(chats[3].id, b, "listed", None)).await;
    send(store.as_ref(), message(chats[0].id, b, "not yet", None)).await;
    let key = second[1].activity_key();
    assert!(
        store
            .user_chats(me, Some(&key), 2)
            .await
            .unwrap()
            .is_empty(),
        "chat 0 moved above the cursor"
    );
    // A fresh walk sees the new order.
    assert_eq!(
        order(store.user_chats(me, None, 3).await.unwrap()),
        vec![chats[0].id, chats[3].id, chats[4].id]
    );
    // A key below everything is an empty page; a key is a position, so any user may
    // page from it.
    let oldest = chats[0].id.to_string();
    assert!(
        store
            .user_chats(me, Some(&oldest), 10)
            .await
            .unwrap()
            .is_empty()
    );
    let key = chats[2].activity_key();
    assert_eq!(
        order(store.user_chats(b, Some(&key), 10).await.unwrap()),
        vec![chats[1].id]
    );
}

async fn published_events_leave_the_outbox_in_order(store: Arc<dyn ChatStore>) {
    let (a, b) = (user(), user());
    let chat = create(store.as_ref(), chat_between(a, &[b])).await;
    let first = send(store.as_ref(), message(chat.id, a, "1", None)).await;
    let second = send(store.as_ref(), message(chat.id, b, "2", None)).await;
    let pending = store.pending_events(10).await.unwrap();
    assert_eq!(
        pending_subjects(store.as_ref()).await,
        vec![
            format!("chat:{}", chat.id),
            format!("message:{}", first.id),
            format!("message:{}", second.id),
        ]
    );
    for event in &pending {
        assert_eq!(event.topic, messenger_proto::topics::CHAT_EVENTS);
        assert_eq!(event.key, chat.id.to_string());
        assert_eq!(event.event_id, event.event.event_id);
    }
    assert_eq!(store.pending_events(2).await.unwrap(), pending[..2]);

    store
        .mark_event_published(&pending[0].event_id)
        .await
        .unwrap();
    store
        .mark_event_published(&pending[1].event_id)
        .await
        .unwrap();
    assert_eq!(store.pending_events(10).await.unwrap(), pending[2..]);
    store
        .mark_event_published(&pending[2].event_id)
        .await
        .unwrap();
    assert!(store.pending_events(10).await.unwrap().is_empty());
}

// ---- running it ------------------------------------------------------------------------

async fn on_memory<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn ChatStore>) -> Fut,
    Fut: Future<Output = ()>,
{
    case(Arc::new(InMemoryChatStore::new())).await;
}

/// Runs `case` on a fresh MongoDB database, dropped afterwards (also when the case fails).
async fn on_mongo<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn ChatStore>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let uri = std::env::var("TEST_MONGODB_URI").or_else(|_| std::env::var("MONGODB_URI")).unwrap_or_else(|_| {
        panic!("TEST_MONGODB_URI (or MONGODB_URI) must point at a MongoDB 6+ server for the mongo_* tests")
    });
    let config = MongoStoreConfig {
        database: Some(format!("chat_test_{}", uuid_simple())),
        ..MongoStoreConfig::new(uri)
    };
    let store = MongoChatStore::connect(&config)
        .await
        .unwrap_or_else(|error| {
            panic!("cannot reach MongoDB at TEST_MONGODB_URI/MONGODB_URI: {error}")
        });
    let database = store.database().clone();
    let outcome = tokio::spawn(case(Arc::new(store))).await;
    if let Err(error) = database.drop().await {
        eprintln!("could not drop test database {}: {error}", database.name());
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic.into_panic());
    }
}

fn uuid_simple() -> String {
    // A v4 user id is a convenient source of a random, name-safe string.
    user().to_string().replace('-', "")
}

macro_rules! contract {
    ($($case:ident => $memory:ident, $mongo:ident;)*) => {
        $(
            #[tokio::test]
            async fn $memory() {
                on_memory($case).await;
            }

            #[tokio::test]
            async fn $mongo() {
                on_mongo($case).await;
            }
        )*
    };
}

contract! {
    a_created_chat_can_be_read_back => memory_created_chat_reads_back, mongo_created_chat_reads_back;
    a_direct_chat_is_not_duplicated => memory_direct_chat_not_duplicated, mongo_direct_chat_not_duplicated;
    concurrent_direct_chats_for_one_pair_end_as_one => memory_concurrent_direct_chats, mongo_concurrent_direct_chats;
    history_is_newest_first_and_pages_by_message_id => memory_history_pages, mongo_history_pages;
    sending_moves_the_chat_summary_forward_only => memory_summary_moves_forward_only, mongo_summary_moves_forward_only;
    a_retried_send_returns_the_original_message => memory_retried_send_is_idempotent, mongo_retried_send_is_idempotent;
    concurrent_retries_store_one_message => memory_concurrent_retries, mongo_concurrent_retries;
    user_chats_are_most_recently_active_first => memory_user_chats_order, mongo_user_chats_order;
    user_chats_page_below_an_activity_key => memory_user_chats_pages, mongo_user_chats_pages;
    published_events_leave_the_outbox_in_order => memory_outbox_order, mongo_outbox_order;
}
