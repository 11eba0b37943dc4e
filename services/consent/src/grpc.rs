//! The gRPC adapter: each handler takes the caller's identity, converts the request
//! ([`crate::convert`]), calls the [`Service`] and converts the answer. No rule and no store
//! access lives here; every error reaches the caller through the one error map
//! (`ServiceError` → `Status`, in [`crate::service`]). Handlers of RPCs a service may make on
//! behalf of another caller resolve `on_behalf_of` first (`acting_for`), before validation.

use crate::convert;
use crate::engine::Engine;
use crate::observe::ConsentMetrics;
use crate::service::{Service, ServiceError, WatchEvent};
use consentgate_proto::consent::v1 as pb;
use consentgate_proto::consent::v1::consent_service_server::ConsentService;
use consentgate_runtime::CallerIdentity;
use consentgate_runtime::delegation::acting_for;
use std::sync::Arc;
use tokio_stream::StreamExt;
use tokio_stream::adapters::Map;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Import answers waiting for the client to read them: the server reads the next chunk only
/// when fewer wait, so a client that stops reading stops the import instead of filling memory.
const IMPORT_ANSWERS_BUFFERED: usize = 2;

/// Import chunks in progress at once on one stream.
const IMPORT_CHUNKS_AT_ONCE: usize = 2;

/// The ConsentService implementation.
pub struct ConsentApi {
    /// Shared with the tasks that serve import streams.
    service: Arc<Service>,
}

impl ConsentApi {
    /// The service over an engine, counting into `metrics`.
    pub fn new(engine: Arc<Engine>, metrics: Arc<ConsentMetrics>) -> Self {
        ConsentApi {
            service: Arc::new(Service::new(engine, metrics)),
        }
    }
}

/// A change stream in its wire form.
type WatchStream = Map<
    crate::service::WatchStream,
    fn(Result<WatchEvent, ServiceError>) -> Result<pb::WatchChangesResponse, Status>,
>;

#[tonic::async_trait]
impl ConsentService for ConsentApi {
    async fn grant(
        &self,
        request: Request<pb::GrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        let caller = CallerIdentity::of(&request)?;
        let ask = convert::grant(self.service.policy(), request.get_ref())?;
        let granted = self.service.grant(&caller, ask).await?;
        Ok(Response::new(convert::grant_response(&granted)))
    }

    async fn refuse(
        &self,
        request: Request<pb::RefuseRequest>,
    ) -> Result<Response<pb::RefuseResponse>, Status> {
        let caller = CallerIdentity::of(&request)?;
        let ask = convert::refuse(self.service.policy(), request.get_ref())?;
        let outcome = self.service.refuse(&caller, ask).await?;
        let (record, revision) = convert::recorded(&outcome);
        Ok(Response::new(pb::RefuseResponse { record, revision }))
    }

    async fn withdraw(
        &self,
        request: Request<pb::WithdrawRequest>,
    ) -> Result<Response<pb::WithdrawResponse>, Status> {
        let caller = CallerIdentity::of(&request)?;
        let ask = convert::withdraw(self.service.policy(), request.get_ref())?;
        let outcome = self.service.withdraw(&caller, ask).await?;
        let (record, revision) = convert::recorded(&outcome);
        Ok(Response::new(pb::WithdrawResponse { record, revision }))
    }

    async fn record_signal(
        &self,
        request: Request<pb::RecordSignalRequest>,
    ) -> Result<Response<pb::RecordSignalResponse>, Status> {
        let caller = CallerIdentity::of(&request)?;
        let ask = convert::record_signal(request.get_ref())?;
        let revision = self.service.record_signal(&caller, ask).await?;
        Ok(Response::new(pb::RecordSignalResponse { revision }))
    }

