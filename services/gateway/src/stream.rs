//! Real-time delivery (`GET /v1/events`, Server-Sent Events): which user hears about which
//! domain event ([`fan_out`], pure), the per-user registry of open streams with a short
//! replay history ([`StreamHub`]), and single-use stream tickets for browsers, whose
//! `EventSource` cannot send an `Authorization` header ([`TicketKey`]).
//!
//! Every gateway replica consumes every event, so each replica has the same history and a
//! client may reconnect to any of them with `Last-Event-ID`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use messenger_common::events::{Event, Payload};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use crate::api::types::{MessageView, timestamp};
use crate::config::StreamConfig;

/// One event as a client receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    /// SSE `id`: the domain event's id (time-ordered UUID), for `Last-Event-ID`.
    pub id: String,
    /// SSE `event`: `message`, `chat_created`, `friend_request`, `friend_request_accepted`.
    pub kind: &'static str,
    /// SSE `data`: JSON.
    pub data: Arc<str>,
}

/// Who hears about `event`, and what they receive. Only the events a user must see at
/// once: new messages in their chats, chats they were added to, friend requests
/// addressed to them and acceptances of their own requests.
pub fn fan_out(event: &Event) -> Vec<(Uuid, StreamEvent)> {
    let parse = |id: &str| Uuid::parse_str(id).ok();
    let make = |kind: &'static str, data: serde_json::Value| StreamEvent {
        id: event.event_id.clone(),
        kind,
        data: Arc::from(data.to_string()),
    };
    match &event.payload {
        Some(Payload::MessageSent(sent)) => {
            let message = MessageView {
                message_id: sent.message_id.clone(),
                chat_id: sent.chat_id.clone(),
                author_id: sent.author_id.clone(),
                content: sent.content.clone(),
                sent_at: timestamp(sent.sent_at.as_ref()),
                client_message_id: Some(sent.client_message_id.clone()).filter(|id| !id.is_empty()),
            };
            let event = make(
                "message",
                serde_json::json!({ "chat_id": sent.chat_id, "message": message }),
            );
            unique(sent.participant_ids.iter().filter_map(|id| parse(id)))
                .map(|user| (user, event.clone()))
                .collect()
        }
        Some(Payload::ChatCreated(created)) => {
            let event = make(
                "chat_created",
                serde_json::json!({
                    "chat_id": created.chat_id,
                    "creator_id": created.creator_id,
                    "participant_ids": created.participant_ids,
                }),
            );
            unique(
                created
                    .participant_ids
                    .iter()
                    .filter(|id| **id != created.creator_id)
                    .filter_map(|id| parse(id)),
            )
            .map(|user| (user, event.clone()))
            .collect()
        }
        Some(Payload::FriendRequestSent(sent)) => parse(&sent.to_user_id)
            .map(|to| {
                let data = serde_json::json!({
                    "from_user_id": sent.from_user_id,
                    "from_nickname": sent.from_nickname,
                });
                vec![(to, make("friend_request", data))]
            })
            .unwrap_or_default(),
        Some(Payload::FriendRequestAccepted(accepted)) => parse(&accepted.from_user_id)
            .map(|from| {
                let data = serde_json::json!({
                    "user_id": accepted.to_user_id,
                    "nickname": accepted.to_nickname,
                });
                vec![(from, make("friend_request_accepted", data))]
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn unique(ids: impl Iterator<Item = Uuid>) -> impl Iterator<Item = Uuid> {
    let mut seen = HashSet::new();
    ids.filter(move |id| seen.insert(*id))
}

/// The SHA-256 of an access token: streams remember this, never the token itself.
pub type TokenFingerprint = [u8; 32];

pub fn token_fingerprint(token: &str) -> TokenFingerprint {
    Sha256::digest(token.as_bytes()).into()
}

/// What a new stream starts with before live events.
#[derive(Debug, Clone, PartialEq)]
pub enum Backlog {
    /// A fresh connection: nothing to catch up.
    None,
    /// The events after the client's `Last-Event-ID`.
    Replay(Vec<StreamEvent>),
    /// The client's last event is no longer known: it must refetch its state.
    Reset,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("this user already has {0} open event streams")]
pub struct TooManyStreams(pub usize);

struct Connection {
    id: u64,
    token: TokenFingerprint,
    sender: mpsc::Sender<StreamEvent>,
}

#[derive(Default)]
struct UserStreams {
    connections: Vec<Connection>,
    history: VecDeque<(Instant, StreamEvent)>,
}

#[derive(Default)]
struct HubState {
    users: HashMap<Uuid, UserStreams>,
    next_connection: u64,
}

/// Open streams by user, each fed from a bounded channel, and every user's recent events.
#[derive(Clone)]
pub struct StreamHub {
    state: Arc<Mutex<HubState>>,
    config: StreamConfig,
}

/// An open stream: its events, and its place in the hub (removed when dropped).
pub struct Subscription {
    pub backlog: Backlog,
    pub events: mpsc::Receiver<StreamEvent>,
    pub guard: SubscriptionGuard,
}

pub struct SubscriptionGuard {
    hub: StreamHub,
    user: Uuid,
    connection: u64,
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        if let Some(user) = state.users.get_mut(&self.user) {
            user.connections.retain(|c| c.id != self.connection);
        }
    }
}

impl StreamHub {
    pub fn new(config: StreamConfig) -> Self {
        Self {
            state: Arc::default(),
            config,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a stream for `user`. With `last_event_id`, the backlog replays what came
    /// after it, or says `Reset` when that event is outside the replay window. Replay and
    /// registration happen under one lock, so no event falls between them.
    pub fn subscribe(
        &self,
        user: Uuid,
        token: TokenFingerprint,
        last_event_id: Option<&str>,
    ) -> Result<Subscription, TooManyStreams> {
        let mut state = self.lock();
        state.next_connection += 1;
        let connection = state.next_connection;
        let entry = state.users.entry(user).or_default();
        prune(&mut entry.history, &self.config, Instant::now());
        if entry.connections.len() >= self.config.max_streams_per_user {
            return Err(TooManyStreams(entry.connections.len()));
        }
        let backlog = match last_event_id {
            None => Backlog::None,
            Some(last) => match entry.history.iter().position(|(_, e)| e.id == last) {
                Some(position) => Backlog::Replay(
                    entry
                        .history
                        .iter()
                        .skip(position + 1)
                        .map(|(_, e)| e.clone())
                        .collect(),
                ),
                None => Backlog::Reset,
            },
        };
        let (sender, events) = mpsc::channel(self.config.connection_buffer);
        entry.connections.push(Connection {
            id: connection,
            token,
            sender,
        });
        Ok(Subscription {
            backlog,
            events,
            guard: SubscriptionGuard {
                hub: self.clone(),
                user,
                connection,
            },
        })
    }

    /// Delivers `event` to every open stream of `user` and keeps it for replay. A stream
    /// whose buffer is full belongs to a client too slow to read: it is closed (the
    /// client reconnects with `Last-Event-ID`) instead of buffering without bound.
    pub fn deliver(&self, user: Uuid, event: StreamEvent) {
        let now = Instant::now();
        let mut state = self.lock();
        let entry = state.users.entry(user).or_default();
        if entry.history.iter().any(|(_, e)| e.id == event.id) {
            return; // At-least-once delivery from Kafka: already seen.
        }
        entry.connections.retain(
            |connection| match connection.sender.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::info!(%user, "closing the event stream of a client too slow to read");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
        );
        entry.history.push_back((now, event));
        prune(&mut entry.history, &self.config, now);
    }

    /// Ends every stream opened with this token (logout).
    pub fn close_token(&self, token: &TokenFingerprint) {
        let mut state = self.lock();
        for user in state.users.values_mut() {
            user.connections.retain(|c| &c.token != token);
        }
    }

    /// The distinct tokens that have open streams (to ask auth which were revoked).
    pub fn open_tokens(&self) -> Vec<TokenFingerprint> {
        let state = self.lock();
        let tokens: HashSet<TokenFingerprint> = state
            .users
            .values()
            .flat_map(|user| user.connections.iter().map(|c| c.token))
            .collect();
        tokens.into_iter().collect()
    }

    /// Ends every stream (shutdown: clients reconnect elsewhere with `Last-Event-ID`).
    pub fn close_all(&self) {
        for user in self.lock().users.values_mut() {
            user.connections.clear();
        }
    }

    /// Forgets the history of users without streams once it has expired.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        state.users.retain(|_, user| {
            prune(&mut user.history, &self.config, now);
            !user.connections.is_empty() || !user.history.is_empty()
        });
    }

    /// Open streams (for metrics and tests).
    pub fn open_streams(&self) -> usize {
        self.lock()
            .users
            .values()
            .map(|u| u.connections.len())
            .sum()
    }
}

fn prune(history: &mut VecDeque<(Instant, StreamEvent)>, config: &StreamConfig, now: Instant) {
    while history.len() > config.replay_max_events
        || history
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > config.replay_window)
    {
        history.pop_front();
    }
}

