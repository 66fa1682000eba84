"""The node-side update pipeline: stages applied to a node's update before it travels
(local differential privacy, b-bit quantisation, top-k with error feedback, secure
aggregation's masking), each with the server-side decode it pairs with.

Importing the package registers every built-in stage.
"""

from potluck.updates import local_dp, quantize, topk  # noqa: F401  (register "dp", "quantize", "topk")
from potluck.updates.secagg import stage as _secagg_stage  # noqa: F401  (registers "secagg")
