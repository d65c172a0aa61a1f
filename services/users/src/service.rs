//! The `messenger.v1.UsersService` gRPC implementation: validates every request field with
//! the pure rules in [`crate::domain`] and answers through [`CachedProfileStore`].

use std::sync::Arc;

use messenger_proto::v1::users_service_server::UsersService;
use messenger_proto::v1::{
    GetUserProfileByNicknameRequest, GetUserProfileRequest, GetUserProfilesRequest,
    GetUserProfilesResponse, SearchUsersRequest, SearchUsersResponse, UpdateUserProfileRequest,
    UserProfile,
};
use tonic::{Request, Response, Status};

use crate::cached_store::CachedProfileStore;
use crate::domain::{Nickname, Profile, ProfileUpdate, SearchQuery, parse_user_id, parse_user_ids};
use crate::error::UsersError;

pub struct UsersGrpcService {
    profiles: Arc<CachedProfileStore>,
}

impl UsersGrpcService {
    pub fn new(profiles: Arc<CachedProfileStore>) -> Self {
        Self { profiles }
    }
}

fn timestamp(time: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        // Always within 0..1e9, which fits an i32.
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

impl From<Profile> for UserProfile {
    fn from(profile: Profile) -> Self {
        Self {
            user_id: profile.user_id.to_string(),
            nickname: profile.nickname,
            bio: profile.bio,
            avatar_url: profile.avatar_url,
            created_at: Some(timestamp(profile.created_at)),
            updated_at: Some(timestamp(profile.updated_at)),
        }
    }
}

#[tonic::async_trait]
impl UsersService for UsersGrpcService {
    async fn get_user_profile(
        &self,
        request: Request<GetUserProfileRequest>,
    ) -> Result<Response<UserProfile>, Status> {
        let user_id = parse_user_id(&request.get_ref().user_id)?;
        let profile = self.profiles.get(user_id).await?;
        Ok(Response::new(profile.into()))
    }

    async fn get_user_profiles(
        &self,
        request: Request<GetUserProfilesRequest>,
    ) -> Result<Response<GetUserProfilesResponse>, Status> {
        let user_ids = parse_user_ids(&request.get_ref().user_ids)?;
        let profiles = self.profiles.get_many(&user_ids).await?;
        Ok(Response::new(GetUserProfilesResponse {
            profiles: profiles.into_iter().map(UserProfile::from).collect(),
        }))
    }

    async fn get_user_profile_by_nickname(
        &self,
        request: Request<GetUserProfileByNicknameRequest>,
    ) -> Result<Response<UserProfile>, Status> {
        let nickname = Nickname::parse(&request.get_ref().nickname).map_err(UsersError::from)?;
        let profile = self.profiles.get_by_nickname(&nickname).await?;
        Ok(Response::new(profile.into()))
    }

    async fn update_user_profile(
        &self,
        request: Request<UpdateUserProfileRequest>,
    ) -> Result<Response<UserProfile>, Status> {
        // Only the user may edit their profile; lookups serve any verified caller.
        messenger_common::identity::require_user(&request, &request.get_ref().user_id)?;
        let request = request.into_inner();
        let user_id = parse_user_id(&request.user_id)?;
        let update = ProfileUpdate::parse(
            request.nickname.as_deref(),
            request.bio.as_deref(),
            request.avatar_url.as_deref(),
        )?;
        let profile = self.profiles.update(user_id, &update).await?;
        Ok(Response::new(profile.into()))
    }

    async fn search_users(
        &self,
        request: Request<SearchUsersRequest>,
    ) -> Result<Response<SearchUsersResponse>, Status> {
        let request = request.get_ref();
        let query = SearchQuery::parse(&request.prefix, request.page_size, &request.page_token)?;
        let page = self.profiles.search(&query).await?;
        Ok(Response::new(SearchUsersResponse {
            users: page.profiles.into_iter().map(UserProfile::from).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }
}