    async fn link_identity(
        &self,
        request: Request<pb::LinkIdentityRequest>,
    ) -> Result<Response<pb::LinkIdentityResponse>, Status> {
        let caller = CallerIdentity::of(&request)?;
        let (idempotency, device, subject) = convert::link(request.get_ref())?;
        let revision = self
            .service
            .link(&caller, idempotency, device, subject)
            .await?;
        Ok(Response::new(pb::LinkIdentityResponse { revision }))
    }

    async fn get_consents(
        &self,
        request: Request<pb::GetConsentsRequest>,
    ) -> Result<Response<pb::GetConsentsResponse>, Status> {
        acting_for(&request, &request.get_ref().on_behalf_of)?;
        let subject = convert::subject_of(request.get_ref().subject.as_ref())?;
        let view = self.service.consents(&subject).await?;
        Ok(Response::new(convert::consents_response(view)))
    }

    async fn list_consent_history(
        &self,
        request: Request<pb::ListConsentHistoryRequest>,
    ) -> Result<Response<pb::ListConsentHistoryResponse>, Status> {
        acting_for(&request, &request.get_ref().on_behalf_of)?;
        let (subject, after, size) = convert::history(request.get_ref())?;
        let page = self.service.history(&subject, after, size).await?;
        Ok(Response::new(convert::history_response(&subject, &page)))
    }

    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let caller = CallerIdentity::of(&request)?;
        let ask = convert::check(self.service.policy(), &caller, request.get_ref())?;
        let decision = self.service.check(&caller, &ask).await?;
        Ok(Response::new(convert::decision_pb(
            &decision,
            ask.query.explain,
        )))
    }

    async fn batch_check(
        &self,
        request: Request<pb::BatchCheckRequest>,
    ) -> Result<Response<pb::BatchCheckResponse>, Status> {
        let caller = CallerIdentity::of(&request)?;
        let asks = convert::batch_check(self.service.policy(), &caller, request.get_ref())?;
        let results = self
            .service
            .batch_check(&caller, &asks, |ask, decision| {
                convert::decision_pb(decision, ask.query.explain)
            })
            .await?;
        Ok(Response::new(pb::BatchCheckResponse { results }))
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let caller = CallerIdentity::of(&request)?;
        let r = request.get_ref();
        let query = convert::explain(self.service.policy(), &caller, r)?;
        let explained = self.service.explain(&r.as_caller, query).await?;
        Ok(Response::new(convert::explain_response(explained)))
    }

    async fn get_receipt(
        &self,
        request: Request<pb::GetReceiptRequest>,
    ) -> Result<Response<pb::GetReceiptResponse>, Status> {
        let record_id = convert::receipt(request.get_ref())?;
        let receipt = self.service.receipt(record_id).await?;
        Ok(Response::new(convert::receipt_response(receipt)))
    }

    type WatchChangesStream = WatchStream;

    async fn watch_changes(
        &self,
        request: Request<pb::WatchChangesRequest>,
    ) -> Result<Response<Self::WatchChangesStream>, Status> {
        let (after, heartbeat) = convert::watch(request.get_ref())?;
        let events = self.service.watch(after, heartbeat).await?;
        let to_wire: fn(_) -> _ = convert::watch_message;
        Ok(Response::new(events.map(to_wire)))
    }

    async fn verify_ledger(
        &self,
        request: Request<pb::VerifyLedgerRequest>,
    ) -> Result<Response<pb::VerifyLedgerResponse>, Status> {
        let start = convert::verify_start(request.get_ref())?;
        let report = self.service.verify_ledger(&start).await?;
        Ok(Response::new(convert::verify_response(report)))
    }

    async fn list_signing_keys(
        &self,
        _request: Request<pb::ListSigningKeysRequest>,
    ) -> Result<Response<pb::ListSigningKeysResponse>, Status> {
        let keys = self.service.signing_keys();
        Ok(Response::new(convert::signing_keys_response(&keys)))
    }

    async fn erase_subject(
        &self,
        request: Request<pb::EraseSubjectRequest>,
    ) -> Result<Response<pb::EraseSubjectResponse>, Status> {
        let actor = acting_for(&request, &request.get_ref().on_behalf_of)?;
        let (idempotency, subject) = convert::erase(request.get_ref())?;
        let (outcome, tombstone) = self.service.erase(&actor, idempotency, subject).await?;
        Ok(Response::new(convert::erase_response(&outcome, tombstone)))
    }

    async fn find_erased(
        &self,
        request: Request<pb::FindErasedRequest>,
    ) -> Result<Response<pb::FindErasedResponse>, Status> {
        acting_for(&request, &request.get_ref().on_behalf_of)?;
        let subjects = convert::find_erased(request.get_ref())?;
        let found = self.service.find_erased(subjects).await?;
        Ok(Response::new(convert::find_erased_response(found)))
    }

    async fn list_erasures(
        &self,
        request: Request<pb::ListErasuresRequest>,
    ) -> Result<Response<pb::ListErasuresResponse>, Status> {
        acting_for(&request, &request.get_ref().on_behalf_of)?;
        let (after, size) = convert::list_erasures(request.get_ref())?;
        let (tombstones, next) = self.service.list_erasures(&after, size).await?;
        Ok(Response::new(pb::ListErasuresResponse {
            tombstones,
            next_after: next.unwrap_or_default(),
        }))
    }

    async fn reapply_erasures(
        &self,
        request: Request<pb::ReapplyErasuresRequest>,
    ) -> Result<Response<pb::ReapplyErasuresResponse>, Status> {
        let actor = acting_for(&request, &request.get_ref().on_behalf_of)?;
        let (tombstones, sweep) = convert::reapply_erasures(request.get_ref())?;
        let done = self
            .service
            .reapply_erasures(&actor, tombstones, sweep)
            .await?;
        Ok(Response::new(convert::reapply_response(done)))
    }

    type ImportConsentsStream = ReceiverStream<Result<pb::ImportConsentsResponse, Status>>;

    async fn import_consents(
        &self,
        request: Request<Streaming<pb::ImportConsentsRequest>>,
    ) -> Result<Response<Self::ImportConsentsStream>, Status> {
        let caller = CallerIdentity::of(&request)?;
        let chunks = request.into_inner();
        let service = Arc::clone(&self.service);
        let (answers, stream) = tokio::sync::mpsc::channel(IMPORT_ANSWERS_BUFFERED);
        tokio::spawn(async move {
            // Chunks answered in order, IMPORT_CHUNKS_AT_ONCE at a time: one's receipts are
            // signed while another's group commits wait for the disk. The first failure ends
            // the stream (the client resumes by sending again: what landed is a duplicate).
            let answered = futures::StreamExt::map(chunks, |chunk| {
                let service = Arc::clone(&service);
                let caller = caller.clone();
                async move {
                    let chunk = chunk?;
                    let now = time::OffsetDateTime::now_utc();
                    let records = convert::import_chunk(service.policy(), &chunk, now)?;
                    let outcomes = service.import(&caller, records).await?;
                    Ok::<_, Status>(convert::import_response(&outcomes))
                }
            });
            let mut answered = futures::StreamExt::buffered(answered, IMPORT_CHUNKS_AT_ONCE);
            while let Some(answer) = futures::StreamExt::next(&mut answered).await {
                let failed = answer.is_err();
                if answers.send(answer).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    async fn restrict_processing(
        &self,
        request: Request<pb::RestrictProcessingRequest>,
    ) -> Result<Response<pb::RestrictProcessingResponse>, Status> {
        let caller = CallerIdentity::of(&request)?;
        let r = request.get_ref();
        let (idempotency, subject) = convert::restrict(r)?;
        let revision = self
            .service
            .restrict(&caller, idempotency, subject, r.restricted)
            .await?;
        Ok(Response::new(pb::RestrictProcessingResponse { revision }))
    }
}
