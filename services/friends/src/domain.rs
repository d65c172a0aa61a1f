//! The rules of the social graph, without IO.
//!
//! Every pair of users has at most one [`Friendship`] row, whatever its direction. A change
//! is a [`PairCommand`]; [`decide`] looks at the pair's current row and says what to write
//! and which event to publish, or why the command is refused. Both stores call `decide`
//! while holding the pair locked, so the rules live here once.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use messenger_proto::v1::{
    FriendRemoved, FriendRequestAccepted, FriendRequestRejected, FriendRequestSent, event,
};
use serde::{Deserialize, Serialize};

use crate::error::FriendsError;

/// A user: the one id type every service shares.
pub use messenger_common::ids::UserId;

/// Longest nickname we pass on to the users service; longer input is refused here.
pub use messenger_common::ids::{NICKNAME_MAX_CHARS, Nickname};
/// Most ids one `CheckFriendship` call may ask about (a group chat has at most 100).
pub const MAX_CHECKED_IDS: usize = 1000;
/// Page size of the friend list and the request lists when the request leaves `limit` at 0.
pub const DEFAULT_PAGE_LIMIT: usize = 50;
/// Largest page of the friend list or a request list.
pub const MAX_PAGE_LIMIT: usize = 100;

/// Limits on friend requests, so a stranger cannot bury someone in requests or ask again
/// and again after being turned down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestRules {
    /// Pending requests a user may have waiting for their answer
    /// (`FRIENDS_MAX_PENDING_REQUESTS`); a request beyond is refused to its sender.
    pub max_pending_incoming: u32,
    /// How long after a rejection its sender may not ask the same person again
    /// (`FRIENDS_REQUEST_COOLDOWN`). The person who said no may ask at any time.
    pub rejection_cooldown: Duration,
}

impl Default for RequestRules {
    fn default() -> Self {
        RequestRules {
            max_pending_incoming: 100,
            rejection_cooldown: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// Where a pair of users stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FriendshipStatus {
    /// `requester` asked `addressee`; no answer yet.
    Requested,
    /// They are friends (symmetric, whoever asked).
    Accepted,
    /// `addressee` said no; either of them may send a new request.
    Rejected,
}

impl FriendshipStatus {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            FriendshipStatus::Requested => "requested",
            FriendshipStatus::Accepted => "accepted",
            FriendshipStatus::Rejected => "rejected",
        }
    }

    /// Parses the name stored in the database.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "requested" => Some(FriendshipStatus::Requested),
            "accepted" => Some(FriendshipStatus::Accepted),
            "rejected" => Some(FriendshipStatus::Rejected),
            _ => None,
        }
    }
}

/// The one row per unordered pair of users.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Friendship {
    /// Who sent the latest request.
    pub requester: UserId,
    /// Who that request is addressed to.
    pub addressee: UserId,
    pub status: FriendshipStatus,
    /// When the latest request was sent.
    pub created_at: DateTime<Utc>,
    /// When the status last changed (for `Accepted`: when they became friends).
    pub updated_at: DateTime<Utc>,
}

impl Friendship {
    /// Whether `user` is one of the two people in this row.
    pub fn involves(&self, user: UserId) -> bool {
        self.requester == user || self.addressee == user
    }

    /// The person in this row who is not `user`.
    pub fn other_than(&self, user: UserId) -> UserId {
        if self.requester == user {
            self.addressee
        } else {
            self.requester
        }
    }
}

/// The pair key both stores use: the two ids in a fixed order, so A→B and B→A meet.
pub fn pair_key(a: UserId, b: UserId) -> (UserId, UserId) {
    if a <= b { (a, b) } else { (b, a) }
}

/// The Kafka key of every event about the pair: the same for A→B and B→A, so "request
/// sent", "accepted" and "removed" land on one partition and are consumed in order (keyed
/// by the acting user, a request and its acceptance could be consumed the other way round).
pub fn event_key(a: UserId, b: UserId) -> String {
    let (low, high) = pair_key(a, b);
    format!("{low}:{high}")
}

/// What a user wants to do about another user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairAction {
    SendRequest,
    AcceptRequest,
    RejectRequest,
    Remove,
}

