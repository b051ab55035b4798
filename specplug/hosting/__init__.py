"""What every host of a proposer needs, whatever engine it runs in: the embedded engine, vLLM, TensorRT-LLM.

- ``strategy``: live strategies, the named table a host serves, the hand-over on a swap;
- ``live``: that table swapped live from a config file (a broken config refused, the old one serving);
- ``rows``: ``Row``, what a host tracks of each request;
- ``drafting``: one step's drafting (budgets, proposals, cuts, what was accepted, costs);
- ``faults``: a proposer or policy that fails costs its own rows their drafts, nothing else;
- ``auto``: the draft policy that weighs each step's verify cost against expected acceptance;
- ``clock``: step times of an engine seen only through its drafter calls;
- ``token_rows``: hosts that see their batch as rows of tokens (vLLM's ``custom_class`` hook);
- ``building``: strategies for an engine that owns the target (vLLM, TensorRT-LLM);
- ``stats``: the counters of hosts without a metrics endpoint of their own.
"""
