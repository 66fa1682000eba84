"""Secure aggregation, SecAgg+ style: the server learns only the sum of the updates.

Bonawitz et al. 2017 ("Practical Secure Aggregation for Privacy-Preserving Machine
Learning") with the sparse neighbourhoods of Bell et al. 2020 ("Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead"). Pure arithmetic and message objects; no
I/O. The coordinator's driver is ``runtime/secure.py``; see docs/secure-aggregation.md.

* ``shamir.py``   t-of-n secret sharing over the field of the prime 2**521 − 1
* ``masking.py``  AES-CTR mask expansion, fixed-point quantisation in Z_{2^32}
* ``graph.py``    the k-regular neighbourhood each node masks and shares with
* ``protocol.py`` node- and server-side state machines (message in, message out)
* ``stage.py``    the ``secagg`` update stage: clip, quantise, mask
"""