/// `actor` wants `action` about `other`; never the same person (see [`PairCommand::new`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairCommand {
    actor: UserId,
    other: UserId,
    action: PairAction,
    /// Nicknames for the events (so a client can show "Ann wants to be friends" without
    /// asking the users service); empty when unknown.
    actor_nickname: String,
    other_nickname: String,
}

impl PairCommand {
    /// Refuses a command that names the actor as the other person.
    pub fn new(actor: UserId, other: UserId, action: PairAction) -> Result<Self, FriendsError> {
        if actor == other {
            return Err(FriendsError::SelfReference);
        }
        Ok(PairCommand {
            actor,
            other,
            action,
            actor_nickname: String::new(),
            other_nickname: String::new(),
        })
    }

    /// The command with the two users' nicknames, which its events carry.
    pub fn with_nicknames(mut self, actor: impl Into<String>, other: impl Into<String>) -> Self {
        self.actor_nickname = actor.into();
        self.other_nickname = other.into();
        self
    }

    /// The nickname given for `user` (one of the pair).
    fn nickname_of(&self, user: UserId) -> String {
        if user == self.actor {
            self.actor_nickname.clone()
        } else {
            self.other_nickname.clone()
        }
    }

    pub fn actor(&self) -> UserId {
        self.actor
    }

    pub fn other(&self) -> UserId {
        self.other
    }

    pub fn action(&self) -> PairAction {
        self.action
    }
}

/// What happened, as the caller of `SendFriendRequest` and friends sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new request is pending.
    Requested,
    /// The two are now friends.
    Accepted,
    /// The request was rejected.
    Rejected,
    /// The friendship ended.
    Removed,
}

/// The write a decision asks the store to make to the pair's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PairWrite {
    /// There was no row; create this one.
    Insert(Friendship),
    /// Replace the existing row with this one.
    Update(Friendship),
    /// Delete the row.
    Delete,
}

/// The result of [`decide`]: what to write, what to publish, what to tell the caller.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub write: PairWrite,
    /// Published on `topics::FRIENDS_EVENTS`, keyed by [`event_key`] of the pair.
    pub event: event::Payload,
    pub outcome: Outcome,
}

/// Applies the rules of the social graph to one pair.
///
/// Refusals: a request while the actor's own request is pending or when already friends →
/// `AlreadyExists`; accept/reject with no pending request from `other` → `NotFound`
/// (accepting when already friends → `AlreadyExists`); accept/reject of a request the actor
/// sent themselves → `PermissionDenied`; remove when not friends → `NotFound`.
pub fn decide(
    command: &PairCommand,
    current: Option<&Friendship>,
    now: DateTime<Utc>,
) -> Result<Decision, FriendsError> {
    use FriendshipStatus::{Accepted, Rejected, Requested};
    let (actor, other) = (command.actor, command.other);
    // The row, and whether the actor sent its (latest) request.
    let state = current.map(|row| (row, row.status, row.requester == actor));
    match command.action {
        PairAction::SendRequest => match state {
            None => Ok(new_request(command, now, PairWrite::Insert)),
            Some((_, Rejected, _)) => Ok(new_request(command, now, PairWrite::Update)),
            Some((_, Requested, true)) => Err(FriendsError::RequestAlreadyPending),
            // They asked first: asking them back is the same as saying yes.
            Some((pending, Requested, false)) => Ok(answer(command, pending, now, true)),
            Some((_, Accepted, _)) => Err(FriendsError::AlreadyFriends),
        },
        PairAction::AcceptRequest => match state {
            Some((pending, Requested, false)) => Ok(answer(command, pending, now, true)),
            Some((_, Requested, true)) => Err(FriendsError::NotTheAddressee),
            Some((_, Accepted, _)) => Err(FriendsError::AlreadyFriends),
            None | Some((_, Rejected, _)) => Err(FriendsError::NoPendingRequest),
        },
        PairAction::RejectRequest => match state {
            Some((pending, Requested, false)) => Ok(answer(command, pending, now, false)),
            Some((_, Requested, true)) => Err(FriendsError::NotTheAddressee),
            None | Some((_, Accepted | Rejected, _)) => Err(FriendsError::NoPendingRequest),
        },
        PairAction::Remove => match state {
            Some((_, Accepted, _)) => Ok(Decision {
                write: PairWrite::Delete,
                event: event::Payload::FriendRemoved(FriendRemoved {
                    user_id: actor.to_string(),
                    friend_user_id: other.to_string(),
                }),
                outcome: Outcome::Removed,
            }),
            _ => Err(FriendsError::NotFriends),
        },
    }
}

