"""The special tokens a diffusion LM needs, named once for the whole stack."""

EOT_TOKEN = "<|endoftext|>"  # appended after every document; GPT-2's end-of-text token
MASK_TOKEN = "<|mask|>"  # the masked-diffusion mask token
DEFAULT_SPECIAL_TOKENS = (EOT_TOKEN, MASK_TOKEN)  # in this order they take the last two ids
