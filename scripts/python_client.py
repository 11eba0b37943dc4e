"""A client in another language: Python grpcio stubs generated from proto/ call the running suite
(`consentgate up`): Check on the consent service, GetProfile on the profile service and Recommend
on the recommendation service, with the development tokens. Exits non-zero on any surprise."""

import sys

import grpc

from consentgate.common.v1 import common_pb2
from consentgate.consent.v1 import consent_pb2, consent_pb2_grpc
from consentgate.profile.v1 import profile_pb2, profile_pb2_grpc
from consentgate.recommendation.v1 import recommendation_pb2, recommendation_pb2_grpc


def auth(caller):
    return (("authorization", f"Bearer dev-{caller}"),)


def main():
    alice = common_pb2.SubjectRef(subject_id="demo-alice")

    consent = consent_pb2_grpc.ConsentServiceStub(grpc.insecure_channel("127.0.0.1:50051"))
    decision = consent.Check(
        consent_pb2.CheckRequest(
            subject=alice,
            purpose="personalize.content.profiled",
            data_categories=["user.behavior.purchase_history"],
        ),
        metadata=auth("recommendation-service"),
    )
    assert decision.verdict == consent_pb2.VERDICT_ALLOW, decision
    print(f"Check: {consent_pb2.Verdict.Name(decision.verdict)} at revision {decision.revision}")

    profile = profile_pb2_grpc.ProfileServiceStub(grpc.insecure_channel("127.0.0.1:50052"))
    read = profile.GetProfile(
        profile_pb2.GetProfileRequest(subject=alice, purpose="personalize.content.profiled"),
        metadata=auth("recommendation-service"),
    )
    names = sorted(a.name for a in read.attributes)
    assert "favorite_sport" in names, read
    assert any(r.reason == "NOT_NEEDED_FOR_PURPOSE" for r in read.redactions), read
    print(f"GetProfile: {names}, redacted: {[r.data_category for r in read.redactions]}")

    recommend = recommendation_pb2_grpc.RecommendationServiceStub(
        grpc.insecure_channel("127.0.0.1:50053")
    )
    picks = recommend.Recommend(
        recommendation_pb2.RecommendRequest(
            subject=alice,
            context=recommendation_pb2.RecommendContext(device="mobile", region="EU"),
            n=3,
        ),
        metadata=auth("recommendation-service"),
    )
    assert picks.tier == recommendation_pb2.TIER_PROFILED, picks
    assert len(picks.items) == 3 and all(i.reason for i in picks.items), picks
    print(f"Recommend: {recommendation_pb2.Tier.Name(picks.tier)}: {[i.reason for i in picks.items]}")

    # An error carries its gRPC status code across languages.
    try:
        consent.Check(consent_pb2.CheckRequest(subject=alice, purpose="nope"), metadata=auth("recommendation-service"))
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
        print(f"bad purpose: {e.code().name}")
    else:
        sys.exit("an unknown purpose was accepted")


if __name__ == "__main__":
    main()