/// Signs stream tickets. Derived from the internal key with its own label, so tickets
/// and identity assertions can never be taken for one another; every replica derives
/// the same key and accepts the others' tickets.
#[derive(Clone)]
pub struct TicketKey([u8; 32]);

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey(***)")
    }
}

/// What a ticket stands for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ticket {
    /// The user.
    #[serde(rename = "u")]
    pub user: Uuid,
    /// Fingerprint (hex) of the token it was issued for, so logout ends its stream too.
    #[serde(rename = "t")]
    pub token: String,
    /// Expiry, seconds since the epoch.
    #[serde(rename = "e")]
    pub expires: u64,
    /// Makes every ticket unique, for single use.
    #[serde(rename = "n")]
    pub nonce: Uuid,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    #[error("the ticket is malformed or its signature is wrong")]
    Invalid,
    #[error("the ticket has expired; ask for a new one")]
    Expired,
    #[error("the ticket has already been used; ask for a new one")]
    Used,
}

type HmacSha256 = Hmac<Sha256>;

impl TicketKey {
    pub fn derive(secret: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"messenger gateway event-stream tickets\0");
        hasher.update(secret);
        Self(hasher.finalize().into())
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length")
    }

    /// A ticket for `user`'s stream, valid for `ttl`.
    pub fn issue(&self, user: Uuid, token: &TokenFingerprint, ttl: Duration) -> (String, u64) {
        let expires = unix_now() + ttl.as_secs().max(1);
        let ticket = Ticket {
            user,
            token: hex::encode(token),
            expires,
            nonce: Uuid::new_v4(),
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&ticket).unwrap_or_default());
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        (format!("{payload}.{signature}"), expires)
    }

    /// The ticket's content when its signature holds and it has not expired at `now`.
    pub fn verify(&self, text: &str, now: u64) -> Result<Ticket, TicketError> {
        let (payload, signature) = text.split_once('.').ok_or(TicketError::Invalid)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TicketError::Invalid)?;
        let mut mac = self.mac();
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TicketError::Invalid)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TicketError::Invalid)?;
        let ticket: Ticket = serde_json::from_slice(&bytes).map_err(|_| TicketError::Invalid)?;
        if ticket.expires <= now {
            return Err(TicketError::Expired);
        }
        Ok(ticket)
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Nonces of redeemed tickets until they expire: a ticket opens one stream only.
#[derive(Clone, Default)]
pub struct UsedTickets(Arc<Mutex<HashMap<Uuid, u64>>>);

