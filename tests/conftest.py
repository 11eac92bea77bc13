import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# A Llama-3.1-8B config written out by hand (huggingface.co/meta-llama/Llama-3.1-8B config.json),
# so tests that need "a real model" do not depend on the shipped profile files.
LLAMA31_8B = dict(
    model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False, max_position_embeddings=131072,
    rms_norm_eps=1e-5, hidden_act="silu", attention_bias=False, mlp_bias=False,
)
