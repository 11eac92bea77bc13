"""``ftadvisor export``: each framework's config for three example plans, hand-checked key values, and
validation against each framework's own loader or schema.

Plans (examples/plans/): QLoRA of Llama-3.1-8B on one RTX 4090 (nf4, r16/alpha32/dropout 0.05,
micro-batch 2 x 8 accumulation, 2048 tokens, 3 epochs, lr 2e-4); DPO+LoRA on a tiny plan (r8/alpha16,
micro-batch 4, 64 tokens, 10 steps, lr 0.003); full fine-tuning of Llama-3.1-70B on 8 GPUs with ZeRO-3
and CPU offload (micro-batch 1 x 8, 2048 tokens, 1 epoch, lr 1e-5); and full Qwen2.5-7B with FSDP.

Validation:
- trl (installed, pinned): the exported YAML is parsed by trl's own ``TrlParser`` into ScriptArguments,
  SFTConfig/DPOConfig/GRPOConfig, ModelConfig and DatasetMixtureConfig (unknown keys fail).
- litgpt 0.5.13 does not install beside the pinned stack (it requires huggingface-hub<1.4; we pin 2.4.0),
  torchtune 0.6.1 imports torchao, whose releases fail to import with torch 2.13; axolotl and
  LLaMA-Factory are heavy training stacks. Their keys are checked against the field lists below, taken
  from their schema sources at the named commits. When litgpt happens to be importable, its own
  jsonargparse parser reads the file too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ftadvisor.errors import FtAdvisorError
from ftadvisor.export import FRAMEWORKS, ExportResult, export_plan, resolve_framework
from tests.conftest import ROOT

PLANS = ROOT / "examples" / "plans"
DATA = ROOT / "examples" / "data"

# axolotl v0.18.0 (commit 067b021c): src/axolotl/utils/schemas/config.py AxolotlInputConfig and its mixins
# model.py ModelInputConfig/ModelOutputConfig, peft.py LoraConfig, training.py HyperparametersConfig
AXOLOTL_TOP = frozenset('''
    accelerator_config activation_offloading adam_beta1 adam_beta2 adam_beta3 adam_epsilon adam_epsilon2
    adapter added_tokens_overrides attn_implementation auto_find_batch_size auto_resume_from_checkpoints
    axolotl_config_path base_model base_model_config batch_flattening batch_size bench_dataset
    bench_split bf16 bfloat16 bnb_config_kwargs center_rewards_coefficient chat_template
    chat_template_jinja chat_template_kwargs chunked_cross_entropy chunked_cross_entropy_num_chunks
    cls_model_config context_parallel_size cosine_constant_lr_ratio cosine_min_lr_ratio cpo_alpha
    curriculum_sampling dataloader_drop_last dataloader_num_workers dataloader_pin_memory
    dataloader_prefetch_factor dataset_exact_deduplication dataset_keep_in_memory dataset_num_proc
    dataset_prepared_path dataset_processes dataset_shard_idx dataset_shard_num datasets ddp
    ddp_broadcast_buffers ddp_bucket_cap_mb ddp_find_unused_parameters ddp_timeout deepcompile deepspeed
    default_system_message device device_map dion_lr dion_momentum dion_rank_fraction
    dion_rank_multiple_of do_bench_eval do_causal_lm_eval dp_replicate_size dp_shard_size
    dpo_label_smoothing dpo_loss_type dpo_loss_weights dpo_padding_free dpo_use_liger_kernel
    dpo_use_weighting dynamic_checkpoint eaft_alpha eaft_k eager_attention early_stopping_patience ebft
    embedding_lr embedding_lr_scale embeddings_skip_upcast eot_tokens eval_batch_size
    eval_causal_lm_metrics eval_sample_packing eval_sequence_len eval_steps eval_strategy
    evals_per_epoch excess_length_strategy experimental_skip_move_to_device experts_implementation
    fix_untrained_tokens flash_attention flash_attn_cross_entropy flash_attn_d512 flash_attn_fuse_mlp
    flash_optimum flex_attention flex_attn_compile_kwargs float16 float32 fp16 fp32_norm_classes
    fp32_norms fp8 fp8_enable_fsdp_float8_all_gather freeze_mm_modules fsdp fsdp_config
    fsdp_final_state_dict_type fsdp_version fused_attn_kernel gc_collect_steps gc_steps
    gemma4_hybrid_attn_impl generate_samples generation_do_sample generation_max_new_tokens
    generation_prompt_ratio generation_temperature generation_top_k generation_top_p gptq
    gpu_memory_limit gradient_accumulation_steps gradient_checkpointing gradient_checkpointing_kwargs
    greater_is_better group_by_length heads_k_stride hf_use_auth_token hub_model_id hub_revision
    hub_strategy include_tkps include_tokens_per_second is_falcon_derived_model is_llama_derived_model
    is_mistral_derived_model is_preprocess is_qwen_derived_model kto_desirable_weight
    kto_undesirable_weight large_head_attention layer_offloading learning_rate llama4_linearized_experts
    load_best_model_at_end load_in_4bit load_in_8bit local_rank logging_steps lora_alpha
    lora_alpha_pattern lora_dropout lora_embedding_kernel lora_fan_in_fan_out lora_mlp_kernel
    lora_model_dir lora_modules_to_save lora_o_kernel lora_on_cpu lora_qkv_kernel lora_r
    lora_rank_pattern lora_target_linear lora_target_modules lora_target_parameters
    loraplus_lr_embedding loraplus_lr_ratio loss_watchdog_patience loss_watchdog_threshold
    low_cpu_mem_usage lr_div_factor lr_groups lr_quadratic_warmup lr_scheduler lr_scheduler_kwargs
    max_grad_norm max_memory max_prompt_len max_steps mean_resizing_embeddings merge_lora merge_method
    metric_for_best_model micro_batch_size min_sample_len model_quantization_config
    model_quantization_config_kwargs multipack_real_batches neftune_noise_alpha
    num_dataset_shards_to_save num_epochs num_generation_samples num_labels optim_args
    optim_target_modules optimizer orpo_alpha output_dir pad_to_multiple_of pad_to_sequence_len peft
    peft_autocast_adapter_dtype peft_ensure_weight_tying peft_init_lora_weights peft_layer_replication
    peft_layers_pattern peft_layers_to_transform peft_trainable_token_indices peft_use_dora
    peft_use_rslora plugins pose_max_context_len pose_num_chunks pose_split_on_token_ids
    precompute_ref_log_probs preprocess_iterable pretrain_multipack_attn pretrain_multipack_buffer_size
    pretraining_dataset pretraining_sample_concatenation process_reward_model processor_kwargs
    processor_type profiler_steps profiler_steps_start push_dataset_to_hub qat qgalore_cos_threshold
    qgalore_gamma_proj qgalore_proj_bits qgalore_proj_group_size qgalore_proj_quant qgalore_proj_type
    qgalore_queue_size qgalore_rank qgalore_scale qgalore_update_proj_gap qlora_sharded_model_loading
    quantization quantize_moe_experts reinit_weights remove_unused_columns
    resize_token_embeddings_to_32x resume_from_checkpoint reward_model ring_attn_func rl rl_beta
    sage_attention sample_packing sample_packing_bin_size sample_packing_eff_est
    sample_packing_group_size sample_packing_mp_start_method sample_packing_sequentially save_first_step
    save_only_model save_safetensors save_steps save_strategy save_total_limit saves_per_epoch
    scaling_softmax scaling_softmax_bias scaling_softmax_factor sdp_attention sdpa_varlen seed
    selective_checkpointing sequence_len sequence_parallel_degree shrink_embeddings
    shuffle_before_merging_datasets shuffle_merged_datasets simpo_gamma skip_prepare_dataset
    special_tokens streaming streaming_multipack_buffer_size strict tensor_parallel_size test_datasets
    tf32 tiled_mlp tiled_mlp_num_shards tiled_mlp_use_original_mlp tokenizer_config tokenizer_legacy
    tokenizer_save_jinja_files tokenizer_type tokenizer_use_fast tokenizer_use_mistral_common tokens
    torch_compile torch_compile_backend torch_compile_mode torch_compile_options torch_empty_cache_steps
    torchdistx_path total_num_tokens total_supervised_tokens train_on_inputs trainer_cls trl
    trust_remote_code unfrozen_parameters use_eaft use_kernels use_onebitllms use_pose use_tensorboard
    val_set_size vllm warmup_ratio warmup_steps weight_decay world_size xformers_attention
'''.split())

# schemas/datasets.py SFTDataset
AXOLOTL_SFT_DATASET = frozenset('''
    chat_template chat_template_jinja conversation data_files drop_system_message ds_type field
    field_human field_messages field_model field_thinking field_tools input_format input_transform
    logprobs_field message_field_content message_field_role message_field_training
    message_field_training_detail message_property_mappings name path preprocess_shards revision roles
    roles_to_train shards shards_idx split split_thinking temperature template_thinking_key train_on_eos
    train_on_eot trust_remote_code type
'''.split())

# schemas/datasets.py DPODataset
AXOLOTL_DPO_DATASET = frozenset('''
    data_files field_chosen field_messages field_rejected path revision split type
'''.split())

# schemas/datasets.py KTODataset
AXOLOTL_KTO_DATASET = frozenset('''
    data_files path revision split trust_remote_code type
'''.split())

# schemas/datasets.py UserDefinedPrompterType
AXOLOTL_USER_SFT = frozenset('''
    field_input field_instruction field_output field_system format no_input_format system_format
    system_prompt
'''.split())

# schemas/datasets.py UserDefinedDPOType
AXOLOTL_USER_DPO = frozenset('''
    chosen_format field_chosen field_prompt field_rejected field_system prompt_format rejected_format
'''.split())

# schemas/datasets.py UserDefinedKTOType
AXOLOTL_USER_KTO = frozenset('''
    completion_format field_completion field_label field_prompt field_system prompt_format
'''.split())

# schemas/fsdp.py FSDPConfig
AXOLOTL_FSDP = frozenset('''
    activation_checkpointing auto_wrap_policy cpu_offload_pin_memory cpu_ram_efficient_loading
    final_state_dict_type fsdp_version min_num_params mixed_precision_policy offload_params
    reshard_after_forward state_dict_type sync_module_states transformer_layer_cls_to_wrap
    use_orig_params
'''.split())

# LLaMA-Factory v0.9.5 (commit ff6d4d12): src/llamafactory/hparams/data_args.py DataArguments,
# finetuning_args.py FinetuningArguments (Freeze/Lora/RLHF mixins), model_args.py ModelArguments (Base/Quantization);
# the rest are transformers' Seq2SeqTrainingArguments (training_args.py), checked against the installed class
LLAMA_FACTORY_OWN = frozenset('''
    adapter_folder adapter_name_or_path add_special_tokens add_tokens additional_target asft_alpha
    block_diag_attn buffer_size cache_dir compute_accuracy compute_dtype create_new_adapter cutoff_len
    data_shared_file_system dataset dataset_dir default_system device_map disable_gradient_checkpointing
    disable_shuffling double_quantization dpo_label_smoothing eaft_alpha early_stopping_steps
    enable_liger_kernel enable_thinking eval_dataset eval_num_beams eval_on_each_dataset finetuning_type
    flash_attn freeze_extra_modules freeze_language_model freeze_multi_modal_projector
    freeze_trainable_layers freeze_trainable_modules freeze_vision_tower hf_hub_token
    hyper_parallel_args hyper_parallel_cp_size ignore_pad_token_for_loss
    include_effective_tokens_per_second infer_backend infer_dtype init_special_tokens interleave_probs
    kto_chosen_weight kto_rejected_weight ld_alpha lora_alpha lora_dropout lora_rank lora_target
    loraplus_lr_embedding loraplus_lr_ratio low_cpu_mem_usage mask_history max_samples media_dir
    megatron_bridge_args mix_strategy mixture_of_depths model_max_length model_name_or_path
    model_revision moe_aux_loss_coef ms_hub_token neat_packing new_special_tokens_config offload_folder
    om_hub_token overwrite_cache packing pissa_convert pissa_init pissa_iter plot_loss ppo_buffer_size
    ppo_epochs ppo_score_norm ppo_target ppo_whiten_rewards pref_bco_weight pref_beta pref_ftx pref_loss
    preprocessing_batch_size preprocessing_num_workers preserve_thinking print_param_status pure_bf16
    quantization_bit quantization_device_map quantization_method quantization_type ref_model
    ref_model_adapters ref_model_quantization_bit resize_vocab reward_model reward_model_adapters
    reward_model_quantization_bit reward_model_type rope_scaling shift_attn simpo_gamma
    split_special_tokens stage streaming template tokenized_path tool_format train_from_scratch
    train_on_prompt trust_remote_code upcast_layernorm upcast_lmhead_output use_adam_mini use_asft_loss
    use_dft_loss use_dora use_eaft_loss use_fast_tokenizer use_hyper_parallel use_kv_cache use_llama_pro
    use_mca use_megatron_bridge use_muon use_reentrant_gc use_rslora use_unsloth use_unsloth_gc
    use_v1_kernels val_size
'''.split())

# LLaMA-Factory's hparams/training_args.py TrainingArguments adds these to Seq2SeqTrainingArguments
LLAMA_FACTORY_TRAINING = frozenset("overwrite_output_dir fp8 fp8_backend ray_num_workers".split())

# torchtune v0.6.1 (commit a6290a5b): the config keys each recipe reads (cfg.<key> / cfg.get("<key>")
# in recipes/<recipe>.py)
TORCHTUNE_RECIPE_KEYS = {
    "lora_finetune_single_device": frozenset(
        "batch_size checkpointer clip_grad_norm collate_fn compile cudnn_deterministic_mode dataset device dtype "
        "enable_activation_checkpointing enable_activation_offloading epochs gradient_accumulation_steps "
        "log_every_n_steps log_peak_memory_stats loss low_cpu_ram lr_scheduler max_steps_per_epoch metric_logger "
        "model optimizer output_dir profiler resume_from_checkpoint save_adapter_weights_only seed shuffle "
        "tokenizer".split()),
    "lora_dpo_single_device": frozenset(
        "batch_size checkpointer compile cudnn_deterministic_mode dataset device dtype "
        "enable_activation_checkpointing enable_activation_offloading epochs gradient_accumulation_steps "
        "log_every_n_steps log_peak_memory_stats loss lr_scheduler max_steps_per_epoch metric_logger model "
        "optimizer output_dir resume_from_checkpoint save_adapter_weights_only seed shuffle tokenizer".split()),
    "full_finetune_distributed": frozenset(
        "ac_mode ac_option batch_size checkpointer clip_grad_norm collate_fn compile cudnn_deterministic_mode "
        "custom_sharded_layers dataset device dtype enable_activation_checkpointing enable_activation_offloading "
        "enable_async_checkpointing epochs fsdp_cpu_offload fsdp_reshard_after_forward gradient_accumulation_steps "
        "log_every_n_steps log_peak_memory_stats loss lr_scheduler max_steps_per_epoch metric_logger model "
        "optimizer optimizer_in_bwd output_dir profiler resume_from_checkpoint seed shuffle tensor_parallel_dim "
        "tensor_parallel_plan tokenizer".split()),
}
# torchtune v0.6.1 torchtune/models/llama3_1/_model_builders.py lora_llama3_1_8b (and qlora_*) parameters
TORCHTUNE_LORA_BUILDER = frozenset("_component_ lora_attn_modules apply_lora_to_mlp apply_lora_to_output lora_rank "
                                   "lora_alpha lora_dropout use_dora quantize_base".split())
# torchtune v0.6.1 torchtune/training/checkpointing/_checkpointer.py FullModelHFCheckpointer.__init__
TORCHTUNE_CHECKPOINTER = frozenset("_component_ checkpoint_dir checkpoint_files model_type output_dir adapter_checkpoint "
                                   "recipe_checkpoint resume_from_checkpoint safe_serialization".split())

# litgpt 0.5.13: litgpt/finetune/lora.py and full.py setup() parameters, litgpt/args.py TrainArgs,
# litgpt/data/json_data.py JSON (init fields)
LITGPT_LORA_SETUP = frozenset("checkpoint_dir out_dir precision quantize devices num_nodes lora_r lora_alpha "
                              "lora_dropout lora_query lora_key lora_value lora_projection lora_mlp lora_head data "
                              "train log eval optimizer logger_name seed access_token".split())
LITGPT_FULL_SETUP = frozenset("checkpoint_dir out_dir precision devices num_nodes resume data train eval log "
                              "optimizer logger_name seed access_token".split())
LITGPT_TRAIN = frozenset("save_interval log_interval global_batch_size micro_batch_size lr_warmup_steps "
                         "lr_warmup_fraction epochs max_tokens max_steps max_time max_seq_length tie_embeddings "
                         "max_norm min_lr".split())
LITGPT_JSON = frozenset("json_path mask_prompt val_split_fraction prompt_style ignore_index seed num_workers".split())

QLORA = ("qlora-llama-3.1-8b-rtx4090.yaml", "llama-3.1-8b", "chat.jsonl")
DPO = ("dpo-lora-tiny-cpu.yaml", "llama-3.2-1b", "preference.jsonl")
ZERO3 = ("full-llama-3.1-70b-zero3-offload-8xa100.yaml", "llama-3.1-70b", "chat.jsonl")
FSDP = ("full-qwen2.5-7b-fsdp-8xh100.yaml", "qwen2.5-7b", "prompt_completion.jsonl")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every (plan, framework) export, or the FtAdvisorError it raised."""
    root = tmp_path_factory.mktemp("exports")
    out: dict = {}
    for case in (QLORA, DPO, ZERO3, FSDP):
        plan, model, data = case
        for fw in FRAMEWORKS:
            # litgpt's JSON data is instruction/output pairs: give it the single-turn prompt/completion file
            d = "prompt_completion.jsonl" if fw == "litgpt" and data == "chat.jsonl" else data
            try:
                out[case, fw] = export_plan(PLANS / plan, fw, root / plan / fw, model=model, data=str(DATA / d))
            except FtAdvisorError as err:
                out[case, fw] = err
    return out


