"""The job model: job kinds registered by name with a typed config and a run function, and one
lifecycle (folder lock, state, events, cancel, resume, result) for every kind."""

from mentor.job_files import has_result, read_state
from mentor.jobs.config import AdapterSize, JobConfig, build_config, load_config
from mentor.jobs.lifecycle import (
    ACTIVE,
    ENDED,
    STATUSES,
    Job,
    JobCancelled,
    read_events,
    read_job_config,
    request_cancel,
    write_job_config,
)
from mentor.jobs.registry import PRODUCTS, JobKind, family, get_kind, kinds, produces, register_kind
from mentor.jobs.result import TunedModel, read_result
from mentor.jobs.runner import run

__all__ = ["ACTIVE", "ENDED", "PRODUCTS", "STATUSES", "AdapterSize", "Job", "JobCancelled", "JobConfig", "JobKind",
           "TunedModel", "build_config", "family", "get_kind", "has_result", "kinds", "load_config", "produces",
           "read_events", "read_job_config", "read_result", "read_state", "register_kind", "request_cancel", "run",
           "write_job_config"]
