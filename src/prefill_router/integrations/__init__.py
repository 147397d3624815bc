"""Adapters into other people's systems, on top of the pipeline; each needs its own optional extra.

- :mod:`prefill_router.integrations.litellm`: prefill-router as LiteLLM's routing step
  (``pip install 'prefill-router[litellm]'``).

Importing this package imports none of them (nor their libraries).
"""

__all__: list[str] = []