def _cfg(result: ExportResult, name: str | None = None) -> dict:
    path = next(p for p in result.files if (name is None and p.suffix == ".yaml") or p.name == name)
    return json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())


def _ok(exported, case, fw) -> ExportResult:
    r = exported[case, fw]
    assert isinstance(r, ExportResult), f"{case[0]} -> {fw}: {r}"
    return r


# ---- hand-checked values, per framework ------------------------------------------------------


def test_axolotl(exported):
    q = _cfg(_ok(exported, QLORA, "axolotl"))
    assert (q["adapter"], q["load_in_4bit"], q["lora_r"], q["lora_alpha"], q["lora_dropout"]) == ("qlora", True, 16, 32, 0.05)
    assert (q["micro_batch_size"], q["gradient_accumulation_steps"], q["sequence_len"]) == (2, 8, 2048)
    assert (q["num_epochs"], q["learning_rate"], q["optimizer"], q["lora_target_linear"]) == (3, 2e-4, "paged_adamw_8bit", True)
    assert q["gradient_checkpointing"] is True and q["base_model"] == "meta-llama/Llama-3.1-8B"
    assert q["datasets"][0]["type"] == "chat_template" and q["datasets"][0]["field_messages"] == "messages"
    d = _cfg(_ok(exported, DPO, "axolotl"))
    assert (d["rl"], d["lora_r"], d["lora_alpha"], d["micro_batch_size"], d["max_steps"]) == ("dpo", 8, 16, 4, 10)
    assert d["datasets"][0]["type"]["field_chosen"] == "chosen" and d["sequence_len"] == 64
    z = _ok(exported, ZERO3, "axolotl")
    cfg, ds = _cfg(z), _cfg(z, "ds_config.json")
    assert cfg["deepspeed"] == "ds_config.json" and "adapter" not in cfg
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    f = _cfg(_ok(exported, FSDP, "axolotl"))
    assert f["fsdp_version"] == 2 and f["fsdp_config"]["reshard_after_forward"] is True and "deepspeed" not in f
    # every key is one of axolotl's schema fields
    for case in (QLORA, DPO, ZERO3, FSDP):
        cfg = _cfg(exported[case, "axolotl"])
        assert set(cfg) <= AXOLOTL_TOP, set(cfg) - AXOLOTL_TOP
        assert set(cfg.get("fsdp_config", {})) <= AXOLOTL_FSDP
        ds = cfg["datasets"][0]
        allowed = {"sft": AXOLOTL_SFT_DATASET, "dpo": AXOLOTL_DPO_DATASET, "kto": AXOLOTL_KTO_DATASET}[cfg.get("rl", "sft")]
        assert set(ds) <= allowed, set(ds) - allowed
        if isinstance(ds["type"], dict):
            user = {"sft": AXOLOTL_USER_SFT, "dpo": AXOLOTL_USER_DPO, "kto": AXOLOTL_USER_KTO}[cfg.get("rl", "sft")]
            assert set(ds["type"]) <= user


