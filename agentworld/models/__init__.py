"""Model building and inference. transformers' per-load progress bars are silenced: runs show their own."""

from transformers.utils import logging as _hf_logging

_hf_logging.disable_progress_bar()