impl UsedTickets {
    /// Marks the ticket used; `Err(Used)` when it already was.
    pub fn redeem(&self, ticket: &Ticket, now: u64) -> Result<(), TicketError> {
        let mut used = self.0.lock().unwrap_or_else(|p| p.into_inner());
        used.retain(|_, expires| *expires > now);
        if used.insert(ticket.nonce, ticket.expires).is_some() {
            return Err(TicketError::Used);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_proto::v1 as proto;

    fn event(payload: Payload) -> Event {
        Event {
            event_id: Uuid::now_v7().to_string(),
            occurred_at: None,
            payload: Some(payload),
        }
    }

    fn ids(n: usize) -> Vec<Uuid> {
        (0..n).map(|_| Uuid::new_v4()).collect()
    }

    fn recipients(event: &Event) -> Vec<(Uuid, &'static str)> {
        fan_out(event)
            .into_iter()
            .map(|(u, e)| (u, e.kind))
            .collect()
    }

    #[test]
    fn each_event_reaches_exactly_the_users_who_must_see_it() {
        let [a, b, c] = ids(3).try_into().unwrap();
        let sent = event(Payload::MessageSent(proto::MessageSent {
            chat_id: Uuid::new_v4().to_string(),
            message_id: "m1".into(),
            author_id: a.to_string(),
            participant_ids: vec![a.to_string(), b.to_string(), c.to_string()],
            content: "hello".into(),
            ..Default::default()
        }));
        assert_eq!(
            recipients(&sent),
            vec![(a, "message"), (b, "message"), (c, "message")]
        );
        let data: serde_json::Value = serde_json::from_str(&fan_out(&sent)[1].1.data).unwrap();
        assert_eq!(data["message"]["content"], "hello");

        let created = event(Payload::ChatCreated(proto::ChatCreated {
            chat_id: "c".into(),
            creator_id: a.to_string(),
            participant_ids: vec![a.to_string(), b.to_string()],
        }));
        assert_eq!(recipients(&created), vec![(b, "chat_created")]);

        let request = event(Payload::FriendRequestSent(proto::FriendRequestSent {
            from_user_id: a.to_string(),
            to_user_id: b.to_string(),
            from_nickname: "alice".into(),
            ..Default::default()
        }));
        assert_eq!(recipients(&request), vec![(b, "friend_request")]);

        let accepted = event(Payload::FriendRequestAccepted(
            proto::FriendRequestAccepted {
                from_user_id: a.to_string(),
                to_user_id: b.to_string(),
                ..Default::default()
            },
        ));
        assert_eq!(recipients(&accepted), vec![(a, "friend_request_accepted")]);

        let removed = event(Payload::FriendRemoved(proto::FriendRemoved {
            user_id: a.to_string(),
            friend_user_id: b.to_string(),
        }));
        assert!(recipients(&removed).is_empty());
    }

    fn config() -> StreamConfig {
        StreamConfig {
            max_streams_per_user: 2,
            connection_buffer: 2,
            replay_max_events: 3,
            ..StreamConfig::default()
        }
    }

    fn stream_event(id: &str) -> StreamEvent {
        StreamEvent {
            id: id.into(),
            kind: "message",
            data: Arc::from("{}"),
        }
    }

    #[tokio::test]
    async fn streams_get_live_events_and_reconnects_replay_what_they_missed() {
        let hub = StreamHub::new(config());
        let user = Uuid::new_v4();
        let token = token_fingerprint("t");
        let mut live = hub.subscribe(user, token, None).unwrap();
        assert_eq!(live.backlog, Backlog::None);
        hub.deliver(user, stream_event("1"));
        hub.deliver(user, stream_event("1")); // redelivered by Kafka: ignored
        hub.deliver(user, stream_event("2"));
        assert_eq!(live.events.recv().await.unwrap().id, "1");
        assert_eq!(live.events.recv().await.unwrap().id, "2");
        drop(live);

        let again = hub.subscribe(user, token, Some("1")).unwrap();
        assert_eq!(again.backlog, Backlog::Replay(vec![stream_event("2")]));
        drop(again);
        // Beyond the window (3 events kept), the client is told to refetch.
        for id in ["3", "4", "5"] {
            hub.deliver(user, stream_event(id));
        }
        let stale = hub.subscribe(user, token, Some("1")).unwrap();
        assert_eq!(stale.backlog, Backlog::Reset);
    }

    #[tokio::test]
    async fn a_user_has_a_bounded_number_of_streams_and_slow_readers_are_dropped() {
        let hub = StreamHub::new(config());
        let user = Uuid::new_v4();
        let token = token_fingerprint("t");
        let mut slow = hub.subscribe(user, token, None).unwrap();
        let _second = hub.subscribe(user, token, None).unwrap();
        assert_eq!(
            hub.subscribe(user, token, None).err(),
            Some(TooManyStreams(2))
        );
        for id in ["1", "2", "3"] {
            hub.deliver(user, stream_event(id));
        }
        // Buffer of 2: the third event closed the stream instead of queueing.
        assert_eq!(slow.events.recv().await.unwrap().id, "1");
        assert_eq!(slow.events.recv().await.unwrap().id, "2");
        assert!(slow.events.recv().await.is_none());
    }

    #[tokio::test]
    async fn logout_ends_only_that_tokens_streams() {
        let hub = StreamHub::new(config());
        let user = Uuid::new_v4();
        let (phone, laptop) = (token_fingerprint("phone"), token_fingerprint("laptop"));
        let mut on_phone = hub.subscribe(user, phone, None).unwrap();
        let mut on_laptop = hub.subscribe(user, laptop, None).unwrap();
        assert_eq!(hub.open_tokens().len(), 2);
        hub.close_token(&phone);
        assert!(on_phone.events.recv().await.is_none());
        assert_eq!(hub.open_tokens(), vec![laptop]);
        hub.deliver(user, stream_event("1"));
        assert_eq!(on_laptop.events.recv().await.unwrap().id, "1");
        drop(on_laptop);
        assert_eq!(hub.open_streams(), 0);
    }

    #[test]
    fn tickets_are_signed_expire_and_open_one_stream() {
        let key = TicketKey::derive(b"0123456789abcdef0123456789abcdef");
        let user = Uuid::new_v4();
        let (text, expires) = key.issue(user, &token_fingerprint("t"), Duration::from_secs(30));
        let now = unix_now();
        let ticket = key.verify(&text, now).unwrap();
        assert_eq!(ticket.user, user);
        assert_eq!(key.verify(&text, expires), Err(TicketError::Expired));

        let other = TicketKey::derive(b"another key of thirty-two bytes!!");
        assert_eq!(other.verify(&text, now), Err(TicketError::Invalid));
        // A ticket for someone else, re-signed without the key, fails.
        let (payload, signature) = text.split_once('.').unwrap();
        let mut forged: Ticket =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        forged.user = Uuid::new_v4();
        let forged = format!(
            "{}.{signature}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap())
        );
        assert_eq!(key.verify(&forged, now), Err(TicketError::Invalid));
        assert_eq!(key.verify("garbage", now), Err(TicketError::Invalid));

        let used = UsedTickets::default();
        assert_eq!(used.redeem(&ticket, now), Ok(()));
        assert_eq!(used.redeem(&ticket, now), Err(TicketError::Used));
    }
}
