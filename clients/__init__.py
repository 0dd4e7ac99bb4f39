"""gRPC clients for the served models, and the `segment`, `segment-all`, `annotate` and
`generate` commands.

    from perceptserve.clients import HQSamClient, DatasetDMAnnotateClient, DatasetDMGenerateClient

Every client retries what the server could not serve now (UNAVAILABLE) with bounded backoff:
`HQSamClient(url, retry_policy=RetryPolicy(attempts=3))`, or `NO_RETRY`.
"""

from .datasetdm import Annotation, DatasetDMAnnotateClient, DatasetDMGenerateClient, Generation, Instance
from .errors import ClientError
from .hqsam import AsyncHQSamClient, HQSamClient, Segmentation
from .retry import NO_RETRY, RetryPolicy

__all__ = [
    "Annotation",
    "AsyncHQSamClient",
    "ClientError",
    "DatasetDMAnnotateClient",
    "DatasetDMGenerateClient",
    "Generation",
    "HQSamClient",
    "Instance",
    "NO_RETRY",
    "RetryPolicy",
    "Segmentation",
]
