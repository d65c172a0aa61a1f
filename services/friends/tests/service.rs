//! The friends service over gRPC on real PostgreSQL and Redis: every rule of issue 3,
//! refusals leaving state unchanged, and lists correct on both sides right after each
//! change (the cache is invalidated for both users).

mod support;

use std::time::Duration;

use messenger_common::identity::{self, Caller, IDENTITY_METADATA, InternalKey};
use messenger_common::testing;
use messenger_proto::v1::SendFriendRequestRequest;
use messenger_proto::v1::{
    CheckFriendshipRequest, FriendshipStatus, GetFriendsListRequest, ListFriendRequestsRequest,
    RequestDirection,
};
use support::{TestService, View, assert_code, friend, request};
use tonic::Code;

fn empty() -> View {
    View {
        friends: vec![],
        incoming: vec![],
        outgoing: vec![],
    }
}

#[tokio::test]
async fn request_accept_list_remove_cycle_is_seen_by_both_sides() {
    let service = TestService::start().await;
    let alice = service.person("alice");
    let bob = service.person("bob");
    // Read first, so both users' lists are cached before every change below.
    assert_eq!(
        service.snapshot(&[&alice, &bob]).await,
        vec![empty(), empty()]
    );

    assert_eq!(
        service.send(&alice, &bob.nickname).await.unwrap(),
        FriendshipStatus::Requested
    );
    assert_eq!(
        service.snapshot(&[&alice, &bob]).await,
        vec![
            View {
                outgoing: vec![request(&alice, &bob)],
                ..empty()
            },
            View {
                incoming: vec![request(&alice, &bob)],
                ..empty()
            },
        ]
    );
    assert_eq!(service.not_friends(&alice, &[&bob]).await, vec![bob.id()]);

    service.accept(&bob, &alice.nickname).await.unwrap();
    assert_eq!(
        service.snapshot(&[&alice, &bob]).await,
        vec![
            View {
                friends: vec![friend(&bob)],
                ..empty()
            },
            View {
                friends: vec![friend(&alice)],
                ..empty()
            },
        ]
    );
    assert!(service.not_friends(&alice, &[&bob]).await.is_empty());
    assert!(service.not_friends(&bob, &[&alice]).await.is_empty());

    // Nicknames match case-insensitively, as the users service matches them.
    service
        .remove(&bob, &alice.nickname.to_uppercase())
        .await
        .unwrap();
    assert_eq!(
        service.snapshot(&[&alice, &bob]).await,
        vec![empty(), empty()]
    );
    assert_eq!(service.not_friends(&bob, &[&alice]).await, vec![alice.id()]);
    assert_eq!(service.rows_between(&alice, &bob).await, 0);

    // Removing again: not friends any more.
    assert_code(service.remove(&alice, &bob.nickname).await, Code::NotFound);
    service.stop().await;
}

