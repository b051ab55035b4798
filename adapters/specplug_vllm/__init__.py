"""specplug proposers inside vLLM's v1 engine, through its ``custom_class`` speculative-decoding hook.

Enable with engine flags alone::

    SPECPLUG_CONFIG=configs/ngram.yaml vllm serve MODEL --speculative-config \\
        '{"method": "custom_class", "model": "specplug_vllm.Proposer", "num_speculative_tokens": 8}'

vLLM's ``num_speculative_tokens`` is the upper bound; the specplug config chooses the proposer and may
ask for fewer. See docs/vllm.md.
"""

from specplug_vllm.plugin import SUPPORTED_VLLM, check_vllm_version, register
from specplug_vllm.proposer import Proposer

__all__ = ["Proposer", "SUPPORTED_VLLM", "check_vllm_version", "register"]
