"""The decoding core: the Decoder protocol and record, sampling, stopping, model quirks, tree
verification and the one speculative loop. Nothing here imports the harness."""

from accbench.methods.core.errors import AccbenchError, NeedsTraining
from accbench.methods.core.jobs import ArtifactWriter, TrainJob, TuneJob
from accbench.methods.core.options import OptionError, option, parse_options
from accbench.methods.core.protocol import ArtifactStore, Decoder, DecoderBase
from accbench.methods.core.record import Clock, GenerationRecord, run_to_end
from accbench.methods.core.sampling import SamplingConfig, sample_from_logits, sampling_probs
from accbench.methods.core.speculative import (
           Drafter,
           Proposal,
           SpeculativeDecoder,
           Verified,
           speculative_decode,
)
from accbench.methods.core.stopping import StopChecker, commit, eos_ids_of

__all__ = ["AccbenchError", "ArtifactStore", "ArtifactWriter", "TrainJob", "TuneJob", "Clock", "Decoder", "DecoderBase", "Drafter", "GenerationRecord",
           "NeedsTraining", "OptionError", "Proposal", "SamplingConfig", "SpeculativeDecoder", "StopChecker", "Verified", "commit",
           "eos_ids_of", "option", "parse_options", "run_to_end", "sample_from_logits", "sampling_probs",
           "speculative_decode"]
