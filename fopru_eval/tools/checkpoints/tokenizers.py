"""The one offline tokenizer builder of the random and demo checkpoints: byte-level BPE trained in a second."""

from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Enough words for the chat templates and the shipped tasks' prompts to tokenize into real sub-words.
CORPUS = [
    "What color is the shape in the top left cell? Answer the question using a single word or phrase.",
    "Which shape is in the center? circle square triangle red green blue yellow top bottom left right middle",
    "Is there a red circle in the image? yes no A B C D the of and to in is it what where how many one two three",
    "0 1 2 3 4 5 6 7 8 9 . , ? ! : ; ( ) - ' \" answer question option image picture object cell row column",
]


def train_bpe_tokenizer(
    vocab_size: int, special_tokens: list[str], corpus: list[str], unk_token: str | None = None, **roles: Any
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``corpus`` (a few strings) towards ``vocab_size``, with
    ``special_tokens`` first; ``roles`` name them for transformers (``eos_token="</s>"``, ...), left padding."""
    tokenizer = Tokenizer(models.BPE(unk_token=unk_token))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    if unk_token is not None:
        roles["unk_token"] = unk_token
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, padding_side="left", **roles)
