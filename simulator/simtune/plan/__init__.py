"""Capacity planning (`simtune plan`): node counts, GPUs, cost per day, SLO attainment,
what-if traffic multipliers with and without re-tuning, and the SLO cliff.

    from simtune.plan import plan_from_files
    plan = plan_from_files("trace.csv", "traces/rayservice_gpu.yaml", "traces/prices.yaml",
                           slo="p99=5", service_time="lognormal:mean=1.0,p99=3")
    plan.baseline["node_wait"]["share_of_p99"]
    write_report(plan, "reports/plan_gpu")
"""

from simtune.plan.core import (DEFAULT_MULTIPLIERS, PlanResult, PlanSlo, Planner, parse_multipliers, parse_plan_slo,
                               run_plan)
from simtune.plan.report import write_report
from simtune.plan.api import plan_from_files

__all__ = ["DEFAULT_MULTIPLIERS", "PlanResult", "PlanSlo", "Planner", "parse_multipliers", "parse_plan_slo", "run_plan",
           "write_report", "plan_from_files"]
