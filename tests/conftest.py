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


def append_synthetic(root, case_id: str, tech: str, static: float, act: float, ovh: float, meas: float) -> None:
    """One ok cpu record whose prediction splits into static, activation and overhead bytes, and
    whose measured peak is ``meas`` (synthetic data for the fit tests)."""
    from ftadvisor.calibration import store

    pred = {"memory": {"weights_bytes": int(static), "activations_bytes": int(act),
                       "quantization_workspace_bytes": int(ovh), "peak_allocated_bytes": int(static + act + ovh),
                       "peak_phase": "forward_backward"}}
    store.append_result(root, "cpu", {"case_id": case_id, "sweep": "syn", "status": "ok", "backend": "cpu",
                                      "plan": {"technique": tech}, "prediction": pred,
                                      "measurement": {"peak_allocated_bytes": int(meas)}})


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _runs_folder_in_tmp(tmp_path_factory, monkeypatch):
    """Every test's runs folder (ftadvisor.runs: default run directories and launch calibration records)
    is a fresh temporary one, so the suite writes nothing into the checkout or the user's home, and no
    user's earlier launches leak into a fit."""
    monkeypatch.setenv("FTADVISOR_RUNS", str(tmp_path_factory.mktemp("runs")))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """The tiny Llama of ftadvisor.train.tiny (weights and tokenizer), built once per test session:
    test_launch's ``tiny_model`` fixture (imported by test_run_dir and test_multinode) returns it."""
    from ftadvisor.train.tiny import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "tiny-llama")
