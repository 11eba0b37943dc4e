//! The gRPC adapter of `consentgate.recommendation.v1.RecommendationService`: each handler takes
//! the caller's identity, converts the request ([`crate::convert`]), calls the [`Recommender`]
//! and converts the answer. No rule and no store access lives here; every error reaches the
//! caller through the one error map (`ServiceError` → `Status`, in [`crate::service`]).

use crate::convert;
use crate::service::Recommender;
use consentgate_proto::recommendation::v1 as pb;
use consentgate_runtime::CallerIdentity;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The RecommendationService implementation.
pub struct RecommendationApi {
    recommender: Arc<Recommender>,
}

impl RecommendationApi {
    /// Wraps the recommender.
    pub fn new(recommender: Arc<Recommender>) -> Self {
        RecommendationApi { recommender }
    }
}

#[tonic::async_trait]
impl pb::recommendation_service_server::RecommendationService for RecommendationApi {
    async fn recommend(
        &self,
        request: Request<pb::RecommendRequest>,
    ) -> Result<Response<pb::RecommendResponse>, Status> {
        let caller = CallerIdentity::of(&request)?;
        let ask = convert::recommend(request.into_inner())?;
        let recommendation = self.recommender.recommend(&caller, ask).await?;
        Ok(Response::new(convert::recommend_response(recommendation)))
    }

    async fn record_outcome(
        &self,
        request: Request<pb::RecordOutcomeRequest>,
    ) -> Result<Response<pb::RecordOutcomeResponse>, Status> {
        let outcome = convert::record_outcome(request.into_inner())?;
        self.recommender.record_outcome(&outcome).await?;
        Ok(Response::new(pb::RecordOutcomeResponse {}))
    }

    async fn get_stats(
        &self,
        _request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let totals = self.recommender.stats().await?;
        Ok(Response::new(convert::stats_response(totals)))
    }

    async fn load_catalog(
        &self,
        request: Request<pb::LoadCatalogRequest>,
    ) -> Result<Response<pb::LoadCatalogResponse>, Status> {
        let catalog = convert::load_catalog(request.get_ref())?;
        let counts = self.recommender.load_catalog(catalog);
        Ok(Response::new(convert::load_catalog_response(counts)))
    }

    async fn unlearn(
        &self,
        request: Request<pb::UnlearnRequest>,
    ) -> Result<Response<pb::UnlearnResponse>, Status> {
        // The profile service's erasure cascade calls on behalf of the privacy team.
        consentgate_runtime::delegation::acting_for(&request, &request.get_ref().on_behalf_of)?;
        let key = convert::unlearn(request.get_ref())?;
        let forgotten = self.recommender.forget(&key);
        Ok(Response::new(pb::UnlearnResponse { forgotten }))
    }
}
