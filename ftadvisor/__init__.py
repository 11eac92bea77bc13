"""ftadvisor: which fine-tuning technique fits, how fast, how good.

    import ftadvisor
    est = ftadvisor.estimate("llama-3.1-8b", "rtx4090-24gb", "qlora", seq_len=2048)

Importing this package loads pydantic, pyyaml and the pure cost model only; the
training stack (torch, transformers, peft, bitsandbytes, trl) is imported by
the calibration runner and the launcher when they run.
"""

from ftadvisor.errors import FtAdvisorError
from ftadvisor.estimator import GridResult, estimate, estimate_grid, make_plan
from ftadvisor.profiles import hardware_profiles, model_profiles, resolve_hardware, resolve_model
from ftadvisor.schema import (
    ArchSpec,
    Estimate,
    HardwareProfile,
    MemoryBreakdown,
    ModelProfile,
    TrainingPlan,
)
from ftadvisor.techniques import METHODS, OBJECTIVES, all_techniques, parse_technique
from ftadvisor.quality import QualityEstimate, estimate_quality
from ftadvisor.speed import SpeedEstimate, TimeCostEstimate, estimate_speed, estimate_time_cost
from ftadvisor.recommend import Recommendation, RankedPlan, recommend

__version__ = "0.1.0"

__all__ = [
    "ArchSpec",
    "QualityEstimate",
    "RankedPlan",
    "Recommendation",
    "SpeedEstimate",
    "TimeCostEstimate",
    "estimate_quality",
    "estimate_speed",
    "estimate_time_cost",
    "recommend",
    "Estimate",
    "FtAdvisorError",
    "GridResult",
    "HardwareProfile",
    "METHODS",
    "MemoryBreakdown",
    "ModelProfile",
    "OBJECTIVES",
    "TrainingPlan",
    "all_techniques",
    "estimate",
    "estimate_grid",
    "hardware_profiles",
    "make_plan",
    "model_profiles",
    "parse_technique",
    "resolve_hardware",
    "resolve_model",
]
