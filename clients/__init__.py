"""gRPC clients for the served models, and the `segment`, `segment-all`, `annotate` and
`generate` commands.

    from perceptserve.clients import HQSamClient, DatasetDMAnnotateClient, DatasetDMGenerateClient
"""

from .datasetdm import Annotation, DatasetDMAnnotateClient, DatasetDMGenerateClient, Generation, Instance
from .errors import ClientError
from .hqsam import AsyncHQSamClient, HQSamClient, Segmentation

__all__ = [
    "Annotation",
    "AsyncHQSamClient",
    "ClientError",
    "DatasetDMAnnotateClient",
    "DatasetDMGenerateClient",
    "Generation",
    "HQSamClient",
    "Instance",
    "Segmentation",
]