#[tokio::test]
async fn friend_list_carries_the_friendship_date() {
    let service = TestService::start().await;
    let (alice, bob) = (service.person("alice"), service.person("bob"));
    let before = std::time::SystemTime::now();
    service.send(&alice, &bob.nickname).await.unwrap();
    service.accept(&bob, &alice.nickname).await.unwrap();
    let friends = service
        .client
        .clone()
        .get_friends_list(testing::as_user(
            alice.id(),
            GetFriendsListRequest {
                user_id: alice.id(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .friends;
    let since = friends[0].since.expect("since is set");
    let since =
        std::time::UNIX_EPOCH + std::time::Duration::new(since.seconds as u64, since.nanos as u32);
    assert!(
        since + std::time::Duration::from_millis(1) >= before,
        "{since:?} < {before:?}"
    );
    service.stop().await;
}

#[tokio::test]
async fn crossing_requests_make_one_friendship() {
    let service = TestService::start().await;
    let (alice, bob) = (service.person("alice"), service.person("bob"));
    assert_eq!(
        service.send(&alice, &bob.nickname).await.unwrap(),
        FriendshipStatus::Requested
    );
    // Bob asks back instead of accepting: that accepts Alice's request.
    assert_eq!(
        service.send(&bob, &alice.nickname).await.unwrap(),
        FriendshipStatus::Accepted
    );
    assert_eq!(
        service.snapshot(&[&alice, &bob]).await,
        vec![
            View {
                friends: vec![friend(&bob)],
                ..empty()
            },
            View {
                friends: vec![friend(&alice)],
                ..empty()
            },
        ]
    );
    assert_eq!(service.rows_between(&alice, &bob).await, 1);
    // Once friends, another request is refused.
    assert_code(
        service.send(&alice, &bob.nickname).await,
        Code::AlreadyExists,
    );
    assert_code(
        service.accept(&alice, &bob.nickname).await,
        Code::AlreadyExists,
    );
    service.stop().await;
}

#[tokio::test]
async fn concurrent_opposite_requests_end_as_one_friendship() {
    let service = TestService::start().await;
    let pairs: Vec<_> = (0..12)
        .map(|i| {
            (
                service.person(&format!("left{i}")),
                service.person(&format!("right{i}")),
            )
        })
        .collect();
    let mut tasks = Vec::new();
    for (left, right) in &pairs {
        for (from, to) in [(left.clone(), right.clone()), (right.clone(), left.clone())] {
            let client = service.client.clone();
            tasks.push(tokio::spawn(async move {
                client
                    .clone()
                    .send_friend_request(testing::as_user(
                        from.id(),
                        messenger_proto::v1::SendFriendRequestRequest {
                            user_id: from.id(),
                            nickname: to.nickname.clone(),
                        },
                    ))
                    .await
                    .map(|response| response.into_inner().status())
            }));
        }
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(
            task.await
                .unwrap()
                .expect("neither side of a crossing request fails"),
        );
    }
    for (index, (left, right)) in pairs.iter().enumerate() {
        let mut pair = [statuses[2 * index], statuses[2 * index + 1]];
        pair.sort_by_key(|status| *status as i32);
        assert_eq!(
            pair,
            [FriendshipStatus::Requested, FriendshipStatus::Accepted],
            "pair {index}"
        );
        assert_eq!(service.rows_between(left, right).await, 1, "pair {index}");
        assert_eq!(service.friends(left).await, vec![friend(right)]);
        assert_eq!(service.friends(right).await, vec![friend(left)]);
    }
    service.stop().await;
}

#[tokio::test]
async fn requests_about_yourself_are_invalid_and_change_nothing() {
    let service = TestService::start().await;
    let alice = service.person("alice");
    let before = service.snapshot(&[&alice]).await;
    assert_code(
        service.send(&alice, &alice.nickname).await,
        Code::InvalidArgument,
    );
    assert_code(
        service.accept(&alice, &alice.nickname).await,
        Code::InvalidArgument,
    );
    assert_code(
        service.reject(&alice, &alice.nickname).await,
        Code::InvalidArgument,
    );
    assert_code(
        service.remove(&alice, &alice.nickname).await,
        Code::InvalidArgument,
    );
    assert_eq!(service.snapshot(&[&alice]).await, before);
    service.stop().await;
}

#[tokio::test]
async fn unknown_nickname_is_not_found_and_changes_nothing() {
    let service = TestService::start().await;
    let alice = service.person("alice");
    let before = service.snapshot(&[&alice]).await;
    assert_code(
        service.send(&alice, "nobody_by_this_name").await,
        Code::NotFound,
    );
    assert_code(
        service.accept(&alice, "nobody_by_this_name").await,
        Code::NotFound,
    );
    assert_eq!(service.snapshot(&[&alice]).await, before);
    service.stop().await;
}

#[tokio::test]
async fn a_second_request_while_one_is_pending_already_exists() {
    let service = TestService::start().await;
    let (alice, bob) = (service.person("alice"), service.person("bob"));
    service.send(&alice, &bob.nickname).await.unwrap();
    let before = service.snapshot(&[&alice, &bob]).await;
    assert_code(
        service.send(&alice, &bob.nickname).await,
        Code::AlreadyExists,
    );
    assert_eq!(service.snapshot(&[&alice, &bob]).await, before);
    service.stop().await;
}

#[tokio::test]
async fn only_the_addressee_may_accept_or_reject() {
    let service = TestService::start().await;
    let (alice, bob, carol) = (
        service.person("alice"),
        service.person("bob"),
        service.person("carol"),
    );
    service.send(&alice, &bob.nickname).await.unwrap();
    let before = service.snapshot(&[&alice, &bob, &carol]).await;

    // The sender cannot answer their own request.
    assert_code(
        service.accept(&alice, &bob.nickname).await,
        Code::PermissionDenied,
    );
    assert_code(
        service.reject(&alice, &bob.nickname).await,
        Code::PermissionDenied,
    );
    // Someone else has no request from Alice to answer.
    assert_code(
        service.accept(&carol, &alice.nickname).await,
        Code::NotFound,
    );
    assert_code(
        service.reject(&carol, &alice.nickname).await,
        Code::NotFound,
    );
    // Nor is there a request from Bob to Alice.
    assert_code(service.remove(&alice, &bob.nickname).await, Code::NotFound);

    assert_eq!(service.snapshot(&[&alice, &bob, &carol]).await, before);
    // The addressee still can.
    service.accept(&bob, &alice.nickname).await.unwrap();
    assert_eq!(service.friends(&alice).await, vec![friend(&bob)]);
    service.stop().await;
}

#[tokio::test]
async fn a_rejected_request_can_be_sent_again_once_the_cooldown_is_over() {
    // No cooldown here: `a_rejected_sender_waits_out_the_cooldown` covers it.
    let service = TestService::start_with(testing::kafka_brokers(), |config| {
        config.request_rules.rejection_cooldown = Duration::ZERO;
    })
    .await;
    let (alice, bob) = (service.person("alice"), service.person("bob"));
    service.send(&alice, &bob.nickname).await.unwrap();
    service.reject(&bob, &alice.nickname).await.unwrap();
    assert_eq!(
        service.snapshot(&[&alice, &bob]).await,
        vec![empty(), empty()]
    );
    // Nothing pending any more: answering again is NotFound.
    assert_code(service.reject(&bob, &alice.nickname).await, Code::NotFound);
    assert_code(service.accept(&bob, &alice.nickname).await, Code::NotFound);

    assert_eq!(
        service.send(&alice, &bob.nickname).await.unwrap(),
        FriendshipStatus::Requested
    );
    assert_eq!(
        service.requests(&bob, RequestDirection::Incoming).await,
        vec![request(&alice, &bob)]
    );
    service.accept(&bob, &alice.nickname).await.unwrap();
    assert_eq!(service.friends(&bob).await, vec![friend(&alice)]);
    assert_eq!(service.rows_between(&alice, &bob).await, 1);
    service.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_invalid_and_change_nothing() {
    let service = TestService::start().await;
    let (alice, bob) = (service.person("alice"), service.person("bob"));
    let mut client = service.client.clone();

    let bad_user = client
        .send_friend_request(testing::as_user(
            alice.id(),
            messenger_proto::v1::SendFriendRequestRequest {
                user_id: "not-a-uuid".into(),
                nickname: bob.nickname.clone(),
            },
        ))
        .await;
    // A user id that is not the caller's names someone the caller cannot act for.
    assert_code(bad_user, Code::Unauthenticated);
    assert_code(service.send(&alice, "   ").await, Code::InvalidArgument);
    assert_code(
        service.send(&alice, &"x".repeat(65)).await,
        Code::InvalidArgument,
    );
    let no_direction = client
        .list_friend_requests(testing::as_user(
            alice.id(),
            ListFriendRequestsRequest {
                user_id: alice.id(),
                direction: RequestDirection::Unspecified.into(),
                ..Default::default()
            },
        ))
        .await;
    assert_code(no_direction, Code::InvalidArgument);
    let bad_other = client
        .check_friendship(testing::as_user(
            alice.id(),
            CheckFriendshipRequest {
                user_id: alice.id(),
                other_user_ids: vec![bob.id(), "nope".into()],
            },
        ))
        .await;
    assert_code(bad_other, Code::InvalidArgument);
    let missing_user = client
        .get_friends_list(testing::as_user(
            alice.id(),
            GetFriendsListRequest {
                user_id: String::new(),
                ..Default::default()
            },
        ))
        .await;
    assert_code(missing_user, Code::Unauthenticated);

    assert_eq!(
        service.snapshot(&[&alice, &bob]).await,
        vec![empty(), empty()]
    );
    assert_eq!(service.rows_between(&alice, &bob).await, 0);
    service.stop().await;
}

#[tokio::test]
async fn check_friendship_reports_only_non_friends() {
    let service = TestService::start().await;
    let (alice, bob, carol, dave) = (
        service.person("alice"),
        service.person("bob"),
        service.person("carol"),
        service.person("dave"),
    );
    service.send(&alice, &bob.nickname).await.unwrap();
    service.accept(&bob, &alice.nickname).await.unwrap();
    service.send(&alice, &carol.nickname).await.unwrap(); // pending is not friends
    assert_eq!(
        service
            .not_friends(&alice, &[&bob, &carol, &dave, &alice])
            .await,
        vec![carol.id(), dave.id()]
    );
    assert!(service.not_friends(&alice, &[]).await.is_empty());
    service.stop().await;
}

#[tokio::test]
async fn lists_are_cached_in_redis_and_invalidated_for_both_sides() {
    let service = TestService::start().await;
    let (alice, bob) = (service.person("alice"), service.person("bob"));
    let redis = redis::Client::open(messenger_common::testing::redis_url()).unwrap();
    let mut redis = redis
        .get_multiplexed_async_connection()
        .await
        .expect("TEST_REDIS_URL reachable");
    // The first page of alice's outgoing requests, as `ListFriendRequests` reads it.
    let key = |person: &support::Person| {
        format!(
            "{}rel:{}:outgoing:50:",
            service.config.redis_prefix, person.id
        )
    };

    service.send(&alice, &bob.nickname).await.unwrap();
    service.snapshot(&[&alice, &bob]).await;
    let cached: Option<String> = redis::cmd("GET")
        .arg(key(&alice))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        cached.is_some_and(|json| json.contains(&bob.id())),
        "alice's outgoing requests are cached"
    );

    // Each change must show on both sides at once, cached or not.
    service.accept(&bob, &alice.nickname).await.unwrap();
    assert_eq!(service.friends(&alice).await, vec![friend(&bob)]);
    assert_eq!(service.friends(&bob).await, vec![friend(&alice)]);
    service.remove(&alice, &bob.nickname).await.unwrap();
    assert!(service.friends(&bob).await.is_empty());
    assert!(service.friends(&alice).await.is_empty());
    service.send(&bob, &alice.nickname).await.unwrap();
    assert_eq!(
        service.requests(&alice, RequestDirection::Incoming).await,
        vec![request(&bob, &alice)]
    );
    service.reject(&alice, &bob.nickname).await.unwrap();
    assert!(
        service
            .requests(&bob, RequestDirection::Outgoing)
            .await
            .is_empty()
    );
    service.stop().await;
}

#[tokio::test]
async fn a_rejected_sender_waits_out_the_cooldown_and_is_told_until_when() {
    let service = TestService::start_with(testing::kafka_brokers(), |config| {
        config.request_rules.rejection_cooldown = Duration::from_secs(2);
    })
    .await;
    let (alice, bob, carol) = (
        service.person("alice"),
        service.person("bob"),
        service.person("carol"),
    );
    service.send(&alice, &bob.nickname).await.unwrap();
    service.reject(&bob, &alice.nickname).await.unwrap();
    let status = service.send(&alice, &bob.nickname).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("you can ask again after 20"),
        "{}",
        status.message()
    );
    let retry_after: u64 = status
        .metadata()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(
        service.snapshot(&[&alice, &bob]).await,
        vec![empty(), empty()],
        "the refusal changed nothing"
    );
    // The one who said no may change their mind at once; so may anyone else.
    service.send(&carol, &bob.nickname).await.unwrap();
    service.reject(&bob, &carol.nickname).await.unwrap();
    assert_eq!(
        service.send(&bob, &carol.nickname).await.unwrap(),
        FriendshipStatus::Requested
    );
    // Once the cooldown is over, alice may ask again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(
        service.send(&alice, &bob.nickname).await.unwrap(),
        FriendshipStatus::Requested
    );
    service.stop().await;
}

#[tokio::test]
async fn nobody_gets_more_pending_requests_than_the_cap() {
    let service = TestService::start_with(testing::kafka_brokers(), |config| {
        config.request_rules.max_pending_incoming = 3;
    })
    .await;
    let star = service.person("star");
    let fans: Vec<_> = (0..4).map(|n| service.person(&format!("fan{n}"))).collect();
    for fan in &fans[..3] {
        service.send(fan, &star.nickname).await.unwrap();
    }
    let status = service.send(&fans[3], &star.nickname).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("3 friend requests waiting"),
        "{}",
        status.message()
    );
    assert_eq!(service.rows_between(&fans[3], &star).await, 0);
    // Answering one makes room.
    service.accept(&star, &fans[0].nickname).await.unwrap();
    assert_eq!(
        service.send(&fans[3], &star.nickname).await.unwrap(),
        FriendshipStatus::Requested
    );
    service.stop().await;
}

#[tokio::test]
async fn lists_come_in_pages_listing_each_entry_once() {
    let service = TestService::start().await;
    let me = service.person("me");
    let mut friends = Vec::new();
    for n in 0..5 {
        let other = service.person(&format!("friend{n}"));
        service.send(&other, &me.nickname).await.unwrap();
        service.accept(&me, &other.nickname).await.unwrap();
        friends.push(other);
    }
    for n in 0..3 {
        let other = service.person(&format!("asker{n}"));
        service.send(&other, &me.nickname).await.unwrap();
    }
    // The friend list in pages of two: every friend once, with nicknames, in order.
    let (mut listed, mut cursor, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = service.friends_page(&me, 2, &cursor).await.unwrap();
        assert!(page.friends.len() <= 2);
        pages += 1;
        listed.extend(page.friends.into_iter().map(|f| (f.user_id, f.nickname)));
        if page.next_cursor.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    assert_eq!(pages, 3);
    let expected: Vec<(String, String)> = friends.iter().map(friend).collect();
    let mut sorted = listed.clone();
    sorted.sort_by(|a, b| a.1.cmp(&b.1));
    let mut expected_sorted = expected.clone();
    expected_sorted.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(sorted, expected_sorted);
    // Requests likewise, newest first.
    let first = service
        .requests_page(&me, RequestDirection::Incoming, 2, "")
        .await
        .unwrap();
    assert_eq!(first.requests.len(), 2);
    assert!(first.requests.iter().all(|r| r.to_nickname == me.nickname));
    let rest = service
        .requests_page(&me, RequestDirection::Incoming, 2, &first.next_cursor)
        .await
        .unwrap();
    assert_eq!(rest.requests.len(), 1);
    assert_eq!(rest.next_cursor, "");
    let sent_at = |request: &messenger_proto::v1::FriendRequest| {
        let at = request.created_at.expect("a request time");
        (at.seconds, at.nanos)
    };
    assert!(sent_at(&rest.requests[0]) <= sent_at(&first.requests[1]));
    // Bad paging input is refused, naming the field.
    for (limit, cursor, field) in [(101, "", "limit"), (2, "page-2", "cursor")] {
        let status = service.friends_page(&me, limit, cursor).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{}", status.message());
    }
    service.stop().await;
}

/// Sends a plain HTTP/1.0 GET to the admin port; returns the status line and body.
async fn admin_get(service: &TestService, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(service.admin_addr)
        .await
        .unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.lines().next().unwrap_or_default().to_owned();
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

#[tokio::test]
async fn admin_port_reports_health_readiness_and_rpc_metrics() {
    let service = TestService::start().await;
    let alice = service.person("alice");
    service.friends(&alice).await;
    assert!(admin_get(&service, "/healthz").await.0.contains("200"));
    let (ready, body) = admin_get(&service, "/readyz").await;
    assert!(ready.contains("200"), "{ready} {body}");
    let (_, metrics) = admin_get(&service, "/metrics").await;
    assert!(
        metrics.contains("friends_cache_lookups_total{outcome=\"miss\"} 1"),
        "cache lookups are counted: {metrics}"
    );
    assert!(
        metrics.contains("GetFriendsList"),
        "metrics count RPCs by method: {metrics}"
    );
    service.stop().await;
}

#[tokio::test]
async fn request_inbox_is_newest_first_with_both_sides_named() {
    let service = TestService::start().await;
    let (alice, bob, carol) = (
        service.person("alice"),
        service.person("bob"),
        service.person("carol"),
    );
    service.send(&bob, &alice.nickname).await.unwrap();
    service.send(&carol, &alice.nickname).await.unwrap();
    let requests = service
        .client
        .clone()
        .list_friend_requests(testing::as_user(
            alice.id(),
            ListFriendRequestsRequest {
                user_id: alice.id(),
                direction: RequestDirection::Incoming.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .requests;
    let seen: Vec<_> = requests
        .iter()
        .map(|r| {
            (
                r.from_user_id.clone(),
                r.from_nickname.clone(),
                r.to_user_id.clone(),
                r.to_nickname.clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                carol.id(),
                carol.nickname.clone(),
                alice.id(),
                alice.nickname.clone()
            ),
            (
                bob.id(),
                bob.nickname.clone(),
                alice.id(),
                alice.nickname.clone()
            ),
        ]
    );
    let (newest, oldest) = (
        requests[0].created_at.unwrap(),
        requests[1].created_at.unwrap(),
    );
    assert!((newest.seconds, newest.nanos) >= (oldest.seconds, oldest.nanos));
    assert!(
        requests
            .iter()
            .all(|r| r.status() == FriendshipStatus::Requested)
    );
    service.stop().await;
}

/// Internal trust: only a call carrying a valid assertion for the user it names acts;
/// anything else is UNAUTHENTICATED and changes nothing, whatever the body says.
#[tokio::test]
async fn only_the_user_the_call_is_signed_for_can_act() {
    let service = TestService::start().await;
    let (alice, bob) = (service.person("alice"), service.person("bob"));
    let send_as_alice = || SendFriendRequestRequest {
        user_id: alice.id(),
        nickname: bob.nickname.clone(),
    };
    let mut client = service.client.clone();

    let mut attempts = Vec::new();
    // Bob, signed in, claims to be Alice.
    attempts.push((
        "another user",
        client
            .send_friend_request(testing::as_user(bob.id(), send_as_alice()))
            .await,
    ));
    // A service acting for itself is not a user.
    attempts.push((
        "a service",
        client
            .send_friend_request(testing::as_service("gateway", send_as_alice()))
            .await,
    ));
    attempts.push((
        "unsigned",
        client.send_friend_request(send_as_alice()).await,
    ));
    let mut expired = tonic::Request::new(send_as_alice());
    expired.metadata_mut().insert(
        IDENTITY_METADATA,
        testing::expired_assertion(&testing::test_key(), &Caller::User(alice.id.as_uuid()))
            .parse()
            .unwrap(),
    );
    attempts.push(("expired", client.send_friend_request(expired).await));
    let mut forged = tonic::Request::new(send_as_alice());
    identity::attach(
        &mut forged,
        &InternalKey::generate(),
        &Caller::User(alice.id.as_uuid()),
    );
    attempts.push(("forged", client.send_friend_request(forged).await));
    for (what, result) in attempts {
        let status = result.expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    }
    assert_eq!(service.rows_between(&alice, &bob).await, 0);
    assert_eq!(
        service.snapshot(&[&alice, &bob]).await,
        vec![empty(), empty()]
    );

    // Signed for the user it names, the same call acts.
    assert_eq!(
        service.send(&alice, &bob.nickname).await.unwrap(),
        FriendshipStatus::Requested
    );
    service.stop().await;
}
