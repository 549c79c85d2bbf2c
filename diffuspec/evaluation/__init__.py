"""Speed evaluation: benchmarks, the interleaved measurement harness, a per-round cost model and reports.

Entry point: ``diffuspec eval --config recipes/<pair>/eval/config_<x>.yaml``.
"""

from .benchmarks import Prompt, Question, build_prompts, load_questions, questions_from_token_ids
from .config import EvalConfig, MethodSpec, add_arguments, config_from_args, load_config
from .harness import Record, evaluate, measure, report_run, summarise
from .methods import DecoderRunner, HFRunner, build_runner, check_drafter_compatible
from .report import write_reports

__all__ = [
    "DecoderRunner",
    "EvalConfig",
    "HFRunner",
    "MethodSpec",
    "Prompt",
    "Question",
    "Record",
    "add_arguments",
    "build_prompts",
    "build_runner",
    "check_drafter_compatible",
    "config_from_args",
    "evaluate",
    "load_config",
    "load_questions",
    "measure",
    "questions_from_token_ids",
    "report_run",
    "summarise",
    "write_reports",
]
