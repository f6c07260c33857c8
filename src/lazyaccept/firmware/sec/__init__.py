"""SEC: TD HOB parsing, the up-front accept, the HOB list for DXE."""

from lazyaccept.firmware.sec.policy import UpfrontPolicy, parse_policy
from lazyaccept.firmware.sec.sec import SecResult, run_sec, verify_against_truth

__all__ = ["SecResult", "UpfrontPolicy", "parse_policy", "run_sec", "verify_against_truth"]