def _installed_dataclass_fields(module: str, classes: tuple[str, ...]) -> set[str]:
    """Field names of classes in an installed module, read from its source (importing transformers'
    training_args would load torch: seconds of CI time for a list of names)."""
    import ast
    import importlib.util

    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    return {n.target.id for c in tree.body if isinstance(c, ast.ClassDef) and c.name in classes
            for n in c.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def test_llama_factory(exported):
    # LLaMA-Factory's BaseTrainingArguments is transformers' Seq2SeqTrainingArguments (TrainingArguments + 5 fields)
    hf = _installed_dataclass_fields("transformers.training_args", ("TrainingArguments",)) | \
        _installed_dataclass_fields("transformers.training_args_seq2seq", ("Seq2SeqTrainingArguments",))
    assert {"per_device_train_batch_size", "gradient_accumulation_steps", "deepspeed", "predict_with_generate"} <= hf
    allowed = LLAMA_FACTORY_OWN | LLAMA_FACTORY_TRAINING | hf
    q = _ok(exported, QLORA, "llama-factory")
    cfg, info = _cfg(q, "llamafactory.yaml"), _cfg(q, "dataset_info.json")
    assert (cfg["stage"], cfg["finetuning_type"], cfg["quantization_bit"], cfg["quantization_type"]) == ("sft", "lora", 4, "nf4")
    assert (cfg["lora_rank"], cfg["lora_alpha"], cfg["lora_target"]) == (16, 32, "all")
    assert (cfg["per_device_train_batch_size"], cfg["gradient_accumulation_steps"], cfg["cutoff_len"]) == (2, 8, 2048)
    assert "disable_gradient_checkpointing" not in cfg  # on by default in LLaMA-Factory
    assert info[cfg["dataset"]]["formatting"] == "sharegpt" and info[cfg["dataset"]]["tags"]["role_tag"] == "role"
    d = _ok(exported, DPO, "llama-factory")
    cfg, info = _cfg(d, "llamafactory.yaml"), _cfg(d, "dataset_info.json")
    assert (cfg["stage"], cfg["pref_loss"], cfg["max_steps"], cfg["lora_rank"]) == ("dpo", "sigmoid", 10, 8)
    assert cfg["disable_gradient_checkpointing"] is True  # the plan turns it off
    assert info[cfg["dataset"]]["ranking"] is True
    z = _ok(exported, ZERO3, "llama-factory")
    assert _cfg(z, "llamafactory.yaml")["deepspeed"] == "ds_config.json"
    assert _cfg(z, "ds_config.json")["zero_optimization"]["stage"] == 3
    assert z.command.startswith("FORCE_TORCHRUN=1 ")
    f = _ok(exported, FSDP, "llama-factory")
    assert _cfg(f, "accelerate_fsdp.yaml")["distributed_type"] == "FSDP" and "accelerate launch" in f.command
    for case in (QLORA, DPO, ZERO3, FSDP):
        cfg = _cfg(exported[case, "llama-factory"], "llamafactory.yaml")
        assert set(cfg) <= allowed, set(cfg) - allowed


def test_torchtune(exported):
    q = _ok(exported, QLORA, "torchtune")
    cfg = _cfg(q)
    assert cfg["model"]["_component_"] == "torchtune.models.llama3_1.qlora_llama3_1_8b"
    assert (cfg["model"]["lora_rank"], cfg["model"]["lora_alpha"], cfg["model"]["lora_dropout"]) == (16, 32, 0.05)
    assert (cfg["batch_size"], cfg["gradient_accumulation_steps"], cfg["tokenizer"]["max_seq_len"]) == (2, 8, 2048)
    assert (cfg["epochs"], cfg["enable_activation_checkpointing"]) == (3, True)
    assert "tune run lora_finetune_single_device" in q.command and "tune download meta-llama/Llama-3.1-8B" in q.command
    d = _ok(exported, DPO, "torchtune")
    cfg = _cfg(d, "torchtune_lora_dpo_single_device.yaml")
    assert cfg["model"]["_component_"] == "torchtune.models.llama3_2.lora_llama3_2_1b"
    assert cfg["checkpointer"]["model_type"] == "LLAMA3_2"  # recipes/configs/llama3_2/1B_lora_single_device.yaml
    assert (cfg["loss"]["_component_"], cfg["max_steps_per_epoch"], cfg["batch_size"]) == ("torchtune.rlhf.loss.DPOLoss", 10, 4)
    first = json.loads(next(p for p in d.files if p.name == "preference.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in first["chosen"]] == ["user", "assistant"]
    assert first["chosen"][1]["content"] == "The capital of France is Paris."  # examples/data/preference.jsonl line 1
    z = _ok(exported, ZERO3, "torchtune")
    cfg = _cfg(z)
    assert cfg["model"]["_component_"] == "torchtune.models.llama3_1.llama3_1_70b"
    assert (cfg["fsdp_cpu_offload"], cfg["fsdp_reshard_after_forward"], cfg["gradient_accumulation_steps"]) == (True, True, 8)
    assert "--nproc_per_node 8 full_finetune_distributed" in z.command
    assert any("zero3" in n for n in z.notes)
    for case in (QLORA, DPO, ZERO3):
        r = exported[case, "torchtune"]
        cfg = _cfg(r)
        recipe = next(p.stem for p in r.files if p.suffix == ".yaml").removeprefix("torchtune_")
        assert set(cfg) <= TORCHTUNE_RECIPE_KEYS[recipe], set(cfg) - TORCHTUNE_RECIPE_KEYS[recipe]
        assert set(cfg["checkpointer"]) <= TORCHTUNE_CHECKPOINTER
        if "lora" in cfg["model"]["_component_"]:
            assert set(cfg["model"]) <= TORCHTUNE_LORA_BUILDER


def test_litgpt(exported):
    q = _ok(exported, QLORA, "litgpt")
    cfg = _cfg(q)
    assert (cfg["quantize"], cfg["lora_r"], cfg["lora_alpha"], cfg["precision"]) == ("bnb.nf4-dq", 16, 32, "bf16-mixed")
    # litgpt derives accumulation as global / (devices x nodes) / micro: 2 x 8 x 1 GPU = 16
    assert (cfg["train"]["global_batch_size"], cfg["train"]["micro_batch_size"]) == (16, 2)
    assert (cfg["train"]["max_seq_length"], cfg["train"]["epochs"]) == (2048, 3)
    assert all(cfg[k] for k in ("lora_query", "lora_key", "lora_value", "lora_projection", "lora_mlp"))
    assert set(cfg) <= LITGPT_LORA_SETUP and set(cfg["train"]) <= LITGPT_TRAIN
    assert set(cfg["data"]["init_args"]) <= LITGPT_JSON
    fr = _ok(exported, FSDP, "litgpt")
    f = _cfg(fr)
    assert (f["devices"], f["train"]["global_batch_size"]) == (8, 1 * 4 * 8) and set(f) <= LITGPT_FULL_SETUP
    # paths inside an export are relative to its folder (run.sh runs there)
    rec = json.loads((fr.files[0].parent / f["data"]["init_args"]["json_path"]).read_text().splitlines()[0])
    assert rec["output"] == " Paris"  # examples/data/prompt_completion.jsonl line 1
    dpo, zero = exported[DPO, "litgpt"], exported[ZERO3, "litgpt"]
    assert isinstance(dpo, FtAdvisorError) and "litgpt" in str(dpo) and "sft" in str(dpo) and dpo.field == "--to"
    assert isinstance(zero, FtAdvisorError) and "cpu_offload" in str(zero)


_TRL_PARSE = r"""
import json, shlex, sys, warnings
warnings.simplefilter("ignore")
from trl import (DatasetMixtureConfig, DPOConfig, GRPOConfig, KTOConfig, ModelConfig, ScriptArguments, SFTConfig,
                 TrlParser)
from trl.cli.accelerate_config import resolve_accelerate_config_argument
from trl.scripts.grpo import GRPOScriptArguments
from accelerate.commands.launch import launch_command_parser
out = []
for command in json.loads(sys.argv[1]):
    argv = shlex.split(command)  # trl KIND --config FILE [accelerate options]
    kind, args = argv[1], argv[2:]
    script, cfg = {"sft": (ScriptArguments, SFTConfig), "dpo": (ScriptArguments, DPOConfig),
                   "kto": (ScriptArguments, KTOConfig), "grpo": (GRPOScriptArguments, GRPOConfig)}[kind]
    parser = TrlParser((script, cfg, ModelConfig, DatasetMixtureConfig))
    # as trl's CLI splits them (trl/cli/commands/training.py): what the script does not take goes to accelerate
    # (use_cpu: this CI machine has no GPU, where bf16 would be refused; everything else is the file's)
    *_, conf_rest, cli_rest = parser.parse_args_and_config(args + ["--use_cpu", "true"], return_remaining_strings=True,
                                                           separate_remaining_strings=True)
    acc = launch_command_parser().parse_args(resolve_accelerate_config_argument(conf_rest + cli_rest) + ["x.py"])
    s, a, m, d = parser.parse_args_and_config(args=[args[0], args[1], "--use_cpu", "true"], fail_with_unknown_args=True)
    zero = a.hf_deepspeed_config.config["zero_optimization"]["stage"] if a.deepspeed else None
    out.append([a.per_device_train_batch_size, a.gradient_accumulation_steps, getattr(a, "max_length", None),
                m.lora_r if m.use_peft else None, m.load_in_4bit, zero, d.datasets[0].data_files,
                getattr(s, "reward_funcs", None), acc.num_processes])
print(json.dumps(out))
"""


def test_trl_configs_parse_with_trl(exported, tmp_path):
    grpo = export_plan(PLANS / "grpo-lora-tiny-cpu.yaml", "trl", tmp_path / "grpo", model="llama-3.2-1b",
                       data=str(DATA / "rl_prompts.jsonl"))
    kto = export_plan(PLANS / "kto-lora-tiny-cpu.yaml", "trl", tmp_path / "kto", model="llama-3.2-1b",
                      data=str(DATA / "feedback.jsonl"))
    runs = [_ok(exported, QLORA, "trl"), _ok(exported, DPO, "trl"), _ok(exported, ZERO3, "trl"), grpo, kto]
    # each command with its config's absolute path; ds_config.json is relative to the export folder, as
    # run.sh runs there, so the parse runs in the ZeRO-3 export's folder
    commands = [r.command.replace(" --config ", f" --config {r.files[0].parent}/", 1) for r in runs]
    proc = subprocess.run([sys.executable, "-c", _TRL_PARSE, json.dumps(commands)], capture_output=True, text=True,
                          cwd=runs[2].files[0].parent, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    q, d, z, g, k = json.loads(proc.stdout.strip().splitlines()[-1])
    assert q[:6] == [2, 8, 2048, 16, True, None] and q[6].endswith("chat.jsonl") and q[8] is None
    assert d[:6] == [4, 1, 64, 8, False, None] and d[6].endswith("preference.jsonl")
    assert z[:6] == [1, 8, 2048, None, False, 3] and z[8] == 8  # accelerate launches 8 processes
    assert g[0] == 4 and g[7] == ["ftadvisor.train.techniques.reward_length"]  # the plan's run.reward: length
    assert k[0] == 4 and k[6].endswith("feedback.jsonl")  # kto-lora-tiny-cpu.yaml: micro_batch_size 4


def test_grpo_reward_import_paths_exist():
    """The reward functions trl is told to import are the launcher's (read from source: importing
    ftadvisor.train loads torch)."""
    import ast

    from ftadvisor.export import BUILTIN_REWARDS

    tree = ast.parse((ROOT / "ftadvisor" / "train" / "techniques.py").read_text())
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert {f"reward_{n}" for n in BUILTIN_REWARDS} <= defined


def test_litgpt_own_parser(exported, monkeypatch):
    """litgpt's jsonargparse reads the file into setup()'s arguments (only where litgpt imports)."""
    pytest.importorskip("litgpt.finetune.lora", reason="litgpt does not install beside the pinned stack")
    from jsonargparse import ActionConfigFile, ArgumentParser
    from litgpt.finetune.lora import setup

    r = _ok(exported, QLORA, "litgpt")
    monkeypatch.chdir(r.files[0].parent)  # run.sh runs in the export folder
    parser = ArgumentParser()
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_function_arguments(setup)
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    cfg = instantiate(parser.parse_args(["--config", "litgpt.yaml"]))
    assert cfg.train.global_batch_size == 16 and cfg.quantize == "bnb.nf4-dq" and cfg.data.json_path.is_file()
    from litgpt.data.json_data import load_split

    first = load_split(cfg.data.json_path)[0]  # the records litgpt reads (instruction / input / output)
    assert first["output"] == " Paris" and first["instruction"].startswith("Translate the country")


# ---- errors, files, the CLI ------------------------------------------------------------------


def test_unsupported_technique_names_framework_and_choices(tmp_path):
    with pytest.raises(FtAdvisorError) as err:
        export_plan(PLANS / "grpo-lora-tiny-cpu.yaml", "axolotl", tmp_path, model="llama-3.2-1b",
                    data=str(DATA / "rl_prompts.jsonl"))
    assert err.value.field == "--to" and "axolotl" in str(err.value) and "dpo" in str(err.value)
    with pytest.raises(FtAdvisorError) as err:
        export_plan(PLANS / "ia3-tiny-cpu.yaml", "trl", tmp_path, model="llama-3.2-1b", data=str(DATA / "chat.jsonl"))
    assert "ia3" in str(err.value) and "qlora" in str(err.value)
    with pytest.raises(FtAdvisorError) as err:
        resolve_framework("unsloth")
    assert err.value.field == "--to" and err.value.choices == list(FRAMEWORKS)
    assert resolve_framework("LlamaFactory") == "llama-factory"


def test_torchtune_refuses_models_it_cannot_build(tmp_path):
    with pytest.raises(FtAdvisorError) as err:
        export_plan(PLANS / "lora-tiny-cpu.yaml", "torchtune", tmp_path, model="llama-2-7b", data=str(DATA / "chat.jsonl"))
    assert err.value.field == "--model" and "Llama 3.1" in str(err.value)


def test_refuses_overwrite_and_writes_whole_files(tmp_path):
    args = dict(model="llama-3.1-8b", data=str(DATA / "chat.jsonl"))
    first = export_plan(PLANS / QLORA[0], "trl", tmp_path, **args)
    with pytest.raises(FtAdvisorError) as err:
        export_plan(PLANS / QLORA[0], "trl", tmp_path, **args)
    assert err.value.field == "--out" and "--overwrite" in str(err.value)
    again = export_plan(PLANS / QLORA[0], "trl", tmp_path, overwrite=True, **args)
    assert [p.name for p in again.files] == [p.name for p in first.files] == ["trl_sft.yaml", "run.sh"]
    assert not list(tmp_path.glob(".*.tmp"))
    assert (tmp_path / "run.sh").read_text().rstrip().endswith("trl sft --config trl_sft.yaml")
    with pytest.raises(FtAdvisorError) as err:  # --out names a file: one line, no traceback
        export_plan(PLANS / QLORA[0], "trl", tmp_path / "run.sh", **args)
    assert err.value.field == "--out"


def test_plan_framework_field_is_the_default(tmp_path):
    from ftadvisor.export import read_spec

    spec = read_spec(PLANS / DPO[0], model="llama-3.2-1b", data=str(DATA / "preference.jsonl"),
                     sets={"framework": "llama-factory"})
    assert resolve_framework(None, spec.plan) == "llama-factory"
    assert resolve_framework(None, read_spec(PLANS / DPO[0], model="x/y", data="a/b").plan) == "trl"  # hf-trl
    plan = tmp_path / "plan.yaml"  # a plan file naming its framework: launch refuses it, export follows it
    plan.write_text((PLANS / DPO[0]).read_text() + "framework: torchtune\n")
    r = export_plan(plan, None, tmp_path / "out", model="llama-3.2-1b", data=str(DATA / "preference.jsonl"))
    assert r.framework == "torchtune" and not any(n.startswith("the plan's estimate is for") for n in r.notes)


def test_cli(tmp_path):
    from typer.testing import CliRunner

    from ftadvisor.cli import app

    runner = CliRunner()
    base = ["export", str(PLANS / QLORA[0]), "--model", "llama-3.1-8b", "--data", str(DATA / "chat.jsonl")]
    bad = runner.invoke(app, [*base, "--to", "axolotol", "--out", str(tmp_path)])
    assert bad.exit_code == 2
    line = bad.output.strip()
    assert "\n" not in line and "--to" in line and "llama-factory" in line and "Traceback" not in line
    ok = runner.invoke(app, [*base, "--to", "llama-factory", "--out", str(tmp_path / "lf")])
    assert ok.exit_code == 0, ok.output
    assert "llamafactory-cli train llamafactory.yaml" in ok.output and (tmp_path / "lf" / "llamafactory.yaml").is_file()


def _torchtune_signature(root: Path, component: str) -> set[str] | None:
    """Parameter names of ``component`` (a dotted torchtune function or class) read from the installed
    torchtune source without importing it (torchtune imports torchao, which fails on this torch)."""
    import ast

    parts = component.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        base = root.parent.joinpath(*parts[:cut])
        for src in [base.with_suffix(".py"), base / "__init__.py", *sorted(base.rglob("*.py"))]:
            if not src.is_file():
                continue
            for node in ast.walk(ast.parse(src.read_text())):
                # qlora_* builders are partial(lora_*, quantize_base=True) (torchtune/models/*/_model_builders.py)
                if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == parts[cut] for t in node.targets) \
                        and isinstance(node.value, ast.Call) and getattr(node.value.func, "id", None) == "partial":
                    return _torchtune_signature(root, ".".join([*parts[:cut], node.value.args[0].id]))
                if isinstance(node, ast.FunctionDef) and node.name == parts[cut]:
                    a = node.args
                    return {x.arg for x in a.args + a.kwonlyargs} | ({"**"} if a.kwarg else set())
                if isinstance(node, ast.ClassDef) and node.name == parts[cut]:
                    init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
                    return {x.arg for x in init.args.args + init.args.kwonlyargs} | ({"**"} if init.args.kwarg else set())
    return None


def test_torchtune_components_exist(exported):
    """Every ``_component_`` of the torchtune exports exists in torchtune's source and takes the keys
    given (only where torchtune 0.6.1 is installed: pip install --no-deps torchtune==0.6.1)."""
    import importlib.util

    spec = importlib.util.find_spec("torchtune")
    if spec is None or spec.origin is None:
        pytest.skip("torchtune is not installed (it does not import beside torch 2.13)")
    root = Path(spec.origin).parent
    for case in (QLORA, DPO, ZERO3):
        cfg = _cfg(exported[case, "torchtune"])
        for key in ("model", "tokenizer", "checkpointer", "dataset", "loss", "lr_scheduler", "metric_logger"):
            comp = cfg[key]["_component_"]
            if not comp.startswith("torchtune."):
                continue
            params = _torchtune_signature(root, comp)
            assert params is not None, comp
            given = set(cfg[key]) - {"_component_"}
            assert "**" in params or given <= params, (comp, given - params)


def test_recommend_points_to_export():
    from typer.testing import CliRunner

    from ftadvisor.cli import app

    res = CliRunner().invoke(app, ["recommend", "--model", "llama-3.1-8b", "--gpu", "rtx4090-24gb", "--top", "1"])
    assert res.exit_code == 0, res.output
    hint = [ln for ln in res.output.splitlines() if ln.startswith("next step:")]
    assert len(hint) == 1 and "ftadvisor export PLAN.yaml --to axolotl|llama-factory|torchtune|litgpt|trl" in hint[0]


def test_multi_node_scripts_use_the_launchers_convention(tmp_path):
    """Every export's run.sh for 2 nodes reads the variables launch's nodes/*.sh read (ftadvisor.multinode:
    NODE_RANK, MAIN_ADDR, MAIN_PORT), requires the first two before running anything, and never reads
    torchrun's MASTER_ADDR/MASTER_PORT from the user (it may only set them, from MAIN_ADDR/MAIN_PORT)."""
    import os
    import re

    from ftadvisor.export import read_spec
    from ftadvisor.multinode import ADDR_VAR, NODE_RANK_VAR, PORT_VAR

    assert (NODE_RANK_VAR, ADDR_VAR, PORT_VAR) == ("NODE_RANK", "MAIN_ADDR", "MAIN_PORT")
    spec = read_spec(PLANS / FSDP[0], model=FSDP[1], data=str(DATA / FSDP[2]), sets={"num_gpus": 16, "num_nodes": 2})
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_RANK", "MAIN_ADDR", "MAIN_PORT")}
    checked = 0
    for fw in FRAMEWORKS:
        try:
            res = export_plan(spec, fw, tmp_path / fw)
        except FtAdvisorError:
            continue  # a framework that cannot run this plan (checked elsewhere)
        script = (tmp_path / fw / "run.sh").read_text()
        assert not re.search(r"\$\{?MASTER_(ADDR|PORT)", script), (fw, script)
        assert '"$MAIN_ADDR' in script or "$MAIN_ADDR:" in script, (fw, script)
        for missing, extra in (("NODE_RANK", {}), ("MAIN_ADDR", {"NODE_RANK": "1"})):
            # the guards stop the script before the framework's command (which is not installed here)
            run = subprocess.run(["bash", str(tmp_path / fw / "run.sh")], capture_output=True, text=True,
                                 env={**env, **extra}, timeout=30)
            assert run.returncode != 0 and f"set {missing}" in run.stderr, (fw, run.stderr)
        checked += 1
        assert res.framework == fw
    assert checked >= 3  # trl, axolotl, llama-factory, torchtune, litgpt: full fine-tuning with FSDP
