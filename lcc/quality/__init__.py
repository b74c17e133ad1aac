"""Quality at length: measured records per model weights, the prior for unmeasured models, and lookups."""

from lcc.quality.prior import prior_estimate
from lcc.quality.records import Estimate, Records, Row, load, quality_key, read_file, shipped

__all__ = ["Estimate", "Records", "Row", "load", "prior_estimate", "quality_key", "read_file", "shipped"]