/// A fresh pending request from the actor to the other user, written with `write` (insert
/// for a new pair, update over a rejected one).
fn new_request(
    command: &PairCommand,
    now: DateTime<Utc>,
    write: fn(Friendship) -> PairWrite,
) -> Decision {
    let (actor, other) = (command.actor, command.other);
    Decision {
        write: write(Friendship {
            requester: actor,
            addressee: other,
            status: FriendshipStatus::Requested,
            created_at: now,
            updated_at: now,
        }),
        event: event::Payload::FriendRequestSent(FriendRequestSent {
            from_user_id: actor.to_string(),
            to_user_id: other.to_string(),
            from_nickname: command.actor_nickname.clone(),
            to_nickname: command.other_nickname.clone(),
        }),
        outcome: Outcome::Requested,
    }
}

/// The addressee (the command's actor) answers the `pending` request.
fn answer(
    command: &PairCommand,
    pending: &Friendship,
    now: DateTime<Utc>,
    accept: bool,
) -> Decision {
    let pending = pending.clone();
    let (from_nickname, to_nickname) = (
        command.nickname_of(pending.requester),
        command.nickname_of(pending.addressee),
    );
    let (from_user_id, to_user_id) = (pending.requester.to_string(), pending.addressee.to_string());
    let (status, event, outcome) = if accept {
        (
            FriendshipStatus::Accepted,
            event::Payload::FriendRequestAccepted(FriendRequestAccepted {
                from_user_id,
                to_user_id,
                from_nickname,
                to_nickname,
            }),
            Outcome::Accepted,
        )
    } else {
        (
            FriendshipStatus::Rejected,
            event::Payload::FriendRequestRejected(FriendRequestRejected {
                from_user_id,
                to_user_id,
            }),
            Outcome::Rejected,
        )
    };
    Decision {
        write: PairWrite::Update(Friendship {
            status,
            updated_at: now,
            ..pending
        }),
        event,
        outcome,
    }
}

/// The current time at the precision PostgreSQL keeps (microseconds), so both stores
/// return the same timestamps.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Whether a decision that sends a new request (outcome [`Outcome::Requested`]) may go
/// ahead under `rules`: the actor is not waiting out a cooldown after the other person
/// rejected their last request (`current` is the pair's row before the decision), and the
/// other person has fewer than the maximum pending requests (`pending_to_other`, counted
/// while the store holds the other person's requests locked). Other decisions always may.
pub fn admit_request(
    command: &PairCommand,
    decision: &Decision,
    current: Option<&Friendship>,
    rules: &RequestRules,
    pending_to_other: u32,
    now: DateTime<Utc>,
) -> Result<(), FriendsError> {
    if decision.outcome != Outcome::Requested {
        return Ok(());
    }
    if let Some(row) = current
        && row.status == FriendshipStatus::Rejected
        && row.requester == command.actor
    {
        let cooldown =
            chrono::Duration::from_std(rules.rejection_cooldown).unwrap_or(chrono::Duration::MAX);
        let until = row.updated_at.checked_add_signed(cooldown);
        if let Some(until) = until
            && now < until
        {
            return Err(FriendsError::RequestCooldown {
                until,
                retry_after: (until - now).to_std().unwrap_or_default(),
            });
        }
    }
    if pending_to_other >= rules.max_pending_incoming {
        return Err(FriendsError::TooManyPendingRequests {
            max: rules.max_pending_incoming,
        });
    }
    Ok(())
}

