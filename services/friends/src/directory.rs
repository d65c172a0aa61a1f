//! Who is who: nicknames ↔ user ids, owned by the users service.
//!
//! [`GrpcUserDirectory`] asks the users service with a deadline per call;
//! [`InMemoryUserDirectory`] is a table for `messenger dev` and tests.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use async_trait::async_trait;
use messenger_common::grpc::{self, PeerError};
use messenger_proto::v1::users_service_client::UsersServiceClient;
use messenger_proto::v1::{
    GetUserProfileByNicknameRequest, GetUserProfileRequest, GetUserProfilesRequest,
};
use tonic::transport::Channel;

use crate::domain::UserId;
use crate::error::FriendsError;

/// Resolves nicknames to user ids and back.
#[async_trait]
pub trait UserDirectory: Send + Sync + 'static {
    /// The id of the user with `nickname` (matched as the users service matches it,
    /// case-insensitively); [`FriendsError::UnknownNickname`] if nobody has it.
    async fn user_id_by_nickname(&self, nickname: &str) -> Result<UserId, FriendsError>;

    /// The nickname of `user`, `None` if they have no profile.
    async fn nickname_of(&self, user: UserId) -> Result<Option<String>, FriendsError>;

    /// The nicknames of those of `users` who have a profile, in as few calls as the users
    /// service allows (it answers [`MAX_PROFILES_PER_CALL`] ids per call).
    async fn nicknames_of(&self, users: &[UserId])
    -> Result<HashMap<UserId, String>, FriendsError>;
}

/// Most ids the users service resolves in one `GetUserProfiles` call.
pub const MAX_PROFILES_PER_CALL: usize = 100;

/// The users service over gRPC. Each call has its own deadline (shortened to what is left
/// of the deadline of the RPC being served, see `messenger_common::grpc::outbound_timeout`):
/// past it the call fails with `Unavailable` (so does an unreachable service); `NotFound`
/// passes through.
#[derive(Clone)]
pub struct GrpcUserDirectory {
    client: UsersServiceClient<Channel>,
    timeout: Duration,
}

impl GrpcUserDirectory {
    /// A directory calling the users service on `channel`, each call limited to `timeout`.
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        GrpcUserDirectory {
            client: UsersServiceClient::new(channel),
            timeout,
        }
    }

    async fn call<T, F>(&self, timeout: Duration, call: F) -> Result<Option<T>, FriendsError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match grpc::call_peer("users", timeout, call).await {
            Ok(answer) => Ok(Some(answer)),
            Err(PeerError::NotFound { .. }) => Ok(None),
            Err(error @ PeerError::Unavailable { .. }) => {
                Err(FriendsError::Unavailable(error.to_string()))
            }
            Err(error @ PeerError::Failed { .. }) => Err(FriendsError::Internal(error.to_string())),
        }
    }
}

#[async_trait]
impl UserDirectory for GrpcUserDirectory {
    async fn user_id_by_nickname(&self, nickname: &str) -> Result<UserId, FriendsError> {
        let mut client = self.client.clone();
        let (request, timeout) = grpc::peer_request(
            GetUserProfileByNicknameRequest {
                nickname: nickname.to_owned(),
            },
            self.timeout,
        );
        let profile = self
            .call(timeout, client.get_user_profile_by_nickname(request))
            .await?
            .ok_or_else(|| FriendsError::UnknownNickname(nickname.to_owned()))?;
        UserId::parse("user_id", &profile.user_id).map_err(|_| {
            FriendsError::Internal(format!(
                "users service returned an invalid user id {:?}",
                profile.user_id
            ))
        })
    }

    async fn nickname_of(&self, user: UserId) -> Result<Option<String>, FriendsError> {
        let mut client = self.client.clone();
        let (request, timeout) = grpc::peer_request(
            GetUserProfileRequest {
                user_id: user.to_string(),
            },
            self.timeout,
        );
        Ok(self
            .call(timeout, client.get_user_profile(request))
            .await?
            .map(|profile| profile.nickname))
    }

    async fn nicknames_of(
        &self,
        users: &[UserId],
    ) -> Result<HashMap<UserId, String>, FriendsError> {
        let mut nicknames = HashMap::with_capacity(users.len());
        for chunk in users.chunks(MAX_PROFILES_PER_CALL) {
            let mut client = self.client.clone();
            let (request, timeout) = grpc::peer_request(
                GetUserProfilesRequest {
                    user_ids: chunk.iter().map(ToString::to_string).collect(),
                },
                self.timeout,
            );
            let profiles = self
                .call(timeout, client.get_user_profiles(request))
                .await?
                .map(|answer| answer.profiles)
                .unwrap_or_default();
            for profile in profiles {
                let user = UserId::parse("user_id", &profile.user_id).map_err(|_| {
                    FriendsError::Internal(format!(
                        "users service returned an invalid user id {:?}",
                        profile.user_id
                    ))
                })?;
                nicknames.insert(user, profile.nickname);
            }
        }
        Ok(nicknames)
    }
}

/// A fixed table of users, for `messenger dev` and tests. Nicknames match case-insensitively.
#[derive(Default)]
pub struct InMemoryUserDirectory {
    nicknames: RwLock<HashMap<UserId, String>>,
}

impl InMemoryUserDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or renames) a user.
    pub fn insert(&self, user: impl Into<UserId>, nickname: impl Into<String>) {
        let user = user.into();
        self.nicknames
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(user, nickname.into());
    }
}

#[async_trait]
impl UserDirectory for InMemoryUserDirectory {
    async fn user_id_by_nickname(&self, nickname: &str) -> Result<UserId, FriendsError> {
        let wanted = nickname.to_lowercase();
        self.nicknames
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .find(|(_, known)| known.to_lowercase() == wanted)
            .map(|(id, _)| *id)
            .ok_or_else(|| FriendsError::UnknownNickname(nickname.to_owned()))
    }

    async fn nickname_of(&self, user: UserId) -> Result<Option<String>, FriendsError> {
        Ok(self
            .nicknames
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&user)
            .cloned())
    }

    async fn nicknames_of(
        &self,
        users: &[UserId],
    ) -> Result<HashMap<UserId, String>, FriendsError> {
        let known = self
            .nicknames
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(users
            .iter()
            .filter_map(|user| Some((*user, known.get(user)?.clone())))
            .collect())
    }
}
