"""The CLI: user mistakes are one clear line and exit status 2; list and show work."""

import pytest

from conftest import run_cli


@pytest.mark.parametrize("args, message", [
    (["--exp=StdlibLlam"], "did you mean StdlibLlama"),
    (["--exp=StdlibLlama", "--set=trainer.batch_sise=8"], "did you mean trainer.batch_size"),
    (["--exp=StdlibLlama", "--set=model.num_layer=8"], "did you mean model.num_layers"),
    (["--exp=StdlibLlama", "--set=trainer.batch_size=many"], "trainer.batch_size=many: expected int"),
    (["--exp=StdlibLlama", "--set=trainer.batch_size"], "expected key=value"),
    (["--exp=StdlibLlama", "--set=trainer.mesh=2"], "is a group of fields"),
    (["--exp=StdlibLlama", "--set=trainer.batch_size=10", "--set=trainer.microbatch_size=4"],
     "trainer.batch_size=10 is not a multiple of trainer.microbatch_size=4"),
    (["--exp=StdlibLlama", "--set=trainer.mesh.data=3", "--set=trainer.mesh.fsdp=1"],
     "data*fsdp*tensor = 3 but there are 1 devices"),
    (["--exp=StdlibLlama", "--set=trainer.mesh.data=3"], "1 devices cannot be split into 3 x N"),
    (["--exp=StdlibLlama", "--set=model.num_kv_heads=3"], "not a multiple of model.num_kv_heads=3"),
    (["--exp=StdlibLlama", "--set=trainer.precision=fp8"], "trainer.precision='fp8'"),
])
def test_user_mistakes_exit_2_with_one_clear_line(args, message):
    result = run_cli(*args, "--mode=show", check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_batch_that_does_not_split_over_the_mesh_is_refused():
    result = run_cli("--exp=StdlibLlama", "--set=trainer.batch_size=6", "--mode=show",
                     devices=4, check=False)
    assert result.returncode == 2
    assert "does not split over data x fsdp = 1 x 4 = 4 devices" in result.stderr


def test_list_names_every_experiment_with_a_description():
    lines = run_cli("--mode=list").stdout.splitlines()
    names = {line.split()[0] for line in lines}
    assert {"StdlibLlama", "Gpt2Small", "Gpt2Medium", "Gpt2Large", "Gpt2XL", "Llama2_7B",
            "TeenyTinyLlama160M"} <= names
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)


def test_show_prints_overridden_tree_and_derived_numbers():
    out = run_cli("--exp=Gpt2Small", "--set=trainer.batch_size=480",
                  "--set=trainer.microbatch_size=120", "--set=model.remat=minimal",
                  "--mode=show").stdout
    assert "trainer.batch_size: 480" in out
    assert "model.remat: minimal" in out
    assert "parameters: 124,439,808" in out
    assert "tokens per step: 491,520" in out
    assert "accumulation steps: 4" in out
    assert "FLOPs per token:" in out


def test_dry_run_compiles_a_7b_step_from_shapes_and_reports_memory():
    out = run_cli("--exp=Llama2_7B", "--mode=dry_run", "--set=trainer.batch_size=8",
                  "--set=trainer.microbatch_size=8", "--set=model.seq_len=512").stdout
    line = next(l for l in out.splitlines() if l.startswith("dry run:"))
    state_gib = float(line.split("state+batch ")[1].split()[0])
    # f32 parameters and two AdamW moments: 12 bytes x 6,738,415,616, never allocated here.
    assert state_gib == pytest.approx(12 * 6_738_415_616 / 2**30, rel=0.01)


def test_lmlib_xla_flags_keep_every_flag_the_user_set():
    from lmlib import xla_flags

    environ = {"XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=false --xla_dump_to=/d"}
    flags = xla_flags.set_defaults(environ).split()
    assert flags == ["--xla_gpu_enable_latency_hiding_scheduler=false", "--xla_dump_to=/d"]
    assert xla_flags.set_defaults({}) == "--xla_gpu_enable_latency_hiding_scheduler=true"