/// The page size a list request asks for: 0 means [`DEFAULT_PAGE_LIMIT`], else 1..=100.
pub fn page_limit(limit: u32) -> Result<usize, FriendsError> {
    match usize::try_from(limit) {
        Ok(0) => Ok(DEFAULT_PAGE_LIMIT),
        Ok(n) if n <= MAX_PAGE_LIMIT => Ok(n),
        _ => Err(FriendsError::InvalidArgument(format!(
            "limit must be between 1 and {MAX_PAGE_LIMIT} (0 for the default {DEFAULT_PAGE_LIMIT}), got {limit}"
        ))),
    }
}

/// Where a page of a list ends: the sort key of its last entry. The friend list sorts by
/// (when the friendship began, friend's id) ascending; the request lists by (when the
/// request was sent, other person's id) descending. The next page starts strictly after
/// it, so an entry added or changed while a client pages is never listed twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListCursor {
    pub at: DateTime<Utc>,
    pub user: UserId,
}

impl ListCursor {
    /// The key of `row` as `user`'s list sorts it, taking the time from `at`.
    fn of(user: UserId, row: &Friendship, at: DateTime<Utc>) -> Self {
        ListCursor {
            at,
            user: row.other_than(user),
        }
    }

    /// The cursor after `row` in `user`'s friend list.
    pub fn after_friend(user: UserId, row: &Friendship) -> Self {
        Self::of(user, row, row.updated_at)
    }

    /// The cursor after `row` in one of `user`'s request lists.
    pub fn after_request(user: UserId, row: &Friendship) -> Self {
        Self::of(user, row, row.created_at)
    }

    /// `<unix microseconds>_<user id>`: opaque to clients.
    pub fn encode(&self) -> String {
        format!("{}_{}", self.at.timestamp_micros(), self.user)
    }

    /// Reads a cursor from a request: empty is the first page.
    pub fn parse(raw: &str) -> Result<Option<Self>, FriendsError> {
        if raw.is_empty() {
            return Ok(None);
        }
        let invalid = || {
            FriendsError::InvalidArgument(format!(
                "cursor: {} is not a cursor this service issued",
                messenger_common::ids::excerpt(raw)
            ))
        };
        let (micros, user) = raw.split_once('_').ok_or_else(invalid)?;
        let at = micros
            .parse::<i64>()
            .ok()
            .and_then(DateTime::from_timestamp_micros)
            .ok_or_else(invalid)?;
        let user = UserId::parse("cursor", user).map_err(|_| invalid())?;
        Ok(Some(ListCursor { at, user }))
    }
}

/// Up to `limit` of `user`'s friendships (accepted rows among `rows`), oldest first,
/// after `after`.
pub fn friends_page<'a>(
    user: UserId,
    rows: impl IntoIterator<Item = &'a Friendship>,
    after: Option<&ListCursor>,
    limit: usize,
) -> Vec<Friendship> {
    let key = |row: &Friendship| (row.updated_at, row.other_than(user));
    let mut page: Vec<Friendship> = rows
        .into_iter()
        .filter(|row| row.status == FriendshipStatus::Accepted && row.involves(user))
        .filter(|row| after.is_none_or(|after| key(row) > (after.at, after.user)))
        .cloned()
        .collect();
    page.sort_by_key(key);
    page.truncate(limit);
    page
}

/// Up to `limit` of the pending requests among `rows` sent to (`Incoming`) or by
/// (`Outgoing`) `user`, newest first, after `after`.
pub fn pending_page<'a>(
    user: UserId,
    direction: Direction,
    rows: impl IntoIterator<Item = &'a Friendship>,
    after: Option<&ListCursor>,
    limit: usize,
) -> Vec<Friendship> {
    let key = |row: &Friendship| (row.created_at, row.other_than(user));
    let mut page: Vec<Friendship> = rows
        .into_iter()
        .filter(|row| row.status == FriendshipStatus::Requested)
        .filter(|row| match direction {
            Direction::Incoming => row.addressee == user,
            Direction::Outgoing => row.requester == user,
        })
        .filter(|row| after.is_none_or(|after| key(row) < (after.at, after.user)))
        .cloned()
        .collect();
    page.sort_by_key(|row| std::cmp::Reverse(key(row)));
    page.truncate(limit);
    page
}

/// A friend as `GetFriendsList` shows it, before nicknames are filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FriendEntry {
    pub user_id: UserId,
    /// When they became friends.
    pub since: DateTime<Utc>,
}

