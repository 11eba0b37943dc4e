//! The gRPC adapter of `consentgate.profile.v1.ProfileService`: each handler takes the caller's
//! identity, converts the request ([`crate::convert`]), calls the [`Service`] and converts the
//! answer. No rule and no store access lives here; every error reaches the caller through the
//! one error map (`ServiceError` → `Status`, in [`crate::service`]).

use crate::convert;
use crate::service::Service;
use consentgate_proto::profile::v1 as pb;
use consentgate_runtime::CallerIdentity;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The ProfileService implementation.
pub struct ProfileApi {
    service: Arc<Service>,
}

impl ProfileApi {
    /// The adapter over the service.
    pub fn new(service: Arc<Service>) -> Self {
        ProfileApi { service }
    }
}

#[tonic::async_trait]
impl pb::profile_service_server::ProfileService for ProfileApi {
    async fn set_attributes(
        &self,
        request: Request<pb::SetAttributesRequest>,
    ) -> Result<Response<pb::SetAttributesResponse>, Status> {
        let caller = CallerIdentity::of(&request)?;
        let ask = convert::set_attributes(&self.service.policy, request.into_inner())?;
        let verdicts = self.service.collect(&caller, ask).await?;
        Ok(Response::new(convert::collect_response(verdicts)))
    }

    async fn submit_answers(
        &self,
        request: Request<pb::SubmitAnswersRequest>,
    ) -> Result<Response<pb::SubmitAnswersResponse>, Status> {
        let caller = CallerIdentity::of(&request)?;
        let ask = convert::submit_answers(&self.service.policy, request.into_inner())?;
        let verdicts = self.service.collect(&caller, ask).await?;
        Ok(Response::new(convert::collect_response(verdicts)))
    }

    async fn record_events(
        &self,
        request: Request<pb::RecordEventsRequest>,
    ) -> Result<Response<pb::RecordEventsResponse>, Status> {
        let caller = CallerIdentity::of(&request)?;
        let ask = convert::record_events(&self.service.policy, request.into_inner())?;
        let verdicts = self.service.collect(&caller, ask).await?;
        Ok(Response::new(convert::collect_response(verdicts)))
    }

    async fn get_profile(
        &self,
        request: Request<pb::GetProfileRequest>,
    ) -> Result<Response<pb::GetProfileResponse>, Status> {
        let caller = CallerIdentity::of(&request)?;
        let ask = convert::get_profile(&self.service.policy, request.into_inner())?;
        let read = self.service.get_profile(&caller, ask).await?;
        Ok(Response::new(convert::get_profile_response(read)))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let caller = CallerIdentity::of(&request)?;
        let ask = convert::list_events(&self.service.policy, request.into_inner())?;
        let page = self.service.list_events(&caller, ask).await?;
        Ok(Response::new(convert::list_events_response(page)))
    }

    async fn get_answers(
        &self,
        request: Request<pb::GetAnswersRequest>,
    ) -> Result<Response<pb::GetAnswersResponse>, Status> {
        let caller = CallerIdentity::of(&request)?;
        let ask = convert::get_answers(&self.service.policy, request.into_inner())?;
        let read = self.service.get_answers(&caller, ask).await?;
        Ok(Response::new(convert::get_answers_response(read)))
    }

    async fn read_subject(
        &self,
        request: Request<pb::ReadSubjectRequest>,
    ) -> Result<Response<pb::ReadSubjectResponse>, Status> {
        let caller = CallerIdentity::of(&request)?;
        let ask = convert::read_subject(&self.service.policy, request.into_inner())?;
        let read = self.service.read_subject(&caller, ask).await?;
        Ok(Response::new(convert::read_subject_response(read)))
    }

    async fn get_access_report(
        &self,
        request: Request<pb::GetAccessReportRequest>,
    ) -> Result<Response<pb::GetAccessReportResponse>, Status> {
        let caller = CallerIdentity::of(&request)?;
        let subject = convert::subject(request.into_inner().subject)?;
        let report = self.service.access_report(&caller, subject).await?;
        Ok(Response::new(convert::access_report_response(report)))
    }

    async fn export_subject_data(
        &self,
        request: Request<pb::ExportSubjectDataRequest>,
    ) -> Result<Response<pb::ExportSubjectDataResponse>, Status> {
        let caller = CallerIdentity::of(&request)?;
        let subject = convert::subject(request.into_inner().subject)?;
        let export = self.service.export(&caller, subject).await?;
        Ok(Response::new(convert::export_response(export)))
    }

    async fn rectify_attribute(
        &self,
        request: Request<pb::RectifyAttributeRequest>,
    ) -> Result<Response<pb::RectifyAttributeResponse>, Status> {
        let caller = CallerIdentity::of(&request)?;
        let ask = convert::rectify(request.into_inner())?;
        let rectified = self.service.rectify(&caller, ask).await?;
        Ok(Response::new(convert::rectify_response(rectified)))
    }

    async fn erase_subject(
        &self,
        request: Request<pb::EraseSubjectRequest>,
    ) -> Result<Response<pb::EraseSubjectResponse>, Status> {
        let caller = CallerIdentity::of(&request)?;
        let ask = convert::erase(request.into_inner())?;
        let erasure = self.service.erase(&caller, ask).await?;
        Ok(Response::new(pb::EraseSubjectResponse {
            status: Some(convert::erasure_response(erasure)),
        }))
    }

    async fn get_erasure_status(
        &self,
        request: Request<pb::GetErasureStatusRequest>,
    ) -> Result<Response<pb::GetErasureStatusResponse>, Status> {
        let request_id = convert::erasure_status_request(request.into_inner())?;
        let erasure = self.service.erasure_status(&request_id).await?;
        Ok(Response::new(pb::GetErasureStatusResponse {
            status: Some(convert::erasure_response(erasure)),
        }))
    }

    async fn get_request_status(
        &self,
        request: Request<pb::GetRequestStatusRequest>,
    ) -> Result<Response<pb::GetRequestStatusResponse>, Status> {
        let request_id = convert::request_status_request(request.into_inner())?;
        let report = self.service.request_status(&request_id).await?;
        Ok(Response::new(pb::GetRequestStatusResponse {
            status: Some(convert::request_status_response(report)),
        }))
    }

    async fn reapply_erasures(
        &self,
        request: Request<pb::ReapplyErasuresRequest>,
    ) -> Result<Response<pb::ReapplyErasuresResponse>, Status> {
        let caller = CallerIdentity::of(&request)?;
        let run = self.service.reapply_erasures(&caller).await?;
        Ok(Response::new(convert::reapply_response(run)))
    }

    async fn verify_access_log(
        &self,
        _request: Request<pb::VerifyAccessLogRequest>,
    ) -> Result<Response<pb::VerifyAccessLogResponse>, Status> {
        let report = self.service.verify_access_log().await?;
        Ok(Response::new(convert::verify_response(report)))
    }
}
