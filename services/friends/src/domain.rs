//! The rules of the social graph, without IO.
//!
//! Every pair of users has at most one [`Friendship`] row, whatever its direction. A change
//! is a [`PairCommand`]; [`decide`] looks at the pair's current row and says what to write
//! and which event to publish, or why the command is refused. Both stores call `decide`
//! while holding the pair locked, so the rules live here once.

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

/// A friend as `GetFriendsList` shows it, before nicknames are filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FriendEntry {
    pub user_id: UserId,
    /// When they became friends.
    pub since: DateTime<Utc>,
}

/// The user's friends among `rows` (the rows involving the user), oldest friendship first.
pub fn friends_of(user: UserId, rows: &[Friendship]) -> Vec<FriendEntry> {
    let mut friends: Vec<FriendEntry> = rows
        .iter()
        .filter(|row| row.status == FriendshipStatus::Accepted && row.involves(user))
        .map(|row| FriendEntry {
            user_id: row.other_than(user),
            since: row.updated_at,
        })
        .collect();
    friends.sort_by(|a, b| a.since.cmp(&b.since).then(a.user_id.cmp(&b.user_id)));
    friends
}

/// Which pending requests a user lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Sent to the user.
    Incoming,
    /// Sent by the user.
    Outgoing,
}

/// The pending requests in `rows` sent to (`Incoming`) or by (`Outgoing`) `user`, newest first.
pub fn pending_requests(
    user: UserId,
    direction: Direction,
    rows: &[Friendship],
) -> Vec<Friendship> {
    let mut pending: Vec<Friendship> = rows
        .iter()
        .filter(|row| row.status == FriendshipStatus::Requested)
        .filter(|row| match direction {
            Direction::Incoming => row.addressee == user,
            Direction::Outgoing => row.requester == user,
        })
        .cloned()
        .collect();
    pending.sort_by_key(|row| std::cmp::Reverse(row.created_at));
    pending
}

/// The ids in `others` that are not friends of `user`, in the order asked, without
/// duplicates. The user's own id is never reported (nobody needs to befriend themselves to
/// be in their own chat).
pub fn not_friends(user: UserId, others: &[UserId], rows: &[Friendship]) -> Vec<UserId> {
    let friends: std::collections::HashSet<UserId> = friends_of(user, rows)
        .into_iter()
        .map(|f| f.user_id)
        .collect();
    let mut seen = std::collections::HashSet::new();
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
        assert_eq!(
            friends_of(a, &rows)
                .iter()
                .map(|f| f.user_id)
                .collect::<Vec<_>>(),
            vec![b]
        );
        assert_eq!(
            friends_of(b, &rows)
                .iter()
                .map(|f| f.user_id)
                .collect::<Vec<_>>(),
            vec![a]
        );
        assert!(friends_of(c, &rows).is_empty());
        assert_eq!(pending_requests(a, Direction::Incoming, &rows).len(), 1);
        assert!(pending_requests(a, Direction::Outgoing, &rows).is_empty());
        assert_eq!(pending_requests(c, Direction::Outgoing, &rows).len(), 1);
    }

    #[test]
    fn not_friends_keeps_order_drops_duplicates_and_self() {
        let (a, b) = users();
        let (c, d) = (
            UserId::from(Uuid::from_u128(3)),
            UserId::from(Uuid::from_u128(4)),
        );
        let rows = vec![
            row(a, b, FriendshipStatus::Accepted),
            row(a, c, FriendshipStatus::Requested),
        ];
        assert_eq!(not_friends(a, &[d, b, c, d, a], &rows), vec![d, c]);
        assert_eq!(not_friends(b, &[a], &rows), Vec::<UserId>::new());
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