/// The friends of `user` in a page of rows from [`friends_page`] (or a store's), in order.
pub fn friend_entries(user: UserId, rows: &[Friendship]) -> Vec<FriendEntry> {
    rows.iter()
        .map(|row| FriendEntry {
            user_id: row.other_than(user),
            since: row.updated_at,
        })
        .collect()
}

/// Which pending requests a user lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Sent to the user.
    Incoming,
    /// Sent by the user.
    Outgoing,
}

/// The ids in `others` that are not among `friends` (the user's friends among them), in
/// the order asked, without duplicates. The user's own id is never reported (nobody needs
/// to befriend themselves to be in their own chat).
pub fn not_friends(user: UserId, others: &[UserId], friends: &HashSet<UserId>) -> Vec<UserId> {
    let mut seen = HashSet::new();
    others
        .iter()
        .copied()
        .filter(|id| *id != user && !friends.contains(id) && seen.insert(*id))
        .collect()
}

/// Trims a nickname from a request and checks it follows the one nickname rule every
/// service shares (so a nickname that can never exist is refused here, not by users).
pub fn parse_nickname(raw: &str) -> Result<Nickname, FriendsError> {
    Nickname::parse(raw.trim()).map_err(|error| FriendsError::InvalidArgument(error.to_string()))
}

/// Parses a user id from a request; `field` names it in the error.
pub fn parse_user_id(field: &'static str, raw: &str) -> Result<UserId, FriendsError> {
    UserId::parse(field, raw).map_err(|error| FriendsError::InvalidArgument(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn users() -> (UserId, UserId) {
        (Uuid::from_u128(1).into(), Uuid::from_u128(2).into())
    }

    fn row(requester: UserId, addressee: UserId, status: FriendshipStatus) -> Friendship {
        let then = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        Friendship {
            requester,
            addressee,
            status,
            created_at: then,
            updated_at: then,
        }
    }

    /// (action by A about B, requester of the current row (Some(true) = A), status,
    /// expected outcome or error name)
    #[test]
    fn decide_follows_the_rules_for_every_state() {
        use FriendshipStatus::*;
        use PairAction::*;
        type Case = (
            PairAction,
            Option<(bool, FriendshipStatus)>,
            Result<Outcome, &'static str>,
        );
        let cases: &[Case] = &[
            (SendRequest, None, Ok(Outcome::Requested)),
            (
                SendRequest,
                Some((true, Requested)),
                Err("RequestAlreadyPending"),
            ),
            (SendRequest, Some((false, Requested)), Ok(Outcome::Accepted)),
            (SendRequest, Some((true, Accepted)), Err("AlreadyFriends")),
            (SendRequest, Some((false, Accepted)), Err("AlreadyFriends")),
            (SendRequest, Some((true, Rejected)), Ok(Outcome::Requested)),
            (SendRequest, Some((false, Rejected)), Ok(Outcome::Requested)),
            (AcceptRequest, None, Err("NoPendingRequest")),
            (
                AcceptRequest,
                Some((false, Requested)),
                Ok(Outcome::Accepted),
            ),
            (
                AcceptRequest,
                Some((true, Requested)),
                Err("NotTheAddressee"),
            ),
            (
                AcceptRequest,
                Some((false, Accepted)),
                Err("AlreadyFriends"),
            ),
            (
                AcceptRequest,
                Some((false, Rejected)),
                Err("NoPendingRequest"),
            ),
            (RejectRequest, None, Err("NoPendingRequest")),
            (
                RejectRequest,
                Some((false, Requested)),
                Ok(Outcome::Rejected),
            ),
            (
                RejectRequest,
                Some((true, Requested)),
                Err("NotTheAddressee"),
            ),
            (
                RejectRequest,
                Some((true, Accepted)),
                Err("NoPendingRequest"),
            ),
            (
                RejectRequest,
                Some((false, Rejected)),
                Err("NoPendingRequest"),
            ),
            (Remove, None, Err("NotFriends")),
            (Remove, Some((true, Requested)), Err("NotFriends")),
            (Remove, Some((false, Requested)), Err("NotFriends")),
            (Remove, Some((true, Accepted)), Ok(Outcome::Removed)),
            (Remove, Some((false, Accepted)), Ok(Outcome::Removed)),
            (Remove, Some((false, Rejected)), Err("NotFriends")),
        ];
        let (a, b) = users();
        let now = Utc::now();
        for (action, state, expected) in cases {
            let current = state.map(|(by_actor, status)| {
                if by_actor {
                    row(a, b, status)
                } else {
                    row(b, a, status)
                }
            });
            let command = PairCommand::new(a, b, *action).unwrap();
            let got = decide(&command, current.as_ref(), now);
            match (expected, got) {
                (Ok(outcome), Ok(decision)) => {
                    assert_eq!(decision.outcome, *outcome, "{action:?} on {state:?}")
                }
                (Err(name), Err(error)) => {
                    assert_eq!(&format!("{error:?}"), name, "{action:?} on {state:?}")
                }
                (expected, got) => {
                    panic!("{action:?} on {state:?}: expected {expected:?}, got {got:?}")
                }
            }
        }
    }

    #[test]
    fn a_new_request_is_written_with_its_event() {
        let (a, b) = users();
        let now = Utc::now();
        let command = PairCommand::new(a, b, PairAction::SendRequest)
            .unwrap()
            .with_nicknames("ann", "bob");
        let decision = decide(&command, None, now).unwrap();
        assert_eq!(
            decision.write,
            PairWrite::Insert(Friendship {
                requester: a,
                addressee: b,
                status: FriendshipStatus::Requested,
                created_at: now,
                updated_at: now,
            })
        );
        assert_eq!(
            decision.event,
            event::Payload::FriendRequestSent(FriendRequestSent {
                from_user_id: a.to_string(),
                to_user_id: b.to_string(),
                from_nickname: "ann".into(),
                to_nickname: "bob".into(),
            })
        );
    }

    #[test]
    fn asking_back_accepts_the_other_request_and_names_its_sender() {
        let (a, b) = users();
        let now = Utc::now();
        let pending = row(b, a, FriendshipStatus::Requested);
        let command = PairCommand::new(a, b, PairAction::SendRequest)
            .unwrap()
            .with_nicknames("ann", "bob");
        let decision = decide(&command, Some(&pending), now).unwrap();
        assert_eq!(
            decision.write,
            PairWrite::Update(Friendship {
                status: FriendshipStatus::Accepted,
                updated_at: now,
                ..pending.clone()
            })
        );
        assert_eq!(
            decision.event,
            event::Payload::FriendRequestAccepted(FriendRequestAccepted {
                from_user_id: b.to_string(),
                to_user_id: a.to_string(),
                from_nickname: "bob".into(),
                to_nickname: "ann".into(),
            })
        );
    }

    #[test]
    fn a_rejected_request_can_be_sent_again_by_either_side() {
        let (a, b) = users();
        let now = Utc::now();
        let rejected = row(a, b, FriendshipStatus::Rejected);
        for (actor, other) in [(a, b), (b, a)] {
            let command = PairCommand::new(actor, other, PairAction::SendRequest).unwrap();
            let decision = decide(&command, Some(&rejected), now).unwrap();
            let PairWrite::Update(new_row) = decision.write else {
                panic!("expected an update, got {:?}", decision.write)
            };
            assert_eq!(
                (new_row.requester, new_row.status),
                (actor, FriendshipStatus::Requested)
            );
            assert_eq!(new_row.created_at, now);
        }
    }

    #[test]
    fn commands_about_yourself_are_refused() {
        let (a, _) = users();
        for action in [
            PairAction::SendRequest,
            PairAction::AcceptRequest,
            PairAction::RejectRequest,
            PairAction::Remove,
        ] {
            assert!(matches!(
                PairCommand::new(a, a, action),
                Err(FriendsError::SelfReference)
            ));
        }
    }

    #[test]
    fn reads_are_symmetric() {
        let (a, b) = users();
        let c = UserId::from(Uuid::from_u128(3));
        let rows = vec![
            row(a, b, FriendshipStatus::Accepted),
            row(c, a, FriendshipStatus::Requested),
        ];
        let friends = |user| {
            friend_entries(user, &friends_page(user, &rows, None, 10))
                .iter()
                .map(|f| f.user_id)
                .collect::<Vec<_>>()
        };
        assert_eq!(friends(a), vec![b]);
        assert_eq!(friends(b), vec![a]);
        assert!(friends(c).is_empty());
        let pending = |user, direction| pending_page(user, direction, &rows, None, 10).len();
        assert_eq!(pending(a, Direction::Incoming), 1);
        assert_eq!(pending(a, Direction::Outgoing), 0);
        assert_eq!(pending(c, Direction::Outgoing), 1);
    }

    /// A row between `a` and `other` sent `created` seconds and answered `updated` seconds
    /// after a fixed time.
    fn timed(
        a: UserId,
        other: u128,
        status: FriendshipStatus,
        created: i64,
        updated: i64,
    ) -> Friendship {
        let at = |s| DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap();
        Friendship {
            created_at: at(created),
            updated_at: at(updated),
            ..row(UserId::from(Uuid::from_u128(other)), a, status)
        }
    }

    #[test]
    fn pages_walk_a_list_once_in_order_from_cursor_to_cursor() {
        use FriendshipStatus::*;
        let (a, _) = users();
        // Friends since 5, 5 (ids 11 < 12), 7, 9; requests sent at 3, 8, 8 (ids 21 < 22).
        let rows = vec![
            timed(a, 12, Accepted, 0, 5),
            timed(a, 14, Accepted, 0, 9),
            timed(a, 11, Accepted, 0, 5),
            timed(a, 13, Accepted, 0, 7),
            timed(a, 21, Requested, 8, 8),
            timed(a, 20, Requested, 3, 3),
            timed(a, 22, Requested, 8, 8),
            timed(a, 30, Rejected, 1, 1),
        ];
        let other = |row: &Friendship| row.other_than(a).as_uuid().as_u128();
        let walk = |page: &dyn Fn(Option<&ListCursor>) -> Vec<Friendship>,
                    cursor_of: fn(UserId, &Friendship) -> ListCursor| {
            let (mut pages, mut cursor) = (Vec::new(), None);
            loop {
                let rows = page(cursor.as_ref());
                if rows.is_empty() {
                    return pages;
                }
                cursor = Some(cursor_of(a, rows.last().unwrap()));
                pages.push(rows.iter().map(other).collect::<Vec<_>>());
            }
        };
        let friends = walk(
            &|after| friends_page(a, &rows, after, 3),
            ListCursor::after_friend,
        );
        assert_eq!(friends, vec![vec![11, 12, 13], vec![14]]);
        let incoming = walk(
            &|after| pending_page(a, Direction::Incoming, &rows, after, 2),
            ListCursor::after_request,
        );
        assert_eq!(incoming, vec![vec![22, 21], vec![20]]);
        let outgoing = pending_page(a, Direction::Outgoing, &rows, None, 10);
        assert!(outgoing.is_empty());
    }

    #[test]
    fn cursors_round_trip_and_foreign_text_is_refused() {
        let cursor = ListCursor {
            at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            user: Uuid::from_u128(77).into(),
        };
        assert_eq!(ListCursor::parse(&cursor.encode()).unwrap(), Some(cursor));
        assert_eq!(ListCursor::parse("").unwrap(), None);
        for junk in [
            "page2",
            "12_",
            "_00000000-0000-0000-0000-000000000001",
            "x_00000000-0000-0000-0000-000000000001",
            &"9".repeat(100_000),
        ] {
            let error = ListCursor::parse(junk).unwrap_err().to_string();
            assert!(error.starts_with("cursor: "), "{error}");
            assert!(error.len() < 300, "{}", error.len());
        }
    }

    #[test]
    fn page_limits_default_to_50_and_allow_1_to_100() {
        for (limit, expected) in [(0, Some(50)), (1, Some(1)), (100, Some(100)), (101, None)] {
            assert_eq!(page_limit(limit).ok(), expected, "{limit}");
        }
    }

    /// (row before the request: (sent by the actor?, status, seconds since its last change),
    /// pending requests to the other person, expected refusal)
    #[test]
    fn new_requests_are_admitted_within_the_cooldown_and_the_pending_cap() {
        use FriendshipStatus::*;
        let rules = RequestRules {
            max_pending_incoming: 3,
            rejection_cooldown: Duration::from_secs(3600),
        };
        let (a, b) = users();
        let now = DateTime::from_timestamp(1_700_100_000, 0).unwrap();
        type Case = (
            Option<(bool, FriendshipStatus, i64)>,
            u32,
            Option<&'static str>,
        );
        let cases: &[Case] = &[
            (None, 0, None),
            (None, 2, None),
            (None, 3, Some("TooManyPendingRequests")),
            // Turned down a minute ago: wait; an hour ago: ask again.
            (Some((true, Rejected, 60)), 0, Some("RequestCooldown")),
            (Some((true, Rejected, 3599)), 0, Some("RequestCooldown")),
            (Some((true, Rejected, 3600)), 0, None),
            // The one who said no may change their mind at once.
            (Some((false, Rejected, 60)), 0, None),
            (
                Some((false, Rejected, 60)),
                3,
                Some("TooManyPendingRequests"),
            ),
            // Asking back someone who asked you accepts: no limit applies.
            (Some((false, Requested, 60)), 3, None),
        ];
        for (state, pending, expected) in cases {
            let current = state.map(|(by_actor, status, ago)| {
                let (requester, addressee) = if by_actor { (a, b) } else { (b, a) };
                let then = now - chrono::Duration::seconds(ago);
                Friendship {
                    created_at: then,
                    updated_at: then,
                    ..row(requester, addressee, status)
                }
            });
            let command = PairCommand::new(a, b, PairAction::SendRequest).unwrap();
            let decision = decide(&command, current.as_ref(), now).unwrap();
            let admitted =
                admit_request(&command, &decision, current.as_ref(), &rules, *pending, now);
            let refusal = admitted.err().map(|error| {
                let name = format!("{error:?}");
                name.split([' ', '{']).next().unwrap().to_owned()
            });
            assert_eq!(
                refusal.as_deref(),
                *expected,
                "{state:?} with {pending} pending"
            );
        }
        // The refusal says when asking again is possible.
        let rejected = Friendship {
            updated_at: now - chrono::Duration::seconds(600),
            ..row(a, b, Rejected)
        };
        let command = PairCommand::new(a, b, PairAction::SendRequest).unwrap();
        let decision = decide(&command, Some(&rejected), now).unwrap();
        match admit_request(&command, &decision, Some(&rejected), &rules, 0, now) {
            Err(FriendsError::RequestCooldown { until, retry_after }) => {
                assert_eq!(retry_after, Duration::from_secs(3000));
                assert_eq!(until, now + chrono::Duration::seconds(3000));
            }
            other => panic!("expected a cooldown, got {other:?}"),
        }
    }

    #[test]
    fn not_friends_keeps_order_drops_duplicates_and_self() {
        let (a, b) = users();
        let (c, d) = (
            UserId::from(Uuid::from_u128(3)),
            UserId::from(Uuid::from_u128(4)),
        );
        let friends_of_a: HashSet<UserId> = [b].into();
        assert_eq!(not_friends(a, &[d, b, c, d, a], &friends_of_a), vec![d, c]);
        assert_eq!(not_friends(b, &[a], &[a].into()), Vec::<UserId>::new());
    }

    #[test]
    fn request_fields_are_validated() {
        assert!(parse_nickname("  Alice ").is_ok_and(|n| n.as_str() == "alice"));
        assert!(parse_nickname("   ").is_err());
        // The users service never accepts a nickname over 32 characters: neither do we
        // (this was 64 here, so such a request reached users only to fail there).
        let error = parse_nickname(&"x".repeat(NICKNAME_MAX_CHARS + 1)).unwrap_err();
        assert!(error.to_string().contains("3-32 characters"), "{error}");
        assert!(parse_nickname(&"x".repeat(40)).is_err());
        assert!(parse_user_id("user_id", "").is_err());
        assert!(parse_user_id("user_id", "not-a-uuid").is_err());
        assert!(parse_user_id("user_id", &Uuid::from_u128(9).to_string()).is_ok());
    }
}
